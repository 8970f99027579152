//! Our rotary embedding against MLX's `fast::rope` (NeoX layout, scale 1): partial and full
//! rotation, decode positions far into the context, prefill chunks, a strided input;
//! |Δ| ≤ 1e-5 · max|y|.

mod common;

use common::{assert_close, normal, Rng};
use mlx_node_kernels::{rope, rope_frequencies};

#[test]
fn rope_matches_mlx() {
    let mut rng = Rng::new(0x5eed_0600);
    // (shape [B, N, T, D], dims, base, offsets)
    let cases: [(&[i32], i32, f32, &[i32]); 4] = [
        (&[1, 8, 1, 256], 64, 1e7, &[0, 1, 200, 4097, 100_000]),
        (&[1, 2, 128, 256], 64, 1e7, &[0, 300]),
        (&[2, 3, 5, 16], 16, 1e4, &[0, 7]),
        (&[1, 1, 3, 10], 4, 500.0, &[2]),
    ];
    for (shape, dims, base, offsets) in cases {
        let x = normal(shape, 0.0, &mut rng);
        let freqs = rope_frequencies(dims, base).unwrap();
        for &offset in offsets {
            let want = mlx_rs::fast::rope(&x, dims, false, base, 1.0, offset, None).unwrap();
            let ours = rope(&x, &freqs, dims, offset).unwrap().expect("handled");
            assert_close(
                &ours,
                &want,
                1e-5,
                &format!("{shape:?} dims {dims} offset {offset}"),
            );
        }
    }
    // [B, T, N, D] transposed to [B, N, T, D], as the engine passes q and k.
    let x = normal(&[1, 4, 8, 32], 0.0, &mut rng)
        .transpose_axes(&[0, 2, 1, 3])
        .unwrap();
    let freqs = rope_frequencies(16, 1e6).unwrap();
    let want = mlx_rs::fast::rope(&x, 16, false, 1e6, 1.0, 9, None).unwrap();
    assert_close(
        &rope(&x, &freqs, 16, 9).unwrap().expect("handled"),
        &want,
        1e-5,
        "strided",
    );
    assert!(rope(&x, &freqs, 15, 9).unwrap().is_none(), "odd dims");
}
