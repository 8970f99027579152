//! Where a greedy decode step's time goes: building the graph vs evaluating it (and the time
//! of the PROMPT-token prefill before it, after an untimed one that warms the weights).
//!     cargo run --release -p mlx-node-core --example decode_profile -- MODEL_DIR [STEPS [PROMPT]]
//! On Linux it also prints the CPU time the decode steps took on this (the graph-building and
//! MLX-encoding) thread and on all of the process's threads together.
use std::time::Instant;

/// CPU nanoseconds of this thread and of the whole process (Linux schedstat), if readable.
fn cpu_times() -> Option<(u64, u64)> {
    let first = |path: &std::path::Path| -> Option<u64> {
        std::fs::read_to_string(path)
            .ok()?
            .split_whitespace()
            .next()?
            .parse()
            .ok()
    };
    let this = first(std::path::Path::new("/proc/thread-self/schedstat"))?;
    let mut all = 0;
    for task in std::fs::read_dir("/proc/self/task").ok()? {
        all += first(&task.ok()?.path().join("schedstat")).unwrap_or(0);
    }
    Some((this, all))
}

use mlx_node_core::generate::greedy_token;
use mlx_node_core::model::{Logits, Qwen35};
use mlx_rs::{Array, Dtype};

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let dir = std::path::Path::new(&args[1]);
    let steps: usize = args.get(2).and_then(|s| s.parse().ok()).unwrap_or(32);
    let model = Qwen35::load(dir, Dtype::Float32).unwrap();
    let mut cache = model.new_cache();
    let prompt_tokens: i32 = args.get(3).and_then(|s| s.parse().ok()).unwrap_or(16);
    let prompt: Vec<i32> = (0..prompt_tokens)
        .map(|i| (i * 7919 + 13) % 240000)
        .collect();
    // A first pass touches every weight (reading them in from the file) and sizes MLX's
    // buffer cache, so that the timed prefill measures the kernels alone.
    let warm = model
        .forward(
            &Array::from_slice(&prompt, &[1, prompt_tokens]),
            &mut model.new_cache(),
            Logits::Last,
        )
        .unwrap();
    warm.eval().unwrap();
    let t = Instant::now();
    let logits = model
        .forward(
            &Array::from_slice(&prompt, &[1, prompt_tokens]),
            &mut cache,
            Logits::Last,
        )
        .unwrap();
    let mut token = greedy_token(&logits).unwrap();
    token.eval().unwrap();
    let prefill = t.elapsed().as_secs_f64();
    println!(
        "prefill {prompt_tokens} tokens: {:.1} ms ({:.1} tok/s)",
        prefill * 1e3,
        prompt_tokens as f64 / prefill
    );
    let (mut build, mut eval) = (0.0, 0.0);
    let cpu_before = cpu_times();
    let started = Instant::now();
    for _ in 0..steps {
        let t = Instant::now();
        let logits = model
            .forward(&token.reshape(&[1, 1]).unwrap(), &mut cache, Logits::Last)
            .unwrap();
        token = greedy_token(&logits).unwrap();
        build += t.elapsed().as_secs_f64();
        let t = Instant::now();
        token.eval().unwrap();
        eval += t.elapsed().as_secs_f64();
    }
    let total = started.elapsed().as_secs_f64();
    let ms = |s: f64| s * 1e3 / steps as f64;
    println!(
        "{steps} steps: {:.2} ms/token ({:.1} tok/s): build {:.2} ms, eval {:.2} ms",
        ms(total),
        steps as f64 / total,
        ms(build),
        ms(eval)
    );
    if let (Some((this0, all0)), Some((this1, all1))) = (cpu_before, cpu_times()) {
        let per = |ns: u64| ns as f64 / 1e6 / steps as f64;
        println!(
            "CPU per token: this thread {:.2} ms, all threads {:.2} ms",
            per(this1 - this0),
            per(all1 - all0)
        );
    }
}
