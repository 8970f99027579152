//! The one error type of the engine. Every error carries a stable [`ErrorCode`], which the
//! Node layer hands to JS as `error.code`, and a message naming what is at fault.

use std::fmt;

/// Stable identifiers for error classes; their spelling is part of the JS API.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ErrorCode {
    /// MLX itself reported a failure.
    Mlx,
}

impl ErrorCode {
    pub fn as_str(self) -> &'static str {
        match self {
            ErrorCode::Mlx => "MLX_ERROR",
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
