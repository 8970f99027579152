//! The chat format of Qwen3.5 models.
//!
//! * [`ChatTemplate`] renders a conversation with the model's own Jinja template exactly as
//!   transformers' `apply_chat_template` does;
//! * [`normalize_messages`] brings OpenAI-shaped (and camelCase) messages into the shape the
//!   template reads;
//! * [`ThinkingSplitter`], [`parse_tool_calls`] and [`StopMatcher`] read what the model writes
//!   back: reasoning, tool calls, stop strings.

mod error;
mod json;
mod messages;
mod methods;
mod python;
mod stop;
mod template;
mod thinking;
mod tool_calls;

pub use error::{MessageError, TemplateError};
pub use messages::normalize_messages;
pub use stop::StopMatcher;
pub use template::{ChatTemplate, RenderOptions};
pub use thinking::{split_thinking, Segment, ThinkingSplitter};
pub use tool_calls::{parse_tool_calls, ToolCall, ToolCallError};
