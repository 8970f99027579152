//! `mlx convert` and `mlx imatrix` over the engine in `mlx-node-core`.
//!
//! Layers, each using only those before it: [`recipe`] (bits per tensor class), [`source`]
//! (the input checkpoint mapped onto the MLX model's tensors), [`awq`] (pre-scaling from an
//! imatrix), [`writer`] (sharded safetensors), [`card`] (the model card), [`convert`] (the
//! pipeline); and [`calibrate`], which runs the engine over a text and writes llama.cpp's GGUF
//! imatrix.

pub mod awq;
pub mod calibrate;
pub mod card;
pub mod cli;
pub mod convert;
pub mod recipe;
pub mod source;
pub mod writer;

pub use convert::{convert, ConvertOptions, ConvertProgress, ConvertSummary, SummaryRow};
pub use recipe::{Choice, Recipe, TensorClass};
