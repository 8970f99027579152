//! Shared by the convert tests: the fixtures, scratch folders, and the engine's logits.
#![allow(dead_code)]

use std::path::{Path, PathBuf};

use mlx_node_core::{Logits, Qwen35};
use mlx_rs::{Array, Dtype};

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

/// A fresh, empty scratch folder for one test.
pub fn scratch(test: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("mlx-node-convert-{}-{test}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

/// Token ids that touch many rows of the embedding.
pub fn probe_tokens(n: usize) -> Vec<i32> {
    (0..n).map(|i| ((i * 7919 + 13) % 248000) as i32).collect()
}

/// Float32 logits `[T, vocab]` of a model folder at every position of `tokens`.
pub fn logits(dir: &Path, tokens: &[i32]) -> Vec<f32> {
    let model = Qwen35::load(dir, Dtype::Float32).unwrap();
    let x = Array::from_slice(tokens, &[1, tokens.len() as i32]);
    let out = model
        .forward(&x, &mut model.new_cache(), Logits::All)
        .unwrap();
    let out = out.as_dtype(Dtype::Float32).unwrap();
    out.eval().unwrap();
    out.as_slice::<f32>().to_vec()
}

pub fn max_abs_diff(a: &[f32], b: &[f32]) -> f32 {
    assert_eq!(a.len(), b.len());
    a.iter()
        .zip(b)
        .map(|(x, y)| (x - y).abs())
        .fold(0.0, f32::max)
}

/// No `.<name>.partial-*` folder is left in `dir`.
pub fn no_partial_left(dir: &Path) {
    for e in std::fs::read_dir(dir).unwrap().flatten() {
        let n = e.file_name().to_string_lossy().to_string();
        assert!(!n.contains(".partial-"), "left behind: {n}");
    }
}
