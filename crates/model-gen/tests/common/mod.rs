//! Helpers shared by the integration tests: locating the fixtures, the download cache, and an
//! independent reading of safetensors headers and of the tensor list a config prescribes.
#![allow(dead_code)]

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use serde_json::Value;

/// `/work/shared/fixtures/qwen3_5` in this checkout layout: `shared/` sits beside the repo root.
pub fn fixtures_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../../shared/fixtures/qwen3_5")
}

/// The fixtures folder, or `None` when it is absent and `MLX_NODE_NO_FIXTURES=1` allows that.
/// Absent fixtures without the variable fail the test: a silently skipped check is no check.
pub fn fixtures() -> Option<PathBuf> {
    let dir = fixtures_dir();
    if dir.join("tokenizer/tokenizer.json").is_file() {
        return Some(dir);
    }
    if std::env::var("MLX_NODE_NO_FIXTURES").as_deref() == Ok("1") {
        eprintln!(
            "note: {} is absent and MLX_NODE_NO_FIXTURES=1: skipped",
            dir.display()
        );
        return None;
    }
    panic!(
        "the Qwen3.5 fixtures are missing at {} (set MLX_NODE_NO_FIXTURES=1 to skip the tests \
         that need them)",
        dir.display()
    );
}

/// Where the tests keep the PyPI downloads between runs (`MLX_NODE_MODEL_GEN_CACHE` overrides).
pub fn cache_dir() -> PathBuf {
    std::env::var_os("MLX_NODE_MODEL_GEN_CACHE")
        .map(PathBuf::from)
        .unwrap_or_else(|| std::env::temp_dir().join("mlx-node-model-gen-cache"))
}

/// name -> (dtype, shape) from one safetensors file's header, read by hand (not through the
/// crate under test, nor through the `safetensors` crate, to keep the check independent).
pub fn header(path: &Path) -> (BTreeMap<String, (String, Vec<usize>)>, Value) {
    use std::io::Read;
    let mut f = std::fs::File::open(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    let mut len = [0u8; 8];
    f.read_exact(&mut len).unwrap();
    let mut buf = vec![0u8; u64::from_le_bytes(len) as usize];
    f.read_exact(&mut buf).unwrap();
    let v: Value = serde_json::from_slice(&buf).unwrap();
    let mut out = BTreeMap::new();
    for (k, info) in v.as_object().unwrap() {
        if k == "__metadata__" {
            continue;
        }
        let shape = info["shape"]
            .as_array()
            .unwrap()
            .iter()
            .map(|d| d.as_u64().unwrap() as usize)
            .collect();
        out.insert(
            k.clone(),
            (info["dtype"].as_str().unwrap().to_string(), shape),
        );
    }
    (out, v["__metadata__"].clone())
}

/// The weight files of a model folder: the index's shards, or `model.safetensors`.
pub fn weight_files(dir: &Path) -> Vec<PathBuf> {
    let index = dir.join("model.safetensors.index.json");
    if index.is_file() {
        let v: Value = serde_json::from_str(&std::fs::read_to_string(&index).unwrap()).unwrap();
        let mut files: Vec<String> = v["weight_map"]
            .as_object()
            .unwrap()
            .values()
            .map(|f| f.as_str().unwrap().to_string())
            .collect();
        files.sort();
        files.dedup();
        files.into_iter().map(|f| dir.join(f)).collect()
    } else {
        vec![dir.join("model.safetensors")]
    }
}

/// Every tensor of a model folder, over all its files.
pub fn all_tensors(dir: &Path) -> BTreeMap<String, (String, Vec<usize>)> {
    let mut all = BTreeMap::new();
    for f in weight_files(dir) {
        for (k, v) in header(&f).0 {
            assert!(all.insert(k.clone(), v).is_none(), "{k} stored twice");
        }
    }
    all
}

pub fn read_json(path: &Path) -> Value {
    let text = std::fs::read_to_string(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    serde_json::from_str(&text).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

/// The text tensors a `config.json` prescribes, written out from the layout description
/// (docs/qwen35.md §3.1) rather than from the generator's own tables.
pub fn expected_tensors(config: &Value) -> BTreeMap<String, (String, Vec<usize>)> {
    let t = &config["text_config"];
    let u = |k: &str| {
        t[k].as_u64()
            .unwrap_or_else(|| panic!("text_config.{k} missing")) as usize
    };
    let (v, h) = (u("vocab_size"), u("hidden_size"));
    let bf = |s: &[usize]| ("BF16".to_string(), s.to_vec());
    let mut m = BTreeMap::new();
    let p = "model.language_model.";
    m.insert(format!("{p}embed_tokens.weight"), bf(&[v, h]));
    m.insert(format!("{p}norm.weight"), bf(&[h]));
    if !config["tie_word_embeddings"].as_bool().unwrap() {
        m.insert("lm_head.weight".into(), bf(&[v, h]));
    }
    let types = t["layer_types"].as_array().unwrap();
    assert_eq!(types.len(), u("num_hidden_layers"));
    let moe = t.get("num_experts").is_some();
    for (n, ty) in types.iter().enumerate() {
        let l = format!("{p}layers.{n}.");
        m.insert(format!("{l}input_layernorm.weight"), bf(&[h]));
        m.insert(format!("{l}post_attention_layernorm.weight"), bf(&[h]));
        match ty.as_str().unwrap() {
            "full_attention" => {
                let (nh, nkv, hd) = (
                    u("num_attention_heads"),
                    u("num_key_value_heads"),
                    u("head_dim"),
                );
                m.insert(format!("{l}self_attn.q_proj.weight"), bf(&[2 * nh * hd, h]));
                m.insert(format!("{l}self_attn.k_proj.weight"), bf(&[nkv * hd, h]));
                m.insert(format!("{l}self_attn.v_proj.weight"), bf(&[nkv * hd, h]));
                m.insert(format!("{l}self_attn.o_proj.weight"), bf(&[h, nh * hd]));
                m.insert(format!("{l}self_attn.q_norm.weight"), bf(&[hd]));
                m.insert(format!("{l}self_attn.k_norm.weight"), bf(&[hd]));
            }
            "linear_attention" => {
                let (hk, hv) = (u("linear_num_key_heads"), u("linear_num_value_heads"));
                let (dk, dv) = (u("linear_key_head_dim"), u("linear_value_head_dim"));
                let conv = 2 * hk * dk + hv * dv;
                let a = format!("{l}linear_attn.");
                m.insert(format!("{a}in_proj_qkv.weight"), bf(&[conv, h]));
                m.insert(format!("{a}in_proj_z.weight"), bf(&[hv * dv, h]));
                m.insert(format!("{a}in_proj_b.weight"), bf(&[hv, h]));
                m.insert(format!("{a}in_proj_a.weight"), bf(&[hv, h]));
                m.insert(
                    format!("{a}conv1d.weight"),
                    bf(&[conv, 1, u("linear_conv_kernel_dim")]),
                );
                m.insert(format!("{a}dt_bias"), bf(&[hv]));
                m.insert(format!("{a}A_log"), ("F32".to_string(), vec![hv]));
                m.insert(format!("{a}norm.weight"), bf(&[dv]));
                m.insert(format!("{a}out_proj.weight"), bf(&[h, hv * dv]));
            }
            other => panic!("layer type {other}"),
        }
        let mlp = format!("{l}mlp.");
        if moe {
            let (e, ie, is) = (
                u("num_experts"),
                u("moe_intermediate_size"),
                u("shared_expert_intermediate_size"),
            );
            m.insert(format!("{mlp}gate.weight"), bf(&[e, h]));
            m.insert(format!("{mlp}experts.gate_up_proj"), bf(&[e, 2 * ie, h]));
            m.insert(format!("{mlp}experts.down_proj"), bf(&[e, h, ie]));
            m.insert(format!("{mlp}shared_expert.gate_proj.weight"), bf(&[is, h]));
            m.insert(format!("{mlp}shared_expert.up_proj.weight"), bf(&[is, h]));
            m.insert(format!("{mlp}shared_expert.down_proj.weight"), bf(&[h, is]));
            m.insert(format!("{mlp}shared_expert_gate.weight"), bf(&[1, h]));
        } else {
            let i = u("intermediate_size");
            m.insert(format!("{mlp}gate_proj.weight"), bf(&[i, h]));
            m.insert(format!("{mlp}up_proj.weight"), bf(&[i, h]));
            m.insert(format!("{mlp}down_proj.weight"), bf(&[h, i]));
        }
    }
    m
}
