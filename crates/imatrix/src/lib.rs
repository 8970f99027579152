//! llama.cpp importance matrices for Qwen3.5.
//!
//! * Read both forms llama-imatrix writes: GGUF ([`Imatrix::read_gguf`]) and the legacy `.dat`
//!   ([`Imatrix::read_dat`]); [`Imatrix::read`] tells them apart by the magic.
//! * Write the GGUF form ([`Imatrix::write_gguf`]) byte-for-byte as llama-imatrix lays it out.
//! * Map GGUF weight names onto the Hugging Face modules whose inputs they describe, for a model
//!   shape read from `config.json` ([`ModelShape::from_config`], [`Imatrix::hf_importance`]),
//!   including the value-head reordering of `ssm_out` when Hv > Hk.
//!
//! Importance is the per-column mean of the squared input activations, `in_sum2 / counts`, per
//! expert for MoE expert stacks ([`Entry::importance`]).

pub mod dat;
pub mod error;
pub mod gguf;
pub mod heads;
pub mod imatrix;
pub mod names;
pub mod shape;

pub use error::{Error, Result};
pub use heads::{gguf_to_hf_heads, value_channels_gguf_to_hf};
pub use imatrix::{Entry, Imatrix};
pub use names::{map_gguf_name, Importance, MappedName};
pub use shape::{LayerKind, LinearInput, ModelShape, MoeShape};
