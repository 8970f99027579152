//! Shared by the integration tests: where the fixtures are and how to read the references.
#![allow(dead_code)]

use std::collections::HashMap;
use std::path::{Path, PathBuf};

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
