//! Our float32 row and element ops against the MLX ops they replace: `fast::rms_norm`,
//! `silu(a) · b` and `x · sigmoid(g)`, on decode- and prefill-sized shapes (the large ones are
//! split over the pool), odd sizes and non-contiguous inputs; |Δ| ≤ 1e-5 · max|y|.

mod common;

use common::{assert_close, normal, Rng};
use mlx_node_kernels::{rms_norm, sigmoid_mul, silu_mul};
use mlx_rs::Array;

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
