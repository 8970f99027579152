//! Feeding a prompt through a model in chunks, and generating: greedy, or sampled with stop
//! tokens, a token callback, an abort flag and a conversation cache reused across calls.

use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Instant;

use mlx_node_kernels::Isa;
use mlx_rs::ops::indexing::argmax_axis;
use mlx_rs::Array;

use crate::cache::{CacheSnapshot, ModelCache};
use crate::error::{fail, ErrorCode, Result};
use crate::linear::kernel;
use crate::model::{Logits, Qwen35};
use crate::sampling::{Sampler, SamplingParams};

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

/// The greedy token(s) of `logits` `[.., vocab]`, lazily: MLX's `argmax` over the last axis
/// (uint32), through our kernel on the CPU (MLX's takes ~0.5 ms over a 248K vocabulary).
pub fn greedy_token(logits: &Array) -> Result<Array> {
    match kernel(|| mlx_node_kernels::argmax(logits, Isa::Default))? {
        Some(id) => Ok(id),
        None => Ok(argmax_axis(logits, -1, false)?),
    }
}

fn argmax(logits: &Array) -> Result<u32> {
    let id = greedy_token(logits)?;
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
    let request = Request {
        prompt,
        max_new_tokens,
        sampling: SamplingParams::default(),
        stop_tokens: &[],
        prefill_chunk: chunk,
        snapshot_at: &[],
    };
    let never = AtomicBool::new(false);
    let mut conversation = ConversationCache::default();
    Ok(generate(model, &mut conversation, &request, &never, |_| {
        Ok(Step::Continue)
    })?
    .tokens)
}

/// Why generation ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Finish {
    /// A stop token was produced (it is the last of the returned tokens).
    StopToken,
    /// The caller's callback asked to stop (e.g. a stop string appeared).
    Stopped,
    /// `max_new_tokens` were produced.
    Length,
    /// The abort flag was raised.
    Abort,
}

pub struct Request<'a> {
    pub prompt: &'a [u32],
    pub max_new_tokens: usize,
    pub sampling: SamplingParams,
    /// Token ids that end generation.
    pub stop_tokens: &'a [u32],
    pub prefill_chunk: usize,
    /// Prompt positions at which to keep a snapshot for later turns (e.g. where the assistant's
    /// reply starts, which the next turn's prompt will share).
    pub snapshot_at: &'a [usize],
}

#[derive(Clone, Debug)]
pub struct Generated {
    pub tokens: Vec<u32>,
    pub finish: Finish,
    /// Prompt tokens taken from the conversation cache instead of being run again.
    pub cached_tokens: usize,
    pub prompt_tokens: usize,
    /// Seconds from the call to the first new token (prefill included).
    pub time_to_first_token: f64,
    pub prefill_seconds: f64,
    pub decode_seconds: f64,
}

/// What the callback tells the loop after each token.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Step {
    Continue,
    Stop,
}

/// The cache of one conversation across calls: the live state after the last call and
/// snapshots taken at chosen positions. Linear-attention state cannot be rewound, so a new
/// prompt continues from the longest state whose tokens are a prefix of it.
pub struct ConversationCache {
    live: Option<(Vec<u32>, ModelCache)>,
    snapshots: Vec<(Vec<u32>, CacheSnapshot)>,
    max_snapshots: usize,
}

impl Default for ConversationCache {
    fn default() -> Self {
        ConversationCache {
            live: None,
            snapshots: Vec::new(),
            max_snapshots: 8,
        }
    }
}

impl ConversationCache {
    /// The longest saved state that `prompt` extends by at least one token (the last prompt
    /// token must be run to get logits), and how many tokens it covers.
    fn best_start(&self, model: &Qwen35, prompt: &[u32]) -> (ModelCache, usize) {
        let fits = |tokens: &[u32]| tokens.len() < prompt.len() && prompt.starts_with(tokens);
        let mut best: (Option<ModelCache>, usize) = (None, 0);
        if let Some((tokens, cache)) = &self.live {
            if fits(tokens) && tokens.len() > best.1 {
                best = (Some(cache.clone()), tokens.len());
            }
        }
        for (tokens, snapshot) in &self.snapshots {
            if fits(tokens) && tokens.len() > best.1 {
                let mut cache = model.new_cache();
                cache.restore(snapshot);
                best = (Some(cache), tokens.len());
            }
        }
        match best {
            (Some(cache), n) => (cache, n),
            (None, _) => (model.new_cache(), 0),
        }
    }

    fn remember(&mut self, tokens: Vec<u32>, cache: &ModelCache) {
        self.snapshots.retain(|(t, _)| *t != tokens);
        self.snapshots.push((tokens, cache.snapshot()));
        if self.snapshots.len() > self.max_snapshots {
            self.snapshots.remove(0);
        }
    }

    /// Forgets everything (e.g. after an error left the live state unknown).
    pub fn clear(&mut self) {
        self.live = None;
        self.snapshots.clear();
    }
}

fn logits_vec(logits: &Array) -> Result<Vec<f32>> {
    let logits = logits.as_dtype(mlx_rs::Dtype::Float32)?;
    logits.eval()?;
    Ok(logits.as_slice::<f32>().to_vec())
}

/// Generates a reply to `request.prompt`, continuing from `conversation` where it can, calling
/// `on_token` with each new token. Stops at a stop token, when `on_token` says so, after
/// `max_new_tokens`, or within one step of `abort` being raised.
pub fn generate(
    model: &Qwen35,
    conversation: &mut ConversationCache,
    request: &Request,
    abort: &AtomicBool,
    mut on_token: impl FnMut(u32) -> Result<Step>,
) -> Result<Generated> {
    let started = Instant::now();
    let prompt = request.prompt;
    if prompt.is_empty() {
        return fail(ErrorCode::InvalidArgument, "the prompt has no tokens");
    }
    model.check_tokens(prompt)?;
    request.sampling.validate()?;
    let (mut cache, cached) = conversation.best_start(model, prompt);
    // A failure part-way leaves no trustworthy live state.
    conversation.live = None;

    let mut marks: Vec<usize> = request
        .snapshot_at
        .iter()
        .copied()
        .filter(|&p| p > cached && p <= prompt.len())
        .collect();
    marks.sort_unstable();
    marks.dedup();
    let mut start = cached;
    let mut logits = None;
    for end in marks.into_iter().chain(std::iter::once(prompt.len())) {
        if end > start {
            logits = Some(prefill(
                model,
                &mut cache,
                &prompt[start..end],
                request.prefill_chunk,
            )?);
            start = end;
        }
        if request.snapshot_at.contains(&end) {
            conversation.remember(prompt[..end].to_vec(), &cache);
        }
    }
    let mut logits = logits.expect("the prompt extends the cached state by at least one token");
    let prefill_seconds = started.elapsed().as_secs_f64();

    let mut sampler = Sampler::new(request.sampling.clone(), prompt);
    let mut tokens = Vec::new();
    let mut time_to_first_token = 0.0;
    let decode_started = Instant::now();
    let mut fed = prompt.to_vec();
    let finish = loop {
        if tokens.len() >= request.max_new_tokens {
            break Finish::Length;
        }
        if abort.load(Ordering::Relaxed) {
            break Finish::Abort;
        }
        let token = if sampler.is_greedy() {
            let t = argmax(&logits)?;
            sampler.accept(t);
            t
        } else {
            sampler.sample(&mut logits_vec(&logits)?)
        };
        if tokens.is_empty() {
            time_to_first_token = started.elapsed().as_secs_f64();
        }
        tokens.push(token);
        if request.stop_tokens.contains(&token) {
            break Finish::StopToken;
        }
        if on_token(token)? == Step::Stop {
            break Finish::Stopped;
        }
        if tokens.len() >= request.max_new_tokens {
            break Finish::Length;
        }
        logits = model
            .forward(&tokens_array(&[token]), &mut cache, Logits::Last)?
            .reshape(&[-1])?;
        fed.push(token);
    };
    conversation.live = Some((fed, cache));
    Ok(Generated {
        tokens,
        finish,
        cached_tokens: cached,
        prompt_tokens: prompt.len(),
        time_to_first_token,
        prefill_seconds,
        decode_seconds: decode_started.elapsed().as_secs_f64(),
    })
}
