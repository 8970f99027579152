//! `mlx convert` against mlx-lm's own conversions of the fixtures, and its refusals.
//!
//! * uniform 4-bit and `mixed_3_6` give, tensor for tensor, the bytes mlx-lm 0.32.2 wrote;
//! * the output loads in our engine with the logits of mlx-lm's folder;
//! * sharded output loads the same;
//! * bad options, existing outputs, quantized inputs and a full disk are refused with codes,
//!   and no partial folder stays behind.

mod common;

use std::collections::BTreeMap;
use std::path::Path;

use common::*;
use mlx_node_convert::{convert, ConvertOptions};
use mlx_node_core::safetensors::SafetensorsFile;
use mlx_node_core::ErrorCode;

fn options(input: &Path, output: &Path) -> ConvertOptions {
    ConvertOptions {
        input: input.to_path_buf(),
        output: output.to_path_buf(),
        ..Default::default()
    }
}

fn tensors(dir: &Path) -> BTreeMap<String, (String, Vec<usize>, Vec<u8>)> {
    let mut out = BTreeMap::new();
    for path in mlx_node_core::safetensors::model_files(dir).unwrap() {
        let file = SafetensorsFile::open(&path).unwrap();
        let bytes = std::fs::read(&path).unwrap();
        let mut infos: Vec<_> = file.tensors.iter().collect();
        infos.sort_by_key(|(_, i)| i.offset);
        for (k, (name, info)) in infos.iter().enumerate() {
            let end = infos
                .get(k + 1)
                .map(|(_, n)| n.offset as usize)
                .unwrap_or(bytes.len());
            let data = bytes[info.offset as usize..end].to_vec();
            out.insert(
                name.to_string(),
                (format!("{:?}", info.dtype), info.shape.clone(), data),
            );
        }
    }
    out
}

/// Our conversion equals mlx-lm's, tensor for tensor and byte for byte.
fn same_as_mlx_lm(ours: &Path, theirs: &Path) {
    let a = tensors(ours);
    let b = tensors(theirs);
    assert_eq!(
        a.keys().collect::<Vec<_>>(),
        b.keys().collect::<Vec<_>>(),
        "tensor names"
    );
    let mut differing = Vec::new();
    for (name, (dt, shape, data)) in &a {
        let (dt2, shape2, data2) = &b[name];
        assert_eq!((dt, shape), (dt2, shape2), "{name}");
        if data != data2 {
            differing.push(name.clone());
        }
    }
    assert!(
        differing.is_empty(),
        "bytes differ from mlx-lm's in {differing:?}"
    );
}

#[test]
fn uniform_4_bit_is_what_mlx_lm_writes() {
    let Some(root) = fixtures() else { return };
    for model in ["tiny-dense", "tiny-moe"] {
        let dir = scratch(&format!("q4-{model}"));
        let out = dir.join("q4");
        let mut o = options(&root.join(model), &out);
        o.quantize = true;
        let mut seen = 0;
        let summary = convert(&o, &mut |_| seen += 1).unwrap();
        assert!(seen > 0, "progress reported");
        let reference = root.join(format!("{model}-mlx-q4"));
        same_as_mlx_lm(&out, &reference);
        // mlx-lm's index counts the parameters the same way.
        let index = |d: &Path| -> serde_json::Value {
            serde_json::from_str(
                &std::fs::read_to_string(d.join("model.safetensors.index.json")).unwrap(),
            )
            .unwrap()
        };
        assert_eq!(
            index(&out)["metadata"],
            index(&reference)["metadata"],
            "{model}"
        );
        assert!(summary.bits_per_weight > 4.4 && summary.bits_per_weight < 4.6);
        let tokens = probe_tokens(12);
        let d = max_abs_diff(&logits(&out, &tokens), &logits(&reference, &tokens));
        assert_eq!(d, 0.0, "{model}: logits of our folder vs mlx-lm's");
        no_partial_left(&dir);
        std::fs::remove_dir_all(&dir).unwrap();
    }
}

#[test]
fn mixed_3_6_is_what_mlx_lm_writes() {
    let Some(root) = fixtures() else { return };
    let dir = scratch("mixed36");
    let out = dir.join("m36");
    let mut o = options(&root.join("tiny-dense"), &out);
    o.quantize = true;
    o.recipe = Some("mixed_3_6".into());
    convert(&o, &mut |_| {}).unwrap();
    same_as_mlx_lm(&out, &root.join("tiny-dense-mlx-mixed36"));
    // Every module whose bits differ from the top level has an entry, and mlx-lm's entries
    // agree with ours on the bits.
    let config = |d: &Path| -> serde_json::Value {
        serde_json::from_str(&std::fs::read_to_string(d.join("config.json")).unwrap()).unwrap()
    };
    let ours = config(&out);
    let theirs = config(&root.join("tiny-dense-mlx-mixed36"));
    for (k, v) in theirs["quantization"].as_object().unwrap() {
        if let Some(bits) = v.get("bits") {
            let top = ours["quantization"]["bits"].clone();
            let mine = ours["quantization"]
                .get(k)
                .map(|e| e["bits"].clone())
                .unwrap_or(top);
            assert_eq!(&mine, bits, "{k}");
        }
    }
    assert_eq!(ours["quantization"], ours["quantization_config"]);
    assert!(ours.get("vision_config").is_none());
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn shards_load_like_one_file() {
    let Some(root) = fixtures() else { return };
    let dir = scratch("shards");
    let one = dir.join("one");
    let many = dir.join("many");
    let mut o = options(&root.join("tiny-moe"), &one);
    o.quantize = true;
    o.recipe = Some("unsloth".into());
    convert(&o, &mut |_| {}).unwrap();
    o.output = many.clone();
    o.max_shard_bytes = Some(4 << 20);
    let summary = convert(&o, &mut |_| {}).unwrap();
    assert!(summary.files.len() > 2, "{:?}", summary.files);
    let index: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(many.join("model.safetensors.index.json")).unwrap(),
    )
    .unwrap();
    for (_, file) in index["weight_map"].as_object().unwrap() {
        assert!(many.join(file.as_str().unwrap()).is_file());
    }
    let tokens = probe_tokens(9);
    assert_eq!(
        max_abs_diff(&logits(&one, &tokens), &logits(&many, &tokens)),
        0.0
    );
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn unsloth_recipe_writes_the_ladder_and_the_card() {
    let Some(root) = fixtures() else { return };
    let dir = scratch("unsloth");
    let out = dir.join("Qwen3.5-tiny-UD-Q3_K_XL-mlx");
    let mut o = options(&root.join("tiny-moe"), &out);
    o.quantize = true;
    o.recipe = Some("unsloth".into());
    let summary = convert(&o, &mut |_| {}).unwrap();
    assert_eq!(summary.warnings.len(), 1, "no imatrix → a warning");
    let file = SafetensorsFile::open(&out.join("model.safetensors")).unwrap();
    let bits = |module: &str| -> Option<usize> {
        let w = &file.tensors.get(&format!("{module}.weight"))?;
        let s = file.tensors.get(&format!("{module}.scales"))?;
        let cols = s.shape.last()? * 64;
        Some(w.shape.last()? * 32 / cols)
    };
    let l = |i: usize, m: &str| format!("language_model.model.layers.{i}.{m}");
    assert_eq!(bits("language_model.model.embed_tokens"), Some(5));
    assert_eq!(bits("language_model.lm_head"), Some(6));
    assert_eq!(bits(&l(3, "self_attn.q_proj")), Some(5));
    assert_eq!(bits(&l(0, "linear_attn.in_proj_qkv")), Some(5));
    assert_eq!(bits(&l(0, "linear_attn.out_proj")), None, "kept");
    assert_eq!(bits(&l(0, "linear_attn.in_proj_a")), None, "kept");
    assert_eq!(bits(&l(3, "self_attn.o_proj")), None, "kept");
    assert_eq!(bits(&l(0, "mlp.switch_mlp.gate_proj")), Some(3));
    assert_eq!(bits(&l(0, "mlp.switch_mlp.down_proj")), Some(4));
    assert_eq!(bits(&l(0, "mlp.shared_expert.down_proj")), Some(4));
    assert_eq!(bits(&l(0, "mlp.gate")), Some(8));
    assert_eq!(bits(&l(0, "mlp.shared_expert_gate")), Some(8));
    assert_eq!(
        file.tensors[&l(0, "linear_attn.out_proj.weight")].dtype,
        mlx_node_core::safetensors::StDtype::BF16
    );
    let card = std::fs::read_to_string(out.join("README.md")).unwrap();
    for needle in [
        "unsloth (UD-Q3_K_XL)",
        "loadModel('./Qwen3.5-tiny-UD-Q3_K_XL-mlx')",
        "mlx convert -i",
        "without AWQ",
        "| `linear_attn.out_proj` | bfloat16 |",
    ] {
        assert!(card.contains(needle), "card lacks {needle:?}:\n{card}");
    }
    for f in [
        "tokenizer.json",
        "tokenizer_config.json",
        "chat_template.jinja",
        "generation_config.json",
    ] {
        assert!(out.join(f).is_file(), "{f} copied");
    }
    // It loads and runs in the engine.
    let l = logits(&out, &probe_tokens(5));
    assert!(l.iter().all(|v| v.is_finite()));
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn refusals_have_codes_and_leave_nothing_behind() {
    let Some(root) = fixtures() else { return };
    let dir = scratch("refusals");
    let input = root.join("tiny-dense");
    let out = dir.join("out");
    let run = |o: &ConvertOptions| convert(o, &mut |_| {}).unwrap_err();

    let mut o = options(&input, &out);
    o.quantize = true;
    o.bits = Some(7);
    let e = run(&o);
    assert_eq!(e.code, ErrorCode::InvalidArgument);
    assert!(e.message.contains("--q-bits"), "{}", e.message);

    let mut o = options(&input, &out);
    o.quantize = true;
    o.group_size = Some(48);
    assert!(run(&o).message.contains("--q-group-size"));

    let mut o = options(&input, &out);
    o.bits = Some(4);
    assert!(run(&o).message.contains("-q"), "bits without -q");

    let mut o = options(&input, &out);
    o.dtype = Some("int8".into());
    assert!(run(&o).message.contains("--dtype"));

    let o = options(&dir.join("nope"), &out);
    assert_eq!(run(&o).code, ErrorCode::Io);

    let e = run(&options(&root.join("tiny-dense-mlx-q4"), &out));
    assert_eq!(e.code, ErrorCode::AlreadyQuantized, "{}", e.message);

    let e = run(&options(&input, &input));
    assert_eq!(e.code, ErrorCode::OutputExists, "{}", e.message);

    std::fs::create_dir_all(&out).unwrap();
    std::fs::write(out.join("keep.txt"), "mine").unwrap();
    let e = run(&options(&input, &out));
    assert_eq!(e.code, ErrorCode::OutputExists);
    assert!(e.message.contains("--force"));
    assert!(out.join("keep.txt").is_file(), "untouched without --force");

    // An imatrix of another model is refused before anything is written.
    let mut o = options(&input, &dir.join("awq"));
    o.imatrix = Some(root.join("reference/tiny-moe.imatrix.gguf"));
    let e = run(&o);
    assert_eq!(e.code, ErrorCode::ImatrixMismatch, "{}", e.message);
    assert!(
        e.message.contains("blk."),
        "names the tensor: {}",
        e.message
    );
    assert!(!dir.join("awq").exists());

    let mut o = options(&input, &dir.join("awq"));
    o.imatrix = Some(dir.join("missing.gguf"));
    assert_eq!(run(&o).code, ErrorCode::Io);

    std::env::set_var("MLX_NODE_CONVERT_FREE_BYTES", "1000");
    let e = run(&options(&input, &dir.join("full")));
    std::env::remove_var("MLX_NODE_CONVERT_FREE_BYTES");
    assert_eq!(e.code, ErrorCode::NoSpace, "{}", e.message);
    assert!(!dir.join("full").exists());

    // Another architecture.
    let other = dir.join("llama");
    std::fs::create_dir_all(&other).unwrap();
    std::fs::write(
        other.join("config.json"),
        r#"{"model_type": "llama", "hidden_size": 64}"#,
    )
    .unwrap();
    let e = run(&options(&other, &dir.join("l")));
    assert_eq!(e.code, ErrorCode::UnsupportedModel, "{}", e.message);

    // --force replaces a model folder, never another folder.
    let mut o = options(&input, &out);
    o.force = true;
    let e = run(&o);
    assert_eq!(e.code, ErrorCode::OutputExists);
    assert!(out.join("keep.txt").is_file());
    std::fs::write(out.join("config.json"), "{}").unwrap();
    convert(&o, &mut |_| {}).unwrap();
    assert!(!out.join("keep.txt").exists());
    assert!(out.join("model.safetensors").is_file());
    no_partial_left(&dir);
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn dat_and_gguf_imatrix_scale_alike() {
    let Some(root) = fixtures() else { return };
    let dir = scratch("dat-gguf");
    let mut outs = Vec::new();
    for form in ["gguf", "dat"] {
        let out = dir.join(form);
        let o = ConvertOptions {
            input: root.join("tiny-dense"),
            output: out.clone(),
            imatrix: Some(root.join(format!("reference/tiny-dense.imatrix.{form}"))),
            awq_alpha: Some(0.5),
            dtype: Some("float32".into()),
            ..Default::default()
        };
        convert(&o, &mut |_| {}).unwrap();
        outs.push(out);
    }
    let a = tensors(&outs[0]);
    let b = tensors(&outs[1]);
    let mut worst = 0f32;
    for (name, (_, _, x)) in &a {
        let y = &b[name].2;
        for (p, q) in x.chunks(4).zip(y.chunks(4)) {
            let p = f32::from_le_bytes(p.try_into().unwrap());
            let q = f32::from_le_bytes(q.try_into().unwrap());
            worst = worst.max((p - q).abs() / (1e-6 + p.abs()));
        }
    }
    eprintln!("AWQ from the .dat vs the GGUF imatrix: max relative difference {worst:.2e}");
    assert!(worst < 1e-5, "{worst}");
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn the_input_license_is_copied_and_named_in_the_card() {
    let Some(root) = fixtures() else { return };
    let dir = scratch("license");
    let input = dir.join("Qwen3.5-tiny");
    std::fs::create_dir_all(&input).unwrap();
    for e in std::fs::read_dir(root.join("tiny-dense"))
        .unwrap()
        .flatten()
    {
        let to = input.join(e.file_name());
        if e.file_name() == "tokenizer.json" {
            std::fs::copy(
                mlx_node_core::tokenizer::tokenizer_file(&root.join("tiny-dense")).unwrap(),
                to,
            )
            .unwrap();
        } else {
            std::fs::copy(e.path(), to).unwrap();
        }
    }
    std::fs::write(input.join("LICENSE"), "Apache License 2.0 (test copy)\n").unwrap();
    std::fs::write(
        input.join("README.md"),
        "---\nlicense: apache-2.0\n---\n# tiny\n",
    )
    .unwrap();
    let out = dir.join("out");
    let mut o = options(&input, &out);
    o.quantize = true;
    o.bits = Some(3);
    o.recipe = Some("unsloth".into());
    o.command = Some("mlx convert -i Qwen3.5-tiny -o out -q --q-bits 3 --q-recipe unsloth".into());
    convert(&o, &mut |_| {}).unwrap();
    assert_eq!(
        std::fs::read_to_string(out.join("LICENSE")).unwrap(),
        "Apache License 2.0 (test copy)\n"
    );
    let card = std::fs::read_to_string(out.join("README.md")).unwrap();
    assert!(card.contains("license: apache-2.0"), "{card}");
    assert!(
        card.contains("`apache-2.0`, inherited from the base model (copied: LICENSE)"),
        "{card}"
    );
    assert!(card.contains("mlx convert -i Qwen3.5-tiny -o out -q --q-bits 3 --q-recipe unsloth\n"));
    std::fs::remove_dir_all(&dir).unwrap();
}
