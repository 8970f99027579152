//! Chat messages as callers send them (OpenAI's shape, camelCase from JavaScript), brought into
//! the shape Qwen3.5's template reads.
//!
//! The template reads snake_case keys and iterates `tool_call.arguments|items`, so OpenAI's
//! `function.arguments` — a JSON *string* — would fail inside jinja with a message about
//! mappings. Everything is checked here instead, with errors that name the message.

use serde_json::{Map, Value};

use crate::error::MessageError;

const ROLES: [&str; 4] = ["system", "user", "assistant", "tool"];
const PART_TYPES: [&str; 4] = ["text", "image", "image_url", "video"];

/// Checks a conversation and rewrites it into the shape the template reads:
///
/// * `toolCalls`, `toolCallId`, `reasoningContent` become `tool_calls`, `tool_call_id`,
///   `reasoning_content` (giving both spellings of one key is an error);
/// * roles must be `system`, `user`, `assistant` or `tool`;
/// * `content` is a string, `null`, absent, or a list of parts `{type: "text", text}`,
///   `{type: "image" | "image_url" | "video", ...}` (passed through; `imageUrl` becomes
///   `image_url`);
/// * each tool call, `{id?, type: "function", function: {name, arguments}}` or
///   `{name, arguments}`, becomes `{id?, type: "function", function: {name, arguments}}`
///   with `arguments` an object: a JSON string is parsed (an empty string means no
///   arguments), and must encode an object;
/// * other keys are kept as given.
pub fn normalize_messages(messages: &[Value]) -> Result<Vec<Value>, MessageError> {
    if messages.is_empty() {
        return Err(MessageError::Empty);
    }
    messages
        .iter()
        .enumerate()
        .map(|(index, message)| normalize_message(index, message))
        .collect()
}

fn normalize_message(index: usize, message: &Value) -> Result<Value, MessageError> {
    let invalid = |reason: String| MessageError::Invalid { index, reason };
    let Some(fields) = message.as_object() else {
        return Err(invalid(format!(
            "expected an object with \"role\" and \"content\", got {}",
            describe(message)
        )));
    };
    let role = match fields.get("role") {
        Some(Value::String(role)) => role.as_str(),
        Some(other) => {
            return Err(invalid(format!(
                "\"role\" must be a string, got {}",
                describe(other)
            )))
        }
        None => return Err(invalid("missing \"role\"".to_owned())),
    };
    if !ROLES.contains(&role) {
        return Err(invalid(format!(
            "unknown role {role:?} (expected system, user, assistant or tool)"
        )));
    }

    let mut out = Map::new();
    for (key, value) in fields {
        let key = canonical_key(key);
        if out.contains_key(key) {
            return Err(invalid(format!(
                "both {:?} and {:?} are given; use one",
                camel_case(key),
                key
            )));
        }
        let value = match key {
            "content" => normalize_content(index, value)?,
            "tool_calls" => {
                if value.is_null() {
                    continue;
                }
                if role != "assistant" {
                    return Err(invalid(format!(
                        "\"tool_calls\" is only allowed on assistant messages, not {role}"
                    )));
                }
                normalize_tool_calls(index, value)?
            }
            "reasoning_content" => {
                if value.is_null() {
                    continue;
                }
                if role != "assistant" {
                    return Err(invalid(format!(
                        "\"reasoning_content\" is only allowed on assistant messages, not {role}"
                    )));
                }
                if !value.is_string() {
                    return Err(invalid(format!(
                        "\"reasoning_content\" must be a string, got {}",
                        describe(value)
                    )));
                }
                value.clone()
            }
            "tool_call_id" => {
                if !value.is_string() && !value.is_null() {
                    return Err(invalid(format!(
                        "\"tool_call_id\" must be a string, got {}",
                        describe(value)
                    )));
                }
                value.clone()
            }
            _ => value.clone(),
        };
        out.insert(key.to_owned(), value);
    }
    Ok(Value::Object(out))
}

fn canonical_key(key: &str) -> &str {
    match key {
        "toolCalls" => "tool_calls",
        "toolCallId" => "tool_call_id",
        "reasoningContent" => "reasoning_content",
        other => other,
    }
}

fn camel_case(key: &str) -> &str {
    match key {
        "tool_calls" => "toolCalls",
        "tool_call_id" => "toolCallId",
        "reasoning_content" => "reasoningContent",
        other => other,
    }
}

fn normalize_content(index: usize, content: &Value) -> Result<Value, MessageError> {
    let invalid = |reason: String| MessageError::Invalid { index, reason };
    let parts = match content {
        Value::Null | Value::String(_) => return Ok(content.clone()),
        Value::Array(parts) => parts,
        other => {
            return Err(invalid(format!(
                "\"content\" must be a string, a list of parts or null, got {}",
                describe(other)
            )))
        }
    };
    let mut out = Vec::with_capacity(parts.len());
    for (j, part) in parts.iter().enumerate() {
        let Some(fields) = part.as_object() else {
            return Err(invalid(format!(
                "content part {j} must be an object like {{\"type\": \"text\", \"text\": ...}}, got {}",
                describe(part)
            )));
        };
        let mut part_out = Map::new();
        for (key, value) in fields {
            let key = if key == "imageUrl" { "image_url" } else { key };
            if part_out.contains_key(key) {
                return Err(invalid(format!(
                    "content part {j}: both \"imageUrl\" and \"image_url\" are given; use one"
                )));
            }
            part_out.insert(key.to_owned(), value.clone());
        }
        // A part without `type` is named by its payload key, as Hugging Face's processors
        // accept `{"text": ...}` and `{"image": ...}`.
        let kind = match part_out.get("type") {
            Some(Value::String(kind)) => kind.clone(),
            Some(other) => {
                return Err(invalid(format!(
                    "content part {j}: \"type\" must be a string, got {}",
                    describe(other)
                )))
            }
            None => match PART_TYPES.iter().find(|k| part_out.contains_key(**k)) {
                Some(kind) => (*kind).to_owned(),
                None => {
                    return Err(invalid(format!(
                    "content part {j} has no \"type\" (expected text, image, image_url or video)"
                )))
                }
            },
        };
        if !PART_TYPES.contains(&kind.as_str()) {
            return Err(invalid(format!(
                "content part {j}: unsupported type {kind:?} (expected text, image, image_url or video)"
            )));
        }
        if kind == "text" {
            match part_out.get("text") {
                Some(Value::String(_)) => {}
                Some(other) => {
                    return Err(invalid(format!(
                        "content part {j}: \"text\" must be a string, got {}",
                        describe(other)
                    )))
                }
                None => {
                    return Err(invalid(format!(
                        "content part {j} is of type \"text\" but has no \"text\""
                    )))
                }
            }
        }
        out.push(Value::Object(part_out));
    }
    Ok(Value::Array(out))
}

fn normalize_tool_calls(index: usize, tool_calls: &Value) -> Result<Value, MessageError> {
    let Some(calls) = tool_calls.as_array() else {
        return Err(MessageError::Invalid {
            index,
            reason: format!(
                "\"tool_calls\" must be a list, got {}",
                describe(tool_calls)
            ),
        });
    };
    calls
        .iter()
        .enumerate()
        .map(|(call, value)| normalize_tool_call(index, call, value))
        .collect::<Result<Vec<_>, _>>()
        .map(Value::Array)
}

fn normalize_tool_call(index: usize, call: usize, value: &Value) -> Result<Value, MessageError> {
    let error = |reason: String| MessageError::ToolCall {
        index,
        call,
        reason,
    };
    let Some(fields) = value.as_object() else {
        return Err(error(format!(
            "expected an object like {{\"type\": \"function\", \"function\": {{\"name\", \"arguments\"}}}}, got {}",
            describe(value)
        )));
    };
    match fields.get("type") {
        None | Some(Value::Null) => {}
        Some(Value::String(kind)) if kind == "function" => {}
        Some(other) => {
            return Err(error(format!(
                "unsupported \"type\" {} (only \"function\" calls can be rendered)",
                describe(other)
            )))
        }
    }
    // OpenAI nests name and arguments under `function`; the bare form has them at the top.
    let (holder, prefix) = match fields.get("function") {
        Some(Value::Object(function)) => (function, "function."),
        Some(other) => {
            return Err(error(format!(
                "\"function\" must be an object with \"name\" and \"arguments\", got {}",
                describe(other)
            )))
        }
        None => (fields, ""),
    };
    let name = match holder.get("name") {
        Some(Value::String(name)) if !name.trim().is_empty() => name.clone(),
        Some(other) => {
            return Err(error(format!(
                "\"{prefix}name\" must be a non-empty string, got {}",
                describe(other)
            )))
        }
        None => return Err(error(format!("missing \"{prefix}name\""))),
    };
    let arguments = match holder.get("arguments") {
        None | Some(Value::Null) => Map::new(),
        Some(Value::Object(arguments)) => arguments.clone(),
        Some(Value::String(text)) if text.trim().is_empty() => Map::new(),
        Some(Value::String(text)) => match serde_json::from_str::<Value>(text) {
            Ok(Value::Object(arguments)) => arguments,
            Ok(other) => {
                return Err(error(format!(
                    "\"{prefix}arguments\" must encode a JSON object, but the string holds {}: {}",
                    describe(&other),
                    snippet(text)
                )))
            }
            Err(e) => {
                return Err(error(format!(
                    "\"{prefix}arguments\" is not valid JSON ({e}): {}",
                    snippet(text)
                )))
            }
        },
        Some(other) => {
            return Err(error(format!(
                "\"{prefix}arguments\" must be an object or a JSON string, got {}",
                describe(other)
            )))
        }
    };
    let mut function = Map::new();
    function.insert("name".to_owned(), Value::String(name));
    function.insert("arguments".to_owned(), Value::Object(arguments));
    let mut out = Map::new();
    if let Some(id) = fields.get("id") {
        if !id.is_null() {
            out.insert("id".to_owned(), id.clone());
        }
    }
    out.insert("type".to_owned(), Value::String("function".to_owned()));
    out.insert("function".to_owned(), Value::Object(function));
    Ok(Value::Object(out))
}

/// A short description of a JSON value for error messages: its kind and, for scalars, itself.
fn describe(value: &Value) -> String {
    match value {
        Value::Null => "null".to_owned(),
        Value::Bool(b) => format!("the boolean {b}"),
        Value::Number(n) => format!("the number {n}"),
        Value::String(s) => format!("the string {}", snippet(s)),
        Value::Array(a) => format!("an array of {} items", a.len()),
        Value::Object(_) => "an object".to_owned(),
    }
}

/// The text quoted, cut to a readable length.
fn snippet(text: &str) -> String {
    const MAX: usize = 80;
    match text.char_indices().nth(MAX) {
        Some((cut, _)) => format!("{:?}...", &text[..cut]),
        None => format!("{text:?}"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn one(message: Value) -> Result<Value, MessageError> {
        normalize_messages(&[message]).map(|mut v| v.remove(0))
    }

    #[test]
    fn camel_case_keys_become_snake_case_in_place() {
        let got = one(json!({
            "role": "assistant",
            "reasoningContent": "hmm",
            "content": null,
            "toolCalls": [{"id": "c1", "type": "function", "function": {"name": "f", "arguments": "{\"b\": 1, \"a\": [2]}"}}],
        }))
        .unwrap();
        assert_eq!(
            serde_json::to_string(&got).unwrap(),
            r#"{"role":"assistant","reasoning_content":"hmm","content":null,"tool_calls":[{"id":"c1","type":"function","function":{"name":"f","arguments":{"b":1,"a":[2]}}}]}"#
        );
        let tool = one(json!({"role": "tool", "toolCallId": "c1", "content": "ok"})).unwrap();
        assert_eq!(
            tool,
            json!({"role": "tool", "tool_call_id": "c1", "content": "ok"})
        );
    }

    #[test]
    fn bare_tool_calls_get_the_function_wrapper() {
        let got = one(json!({"role": "assistant", "tool_calls": [{"name": "f", "arguments": {"x": 1}}, {"name": "g"}]}))
            .unwrap();
        assert_eq!(
            got["tool_calls"],
            json!([
                {"type": "function", "function": {"name": "f", "arguments": {"x": 1}}},
                {"type": "function", "function": {"name": "g", "arguments": {}}}
            ])
        );
        let empty = one(json!({"role": "assistant", "tool_calls": [{"function": {"name": "f", "arguments": " "}}]}))
            .unwrap();
        assert_eq!(empty["tool_calls"][0]["function"]["arguments"], json!({}));
    }

    #[test]
    fn content_parts_are_checked_and_passed_through() {
        let got = one(json!({"role": "user", "content": [
            {"type": "text", "text": "a"},
            {"type": "image_url", "imageUrl": {"url": "data:x"}},
            {"image": "file.png"},
            {"type": "video", "video": "v.mp4"},
        ]}))
        .unwrap();
        assert_eq!(
            got["content"],
            json!([
                {"type": "text", "text": "a"},
                {"type": "image_url", "image_url": {"url": "data:x"}},
                {"image": "file.png"},
                {"type": "video", "video": "v.mp4"},
            ])
        );
    }

    #[test]
    fn errors_name_the_message_and_the_fault() {
        let cases: Vec<(Value, &str)> = vec![
            (json!("hi"), "message 1: expected an object"),
            (json!({"content": "x"}), "message 1: missing \"role\""),
            (json!({"role": 3}), "message 1: \"role\" must be a string, got the number 3"),
            (json!({"role": "developer", "content": "x"}), "message 1: unknown role \"developer\""),
            (json!({"role": "user", "content": {"text": "x"}}), "message 1: \"content\" must be a string, a list of parts or null, got an object"),
            (json!({"role": "user", "content": [{"type": "audio", "audio": "x.wav"}]}), "message 1: content part 0: unsupported type \"audio\""),
            (json!({"role": "user", "content": [{"type": "text"}]}), "message 1: content part 0 is of type \"text\" but has no \"text\""),
            (json!({"role": "user", "content": ["x"]}), "message 1: content part 0 must be an object"),
            (json!({"role": "assistant", "toolCalls": [], "tool_calls": []}), "message 1: both \"toolCalls\" and \"tool_calls\" are given"),
            (json!({"role": "user", "tool_calls": []}), "message 1: \"tool_calls\" is only allowed on assistant messages"),
            (json!({"role": "assistant", "tool_calls": {}}), "message 1: \"tool_calls\" must be a list"),
            (json!({"role": "assistant", "reasoning_content": 1}), "message 1: \"reasoning_content\" must be a string"),
            (json!({"role": "assistant", "tool_calls": [{"type": "function", "function": {"name": "f", "arguments": "{city: Oslo}"}}]}), "message 1, tool call 0: \"function.arguments\" is not valid JSON"),
            (json!({"role": "assistant", "tool_calls": [{"x": 1}, {"function": {"name": "f", "arguments": "[1]"}}]}), "message 1, tool call 0: missing \"name\""),
            (json!({"role": "assistant", "tool_calls": [{"name": "g"}, {"function": {"name": "f", "arguments": "[1]"}}]}), "message 1, tool call 1: \"function.arguments\" must encode a JSON object, but the string holds an array of 1 items"),
            (json!({"role": "assistant", "tool_calls": [{"name": "f", "arguments": 3}]}), "message 1, tool call 0: \"arguments\" must be an object or a JSON string, got the number 3"),
            (json!({"role": "assistant", "tool_calls": [{"function": {"name": ""}}]}), "message 1, tool call 0: \"function.name\" must be a non-empty string"),
            (json!({"role": "assistant", "tool_calls": [{"type": "custom", "name": "f"}]}), "message 1, tool call 0: unsupported \"type\""),
        ];
        for (bad, want) in cases {
            let messages = [json!({"role": "user", "content": "hi"}), bad.clone()];
            let err = normalize_messages(&messages)
                .expect_err(&bad.to_string())
                .to_string();
            assert!(err.starts_with(want), "{bad}: got {err:?}, want {want:?}");
        }
    }

    #[test]
    fn an_empty_conversation_is_refused() {
        assert_eq!(normalize_messages(&[]), Err(MessageError::Empty));
    }
}
