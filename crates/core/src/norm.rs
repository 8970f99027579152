//! RMSNorm over the last axis, `x / sqrt(mean(x²) + ε) · w`: our CPU kernel for float32
//! activations, MLX's `fast::rms_norm` otherwise.
//! Zero-centred checkpoints store `w − 1`; the weights module hands us the multiplier `1 + w`,
//! kept in float32 (rounding it to bf16 is a measurable loss, fixtures README §7). With 16-bit
//! activations the norm is computed in float32 and its output cast back, as transformers does.

use mlx_rs::Array;

use crate::error::Result;
use crate::linear::kernel;

#[derive(Clone, Debug)]
pub struct RmsNorm {
    pub weight: Array,
    pub eps: f32,
}

impl RmsNorm {
    pub fn forward(&self, x: &Array) -> Result<Array> {
        // MLX's CPU rms_norm is several ops (~80 µs on a 1024-wide row); ours is one.
        if let Some(y) = kernel(|| mlx_node_kernels::rms_norm(x, &self.weight, self.eps))? {
            return Ok(y);
        }
        if x.dtype() == self.weight.dtype() {
            return Ok(mlx_rs::fast::rms_norm(x, Some(&self.weight), self.eps)?);
        }
        let y = mlx_rs::fast::rms_norm(
            x.as_dtype(self.weight.dtype())?,
            Some(&self.weight),
            self.eps,
        )?;
        Ok(y.as_dtype(x.dtype())?)
    }

    /// The residual add before the norm, with it: `(h + x, norm(h + x))`, one node of ours for
    /// float32 activations.
    pub fn forward_after_add(&self, h: &Array, x: &Array) -> Result<(Array, Array)> {
        if let Some(both) = kernel(|| mlx_node_kernels::add_rms_norm(h, x, &self.weight, self.eps))?
        {
            return Ok(both);
        }
        let sum = h.add(x)?;
        let y = self.forward(&sum)?;
        Ok((sum, y))
    }
}
