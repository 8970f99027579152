//! Reading model output back: thinking, tool calls and stop strings, fed in every possible way
//! a stream can cut the text, and checked against what the template renders.

mod common;

use mlx_node_chat::{
    normalize_messages, parse_tool_calls, split_thinking, RenderOptions, Segment, StopMatcher,
    ThinkingSplitter, ToolCall,
};
use serde_json::{json, Value};

/// Positions where a UTF-8 string may be cut.
fn cuts(text: &str) -> Vec<usize> {
    (0..=text.len())
        .filter(|&i| text.is_char_boundary(i))
        .collect()
}

/// Feeds `chunks` to a splitter; returns (thinking, text, every segment emitted).
fn run_splitter(in_thinking: bool, chunks: &[&str]) -> (String, String, Vec<Segment>) {
    let mut splitter = ThinkingSplitter::new(in_thinking);
    let mut segments = Vec::new();
    for chunk in chunks {
        segments.extend(splitter.push(chunk));
    }
    segments.extend(splitter.finish());
    let (mut thinking, mut text) = (String::new(), String::new());
    for segment in &segments {
        match segment {
            Segment::Thinking(t) => thinking.push_str(t),
            Segment::Text(t) => text.push_str(t),
        }
    }
    (thinking, text, segments)
}

const SAMPLE: &str = "\nThe user wants 2 < 3 checked.\n<b>Yes</b>, and </th is no tag.\n\n</think>\n\nYes: 2 < 3 — ✓ 😀\n\nDone.";
const SAMPLE_THINKING: &str = "The user wants 2 < 3 checked.\n<b>Yes</b>, and </th is no tag.";
const SAMPLE_TEXT: &str = "Yes: 2 < 3 — ✓ 😀\n\nDone.";

#[test]
fn thinking_splits_the_same_at_every_cut() {
    for cut in cuts(SAMPLE) {
        let (head, tail) = SAMPLE.split_at(cut);
        let (thinking, text, segments) = run_splitter(true, &[head, tail]);
        assert_eq!(thinking, SAMPLE_THINKING, "cut at {cut}");
        assert_eq!(text, SAMPLE_TEXT, "cut at {cut}");
        assert!(
            segments
                .iter()
                .all(|s| !matches!(s, Segment::Thinking(t) | Segment::Text(t) if t.is_empty())),
            "cut at {cut}: empty segment in {segments:?}"
        );
    }
}

#[test]
fn thinking_splits_the_same_at_every_pair_of_cuts() {
    let positions = cuts(SAMPLE);
    for (n, &a) in positions.iter().enumerate() {
        for &b in &positions[n..] {
            let chunks = [&SAMPLE[..a], &SAMPLE[a..b], &SAMPLE[b..]];
            let (thinking, text, _) = run_splitter(true, &chunks);
            assert_eq!(
                (thinking.as_str(), text.as_str()),
                (SAMPLE_THINKING, SAMPLE_TEXT),
                "cuts {a}, {b}"
            );
        }
    }
}

#[test]
fn thinking_streamed_character_by_character_is_released_early() {
    let chars: Vec<String> = SAMPLE.chars().map(String::from).collect();
    let mut splitter = ThinkingSplitter::new(true);
    let mut thinking = String::new();
    let mut fed = String::new();
    for c in &chars {
        fed.push_str(c);
        for segment in splitter.push(c) {
            if let Segment::Thinking(t) = segment {
                thinking.push_str(&t);
            }
        }
        // Never more than a partial `</think>` and the newlines before it wait.
        if !fed.contains("</think>") {
            let pending = fed.trim_start_matches('\n').len() - thinking.len();
            let held = &fed[fed.len() - pending..];
            assert!(
                held.trim_start_matches('\n').len() < "</think>".len()
                    && "</think>".starts_with(held.trim_start_matches('\n')),
                "after {fed:?}: released {thinking:?}, holding {held:?}"
            );
        }
    }
    assert_eq!(thinking, SAMPLE_THINKING);
}

#[test]
fn output_without_a_think_block_at_every_cut() {
    let sample = "\n\n<thinking> is not <think>, 1 < 2\n";
    for cut in cuts(sample) {
        let (head, tail) = sample.split_at(cut);
        let (thinking, text, _) = run_splitter(false, &[head, tail]);
        assert_eq!(
            (thinking.as_str(), text.as_str()),
            ("", "<thinking> is not <think>, 1 < 2\n"),
            "cut at {cut}"
        );
    }
    let opened = "<think>\nr\n</think>\n\nx";
    for cut in cuts(opened) {
        let (head, tail) = opened.split_at(cut);
        let (thinking, text, _) = run_splitter(false, &[head, tail]);
        assert_eq!(
            (thinking.as_str(), text.as_str()),
            ("r", "x"),
            "cut at {cut}"
        );
    }
}

#[test]
fn stop_strings_at_every_cut() {
    let stops = ["<|im_end|>", "<|endoftext|>", "\n\nUser:"];
    let cases = [
        (
            "Hello <|im_en wait <|im_end|> never shown",
            "Hello <|im_en wait ",
            true,
        ),
        ("Answer\n\nUser: more", "Answer", true),
        (
            "almost <|endoftext| and \n\nUser",
            "almost <|endoftext| and \n\nUser",
            false,
        ),
        ("é😀<|endoftext|>", "é😀", true),
    ];
    for (text, want, want_stop) in cases {
        let positions = cuts(text);
        for (n, &a) in positions.iter().enumerate() {
            for &b in &positions[n..] {
                let mut matcher = StopMatcher::new(stops);
                let mut out = String::new();
                let mut stopped = false;
                for chunk in [&text[..a], &text[a..b], &text[b..]] {
                    let (emit, stop) = matcher.push(chunk);
                    assert!(
                        !stopped || emit.is_empty(),
                        "{text:?} cuts {a},{b}: text after the stop"
                    );
                    out.push_str(&emit);
                    stopped |= stop;
                    // Released text never holds the start of a stop string it cannot rule out.
                    for stop in stops {
                        assert!(
                            !out.contains(stop),
                            "{text:?} cuts {a},{b}: released {out:?}"
                        );
                    }
                }
                if !stopped {
                    out.push_str(&matcher.finish());
                }
                assert_eq!(
                    (out.as_str(), stopped),
                    (want, want_stop),
                    "{text:?} cuts {a},{b}"
                );
            }
        }
    }
}

#[test]
fn stop_text_is_released_as_soon_as_it_cannot_start_a_stop() {
    let stop = "<|im_end|>";
    let text = "ab<|im_x<|<|im_end";
    let mut matcher = StopMatcher::new([stop]);
    let mut out = String::new();
    for (i, c) in text.char_indices() {
        let fed = &text[..i + c.len_utf8()];
        let (emit, stopped) = matcher.push(&c.to_string());
        assert!(!stopped);
        out.push_str(&emit);
        let held = (1..stop.len())
            .rev()
            .find(|&k| fed.ends_with(&stop[..k]))
            .unwrap_or(0);
        assert_eq!(out, fed[..fed.len() - held], "after {fed:?}");
    }
    assert_eq!(out, "ab<|im_x<|");
    assert_eq!(matcher.finish(), "<|im_end");
}

/// Expected calls of a normalized assistant message.
fn calls_of(message: &Value) -> Vec<ToolCall> {
    message["tool_calls"]
        .as_array()
        .map(|calls| {
            calls
                .iter()
                .map(|c| ToolCall {
                    name: c["function"]["name"].as_str().unwrap().to_owned(),
                    arguments: c["function"]["arguments"].as_object().unwrap().clone(),
                })
                .collect()
        })
        .unwrap_or_default()
}

/// Renders `messages` and returns the last assistant turn as the model would have written it.
fn last_assistant_turn(
    template: &mlx_node_chat::ChatTemplate,
    messages: &[Value],
    tools: Option<&[Value]>,
) -> String {
    let text = template
        .render(messages, tools, &RenderOptions::default())
        .unwrap();
    let start = text.rfind("<|im_start|>assistant\n").unwrap() + "<|im_start|>assistant\n".len();
    let turn = &text[start..];
    turn.strip_suffix("<|im_end|>\n").unwrap_or(turn).to_owned()
}

#[test]
fn tool_calls_rendered_by_the_template_parse_back() {
    let Some(fx) = common::load() else { return };
    let mut checked = 0;
    for case in &fx.cases {
        let name = case["name"].as_str().unwrap();
        let messages = normalize_messages(common::messages(case)).unwrap();
        for (i, message) in messages.iter().enumerate() {
            if message["role"] != "assistant" || message.get("tool_calls").is_none() {
                continue;
            }
            let turn = last_assistant_turn(&fx.template, &messages[..=i], common::tools(case));
            // After the last user query the turn opens with its think block.
            let (reasoning, text) = split_thinking(&turn, false);
            let (rest, calls, errors) = parse_tool_calls(&text);
            assert!(errors.is_empty(), "{name}: {errors:?}");
            assert_eq!(calls, calls_of(message), "{name} message {i}");
            let content = message["content"].as_str().unwrap_or("").trim();
            assert_eq!(rest, content, "{name} message {i}");
            let want_reasoning = message
                .get("reasoning_content")
                .and_then(Value::as_str)
                .unwrap_or("");
            assert_eq!(
                reasoning.as_deref(),
                Some(want_reasoning),
                "{name} message {i}"
            );
            checked += 1;
        }
    }
    assert!(
        checked >= 8,
        "only {checked} assistant turns with tool calls in the fixtures"
    );
}

#[test]
fn awkward_arguments_round_trip() {
    let Some(fx) = common::load() else { return };
    let arguments = json!({
        "code": "fn main() {\n    println!(\"hi\");\n}\n",
        "empty": "",
        "nested": {"a": [1, 2.5, null, true], "b": {"c": "<tag> & ü"}},
        "list": ["x", 1],
        "neg": -12,
        "small": 1e-7,
        "flag": false,
    });
    let messages = normalize_messages(&[
        json!({"role": "user", "content": "go"}),
        json!({"role": "assistant", "content": "Working on it.", "reasoningContent": "Plan:\n1. call\n", "toolCalls": [
            {"id": "a", "type": "function", "function": {"name": "write", "arguments": serde_json::to_string(&arguments).unwrap()}},
            {"name": "noop", "arguments": {}},
        ]}),
    ])
    .unwrap();
    let turn = last_assistant_turn(&fx.template, &messages, None);
    let (reasoning, text) = split_thinking(&turn, false);
    assert_eq!(reasoning.as_deref(), Some("Plan:\n1. call"));
    let (rest, calls, errors) = parse_tool_calls(&text);
    assert!(errors.is_empty(), "{errors:?}");
    assert_eq!(rest, "Working on it.");
    assert_eq!(calls, calls_of(&messages[1]));
    assert_eq!(
        calls[0].arguments.keys().collect::<Vec<_>>(),
        ["code", "empty", "nested", "list", "neg", "small", "flag"]
    );
}
