//! Chat turns end to end on a fixture model: the template, the conversation cache across
//! turns (greedy replies identical to cold runs, with the shared prefix reused), streaming
//! chunks that add up to the result, and stop strings that never reach the output.

mod common;

use std::sync::atomic::AtomicBool;

use mlx_node_core::chat::{ChatChunk, ChatOptions, ChunkKind, FinishReason};
use mlx_node_core::session::Session;
use serde_json::json;

fn session() -> Option<Session> {
    let root = common::fixtures()?;
    Some(Session::load(&root.join("tiny-dense"), Some(mlx_rs::Dtype::Float32)).unwrap())
}

fn greedy(max: usize, thinking: Option<bool>) -> ChatOptions {
    ChatOptions {
        max_new_tokens: Some(max),
        temperature: Some(0.0),
        enable_thinking: thinking,
        ..Default::default()
    }
}

#[test]
fn multi_turn_replies_equal_cold_runs_and_reuse_the_cache() {
    let Some(mut warm) = session() else { return };
    let mut cold = session().unwrap();
    let never = AtomicBool::new(false);
    let questions = [
        "Hello!",
        "What is a lighthouse?",
        "Tell me more.",
        "Thanks, bye.",
    ];
    let mut history = vec![json!({"role": "system", "content": "You are terse."})];
    for (turn, question) in questions.iter().enumerate() {
        history.push(json!({"role": "user", "content": question}));
        let options = greedy(12, Some(turn % 2 == 0));
        let got = warm.chat(&history, &options, &never, |_| {}).unwrap();
        cold.conversation.clear();
        let expected = cold.chat(&history, &options, &never, |_| {}).unwrap();
        assert_eq!(got.text, expected.text, "turn {turn}");
        assert_eq!(got.thinking, expected.thinking, "turn {turn}");
        assert_eq!(expected.cached_tokens, 0);
        if turn > 0 {
            assert!(got.cached_tokens > 0, "turn {turn} reused nothing");
        }
        history.push(json!({"role": "assistant", "content": got.text}));
    }
}

#[test]
fn chunks_add_up_and_stop_strings_are_never_emitted() {
    let Some(mut s) = session() else { return };
    let never = AtomicBool::new(false);
    let messages = [json!({"role": "user", "content": "Write something."})];
    let full = s
        .chat(&messages, &greedy(24, Some(false)), &never, |_| {})
        .unwrap();
    assert!(full.text.chars().count() > 6, "{:?}", full.text);

    let mut chunks: Vec<ChatChunk> = Vec::new();
    let again = s
        .chat(&messages, &greedy(24, Some(false)), &never, |c| {
            chunks.push(c)
        })
        .unwrap();
    let streamed: String = chunks
        .iter()
        .filter(|c| c.kind == ChunkKind::Text)
        .map(|c| c.text.as_str())
        .collect();
    assert_eq!(again.text, full.text);
    assert_eq!(streamed, full.text);

    // A stop string taken from the middle of the reply: output ends right before it.
    let chars: Vec<char> = full.text.chars().collect();
    let stop: String = chars[3..6].iter().collect();
    let cut = full.text.find(&stop).unwrap();
    let mut options = greedy(24, Some(false));
    options.stop = vec![stop.clone()];
    let mut streamed = String::new();
    let stopped = s
        .chat(&messages, &options, &never, |c| streamed.push_str(&c.text))
        .unwrap();
    assert_eq!(stopped.text, full.text[..cut]);
    assert_eq!(streamed, full.text[..cut]);
    assert_eq!(stopped.finish_reason, FinishReason::Stop);
    assert!(!streamed.contains(&stop));
}

#[test]
fn template_errors_and_bad_messages_have_codes() {
    let Some(mut s) = session() else { return };
    let never = AtomicBool::new(false);
    let e = s.chat(&[], &greedy(2, None), &never, |_| {}).unwrap_err();
    assert_eq!(e.code.as_str(), "INVALID_MESSAGES");
    let e = s
        .chat(
            &[json!({"role": "system", "content": "only a system message"})],
            &greedy(2, None),
            &never,
            |_| {},
        )
        .unwrap_err();
    assert_eq!(
        (e.code.as_str(), e.message.as_str()),
        ("TEMPLATE_ERROR", "No user query found in messages.")
    );
    let bad = json!({"role": "assistant", "content": "", "tool_calls": [{"function": {"name": "f", "arguments": "{not json"}}]});
    let e = s
        .chat(
            &[json!({"role": "user", "content": "hi"}), bad],
            &greedy(2, None),
            &never,
            |_| {},
        )
        .unwrap_err();
    assert_eq!(e.code.as_str(), "INVALID_MESSAGES");
    assert!(e.message.contains("message 1"), "{}", e.message);
}
