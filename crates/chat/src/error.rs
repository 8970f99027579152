//! Errors of this crate.

use std::path::PathBuf;

/// Loading, compiling or rendering a chat template failed.
#[derive(Debug, thiserror::Error)]
pub enum TemplateError {
    /// The template itself refused the conversation with `raise_exception(message)`; the
    /// message is exactly the template's (e.g. `No user query found in messages.`).
    #[error("{0}")]
    Raised(String),
    /// The template source does not compile.
    #[error("the chat template does not compile: {0}")]
    Syntax(String),
    /// Rendering failed for another reason (a type error, a failing filter, ...).
    #[error("rendering the chat template failed: {0}")]
    Render(String),
    /// A model folder holds no chat template.
    #[error(
        "no chat template in {}: neither chat_template.jinja nor a \"chat_template\" entry in \
         tokenizer_config.json",
        dir.display()
    )]
    NotFound { dir: PathBuf },
    /// A template file could not be read.
    #[error("cannot read {}: {source}", path.display())]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    /// `tokenizer_config.json` is not valid JSON or its `chat_template` has the wrong shape.
    #[error("{}: {message}", path.display())]
    Config { path: PathBuf, message: String },
    /// An extra render keyword would replace a variable the renderer sets itself.
    #[error(
        "render option {key:?} cannot be passed as an extra keyword: it is set from the \
         messages, tools or RenderOptions fields"
    )]
    ReservedKwarg { key: String },
}

/// A message list that cannot be brought into the shape the template reads.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum MessageError {
    /// The conversation has no messages.
    #[error(
        "cannot apply the chat template to an empty conversation: provide at least one message"
    )]
    Empty,
    /// Message `index` (0-based) is malformed; `reason` names the key and value at fault.
    #[error("message {index}: {reason}")]
    Invalid { index: usize, reason: String },
    /// Tool call `call` (0-based) of message `index` is malformed.
    #[error("message {index}, tool call {call}: {reason}")]
    ToolCall {
        index: usize,
        call: usize,
        reason: String,
    },
}
