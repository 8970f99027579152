//! Feeding a prompt through a model in chunks and greedy decoding.

use mlx_rs::ops::indexing::argmax_axis;
use mlx_rs::Array;

use crate::cache::ModelCache;
use crate::error::{fail, ErrorCode, Result};
use crate::model::{Logits, Qwen35};

/// Prefill chunk used when the caller does not choose one.
pub const DEFAULT_PREFILL_CHUNK: usize = 512;

fn tokens_array(ids: &[u32]) -> Array {
    let ids: Vec<i32> = ids.iter().map(|&i| i as i32).collect();
    Array::from_slice(&ids, &[1, ids.len() as i32])
}

/// Runs `ids` through the model after what `cache` holds, `chunk` tokens per forward call, and
/// returns the logits `[vocab]` of the last one.
pub fn prefill(model: &Qwen35, cache: &mut ModelCache, ids: &[u32], chunk: usize) -> Result<Array> {
    if ids.is_empty() {
        return fail(ErrorCode::InvalidArgument, "the prompt has no tokens");
    }
    if chunk == 0 {
        return fail(
            ErrorCode::InvalidArgument,
            "the prefill chunk size must be at least 1",
        );
    }
    model.check_tokens(ids)?;
    let mut last = None;
    for piece in ids.chunks(chunk) {
        let logits = model.forward(&tokens_array(piece), cache, Logits::Last)?;
        // Evaluating per chunk bounds the graph and frees each chunk's activations.
        mlx_rs::transforms::eval([&logits])?;
        cache.eval()?;
        last = Some(logits);
    }
    Ok(last.expect("at least one chunk").reshape(&[-1])?)
}

fn argmax(logits: &Array) -> Result<u32> {
    let id = argmax_axis(logits, -1, false)?;
    id.eval()?;
    id.try_item_exact::<u32>()
        .map_err(|e| crate::Error::new(ErrorCode::Mlx, format!("argmax: {e}")))
}

/// Greedy continuation: the prompt, then `max_new_tokens` tokens each fed back through the
/// cache. Returns the new tokens.
pub fn greedy(
    model: &Qwen35,
    prompt: &[u32],
    max_new_tokens: usize,
    chunk: usize,
) -> Result<Vec<u32>> {
    let mut cache = model.new_cache();
    let mut logits = prefill(model, &mut cache, prompt, chunk)?;
    let mut out = Vec::with_capacity(max_new_tokens);
    for step in 0..max_new_tokens {
        let next = argmax(&logits)?;
        out.push(next);
        if step + 1 == max_new_tokens {
            break;
        }
        logits = model
            .forward(&tokens_array(&[next]), &mut cache, Logits::Last)?
            .reshape(&[-1])?;
    }
    Ok(out)
}
