use std::path::PathBuf;

/// Everything that can go wrong while generating a checkpoint. Each variant names the file,
/// field, flag or value at fault so that a message alone tells the user what to fix.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("{context}: {path}: {source}")]
    Io {
        context: &'static str,
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },

    #[error("invalid model shape: {field}: {reason}")]
    Shape { field: String, reason: String },

    #[error("unknown shape field `{0}` (see `mlx-model-gen --help` for the list)")]
    UnknownField(String),

    #[error("invalid value `{value}` for `{field}`: {reason}")]
    BadValue {
        field: String,
        value: String,
        reason: String,
    },

    #[error("{path}: line {line}: {reason}")]
    Ranks {
        path: PathBuf,
        line: usize,
        reason: String,
    },

    #[error("{path}: {reason}")]
    BadFile { path: PathBuf, reason: String },

    #[error("{path} already exists; pass --force (GenerateOptions::force) to replace it")]
    OutputExists { path: PathBuf },

    #[error("refusing to replace {path}: {reason}")]
    WontReplace { path: PathBuf, reason: String },

    #[error("`{command}` failed: {reason}")]
    Command { command: String, reason: String },

    #[error("{archive}: no member `{member}`")]
    MissingMember { archive: PathBuf, member: String },

    #[error(
        "{what} has SHA-256 {actual}, expected {expected} (a corrupted or different download?)"
    )]
    Checksum {
        what: String,
        expected: String,
        actual: String,
    },

    #[error("{0}")]
    Usage(String),

    #[error("JSON for {what}: {source}")]
    Json {
        what: String,
        #[source]
        source: serde_json::Error,
    },
}

pub type Result<T, E = Error> = std::result::Result<T, E>;

impl Error {
    pub(crate) fn io(
        context: &'static str,
        path: impl Into<PathBuf>,
    ) -> impl FnOnce(std::io::Error) -> Error {
        let path = path.into();
        move |source| Error::Io {
            context,
            path,
            source,
        }
    }

    pub(crate) fn shape(field: impl Into<String>, reason: impl Into<String>) -> Error {
        Error::Shape {
            field: field.into(),
            reason: reason.into(),
        }
    }

    pub(crate) fn bad_value(
        field: impl Into<String>,
        value: impl Into<String>,
        reason: impl Into<String>,
    ) -> Error {
        Error::BadValue {
            field: field.into(),
            value: value.into(),
            reason: reason.into(),
        }
    }
}
