//! The per-sequence state of a model: keys and values of the full-attention layers, and the
//! conv window and recurrent state of the Gated DeltaNet layers. MLX arrays are immutable and
//! reference counted, so a snapshot is a cheap copy of handles, not of data.

use mlx_rs::ops::zeros_dtype;
use mlx_rs::Array;

use crate::error::{fail, ErrorCode, Result};
use crate::linear::{slice_axis, update_axis};

/// Positions a key/value buffer grows by: each step copies what the buffer holds once, and
/// in between every token is written in place.
const KV_STEP: i32 = 256;

/// Keys and values of one attention layer, after k_norm and RoPE: buffers `[B, kv_heads,
/// capacity, head_dim]` whose first `len` positions are the sequence. Appending writes into
/// the buffer (in place when no snapshot shares it) instead of copying the whole cache per
/// token, and attention reads a view of the first `len` positions.
#[derive(Clone, Debug, Default)]
pub struct KvCache {
    keys: Option<Array>,
    values: Option<Array>,
    len: usize,
}

/// `buf` with room for `needed` positions on axis 2: itself, or a new buffer of the next
/// multiple of [`KV_STEP`] holding its first `len` positions.
fn reserve(buf: Option<Array>, like: &Array, len: i32, needed: i32) -> Result<Array> {
    if let Some(buf) = &buf {
        if buf.shape()[2] >= needed {
            return Ok(buf.clone());
        }
    }
    let capacity = (needed + KV_STEP - 1) / KV_STEP * KV_STEP;
    let s = like.shape();
    let fresh = zeros_dtype(&[s[0], s[1], capacity, s[3]], like.dtype())?;
    Ok(match buf {
        Some(old) if len > 0 => update_axis(&fresh, &slice_axis(&old, 2, 0, len)?, 2, 0)?,
        _ => fresh,
    })
}

impl KvCache {
    /// Number of positions held.
    pub fn len(&self) -> usize {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Appends new keys/values `[B, kv_heads, T, head_dim]` and returns views of all of them.
    pub fn extend(&mut self, keys: Array, values: Array) -> Result<(Array, Array)> {
        let len = self.len as i32;
        let end = len + keys.shape()[2];
        // The old handles are dropped before the writes are evaluated, so MLX can donate the
        // buffers to them.
        let k = update_axis(&reserve(self.keys.take(), &keys, len, end)?, &keys, 2, len)?;
        let v = update_axis(
            &reserve(self.values.take(), &values, len, end)?,
            &values,
            2,
            len,
        )?;
        let views = (slice_axis(&k, 2, 0, end)?, slice_axis(&v, 2, 0, end)?);
        self.keys = Some(k);
        self.values = Some(v);
        self.len = end as usize;
        Ok(views)
    }

    /// Keeps the first `len` positions (the buffers stay; later appends overwrite the rest).
    pub fn truncate(&mut self, len: usize) -> Result<()> {
        if len >= self.len {
            return Ok(());
        }
        if len == 0 {
            *self = KvCache::default();
            return Ok(());
        }
        self.len = len;
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

    /// Position p of head 0 of a `[1, 2, T, 4]` view.
    fn at(a: &Array, p: usize) -> f32 {
        let a = a.contiguous().unwrap();
        a.eval().unwrap();
        a.as_slice::<f32>()[p * 4]
    }

    #[test]
    fn kv_cache_extends_and_truncates() {
        let mut c = KvCache::default();
        c.extend(kv(3, 1.0), kv(3, 1.0)).unwrap();
        let (k, v) = c.extend(kv(2, 2.0), kv(2, 2.0)).unwrap();
        assert_eq!(k.shape(), [1, 2, 5, 4]);
        assert_eq!(v.shape(), [1, 2, 5, 4]);
        assert_eq!((at(&k, 2), at(&k, 3)), (1.0, 2.0));
        c.truncate(4).unwrap();
        assert_eq!(c.len(), 4);
        // The next append overwrites position 4 and is what a view of 5 positions shows.
        let (k, _) = c.extend(kv(1, 3.0), kv(1, 3.0)).unwrap();
        assert_eq!(k.shape(), [1, 2, 5, 4]);
        assert_eq!((at(&k, 3), at(&k, 4)), (2.0, 3.0));
    }

    #[test]
    fn kv_cache_grows_past_its_step_and_keeps_snapshots_intact() {
        let mut c = KvCache::default();
        let first = KV_STEP as usize - 1;
        c.extend(kv(first as i32, 1.0), kv(first as i32, 1.0))
            .unwrap();
        let kept = c.clone();
        // Fills the first buffer, then one that crosses into a new, larger one.
        c.extend(kv(1, 2.0), kv(1, 2.0)).unwrap();
        let (k, _) = c.extend(kv(3, 3.0), kv(3, 3.0)).unwrap();
        assert_eq!(k.shape()[2] as usize, first + 4);
        assert_eq!(c.keys.as_ref().unwrap().shape()[2], 2 * KV_STEP);
        assert_eq!(
            (
                at(&k, 0),
                at(&k, first - 1),
                at(&k, first),
                at(&k, first + 3)
            ),
            (1.0, 1.0, 2.0, 3.0)
        );
        // The clone taken before shared the first buffer, so the writes after it were copies.
        assert_eq!(at(kept.keys.as_ref().unwrap(), first), 0.0);
        let mut back = kept;
        let (k, _) = back.extend(kv(1, 9.0), kv(1, 9.0)).unwrap();
        assert_eq!((at(&k, first - 1), at(&k, first)), (1.0, 9.0));
        let (k, _) = c.extend(kv(0, 0.0), kv(0, 0.0)).unwrap();
        assert_eq!(at(&k, first), 2.0);
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
