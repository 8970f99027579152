//! Where a greedy decode step's time goes: building the graph vs evaluating it (and the time
//! of the PROMPT-token prefill before it).
//!     cargo run --release -p mlx-node-core --example decode_profile -- MODEL_DIR [STEPS [PROMPT]]
use std::time::Instant;

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
    let t = Instant::now();
    let logits = model
        .forward(
            &Array::from_slice(&prompt, &[1, prompt_tokens]),
            &mut cache,
            Logits::Last,
        )
        .unwrap();
    let mut token = mlx_rs::ops::indexing::argmax_axis(&logits, -1, None).unwrap();
    token.eval().unwrap();
    let prefill = t.elapsed().as_secs_f64();
    println!(
        "prefill {prompt_tokens} tokens: {:.1} ms ({:.1} tok/s)",
        prefill * 1e3,
        prompt_tokens as f64 / prefill
    );
    let (mut build, mut eval) = (0.0, 0.0);
    let started = Instant::now();
    for _ in 0..steps {
        let t = Instant::now();
        let logits = model
            .forward(&token.reshape(&[1, 1]).unwrap(), &mut cache, Logits::Last)
            .unwrap();
        token = mlx_rs::ops::indexing::argmax_axis(&logits, -1, None).unwrap();
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
}
