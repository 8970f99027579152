//! The fused Gated DeltaNet primitive (`mlx-node-kernels`) against the engine's MLX ops path,
//! on shapes no checkpoint fixes (key/value head ratios 1–3, dk ≠ dv, conv kernels 2–4, two
//! sequences, chunks shorter than the conv window): a prefill chunk then single-token steps,
//! each carrying its own state, on every ISA this CPU runs. |Δ| ≤ 1e-5 · max|y| for
//! the output and both states after every step.

use mlx_node_core::cache::LinearState;
use mlx_node_core::gated_delta::{DeltaMixer, MixPath};
use mlx_node_kernels::Isa;
use mlx_rs::ops::exp;
use mlx_rs::Array;

const TOL: f32 = 1e-5;

struct Seeds(u64);

impl Seeds {
    fn normal(&mut self, shape: &[i32], scale: f32) -> Array {
        self.0 += 1;
        let key = mlx_rs::random::key(self.0).unwrap();
        mlx_rs::random::normal::<f32>(shape, 0.0, scale, &key).unwrap()
    }
}

fn values(a: &Array) -> Vec<f32> {
    let a = a.reshape(&[-1]).unwrap(); // a slice of the conv window is not contiguous
    a.eval().unwrap();
    a.as_slice::<f32>().to_vec()
}

fn assert_close(ours: &Array, reference: &Array, what: &str) {
    assert_eq!(ours.shape(), reference.shape(), "{what}: shapes");
    let (a, b) = (values(ours), values(reference));
    let scale = b.iter().fold(0.0f32, |m, v| m.max(v.abs()));
    let worst = a
        .iter()
        .zip(&b)
        .map(|(x, y)| (x - y).abs())
        .fold(0.0f32, f32::max);
    assert!(a.iter().all(|v| v.is_finite()), "{what}: non-finite output");
    assert!(scale > 0.0, "{what}: the reference is all zeros");
    assert!(
        worst <= TOL * scale,
        "{what}: max |Δ| = {worst:e} > {TOL:e} × max|y| = {:e}",
        TOL * scale
    );
}

struct Case {
    key_heads: i32,
    value_heads: i32,
    key_dim: i32,
    value_dim: i32,
    kernel: i32,
    batch: i32,
    /// Token counts of the successive calls.
    chunks: &'static [i32],
}

fn run(case: &Case, isa: Isa, seeds: &mut Seeds) {
    let (hk, hv, dk, dv) = (
        case.key_heads,
        case.value_heads,
        case.key_dim,
        case.value_dim,
    );
    let channels = 2 * hk * dk + hv * dv;
    let mixer = DeltaMixer {
        conv: seeds.normal(&[channels, case.kernel], 0.5),
        neg_a: exp(seeds.normal(&[hv], 1.0)).unwrap().negative().unwrap(),
        dt_bias: seeds.normal(&[hv], 1.0),
        norm_weight: seeds.normal(&[dv], 1.0).add(Array::from_f32(1.0)).unwrap(),
        eps: 1e-6,
        key_heads: hk,
        value_heads: hv,
        key_dim: dk,
        value_dim: dv,
        kernel: case.kernel,
    };
    let (mut fused, mut reference) = (LinearState::default(), LinearState::default());
    for (step, &t) in case.chunks.iter().enumerate() {
        let b = case.batch;
        let qkv = seeds.normal(&[b, t, channels], 1.0);
        let z = seeds.normal(&[b, t, hv * dv], 1.0);
        let a = seeds.normal(&[b, t, hv], 1.0);
        let beta = seeds.normal(&[b, t, hv], 1.0);
        let what = format!(
            "Hk {hk} Hv {hv} dk {dk} dv {dv} K {} B {b} step {step} (T {t}) {isa:?}",
            case.kernel
        );
        let y = mixer
            .mix_fused(&qkv, &z, &a, &beta, &mut fused, isa)
            .unwrap()
            .unwrap_or_else(|| panic!("{what}: the primitive did not handle the call"));
        let want = mixer
            .mix(&qkv, &z, &a, &beta, &mut reference, MixPath::Ops)
            .unwrap();
        assert_close(&y, &want, &format!("{what}: y"));
        assert_close(
            fused.conv.as_ref().unwrap(),
            reference.conv.as_ref().unwrap(),
            &format!("{what}: conv window"),
        );
        assert_close(
            fused.recurrent.as_ref().unwrap(),
            reference.recurrent.as_ref().unwrap(),
            &format!("{what}: recurrent state"),
        );
    }
}

#[test]
fn fused_mixing_matches_the_ops_path() {
    let cases = [
        // Qwen3.5-0.8B's linear layers: 16 × 128 heads, K 4.
        Case {
            key_heads: 16,
            value_heads: 16,
            key_dim: 128,
            value_dim: 128,
            kernel: 4,
            batch: 1,
            chunks: &[9, 1, 1],
        },
        // The 9B's ratio (two value heads per key head), smaller heads.
        Case {
            key_heads: 2,
            value_heads: 4,
            key_dim: 32,
            value_dim: 24,
            kernel: 4,
            batch: 2,
            chunks: &[5, 1, 2],
        },
        // Three value heads per key head, dk ≠ dv, K 3; a first chunk shorter than the window.
        Case {
            key_heads: 1,
            value_heads: 3,
            key_dim: 16,
            value_dim: 8,
            kernel: 3,
            batch: 1,
            chunks: &[1, 1, 4, 1],
        },
        // K 2 (a one-row window), odd head sizes.
        Case {
            key_heads: 3,
            value_heads: 3,
            key_dim: 20,
            value_dim: 36,
            kernel: 2,
            batch: 2,
            chunks: &[3, 1],
        },
        // An odd key size, and value columns two full strips of the fused rule and a part.
        Case {
            key_heads: 2,
            value_heads: 2,
            key_dim: 17,
            value_dim: 72,
            kernel: 4,
            batch: 1,
            chunks: &[6, 1],
        },
    ];
    let mut seeds = Seeds(0x6a7e_d000);
    for case in &cases {
        for isa in Isa::available() {
            run(case, isa, &mut seeds);
        }
    }
}

#[test]
fn other_dtypes_are_left_to_the_ops() {
    let mut seeds = Seeds(0x6a7e_d100);
    let mixer = DeltaMixer {
        conv: seeds.normal(&[2 * 8 + 8, 4], 0.5),
        neg_a: Array::from_slice(&[-1.0f32], &[1]),
        dt_bias: Array::from_slice(&[0.0f32], &[1]),
        norm_weight: seeds.normal(&[8], 1.0),
        eps: 1e-6,
        key_heads: 1,
        value_heads: 1,
        key_dim: 8,
        value_dim: 8,
        kernel: 4,
    };
    let bf16 = |a: Array| a.as_dtype(mlx_rs::Dtype::Bfloat16).unwrap();
    let mut state = LinearState::default();
    let handled = mixer
        .mix_fused(
            &bf16(seeds.normal(&[1, 2, 24], 1.0)),
            &bf16(seeds.normal(&[1, 2, 8], 1.0)),
            &bf16(seeds.normal(&[1, 2, 1], 1.0)),
            &bf16(seeds.normal(&[1, 2, 1], 1.0)),
            &mut state,
            Isa::Default,
        )
        .unwrap();
    assert!(handled.is_none(), "bfloat16 activations go to the MLX ops");
    assert!(
        state.conv.is_none() && state.recurrent.is_none(),
        "state untouched"
    );
}
