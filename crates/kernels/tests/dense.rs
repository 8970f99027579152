//! Our dense matmul (`x · wᵀ` with float32, bfloat16 or float16 weights read as stored)
//! against MLX's `matmul` on the weights converted to float32: one to many activation rows,
//! K not a multiple of the vector width, N across the pool's chunks, every ISA this CPU runs;
//! |Δ| ≤ 1e-5 · max|y|.

mod common;

use common::{assert_close, eval_poisoned, normal, Rng};
use mlx_node_kernels::{dense_matmul, Isa};
use mlx_rs::Dtype;

#[test]
fn dense_matmul_matches_mlx() {
    let mut rng = Rng::new(0x5eed_0500);
    // (M, N, K)
    let cases = [
        (1, 1024, 2048),
        (1, 16, 1024),
        (3, 37, 70),
        (7, 65, 129),
        (64, 300, 256),
        // Column pieces of 24: many-row tiles of 32 columns whose second half is partly used.
        (13, 190, 384),
        (1, 5, 3),
    ];
    for (m, n, k) in cases {
        let x = normal(&[m, k], 0.0, &mut rng);
        let w32 = normal(&[n, k], 0.1, &mut rng);
        for dtype in [Dtype::Float32, Dtype::Bfloat16, Dtype::Float16] {
            let w = w32.as_dtype(dtype).unwrap();
            let want = x.matmul(w.as_dtype(Dtype::Float32).unwrap().t()).unwrap();
            for isa in Isa::available() {
                let ours = eval_poisoned(
                    dense_matmul(&x, &w, isa).unwrap().expect("handled"),
                    &[&x, &w],
                );
                assert_close(
                    &ours,
                    &want,
                    1e-5,
                    &format!("M {m} N {n} K {k} {dtype:?} {isa:?}"),
                );
            }
        }
    }
    // Batched activations as the engine passes them, and what is left to MLX.
    let x = normal(&[2, 3, 40], 0.0, &mut rng);
    let w = normal(&[9, 40], 0.0, &mut rng)
        .as_dtype(Dtype::Bfloat16)
        .unwrap();
    let want = x.matmul(w.as_dtype(Dtype::Float32).unwrap().t()).unwrap();
    let ours = dense_matmul(&x, &w, Isa::Default)
        .unwrap()
        .expect("handled");
    assert_close(&ours, &want, 1e-5, "[2, 3, 40] x");
    let bf = x.as_dtype(Dtype::Bfloat16).unwrap();
    assert!(
        dense_matmul(&bf, &w, Isa::Default).unwrap().is_none(),
        "bfloat16 activations"
    );
    let wrong = normal(&[9, 41], 0.0, &mut rng);
    assert!(
        dense_matmul(&x, &wrong, Isa::Default).unwrap().is_none(),
        "K mismatch"
    );
}
