//! The fused Gated DeltaNet mixing on the Qwen3.5-0.8B layer shape (16 key and 16 value heads
//! of 128, conv 4): ms per layer for a decode token and for a prefill chunk, best of a few.
//! Each rep runs `--layers` layers with states of their own (18 MiB for 18), so, as in a
//! decode, a layer's state is not in cache when it runs.
//!
//!     cargo run --release -p mlx-node-kernels --example gated_delta_bench [-- --tokens 128 --reps 10 --layers 18]

use std::time::Instant;

use mlx_node_kernels::{gated_delta, GatedDeltaInputs, Isa};
use mlx_rs::{random, Array};

fn arg(name: &str, default: i32) -> i32 {
    let args: Vec<String> = std::env::args().collect();
    args.iter()
        .position(|a| a == name)
        .and_then(|i| args.get(i + 1)?.parse().ok())
        .unwrap_or(default)
}

fn normal(shape: &[i32], scale: f32) -> Array {
    let a = random::normal::<f32>(shape, None, None, None).unwrap();
    let a = a.multiply(Array::from_f32(scale)).unwrap();
    a.eval().unwrap();
    a
}

fn main() {
    let reps = arg("--reps", 10);
    let prefill = arg("--tokens", 128);
    let layers = arg("--layers", 18).max(1) as usize;
    let (hk, hv, dk, dv, k) = (16, 16, 128, 128, 4);
    let c = 2 * hk * dk + hv * dv;
    let conv_weight = normal(&[c, k], 0.3);
    let neg_a = normal(&[hv], 1.0).abs().unwrap().negative().unwrap();
    let dt_bias = normal(&[hv], 1.0);
    let norm_weight = normal(&[dv], 1.0);
    let conv_state = normal(&[1, k - 1, c], 1.0);
    let states: Vec<Array> = (0..layers).map(|_| normal(&[1, hv, dk, dv], 0.1)).collect();
    for tokens in [1, prefill] {
        let qkv = normal(&[1, tokens, c], 1.0);
        let z = normal(&[1, tokens, hv * dv], 1.0);
        let a = normal(&[1, tokens, hv], 1.0);
        let b = normal(&[1, tokens, hv], 1.0);
        let inputs = |state| GatedDeltaInputs {
            qkv: &qkv,
            z: &z,
            a: &a,
            b: &b,
            conv_weight: &conv_weight,
            conv_state: &conv_state,
            neg_a: &neg_a,
            dt_bias: &dt_bias,
            norm_weight: &norm_weight,
            state,
            key_heads: hk,
            value_heads: hv,
            eps: 1e-6,
        };
        let mut best = f64::INFINITY;
        for _ in 0..=reps {
            let t = Instant::now();
            let outs: Vec<Array> = states
                .iter()
                .flat_map(|state| {
                    let out = gated_delta(&inputs(state), Isa::Default)
                        .unwrap()
                        .expect("on the CPU");
                    [out.y, out.state, out.conv_state]
                })
                .collect();
            mlx_rs::transforms::eval(&outs).unwrap();
            best = best.min(t.elapsed().as_secs_f64() / layers as f64);
        }
        println!(
            "T {tokens:4}: {:.3} ms per layer ({layers} layers)",
            best * 1e3
        );
    }
}
