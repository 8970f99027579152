//! Generated checkpoints: tensor names, shapes and dtypes against the fixtures and against the
//! layout a config prescribes, config.json against the fixtures' key sets, safetensors
//! validity, determinism, sharding, and the all-or-nothing output folder.

mod common;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use mlx_node_model_gen::{
    generate, Error, GenerateOptions, LayerType, ModelShape, MoeShape, TokenizerSource,
};
use safetensors::{Dtype, SafeTensors};
use serde_json::Value;

fn opts(shape: ModelShape, out: &Path) -> GenerateOptions {
    let mut o = GenerateOptions::new(shape, out);
    o.tokenizer = TokenizerSource::Skip;
    o
}

fn gen(o: &GenerateOptions) -> PathBuf {
    generate(o).unwrap_or_else(|e| panic!("generate {}: {e}", o.out_dir.display()));
    o.out_dir.clone()
}

/// A small vocabulary keeps these files tiny; the fixture comparisons use the real one.
fn small_vocab(mut s: ModelShape) -> ModelShape {
    s.vocab_size = 1000;
    s
}

fn text_tensors(
    all: BTreeMap<String, (String, Vec<usize>)>,
) -> BTreeMap<String, (String, Vec<usize>)> {
    all.into_iter()
        .filter(|(k, _)| !k.starts_with("model.visual.") && !k.starts_with("mtp."))
        .collect()
}

#[test]
fn fixture_shapes_give_the_fixture_tensors_and_config_keys() {
    let Some(fx) = common::fixtures() else { return };
    let tmp = tempfile::tempdir().unwrap();
    for (name, shape) in [
        ("tiny-dense", ModelShape::tiny()),
        ("tiny-moe", ModelShape::tiny_moe()),
    ] {
        let ours = gen(&opts(shape, &tmp.path().join(name)));
        let theirs = fx.join(name);
        let expected = text_tensors(common::all_tensors(&theirs));
        let got = common::all_tensors(&ours);
        let missing: Vec<_> = expected.keys().filter(|k| !got.contains_key(*k)).collect();
        let extra: Vec<_> = got.keys().filter(|k| !expected.contains_key(*k)).collect();
        assert!(
            missing.is_empty() && extra.is_empty(),
            "{name}: missing {missing:?}, extra {extra:?}"
        );
        assert_eq!(got, expected, "{name}: dtypes or shapes differ");

        let our_cfg = common::read_json(&ours.join("config.json"));
        let fx_cfg = common::read_json(&theirs.join("config.json"));
        let keys = |v: &Value| v.as_object().unwrap().keys().cloned().collect::<Vec<_>>();
        let mut fx_top = keys(&fx_cfg);
        fx_top.retain(|k| k != "vision_config");
        assert_eq!(keys(&our_cfg), fx_top, "{name}: top-level keys");
        assert_eq!(
            keys(&our_cfg["text_config"]),
            keys(&fx_cfg["text_config"]),
            "{name}: text_config keys"
        );
        for (k, v) in fx_cfg["text_config"].as_object().unwrap() {
            // initializer_range records our std (the fixture deviates on purpose), and we carry no MTP weights.
            if k == "initializer_range" || k == "mtp_num_hidden_layers" {
                continue;
            }
            let ours_v = &our_cfg["text_config"][k];
            let same = match (v.as_f64(), ours_v.as_f64()) {
                (Some(a), Some(b)) => a == b,
                _ => v == ours_v,
            };
            assert!(same, "{name}: text_config.{k}: fixture {v}, ours {ours_v}");
        }
        for k in fx_top.iter().filter(|k| *k != "text_config") {
            assert_eq!(our_cfg[k], fx_cfg[k], "{name}: {k}");
        }
        assert_eq!(
            std::fs::read(ours.join("generation_config.json")).unwrap(),
            std::fs::read(theirs.join("generation_config.json")).unwrap(),
            "{name}: generation_config.json"
        );
    }
}

fn odd_shapes() -> Vec<(&'static str, ModelShape)> {
    let mut hv_triple = small_vocab(ModelShape::tiny());
    hv_triple.linear_num_key_heads = 2;
    hv_triple.linear_num_value_heads = 6;
    hv_triple.linear_key_head_dim = 16;
    hv_triple.linear_value_head_dim = 24;
    hv_triple.linear_conv_kernel_dim = 3;
    hv_triple.num_attention_heads = 6;
    hv_triple.num_key_value_heads = 3;
    hv_triple.head_dim = 16;
    hv_triple.full_attention_interval = 2;
    hv_triple.num_hidden_layers = 5;

    let mut pattern = small_vocab(ModelShape::tiny());
    pattern.layer_types = Some(vec![
        LayerType::Full,
        LayerType::Linear,
        LayerType::Linear,
        LayerType::Full,
        LayerType::Full,
    ]);
    pattern.num_hidden_layers = 5;
    pattern.tie_word_embeddings = false;

    let mut moe = small_vocab(ModelShape::tiny());
    moe.hidden_size = 48;
    moe.linear_num_value_heads = 8;
    moe.moe = Some(MoeShape {
        num_experts: 5,
        num_experts_per_tok: 3,
        moe_intermediate_size: 40,
        shared_expert_intermediate_size: 24,
    });

    let mut moe_untied = moe.clone();
    moe_untied.tie_word_embeddings = false;
    moe_untied.num_hidden_layers = 3;
    moe_untied.full_attention_interval = 3;

    vec![
        ("dense-hv3", hv_triple),
        ("dense-pattern-untied", pattern),
        ("moe-tied", moe),
        ("moe-untied", moe_untied),
        ("small", small_vocab(ModelShape::small())),
    ]
}

#[test]
fn tensors_follow_the_layout_the_config_prescribes() {
    let tmp = tempfile::tempdir().unwrap();
    for (name, shape) in odd_shapes() {
        let dir = gen(&opts(shape.clone(), &tmp.path().join(name)));
        let cfg = common::read_json(&dir.join("config.json"));
        let types: Vec<&str> = cfg["text_config"]["layer_types"]
            .as_array()
            .unwrap()
            .iter()
            .map(|t| t.as_str().unwrap())
            .collect();
        let want: Vec<&str> = shape
            .layer_types()
            .iter()
            .map(|t| t.config_name())
            .collect();
        assert_eq!(types, want, "{name}: layer_types");
        assert_eq!(
            cfg["model_type"],
            if shape.is_moe() {
                "qwen3_5_moe"
            } else {
                "qwen3_5"
            },
            "{name}"
        );
        assert_eq!(
            common::all_tensors(&dir),
            common::expected_tensors(&cfg),
            "{name}: tensors differ from what config.json prescribes"
        );
    }
}

#[test]
fn files_parse_with_the_safetensors_crate_and_values_are_sane() {
    let tmp = tempfile::tempdir().unwrap();
    let mut shape = small_vocab(ModelShape::tiny_moe());
    shape.linear_num_value_heads = 6; // odd-sized bf16 tensors ahead of the f32 A_log
    shape.linear_num_key_heads = 3;
    let dir = gen(&opts(shape, &tmp.path().join("m")));
    let bytes = std::fs::read(dir.join("model.safetensors")).unwrap();
    let (_, meta) = SafeTensors::read_metadata(&bytes).unwrap();
    let fmt = meta
        .metadata()
        .as_ref()
        .and_then(|m| m.get("format").cloned());
    assert_eq!(fmt.as_deref(), Some("pt"));
    let st = SafeTensors::deserialize(&bytes).unwrap();
    let header_len = u64::from_le_bytes(bytes[..8].try_into().unwrap()) as usize;
    assert_eq!(header_len % 8, 0);
    let bf16 = |b: &[u8]| -> Vec<f32> {
        b.chunks_exact(2)
            .map(|c| f32::from_bits(u32::from(u16::from_le_bytes([c[0], c[1]])) << 16))
            .collect()
    };
    let mut a_logs = 0;
    for (name, view) in st.tensors() {
        let data = view.data();
        if name.ends_with("A_log") {
            a_logs += 1;
            assert_eq!(view.dtype(), Dtype::F32, "{name}");
            let offset = data.as_ptr() as usize - bytes.as_ptr() as usize;
            assert_eq!(
                (offset - 8 - header_len) % 4,
                0,
                "{name} is not 4-byte aligned"
            );
            for c in data.chunks_exact(4) {
                let x = f32::from_le_bytes(c.try_into().unwrap());
                assert!(
                    (0.01f32.ln() - 1e-4..=16f32.ln() + 1e-4).contains(&x),
                    "{name}: {x}"
                );
            }
            continue;
        }
        assert_eq!(view.dtype(), Dtype::BF16, "{name}");
        let xs = bf16(data);
        assert!(xs.iter().all(|x| x.is_finite()), "{name}");
        let mean = xs.iter().sum::<f32>() / xs.len() as f32;
        let spread = xs.iter().map(|x| (x - mean).abs()).fold(0f32, f32::max);
        assert!(spread > 0.0, "{name} is constant");
        if name.ends_with("linear_attn.norm.weight") {
            assert!(
                xs.iter().all(|x| (0.7..1.3).contains(x)),
                "{name}: gated norm near 1"
            );
        } else if name.contains("norm") {
            assert!(xs.iter().all(|x| x.abs() <= 0.25), "{name}: zero-centred");
        } else if name.ends_with("embed_tokens.weight") {
            let sd = (xs.iter().map(|x| x * x).sum::<f32>() / xs.len() as f32).sqrt();
            assert!((0.019..0.021).contains(&sd), "{name}: std {sd}");
        }
    }
    assert_eq!(a_logs, 6);
}

#[test]
fn same_seed_same_bytes_other_seed_other_bytes() {
    let tmp = tempfile::tempdir().unwrap();
    let shape = small_vocab(ModelShape::tiny_moe());
    let write = |name: &str, seed: u64| {
        let mut o = opts(shape.clone(), &tmp.path().join(name));
        o.seed = seed;
        std::fs::read(gen(&o).join("model.safetensors")).unwrap()
    };
    let a = write("a", 11);
    let b = write("b", 11);
    let c = write("c", 12);
    assert!(a == b, "same seed gave different bytes");
    assert_eq!(a.len(), c.len());
    let header_len = 8 + u64::from_le_bytes(a[..8].try_into().unwrap()) as usize;
    assert!(
        a[..header_len] == c[..header_len],
        "the header depends only on the shape"
    );
    let st_a = SafeTensors::deserialize(&a).unwrap();
    let st_c = SafeTensors::deserialize(&c).unwrap();
    for name in st_a.names() {
        let same = st_a.tensor(name).unwrap().data() == st_c.tensor(name).unwrap().data();
        assert!(!same, "{name} did not change with the seed");
    }
}

#[test]
fn sharding_writes_a_consistent_index_with_the_same_tensors() {
    let tmp = tempfile::tempdir().unwrap();
    let shape = small_vocab(ModelShape::tiny_moe());
    let whole = gen(&opts(shape.clone(), &tmp.path().join("whole")));
    let mut o = opts(shape, &tmp.path().join("sharded"));
    o.max_shard_bytes = 100_000;
    let sharded = gen(&o);

    assert!(!sharded.join("model.safetensors").exists());
    let index = common::read_json(&sharded.join("model.safetensors.index.json"));
    let map = index["weight_map"].as_object().unwrap();
    let files = common::weight_files(&sharded);
    let n = files.len();
    assert!(n > 3, "expected several shards, got {n}");
    for (i, f) in files.iter().enumerate() {
        let want = format!("model-{:05}-of-{:05}.safetensors", i + 1, n);
        assert_eq!(f.file_name().unwrap().to_string_lossy(), want);
    }
    let mut listed = std::collections::BTreeSet::new();
    let mut total = 0u64;
    for f in &files {
        let bytes = std::fs::read(f).unwrap();
        let st = SafeTensors::deserialize(&bytes).unwrap();
        let data: usize = st.tensors().iter().map(|(_, v)| v.data().len()).sum();
        let header_len = 8 + u64::from_le_bytes(bytes[..8].try_into().unwrap()) as usize;
        assert_eq!(bytes.len() - header_len, data);
        // a shard may exceed the limit only by holding a single tensor
        assert!(
            data <= 100_000 || st.len() == 1,
            "{}: {data} bytes",
            f.display()
        );
        total += data as u64;
        for name in st.names() {
            let fname = f.file_name().unwrap().to_string_lossy();
            assert_eq!(map[name], fname.as_ref(), "{name}");
            listed.insert(name.to_string());
        }
    }
    assert_eq!(listed.len(), map.len());
    assert_eq!(index["metadata"]["total_size"].as_u64().unwrap(), total);

    // the tensors' bytes do not depend on the sharding
    let whole_bytes = std::fs::read(whole.join("model.safetensors")).unwrap();
    let whole_st = SafeTensors::deserialize(&whole_bytes).unwrap();
    assert_eq!(whole_st.len(), map.len());
    for f in &files {
        let bytes = std::fs::read(f).unwrap();
        let st = SafeTensors::deserialize(&bytes).unwrap();
        for (name, view) in st.tensors() {
            let same = view.data() == whole_st.tensor(&name).unwrap().data();
            assert!(
                same,
                "{name} differs between the sharded and the single-file checkpoint"
            );
        }
    }
}

#[test]
fn output_folder_is_all_or_nothing() {
    let tmp = tempfile::tempdir().unwrap();
    let out = tmp.path().join("model");
    let shape = small_vocab(ModelShape::tiny());
    gen(&opts(shape.clone(), &out));
    let before = std::fs::read(out.join("model.safetensors")).unwrap();

    // existing output without force: refused, untouched
    let mut o = opts(shape.clone(), &out);
    o.seed = 99;
    assert!(matches!(generate(&o), Err(Error::OutputExists { .. })));
    assert!(std::fs::read(out.join("model.safetensors")).unwrap() == before);

    // a failure part-way (tokenizer folder without the files) leaves the old folder and no debris
    o.force = true;
    let empty = tmp.path().join("no-tokenizer-here");
    std::fs::create_dir(&empty).unwrap();
    o.tokenizer = TokenizerSource::CopyFrom(empty.clone());
    let err = generate(&o).unwrap_err().to_string();
    assert!(err.contains("tokenizer.json"), "{err}");
    assert!(std::fs::read(out.join("model.safetensors")).unwrap() == before);
    let fresh = tmp.path().join("fresh");
    let mut f = opts(shape.clone(), &fresh);
    f.tokenizer = TokenizerSource::CopyFrom(empty);
    assert!(generate(&f).is_err());
    assert!(
        !fresh.exists(),
        "a failed generation left its output behind"
    );

    // force replaces a model folder
    o.tokenizer = TokenizerSource::Skip;
    gen(&o);
    assert!(std::fs::read(out.join("model.safetensors")).unwrap() != before);

    // but not a folder that is not a model folder
    let precious = tmp.path().join("precious");
    std::fs::create_dir(&precious).unwrap();
    std::fs::write(precious.join("notes.txt"), "keep me").unwrap();
    let mut p = opts(shape, &precious);
    p.force = true;
    assert!(matches!(generate(&p), Err(Error::WontReplace { .. })));
    assert!(precious.join("notes.txt").exists());

    let left: Vec<_> = std::fs::read_dir(tmp.path())
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|n| n.starts_with('.'))
        .collect();
    assert!(left.is_empty(), "scratch folders left behind: {left:?}");
}

#[test]
fn tokenizer_files_are_copied_from_a_folder() {
    let Some(fx) = common::fixtures() else { return };
    let tmp = tempfile::tempdir().unwrap();
    let mut o = opts(small_vocab(ModelShape::tiny()), &tmp.path().join("m"));
    // tiny-dense/tokenizer.json is a symbolic link (or, where git could not make one, a text
    // file naming its target); the copy must hold the file itself
    o.tokenizer = TokenizerSource::CopyFrom(fx.join("tiny-dense"));
    let dir = gen(&o);
    for f in mlx_node_model_gen::TOKENIZER_FILES {
        let meta = std::fs::symlink_metadata(dir.join(f)).unwrap();
        assert!(meta.file_type().is_file(), "{f} is not a regular file");
        let same = std::fs::read(dir.join(f)).unwrap()
            == std::fs::read(fx.join("tokenizer").join(f)).unwrap();
        assert!(same, "{f} differs from the fixture's");
    }
}

#[test]
fn bad_shapes_are_refused_before_anything_is_written() {
    let tmp = tempfile::tempdir().unwrap();
    let mut shape = ModelShape::tiny();
    shape.num_key_value_heads = 3;
    let out = tmp.path().join("m");
    let err = generate(&opts(shape, &out)).unwrap_err().to_string();
    assert!(err.contains("num_key_value_heads"), "{err}");
    assert!(!out.exists());
    assert_eq!(std::fs::read_dir(tmp.path()).unwrap().count(), 0);
}
