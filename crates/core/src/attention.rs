//! Gated full attention (every few layers of Qwen3.5): q_proj yields a query and an output
//! gate per head, q and k are RMS-normalised per head, the first `rotary_dims` of each head get
//! NeoX-style RoPE, keys/values are grouped over fewer heads (GQA), and the attention output is
//! multiplied by `sigmoid(gate)` before o_proj.

use mlx_node_kernels::Isa;
use mlx_rs::fast::{rope, scaled_dot_product_attention, ScaledDotProductAttentionMask};
use mlx_rs::Array;

use crate::activation::sigmoid_mul;
use crate::cache::KvCache;
use crate::config::ModelConfig;
use crate::error::Result;
use crate::linear::{kernel, slice_axis, Linear};
use crate::norm::RmsNorm;
use crate::tap::{Proj, Tap};
use crate::weights::WeightStore;

pub struct GatedAttention {
    q_proj: Linear,
    k_proj: Linear,
    v_proj: Linear,
    o_proj: Linear,
    q_norm: RmsNorm,
    k_norm: RmsNorm,
    heads: i32,
    kv_heads: i32,
    head_dim: i32,
    rotary_dims: i32,
    rope_theta: f32,
    /// The rotary frequencies as MLX's rope makes them, for our CPU rope.
    rope_freqs: Array,
}

impl GatedAttention {
    pub fn load(w: &WeightStore, prefix: &str, c: &ModelConfig) -> Result<Self> {
        let (h, nh, nkv, hd) = (
            c.hidden_size,
            c.num_attention_heads,
            c.num_kv_heads,
            c.head_dim,
        );
        let norm = |name: &str| -> Result<RmsNorm> {
            Ok(RmsNorm {
                weight: w.shifted_norm(&format!("{prefix}.{name}.weight"), hd)?,
                eps: c.rms_norm_eps,
            })
        };
        Ok(GatedAttention {
            q_proj: Linear(w.linear(&format!("{prefix}.q_proj"), 2 * nh * hd, h)?),
            k_proj: Linear(w.linear(&format!("{prefix}.k_proj"), nkv * hd, h)?),
            v_proj: Linear(w.linear(&format!("{prefix}.v_proj"), nkv * hd, h)?),
            o_proj: Linear(w.linear(&format!("{prefix}.o_proj"), h, nh * hd)?),
            q_norm: norm("q_norm")?,
            k_norm: norm("k_norm")?,
            heads: nh as i32,
            kv_heads: nkv as i32,
            head_dim: hd as i32,
            rotary_dims: c.rotary_dims() as i32,
            rope_theta: c.rope_theta,
            rope_freqs: mlx_node_kernels::rope_frequencies(c.rotary_dims() as i32, c.rope_theta)?,
        })
    }

    /// `x`: `[B, T, hidden]`; `offset`: position of its first token. `tap` sees the inputs of
    /// q/k/v_proj and o_proj.
    pub fn forward(
        &self,
        x: &Array,
        cache: &mut KvCache,
        offset: usize,
        tap: &mut Tap,
    ) -> Result<Array> {
        let (b, t) = (x.shape()[0], x.shape()[1]);
        tap.linear(&[Proj::QProj, Proj::KProj, Proj::VProj], x)?;
        let hd = self.head_dim;
        // The query and its gate are interleaved per head: [q_0 | gate_0 | q_1 | gate_1 | …].
        let [q, k, v]: [Array; 3] =
            Linear::forward_many(&[&self.q_proj, &self.k_proj, &self.v_proj], x)?
                .try_into()
                .expect("one output per projection");
        let qg = q.reshape(&[b, t, self.heads, 2 * hd])?;
        let q = slice_axis(&qg, -1, 0, hd)?;
        let gate = slice_axis(&qg, -1, hd, 2 * hd)?.reshape(&[b, t, self.heads * hd])?;
        let q = self.q_norm.forward(&q)?;
        let k = self
            .k_norm
            .forward(&k.reshape(&[b, t, self.kv_heads, hd])?)?;
        let v = v.reshape(&[b, t, self.kv_heads, hd])?;
        let [q, k, v] = [q, k, v].map(|a| a.transpose_axes(&[0, 2, 1, 3]));
        let position = offset as i32;
        let rotate = |a: Array| -> Result<Array> {
            if let Some(y) =
                kernel(|| mlx_node_kernels::rope(&a, &self.rope_freqs, self.rotary_dims, position))?
            {
                return Ok(y);
            }
            Ok(rope(
                a,
                self.rotary_dims,
                false,
                self.rope_theta,
                1.0,
                position,
                None,
            )?)
        };
        let (q, k) = (rotate(q?)?, rotate(k?)?);
        let (keys, values) = cache.extend(k, v?)?;
        let scale = (hd as f32).powf(-0.5);
        // Both causal masks line the queries up with the last keys, as a cache needs.
        let causal = t > 1;
        let o = match kernel(|| {
            mlx_node_kernels::attention(&q, &keys, &values, scale, causal, Isa::Default)
        })? {
            Some(o) => o,
            None => {
                let mask = causal.then_some(ScaledDotProductAttentionMask::Causal);
                scaled_dot_product_attention(q, keys, values, scale, mask, None)?
            }
        };
        let o = o
            .transpose_axes(&[0, 2, 1, 3])?
            .reshape(&[b, t, self.heads * hd])?;
        let o = sigmoid_mul(&o, &gate)?;
        tap.linear(&[Proj::OProj], &o)?;
        self.o_proj.forward(&o)
    }
}
