//! Our float32 row and element ops against the MLX ops they replace: `fast::rms_norm` (alone
//! and after a residual add), `silu(a) · b`, `x · sigmoid(g)` and `argmax`, on decode- and
//! prefill-sized shapes (the large ones are split over the pool), odd sizes and
//! non-contiguous inputs; |Δ| ≤ 1e-5 · max|y|, the argmax exactly.

mod common;

use common::{assert_close, eval_all_poisoned, normal, Rng};
use mlx_node_kernels::{add_rms_norm, argmax, rms_norm, sigmoid_mul, silu_mul, Isa};
use mlx_rs::{Array, Dtype};

const TOL: f32 = 1e-5;

fn shapes() -> Vec<Vec<i32>> {
    vec![
        vec![1, 1, 1024],
        vec![3, 5, 7],
        vec![1],
        vec![128, 1024],
        vec![2, 9, 8, 256],
        vec![1, 1, 3584],
    ]
}

#[test]
fn rms_norm_matches_mlx() {
    let mut rng = Rng::new(0x5eed_0300);
    for shape in shapes() {
        let x = normal(&shape, 0.3, &mut rng);
        let w = normal(&[*shape.last().unwrap()], 1.0, &mut rng);
        for eps in [1e-6, 1e-2] {
            let ours = rms_norm(&x, &w, eps).unwrap().expect("handled");
            let want = mlx_rs::fast::rms_norm(&x, Some(&w), eps).unwrap();
            assert_close(&ours, &want, TOL, &format!("rms_norm {shape:?} eps {eps}"));
        }
    }
}

#[test]
fn residual_add_and_norm_match_mlx() {
    let mut rng = Rng::new(0x5eed_0302);
    for shape in shapes() {
        let h = normal(&shape, 0.3, &mut rng);
        let x = normal(&shape, -0.1, &mut rng);
        let w = normal(&[*shape.last().unwrap()], 1.0, &mut rng);
        let (sum, y) = add_rms_norm(&h, &x, &w, 1e-6).unwrap().expect("handled");
        let [sum, y]: [Array; 2] = eval_all_poisoned(vec![sum, y], &[&h, &x, &w])
            .try_into()
            .unwrap();
        let want_sum = h.add(&x).unwrap();
        let want = mlx_rs::fast::rms_norm(&want_sum, Some(&w), 1e-6).unwrap();
        assert_close(&sum, &want_sum, 0.0, &format!("h + x {shape:?}"));
        assert_close(&y, &want, TOL, &format!("rms_norm(h + x) {shape:?}"));
    }
    let (a, b) = (
        normal(&[2, 8], 0.0, &mut rng),
        normal(&[2, 9], 0.0, &mut rng),
    );
    let w = normal(&[8], 1.0, &mut rng);
    assert!(
        add_rms_norm(&a, &b, &w, 1e-6).unwrap().is_none(),
        "shapes differ"
    );
}

fn argmax_rows(values: &[f32], n: i32, isa: Isa) -> Vec<u32> {
    let x = Array::from_slice(values, &[values.len() as i32 / n, n]);
    let ours = argmax(&x, isa).unwrap().expect("handled");
    let want = mlx_rs::ops::indexing::argmax_axis(&x, -1, false).unwrap();
    assert_eq!(ours.dtype(), Dtype::Uint32);
    assert_eq!(ours.shape(), want.shape());
    let (ours, want) = (
        ours.as_slice::<u32>().to_vec(),
        want.as_slice::<u32>().to_vec(),
    );
    assert_eq!(ours, want, "argmax of {n}-wide rows on {isa:?}");
    ours
}

#[test]
fn argmax_matches_mlx() {
    let mut rng = Rng::new(0x5eed_0303);
    for isa in Isa::available() {
        // Random rows of odd widths, and the vocabulary of Qwen3.5.
        for (rows, n) in [(1, 1), (3, 7), (2, 33), (1, 248320), (5, 1000)] {
            let x = normal(&[rows, n], 0.0, &mut rng);
            argmax_rows(x.as_slice::<f32>(), n, isa);
        }
        // Ties go to the first; −0 equals 0; NaN counts only at index 0; all −inf.
        let (nan, inf) = (f32::NAN, f32::INFINITY);
        let tie = argmax_rows(&[1.0, 3.0, 2.0, 3.0, 3.0, 0.0, 3.0, 1.0, 3.0, 2.0], 10, isa);
        assert_eq!(tie, [1]);
        assert_eq!(argmax_rows(&[-0.0, 0.0, -1.0], 3, isa), [0]);
        let mut row = vec![0.5f32; 40];
        row[0] = nan;
        row[9] = 2.0;
        assert_eq!(argmax_rows(&row, 40, isa), [0]);
        row[0] = 0.0;
        row[3] = nan;
        row[30] = nan;
        assert_eq!(argmax_rows(&row, 40, isa), [9]);
        assert_eq!(argmax_rows(&[-inf; 20], 20, isa), [0]);
    }
}

#[test]
fn gates_match_mlx() {
    let mut rng = Rng::new(0x5eed_0301);
    for shape in shapes() {
        let a = normal(&shape, 0.0, &mut rng)
            .multiply(Array::from_f32(3.0))
            .unwrap();
        let b = normal(&shape, 0.5, &mut rng);
        let ours = silu_mul(&a, &b).unwrap().expect("handled");
        let want = mlx_rs::nn::silu(&a).unwrap().multiply(&b).unwrap();
        assert_close(&ours, &want, TOL, &format!("silu_mul {shape:?}"));
        let ours = sigmoid_mul(&b, &a).unwrap().expect("handled");
        let want = b.multiply(mlx_rs::ops::sigmoid(&a).unwrap()).unwrap();
        assert_close(&ours, &want, TOL, &format!("sigmoid_mul {shape:?}"));
    }
}

#[test]
fn gates_across_the_whole_exponent_range() {
    // exp(−a) overflows for a < −88.7 and underflows for a > 87.3; a NaN stays a NaN.
    let values: Vec<f32> = (0..=4800).map(|i| -120.0 + 0.05 * i as f32).collect();
    let a = Array::from_slice(&values, &[values.len() as i32]);
    let b = Array::from_slice(&vec![1.5f32; values.len()], a.shape());
    let ours = silu_mul(&a, &b).unwrap().expect("handled");
    let want = mlx_rs::nn::silu(&a).unwrap().multiply(&b).unwrap();
    assert_close(&ours, &want, TOL, "silu_mul from -120 to 120");
    let ours = sigmoid_mul(&b, &a).unwrap().expect("handled");
    let want = b.multiply(mlx_rs::ops::sigmoid(&a).unwrap()).unwrap();
    assert_close(&ours, &want, TOL, "sigmoid_mul from -120 to 120");
    let nan = Array::from_slice(&[f32::NAN, 1.0, f32::INFINITY, -f32::INFINITY], &[4]);
    let ones = Array::from_slice(&[1.0f32; 4], &[4]);
    let y = sigmoid_mul(&ones, &nan).unwrap().expect("handled");
    y.eval().unwrap();
    let y = y.as_slice::<f32>();
    assert!(y[0].is_nan(), "sigmoid(NaN) = {}", y[0]);
    assert_eq!(&y[1..], &[1.0 / (1.0 + (-1.0f32).exp()), 1.0, 0.0]);
}

#[test]
fn strided_inputs_and_other_dtypes() {
    let mut rng = Rng::new(0x5eed_0302);
    // A per-head slice of an interleaved projection, as the attention's q_norm sees it.
    let qg = normal(&[1, 4, 8, 64], 0.0, &mut rng);
    let q = mlx_rs::ops::split_equal(&qg, 2, -1).unwrap().remove(0);
    let w = normal(&[32], 1.0, &mut rng);
    let ours = rms_norm(&q, &w, 1e-6).unwrap().expect("handled");
    assert_close(
        &ours,
        &mlx_rs::fast::rms_norm(&q, Some(&w), 1e-6).unwrap(),
        TOL,
        "strided rms_norm",
    );
    let t = normal(&[16, 24], 0.0, &mut rng).t();
    let u = normal(&[24, 16], 0.0, &mut rng);
    let ours = silu_mul(&t, &u).unwrap().expect("handled");
    let want = mlx_rs::nn::silu(&t).unwrap().multiply(&u).unwrap();
    assert_close(&ours, &want, TOL, "transposed silu_mul");

    let bf = t.as_dtype(mlx_rs::Dtype::Bfloat16).unwrap();
    assert!(
        silu_mul(&bf, &bf).unwrap().is_none(),
        "bfloat16 is left to MLX"
    );
    assert!(
        silu_mul(&t, &t.reshape(&[-1]).unwrap()).unwrap().is_none(),
        "shapes must agree"
    );
    assert!(
        rms_norm(&u, &w, 1e-6).unwrap().is_none(),
        "weight must match the last axis"
    );
}
