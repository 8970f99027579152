//! Helpers shared by the kernel tests: a seeded RNG for shapes, random quantized matrices made
//! by MLX's own `quantize`, and the exactness check against MLX's own ops.
#![allow(dead_code)]

use mlx_rs::{Array, Dtype};

/// splitmix64: deterministic shapes and seeds without another dependency.
pub struct Rng(u64);

impl Rng {
    pub fn new(seed: u64) -> Self {
        Rng(seed)
    }

    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    /// Uniform in [lo, hi].
    pub fn range(&mut self, lo: i32, hi: i32) -> i32 {
        lo + (self.next_u64() % (hi - lo + 1) as u64) as i32
    }

    pub fn pick<T: Copy>(&mut self, items: &[T]) -> T {
        items[(self.next_u64() % items.len() as u64) as usize]
    }
}

pub const BITS: [i32; 6] = [2, 3, 4, 5, 6, 8];
pub const GROUPS: [i32; 3] = [32, 64, 128];

/// A float32 array of N(mean, 1) values (mean shifts the groups so that biases matter).
pub fn normal(shape: &[i32], mean: f32, rng: &mut Rng) -> Array {
    let key = mlx_rs::random::key(rng.next_u64()).unwrap();
    mlx_rs::random::normal::<f32>(shape, mean, 1.0, &key).unwrap()
}

/// MLX's affine quantization of a random `[.., n, k]` matrix: (codes, scales, biases).
pub fn quantized(
    shape: &[i32],
    group_size: i32,
    bits: i32,
    rng: &mut Rng,
) -> (Array, Array, Array) {
    let mean = (rng.range(-2, 2) as f32) * 0.25;
    let w = normal(shape, mean, rng);
    mlx_rs::ops::quantize(&w, group_size, bits).unwrap()
}

pub fn to_f32_vec(a: &Array) -> Vec<f32> {
    let a = a.as_dtype(Dtype::Float32).unwrap();
    a.eval().unwrap();
    a.as_slice::<f32>().to_vec()
}

/// Evaluates `y`, a lazy output of the kernel under test, into memory that last held NaNs
/// (its inputs evaluated first, so they do not take it): the allocator hands out the buffer
/// freed last, which in a loop over ISAs holds the previous ISA's correct result and would
/// hide outputs a kernel never writes.
pub fn eval_poisoned(y: Array, inputs: &[&Array]) -> Array {
    eval_all_poisoned(vec![y], inputs).remove(0)
}

/// [`eval_poisoned`] for the outputs of one node, evaluated together.
pub fn eval_all_poisoned(ys: Vec<Array>, inputs: &[&Array]) -> Vec<Array> {
    mlx_rs::transforms::eval(inputs.iter().copied()).unwrap();
    let poison: Vec<Array> = ys
        .iter()
        .map(|y| {
            let size: i32 = y.shape().iter().product();
            mlx_rs::ops::full::<f32>(&[size], Array::from_f32(f32::NAN)).unwrap()
        })
        .collect();
    mlx_rs::transforms::eval(&poison).unwrap();
    drop(poison);
    mlx_rs::transforms::eval(&ys).unwrap();
    ys
}

/// Asserts |ours − reference| ≤ tol · max|reference| elementwise (and equal shapes).
pub fn assert_close(ours: &Array, reference: &Array, tol: f32, what: &str) {
    assert_eq!(ours.shape(), reference.shape(), "{what}: shapes");
    let a = to_f32_vec(ours);
    let b = to_f32_vec(reference);
    let scale = b.iter().fold(0.0f32, |m, v| m.max(v.abs()));
    let worst = a
        .iter()
        .zip(&b)
        .map(|(x, y)| (x - y).abs())
        .fold(0.0f32, f32::max);
    assert!(a.iter().all(|v| v.is_finite()), "{what}: non-finite output");
    assert!(
        worst <= tol * scale.max(f32::MIN_POSITIVE),
        "{what}: max |Δ| = {worst:e} > {tol:e} × max|y| = {:e}",
        tol * scale
    );
}

/// MLX's own quantized_matmul (transpose = true), the reference.
pub fn mlx_qmm(x: &Array, w: &Array, s: &Array, b: &Array, gs: i32, bits: i32) -> Array {
    mlx_rs::ops::quantized_matmul(x, w, s, b, true, gs, bits).unwrap()
}
