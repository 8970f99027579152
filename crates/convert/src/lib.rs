//! `mlx convert` and `mlx imatrix` over the engine in `mlx-node-core`.
//!
//! * [`calibrate`]: runs the engine over a text and writes llama.cpp's GGUF imatrix.
pub mod calibrate;
