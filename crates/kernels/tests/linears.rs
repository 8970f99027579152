//! Several quantized products of one input as one node (`quantized_linears`), and SwiGLU's
//! `silu(x·Gᵀ) · (x·Uᵀ)` as one (`quantized_swiglu`), against MLX's own `quantized_matmul`
//! and ops on every ISA this CPU runs, |Δ| ≤ 1e-5 · max|y| per output.

mod common;

use common::{assert_close, eval_all_poisoned, mlx_qmm, normal, quantized, Rng};
use mlx_node_kernels::{quantized_linears, quantized_swiglu, Isa, QuantizedWeight};
use mlx_rs::{Array, Dtype};

const TOL: f32 = 1e-5;

struct Matrix {
    w: Array,
    s: Array,
    b: Array,
    gs: i32,
    bits: i32,
}

impl Matrix {
    fn random(n: i32, k: i32, gs: i32, bits: i32, rng: &mut Rng) -> Matrix {
        let (w, s, b) = quantized(&[n, k], gs, bits, rng);
        Matrix { w, s, b, gs, bits }
    }

    fn weight(&self) -> QuantizedWeight<'_> {
        QuantizedWeight {
            codes: &self.w,
            scales: &self.s,
            biases: &self.b,
            group_size: self.gs,
            bits: self.bits,
        }
    }

    fn reference(&self, x: &Array) -> Array {
        mlx_qmm(x, &self.w, &self.s, &self.b, self.gs, self.bits)
    }

    fn arrays(&self) -> [&Array; 3] {
        [&self.w, &self.s, &self.b]
    }
}

fn inputs<'a>(x: &'a Array, ms: &[&'a Matrix]) -> Vec<&'a Array> {
    std::iter::once(x)
        .chain(ms.iter().flat_map(|m| m.arrays()))
        .collect()
}

#[test]
fn each_output_matches_its_own_product() {
    let mut rng = Rng::new(0x5eed_0301);
    // A layer's projections differ in width, bits and group (190 columns split over the pool,
    // tiny ones that are not), and the mixed-precision recipes give them different bits.
    let k = 384;
    let ms = vec![
        Matrix::random(190, k, 64, 4, &mut rng),
        Matrix::random(7, k, 32, 6, &mut rng),
        Matrix::random(33, k, 128, 3, &mut rng),
        Matrix::random(1, k, 64, 5, &mut rng),
    ];
    let weights: Vec<QuantizedWeight> = ms.iter().map(Matrix::weight).collect();
    for shape in [vec![1, k], vec![3, k], vec![13, k], vec![2, 3, k]] {
        let x = normal(&shape, 0.0, &mut rng);
        for isa in Isa::available() {
            let ys = quantized_linears(&x, &weights, isa)
                .unwrap()
                .expect("handled on the CPU stream");
            assert_eq!(ys.len(), ms.len());
            let all: Vec<&Matrix> = ms.iter().collect();
            let ys = eval_all_poisoned(ys, &inputs(&x, &all));
            for (i, (y, m)) in ys.iter().zip(&ms).enumerate() {
                assert_eq!(y.dtype(), Dtype::Float32);
                assert_close(
                    y,
                    &m.reference(&x),
                    TOL,
                    &format!("{shape:?} output {i} {isa:?}"),
                );
            }
        }
    }
}

#[test]
fn half_precision_scales_give_float32_outputs() {
    let mut rng = Rng::new(0x5eed_0302);
    let k = 256;
    let mut ms = vec![
        Matrix::random(40, k, 64, 4, &mut rng),
        Matrix::random(24, k, 32, 8, &mut rng),
    ];
    for m in &mut ms {
        m.s = m.s.as_dtype(Dtype::Bfloat16).unwrap();
        m.b = m.b.as_dtype(Dtype::Bfloat16).unwrap();
    }
    let weights: Vec<QuantizedWeight> = ms.iter().map(Matrix::weight).collect();
    let x = normal(&[2, k], 0.0, &mut rng);
    let ys = quantized_linears(&x, &weights, Isa::Default)
        .unwrap()
        .unwrap();
    let all: Vec<&Matrix> = ms.iter().collect();
    let ys = eval_all_poisoned(ys, &inputs(&x, &all));
    for (y, m) in ys.iter().zip(&ms) {
        let reference = m.reference(&x);
        assert_eq!(y.dtype(), reference.dtype());
        assert_close(y, &reference, TOL, "bf16 scales");
    }
}

#[test]
fn swiglu_matches_mlx_ops() {
    let mut rng = Rng::new(0x5eed_0303);
    let k = 512;
    // Gate and up at different bits, as unsloth's recipe may leave them.
    for (n, m_rows, up_bits, up_gs) in [(190, 1, 4, 64), (97, 5, 5, 32), (8, 13, 4, 128)] {
        let gate = Matrix::random(n, k, 64, 4, &mut rng);
        let up = Matrix::random(n, k, up_gs, up_bits, &mut rng);
        let x = normal(&[1, m_rows, k], 0.0, &mut rng);
        let reference = mlx_rs::nn::silu(gate.reference(&x))
            .unwrap()
            .multiply(up.reference(&x))
            .unwrap();
        for isa in Isa::available() {
            let y = quantized_swiglu(&x, gate.weight(), up.weight(), isa)
                .unwrap()
                .expect("handled on the CPU stream");
            let y = eval_all_poisoned(vec![y], &inputs(&x, &[&gate, &up])).remove(0);
            assert_close(&y, &reference, TOL, &format!("N {n} M {m_rows} {isa:?}"));
        }
    }
}

#[test]
fn products_it_does_not_handle_are_left_to_mlx() {
    let mut rng = Rng::new(0x5eed_0304);
    let a = Matrix::random(16, 256, 64, 4, &mut rng);
    let wide = Matrix::random(16, 512, 64, 4, &mut rng);
    let other = Matrix::random(24, 256, 64, 4, &mut rng);
    let x = normal(&[1, 256], 0.0, &mut rng);
    // An input width one of the matrices does not take.
    assert!(
        quantized_linears(&x, &[a.weight(), wide.weight()], Isa::Default)
            .unwrap()
            .is_none()
    );
    // SwiGLU's two products must have one shape.
    assert!(
        quantized_swiglu(&x, a.weight(), other.weight(), Isa::Default)
            .unwrap()
            .is_none()
    );
    // Unsupported bits.
    let mut seven = a.weight();
    seven.bits = 7;
    assert!(quantized_linears(&x, &[seven], Isa::Default)
        .unwrap()
        .is_none());
}
