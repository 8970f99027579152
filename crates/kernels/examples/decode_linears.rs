//! One decode token's quantized matvecs of the Qwen3.5-0.8B shapes, each with its own weights
//! (so, as in a real decode, nothing stays in cache between tokens): ms per token and GB/s of
//! weights read, our kernels against the machine's read bandwidth (`bandwidth` example).
//!
//!     cargo run --release -p mlx-node-kernels --example decode_linears [-- --reps 5 --bf16]
//!
//! `--bf16` stores scales and biases in bfloat16 (as the checkpoints do) instead of float32.

use std::time::Instant;

use mlx_node_kernels::{quantized_matmul, threads};
use mlx_rs::{Array, Dtype};

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let reps: usize = args
        .iter()
        .position(|a| a == "--reps")
        .and_then(|i| args.get(i + 1)?.parse().ok())
        .unwrap_or(5);
    let bf16 = args.iter().any(|a| a == "--bf16");
    let (bits, gs) = (4, 64);
    let (h, ffn, vocab) = (1024, 3584, 248320);
    let mut shapes: Vec<(i32, i32)> = Vec::new();
    for layer in 0..24 {
        if layer % 4 == 3 {
            shapes.extend([(4096, h), (512, h), (512, h), (h, 2048)]);
        } else {
            shapes.extend([(6144, h), (2048, h), (16, h), (16, h), (h, 2048)]);
        }
        shapes.extend([(ffn, h), (ffn, h), (h, ffn)]);
    }
    shapes.push((vocab, h));
    let key = mlx_rs::random::key(11).unwrap();
    let mut weights = Vec::new();
    let mut bytes = 0usize;
    for &(n, k) in &shapes {
        let w = mlx_rs::random::normal::<f32>(&[n, k][..], 0.0, 0.02, &key).unwrap();
        let (wq, s, b) = mlx_rs::ops::quantize(&w, gs, bits).unwrap();
        let (s, b) = if bf16 {
            (
                s.as_dtype(Dtype::Bfloat16).unwrap(),
                b.as_dtype(Dtype::Bfloat16).unwrap(),
            )
        } else {
            (s, b)
        };
        mlx_rs::transforms::eval([&wq, &s, &b]).unwrap();
        bytes += wq.nbytes() + s.nbytes() + b.nbytes();
        weights.push((wq, s, b));
    }
    let xs: Vec<Array> = [h, 2048, ffn]
        .iter()
        .map(|&k| mlx_rs::random::normal::<f32>(&[1, k][..], 0.0, 1.0, &key).unwrap())
        .collect();
    let x_for = |k: i32| {
        &xs[if k == h {
            0
        } else if k == 2048 {
            1
        } else {
            2
        }]
    };
    println!(
        "{} matrices, {:.1} MB of weights ({}-bit g{gs}, {} scales), {} threads",
        shapes.len(),
        bytes as f64 / 1e6,
        bits,
        if bf16 { "bf16" } else { "f32" },
        threads()
    );
    let mut best = f64::INFINITY;
    for rep in 0..=reps {
        let t = Instant::now();
        // One graph for the token, as the engine builds it.
        let ys: Vec<Array> = shapes
            .iter()
            .zip(&weights)
            .map(|((_, k), (wq, s, b))| {
                quantized_matmul(x_for(*k), wq, s, b, gs, bits)
                    .unwrap()
                    .unwrap()
            })
            .collect();
        mlx_rs::transforms::eval(&ys).unwrap();
        let ms = t.elapsed().as_secs_f64() * 1e3;
        if rep > 0 {
            best = best.min(ms);
        }
    }
    println!(
        "best of {reps}: {best:.2} ms per token, {:.2} GB/s",
        bytes as f64 / (best * 1e-3) / 1e9
    );
}
