//! `mlx convert`: a Hugging Face (or float MLX) Qwen3.5 checkpoint → an MLX folder that our
//! `loadModel` and mlx-lm both load, quantized by a recipe, optionally AWQ-scaled from an
//! imatrix.
//!
//! One tensor at a time (large ones a slice of rows at a time), so memory does not grow with
//! the model; everything goes to a temporary folder beside the output, renamed at the end and
//! removed on any failure.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use mlx_node_core::error::{fail, Error, ErrorCode, Result};
use mlx_node_core::linear::slice_axis;
use mlx_rs::{ops, Array, Device, Dtype, Stream};
use serde_json::{json, Map, Value};

use crate::awq::{self, AwqPlan};
use crate::card;
use crate::recipe::{Choice, Recipe, TensorClass, SUPPORTED_GROUPS};
use crate::source::{Role, Source, SourceTensor};
use crate::writer::{io_error, OutDtype, OutTensor, ShardWriter};

/// mlx-lm's shard limit.
pub const MAX_SHARD_BYTES: u64 = 5 << 30;
/// Rows are read and quantized in slices of about this many float32 bytes.
const SLICE_BYTES: usize = 64 << 20;

#[derive(Clone, Debug, Default)]
pub struct ConvertOptions {
    pub input: PathBuf,
    pub output: PathBuf,
    pub quantize: bool,
    /// Uniform bits (default 4) or the Unsloth base (default 3).
    pub bits: Option<u32>,
    /// 32, 64 or 128 (default 64).
    pub group_size: Option<u32>,
    /// `unsloth`, `mixed_2_6`, `mixed_3_4`, `mixed_3_6`, `mixed_4_6`; none = uniform.
    pub recipe: Option<String>,
    /// A GGUF or legacy `.dat` imatrix: AWQ pre-scaling.
    pub imatrix: Option<PathBuf>,
    /// A fixed AWQ strength α for every group (mlx-node's formula is 0.5). By default α is
    /// searched per group against the recipe's quantizer, or 0.5 when nothing is quantized.
    pub awq_alpha: Option<f32>,
    /// Dtype of the tensors kept in float and of the quantization scales (default bfloat16).
    pub dtype: Option<String>,
    pub force: bool,
    /// Default [`MAX_SHARD_BYTES`].
    pub max_shard_bytes: Option<u64>,
    /// The command line as typed, for the model card.
    pub command: Option<String>,
}

#[derive(Clone, Debug)]
pub struct ConvertProgress {
    /// The tensor just written.
    pub tensor: String,
    pub tensors_done: usize,
    pub tensors_total: usize,
    /// Bytes of input processed so far, of `bytes_total`.
    pub bytes_done: u64,
    pub bytes_total: u64,
    pub elapsed: Duration,
}

/// One line of the summary table: a tensor class at one precision.
#[derive(Clone, Debug, PartialEq)]
pub struct SummaryRow {
    pub class: String,
    /// `5-bit g64` or the float dtype (`bfloat16`).
    pub precision: String,
    pub bits: Option<u32>,
    pub awq: bool,
    pub tensors: usize,
    pub parameters: u64,
    pub bytes: u64,
}

#[derive(Clone, Debug)]
pub struct ConvertSummary {
    pub output: PathBuf,
    pub rows: Vec<SummaryRow>,
    pub parameters: u64,
    pub output_bytes: u64,
    pub input_bytes: u64,
    pub bits_per_weight: f64,
    pub awq_groups: Vec<awq::Group>,
    pub warnings: Vec<String>,
    pub files: Vec<String>,
    pub seconds: f64,
    pub recipe: Option<Recipe>,
}

/// The options after checking, with defaults filled in.
struct Settings {
    recipe: Option<Recipe>,
    group_size: u32,
    dtype: Dtype,
    out_dtype: OutDtype,
}

fn settings(o: &ConvertOptions) -> Result<Settings> {
    let group_size = o.group_size.unwrap_or(64);
    if !SUPPORTED_GROUPS.contains(&group_size) {
        return fail(
            ErrorCode::InvalidArgument,
            format!("--q-group-size: {group_size} is not one of 32, 64, 128"),
        );
    }
    if !o.quantize && (o.bits.is_some() || o.recipe.is_some() || o.group_size.is_some()) {
        return fail(
            ErrorCode::InvalidArgument,
            "--q-bits, --q-group-size and --q-recipe need -q/--quantize",
        );
    }
    let recipe = if o.quantize {
        Some(Recipe::from_name(o.recipe.as_deref(), o.bits)?)
    } else {
        None
    };
    let (dtype, out_dtype) = match o.dtype.as_deref().unwrap_or("bfloat16") {
        "bfloat16" | "bf16" => (Dtype::Bfloat16, OutDtype::BF16),
        "float16" | "f16" | "fp16" => (Dtype::Float16, OutDtype::F16),
        "float32" | "f32" | "fp32" => (Dtype::Float32, OutDtype::F32),
        other => {
            return fail(
                ErrorCode::InvalidArgument,
                format!("--dtype: `{other}` is not one of bfloat16, float16, float32"),
            )
        }
    };
    Ok(Settings {
        recipe,
        group_size,
        dtype,
        out_dtype,
    })
}

/// What happens to one source tensor.
struct Job<'a> {
    tensor: &'a SourceTensor,
    choice: Choice,
    class: TensorClass,
    outputs: Vec<OutTensor>,
}

fn plan_jobs<'a>(source: &'a Source, s: &Settings) -> Vec<Job<'a>> {
    let layers = source.config.layer_kinds.len();
    source
        .tensors
        .iter()
        .map(|t| {
            let class = if t.role == Role::Matrix {
                TensorClass::of(&t.module)
            } else {
                TensorClass::Other
            };
            let input_dim = *t.shape.last().unwrap_or(&0);
            let choice = match &s.recipe {
                Some(r) if class.quantizable() => {
                    r.choose(&t.module, t.layer, layers, input_dim, s.group_size)
                }
                _ => Choice::Keep,
            };
            let outputs = match choice {
                Choice::Keep => vec![OutTensor {
                    name: t.name.clone(),
                    dtype: if t.role == Role::Float32 {
                        OutDtype::F32
                    } else {
                        s.out_dtype
                    },
                    shape: t.shape.clone(),
                }],
                Choice::Quantize { bits, group_size } => {
                    let lead = &t.shape[..t.shape.len() - 1];
                    let with = |last: usize| [lead, &[last]].concat();
                    vec![
                        OutTensor {
                            name: t.name.clone(),
                            dtype: OutDtype::U32,
                            shape: with(input_dim * bits as usize / 32),
                        },
                        OutTensor {
                            name: format!("{}.scales", t.module),
                            dtype: s.out_dtype,
                            shape: with(input_dim / group_size as usize),
                        },
                        OutTensor {
                            name: format!("{}.biases", t.module),
                            dtype: s.out_dtype,
                            shape: with(input_dim / group_size as usize),
                        },
                    ]
                }
            };
            Job {
                tensor: t,
                choice,
                class,
                outputs,
            }
        })
        .collect()
}

/// Removes the temporary folder unless the conversion got to the end.
struct TempDir {
    path: PathBuf,
    keep: bool,
}

impl Drop for TempDir {
    fn drop(&mut self) {
        if !self.keep {
            let _ = std::fs::remove_dir_all(&self.path);
        }
    }
}

fn check_paths(o: &ConvertOptions) -> Result<()> {
    let input = o
        .input
        .canonicalize()
        .map_err(|e| Error::new(ErrorCode::Io, format!("input {}: {e}", o.input.display())))?;
    if o.output.as_os_str().is_empty() {
        return fail(ErrorCode::InvalidArgument, "-o/--output is required");
    }
    if let Ok(output) = o.output.canonicalize() {
        if output == input || input.starts_with(&output) {
            return fail(
                ErrorCode::OutputExists,
                format!(
                    "output {} would overwrite the input {}",
                    o.output.display(),
                    o.input.display()
                ),
            );
        }
        if !o.force {
            return fail(
                ErrorCode::OutputExists,
                format!(
                    "output {} exists; pass --force to replace it",
                    o.output.display()
                ),
            );
        }
        // --force replaces a model folder (or an empty one), never an arbitrary folder.
        let empty = std::fs::read_dir(&output).is_ok_and(|mut d| d.next().is_none());
        if !output.join("config.json").is_file() && !empty {
            return fail(
                ErrorCode::OutputExists,
                format!(
                    "output {} exists and is not a model folder (no config.json); even with \
                     --force only a model folder is replaced",
                    o.output.display()
                ),
            );
        }
    }
    Ok(())
}

/// Free bytes on the file system holding `dir`.
fn free_bytes(dir: &Path) -> Option<u64> {
    if let Some(v) = std::env::var_os("MLX_NODE_CONVERT_FREE_BYTES") {
        // Lets the out-of-space path be exercised without filling a disk.
        return v.to_str()?.parse().ok();
    }
    let c = std::ffi::CString::new(dir.as_os_str().as_encoded_bytes()).ok()?;
    let mut s: libc::statvfs = unsafe { std::mem::zeroed() };
    // SAFETY: `c` is a valid NUL-terminated path and `s` a properly sized out-parameter.
    if unsafe { libc::statvfs(c.as_ptr(), &mut s) } != 0 {
        return None;
    }
    Some(s.f_bavail as u64 * s.f_frsize as u64)
}

pub fn convert(
    o: &ConvertOptions,
    progress: &mut dyn FnMut(&ConvertProgress),
) -> Result<ConvertSummary> {
    let start = Instant::now();
    let s = settings(o)?;
    check_paths(o)?;
    let source = Source::open(&o.input)?;
    let layers = source.config.layer_kinds.len();
    let quant = |t: &SourceTensor| match (&s.recipe, t.role) {
        (Some(r), Role::Matrix) => match r.choose(
            &t.module,
            t.layer,
            layers,
            *t.shape.last().unwrap_or(&0),
            s.group_size,
        ) {
            Choice::Quantize { bits, group_size } => Some((bits, group_size)),
            Choice::Keep => None,
        },
        _ => None,
    };
    let strength = match (o.awq_alpha, &s.recipe) {
        (Some(alpha), _) if (0.0..=1.0).contains(&alpha) => awq::Strength::Fixed(alpha),
        (Some(alpha), _) => {
            return fail(
                ErrorCode::InvalidArgument,
                format!("--awq-alpha: {alpha} is not between 0 and 1"),
            )
        }
        (None, Some(_)) => awq::Strength::Search {
            quant: &quant,
            dtype: s.dtype,
        },
        (None, None) => awq::Strength::Fixed(0.5),
    };
    let awq_plan = match &o.imatrix {
        Some(path) => Some(AwqPlan::build(&source, path, &strength, s.dtype)?),
        None => None,
    };
    let mut warnings = Vec::new();
    if matches!(s.recipe, Some(Recipe::Unsloth { .. })) && awq_plan.is_none() {
        warnings.push(
            "--q-recipe unsloth without --imatrix-path: the recipe's bits are applied without \
             AWQ pre-scaling"
                .to_string(),
        );
    }
    let jobs = plan_jobs(&source, &s);
    let outputs: Vec<OutTensor> = jobs.iter().flat_map(|j| j.outputs.clone()).collect();
    let output_bytes: u64 = outputs.iter().map(|t| t.bytes()).sum();
    // Counted as mlx-lm counts them: the parameters of leaf modules, which leaves out the
    // GDN's own `A_log` and `dt_bias`.
    let parameters: u64 = jobs
        .iter()
        .filter(|j| j.tensor.name != j.tensor.module || j.tensor.role == Role::Matrix)
        .map(|j| j.tensor.shape.iter().product::<usize>() as u64)
        .sum();

    let output = absolute(&o.output)?;
    let parent = output.parent().unwrap_or(Path::new("/")).to_path_buf();
    std::fs::create_dir_all(&parent).map_err(|e| io_error(&parent, "creating", e))?;
    if let Some(free) = free_bytes(&parent) {
        if free < output_bytes + (output_bytes >> 6) {
            return fail(
                ErrorCode::NoSpace,
                format!(
                    "not enough space for {}: it needs about {} MiB, {} has {} MiB free",
                    o.output.display(),
                    output_bytes >> 20,
                    parent.display(),
                    free >> 20
                ),
            );
        }
    }
    let file_name = output
        .file_name()
        .map(|n| n.to_string_lossy().to_string())
        .unwrap_or_else(|| "model".into());
    let mut temp = TempDir {
        path: parent.join(format!(".{file_name}.partial-{}", std::process::id())),
        keep: false,
    };
    let _ = std::fs::remove_dir_all(&temp.path);
    std::fs::create_dir(&temp.path).map_err(|e| io_error(&temp.path, "creating", e))?;

    let writer = ShardWriter::create(
        &temp.path,
        outputs,
        o.max_shard_bytes.unwrap_or(MAX_SHARD_BYTES),
        parameters,
    )?;
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
    let streams: Vec<Stream> = (0..cores)
        .map(|_| Stream::new_with_device(&Device::cpu()))
        .collect();
    let bytes_total: u64 = jobs.iter().map(|j| j.tensor.input_bytes).sum();
    let mut bytes_done = 0;
    for (i, job) in jobs.iter().enumerate() {
        let scalings = awq_plan
            .as_ref()
            .and_then(|p| p.scalings.get(&job.tensor.name))
            .map(Vec::as_slice)
            .unwrap_or(&[]);
        write_job(&source, &streams, job, scalings, &s, &writer)?;
        bytes_done += job.tensor.input_bytes;
        progress(&ConvertProgress {
            tensor: job.tensor.name.clone(),
            tensors_done: i + 1,
            tensors_total: jobs.len(),
            bytes_done,
            bytes_total,
            elapsed: start.elapsed(),
        });
    }
    let files = writer.finish()?;

    let rows = summary_rows(&jobs, awq_plan.as_ref());
    let input_bytes = bytes_total;
    let mut summary = ConvertSummary {
        output: o.output.clone(),
        rows,
        parameters,
        output_bytes,
        input_bytes,
        bits_per_weight: output_bytes as f64 * 8.0 / parameters.max(1) as f64,
        awq_groups: awq_plan.map(|p| p.groups).unwrap_or_default(),
        warnings,
        files,
        seconds: 0.0,
        recipe: s.recipe,
    };
    write_config(&source, &jobs, &s, &temp.path)?;
    let mut licenses = Vec::new();
    for (file, name) in source.side_files()? {
        let to = temp.path.join(&name);
        std::fs::copy(&file, &to).map_err(|e| io_error(&to, "copying to", e))?;
        let upper = name.to_ascii_uppercase();
        if ["LICENSE", "COPYING", "NOTICE"]
            .iter()
            .any(|p| upper.starts_with(p))
        {
            licenses.push(name);
        }
    }
    let card_text = card::model_card(&source, o, &summary, &licenses);
    let card_path = temp.path.join("README.md");
    std::fs::write(&card_path, card_text).map_err(|e| io_error(&card_path, "writing", e))?;

    if output.exists() {
        std::fs::remove_dir_all(&output).map_err(|e| io_error(&output, "replacing", e))?;
    }
    std::fs::rename(&temp.path, &output).map_err(|e| io_error(&output, "renaming onto", e))?;
    temp.keep = true;
    summary.seconds = start.elapsed().as_secs_f64();
    Ok(summary)
}

fn absolute(p: &Path) -> Result<PathBuf> {
    if p.is_absolute() {
        return Ok(p.to_path_buf());
    }
    let cwd = std::env::current_dir()
        .map_err(|e| Error::new(ErrorCode::Io, format!("current folder: {e}")))?;
    Ok(cwd.join(p))
}

fn write_job(
    source: &Source,
    streams: &[Stream],
    job: &Job,
    scalings: &[awq::Scaling],
    s: &Settings,
    writer: &ShardWriter,
) -> Result<()> {
    let t = job.tensor;
    let rows_total = if t.shape.len() >= 2 { t.shape[0] } else { 1 };
    let row_elems: usize = if t.shape.len() >= 2 {
        t.shape[1..].iter().product()
    } else {
        t.shape.iter().product()
    };
    let per_slice = (SLICE_BYTES / (row_elems * 4).max(1)).max(1);
    let mut row = 0;
    while row < rows_total {
        let end = (row + per_slice).min(rows_total);
        // Without AWQ or a norm shift, the values go straight into the output dtype (what
        // mlx-lm quantizes too); otherwise they are computed in float32 and rounded once.
        let read_dtype = if scalings.is_empty() && !source.shifts(t) {
            match job.outputs[0].dtype {
                OutDtype::F32 => Dtype::Float32,
                _ => s.dtype,
            }
        } else {
            Dtype::Float32
        };
        let a = if t.shape.len() >= 2 {
            source.read_as(t, row..end, read_dtype)?
        } else {
            source.read_as(t, 0..t.shape.first().copied().unwrap_or(1), read_dtype)?
        };
        let a = awq::apply(&a, scalings, row..end)?;
        match job.choice {
            Choice::Keep => {
                let dtype = if job.outputs[0].dtype == OutDtype::F32 {
                    Dtype::Float32
                } else {
                    s.dtype
                };
                let out = a.as_dtype(dtype)?.contiguous()?;
                out.eval()?;
                let at = row as u64 * job.outputs[0].bytes() / rows_total as u64;
                writer.write(&job.outputs[0].name, at, bytes(&out)?)?;
            }
            Choice::Quantize { bits, group_size } => {
                let w = a.as_dtype(s.dtype)?;
                // MLX quantizes on one thread per stream: give each core a share of the rows,
                // on a stream of its own (rows are quantized independently, so the bytes are
                // the same as one call's).
                let n = end - row;
                let parts = streams.len().min(n).max(1);
                let mut pieces = Vec::with_capacity(parts);
                for (p, stream) in streams.iter().take(parts).enumerate() {
                    let (r0, r1) = (n * p / parts, n * (p + 1) / parts);
                    let part = if parts == 1 {
                        w.clone()
                    } else {
                        slice_axis(&w, 0, r0 as i32, r1 as i32)?
                    };
                    let (q, sc, bi) = mlx_rs::with_stream(stream, || {
                        ops::quantize(&part, group_size as i32, bits as i32)
                    })?;
                    pieces.push((row + r0, [q, sc, bi]));
                }
                mlx_rs::transforms::eval(pieces.iter().flat_map(|(_, a)| a.iter()))?;
                for (at_row, arrays) in &pieces {
                    for (out, arr) in job.outputs.iter().zip(arrays) {
                        let arr = arr.contiguous()?;
                        arr.eval()?;
                        let at = *at_row as u64 * out.bytes() / rows_total as u64;
                        writer.write(&out.name, at, bytes(&arr)?)?;
                    }
                }
            }
        }
        row = end;
    }
    Ok(())
}

/// The bytes of an evaluated, row-contiguous array.
fn bytes(a: &Array) -> Result<&[u8]> {
    let n = a.size() * a.item_size();
    let ptr: *const u8 = match a.dtype() {
        Dtype::Uint32 => a.as_slice::<u32>().as_ptr().cast(),
        Dtype::Float32 => a.as_slice::<f32>().as_ptr().cast(),
        Dtype::Bfloat16 => a.as_slice::<half::bf16>().as_ptr().cast(),
        Dtype::Float16 => a.as_slice::<half::f16>().as_ptr().cast(),
        other => {
            return fail(
                ErrorCode::Internal,
                format!("cannot write an array of dtype {other:?}"),
            )
        }
    };
    // SAFETY: `a` is evaluated and contiguous, so its buffer holds exactly `n` bytes in row
    // order, alive as long as `a`.
    Ok(unsafe { std::slice::from_raw_parts(ptr, n) })
}

fn summary_rows(jobs: &[Job], awq: Option<&AwqPlan>) -> Vec<SummaryRow> {
    let mut rows: BTreeMap<(TensorClass, String), SummaryRow> = BTreeMap::new();
    for j in jobs {
        let (precision, bits) = match j.choice {
            Choice::Quantize { bits, group_size } => {
                (format!("{bits}-bit g{group_size}"), Some(bits))
            }
            Choice::Keep => (dtype_label(j.outputs[0].dtype).to_string(), None),
        };
        let awq_here = awq.is_some_and(|p| {
            p.scalings
                .get(&j.tensor.name)
                .is_some_and(|v| v.iter().any(|s| matches!(s, awq::Scaling::Columns(_))))
        });
        let row = rows
            .entry((j.class, precision.clone()))
            .or_insert_with(|| SummaryRow {
                class: j.class.label().to_string(),
                precision,
                bits,
                awq: false,
                tensors: 0,
                parameters: 0,
                bytes: 0,
            });
        row.awq |= awq_here;
        row.tensors += 1;
        row.parameters += j.tensor.shape.iter().product::<usize>() as u64;
        row.bytes += j.outputs.iter().map(|o| o.bytes()).sum::<u64>();
    }
    rows.into_values().collect()
}

pub fn dtype_label(d: OutDtype) -> &'static str {
    match d {
        OutDtype::BF16 => "bfloat16",
        OutDtype::F16 => "float16",
        OutDtype::F32 => "float32",
        OutDtype::U32 => "uint32",
    }
}

/// The input's config with mlx-lm's `quantization` / `quantization_config` (the top-level
/// triple and an entry for every module whose triple differs) and without the vision config,
/// whose weights are not written.
fn write_config(source: &Source, jobs: &[Job], s: &Settings, dir: &Path) -> Result<()> {
    let mut config = match &source.config_json {
        Value::Object(m) => m.clone(),
        _ => Map::new(),
    };
    config.remove("vision_config");
    if let Some(recipe) = &s.recipe {
        let top_bits = recipe.default_bits();
        let mut q = Map::new();
        q.insert("group_size".into(), json!(s.group_size));
        q.insert("bits".into(), json!(top_bits));
        q.insert("mode".into(), json!("affine"));
        for j in jobs {
            if let Choice::Quantize { bits, group_size } = j.choice {
                if bits != top_bits || group_size != s.group_size {
                    q.insert(
                        j.tensor.module.clone(),
                        json!({"group_size": group_size, "bits": bits, "mode": "affine"}),
                    );
                }
            }
        }
        config.insert("quantization".into(), Value::Object(q.clone()));
        config.insert("quantization_config".into(), Value::Object(q));
    }
    let path = dir.join("config.json");
    let text = serde_json::to_string_pretty(&Value::Object(config)).expect("json") + "\n";
    std::fs::write(&path, text).map_err(|e| io_error(&path, "writing", e))
}
