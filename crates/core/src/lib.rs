//! The engine behind `@mlx-node/lm`: Qwen3.5 over MLX through mlx-rs, in plain Rust.
//!
//! Layers, each using only those before it: `error` and `runtime`; `config` (config.json) and
//! `safetensors` (file headers); `weights` (tensor names and layouts); the building blocks
//! `linear`, `norm`, `activation`, `attention`, `gated_delta`, `mlp` (with `tap`, which lets a caller see the
//! inputs of their linears); `cache`; `model`; `generate`; and `worker`, the thread a loaded model lives on.
//! The Node addon (the workspace's root crate) only translates types and errors.

pub mod activation;
pub mod attention;
pub mod cache;
pub mod chat;
pub mod config;
pub mod error;
pub mod gated_delta;
pub mod generate;
pub mod generation_config;
pub mod linear;
pub mod mlp;
pub mod model;
pub mod norm;
pub mod runtime;
pub mod safetensors;
pub mod sampling;
pub mod session;
pub mod tap;
pub mod tokenizer;
pub mod weights;
pub mod worker;

pub use error::{Error, ErrorCode, Result};
pub use model::{Logits, Qwen35};
pub use runtime::{mlx_info, Backend, MlxInfo};
pub use tap::{ActivationSink, Proj, Tap};
