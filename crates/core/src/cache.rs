//! The per-sequence state of a model: keys and values of the full-attention layers, and the
//! conv window and recurrent state of the Gated DeltaNet layers. MLX arrays are immutable and
//! reference counted, so a snapshot is a cheap copy of handles, not of data.

use mlx_rs::ops::concatenate;
use mlx_rs::Array;

use crate::error::{fail, ErrorCode, Result};
use crate::linear::slice_axis;

/// Keys and values `[B, kv_heads, T, head_dim]` of one attention layer, after k_norm and RoPE.
#[derive(Clone, Debug, Default)]
pub struct KvCache {
    keys: Option<Array>,
    values: Option<Array>,
}

impl KvCache {
    /// Number of positions held.
    pub fn len(&self) -> usize {
        self.keys.as_ref().map_or(0, |k| k.shape()[2] as usize)
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Appends new keys/values and returns all of them.
    pub fn extend(&mut self, keys: Array, values: Array) -> Result<(Array, Array)> {
        let (k, v) = match (self.keys.take(), self.values.take()) {
            (Some(k0), Some(v0)) => (concatenate(&[k0, keys], 2)?, concatenate(&[v0, values], 2)?),
            _ => (keys, values),
        };
        self.keys = Some(k.clone());
        self.values = Some(v.clone());
        Ok((k, v))
    }

    /// Keeps the first `len` positions.
    pub fn truncate(&mut self, len: usize) -> Result<()> {
        if len >= self.len() {
            return Ok(());
        }
        if len == 0 {
            *self = KvCache::default();
            return Ok(());
        }
        let n = len as i32;
        self.keys = Some(slice_axis(self.keys.as_ref().unwrap(), 2, 0, n)?);
        self.values = Some(slice_axis(self.values.as_ref().unwrap(), 2, 0, n)?);
        Ok(())
    }

    fn arrays(&self) -> Vec<&Array> {
        self.keys.iter().chain(self.values.iter()).collect()
    }
}

/// A Gated DeltaNet layer's state: the last `K − 1` pre-conv inputs `[B, K − 1, C]` and the
/// recurrent memory `[B, Hv, dk, dv]` in float32. Absent before the first token (zeros).
#[derive(Clone, Debug, Default)]
pub struct LinearState {
    pub conv: Option<Array>,
    pub recurrent: Option<Array>,
}

#[derive(Clone, Debug)]
pub enum LayerCache {
    Attention(KvCache),
    Linear(LinearState),
}

/// Everything a model carries from one forward call to the next for one sequence.
#[derive(Clone, Debug)]
pub struct ModelCache {
    pub layers: Vec<LayerCache>,
    /// Tokens consumed so far (the RoPE position of the next token).
    pub offset: usize,
}

/// The whole cache state at one token position; restoring it continues from there.
#[derive(Clone, Debug)]
pub struct CacheSnapshot {
    cache: ModelCache,
}

impl CacheSnapshot {
    /// The token position the snapshot was taken at.
    pub fn offset(&self) -> usize {
        self.cache.offset
    }
}

impl ModelCache {
    pub fn new(kinds: &[crate::config::LayerKind]) -> Self {
        ModelCache {
            layers: kinds
                .iter()
                .map(|k| match k {
                    crate::config::LayerKind::Full => LayerCache::Attention(KvCache::default()),
                    crate::config::LayerKind::Linear => LayerCache::Linear(LinearState::default()),
                })
                .collect(),
            offset: 0,
        }
    }

    pub fn snapshot(&self) -> CacheSnapshot {
        CacheSnapshot {
            cache: self.clone(),
        }
    }

    pub fn restore(&mut self, snapshot: &CacheSnapshot) {
        *self = snapshot.cache.clone();
    }

    /// Goes back to position `len`. Only the attention layers can be cut; the linear layers'
    /// state is a summary of every token, so this is only possible to the current position or,
    /// with no linear layers, anywhere before it. Multi-turn reuse restores a snapshot instead.
    pub fn truncate(&mut self, len: usize) -> Result<()> {
        if len == self.offset {
            return Ok(());
        }
        if len > self.offset {
            return fail(
                ErrorCode::InvalidArgument,
                format!(
                    "cannot extend a cache of {} tokens to {len} by truncation",
                    self.offset
                ),
            );
        }
        if self
            .layers
            .iter()
            .any(|l| matches!(l, LayerCache::Linear(_)))
        {
            return fail(
                ErrorCode::InvalidArgument,
                format!(
                    "cannot rewind linear-attention state from {} to {len} tokens; restore a snapshot",
                    self.offset
                ),
            );
        }
        for layer in &mut self.layers {
            if let LayerCache::Attention(kv) = layer {
                kv.truncate(len)?;
            }
        }
        self.offset = len;
        Ok(())
    }

    /// Evaluates every cached array, so the graph behind them can be freed.
    pub fn eval(&self) -> Result<()> {
        let mut arrays: Vec<&Array> = Vec::new();
        for layer in &self.layers {
            match layer {
                LayerCache::Attention(kv) => arrays.extend(kv.arrays()),
                LayerCache::Linear(s) => arrays.extend(s.conv.iter().chain(s.recurrent.iter())),
            }
        }
        mlx_rs::transforms::eval(arrays)?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::LayerKind;

    fn kv(t: i32, fill: f32) -> Array {
        mlx_rs::ops::full::<f32>(&[1, 2, t, 4], Array::from_f32(fill)).unwrap()
    }

    #[test]
    fn kv_cache_extends_and_truncates() {
        let mut c = KvCache::default();
        c.extend(kv(3, 1.0), kv(3, 1.0)).unwrap();
        let (k, _) = c.extend(kv(2, 2.0), kv(2, 2.0)).unwrap();
        assert_eq!(k.shape(), [1, 2, 5, 4]);
        c.truncate(4).unwrap();
        assert_eq!(c.len(), 4);
        let k = c.keys.clone().unwrap().contiguous().unwrap();
        k.eval().unwrap();
        assert_eq!(k.as_slice::<f32>()[3 * 4], 2.0);
    }

    #[test]
    fn snapshots_restore_and_linear_state_cannot_rewind() {
        let mut cache = ModelCache::new(&[LayerKind::Linear, LayerKind::Full]);
        cache.offset = 3;
        let snap = cache.snapshot();
        cache.offset = 7;
        assert!(cache.truncate(5).is_err());
        cache.restore(&snap);
        assert_eq!(cache.offset, 3);
        let mut attn_only = ModelCache::new(&[LayerKind::Full]);
        if let LayerCache::Attention(c) = &mut attn_only.layers[0] {
            c.extend(kv(6, 1.0), kv(6, 1.0)).unwrap();
        }
        attn_only.offset = 6;
        attn_only.truncate(2).unwrap();
        assert_eq!(attn_only.offset, 2);
    }
}
