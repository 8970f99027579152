//! Shared helpers of the fixture tests.
#![allow(dead_code)]

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use mlx_node_imatrix::{Imatrix, ModelShape};

/// `fixtures/qwen3_5`, or `None` (with a note) when it is absent and `MLX_NODE_NO_FIXTURES=1`.
/// Absent without that variable is a test failure.
pub fn fixtures() -> Option<PathBuf> {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../../shared/fixtures/qwen3_5");
    if dir.join("reference/tiny-dense.imatrix.gguf").is_file() {
        return Some(dir);
    }
    if std::env::var("MLX_NODE_NO_FIXTURES").as_deref() == Ok("1") {
        eprintln!(
            "note: fixtures not found at {}; skipped because MLX_NODE_NO_FIXTURES=1",
            dir.display()
        );
        return None;
    }
    panic!(
        "fixtures not found at {} (expected reference/tiny-dense.imatrix.gguf); \
         set MLX_NODE_NO_FIXTURES=1 to skip the fixture tests",
        dir.display()
    );
}

/// Evaluates to the fixture directory or returns from the test.
#[macro_export]
macro_rules! fixtures_or_return {
    () => {
        match common::fixtures() {
            Some(dir) => dir,
            None => return,
        }
    };
}

pub fn reference(dir: &Path, file: &str) -> PathBuf {
    dir.join("reference").join(file)
}

pub fn read(dir: &Path, file: &str) -> Imatrix {
    let path = reference(dir, file);
    Imatrix::read(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

pub fn config(dir: &Path, model: &str) -> serde_json::Value {
    let path = dir.join(model).join("config.json");
    let bytes = std::fs::read(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    serde_json::from_slice(&bytes).unwrap()
}

pub fn shape(dir: &Path, model: &str) -> ModelShape {
    ModelShape::from_config_file(dir.join(model).join("config.json")).unwrap()
}

/// Tensor name → shape of every safetensors file of `model` (read from the JSON headers: 8-byte
/// little-endian length, then JSON).
pub fn safetensors_shapes(dir: &Path, model: &str) -> BTreeMap<String, Vec<usize>> {
    let mut out = BTreeMap::new();
    let files: Vec<PathBuf> = std::fs::read_dir(dir.join(model))
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|x| x == "safetensors"))
        .collect();
    assert!(!files.is_empty(), "no safetensors in {model}");
    for f in files {
        let bytes = std::fs::read(&f).unwrap();
        let n = u64::from_le_bytes(bytes[..8].try_into().unwrap()) as usize;
        let header: serde_json::Value = serde_json::from_slice(&bytes[8..8 + n]).unwrap();
        for (k, v) in header.as_object().unwrap() {
            if k == "__metadata__" {
                continue;
            }
            let shape = v["shape"]
                .as_array()
                .unwrap()
                .iter()
                .map(|d| d.as_u64().unwrap() as usize)
                .collect();
            out.insert(k.clone(), shape);
        }
    }
    out
}
