//! The `mlx` command line (`mlx convert`, `mlx imatrix`) and the JS options objects of
//! `convert()` / `imatrix()`, both parsed here so that flags and options mean the same thing
//! and fail with the same coded errors.

use std::io::{IsTerminal, Write};
use std::time::{Duration, Instant};

use mlx_node_core::error::{fail, Error, ErrorCode, Result};
use serde_json::Value;

use crate::calibrate::{calibrate, CalibrateOptions};
use crate::convert::{convert, ConvertOptions, ConvertProgress, ConvertSummary};

pub const USAGE: &str = "\
Usage:
  mlx convert -i <input> -o <output> [-q] [--q-bits N] [--q-group-size N] [--q-recipe NAME]
              [--imatrix-path FILE] [-d DTYPE] [--awq-alpha A] [--force]
  mlx imatrix -m <model> -f <text> -o <out.imatrix.gguf> [--chunk-size N]

mlx convert: a Hugging Face Qwen3.5 checkpoint to an MLX folder (loadModel and mlx-lm load it).
  -i, --input PATH         the checkpoint folder (Hugging Face, or an unquantized MLX folder)
  -o, --output PATH        the folder to write (refused if it exists, unless --force)
  -q, --quantize           quantize (affine); without it tensors are only cast to --dtype
      --q-bits N           bits: 2, 3, 4, 5, 6, 8 (uniform default 4; unsloth base default 3)
      --q-group-size N     32, 64 or 128 (default 64)
      --q-recipe NAME      unsloth, mixed_2_6, mixed_3_4, mixed_3_6, mixed_4_6 (default: uniform)
      --imatrix-path FILE  a llama.cpp imatrix (GGUF or legacy .dat): AWQ pre-scaling; without
                           -q the model is only pre-scaled and kept in full precision
      --awq-alpha A        a fixed AWQ strength for every group, 0..1 (default: searched per
                           group against the recipe's quantizer; 0.5 without -q)
  -d, --dtype DTYPE        bfloat16 (default), float16, float32: kept tensors and scales
      --force              replace an existing output folder
  -h, --help               this text

mlx imatrix: our own importance matrix, in llama.cpp's GGUF form.
  -m, --model PATH         the model folder to run
  -f, --file PATH          the calibration text
  -o, --output PATH        the .imatrix.gguf to write
      --chunk-size N       tokens per chunk, each from an empty cache (default 256)
";

/// What a command line asks for.
#[derive(Debug)]
pub enum Command {
    Convert(ConvertOptions),
    Imatrix(CalibrateOptions),
    Help,
}

fn usage_error(message: String) -> Error {
    Error::new(ErrorCode::InvalidArgument, message)
}

/// Parses `mlx <command> <flags…>` (without the program name).
pub fn parse(args: &[String]) -> Result<Command> {
    let Some((command, rest)) = args.split_first() else {
        return Ok(Command::Help);
    };
    // `--flag=value` is the same as `--flag value`.
    let mut flags = Vec::new();
    for a in rest {
        match a.split_once('=') {
            Some((f, v)) if f.starts_with("--") => {
                flags.push(f.to_string());
                flags.push(v.to_string());
            }
            _ => flags.push(a.clone()),
        }
    }
    let mut it = flags.into_iter();
    let value = |flag: &str, it: &mut std::vec::IntoIter<String>| -> Result<String> {
        it.next()
            .filter(|v| !v.starts_with('-') || v.parse::<f64>().is_ok())
            .ok_or_else(|| usage_error(format!("{flag} needs a value")))
    };
    let number = |flag: &str, v: String| -> Result<u32> {
        v.parse()
            .map_err(|_| usage_error(format!("{flag}: `{v}` is not a whole number")))
    };
    match command.as_str() {
        "-h" | "--help" | "help" => Ok(Command::Help),
        "convert" => {
            let mut o = ConvertOptions::default();
            while let Some(flag) = it.next() {
                match flag.as_str() {
                    "-i" | "--input" => o.input = value(&flag, &mut it)?.into(),
                    "-o" | "--output" => o.output = value(&flag, &mut it)?.into(),
                    "-q" | "--quantize" => o.quantize = true,
                    "--q-bits" => o.bits = Some(number(&flag, value(&flag, &mut it)?)?),
                    "--q-group-size" => o.group_size = Some(number(&flag, value(&flag, &mut it)?)?),
                    "--q-recipe" => o.recipe = Some(value(&flag, &mut it)?),
                    "--imatrix-path" => o.imatrix = Some(value(&flag, &mut it)?.into()),
                    "-d" | "--dtype" => o.dtype = Some(value(&flag, &mut it)?),
                    "--awq-alpha" => {
                        let v = value(&flag, &mut it)?;
                        o.awq_alpha = Some(v.parse().map_err(|_| {
                            usage_error(format!("--awq-alpha: `{v}` is not a number"))
                        })?);
                    }
                    "--force" => o.force = true,
                    "-h" | "--help" => return Ok(Command::Help),
                    other => {
                        return Err(usage_error(format!("mlx convert: unknown flag `{other}`")))
                    }
                }
            }
            if o.input.as_os_str().is_empty() {
                return Err(usage_error("mlx convert: -i/--input is required".into()));
            }
            if o.output.as_os_str().is_empty() {
                return Err(usage_error("mlx convert: -o/--output is required".into()));
            }
            o.command = Some(format!("mlx {}", args.join(" ")));
            Ok(Command::Convert(o))
        }
        "imatrix" => {
            let mut o = CalibrateOptions::new("", "", "");
            while let Some(flag) = it.next() {
                match flag.as_str() {
                    "-m" | "--model" => o.model = value(&flag, &mut it)?.into(),
                    "-f" | "--file" => o.text = value(&flag, &mut it)?.into(),
                    "-o" | "--output" | "--output-file" => o.output = value(&flag, &mut it)?.into(),
                    "--chunk-size" | "-c" => {
                        o.chunk_size = number(&flag, value(&flag, &mut it)?)? as usize
                    }
                    "-h" | "--help" => return Ok(Command::Help),
                    other => {
                        return Err(usage_error(format!("mlx imatrix: unknown flag `{other}`")))
                    }
                }
            }
            for (flag, p) in [
                ("-m/--model", &o.model),
                ("-f/--file", &o.text),
                ("-o/--output", &o.output),
            ] {
                if p.as_os_str().is_empty() {
                    return Err(usage_error(format!("mlx imatrix: {flag} is required")));
                }
            }
            Ok(Command::Imatrix(o))
        }
        other => Err(usage_error(format!(
            "unknown command `{other}` (expected convert or imatrix)"
        ))),
    }
}

/// Reads a `convert()` options object: the CLI's flags in camelCase.
pub fn convert_options(v: &Value) -> Result<ConvertOptions> {
    let map = object(v, "convert options")?;
    let mut o = ConvertOptions::default();
    for (key, value) in map {
        match key.as_str() {
            "input" => o.input = string(key, value)?.into(),
            "output" => o.output = string(key, value)?.into(),
            "quantize" => o.quantize = boolean(key, value)?,
            "bits" | "qBits" => o.bits = Some(whole(key, value)?),
            "groupSize" | "qGroupSize" => o.group_size = Some(whole(key, value)?),
            "recipe" | "qRecipe" => o.recipe = optional_string(key, value)?,
            "imatrixPath" => o.imatrix = optional_string(key, value)?.map(Into::into),
            "dtype" => o.dtype = optional_string(key, value)?,
            "awqAlpha" => o.awq_alpha = Some(float(key, value)? as f32),
            "force" => o.force = boolean(key, value)?,
            "maxShardBytes" => o.max_shard_bytes = Some(float(key, value)? as u64),
            other => {
                return fail(
                    ErrorCode::InvalidArgument,
                    format!("convert: unknown option `{other}`"),
                )
            }
        }
    }
    for (name, p) in [("input", &o.input), ("output", &o.output)] {
        if p.as_os_str().is_empty() {
            return fail(
                ErrorCode::InvalidArgument,
                format!("convert: `{name}` is required"),
            );
        }
    }
    Ok(o)
}

/// Reads an `imatrix()` options object: `{ model, file, output, chunkSize? }`.
pub fn imatrix_options(v: &Value) -> Result<CalibrateOptions> {
    let map = object(v, "imatrix options")?;
    let mut o = CalibrateOptions::new("", "", "");
    for (key, value) in map {
        match key.as_str() {
            "model" => o.model = string(key, value)?.into(),
            "file" | "text" => o.text = string(key, value)?.into(),
            "output" => o.output = string(key, value)?.into(),
            "chunkSize" => o.chunk_size = whole(key, value)? as usize,
            other => {
                return fail(
                    ErrorCode::InvalidArgument,
                    format!("imatrix: unknown option `{other}`"),
                )
            }
        }
    }
    for (name, p) in [
        ("model", &o.model),
        ("file", &o.text),
        ("output", &o.output),
    ] {
        if p.as_os_str().is_empty() {
            return fail(
                ErrorCode::InvalidArgument,
                format!("imatrix: `{name}` is required"),
            );
        }
    }
    Ok(o)
}

fn object<'a>(v: &'a Value, what: &str) -> Result<&'a serde_json::Map<String, Value>> {
    v.as_object()
        .ok_or_else(|| usage_error(format!("{what} must be an object, not {v}")))
}

fn string(key: &str, v: &Value) -> Result<String> {
    v.as_str()
        .map(str::to_string)
        .ok_or_else(|| usage_error(format!("option `{key}` must be a string, not {v}")))
}

fn optional_string(key: &str, v: &Value) -> Result<Option<String>> {
    if v.is_null() {
        return Ok(None);
    }
    string(key, v).map(Some)
}

fn boolean(key: &str, v: &Value) -> Result<bool> {
    v.as_bool()
        .ok_or_else(|| usage_error(format!("option `{key}` must be true or false, not {v}")))
}

fn float(key: &str, v: &Value) -> Result<f64> {
    v.as_f64()
        .ok_or_else(|| usage_error(format!("option `{key}` must be a number, not {v}")))
}

fn whole(key: &str, v: &Value) -> Result<u32> {
    v.as_u64()
        .and_then(|n| u32::try_from(n).ok())
        .ok_or_else(|| usage_error(format!("option `{key}` must be a whole number, not {v}")))
}

/// Draws progress on stderr: a bar with an ETA on a terminal, a plain line every ~5 % (and
/// at the end) otherwise.
pub struct ProgressPrinter {
    label: &'static str,
    terminal: bool,
    last_step: u64,
    last_draw: Instant,
}

impl ProgressPrinter {
    pub fn new(label: &'static str) -> Self {
        ProgressPrinter {
            label,
            terminal: std::io::stderr().is_terminal(),
            last_step: u64::MAX,
            last_draw: Instant::now() - Duration::from_secs(1),
        }
    }

    /// `done` of `total` units, `elapsed` so far, `what` was just finished.
    pub fn update(&mut self, done: u64, total: u64, elapsed: Duration, what: &str) {
        let fraction = if total == 0 {
            1.0
        } else {
            done as f64 / total as f64
        };
        let eta = if fraction > 0.0 {
            elapsed.as_secs_f64() * (1.0 - fraction) / fraction
        } else {
            0.0
        };
        let mut err = std::io::stderr();
        if self.terminal {
            if done < total && self.last_draw.elapsed() < Duration::from_millis(100) {
                return;
            }
            self.last_draw = Instant::now();
            let width = 30;
            let filled = (fraction * width as f64) as usize;
            let what: String = what
                .chars()
                .rev()
                .take(48)
                .collect::<Vec<_>>()
                .into_iter()
                .rev()
                .collect();
            let _ = write!(
                err,
                "\r\x1b[2K{} [{}{}] {:5.1}%  ETA {}  {}",
                self.label,
                "#".repeat(filled),
                "-".repeat(width - filled),
                fraction * 100.0,
                clock(eta),
                what
            );
            if done >= total {
                let _ = writeln!(err);
            }
        } else {
            let step = (fraction * 20.0) as u64;
            if step == self.last_step && done < total {
                return;
            }
            self.last_step = step;
            let _ = writeln!(
                err,
                "{}: {:5.1}% ({} s elapsed, ETA {})",
                self.label,
                fraction * 100.0,
                elapsed.as_secs(),
                clock(eta)
            );
        }
    }
}

fn clock(seconds: f64) -> String {
    let s = seconds.round() as u64;
    format!("{}:{:02}", s / 60, s % 60)
}

/// The summary table `mlx convert` prints: tensor class → precision, count, bytes; the total
/// size and bits per weight.
pub fn summary_table(s: &ConvertSummary) -> String {
    let mut out = String::new();
    let rows: Vec<[String; 5]> = s
        .rows
        .iter()
        .map(|r| {
            [
                r.class.clone(),
                r.precision.clone(),
                if r.awq { "AWQ".into() } else { String::new() },
                r.tensors.to_string(),
                mib(r.bytes),
            ]
        })
        .collect();
    let header = ["tensor class", "precision", "", "tensors", "size"];
    let mut widths = header.map(str::len);
    for r in &rows {
        for (w, c) in widths.iter_mut().zip(r) {
            *w = (*w).max(c.chars().count());
        }
    }
    let line = |cells: [&str; 5]| -> String {
        let mut l = String::new();
        for (i, (c, w)) in cells.iter().zip(widths).enumerate() {
            if i >= 3 {
                l.push_str(&format!("{c:>w$}  "));
            } else {
                l.push_str(&format!("{c:<w$}  "));
            }
        }
        l.trim_end().to_string() + "\n"
    };
    out.push_str(&line(header));
    for r in &rows {
        out.push_str(&line([&r[0], &r[1], &r[2], &r[3], &r[4]]));
    }
    out.push_str(&format!(
        "total {} ({:.1} % of the input's {}), {:.3} bits per weight, {} parameters, {:.1} s\n",
        mib(s.output_bytes),
        100.0 * s.output_bytes as f64 / s.input_bytes.max(1) as f64,
        mib(s.input_bytes),
        s.bits_per_weight,
        s.parameters,
        s.seconds
    ));
    out
}

fn mib(bytes: u64) -> String {
    format!("{:.1} MiB", bytes as f64 / (1 << 20) as f64)
}

/// Runs a command line; returns the process exit code (0 ok, 1 failed, 2 usage).
pub fn run(args: &[String]) -> i32 {
    let command = match parse(args) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("error: {}\n\n{USAGE}", e.message);
            return 2;
        }
    };
    let result = match command {
        Command::Help => {
            print!("{USAGE}");
            return 0;
        }
        Command::Convert(o) => {
            let mut bar = ProgressPrinter::new("convert");
            convert(&o, &mut |p: &ConvertProgress| {
                bar.update(p.bytes_done, p.bytes_total, p.elapsed, &p.tensor)
            })
            .map(|s| {
                for w in &s.warnings {
                    eprintln!("warning: {w}");
                }
                print!("{}", summary_table(&s));
                println!("wrote {}", s.output.display());
            })
        }
        Command::Imatrix(o) => {
            let mut bar = ProgressPrinter::new("imatrix");
            calibrate(&o, &mut |p| {
                bar.update(p.chunk as u64, p.chunks as u64, p.elapsed, "")
            })
            .map(|s| {
                println!(
                    "{} chunks, {} tokens, {} entries in {:.1} s: wrote {}",
                    s.chunks,
                    s.tokens,
                    s.entries,
                    s.seconds,
                    s.output.display()
                )
            })
        }
    };
    match result {
        Ok(()) => 0,
        Err(e) => {
            eprintln!("error [{}]: {}", e.code, e.message);
            1
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::PathBuf;

    fn args(s: &str) -> Vec<String> {
        s.split_whitespace().map(str::to_string).collect()
    }

    #[test]
    fn the_model_card_command_parses() {
        let Command::Convert(o) = parse(&args(
            "convert -i Qwen3.5-9B -o Qwen3.5-9B-UD-Q3_K_XL-mlx -q --q-bits 3 --q-recipe unsloth --imatrix-path imatrix_unsloth.gguf",
        ))
        .unwrap() else {
            panic!("not convert")
        };
        assert_eq!(o.input, PathBuf::from("Qwen3.5-9B"));
        assert_eq!(o.output, PathBuf::from("Qwen3.5-9B-UD-Q3_K_XL-mlx"));
        assert!(o.quantize && !o.force);
        assert_eq!(o.bits, Some(3));
        assert_eq!(o.recipe.as_deref(), Some("unsloth"));
        assert_eq!(o.imatrix, Some(PathBuf::from("imatrix_unsloth.gguf")));
        assert!(o.command.unwrap().starts_with("mlx convert -i Qwen3.5-9B"));
    }

    #[test]
    fn equals_form_and_short_flags() {
        let Command::Convert(o) = parse(&args(
            "convert --input=a -o b -d float32 --q-group-size=32 -q --force",
        ))
        .unwrap() else {
            panic!()
        };
        assert_eq!(
            (o.dtype.as_deref(), o.group_size, o.force),
            (Some("float32"), Some(32), true)
        );
        let Command::Imatrix(o) =
            parse(&args("imatrix -m m -f t.txt -o x.gguf --chunk-size 128")).unwrap()
        else {
            panic!()
        };
        assert_eq!(o.chunk_size, 128);
    }

    #[test]
    fn bad_command_lines_are_usage_errors() {
        for bad in [
            "convert -i a -o b --nope",
            "convert -i a",
            "convert -o b",
            "convert -i a -o b --q-bits",
            "convert -i a -o b --q-bits three",
            "imatrix -m m -f t",
            "frobnicate",
        ] {
            let e = parse(&args(bad)).unwrap_err();
            assert_eq!(e.code, ErrorCode::InvalidArgument, "{bad}");
        }
        assert!(matches!(parse(&args("convert --help")), Ok(Command::Help)));
        assert!(matches!(parse(&[]), Ok(Command::Help)));
    }

    #[test]
    fn js_options_are_checked() {
        let o = convert_options(&serde_json::json!({"input": "a", "output": "b", "quantize": true, "bits": 3, "recipe": "unsloth"})).unwrap();
        assert_eq!((o.bits, o.recipe.as_deref()), (Some(3), Some("unsloth")));
        for bad in [
            serde_json::json!({"input": "a"}),
            serde_json::json!({"input": "a", "output": "b", "bits": "3"}),
            serde_json::json!({"input": "a", "output": "b", "quantise": true}),
            serde_json::json!("a"),
        ] {
            assert_eq!(
                convert_options(&bad).unwrap_err().code,
                ErrorCode::InvalidArgument,
                "{bad}"
            );
        }
        assert!(
            imatrix_options(&serde_json::json!({"model": "m", "file": "f", "output": "o"})).is_ok()
        );
        assert!(imatrix_options(&serde_json::json!({"model": "m"})).is_err());
    }
}
