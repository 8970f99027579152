//! Parity with the reference implementations, in float32: transformers for the Hugging Face
//! folders, mlx-lm for the quantized MLX folders (`../shared/fixtures/qwen3_5`, README §6–7).
//!
//! * last-position logits of every prompt within max|Δ| ≤ 1e-3 (two correct float32
//!   implementations agree within 1.2e-4), and the stored `d_long` positions too;
//! * greedy continuations through the cache equal the reference up to the first step whose
//!   top-2 margin is below 1e-3 (a legitimate rounding difference may flip such a step);
//! * chunked prefill + decode equals one full forward within 1e-4.

mod common;

use common::{fixtures, max_abs_diff, Reference};
use mlx_node_core::generate::{greedy, prefill};
use mlx_node_core::{Logits, Qwen35};
use mlx_rs::{Array, Dtype};

const LOGIT_TOLERANCE: f32 = 1e-3;
const MARGIN_FLOOR: f32 = 1e-3;

fn check_model(name: &str) {
    let Some(root) = fixtures() else { return };
    let model = Qwen35::load(&root.join(name), Dtype::Float32).unwrap();
    let reference = Reference::load(&root, name);
    for prompt in &reference.prompts {
        let ids = reference.ids(&format!("{prompt}.input_ids"));

        // One forward over the whole prompt from an empty cache; logits at the last position
        // and at the stored intermediate ones.
        let positions = reference
            .try_ids(&format!("{prompt}.positions"))
            .unwrap_or_default();
        let mut wanted: Vec<i32> = positions.iter().map(|&p| p as i32).collect();
        wanted.push(ids.len() as i32 - 1);
        let tokens = Array::from_slice(
            &ids.iter().map(|&i| i as i32).collect::<Vec<_>>(),
            &[1, ids.len() as i32],
        );
        let logits = model
            .forward(&tokens, &mut model.new_cache(), Logits::At(wanted))
            .unwrap();
        logits.eval().unwrap();
        let vocab = model.config.vocab_size;
        let rows: Vec<&[f32]> = logits.as_slice::<f32>().chunks(vocab).collect();
        let expected = reference.floats(&format!("{prompt}.last_logits"));
        let delta = max_abs_diff(rows[positions.len()], &expected);
        eprintln!("{name} {prompt}: last position max|Δ| = {delta:.2e}");
        assert!(
            delta <= LOGIT_TOLERANCE,
            "{name} {prompt}: max|Δ| {delta} > {LOGIT_TOLERANCE}"
        );
        if !positions.is_empty() {
            let expected = reference.floats(&format!("{prompt}.position_logits"));
            for (row, &p) in positions.iter().enumerate() {
                let delta = max_abs_diff(rows[row], &expected[row * vocab..(row + 1) * vocab]);
                eprintln!("{name} {prompt} position {p}: max|Δ| = {delta:.2e}");
                assert!(
                    delta <= LOGIT_TOLERANCE,
                    "{name} {prompt} position {p}: max|Δ| {delta}"
                );
            }
        }
        // Greedy through the cache: prefill in uneven chunks, then one token per step.
        let expected = reference.ids(&format!("{prompt}.greedy_ids"));
        let margins = reference.floats(&format!("{prompt}.top2_margins"));
        let got = greedy(&model, &ids, expected.len(), 100).unwrap();
        let comparable = margins
            .iter()
            .position(|&m| m < MARGIN_FLOOR)
            .unwrap_or(expected.len());
        assert_eq!(
            &got[..comparable],
            &expected[..comparable],
            "{name} {prompt}: greedy tokens differ within the first {comparable} (well-separated) steps"
        );
    }
}

#[test]
fn tiny_dense_matches_transformers() {
    check_model("tiny-dense");
}

#[test]
fn tiny_moe_matches_transformers() {
    check_model("tiny-moe");
}

#[test]
fn tiny_dense_q4_matches_mlx_lm() {
    check_model("tiny-dense-mlx-q4");
}

#[test]
fn tiny_dense_mixed36_matches_mlx_lm() {
    check_model("tiny-dense-mlx-mixed36");
}

#[test]
fn tiny_moe_q4_matches_mlx_lm() {
    check_model("tiny-moe-mlx-q4");
}

#[test]
fn chunked_prefill_then_decode_equals_one_forward() {
    let Some(root) = fixtures() else { return };
    for name in ["tiny-dense", "tiny-moe-mlx-q4"] {
        let model = Qwen35::load(&root.join(name), Dtype::Float32).unwrap();
        let reference = Reference::load(&root, name);
        let ids = reference.ids("d_long.input_ids");
        let (prompt, next) = (&ids[..ids.len() - 1], ids[ids.len() - 1]);
        let mut whole_cache = model.new_cache();
        let whole = prefill(&model, &mut whole_cache, &ids, ids.len()).unwrap();
        whole.eval().unwrap();
        for chunk in [1usize, 7, 64, 100, 512] {
            let mut cache = model.new_cache();
            prefill(&model, &mut cache, prompt, chunk).unwrap();
            let step = prefill(&model, &mut cache, &[next], 1).unwrap();
            step.eval().unwrap();
            let delta = max_abs_diff(step.as_slice::<f32>(), whole.as_slice::<f32>());
            eprintln!("{name} chunk {chunk}: max|Δ| = {delta:.2e}");
            assert!(delta <= 1e-4, "{name}: chunk {chunk} differs by {delta}");
            assert_eq!(cache.offset, ids.len());
        }
    }
}
