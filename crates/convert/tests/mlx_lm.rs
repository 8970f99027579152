//! mlx-lm 0.32.2 loads what `mlx convert` writes and computes our logits: the unsloth recipe
//! with AWQ (mixed bits, float-kept modules, per-module overrides), dense and MoE, sharded.
//!
//! mlx-lm comes from PyPI into `.mlx/bench-venv` (the benchmark's venv), installed once, with
//! mlx 0.32.4: mlx-lm 0.32.2's quantized experts pass `gather_qmm` a `global_scale` argument
//! that mlx 0.32.2 does not have.

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;

use common::*;
use mlx_node_convert::{convert, ConvertOptions};
use mlx_rs::Array;

/// The engine's parity tolerance (crates/core/tests/parity.rs).
const TOLERANCE: f32 = 1e-3;

fn mlx_lm_python() -> PathBuf {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("../..");
    let venv = root.join(".mlx/bench-venv");
    let python = venv.join("bin/python");
    let ready = |p: &Path| {
        Command::new(p)
            .args(["-c", "import mlx_lm, mlx.core; assert mlx_lm.__version__ == '0.32.2' and mlx.core.__version__ == '0.32.4'"])
            .status()
            .is_ok_and(|s| s.success())
    };
    if !ready(&python) {
        eprintln!(
            "installing mlx-lm 0.32.2 into {} (once) ...",
            venv.display()
        );
        let ok = Command::new("python3")
            .arg("-m")
            .arg("venv")
            .arg(&venv)
            .status()
            .unwrap();
        assert!(
            ok.success(),
            "python3 -m venv failed (Debian: apt-get install python3-venv)"
        );
        let ok = Command::new(venv.join("bin/pip"))
            .args(["install", "-q", "mlx[cpu]==0.32.4", "mlx-lm==0.32.2"])
            .status()
            .unwrap();
        assert!(ok.success(), "pip install mlx-lm failed");
        assert!(ready(&python));
    }
    python
}

fn mlx_lm_logits(python: &Path, dir: &Path, tokens: &[i32]) -> Vec<f32> {
    let out = dir.with_extension("mlx-lm.safetensors");
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/mlx_lm_logits.py");
    let status = Command::new(python)
        .arg(script)
        .arg(dir)
        .arg(&out)
        .args(tokens.iter().map(|t| t.to_string()))
        .status()
        .unwrap();
    assert!(status.success(), "mlx-lm could not run {}", dir.display());
    let arrays = Array::load_safetensors(&out).unwrap();
    let logits = &arrays["logits"];
    logits.eval().unwrap();
    logits.as_slice::<f32>().to_vec()
}

#[test]
fn mlx_lm_loads_our_conversions_and_agrees_on_the_logits() {
    let Some(root) = fixtures() else { return };
    let python = mlx_lm_python();
    let dir = scratch("mlx-lm");
    let tokens = probe_tokens(16);
    for (model, shard) in [("tiny-dense", None), ("tiny-moe", Some(6 << 20))] {
        let out = dir.join(format!("{model}-UD-Q3_K_XL-mlx"));
        let o = ConvertOptions {
            input: root.join(model),
            output: out.clone(),
            quantize: true,
            recipe: Some("unsloth".into()),
            imatrix: Some(root.join(format!("reference/{model}.imatrix.gguf"))),
            max_shard_bytes: shard,
            ..Default::default()
        };
        let summary = convert(&o, &mut |_| {}).unwrap();
        let ours = logits(&out, &tokens);
        let theirs = mlx_lm_logits(&python, &out, &tokens);
        let d = max_abs_diff(&ours, &theirs);
        eprintln!(
            "{model} ({} files): mlx-lm vs ours, float32, {} positions: max|Δ| = {d:.2e}",
            summary.files.len(),
            tokens.len()
        );
        assert!(d <= TOLERANCE, "{model}: {d}");
    }
    std::fs::remove_dir_all(&dir).unwrap();
}
