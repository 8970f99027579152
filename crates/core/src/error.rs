//! The one error type of the engine. Every error carries a stable [`ErrorCode`], which the
//! Node layer hands to JS as `error.code`, and a message naming what is at fault.

use std::fmt;

/// Stable identifiers for error classes; their spelling is part of the JS API.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ErrorCode {
    /// MLX itself reported a failure.
    Mlx,
    /// A file or folder could not be read (missing, unreadable).
    Io,
    /// `config.json` is missing a key, has a wrong type, or is inconsistent.
    InvalidConfig,
    /// The model type or architecture is not one this engine runs.
    UnsupportedModel,
    /// A weight the model needs is not in its files.
    MissingTensor,
    /// A weight has another shape than the config implies.
    ShapeMismatch,
    /// A safetensors file is truncated or malformed.
    InvalidSafetensors,
    /// A quantization mode, bit width or group size this engine cannot run.
    UnsupportedQuantization,
    /// A caller passed a value out of range (token ids, options).
    InvalidArgument,
    /// The model was disposed before or while the call ran.
    Disposed,
    /// The model folder has no tokenizer, which the call needs.
    MissingTokenizer,
    /// The model folder has no chat template, which the call needs.
    MissingChatTemplate,
    /// A bug in the engine (a caught panic); the message says where.
    Internal,
    /// The chat template refused the conversation (its own message) or failed to render.
    TemplateError,
    /// The messages are not in a shape the chat API accepts.
    InvalidMessages,
    /// An importance matrix does not fit the model (names, widths, experts) or is malformed.
    ImatrixMismatch,
    /// The output folder exists (and `force` was not given) or is the input itself.
    OutputExists,
    /// The input is already quantized; converting it again would compound the error.
    AlreadyQuantized,
    /// The disk ran out of space while writing; the partial output was removed.
    NoSpace,
}

impl ErrorCode {
    pub fn as_str(self) -> &'static str {
        match self {
            ErrorCode::Mlx => "MLX_ERROR",
            ErrorCode::Io => "IO_ERROR",
            ErrorCode::InvalidConfig => "INVALID_CONFIG",
            ErrorCode::UnsupportedModel => "UNSUPPORTED_MODEL",
            ErrorCode::MissingTensor => "MISSING_TENSOR",
            ErrorCode::ShapeMismatch => "SHAPE_MISMATCH",
            ErrorCode::InvalidSafetensors => "INVALID_SAFETENSORS",
            ErrorCode::UnsupportedQuantization => "UNSUPPORTED_QUANTIZATION",
            ErrorCode::InvalidArgument => "INVALID_ARGUMENT",
            ErrorCode::Disposed => "MODEL_DISPOSED",
            ErrorCode::MissingTokenizer => "MISSING_TOKENIZER",
            ErrorCode::MissingChatTemplate => "MISSING_CHAT_TEMPLATE",
            ErrorCode::Internal => "INTERNAL_ERROR",
            ErrorCode::TemplateError => "TEMPLATE_ERROR",
            ErrorCode::InvalidMessages => "INVALID_MESSAGES",
            ErrorCode::ImatrixMismatch => "IMATRIX_MISMATCH",
            ErrorCode::OutputExists => "OUTPUT_EXISTS",
            ErrorCode::AlreadyQuantized => "ALREADY_QUANTIZED",
            ErrorCode::NoSpace => "NO_SPACE",
        }
    }
}

impl fmt::Display for ErrorCode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

#[derive(Debug, thiserror::Error)]
#[error("{message}")]
pub struct Error {
    pub code: ErrorCode,
    pub message: String,
}

impl Error {
    pub fn new(code: ErrorCode, message: impl Into<String>) -> Self {
        Error {
            code,
            message: message.into(),
        }
    }
}

/// Shorthand for `Err(Error::new(code, message))`.
pub fn fail<T>(code: ErrorCode, message: impl Into<String>) -> Result<T> {
    Err(Error::new(code, message))
}

impl From<mlx_rs::error::Exception> for Error {
    fn from(e: mlx_rs::error::Exception) -> Self {
        Error::new(ErrorCode::Mlx, e.what().to_string())
    }
}

pub type Result<T, E = Error> = std::result::Result<T, E>;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn codes_are_stable_strings() {
        assert_eq!(ErrorCode::Mlx.to_string(), "MLX_ERROR");
        let e = Error::new(ErrorCode::Mlx, "shape [2] vs [3]");
        assert_eq!(e.to_string(), "shape [2] vs [3]");
    }
}
