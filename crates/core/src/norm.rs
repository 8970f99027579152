//! RMSNorm over the last axis, `x / sqrt(mean(x²) + ε) · w`, through MLX's fused kernel (which
//! accumulates in float32). Zero-centred checkpoints store `w − 1`; the weights module hands us
//! the multiplier already shifted.

use mlx_rs::Array;

use crate::error::Result;

#[derive(Clone, Debug)]
pub struct RmsNorm {
    pub weight: Array,
    pub eps: f32,
}

impl RmsNorm {
    pub fn forward(&self, x: &Array) -> Result<Array> {
        Ok(mlx_rs::fast::rms_norm(x, Some(&self.weight), self.eps)?)
    }
}
