//! The Qwen3.5 text model: embeddings, a stack of decoder layers (Gated DeltaNet or gated
//! attention, then an MLP or mixture of experts, each behind a zero-centred RMSNorm and a
//! residual), the final norm and the output head (tied to the embeddings or not).

use std::path::Path;

use mlx_rs::{Array, Dtype};

use crate::attention::GatedAttention;
use crate::cache::{LayerCache, ModelCache};
use crate::config::{LayerKind, ModelConfig};
use crate::error::{fail, ErrorCode, Result};
use crate::gated_delta::GatedDeltaNet;
use crate::linear::{slice_axis, Embedding, Linear};
use crate::mlp::{FeedForward, SparseMoe, SwiGlu};
use crate::norm::RmsNorm;
use crate::tap::Tap;
use crate::weights::WeightStore;

enum Mixer {
    Linear(GatedDeltaNet),
    Attention(GatedAttention),
}

struct DecoderLayer {
    input_norm: RmsNorm,
    mixer: Mixer,
    post_norm: RmsNorm,
    ffn: FeedForward,
}

pub struct Qwen35 {
    pub config: ModelConfig,
    pub dtype: Dtype,
    /// Bytes of all weights as the engine holds them (after dtype conversion).
    pub weight_bytes: usize,
    embed: Embedding,
    layers: Vec<DecoderLayer>,
    norm: RmsNorm,
    lm_head: Linear,
}

/// Which positions of a forward pass to turn into logits (the output head is the largest
/// matmul of a small model, so only the ones asked for are computed).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Logits {
    /// Only the last position: `[B, vocab]`.
    Last,
    /// These positions of the chunk: `[B, n, vocab]`.
    At(Vec<i32>),
    /// Every position: `[B, T, vocab]`.
    All,
}

impl Qwen35 {
    /// Loads a model folder (Hugging Face or MLX layout), computing in `dtype`.
    pub fn load(dir: &Path, dtype: Dtype) -> Result<Self> {
        let config = ModelConfig::load(dir)?;
        let weights = WeightStore::open(dir, &config, dtype)?;
        Self::from_weights(config, &weights, dtype)
    }

    pub fn from_weights(config: ModelConfig, w: &WeightStore, dtype: Dtype) -> Result<Self> {
        let c = &config;
        let h = c.hidden_size;
        let norm = |name: String| -> Result<RmsNorm> {
            Ok(RmsNorm {
                weight: w.shifted_norm(&name, h)?,
                eps: c.rms_norm_eps,
            })
        };
        let mut layers = Vec::with_capacity(c.num_layers);
        for (i, kind) in c.layer_kinds.iter().enumerate() {
            let p = format!("layers.{i}");
            let mixer = match kind {
                LayerKind::Linear => {
                    Mixer::Linear(GatedDeltaNet::load(w, &format!("{p}.linear_attn"), c)?)
                }
                LayerKind::Full => {
                    Mixer::Attention(GatedAttention::load(w, &format!("{p}.self_attn"), c)?)
                }
            };
            let ffn = match c.moe {
                Some(_) => FeedForward::Sparse(Box::new(SparseMoe::load(w, i, c)?)),
                None => FeedForward::Dense(SwiGlu::load(
                    w,
                    &format!("{p}.mlp"),
                    h,
                    c.intermediate_size,
                )?),
            };
            layers.push(DecoderLayer {
                input_norm: norm(format!("{p}.input_layernorm.weight"))?,
                mixer,
                post_norm: norm(format!("{p}.post_attention_layernorm.weight"))?,
                ffn,
            });
        }
        let embed = Embedding(w.linear("embed_tokens", c.vocab_size, h)?);
        let lm_head = if c.tie_word_embeddings || !w.contains("lm_head.weight") {
            if !c.tie_word_embeddings {
                return fail(
                    ErrorCode::MissingTensor,
                    "tensor `lm_head.weight` is missing and config.json does not tie it to the embeddings",
                );
            }
            embed.as_linear()
        } else {
            Linear(w.linear("lm_head", c.vocab_size, h)?)
        };
        let norm = norm("norm.weight".into())?;
        Ok(Qwen35 {
            weight_bytes: w.held_bytes(),
            norm,
            embed,
            layers,
            lm_head,
            dtype,
            config,
        })
    }

    pub fn new_cache(&self) -> ModelCache {
        ModelCache::new(&self.config.layer_kinds)
    }

    /// Runs `tokens` `[B, T]` (int32) after what `cache` holds, and advances it.
    pub fn forward(&self, tokens: &Array, cache: &mut ModelCache, which: Logits) -> Result<Array> {
        let h = self.forward_layers(tokens, cache, &mut Tap::none())?;
        self.head(&h, which)
    }

    /// The decoder layers only: runs `tokens` `[B, T]` after what `cache` holds, advances it and
    /// returns the last hidden state `[B, T, hidden]` (before the final norm), without the
    /// output head. `tap` sees the input of every linear of every layer (see [`crate::tap`]).
    pub fn forward_layers(
        &self,
        tokens: &Array,
        cache: &mut ModelCache,
        tap: &mut Tap,
    ) -> Result<Array> {
        if cache.layers.len() != self.layers.len() {
            return fail(
                ErrorCode::InvalidArgument,
                "the cache does not belong to this model",
            );
        }
        let t = tokens.shape()[1];
        let mut h = self.embed.lookup(tokens, self.dtype)?;
        // The MLP's output, added to h together with the next layer's input norm.
        let mut branch: Option<Array> = None;
        for (i, (layer, state)) in self.layers.iter().zip(cache.layers.iter_mut()).enumerate() {
            tap.set_layer(i);
            let x = match branch.take() {
                Some(b) => {
                    let (sum, x) = layer.input_norm.forward_after_add(&h, &b)?;
                    h = sum;
                    x
                }
                None => layer.input_norm.forward(&h)?,
            };
            let x = match (&layer.mixer, state) {
                (Mixer::Linear(m), LayerCache::Linear(s)) => m.forward(&x, s, tap)?,
                (Mixer::Attention(m), LayerCache::Attention(kv)) => {
                    m.forward(&x, kv, cache.offset, tap)?
                }
                _ => {
                    return fail(
                        ErrorCode::InvalidArgument,
                        "the cache does not belong to this model",
                    )
                }
            };
            let (sum, x) = layer.post_norm.forward_after_add(&h, &x)?;
            h = sum;
            branch = Some(layer.ffn.forward(&x, tap)?);
        }
        if let Some(b) = branch {
            h = h.add(b)?;
        }
        cache.offset += t as usize;
        Ok(h)
    }

    /// The final norm and the output head over the positions `which` of `h` `[B, T, hidden]`.
    fn head(&self, h: &Array, which: Logits) -> Result<Array> {
        let t = h.shape()[1];
        let vocab = self.config.vocab_size as i32;
        let h = match &which {
            Logits::Last => slice_axis(h, 1, t - 1, t)?,
            Logits::At(positions) => {
                if let Some(p) = positions.iter().find(|&&p| p < 0 || p >= t) {
                    return fail(
                        ErrorCode::InvalidArgument,
                        format!("position {p} is outside the {t} tokens"),
                    );
                }
                h.take_axis(Array::from_slice(positions, &[positions.len() as i32]), 1)?
            }
            Logits::All => h.clone(),
        };
        let logits = self.lm_head.forward(&self.norm.forward(&h)?)?;
        Ok(match which {
            Logits::Last => logits.reshape(&[-1, vocab])?,
            _ => logits,
        })
    }

    /// Checks that every id is inside the vocabulary.
    pub fn check_tokens(&self, ids: &[u32]) -> Result<()> {
        if let Some(bad) = ids
            .iter()
            .find(|&&id| id as usize >= self.config.vocab_size)
        {
            return fail(
                ErrorCode::InvalidArgument,
                format!(
                    "token id {bad} is outside the vocabulary (size {})",
                    self.config.vocab_size
                ),
            );
        }
        Ok(())
    }
}
