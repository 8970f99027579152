//! The engine behind `@mlx-node/lm`: Qwen3.5 over MLX through mlx-rs, in plain Rust.
//!
//! Layers, each using only the ones above it: `runtime` (what MLX this process runs on) and
//! `error` first; the model's config, weights, layers, caches and generation follow in later
//! modules. The Node addon (the workspace's root crate) only translates types and errors.

pub mod error;
pub mod runtime;

pub use error::{Error, ErrorCode, Result};
pub use runtime::{mlx_info, Backend, MlxInfo};
