//! MLX through mlx-rs through our sys crate: real arithmetic checked against values computed
//! here on the CPU, with bounds that follow from float32 rounding and from MLX's affine
//! quantization format (packed unsigned codes, one scale and one bias per group).

use mlx_rs::ops::{dequantize, matmul, quantize, quantized_matmul};
use mlx_rs::{Array, Dtype};

/// A small deterministic generator (SplitMix64), so every run sees the same data.
struct Rng(u64);

impl Rng {
    fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// Uniform in [-1, 1).
    fn uniform(&mut self) -> f32 {
        ((self.next_u64() >> 40) as f32 / (1u64 << 24) as f32) * 2.0 - 1.0
    }

    fn matrix(&mut self, len: usize, scale: f32) -> Vec<f32> {
        (0..len).map(|_| self.uniform() * scale).collect()
    }
}

fn to_vec(a: &Array) -> Vec<f32> {
    a.eval().unwrap();
    a.as_slice::<f32>().to_vec()
}

/// Code `j` of a row packed by MLX: `bits`-bit fields laid end to end, least significant bit
/// first, in little-endian 32-bit words (fields of 3, 5 or 6 bits straddle word boundaries).
fn unpack(words: &[u32], j: usize, bits: usize) -> u32 {
    let bit = j * bits;
    let (word, shift) = (bit / 32, bit % 32);
    let mut v = (words[word] as u64) >> shift;
    if shift + bits > 32 {
        v |= (words[word + 1] as u64) << (32 - shift);
    }
    (v & ((1u64 << bits) - 1)) as u32
}

/// Weights with the cases a quantizer gets wrong: rows of one repeated value, an all-zero
/// row, rows that are all positive or all negative, and a wide row.
fn weights(rows: usize, cols: usize, rng: &mut Rng) -> Vec<f32> {
    let mut w = rng.matrix(rows * cols, 0.05);
    w[..cols].fill(0.25);
    w[cols..2 * cols].fill(0.0);
    for x in &mut w[2 * cols..3 * cols] {
        *x = x.abs() + 0.01;
    }
    for x in &mut w[3 * cols..4 * cols] {
        *x = -x.abs() - 0.3;
    }
    for x in &mut w[4 * cols..5 * cols] {
        *x *= 40.0;
    }
    w
}

#[test]
fn quantize_round_trip_obeys_the_affine_format() {
    let mut rng = Rng(7);
    let (rows, cols) = (6usize, 512usize);
    for bits in [2usize, 3, 4, 5, 6, 8] {
        for group in [32usize, 64, 128] {
            let w = weights(rows, cols, &mut rng);
            let wa = Array::from_slice(&w, &[rows as i32, cols as i32]);
            let (wq, scales, biases) = quantize(&wa, group as i32, bits as i32).unwrap();
            let ctx = format!("bits {bits}, group {group}");

            assert_eq!(wq.dtype(), Dtype::Uint32, "{ctx}");
            assert_eq!(
                wq.shape(),
                [rows as i32, (cols * bits / 32) as i32],
                "{ctx}"
            );
            let groups = cols / group;
            assert_eq!(scales.shape(), [rows as i32, groups as i32], "{ctx}");
            assert_eq!(biases.shape(), [rows as i32, groups as i32], "{ctx}");

            wq.eval().unwrap();
            let codes = wq.as_slice::<u32>().to_vec();
            let (s, b) = (to_vec(&scales), to_vec(&biases));
            let deq =
                to_vec(&dequantize(&wq, &scales, &biases, group as i32, bits as i32).unwrap());
            let levels = (1u32 << bits) - 1;
            let words_per_row = cols * bits / 32;

            for r in 0..rows {
                let row_codes = &codes[r * words_per_row..(r + 1) * words_per_row];
                for g in 0..groups {
                    let (scale, bias) = (s[r * groups + g], b[r * groups + g]);
                    let span = &w[r * cols + g * group..r * cols + (g + 1) * group];
                    let (lo, hi) = span
                        .iter()
                        .fold((f32::MAX, f32::MIN), |(l, h), &x| (l.min(x), h.max(x)));
                    let magnitude = lo.abs().max(hi.abs());
                    let eps = 8.0 * f32::EPSILON * magnitude.max(f32::MIN_POSITIVE);
                    // The grid the codes can express, and the step a quantizer must reach.
                    let (g_lo, g_hi) = {
                        let (a, z) = (bias, bias + scale * levels as f32);
                        (a.min(z), a.max(z))
                    };
                    let step = (hi - lo) / levels as f32;
                    for (k, &x) in span.iter().enumerate() {
                        let j = g * group + k;
                        let q = unpack(row_codes, j, bits);
                        assert!(q <= levels, "{ctx}: code {q} out of range");
                        let value = deq[r * cols + j];
                        // The dequantized value is exactly the format's scale * q + bias.
                        let expected = scale * q as f32 + bias;
                        assert!(
                            (value - expected).abs() <= eps,
                            "{ctx}: {value} vs {expected}"
                        );
                        // It is the nearest point of the grid to the weight ...
                        for other in [q.wrapping_sub(1), q + 1] {
                            if other <= levels {
                                let alt = scale * other as f32 + bias;
                                assert!(
                                    (x - value).abs() <= (x - alt).abs() + eps,
                                    "{ctx}: {x} coded as {value}, but {alt} is nearer"
                                );
                            }
                        }
                        // ... and the grid spans the group's range up to at most one step at
                        // its far end (MLX makes the larger-magnitude end exact).
                        let outside = (g_lo - x).max(x - g_hi).max(0.0);
                        assert!(outside <= step * 1.5 + eps, "{ctx}: {x} outside the grid");
                        assert!(
                            (x - value).abs() <= scale.abs() / 2.0 + outside + eps,
                            "{ctx}: |{x} - {value}| exceeds half a step"
                        );
                    }
                }
            }
        }
    }
}

/// |Σ aᵢbᵢ computed in f32 − exact| ≤ γ · Σ|aᵢbᵢ| with γ = n·u/(1 − n·u): the classic bound
/// for any summation order, so it holds whatever blocking MLX uses.
fn dot_bound(n: usize, abs_sum: f64) -> f64 {
    let nu = n as f64 * f32::EPSILON as f64 / 2.0;
    nu / (1.0 - nu) * abs_sum + f32::MIN_POSITIVE as f64
}

#[test]
fn matmul_matches_a_product_computed_here() {
    let mut rng = Rng(11);
    let (m, k, n) = (37usize, 300usize, 29usize);
    let a = rng.matrix(m * k, 1.0);
    let b = rng.matrix(k * n, 1.0);
    let got = to_vec(
        &matmul(
            Array::from_slice(&a, &[m as i32, k as i32]),
            Array::from_slice(&b, &[k as i32, n as i32]),
        )
        .unwrap(),
    );
    for i in 0..m {
        for j in 0..n {
            let (mut exact, mut abs_sum) = (0f64, 0f64);
            for p in 0..k {
                let t = a[i * k + p] as f64 * b[p * n + j] as f64;
                exact += t;
                abs_sum += t.abs();
            }
            let delta = (got[i * n + j] as f64 - exact).abs();
            assert!(delta <= dot_bound(k, abs_sum), "[{i},{j}]: {delta:e}");
        }
    }
}

#[test]
fn quantized_matmul_equals_the_product_with_dequantized_weights() {
    let mut rng = Rng(13);
    let (m, k, n) = (5usize, 256usize, 48usize);
    for bits in [2, 3, 4, 5, 6, 8] {
        for group in [32, 64, 128] {
            let w = Array::from_slice(&rng.matrix(n * k, 0.1), &[n as i32, k as i32]);
            let x = rng.matrix(m * k, 1.0);
            let (wq, s, b) = quantize(&w, group, bits).unwrap();
            let wd = to_vec(&dequantize(&wq, &s, &b, group, bits).unwrap());
            let xa = Array::from_slice(&x, &[m as i32, k as i32]);
            let y = to_vec(&quantized_matmul(&xa, &wq, &s, &b, true, group, bits).unwrap());
            for i in 0..m {
                for j in 0..n {
                    let (mut exact, mut abs_sum) = (0f64, 0f64);
                    for p in 0..k {
                        let t = x[i * k + p] as f64 * wd[j * k + p] as f64;
                        exact += t;
                        abs_sum += t.abs();
                    }
                    let delta = (y[i * n + j] as f64 - exact).abs();
                    // Dequantizing inside the kernel may round scale·q + bias once more.
                    let bound = dot_bound(k + 2, abs_sum);
                    assert!(
                        delta <= bound,
                        "bits {bits} group {group} [{i},{j}]: {delta:e}"
                    );
                }
            }
        }
    }
}

#[test]
fn random_ops_run_with_the_default_seed() {
    // Without an explicit key mlx-rs seeds from mach_approximate_time, which the sys crate
    // provides off Apple platforms; this fails to link or run if that is missing.
    let x = mlx_rs::random::normal::<f32>(&[1000], None, None, None).unwrap();
    let v = to_vec(&x);
    let mean = v.iter().sum::<f32>() / v.len() as f32;
    assert!(v.iter().all(|x| x.is_finite()));
    assert!(mean.abs() < 0.2, "mean {mean}");
    assert!(v.iter().any(|&x| x != v[0]));
}
