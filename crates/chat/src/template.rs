//! A model's Jinja chat template, rendered the way transformers' `apply_chat_template` does.
//!
//! transformers renders with a jinja2 sandbox: `trim_blocks` and `lstrip_blocks` on, trailing
//! newline of the template dropped, no autoescaping, jinja2's lenient undefined, its own
//! `tojson` and a `raise_exception` global. minijinja is close to jinja2; what differs is
//! replaced here (value spellings, `tojson`, `trim`, `items`, the `sequence` test, Python
//! methods) so the prompt is byte for byte what the model saw in training.

use std::collections::BTreeMap;
use std::fmt;
use std::path::Path;

use minijinja::value::{Value, ValueKind};
use minijinja::{AutoEscape, Environment, Error, ErrorKind, Output, State, UndefinedBehavior};

use crate::error::TemplateError;
use crate::json::tojson_filter;
use crate::methods::call_method;
use crate::python::{is_space, to_str};

const TEMPLATE_NAME: &str = "chat_template";
const JINJA_FILE: &str = "chat_template.jinja";
const TOKENIZER_CONFIG_FILE: &str = "tokenizer_config.json";

/// Variables the renderer sets itself; `RenderOptions::extra` may not replace them.
const RESERVED: [&str; 5] = [
    "messages",
    "tools",
    "add_generation_prompt",
    "enable_thinking",
    "add_vision_id",
];

/// What `apply_chat_template` is given besides the messages and tools.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct RenderOptions {
    /// End the prompt with the opening of an assistant turn.
    pub add_generation_prompt: bool,
    /// `None` leaves the variable undefined, which Qwen3.5's template treats as thinking on.
    pub enable_thinking: Option<bool>,
    /// `None` leaves the variable undefined (no "Picture n: " labels).
    pub add_vision_id: Option<bool>,
    /// Further template variables, as extra keyword arguments to `apply_chat_template`.
    pub extra: serde_json::Map<String, serde_json::Value>,
}

/// A compiled chat template.
#[derive(Debug, Clone)]
pub struct ChatTemplate {
    env: Environment<'static>,
}

impl ChatTemplate {
    /// Compiles a template source.
    pub fn new(source: &str) -> Result<Self, TemplateError> {
        let mut env = Environment::new();
        env.set_trim_blocks(true);
        env.set_lstrip_blocks(true);
        env.set_keep_trailing_newline(false);
        env.set_auto_escape_callback(|_| AutoEscape::None);
        env.set_undefined_behavior(UndefinedBehavior::Lenient);
        env.set_formatter(python_formatter);
        env.set_unknown_method_callback(call_method);
        env.add_function("raise_exception", raise_exception);
        env.add_filter("tojson", tojson_filter);
        env.add_filter("string", string_filter);
        env.add_filter("trim", trim_filter);
        env.add_filter("items", items_filter);
        env.add_test("sequence", is_sequence);
        env.add_template_owned(TEMPLATE_NAME, source.to_owned())
            .map_err(|e| TemplateError::Syntax(describe(&e)))?;
        Ok(ChatTemplate { env })
    }

    /// Finds the template of a model folder the way transformers does: `chat_template.jinja`
    /// if present, else `chat_template` in `tokenizer_config.json` (a string, or a list of
    /// `{name, template}` of which the one named `default` is used).
    pub fn from_model_dir(dir: impl AsRef<Path>) -> Result<Self, TemplateError> {
        let dir = dir.as_ref();
        let jinja = dir.join(JINJA_FILE);
        if jinja.is_file() {
            let source = std::fs::read_to_string(&jinja).map_err(|source| TemplateError::Io {
                path: jinja.clone(),
                source,
            })?;
            return Self::new(&source);
        }
        let config_path = dir.join(TOKENIZER_CONFIG_FILE);
        if !config_path.is_file() {
            return Err(TemplateError::NotFound {
                dir: dir.to_path_buf(),
            });
        }
        let text = std::fs::read_to_string(&config_path).map_err(|source| TemplateError::Io {
            path: config_path.clone(),
            source,
        })?;
        let config: serde_json::Value =
            serde_json::from_str(&text).map_err(|e| TemplateError::Config {
                path: config_path.clone(),
                message: format!("not valid JSON: {e}"),
            })?;
        let config_error = |message: String| TemplateError::Config {
            path: config_path.clone(),
            message,
        };
        match config.get("chat_template") {
            None | Some(serde_json::Value::Null) => Err(TemplateError::NotFound {
                dir: dir.to_path_buf(),
            }),
            Some(serde_json::Value::String(source)) => Self::new(source),
            Some(serde_json::Value::Array(entries)) => {
                let mut names = Vec::new();
                for (i, entry) in entries.iter().enumerate() {
                    let name = entry.get("name").and_then(|n| n.as_str());
                    let template = entry.get("template").and_then(|t| t.as_str());
                    match (name, template) {
                        (Some("default"), Some(source)) => return Self::new(source),
                        (Some(name), Some(_)) => names.push(format!("{name:?}")),
                        _ => {
                            return Err(config_error(format!(
                                "chat_template[{i}] must be an object with string \"name\" and \
                                 \"template\""
                            )))
                        }
                    }
                }
                Err(config_error(format!(
                    "chat_template lists no template named \"default\" (it has: {})",
                    if names.is_empty() {
                        "none".to_owned()
                    } else {
                        names.join(", ")
                    }
                )))
            }
            Some(other) => Err(config_error(format!(
                "chat_template must be a string or a list of {{name, template}}, got {}",
                json_kind(other)
            ))),
        }
    }

    /// Renders a conversation. `messages` and `tools` are passed to the template as given
    /// (normalize OpenAI-shaped messages with [`crate::normalize_messages`] first); no tools is
    /// `None` to the template, as in transformers.
    pub fn render(
        &self,
        messages: &[serde_json::Value],
        tools: Option<&[serde_json::Value]>,
        options: &RenderOptions,
    ) -> Result<String, TemplateError> {
        let mut context: BTreeMap<String, Value> = BTreeMap::new();
        for (key, value) in &options.extra {
            if RESERVED.contains(&key.as_str()) {
                return Err(TemplateError::ReservedKwarg { key: key.clone() });
            }
            context.insert(key.clone(), Value::from_serialize(value));
        }
        context.insert("messages".into(), Value::from_serialize(messages));
        context.insert(
            "tools".into(),
            match tools {
                Some(tools) => Value::from_serialize(tools),
                None => Value::from(()),
            },
        );
        context.insert(
            "add_generation_prompt".into(),
            Value::from(options.add_generation_prompt),
        );
        if let Some(on) = options.enable_thinking {
            context.insert("enable_thinking".into(), Value::from(on));
        }
        if let Some(on) = options.add_vision_id {
            context.insert("add_vision_id".into(), Value::from(on));
        }
        let template = self
            .env
            .get_template(TEMPLATE_NAME)
            .map_err(|e| TemplateError::Syntax(describe(&e)))?;
        template
            .render(context)
            .map_err(|e| match raised_message(&e) {
                Some(message) => TemplateError::Raised(message),
                None => TemplateError::Render(describe(&e)),
            })
    }
}

/// Marks an error as the template's own `raise_exception`, so it can be told apart from
/// minijinja's errors after it has travelled up through macros and filters.
#[derive(Debug)]
struct Raised(String);

impl fmt::Display for Raised {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for Raised {}

fn raise_exception(message: Value) -> Result<Value, Error> {
    let message = to_str(&message);
    Err(Error::new(ErrorKind::InvalidOperation, message.clone()).with_source(Raised(message)))
}

fn raised_message(error: &Error) -> Option<String> {
    let mut current: Option<&(dyn std::error::Error + 'static)> = Some(error);
    while let Some(err) = current {
        if let Some(raised) = err.downcast_ref::<Raised>() {
            return Some(raised.0.clone());
        }
        current = err.source();
    }
    None
}

/// minijinja's message plus where in the template it happened.
fn describe(error: &Error) -> String {
    let mut text = error.to_string();
    let mut source = std::error::Error::source(error);
    while let Some(err) = source {
        text.push_str(": ");
        text.push_str(&err.to_string());
        source = err.source();
    }
    text
}

/// `{{ value }}` writes Python's `str(value)`; strings go out unescaped (no autoescape).
fn python_formatter(out: &mut Output, _state: &State, value: &Value) -> Result<(), Error> {
    match value.kind() {
        ValueKind::Undefined => Ok(()),
        ValueKind::String => out
            .write_str(value.as_str().unwrap_or_default())
            .map_err(Error::from),
        _ => out.write_str(&to_str(value)).map_err(Error::from),
    }
}

/// jinja2's `|string` is Python's `str()`: `True`, `None`, `1e-05`.
fn string_filter(value: &Value) -> Value {
    Value::from(to_str(value))
}

/// jinja2's `|trim(chars=None)` is Python's `str.strip`, whose whitespace set is wider than
/// Rust's `trim`.
fn trim_filter(value: &Value, chars: Option<String>) -> Value {
    let text = to_str(value);
    let trimmed = match &chars {
        Some(set) => text.trim_matches(|c| set.contains(c)),
        None => text.trim_matches(is_space),
    };
    Value::from(trimmed)
}

/// jinja2's `|items`: nothing for undefined, the pairs of a mapping, a type error otherwise
/// (with jinja2's message, which callers may have seen from transformers).
fn items_filter(value: &Value) -> Result<Value, Error> {
    match value.kind() {
        ValueKind::Undefined => Ok(Value::from(Vec::<Value>::new())),
        ValueKind::Map => {
            let mut pairs = Vec::new();
            for key in value.try_iter()? {
                let item = value.get_item(&key)?;
                pairs.push(Value::from(vec![key, item]));
            }
            Ok(Value::from(pairs))
        }
        _ => Err(Error::new(
            ErrorKind::InvalidOperation,
            "Can only get item pairs from a mapping.",
        )),
    }
}

/// jinja2's `sequence` test accepts anything with a length and indexing: strings and
/// mappings as well as lists.
fn is_sequence(value: &Value) -> bool {
    matches!(
        value.kind(),
        ValueKind::Seq | ValueKind::String | ValueKind::Map
    )
}

fn json_kind(value: &serde_json::Value) -> &'static str {
    match value {
        serde_json::Value::Null => "null",
        serde_json::Value::Bool(_) => "a boolean",
        serde_json::Value::Number(_) => "a number",
        serde_json::Value::String(_) => "a string",
        serde_json::Value::Array(_) => "an array",
        serde_json::Value::Object(_) => "an object",
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn render_with(source: &str, messages: serde_json::Value) -> Result<String, TemplateError> {
        let template = ChatTemplate::new(source)?;
        let messages = messages.as_array().cloned().unwrap_or_default();
        template.render(&messages, None, &RenderOptions::default())
    }

    #[test]
    fn raise_exception_is_reported_as_raised_even_from_a_macro() {
        let source = "{% macro f(x) %}{{ raise_exception('bad ' ~ x) }}{% endmacro %}\
                      {% set y = f(messages|length)|trim %}";
        match render_with(source, json!([1, 2])) {
            Err(TemplateError::Raised(message)) => assert_eq!(message, "bad 2"),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn other_failures_are_not_raised() {
        assert!(matches!(
            render_with("{{ messages|items }}", json!([1])),
            Err(TemplateError::Render(m)) if m.contains("Can only get item pairs from a mapping.")
        ));
        assert!(matches!(
            ChatTemplate::new("{% if %}"),
            Err(TemplateError::Syntax(_))
        ));
    }

    #[test]
    fn jinja2_whitespace_and_value_conventions() {
        // lstrip_blocks strips the indentation of block tags only, not of `{{ }}`.
        let source = "{% for m in messages %}\n  {{ m }}|{{ m|string }}\n  {% endfor %}\n";
        assert_eq!(
            render_with(source, json!([true, null, 0.5, 1e-5, 3, "s", [1, "a"], {"k": false}]))
                .unwrap(),
            "  True|True\n  None|None\n  0.5|0.5\n  1e-05|1e-05\n  3|3\n  s|s\n  [1, 'a']|[1, 'a']\n  {'k': False}|{'k': False}\n"
        );
        assert_eq!(
            render_with(
                "{{ nothing }}|{{ nothing|trim }}|{{ nothing is defined }}",
                json!([])
            )
            .unwrap(),
            "||False"
        );
        assert_eq!(
            render_with("[{{ ' \u{1c}x\n'|trim }}]", json!([])).unwrap(),
            "[x]"
        );
        assert_eq!(
            render_with("{{ '<&>'|tojson }}", json!([])).unwrap(),
            "\"<&>\""
        );
        assert_eq!(
            render_with(
                "{{ 'a' is sequence }}{{ {} is sequence }}{{ 1 is sequence }}",
                json!([])
            )
            .unwrap(),
            "TrueTrueFalse"
        );
    }

    #[test]
    fn options_reach_the_template_and_reserved_names_are_refused() {
        let template = ChatTemplate::new(
            "{{ add_generation_prompt }} {{ enable_thinking is defined }} {{ tools is none }} {{ custom }}",
        )
        .unwrap();
        let mut options = RenderOptions::default();
        options.extra.insert("custom".into(), json!("x"));
        assert_eq!(
            template.render(&[json!({})], None, &options).unwrap(),
            "False False True x"
        );
        options.extra.insert("tools".into(), json!([]));
        assert!(matches!(
            template.render(&[json!({})], None, &options),
            Err(TemplateError::ReservedKwarg { key }) if key == "tools"
        ));
    }

    #[test]
    fn model_dir_lookup() {
        let dir = std::env::temp_dir().join(format!("mlx-node-chat-test-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        let render = |t: &ChatTemplate| t.render(&[], None, &RenderOptions::default()).unwrap();

        let err = ChatTemplate::from_model_dir(&dir).unwrap_err().to_string();
        assert!(err.contains(&dir.display().to_string()), "{err}");
        assert!(
            err.contains("chat_template.jinja") && err.contains("tokenizer_config.json"),
            "{err}"
        );

        let config = dir.join("tokenizer_config.json");
        std::fs::write(&config, r#"{"eos_token": "x"}"#).unwrap();
        assert!(matches!(
            ChatTemplate::from_model_dir(&dir),
            Err(TemplateError::NotFound { .. })
        ));

        std::fs::write(&config, r#"{"chat_template": "from config"}"#).unwrap();
        assert_eq!(
            render(&ChatTemplate::from_model_dir(&dir).unwrap()),
            "from config"
        );

        std::fs::write(
            &config,
            r#"{"chat_template": [{"name": "tool_use", "template": "t"}, {"name": "default", "template": "d"}]}"#,
        )
        .unwrap();
        assert_eq!(render(&ChatTemplate::from_model_dir(&dir).unwrap()), "d");

        std::fs::write(
            &config,
            r#"{"chat_template": [{"name": "tool_use", "template": "t"}]}"#,
        )
        .unwrap();
        let err = ChatTemplate::from_model_dir(&dir).unwrap_err().to_string();
        assert!(
            err.contains("default") && err.contains("\"tool_use\""),
            "{err}"
        );

        std::fs::write(&config, r#"{"chat_template": 3}"#).unwrap();
        assert!(matches!(
            ChatTemplate::from_model_dir(&dir),
            Err(TemplateError::Config { .. })
        ));

        std::fs::write(dir.join("chat_template.jinja"), "from jinja\n").unwrap();
        assert_eq!(
            render(&ChatTemplate::from_model_dir(&dir).unwrap()),
            "from jinja"
        );

        std::fs::remove_dir_all(&dir).unwrap();
    }
}
