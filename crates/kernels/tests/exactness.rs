//! Our quantized matmul against MLX's own `quantized_matmul` / `gather_qmm`: every bits × group
//! combination, random shapes from a seeded RNG (rows and columns that are not multiples of the
//! kernels' tiles, single rows and columns, K across the K-chunk boundary), both ISA paths
//! (the portable one forced, and every other this CPU runs: AVX2 + FMA, AVX-512F), |Δ| ≤
//! 1e-5 · max|y|.

mod common;

use common::{assert_close, eval_poisoned, mlx_qmm, normal, quantized, Rng, BITS, GROUPS};
use mlx_node_kernels::{gather_qmm_isa, quantized_matmul_isa, Isa};
use mlx_rs::{Array, Dtype};

const TOL: f32 = 1e-5;

fn isas() -> Vec<Isa> {
    Isa::available()
}

/// Our product, evaluated at once into memory that last held NaNs (see eval_poisoned).
fn ours(x: &Array, w: &Array, s: &Array, b: &Array, gs: i32, bits: i32, isa: Isa) -> Array {
    let y = quantized_matmul_isa(x, w, s, b, gs, bits, isa)
        .unwrap()
        .expect("handled on the CPU stream");
    eval_poisoned(y, &[x, w, s, b])
}

/// (M, N, K) cases for one combination: fixed edge cases plus random ones.
fn shapes(gs: i32, rng: &mut Rng) -> Vec<(i32, i32, i32)> {
    let mut v = vec![
        (1, 1, gs),
        (1, 5, gs * 2),
        (2, 7, gs),
        (3, 1, gs * 3),
        (1, 33, 384),
        (5, 19, gs * ((330 + gs - 1) / gs)),
        (37, 45, 640),
        (64, 1, gs * 2),
        (4, 2, gs),
        // Whole 32-bit-word blocks of every width and vector length (the word streams), and
        // a K of whole blocks for some widths only.
        (1, 9, 768),
        (1, 11, 640),
        // Column pieces of 24 (190 split 8 ways, rounded up to 8): many-row tiles of 32
        // columns whose second half is partly used, and 13 rows (a block of 12 and one).
        (13, 190, 384),
    ];
    for _ in 0..3 {
        let m = rng.pick(&[1, 2, 3, 4, 6, 9, 17, 64]);
        let n = rng.range(1, 90);
        let k = gs * rng.range(1, 10);
        v.push((m, n, k));
    }
    v
}

#[test]
fn every_bits_and_group_matches_mlx() {
    let mut rng = Rng::new(0x5eed_0001);
    for &bits in &BITS {
        for &gs in &GROUPS {
            for (m, n, k) in shapes(gs, &mut rng) {
                let (w, s, b) = quantized(&[n, k], gs, bits, &mut rng);
                let x = normal(&[m, k], 0.0, &mut rng);
                let reference = mlx_qmm(&x, &w, &s, &b, gs, bits);
                for isa in isas() {
                    let y = ours(&x, &w, &s, &b, gs, bits, isa);
                    assert_close(
                        &y,
                        &reference,
                        TOL,
                        &format!("bits {bits} gs {gs} M {m} N {n} K {k} {isa:?}"),
                    );
                }
            }
        }
    }
}

#[test]
fn batched_activations_and_wide_outputs() {
    // x [B, L, K] (as the engine passes it) and enough columns to split over the pool.
    let mut rng = Rng::new(0x5eed_0002);
    for (bits, gs) in [(4, 64), (3, 32), (6, 128), (8, 64)] {
        let (w, s, b) = quantized(&[1031, 256], gs, bits, &mut rng);
        for shape in [vec![1, 1, 256], vec![2, 3, 256], vec![256]] {
            let x = normal(&shape, 0.0, &mut rng);
            let reference = mlx_qmm(&x, &w, &s, &b, gs, bits);
            for isa in isas() {
                let y = ours(&x, &w, &s, &b, gs, bits, isa);
                assert_close(
                    &y,
                    &reference,
                    TOL,
                    &format!("{shape:?} bits {bits} {isa:?}"),
                );
            }
        }
    }
}

#[test]
fn half_precision_scales_match_mlx() {
    // bf16 / f16 scales and biases with f32 activations: MLX promotes them to f32, so do we.
    let mut rng = Rng::new(0x5eed_0003);
    for dtype in [Dtype::Bfloat16, Dtype::Float16] {
        for (bits, gs, m) in [(4, 64, 1), (5, 32, 7), (2, 128, 2), (8, 32, 12)] {
            let (w, s, b) = quantized(&[77, 512], gs, bits, &mut rng);
            let (s, b) = (s.as_dtype(dtype).unwrap(), b.as_dtype(dtype).unwrap());
            let x = normal(&[m, 512], 0.0, &mut rng);
            let reference = mlx_qmm(&x, &w, &s, &b, gs, bits);
            assert_eq!(reference.dtype(), Dtype::Float32);
            for isa in isas() {
                let y = ours(&x, &w, &s, &b, gs, bits, isa);
                assert_eq!(y.dtype(), Dtype::Float32);
                assert_close(
                    &y,
                    &reference,
                    TOL,
                    &format!("{dtype:?} bits {bits} {isa:?}"),
                );
            }
        }
    }
}

#[test]
fn half_precision_activations_are_converted_once() {
    // bf16 / f16 x: computed in f32 and rounded once, so compare with MLX on the f32 values
    // (MLX itself accumulates in the half type) within the half type's rounding.
    let mut rng = Rng::new(0x5eed_0004);
    for (dtype, tol) in [(Dtype::Bfloat16, 1e-2), (Dtype::Float16, 2e-3)] {
        for (bits, gs, m) in [(4, 64, 1), (3, 64, 5)] {
            let (w, s, b) = quantized(&[40, 256], gs, bits, &mut rng);
            let (s, b) = (s.as_dtype(dtype).unwrap(), b.as_dtype(dtype).unwrap());
            let x = normal(&[m, 256], 0.0, &mut rng).as_dtype(dtype).unwrap();
            let mlx_dtype = mlx_qmm(&x, &w, &s, &b, gs, bits).dtype();
            let f = |a: &Array| a.as_dtype(Dtype::Float32).unwrap();
            let reference = mlx_qmm(&f(&x), &w, &f(&s), &f(&b), gs, bits);
            for isa in isas() {
                let y = ours(&x, &w, &s, &b, gs, bits, isa);
                assert_eq!(y.dtype(), mlx_dtype);
                assert_close(
                    &y,
                    &reference,
                    tol,
                    &format!("{dtype:?} x, bits {bits} {isa:?}"),
                );
            }
        }
    }
}

/// A view with the same values as `a` [r, c] that is not row contiguous (a transpose of a
/// transposed copy).
fn strided(a: &Array) -> Array {
    let copy = if a.dtype() == Dtype::Uint32 {
        mlx_rs::ops::multiply(a.t(), Array::from_slice(&[1u32], &[1])).unwrap()
    } else {
        mlx_rs::ops::multiply(a.t(), Array::from_slice(&[1.0f32], &[1])).unwrap()
    };
    copy.eval().unwrap();
    copy.t()
}

#[test]
fn non_contiguous_inputs() {
    let mut rng = Rng::new(0x5eed_0005);
    for (bits, gs) in [(4, 32), (5, 64), (6, 32)] {
        let (w, s, b) = quantized(&[29, 192], gs, bits, &mut rng);
        let x = normal(&[6, 192], 0.0, &mut rng);
        let reference = mlx_qmm(&x, &w, &s, &b, gs, bits);
        for isa in isas() {
            let y = ours(
                &strided(&x),
                &strided(&w),
                &strided(&s),
                &strided(&b),
                gs,
                bits,
                isa,
            );
            assert_close(&y, &reference, TOL, &format!("strided bits {bits} {isa:?}"));
        }
    }
}

#[test]
fn lazy_graph_and_async_eval() {
    let mut rng = Rng::new(0x5eed_0006);
    let (w, s, b) = quantized(&[64, 128], 64, 4, &mut rng);
    let x = normal(&[3, 128], 0.0, &mut rng);
    let lazy = |x: &Array, w: &Array, s: &Array, b: &Array, gs: i32, bits: i32| {
        quantized_matmul_isa(x, w, s, b, gs, bits, Isa::Default)
            .unwrap()
            .expect("handled on the CPU stream")
    };
    let y = lazy(&x, &w, &s, &b, 64, 4);
    // A graph over our node: evaluated only when asked, also asynchronously.
    let z = mlx_rs::ops::add(&y, Array::from_slice(&[1.0f32], &[1])).unwrap();
    mlx_rs::transforms::async_eval([&z]).unwrap();
    let reference = mlx_rs::ops::add(
        mlx_qmm(&x, &w, &s, &b, 64, 4),
        Array::from_slice(&[1.0f32], &[1]),
    )
    .unwrap();
    assert_close(&z, &reference, TOL, "async");
    // Our output as the input of another of our nodes.
    let (w2, s2, b2) = quantized(&[10, 64], 32, 3, &mut rng);
    let chained = lazy(&y, &w2, &s2, &b2, 32, 3);
    let reference = mlx_qmm(&mlx_qmm(&x, &w, &s, &b, 64, 4), &w2, &s2, &b2, 32, 3);
    assert_close(&chained, &reference, 1e-4, "chained");
}

#[test]
fn unhandled_calls_are_left_to_mlx() {
    let mut rng = Rng::new(0x5eed_0007);
    let (w, s, b) = quantized(&[16, 128], 64, 4, &mut rng);
    let x = normal(&[2, 128], 0.0, &mut rng);
    // Unsupported bits / group size, a K that does not match, a stacked weight.
    assert!(quantized_matmul_isa(&x, &w, &s, &b, 64, 7, Isa::Default)
        .unwrap()
        .is_none());
    assert!(quantized_matmul_isa(&x, &w, &s, &b, 16, 4, Isa::Default)
        .unwrap()
        .is_none());
    let x_bad = normal(&[2, 64], 0.0, &mut rng);
    assert!(
        quantized_matmul_isa(&x_bad, &w, &s, &b, 64, 4, Isa::Default)
            .unwrap()
            .is_none()
    );
    let (w3, s3, b3) = quantized(&[2, 16, 128], 64, 4, &mut rng);
    assert!(quantized_matmul_isa(&x, &w3, &s3, &b3, 64, 4, Isa::Default)
        .unwrap()
        .is_none());
    // Integer activations are MLX's to reject.
    let xi = x.as_dtype(Dtype::Int32).unwrap();
    assert!(quantized_matmul_isa(&xi, &w, &s, &b, 64, 4, Isa::Default)
        .unwrap()
        .is_none());
}

#[test]
fn gathered_experts_match_mlx_gather_qmm() {
    // As ExpertBank calls it: x [T, 1, 1, K], rhs [T, k] experts (repeats across tokens, so
    // rows of several tokens share one expert), plus explicit lhs indices and M > 1.
    let mut rng = Rng::new(0x5eed_0008);
    for &bits in &BITS {
        let gs = rng.pick(&GROUPS);
        let (e, n, k) = (rng.range(2, 9), rng.range(1, 70), gs * rng.range(1, 6));
        let (w, s, b) = quantized(&[e, n, k], gs, bits, &mut rng);
        for tokens in [1, 5, 40] {
            let top = rng.range(1, e.min(4));
            let x = normal(&[tokens, 1, 1, k], 0.0, &mut rng);
            let key = mlx_rs::random::key(rng.next_u64()).unwrap();
            let experts =
                mlx_rs::random::randint::<_, u32>(0, e, &[tokens, top][..], &key).unwrap();
            let reference =
                mlx_rs::ops::gather_qmm(&x, &w, &s, &b, None, &experts, true, gs, bits, false)
                    .unwrap();
            for isa in isas() {
                let y = gather_qmm_isa(&x, &w, &s, &b, None, Some(&experts), gs, bits, isa)
                    .unwrap()
                    .expect("handled");
                assert_close(
                    &y,
                    &reference,
                    TOL,
                    &format!("gather bits {bits} T {tokens} {isa:?}"),
                );
            }
        }
        // Explicit lhs: x [3, M, K], pairs (lhs[i], rhs[i]).
        let m = rng.range(1, 6);
        let x = normal(&[3, m, k], 0.0, &mut rng);
        let lhs = Array::from_slice(&[2u32, 0, 1, 2, 2], &[5]);
        let rhs = Array::from_slice(&[0u32, (e - 1) as u32, 1, 1, 0], &[5]);
        let reference =
            mlx_rs::ops::gather_qmm(&x, &w, &s, &b, &lhs, &rhs, true, gs, bits, false).unwrap();
        for isa in isas() {
            let y = gather_qmm_isa(&x, &w, &s, &b, Some(&lhs), Some(&rhs), gs, bits, isa)
                .unwrap()
                .expect("handled");
            assert_close(
                &y,
                &reference,
                TOL,
                &format!("gather lhs bits {bits} M {m} {isa:?}"),
            );
        }
    }
}

#[test]
fn large_offsets_and_wide_code_ranges_stay_exact() {
    // Weights far from zero (biases dominate each group) and activations with a mean, where
    // s · Σ q·x and b · Σ x are large against their sum.
    let mut rng = Rng::new(0x5eed_0009);
    for &bits in &[2, 4, 8] {
        for &gs in &[32, 128] {
            let w = normal(&[37, 1024], 6.0, &mut rng);
            let (w, s, b) = mlx_rs::ops::quantize(&w, gs, bits).unwrap();
            for m in [1, 2, 7] {
                let x = normal(&[m, 1024], 0.5, &mut rng);
                let reference = mlx_qmm(&x, &w, &s, &b, gs, bits);
                for isa in isas() {
                    let y = ours(&x, &w, &s, &b, gs, bits, isa);
                    assert_close(
                        &y,
                        &reference,
                        TOL,
                        &format!("offset bits {bits} gs {gs} M {m} {isa:?}"),
                    );
                }
            }
        }
    }
}
