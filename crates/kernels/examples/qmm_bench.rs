//! Ours vs MLX's `quantized_matmul` on the CPU: ms per call and GB/s of weights read (codes +
//! scales + biases as stored), 4-bit g64 with float32 scales (how the engine holds them).
//!
//!     cargo run --release -p mlx-node-kernels --example qmm_bench [-- --reps 5 --bits 4 --gs 64]
//!
//! MLX is skipped where one call would take more than ~4 s (the 248320-row head at 64 rows).
//! MLX_NODE_THREADS / MLX_NODE_KERNELS_ISA apply to ours as usual; `--portable` also times
//! our portable path, `--no-mlx` skips MLX, `--only TEXT` keeps the cases whose name has TEXT,
//! `--rows 1,8,64` sets the activation row counts.

use std::time::Instant;

use mlx_node_kernels::{quantized_matmul_isa, threads, Isa};
use mlx_rs::Array;

fn arg(name: &str) -> Option<String> {
    let args: Vec<String> = std::env::args().collect();
    args.iter()
        .position(|a| a == name)
        .and_then(|i| args.get(i + 1).cloned())
}

fn best_ms(reps: usize, mut f: impl FnMut() -> Array) -> f64 {
    f().eval().unwrap(); // warm-up
    let mut best = f64::INFINITY;
    for _ in 0..reps {
        let t = Instant::now();
        f().eval().unwrap();
        best = best.min(t.elapsed().as_secs_f64() * 1e3);
    }
    best
}

fn main() {
    let reps: usize = arg("--reps").and_then(|v| v.parse().ok()).unwrap_or(5);
    let bits: i32 = arg("--bits").and_then(|v| v.parse().ok()).unwrap_or(4);
    let gs: i32 = arg("--gs").and_then(|v| v.parse().ok()).unwrap_or(64);
    let portable = std::env::args().any(|a| a == "--portable");
    let skip_mlx = std::env::args().any(|a| a == "--no-mlx");
    let only = arg("--only");
    let rows: Vec<i32> = arg("--rows")
        .map(|v| v.split(',').filter_map(|r| r.trim().parse().ok()).collect())
        .unwrap_or_else(|| vec![1, 64]);
    println!(
        "ours: {} ISA, {} threads; {bits}-bit g{gs}, f32 scales/biases, f32 x; best of {reps}",
        Isa::Default.resolved().name(),
        threads()
    );
    let cases: [(&str, i32, i32); 6] = [
        ("4096x2048", 4096, 2048),
        ("0.8B q_proj 4096x1024", 4096, 1024),
        ("0.8B gate/up 3584x1024", 3584, 1024),
        ("0.8B down 1024x3584", 1024, 3584),
        ("0.8B o_proj 1024x2048", 1024, 2048),
        ("0.8B lm_head 248320x1024", 248320, 1024),
    ];
    println!(
        "{:<26} {:>4} {:>10} {:>8} {:>10} {:>8} {:>8}{}",
        "weight [N x K]",
        "rows",
        "ours ms",
        "GB/s",
        "MLX ms",
        "GB/s",
        "speedup",
        if portable { "  portable ms" } else { "" }
    );
    let key = mlx_rs::random::key(7).unwrap();
    for (name, n, k) in cases {
        if only.as_deref().is_some_and(|o| !name.contains(o)) {
            continue;
        }
        let w = mlx_rs::random::normal::<f32>(&[n, k][..], 0.0, 0.02, &key).unwrap();
        let (wq, s, b) = mlx_rs::ops::quantize(&w, gs, bits).unwrap();
        mlx_rs::transforms::eval([&wq, &s, &b]).unwrap();
        drop(w);
        let bytes = (wq.nbytes() + s.nbytes() + b.nbytes()) as f64;
        for &m in &rows {
            let x = mlx_rs::random::normal::<f32>(&[m, k][..], 0.0, 1.0, &key).unwrap();
            x.eval().unwrap();
            let ours = best_ms(reps, || {
                quantized_matmul_isa(&x, &wq, &s, &b, gs, bits, Isa::Default)
                    .unwrap()
                    .unwrap()
            });
            // MLX's qmm runs ≈ 0.66 G multiply-adds per second here, whatever the row count.
            let mlx_estimate_s = (n as f64) * (k as f64) * (m as f64) / 0.66e9;
            let mlx = (!skip_mlx && mlx_estimate_s < 4.0).then(|| {
                best_ms(reps.min(2), || {
                    mlx_rs::ops::quantized_matmul(&x, &wq, &s, &b, true, gs, bits).unwrap()
                })
            });
            let gbs = |ms: f64| bytes / (ms * 1e-3) / 1e9;
            let (mlx_ms, mlx_gbs, speedup) = match mlx {
                Some(ms) => (
                    format!("{ms:.2}"),
                    format!("{:.2}", gbs(ms)),
                    format!("{:.1}x", ms / ours),
                ),
                None => ("skipped".into(), "-".into(), "-".into()),
            };
            let portable_ms = if portable {
                let ms = best_ms(reps.min(2), || {
                    quantized_matmul_isa(&x, &wq, &s, &b, gs, bits, Isa::Portable)
                        .unwrap()
                        .unwrap()
                });
                format!("  {ms:>11.2}")
            } else {
                String::new()
            };
            println!(
                "{name:<26} {m:>4} {ours:>10.2} {:>8.2} {mlx_ms:>10} {mlx_gbs:>8} {speedup:>8}{portable_ms}",
                gbs(ours)
            );
        }
    }
}
