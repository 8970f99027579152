//! Loading reads each weight straight into its final buffer: the resident memory a load adds
//! peaks within 1.3× the bytes of the weights as the engine holds them (float32 here, so
//! twice the bf16 files). Each model loads in a fresh child process (this test binary run
//! again), so that the high-water mark is the load's alone.

mod common;

use std::process::Command;

use mlx_node_core::Qwen35;
use mlx_rs::Dtype;

const CHILD: &str = "MLX_NODE_LOAD_MEMORY_CHILD";

/// (current resident set, high-water mark) in bytes, from /proc/self/status.
#[cfg(target_os = "linux")]
fn rss() -> (usize, usize) {
    let status = std::fs::read_to_string("/proc/self/status").unwrap();
    let field = |name: &str| -> usize {
        let line = status.lines().find(|l| l.starts_with(name)).unwrap();
        line.split_whitespace()
            .nth(1)
            .unwrap()
            .parse::<usize>()
            .unwrap()
            * 1024
    };
    (field("VmRSS:"), field("VmHWM:"))
}

#[cfg(target_os = "linux")]
#[test]
fn loading_peaks_within_1_3x_of_the_weights() {
    if let Ok(dir) = std::env::var(CHILD) {
        // Warm MLX up first, so that its own start-up allocations are in the baseline.
        let warm = mlx_rs::Array::from_slice(&[1.0f32, 2.0], &[2])
            .multiply(mlx_rs::Array::from_f32(2.0))
            .unwrap();
        warm.eval().unwrap();
        let (baseline, _) = rss();
        let model = Qwen35::load(std::path::Path::new(&dir), Dtype::Float32).unwrap();
        let (_, peak) = rss();
        println!("RESULT {baseline} {peak} {}", model.weight_bytes);
        return;
    }
    let Some(root) = common::fixtures() else {
        return;
    };
    for name in ["tiny-dense", "tiny-moe", "tiny-moe-mlx-q4"] {
        let out = Command::new(std::env::current_exe().unwrap())
            .args([
                "--exact",
                "loading_peaks_within_1_3x_of_the_weights",
                "--nocapture",
            ])
            .env(CHILD, root.join(name))
            .output()
            .unwrap();
        let stdout = String::from_utf8_lossy(&out.stdout);
        assert!(
            out.status.success(),
            "{name}: {stdout}{}",
            String::from_utf8_lossy(&out.stderr)
        );
        let line = stdout
            .lines()
            .find(|l| l.starts_with("RESULT "))
            .expect("the child reports");
        let v: Vec<usize> = line
            .split_whitespace()
            .skip(1)
            .map(|x| x.parse().unwrap())
            .collect();
        let (baseline, peak, weights) = (v[0], v[1], v[2]);
        let added = peak.saturating_sub(baseline);
        let ratio = added as f64 / weights as f64;
        eprintln!("{name}: weights {weights} B, load added {added} B at peak: {ratio:.3}×");
        assert!(weights > 0);
        assert!(
            ratio <= 1.3,
            "{name}: loading peaked at {ratio:.3}× the weights"
        );
    }
}
