//! GGUF → Hugging Face mapping of the reference files onto their models.

mod common;

use std::collections::BTreeSet;

use mlx_node_imatrix::{map_gguf_name, Error, Imatrix, ModelShape};

/// Every GGUF entry maps, every linear input the model has (and llama.cpp records) is covered
/// directly (nothing inferred), and the widths equal both the config's and the safetensors'.
fn maps_completely(model: &str, file: &str) {
    let dir = fixtures_or_return!();
    let shape = common::shape(&dir, model);
    let m = common::read(&dir, file);
    let imp = m.hf_importance(&shape).unwrap();

    let expected = shape.linear_inputs();
    let want: BTreeSet<&str> = expected.iter().map(|l| l.path.as_str()).collect();
    let got: BTreeSet<&str> = imp.keys().map(String::as_str).collect();
    assert_eq!(
        got, want,
        "{model}: mapped modules differ from the model's linear inputs"
    );
    for l in &expected {
        let i = &imp[&l.path];
        assert!(!i.inferred, "{}: inferred from {:?}", l.path, i.sources);
        assert_eq!(i.per_expert.len(), l.experts, "{}", l.path);
        for row in &i.per_expert {
            assert_eq!(row.len(), l.columns, "{}", l.path);
        }
    }
    // Every GGUF entry was used.
    let used: BTreeSet<&str> = imp
        .values()
        .flat_map(|i| i.sources.iter().map(String::as_str))
        .collect();
    let all: BTreeSet<&str> = m.entries.keys().map(String::as_str).collect();
    assert_eq!(used, all, "{model}: unused GGUF entries");

    // Independent check against the checkpoint: every mapped module exists with that input width
    // (last dim) and expert count (first dim of a 3-D stack), and every linear weight of the
    // decoder layers is mapped.
    let tensors = common::safetensors_shapes(&dir, model);
    for (path, i) in &imp {
        let base = format!("model.language_model.{path}");
        let dims = tensors
            .get(&format!("{base}.weight"))
            .or_else(|| tensors.get(&base))
            .unwrap_or_else(|| panic!("{model}: no tensor for {path}"));
        assert_eq!(
            *dims.last().unwrap(),
            i.per_expert[0].len(),
            "{path}: input width {dims:?}"
        );
        let experts = if dims.len() == 3 { dims[0] } else { 1 };
        assert_eq!(experts, i.per_expert.len(), "{path}: experts {dims:?}");
    }
    let linears: BTreeSet<String> = tensors
        .iter()
        .filter_map(|(k, dims)| {
            let rest = k.strip_prefix("model.language_model.")?;
            let is_linear =
                (dims.len() == 2 && rest.ends_with(".weight")) || rest.contains(".mlp.experts.");
            (rest.starts_with("layers.") && is_linear && !rest.contains("conv1d"))
                .then(|| rest.trim_end_matches(".weight").to_string())
        })
        .collect();
    let mapped: BTreeSet<String> = imp.keys().cloned().collect();
    assert_eq!(
        mapped, linears,
        "{model}: checkpoint linears vs mapped modules"
    );
}

#[test]
fn dense_reference_maps_completely() {
    maps_completely("tiny-dense", "tiny-dense.imatrix.gguf");
}

#[test]
fn moe_reference_maps_completely() {
    maps_completely("tiny-moe", "tiny-moe.imatrix.gguf");
}

#[test]
fn dense_dat_maps_like_the_gguf() {
    let dir = fixtures_or_return!();
    let shape = common::shape(&dir, "tiny-dense");
    let g = common::read(&dir, "tiny-dense.imatrix.gguf")
        .hf_importance(&shape)
        .unwrap();
    let d = common::read(&dir, "tiny-dense.imatrix.dat")
        .hf_importance(&shape)
        .unwrap();
    assert_eq!(g.keys().collect::<Vec<_>>(), d.keys().collect::<Vec<_>>());
    for (k, gi) in &g {
        for (a, b) in gi.per_expert[0].iter().zip(&d[k].per_expert[0]) {
            assert!((a - b).abs() <= 2.5e-7 * a.abs(), "{k}: {a} vs {b}");
        }
    }
}

#[test]
fn ssm_out_of_the_reference_is_put_in_hf_head_order() {
    // Tiny models: Hk = 2, Hv = 4, dv = 32, perm = [0, 2, 1, 3]: GGUF columns 32..64 are HF
    // columns 64..96 and vice versa (imatrix.md's table).
    let dir = fixtures_or_return!();
    for (model, file) in [
        ("tiny-dense", "tiny-dense.imatrix.gguf"),
        ("tiny-moe", "tiny-moe.imatrix.gguf"),
    ] {
        let shape = common::shape(&dir, model);
        assert_eq!(
            (shape.linear_num_key_heads, shape.linear_num_value_heads),
            (2, 4)
        );
        let m = common::read(&dir, file);
        let imp = m.hf_importance(&shape).unwrap();
        for layer in [0, 1, 2, 4, 5, 6] {
            let gguf = &m
                .importance(&format!("blk.{layer}.ssm_out.weight"))
                .unwrap()[0];
            let hf = &imp[&format!("layers.{layer}.linear_attn.out_proj")].per_expert[0];
            assert_eq!(&hf[0..32], &gguf[0..32]);
            assert_eq!(&hf[32..64], &gguf[64..96]);
            assert_eq!(&hf[64..96], &gguf[32..64]);
            assert_eq!(&hf[96..128], &gguf[96..128]);
            assert_ne!(
                hf, gguf,
                "layer {layer}: the permutation must change something"
            );
        }
    }
}

fn refusal(m: &Imatrix, shape: &ModelShape) -> (String, String) {
    match m.hf_importance(shape) {
        Err(e @ Error::DoesNotFit { .. }) => {
            let Error::DoesNotFit { ref tensor, .. } = e else {
                unreachable!()
            };
            (tensor.clone(), e.to_string())
        }
        Err(e) => panic!("expected DoesNotFit, got {e}"),
        Ok(_) => panic!("a mismatched shape was accepted"),
    }
}

fn edited(
    dir: &std::path::Path,
    model: &str,
    edit: impl FnOnce(&mut serde_json::Value),
) -> ModelShape {
    let mut c = common::config(dir, model);
    edit(&mut c["text_config"]);
    ModelShape::from_config(&c).unwrap()
}

#[test]
fn mismatched_shapes_are_refused_naming_the_tensor() {
    let dir = fixtures_or_return!();
    let dense = common::read(&dir, "tiny-dense.imatrix.gguf");
    let moe = common::read(&dir, "tiny-moe.imatrix.gguf");

    let s = edited(&dir, "tiny-dense", |t| t["hidden_size"] = 128.into());
    let (t, msg) = refusal(&dense, &s);
    assert_eq!(t, "blk.0.attn_gate.weight", "{msg}");
    assert!(
        msg.contains("input columns: expected 128 (hidden_size), found 64"),
        "{msg}"
    );

    let s = edited(&dir, "tiny-dense", |t| {
        t["num_hidden_layers"] = 4.into();
        t.as_object_mut().unwrap().remove("layer_types");
    });
    let (t, msg) = refusal(&dense, &s);
    assert_eq!(t, "blk.4.attn_gate.weight", "{msg}");
    assert!(
        msg.contains("layer index: expected < 4 (num_hidden_layers), found 4"),
        "{msg}"
    );

    let s = edited(&dir, "tiny-dense", |t| t["intermediate_size"] = 256.into());
    let (t, msg) = refusal(&dense, &s);
    assert_eq!(t, "blk.0.ffn_down.weight", "{msg}");
    assert!(
        msg.contains("expected 256 (intermediate_size), found 128"),
        "{msg}"
    );

    let s = edited(&dir, "tiny-dense", |t| {
        t["linear_num_value_heads"] = 2.into()
    });
    let (t, msg) = refusal(&dense, &s);
    assert_eq!(t, "blk.0.ssm_out.weight", "{msg}");
    assert!(
        msg.contains("expected 64 (linear_num_value_heads × linear_value_head_dim), found 128"),
        "{msg}"
    );

    // Layer kinds swapped: layer 0 full attention.
    let s = edited(&dir, "tiny-dense", |t| {
        t["layer_types"][0] = "full_attention".into()
    });
    let (t, msg) = refusal(&dense, &s);
    assert_eq!(t, "blk.0.attn_gate.weight", "{msg}");
    assert!(msg.contains("layer 0 is full_attention"), "{msg}");

    let s = edited(&dir, "tiny-moe", |t| t["num_experts"] = 4.into());
    let (t, msg) = refusal(&moe, &s);
    assert_eq!(t, "blk.0.ffn_down_exps.weight", "{msg}");
    assert!(
        msg.contains("experts: expected 4 (num_experts), found 8"),
        "{msg}"
    );

    // Each file against the other model.
    let (t, msg) = refusal(&moe, &common::shape(&dir, "tiny-dense"));
    assert_eq!(t, "blk.0.ffn_down_exps.weight", "{msg}");
    let (t, msg) = refusal(&dense, &common::shape(&dir, "tiny-moe"));
    assert_eq!(t, "blk.0.ffn_down.weight", "{msg}");
    assert!(msg.contains("a dense model"), "{msg}");
}

#[test]
fn the_mtp_block_and_unknown_names_are_refused() {
    let dir = fixtures_or_return!();
    let shape = common::shape(&dir, "tiny-dense");
    let err = map_gguf_name("blk.8.attn_q.weight", &shape)
        .unwrap_err()
        .to_string();
    assert!(err.contains("MTP"), "{err}");
    let err = map_gguf_name("blk.0.ssm_ba.weight", &shape)
        .unwrap_err()
        .to_string();
    assert!(err.contains("\"ssm_ba\""), "{err}");
    let m = map_gguf_name("output.weight", &shape).unwrap();
    assert_eq!((m.hf_paths, m.columns), (vec!["lm_head".to_string()], 64));
}
