//! The tokenizer through `tokenizers`: every rendering of the chat-template cases encodes to the
//! ids transformers gave, decodes back, and streams back in whole characters.

mod common;

use mlx_node_core::tokenizer::{StreamDecoder, Tokenizer};

#[test]
fn encodes_and_decodes_every_chat_case_like_transformers() {
    let Some(root) = common::fixtures() else {
        return;
    };
    let tokenizer = Tokenizer::from_model_dir(&root.join("tiny-dense")).unwrap();
    let cases: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(root.join("reference/chat_template_cases.json")).unwrap(),
    )
    .unwrap();
    let cases = cases["cases"].as_array().unwrap();
    assert_eq!(cases.len(), 31);
    for case in cases {
        let name = case["name"].as_str().unwrap();
        let text = case["text"].as_str().unwrap();
        let expected: Vec<u32> = case["input_ids"]
            .as_array()
            .unwrap()
            .iter()
            .map(|v| v.as_u64().unwrap() as u32)
            .collect();
        let ids = tokenizer.encode(text).unwrap();
        assert_eq!(ids, expected, "{name}: ids differ");
        assert_eq!(
            tokenizer.decode(&ids, false).unwrap(),
            text,
            "{name}: decode"
        );

        let mut stream = StreamDecoder::new();
        let mut streamed = String::new();
        for &id in &ids {
            streamed.push_str(&stream.push(&tokenizer, id).unwrap());
        }
        streamed.push_str(&stream.finish(&tokenizer).unwrap());
        assert_eq!(streamed, text, "{name}: streamed text");
    }
    assert_eq!(tokenizer.token_id("<|im_end|>"), Some(248046));
    assert_eq!(tokenizer.token_id("<think>"), Some(248068));
}

#[test]
fn streaming_never_splits_a_character() {
    let Some(root) = common::fixtures() else {
        return;
    };
    let tokenizer = Tokenizer::from_model_dir(&root.join("tiny-dense")).unwrap();
    let text = "naïve café — 我去过加拿大 👩‍👩‍👧 𝔘𝔫𝔦𝔠𝔬𝔡𝔢";
    let ids = tokenizer.encode(text).unwrap();
    let mut stream = StreamDecoder::new();
    let mut pieces = Vec::new();
    for &id in &ids {
        let piece = stream.push(&tokenizer, id).unwrap();
        assert!(
            !piece.contains('\u{FFFD}'),
            "a piece holds a broken character: {piece:?}"
        );
        pieces.push(piece);
    }
    pieces.push(stream.finish(&tokenizer).unwrap());
    assert_eq!(pieces.concat(), text);
    assert!(
        ids.len() > pieces.iter().filter(|p| !p.is_empty()).count(),
        "some tokens were held back"
    );
}
