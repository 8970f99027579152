//! The reference imatrix files made by llama-imatrix (fixtures/qwen3_5/reference/imatrix.md).

mod common;

use mlx_node_imatrix::Imatrix;

#[test]
fn dense_gguf_metadata_and_entries_match_the_doc() {
    let dir = fixtures_or_return!();
    let m = common::read(&dir, "tiny-dense.imatrix.gguf");
    assert_eq!(m.chunk_count, Some(258));
    assert_eq!(m.chunk_size, Some(256));
    assert_eq!(m.datasets, vec!["calibration.txt".to_string()]);
    assert!(m.extra_metadata.is_empty(), "{:?}", m.extra_metadata);
    assert_eq!(m.entries.len(), 62);
    for (name, e) in &m.entries {
        assert_eq!(e.experts(), 1, "{name}");
        assert_eq!(e.counts(), &[66_048.0], "{name}");
        let kind = name.split('.').nth(2).unwrap();
        let want = match kind {
            "ssm_out" | "attn_output" | "ffn_down" => 128,
            _ => 64,
        };
        assert_eq!(e.columns(), want, "{name}");
    }
    // Weights that read the same activation have identical sums.
    for (layer, group) in [
        (0, &["attn_qkv", "attn_gate", "ssm_alpha", "ssm_beta"][..]),
        (3, &["attn_q", "attn_k", "attn_v"][..]),
        (5, &["ffn_gate", "ffn_up"][..]),
    ] {
        let first = m.get(&format!("blk.{layer}.{}.weight", group[0])).unwrap();
        for k in &group[1..] {
            let e = m.get(&format!("blk.{layer}.{k}.weight")).unwrap();
            assert_eq!(e.in_sum2(), first.in_sum2(), "blk.{layer}.{k}");
        }
    }
}

#[test]
fn moe_gguf_expert_counts_match_the_doc() {
    let dir = fixtures_or_return!();
    let m = common::read(&dir, "tiny-moe.imatrix.gguf");
    assert_eq!(m.entries.len(), 102);
    assert_eq!((m.chunk_count, m.chunk_size), (Some(258), Some(256)));
    // imatrix.md, per-expert token counts of layer 1 and layer 7.
    let rows: [(usize, [f32; 8]); 2] = [
        (
            1,
            [
                13602., 20595., 13979., 17275., 17783., 15434., 14443., 18985.,
            ],
        ),
        (
            7,
            [
                16661., 20195., 17074., 13518., 17130., 14185., 16106., 17227.,
            ],
        ),
    ];
    for (layer, want) in rows {
        for k in ["ffn_gate_exps", "ffn_up_exps", "ffn_down_exps"] {
            let e = m.get(&format!("blk.{layer}.{k}.weight")).unwrap();
            assert_eq!((e.experts(), e.columns()), (8, 64), "{k}");
            assert_eq!(e.counts(), &want, "blk.{layer}.{k}");
        }
    }
    for (name, e) in &m.entries {
        if name.contains("_exps") {
            assert_eq!(e.counts().iter().sum::<f32>(), 132_096.0, "{name}");
        } else {
            assert_eq!((e.experts(), e.counts()), (1, &[66_048.0][..]), "{name}");
        }
    }
    // The two expert stacks that read the same activations agree exactly.
    for layer in 0..8 {
        let g = m.get(&format!("blk.{layer}.ffn_gate_exps.weight")).unwrap();
        let u = m.get(&format!("blk.{layer}.ffn_up_exps.weight")).unwrap();
        assert_eq!(g, u, "layer {layer}");
    }
}

/// The .dat stores `(in_sum2 / count) · ncall` as f32 with `ncall = ceil(max count / chunk_size)`,
/// so `values / ncall` is the GGUF's `in_sum2 / count` up to two f32 roundings (≤ ~2 ulp).
#[test]
fn dat_and_gguf_give_the_same_importance() {
    let dir = fixtures_or_return!();
    let g = common::read(&dir, "tiny-dense.imatrix.gguf");
    let d = Imatrix::read_dat(common::reference(&dir, "tiny-dense.imatrix.dat")).unwrap();
    assert_eq!(d.chunk_count, Some(258));
    assert_eq!(d.chunk_size, None);
    assert_eq!(d.datasets, vec!["calibration.txt".to_string()]);
    assert_eq!(
        g.entries.keys().collect::<Vec<_>>(),
        d.entries.keys().collect::<Vec<_>>()
    );
    let chunk = g.chunk_size.unwrap() as f32;
    let (mut worst, mut exact, mut total, mut stored_exact) = (0f64, 0usize, 0usize, 0usize);
    for (name, ge) in &g.entries {
        let de = d.get(name).unwrap();
        let max_count = ge.counts().iter().cloned().fold(0.0, f32::max);
        assert_eq!(
            de.counts(),
            &[(max_count / chunk).ceil()],
            "ncall of {name}"
        );
        // The stored values themselves: (in_sum2 / count) · ncall.
        let ncall = de.counts()[0];
        for (j, (s, v)) in ge.in_sum2().iter().zip(de.in_sum2()).enumerate() {
            let want = (s / ge.counts()[0]) * ncall;
            assert!(
                (want - v).abs() <= 2.5e-7 * want.abs(),
                "{name}[{j}]: dat {v} vs {want}"
            );
            stored_exact += usize::from(want == *v);
        }
        let gi = ge.importance();
        let di = de.importance();
        assert_eq!(di.len(), 1);
        assert_eq!(gi[0].len(), di[0].len(), "{name}");
        for (a, b) in gi[0].iter().zip(&di[0]) {
            let rel = ((*a as f64) - (*b as f64)).abs() / (*a as f64).abs().max(1e-30);
            worst = worst.max(rel);
            exact += usize::from(a == b);
            total += 1;
        }
    }
    eprintln!(
        "dat vs gguf importance: {exact}/{total} bit-identical, max relative difference {worst:.3e}; \
         stored .dat values equal to f32 (in_sum2 / count) * ncall: {stored_exact}/{total}"
    );
    assert!(worst <= 2.5e-7, "max relative difference {worst:e}");
    assert!(exact * 2 > total, "only {exact}/{total} identical");
}

#[test]
fn read_detects_the_form() {
    let dir = fixtures_or_return!();
    let via_read = common::read(&dir, "tiny-dense.imatrix.dat");
    let via_dat = Imatrix::read_dat(common::reference(&dir, "tiny-dense.imatrix.dat")).unwrap();
    assert_eq!(via_read, via_dat);
    // Handing a .dat to the GGUF reader is a clear error.
    let err = Imatrix::read_gguf(common::reference(&dir, "tiny-dense.imatrix.dat")).unwrap_err();
    assert!(err.to_string().contains("not a GGUF file"), "{err}");
}

#[test]
fn truncated_reference_files_are_refused() {
    let dir = fixtures_or_return!();
    let g = std::fs::read(common::reference(&dir, "tiny-moe.imatrix.gguf")).unwrap();
    for cut in [3, 20, 100, 7000, 13_609, 13_632, 50_000, g.len() - 40] {
        let err =
            Imatrix::from_gguf_bytes(&g[..cut], std::path::Path::new("cut.gguf")).unwrap_err();
        assert!(err.to_string().contains("truncated"), "cut {cut}: {err}");
    }
    let d = std::fs::read(common::reference(&dir, "tiny-dense.imatrix.dat")).unwrap();
    for cut in [2, 10, 5000, d.len() - 3] {
        let path =
            std::env::temp_dir().join(format!("imatrix-cut-{}-{cut}.dat", std::process::id()));
        std::fs::write(&path, &d[..cut]).unwrap();
        let err = Imatrix::read_dat(&path).unwrap_err();
        std::fs::remove_file(&path).unwrap();
        let msg = err.to_string();
        assert!(
            msg.contains("truncated") && msg.contains(&path.display().to_string()),
            "cut {cut}: {msg}"
        );
    }
}
