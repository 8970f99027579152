//! The gating products of the layers: SwiGLU's `silu(gate) · up` and the attention output's
//! `x · sigmoid(gate)`. On a CPU stream with float32 activations each is one node of ours
//! (`mlx-node-kernels`), else MLX's ops.

use mlx_rs::Array;

use crate::error::Result;
use crate::linear::kernel;

/// `silu(gate) · up`.
pub fn silu_mul(gate: &Array, up: &Array) -> Result<Array> {
    match kernel(|| mlx_node_kernels::silu_mul(gate, up))? {
        Some(y) => Ok(y),
        None => Ok(mlx_rs::nn::silu(gate)?.multiply(up)?),
    }
}

/// `x · sigmoid(gate)`.
pub fn sigmoid_mul(x: &Array, gate: &Array) -> Result<Array> {
    match kernel(|| mlx_node_kernels::sigmoid_mul(x, gate))? {
        Some(y) => Ok(y),
        None => Ok(x.multiply(mlx_rs::ops::sigmoid(gate)?)?),
    }
}
