//! The `mlx-model-gen` binary: help, error messages and exit codes, and one real run.

mod common;

use std::process::{Command, Output};

fn run(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_mlx-model-gen"))
        .args(args)
        .output()
        .expect("the binary runs")
}

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

#[test]
fn help_lists_the_options_and_fields() {
    let o = run(&["--help"]);
    assert!(o.status.success());
    let text = String::from_utf8_lossy(&o.stdout);
    for needle in [
        "--out DIR",
        "--preset",
        "--tokenizer-from",
        "--cache",
        "--force",
        "linear_num_value_heads",
    ] {
        assert!(text.contains(needle), "help lacks {needle}");
    }
}

#[test]
fn usage_errors_are_clear() {
    let cases: &[(&[&str], &str)] = &[
        (&[], "--out DIR is required"),
        (&["--out"], "--out needs a value"),
        (&["--out", "x", "--seed"], "--seed needs a value"),
        (
            &["--out", "x", "--preset", "huge"],
            "invalid value `huge` for `--preset`",
        ),
        (&["--out", "x", "--layers", "many"], "`--layers`"),
        (
            &["--out", "x", "--frobnicate"],
            "unknown option --frobnicate",
        ),
        (
            &["--out", "x", "--set", "colour=blue"],
            "unknown field `colour`",
        ),
        (
            &["--out", "x", "--preset", "tiny", "--kv-heads", "3"],
            "num_key_value_heads",
        ),
    ];
    for (args, want) in cases {
        let o = run(args);
        assert!(!o.status.success(), "{args:?} succeeded");
        let err = stderr(&o);
        assert!(err.contains(want), "{args:?}: {err}");
        assert!(err.starts_with("mlx-model-gen: error: "), "{args:?}: {err}");
    }
}

#[test]
fn generates_and_refuses_to_overwrite_without_force() {
    let tmp = tempfile::tempdir().unwrap();
    let out = tmp.path().join("m");
    let out_s = out.to_str().unwrap();
    let base = [
        "--out",
        out_s,
        "--preset",
        "tiny",
        "--vocab",
        "512",
        "--layers",
        "2",
        "--full-attention-interval",
        "2",
        "--no-tokenizer",
        "--seed",
        "5",
    ];
    let o = run(&base);
    assert!(o.status.success(), "{}", stderr(&o));
    assert!(String::from_utf8_lossy(&o.stdout).contains("wrote"));
    let cfg = common::read_json(&out.join("config.json"));
    assert_eq!(cfg["text_config"]["vocab_size"], 512);
    assert_eq!(
        cfg["text_config"]["layer_types"],
        serde_json::json!(["linear_attention", "full_attention"])
    );
    assert_eq!(common::all_tensors(&out), common::expected_tensors(&cfg));

    let again = run(&base);
    assert!(!again.status.success());
    let err = stderr(&again);
    assert!(
        err.contains("already exists") && err.contains("--force"),
        "{err}"
    );

    let mut forced = base.to_vec();
    forced.push("--force");
    assert!(run(&forced).status.success());
}
