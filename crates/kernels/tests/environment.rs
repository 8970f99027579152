//! The environment knobs, read once per process (so this file is its own test binary, with one
//! test): MLX_NODE_THREADS sizes the pool, MLX_NODE_KERNELS_ISA=portable forces the fallback
//! as the default ISA, and results stay exact with more threads than this machine has cores.

mod common;

use common::{assert_close, mlx_qmm, normal, quantized, Rng};
use mlx_node_kernels::{quantized_matmul, threads, Isa};

#[test]
fn threads_and_isa_come_from_the_environment() {
    std::env::set_var("MLX_NODE_THREADS", "3");
    std::env::set_var("MLX_NODE_KERNELS_ISA", "portable");
    assert_eq!(threads(), 3);
    assert_eq!(Isa::Default.resolved(), Isa::Portable);
    assert_eq!(Isa::Portable.resolved(), Isa::Portable);

    let mut rng = Rng::new(0x5eed_0100);
    for (n, m) in [(1, 1), (2, 1), (3, 4), (517, 1), (517, 9)] {
        let (w, s, b) = quantized(&[n, 256], 64, 4, &mut rng);
        let x = normal(&[m, 256], 0.0, &mut rng);
        let y = quantized_matmul(&x, &w, &s, &b, 64, 4)
            .unwrap()
            .expect("handled");
        assert_close(
            &y,
            &mlx_qmm(&x, &w, &s, &b, 64, 4),
            1e-5,
            &format!("N {n} M {m}"),
        );
    }
}
