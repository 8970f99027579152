//! `mlx imatrix`: llama.cpp's importance matrix, computed by our engine.
//!
//! The same procedure as `llama-imatrix -c <chunk> -b <chunk>` (see the fixtures'
//! `reference/imatrix.md`): the text minus one trailing `\n` is tokenized whole (no BOS), cut
//! into `n_tokens / chunk_size` chunks (the remainder is dropped), and each chunk runs from an
//! empty cache (KV, conv and recurrent state). For every linear of every decoder layer (the MoE
//! router and the shared-expert gate included; not the output head, not the embedding) the
//! squares of its input activations are summed per input column over all positions, with a
//! token count; for the experts per expert (a token adds to each of its top-k experts, and
//! `down_proj` sees `silu(gate) · up` before the routing weight). The result is written as
//! llama-imatrix's GGUF: GGUF tensor names, `ssm_out` columns in GGUF value-head order, fused
//! experts as `ffn_gate_exps` + `ffn_up_exps` (identical) and `ffn_down_exps`.
//!
//! The layers are the engine's own, observed through [`mlx_node_core::tap`]; the output head
//! is never computed. Per chunk the sums stay lazy in MLX (float32), are evaluated once, and
//! are accumulated on the host in float64.

use std::collections::BTreeMap;
use std::fs::File;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use mlx_node_core::tokenizer::Tokenizer;
use mlx_node_core::{ActivationSink, Error, ErrorCode, Proj, Qwen35, Result, Tap};
use mlx_node_imatrix::{gguf_to_hf_heads, Entry, Imatrix};
use mlx_rs::{Array, Dtype};

/// llama-imatrix ignores mat-muls over fewer rows (tokens) than this, so a shorter chunk would
/// leave every non-expert weight without an entry.
pub const MIN_CHUNK_SIZE: usize = 16;

/// Tokens per forward call: chunks are batched up to this many. The per-token Gated DeltaNet
/// loop keeps each step's recurrent state until the batch is evaluated, so a batch costs
/// memory in proportion to its tokens (16 chunks of 256 on the 0.8B shapes held 8 GiB) while
/// saving little time (the cost per chunk barely changes with the batch).
const BATCH_TOKENS: usize = 1024;

fn chunks_per_batch(chunk_size: usize) -> usize {
    (BATCH_TOKENS / chunk_size).max(1)
}

/// What to calibrate on and where to write.
#[derive(Clone, Debug)]
pub struct CalibrateOptions {
    /// The model folder (Hugging Face or MLX layout, with its `tokenizer.json`).
    pub model: PathBuf,
    /// The calibration text (UTF-8).
    pub text: PathBuf,
    /// The GGUF imatrix to write (replaced if it exists).
    pub output: PathBuf,
    /// Tokens per chunk (llama-imatrix's `-c`); 256 by default, at least [`MIN_CHUNK_SIZE`].
    pub chunk_size: usize,
    /// Stored in `imatrix.datasets`; by default the text path as given.
    pub dataset_name: Option<String>,
}

impl CalibrateOptions {
    /// Chunks of 256 tokens, the text path as the dataset name.
    pub fn new(
        model: impl Into<PathBuf>,
        text: impl Into<PathBuf>,
        output: impl Into<PathBuf>,
    ) -> Self {
        CalibrateOptions {
            model: model.into(),
            text: text.into(),
            output: output.into(),
            chunk_size: 256,
            dataset_name: None,
        }
    }
}

/// Reported after each chunk.
#[derive(Clone, Debug)]
pub struct CalibrateProgress {
    /// Chunks done (1-based: the chunk just finished).
    pub chunk: usize,
    pub chunks: usize,
    pub tokens_done: usize,
    pub elapsed: Duration,
}

/// What [`calibrate`] did.
#[derive(Clone, Debug)]
pub struct CalibrateSummary {
    pub chunks: usize,
    /// Tokens that went into the sums (`chunks · chunk_size`).
    pub tokens: usize,
    /// Weights in the file (each has an `in_sum2` and a `counts` tensor).
    pub entries: usize,
    pub seconds: f64,
    pub output: PathBuf,
}

fn io_error(path: &Path, what: &str, e: impl std::fmt::Display) -> Error {
    Error::new(
        ErrorCode::Io,
        format!("cannot {what} {}: {e}", path.display()),
    )
}

/// The token ids of the calibration text exactly as llama-imatrix sees it: the file minus one
/// trailing `\n`, tokenized whole by the model's tokenizer, nothing added, special-token text
/// (`<|im_start|>`) tokenized as plain text (llama-imatrix's `parse_special = false`).
pub fn calibration_tokens(tokenizer: &mut Tokenizer, text_path: &Path) -> Result<Vec<u32>> {
    let bytes = std::fs::read(text_path).map_err(|e| io_error(text_path, "read", e))?;
    let mut text = String::from_utf8(bytes).map_err(|e| {
        Error::new(
            ErrorCode::InvalidArgument,
            format!("{} is not UTF-8 text: {e}", text_path.display()),
        )
    })?;
    if text.ends_with('\n') {
        text.pop();
    }
    tokenizer.encode_as_text(&text)
}

/// Runs the calibration and writes the imatrix; `progress` hears after every chunk.
pub fn calibrate(
    opts: &CalibrateOptions,
    progress: &mut dyn FnMut(&CalibrateProgress),
) -> Result<CalibrateSummary> {
    let start = Instant::now();
    let cs = opts.chunk_size;
    if cs < MIN_CHUNK_SIZE {
        return Err(Error::new(
            ErrorCode::InvalidArgument,
            format!(
                "chunk size {cs} is too small: llama-imatrix collects nothing from batches of fewer \
                 than {MIN_CHUNK_SIZE} tokens (use at least {MIN_CHUNK_SIZE}; 256 is usual)"
            ),
        ));
    }
    if cs > i32::MAX as usize {
        return Err(Error::new(
            ErrorCode::InvalidArgument,
            format!("chunk size {cs} is too large"),
        ));
    }
    // Fail before the long run if the output cannot be written: open the temporary file now.
    let file_name = opts
        .output
        .file_name()
        .ok_or_else(|| {
            Error::new(
                ErrorCode::InvalidArgument,
                format!(
                    "the output path {} does not name a file",
                    opts.output.display()
                ),
            )
        })?
        .to_string_lossy()
        .into_owned();
    if opts.output.is_dir() {
        return Err(Error::new(
            ErrorCode::InvalidArgument,
            format!("the output path {} is a folder", opts.output.display()),
        ));
    }
    let temp = opts
        .output
        .with_file_name(format!(".{file_name}.tmp-{}", std::process::id()));
    let file = File::create(&temp).map_err(|e| io_error(&opts.output, "create", e))?;
    let result = run(opts, file, &temp, start, progress);
    if result.is_err() {
        let _ = std::fs::remove_file(&temp);
    }
    result
}

fn run(
    opts: &CalibrateOptions,
    mut file: File,
    temp: &Path,
    start: Instant,
    progress: &mut dyn FnMut(&CalibrateProgress),
) -> Result<CalibrateSummary> {
    let cs = opts.chunk_size;
    // The text first: a missing text should not wait for the model to load.
    if !opts.text.is_file() {
        let e = match std::fs::metadata(&opts.text) {
            Ok(_) => "it is not a file".to_string(),
            Err(e) => e.to_string(),
        };
        return Err(io_error(&opts.text, "read the calibration text", e));
    }
    let mut tokenizer = Tokenizer::from_model_dir(&opts.model)?;
    let ids = calibration_tokens(&mut tokenizer, &opts.text)?;
    drop(tokenizer);
    let chunks = ids.len() / cs;
    if chunks == 0 {
        return Err(Error::new(
            ErrorCode::InvalidArgument,
            format!(
                "{} has {} tokens, fewer than one chunk of {cs}",
                opts.text.display(),
                ids.len()
            ),
        ));
    }
    let model = Qwen35::load(&opts.model, Dtype::Float32)?;
    model.check_tokens(&ids[..chunks * cs])?;

    let num_experts = model.config.moe.as_ref().map_or(0, |m| m.num_experts);
    let mut acc = Accumulator::default();
    let per_batch = chunks_per_batch(cs);
    let mut done = 0;
    while done < chunks {
        // Chunks are independent (each starts from an empty cache), so several run as one
        // batch `[b, chunk]`: fewer, larger graphs.
        let b = per_batch.min(chunks - done);
        let piece: Vec<i32> = ids[done * cs..(done + b) * cs]
            .iter()
            .map(|&i| i as i32)
            .collect();
        let tokens = Array::from_slice(&piece, &[b as i32, cs as i32]);
        let mut cache = model.new_cache();
        let mut sink = ChunkSink {
            num_experts,
            pending: Vec::new(),
        };
        {
            let mut tap = Tap::new(&mut sink);
            // The hidden state itself is not needed: only the sums are evaluated.
            model.forward_layers(&tokens, &mut cache, &mut tap)?;
        }
        sink.finish_into(&mut acc)?;
        for _ in 0..b {
            done += 1;
            progress(&CalibrateProgress {
                chunk: done,
                chunks,
                tokens_done: done * cs,
                elapsed: start.elapsed(),
            });
        }
    }

    let dataset = opts
        .dataset_name
        .clone()
        .unwrap_or_else(|| opts.text.to_string_lossy().into_owned());
    let imatrix = acc.into_imatrix(&model, chunks as u32, cs as u32, dataset)?;
    let entries = imatrix.entries.len();
    let bytes = imatrix.to_gguf_bytes().map_err(|e| {
        Error::new(
            ErrorCode::Internal,
            format!("cannot lay out the imatrix: {e}"),
        )
    })?;
    file.write_all(&bytes)
        .and_then(|_| file.sync_all())
        .map_err(|e| io_error(temp, "write", e))?;
    drop(file);
    std::fs::rename(temp, &opts.output).map_err(|e| io_error(&opts.output, "write", e))?;
    Ok(CalibrateSummary {
        chunks,
        tokens: chunks * cs,
        entries,
        seconds: start.elapsed().as_secs_f64(),
        output: opts.output.clone(),
    })
}

/// One activation's statistics: which linears read it, and the sums so far.
struct Stat {
    readers: Vec<Proj>,
    experts: usize,
    columns: usize,
    /// `[experts][columns]`.
    sums: Vec<f64>,
    counts: Vec<f64>,
}

/// Host-side sums over all chunks, keyed by (layer, first reader).
#[derive(Default)]
struct Accumulator {
    stats: BTreeMap<(usize, Proj), Stat>,
}

/// A chunk's lazy sums: `sums` `[experts, columns]` (or `[columns]`), `counts` `[experts]`
/// lazily for experts, or the row count for a plain linear.
struct Pending {
    layer: usize,
    readers: Vec<Proj>,
    experts: usize,
    columns: usize,
    sums: Array,
    counts: Result<Array, usize>,
}

struct ChunkSink {
    /// Experts per bank (0 for a dense model): the width of the one-hot routing.
    num_experts: usize,
    pending: Vec<Pending>,
}

fn last_dim(x: &Array) -> i32 {
    x.shape().last().copied().unwrap_or(1)
}

impl ActivationSink for ChunkSink {
    fn linear_input(&mut self, layer: usize, readers: &[Proj], x: &Array) -> Result<()> {
        let columns = last_dim(x);
        let rows = x.shape().iter().rev().skip(1).product::<i32>() as usize;
        let sums = x
            .as_dtype(Dtype::Float32)?
            .square()?
            .reshape(&[-1, columns])?
            .sum_axis(0, false)?;
        self.pending.push(Pending {
            layer,
            readers: readers.to_vec(),
            experts: 1,
            columns: columns as usize,
            sums,
            counts: Err(rows),
        });
        Ok(())
    }

    fn expert_input(
        &mut self,
        layer: usize,
        readers: &[Proj],
        x: &Array,
        experts: &Array,
    ) -> Result<()> {
        let n_experts = self.num_experts;
        if readers.is_empty() || n_experts == 0 {
            return Err(Error::new(
                ErrorCode::Internal,
                format!("layer {layer}: expert inputs reported for a model without experts"),
            ));
        }
        let columns = last_dim(x);
        let e = n_experts as i32;
        // One-hot routing [N·k, E] (the k experts of a token are distinct).
        let onehot = experts
            .reshape(&[-1, 1])?
            .as_dtype(Dtype::Int32)?
            .eq(Array::arange::<_, i32>(None, e, None)?)?
            .as_dtype(Dtype::Float32)?;
        let x2 = x.as_dtype(Dtype::Float32)?.square()?;
        let (weights, rows) = if x.ndim() == 2 {
            // One row per token for all of its experts: [N, E] · [N, in].
            let k = experts.shape()[1];
            let per_token = onehot.reshape(&[-1, k, e])?.sum_axis(1, false)?;
            (per_token, x2)
        } else {
            // One row per token and slot: [N·k, E] · [N·k, in].
            (onehot, x2.reshape(&[-1, columns])?)
        };
        let sums = weights.t().matmul(&rows)?;
        let counts = weights.sum_axis(0, false)?;
        self.pending.push(Pending {
            layer,
            readers: readers.to_vec(),
            experts: n_experts,
            columns: columns as usize,
            sums,
            counts: Ok(counts),
        });
        Ok(())
    }
}

impl ChunkSink {
    /// Evaluates the chunk's sums (one eval) and adds them to `acc` in float64.
    fn finish_into(self, acc: &mut Accumulator) -> Result<()> {
        let mut arrays: Vec<&Array> = Vec::with_capacity(2 * self.pending.len());
        for p in &self.pending {
            arrays.push(&p.sums);
            if let Ok(c) = &p.counts {
                arrays.push(c);
            }
        }
        mlx_rs::transforms::eval(arrays)?;
        for p in self.pending {
            let stat = acc
                .stats
                .entry((p.layer, p.readers[0]))
                .or_insert_with(|| Stat {
                    readers: p.readers.clone(),
                    experts: p.experts,
                    columns: p.columns,
                    sums: vec![0.0; p.experts * p.columns],
                    counts: vec![0.0; p.experts],
                });
            if stat.readers != p.readers || stat.experts != p.experts || stat.columns != p.columns {
                return Err(Error::new(
                    ErrorCode::Internal,
                    format!(
                        "layer {}: the activation of {:?} changed shape between chunks",
                        p.layer, p.readers
                    ),
                ));
            }
            let sums = p
                .sums
                .try_as_slice::<f32>()
                .map_err(|e| Error::new(ErrorCode::Mlx, format!("reading the sums failed: {e}")))?;
            if sums.len() != stat.sums.len() {
                return Err(Error::new(
                    ErrorCode::Internal,
                    format!(
                        "layer {}: {} sums for {:?}, expected {}",
                        p.layer,
                        sums.len(),
                        p.readers,
                        stat.sums.len()
                    ),
                ));
            }
            for (a, &s) in stat.sums.iter_mut().zip(sums) {
                *a += s as f64;
            }
            match &p.counts {
                Err(rows) => stat.counts[0] += *rows as f64,
                Ok(c) => {
                    let c = c.try_as_slice::<f32>().map_err(|e| {
                        Error::new(ErrorCode::Mlx, format!("reading the counts failed: {e}"))
                    })?;
                    for (a, &n) in stat.counts.iter_mut().zip(c) {
                        *a += n as f64;
                    }
                }
            }
        }
        Ok(())
    }
}

/// The GGUF weight names (`blk.N.<kind>.weight`) of a linear; two for HF's fused expert
/// `gate_up_proj`, which llama.cpp's converter splits into `ffn_gate_exps` and `ffn_up_exps`.
fn gguf_kinds(proj: Proj) -> &'static [&'static str] {
    match proj {
        Proj::QProj => &["attn_q"],
        Proj::KProj => &["attn_k"],
        Proj::VProj => &["attn_v"],
        Proj::OProj => &["attn_output"],
        Proj::InProjQkv => &["attn_qkv"],
        Proj::InProjZ => &["attn_gate"],
        Proj::InProjB => &["ssm_beta"],
        Proj::InProjA => &["ssm_alpha"],
        Proj::OutProj => &["ssm_out"],
        Proj::GateProj => &["ffn_gate"],
        Proj::UpProj => &["ffn_up"],
        Proj::DownProj => &["ffn_down"],
        Proj::Router => &["ffn_gate_inp"],
        Proj::SharedGateProj => &["ffn_gate_shexp"],
        Proj::SharedUpProj => &["ffn_up_shexp"],
        Proj::SharedDownProj => &["ffn_down_shexp"],
        Proj::SharedExpertGate => &["ffn_gate_inp_shexp"],
        Proj::ExpertsGateUp => &["ffn_gate_exps", "ffn_up_exps"],
        Proj::ExpertsDown => &["ffn_down_exps"],
    }
}

/// Puts `Hv·d` channels from Hugging Face (grouped) value-head order into GGUF (tiled) order:
/// `gguf[p·d + i] = hf[perm[p]·d + i]`, `perm` = [`gguf_to_hf_heads`].
fn value_channels_hf_to_gguf(hf: &[f64], hk: usize, hv: usize) -> Result<Vec<f64>> {
    let perm = gguf_to_hf_heads(hk, hv)
        .map_err(|e| Error::new(ErrorCode::InvalidConfig, format!("value-head order: {e}")))?;
    if hv == 0 || !hf.len().is_multiple_of(hv) {
        return Err(Error::new(
            ErrorCode::Internal,
            format!("{} out_proj columns do not form {hv} heads", hf.len()),
        ));
    }
    let d = hf.len() / hv;
    let mut gguf = Vec::with_capacity(hf.len());
    for &h in &perm {
        gguf.extend_from_slice(&hf[h * d..(h + 1) * d]);
    }
    Ok(gguf)
}

impl Accumulator {
    fn into_imatrix(
        self,
        model: &Qwen35,
        chunk_count: u32,
        chunk_size: u32,
        dataset: String,
    ) -> Result<Imatrix> {
        let c = &model.config;
        let mut imatrix = Imatrix {
            chunk_count: Some(chunk_count),
            chunk_size: Some(chunk_size),
            datasets: vec![dataset],
            ..Imatrix::default()
        };
        for ((layer, _), stat) in self.stats {
            let sums = if stat.readers.contains(&Proj::OutProj) {
                value_channels_hf_to_gguf(&stat.sums, c.linear_key_heads, c.linear_value_heads)?
            } else {
                stat.sums
            };
            if c.layer_kinds.get(layer).is_none() {
                return Err(Error::new(
                    ErrorCode::Internal,
                    format!("layer {layer} reported, the model has {}", c.num_layers),
                ));
            }
            let in_sum2: Vec<f32> = sums.iter().map(|&s| s as f32).collect();
            let counts: Vec<f32> = stat.counts.iter().map(|&n| n as f32).collect();
            for &proj in &stat.readers {
                for kind in gguf_kinds(proj) {
                    let name = format!("blk.{layer}.{kind}.weight");
                    let entry = Entry::new(in_sum2.clone(), counts.clone(), stat.experts, stat.columns)
                        .map_err(|e| {
                            Error::new(
                                ErrorCode::InvalidArgument,
                                format!(
                                    "{name} (layer {layer} {}): {e}; the model's activations are not finite",
                                    proj.hf_path()
                                ),
                            )
                        })?;
                    imatrix.insert(name, entry);
                }
            }
        }
        Ok(imatrix)
    }
}
