//! Our attention against MLX's `scaled_dot_product_attention` on the CPU: grouped heads
//! (ratios 1, 4, 3), decode (one query over many keys) and causal prefill chunks (queries the
//! last T of L keys, T = L and T < L), Dv ≠ D, a transposed (strided) query, keys and values
//! that are a cache's view of its first L positions (read in place) or transposed (copied),
//! every ISA this CPU runs; |Δ| ≤ 1e-5 · max|y|.

mod common;

use common::{assert_close, eval_poisoned, normal, Rng};
use mlx_node_kernels::{attention, Isa};
use mlx_rs::fast::{scaled_dot_product_attention, ScaledDotProductAttentionMask};
use mlx_rs::ops::indexing::IndexOp;

const TOL: f32 = 1e-5;

#[test]
fn attention_matches_mlx() {
    let mut rng = Rng::new(0x5eed_0400);
    // (B, Hq, Hkv, T, L, D, Dv, causal)
    let cases = [
        (1, 8, 2, 1, 200, 256, 256, false),
        (1, 8, 2, 128, 128, 256, 256, true),
        (2, 4, 4, 5, 19, 16, 16, true),
        (1, 6, 2, 3, 3, 32, 24, true),
        (1, 3, 1, 7, 40, 8, 8, false),
        (2, 2, 2, 1, 1, 64, 64, false),
    ];
    for (b, hq, hkv, t, l, d, dv, causal) in cases {
        let q = normal(&[b, hq, t, d], 0.0, &mut rng);
        let k = normal(&[b, hkv, l, d], 0.0, &mut rng);
        let v = normal(&[b, hkv, l, dv], 0.5, &mut rng);
        let scale = (d as f32).powf(-0.5) * 2.0;
        let mask = causal.then_some(ScaledDotProductAttentionMask::Causal);
        let want = scaled_dot_product_attention(&q, &k, &v, scale, mask, None).unwrap();
        for isa in Isa::available() {
            let ours = eval_poisoned(
                attention(&q, &k, &v, scale, causal, isa)
                    .unwrap()
                    .expect("handled"),
                &[&q, &k, &v],
            );
            assert_close(
                &ours,
                &want,
                TOL,
                &format!(
                    "B {b} Hq {hq} Hkv {hkv} T {t} L {l} D {d} Dv {dv} causal {causal} {isa:?}"
                ),
            );
        }
    }
}

#[test]
fn strided_queries_and_rejections() {
    let mut rng = Rng::new(0x5eed_0401);
    // As the engine passes it: [B, T, H, D] transposed to [B, H, T, D].
    let q = normal(&[1, 4, 8, 32], 0.0, &mut rng)
        .transpose_axes(&[0, 2, 1, 3])
        .unwrap();
    let k = normal(&[1, 2, 9, 32], 0.0, &mut rng);
    let v = normal(&[1, 2, 9, 32], 0.0, &mut rng);
    let want = scaled_dot_product_attention(
        &q,
        &k,
        &v,
        0.2,
        Some(ScaledDotProductAttentionMask::Causal),
        None,
    )
    .unwrap();
    let ours = attention(&q, &k, &v, 0.2, true, Isa::Default)
        .unwrap()
        .expect("handled");
    assert_close(&ours, &want, TOL, "strided q");

    // Keys and values as a preallocated cache holds them: the first 9 of 20 positions, and in
    // a batch of 2 so the batch stride is not the head stride times the heads seen.
    let kbuf = normal(&[2, 2, 20, 32], 0.0, &mut rng);
    let vbuf = normal(&[2, 2, 20, 24], 0.3, &mut rng);
    let (kv, vv) = (
        kbuf.index((.., .., 0..9, ..)),
        vbuf.index((.., .., 0..9, ..)),
    );
    let q2 = normal(&[2, 4, 3, 32], 0.0, &mut rng);
    let mask = Some(ScaledDotProductAttentionMask::Causal);
    let want = scaled_dot_product_attention(&q2, &kv, &vv, 0.2, mask, None).unwrap();
    for isa in Isa::available() {
        let ours = eval_poisoned(
            attention(&q2, &kv, &vv, 0.2, true, isa)
                .unwrap()
                .expect("handled"),
            &[&q2, &kv, &vv],
        );
        assert_close(&ours, &want, TOL, &format!("cache views {isa:?}"));
    }
    // Positions not adjacent in memory ([B, L, H, D] transposed): converted, same result.
    let kt = normal(&[1, 9, 2, 32], 0.0, &mut rng)
        .transpose_axes(&[0, 2, 1, 3])
        .unwrap();
    let want = scaled_dot_product_attention(&q, &kt, &v, 0.2, None, None).unwrap();
    let ours = attention(&q, &kt, &v, 0.2, false, Isa::Default)
        .unwrap()
        .expect("handled");
    assert_close(&ours, &want, TOL, "transposed keys");
    let k3 = normal(&[1, 3, 9, 32], 0.0, &mut rng);
    assert!(
        attention(&q, &k3, &k3, 0.2, false, Isa::Default)
            .unwrap()
            .is_none(),
        "8 heads over 3"
    );
    let bf = q.as_dtype(mlx_rs::Dtype::Bfloat16).unwrap();
    assert!(
        attention(&bf, &k, &v, 0.2, false, Isa::Default)
            .unwrap()
            .is_none(),
        "bfloat16"
    );
}
