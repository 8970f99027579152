//! Shared by the integration tests: the Qwen3.5 fixtures and a readable diff.

#![allow(dead_code)]

use std::path::PathBuf;

use mlx_node_chat::{ChatTemplate, RenderOptions};
use serde_json::Value;

/// `shared/fixtures/qwen3_5` beside the repository. A missing folder fails the test, unless
/// `MLX_NODE_NO_FIXTURES=1` says fixtures are knowingly absent; then `None`.
pub fn fixtures() -> Option<PathBuf> {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../../shared/fixtures/qwen3_5");
    if dir.join("reference/chat_template_cases.json").is_file() {
        return Some(dir);
    }
    if std::env::var("MLX_NODE_NO_FIXTURES").as_deref() == Ok("1") {
        eprintln!(
            "note: {} is absent and MLX_NODE_NO_FIXTURES=1; skipping this fixture test",
            dir.display()
        );
        return None;
    }
    panic!(
        "fixtures not found at {} (set MLX_NODE_NO_FIXTURES=1 to skip fixture tests)",
        dir.display()
    );
}

pub struct Fixtures {
    pub template: ChatTemplate,
    pub cases: Vec<Value>,
    pub errors: Vec<Value>,
}

pub fn load() -> Option<Fixtures> {
    let dir = fixtures()?;
    let template =
        ChatTemplate::from_model_dir(dir.join("tokenizer")).expect("the template compiles");
    let text = std::fs::read_to_string(dir.join("reference/chat_template_cases.json")).unwrap();
    let mut file: Value = serde_json::from_str(&text).unwrap();
    let cases = file["cases"].as_array_mut().map(std::mem::take).unwrap();
    let errors = file["errors"].as_array_mut().map(std::mem::take).unwrap();
    Some(Fixtures {
        template,
        cases,
        errors,
    })
}

pub fn options(kwargs: &Value) -> RenderOptions {
    let mut options = RenderOptions::default();
    for (key, value) in kwargs.as_object().expect("kwargs is an object") {
        match key.as_str() {
            "add_generation_prompt" => options.add_generation_prompt = value.as_bool().unwrap(),
            "enable_thinking" => options.enable_thinking = value.as_bool(),
            "add_vision_id" => options.add_vision_id = value.as_bool(),
            _ => {
                options.extra.insert(key.clone(), value.clone());
            }
        }
    }
    options
}

pub fn tools(case: &Value) -> Option<&[Value]> {
    case.get("tools")
        .and_then(Value::as_array)
        .map(Vec::as_slice)
}

pub fn messages(case: &Value) -> &[Value] {
    case["messages"].as_array().expect("messages is a list")
}

/// A line diff of two texts: the common head and tail are cut to two lines of context, the
/// differing middle shown as `-want` / `+got` with escapes visible.
pub fn diff(want: &str, got: &str) -> String {
    let want_lines: Vec<&str> = want.split_inclusive('\n').collect();
    let got_lines: Vec<&str> = got.split_inclusive('\n').collect();
    let head = want_lines
        .iter()
        .zip(&got_lines)
        .take_while(|(a, b)| a == b)
        .count();
    let tail = want_lines[head..]
        .iter()
        .rev()
        .zip(got_lines[head..].iter().rev())
        .take_while(|(a, b)| a == b)
        .count();
    let mut out = format!(
        "@@ line {} (byte {}) @@\n",
        head + 1,
        want.bytes()
            .zip(got.bytes())
            .take_while(|(a, b)| a == b)
            .count()
    );
    for line in &want_lines[head.saturating_sub(2)..head] {
        out.push_str(&format!(" {line:?}\n"));
    }
    for line in &want_lines[head..want_lines.len() - tail] {
        out.push_str(&format!("-{line:?}\n"));
    }
    for line in &got_lines[head..got_lines.len() - tail] {
        out.push_str(&format!("+{line:?}\n"));
    }
    for line in want_lines[want_lines.len() - tail..].iter().take(2) {
        out.push_str(&format!(" {line:?}\n"));
    }
    out
}
