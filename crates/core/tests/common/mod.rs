//! Shared by the integration tests: where the fixtures are and how to read the references.
#![allow(dead_code)]

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use mlx_node_model_gen::{LayerType, ModelShape, MoeShape};
use mlx_rs::Array;

/// `../shared/fixtures/qwen3_5` beside the repository. Missing fixtures fail the test, unless
/// `MLX_NODE_NO_FIXTURES=1` says this checkout has none (a user's clone), which skips it.
pub fn fixtures() -> Option<PathBuf> {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../../shared/fixtures/qwen3_5");
    if root.is_dir() {
        return Some(root);
    }
    if std::env::var("MLX_NODE_NO_FIXTURES").as_deref() == Ok("1") {
        eprintln!(
            "skipped: no fixtures at {} (MLX_NODE_NO_FIXTURES=1)",
            root.display()
        );
        return None;
    }
    panic!(
        "the fixtures are missing at {}; set MLX_NODE_NO_FIXTURES=1 to skip fixture tests",
        root.display()
    );
}

/// `reference/<model>.{json,safetensors}`: prompts and the arrays computed for them.
pub struct Reference {
    pub prompts: Vec<String>,
    arrays: HashMap<String, Array>,
}

impl Reference {
    pub fn load(root: &Path, model: &str) -> Self {
        let dir = root.join("reference");
        let json: serde_json::Value = serde_json::from_str(
            &std::fs::read_to_string(dir.join(format!("{model}.json"))).unwrap(),
        )
        .unwrap();
        let prompts = match &json["prompts"] {
            serde_json::Value::Object(m) => m.keys().cloned().collect(),
            serde_json::Value::Array(a) => a
                .iter()
                .map(|p| p["key"].as_str().or(p.as_str()).unwrap().to_owned())
                .collect(),
            other => panic!("unexpected prompts: {other}"),
        };
        let arrays = Array::load_safetensors(dir.join(format!("{model}.safetensors"))).unwrap();
        Reference { prompts, arrays }
    }

    pub fn try_ids(&self, key: &str) -> Option<Vec<u32>> {
        let a = self.arrays.get(key)?;
        a.eval().unwrap();
        Some(a.as_slice::<i64>().iter().map(|&i| i as u32).collect())
    }

    pub fn ids(&self, key: &str) -> Vec<u32> {
        self.try_ids(key)
            .unwrap_or_else(|| panic!("reference has no `{key}`"))
    }

    pub fn floats(&self, key: &str) -> Vec<f32> {
        let a = self
            .arrays
            .get(key)
            .unwrap_or_else(|| panic!("reference has no `{key}`"));
        a.eval().unwrap();
        a.as_slice::<f32>().to_vec()
    }
}

pub fn max_abs_diff(a: &[f32], b: &[f32]) -> f32 {
    assert_eq!(a.len(), b.len(), "lengths differ");
    a.iter()
        .zip(b)
        .map(|(x, y)| (x - y).abs())
        .fold(0.0, f32::max)
}

/// Checkpoint shapes no fixture has: GQA ratio 3, three value heads per key head, a conv kernel
/// of 3, half-rotary heads, full attention first, 5 experts with top-3 routing, untied and tied.
pub fn unusual_shapes() -> Vec<(&'static str, ModelShape)> {
    let dense = ModelShape {
        vocab_size: 300,
        hidden_size: 48,
        num_hidden_layers: 4,
        layer_types: Some(vec![
            LayerType::Full,
            LayerType::Linear,
            LayerType::Linear,
            LayerType::Full,
        ]),
        intermediate_size: 72,
        num_attention_heads: 6,
        num_key_value_heads: 2,
        head_dim: 16,
        linear_num_key_heads: 1,
        linear_num_value_heads: 3,
        linear_key_head_dim: 16,
        linear_value_head_dim: 8,
        linear_conv_kernel_dim: 3,
        partial_rotary_factor: 0.5,
        rope_theta: 10000.0,
        tie_word_embeddings: false,
        ..ModelShape::tiny()
    };
    let moe = ModelShape {
        moe: Some(MoeShape {
            num_experts: 5,
            num_experts_per_tok: 3,
            moe_intermediate_size: 24,
            shared_expert_intermediate_size: 20,
        }),
        num_attention_heads: 3,
        num_key_value_heads: 3,
        linear_num_key_heads: 2,
        linear_num_value_heads: 2,
        tie_word_embeddings: true,
        ..dense.clone()
    };
    vec![("dense", dense), ("moe", moe)]
}
