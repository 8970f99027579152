//! The Node binding of `@mlx-node/lm`: translates JS values and errors to and from
//! `mlx_node_core`, and nothing more.

use napi_derive::napi;

pub mod chat;
pub mod convert;
mod errors;
pub mod model;
mod stream;

/// The MLX runtime this addon runs on.
#[napi(object)]
pub struct MlxInfo {
    /// The MLX version libmlx reports, e.g. `0.32.2`.
    pub version: String,
    /// The default device, e.g. `cpu:0` or `gpu:0`.
    pub device: String,
    /// `cpu` (Linux, or macOS without Metal), `metal` or `cuda`.
    pub backend: String,
}

/// Which MLX this addon loaded and what it computes on.
#[napi]
pub fn mlx_info() -> napi::Result<MlxInfo, String> {
    let info = errors::guard(mlx_node_core::mlx_info)?;
    Ok(MlxInfo {
        version: info.version,
        device: info.device,
        backend: info.backend.as_str().to_owned(),
    })
}
