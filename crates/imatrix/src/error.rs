//! The crate's error type. Every variant names what is at fault: the file (or `<memory>` for
//! bytes parsed in memory), the tensor or metadata key, and the values found.

use std::path::PathBuf;

/// Result alias used throughout the crate.
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// Everything that can go wrong while reading, writing or mapping an importance matrix.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// Opening, reading or writing a file failed.
    #[error("{}: {source}", .path.display())]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },

    /// The file ends before a field it announces.
    #[error(
        "{}: truncated: {what} needs {needed} bytes at offset {offset}, but only {available} remain",
        .path.display()
    )]
    Truncated {
        path: PathBuf,
        what: String,
        offset: u64,
        needed: u64,
        available: u64,
    },

    /// The first four bytes are not `GGUF`.
    #[error("{}: not a GGUF file: magic {found}, expected \"GGUF\"", .path.display())]
    BadMagic { path: PathBuf, found: String },

    /// A GGUF version other than 2 or 3 (or a big-endian file).
    #[error("{}: GGUF version {version} is not supported ({hint})", .path.display())]
    UnsupportedVersion {
        path: PathBuf,
        version: u32,
        hint: &'static str,
    },

    /// A metadata value (or array element) carries a type id GGUF does not define.
    #[error(
        "{}: metadata key {key:?}: unknown GGUF value type {type_id} at offset {offset} (known: 0..=12)",
        .path.display()
    )]
    UnknownValueType {
        path: PathBuf,
        key: String,
        type_id: u32,
        offset: u64,
    },

    /// A structural problem in a file that is not a plain truncation (bad counts, bad UTF-8,
    /// duplicate names, trailing bytes, ...).
    #[error("{}: {what}: {reason}", .path.display())]
    Malformed {
        path: PathBuf,
        what: String,
        reason: String,
    },

    /// A metadata key is present with a value this crate cannot accept.
    #[error("{}: metadata key {key:?}: {reason}", .path.display())]
    BadMetadata {
        path: PathBuf,
        key: String,
        reason: String,
    },

    /// A tensor (GGUF) or entry (.dat) of a file is unusable: wrong type, shape, pairing, values.
    #[error("{}: tensor {tensor:?}: {reason}", .path.display())]
    BadTensor {
        path: PathBuf,
        tensor: String,
        reason: String,
    },

    /// An in-memory entry is inconsistent (lengths, counts, values).
    #[error("invalid imatrix entry{}: {reason}", fmt_name(.name))]
    InvalidEntry {
        name: Option<String>,
        reason: String,
    },

    /// A model config lacks a key or holds a value that does not describe a Qwen3.5 model.
    #[error("model config: {key}: {reason}")]
    Config { key: String, reason: String },

    /// The config file could not be parsed as JSON.
    #[error("{}: not valid JSON: {source}", .path.display())]
    Json {
        path: PathBuf,
        #[source]
        source: serde_json::Error,
    },

    /// An imatrix tensor name that is not a Qwen3.5 weight llama.cpp collects.
    #[error("imatrix tensor {tensor:?} is not a known Qwen3.5 weight: {reason}")]
    UnknownTensor { tensor: String, reason: String },

    /// An imatrix tensor that names a known weight but does not fit the given model.
    #[error("imatrix tensor {tensor:?} does not fit the model: {what}: expected {expected}, found {found}")]
    DoesNotFit {
        tensor: String,
        what: String,
        expected: String,
        found: String,
    },
}

fn fmt_name(name: &Option<String>) -> String {
    match name {
        Some(n) => format!(" {n:?}"),
        None => String::new(),
    }
}
