//! `convert()`, `imatrix()` and the `mlx` command line (`runCli`): each runs on a native
//! thread of its own; progress reaches JS through a thread-safe function.

use mlx_node_convert::cli;
use mlx_node_convert::{ConvertSummary, SummaryRow};
use napi::bindgen_prelude::{Function, Object};
use napi::threadsafe_function::ThreadsafeFunctionCallMode;
use napi::Env;
use napi_derive::napi;

use crate::errors::{catch_panic, JsError};
use crate::model::{coded_error, promise, rejected};

/// The options of `convert()`: the flags of `mlx convert`, in camelCase.
#[napi(object)]
pub struct ConvertOptions {
    /// The checkpoint folder (Hugging Face, or an unquantized MLX folder).
    pub input: String,
    /// The folder to write; refused if it exists, unless `force`.
    pub output: String,
    pub quantize: Option<bool>,
    /// 2, 3, 4, 5, 6 or 8: uniform bits (default 4), or the unsloth recipe's base (default 3).
    pub bits: Option<u32>,
    /// 32, 64 or 128 (default 64).
    pub group_size: Option<u32>,
    #[napi(ts_type = "'unsloth' | 'mixed_2_6' | 'mixed_3_4' | 'mixed_3_6' | 'mixed_4_6'")]
    pub recipe: Option<String>,
    /// A llama.cpp imatrix (GGUF or legacy `.dat`): AWQ pre-scaling.
    pub imatrix_path: Option<String>,
    /// A fixed AWQ strength 0..1 (default: searched per group).
    pub awq_alpha: Option<f64>,
    #[napi(ts_type = "'bfloat16' | 'float16' | 'float32'")]
    pub dtype: Option<String>,
    pub force: Option<bool>,
    /// Largest shard in bytes (default 5 GiB, as mlx-lm).
    pub max_shard_bytes: Option<f64>,
}

#[napi(object)]
pub struct ConvertProgress {
    /// The tensor just written.
    pub tensor: String,
    pub tensors_done: u32,
    pub tensors_total: u32,
    pub bytes_done: f64,
    pub bytes_total: f64,
    pub elapsed_seconds: f64,
}

#[napi(object)]
pub struct ConvertRow {
    /// The tensor class (`mlp.down_proj`, `linear_attn.out_proj`, …).
    pub class: String,
    /// `4-bit g64`, or the float dtype it was kept in.
    pub precision: String,
    pub bits: Option<u32>,
    /// Whether AWQ scaled the class's input columns.
    pub awq: bool,
    pub tensors: u32,
    pub parameters: f64,
    pub bytes: f64,
}

#[napi(object)]
pub struct ConvertResult {
    pub output: String,
    pub rows: Vec<ConvertRow>,
    pub parameters: f64,
    pub output_bytes: f64,
    pub input_bytes: f64,
    pub bits_per_weight: f64,
    /// AWQ groups planned (0 without an imatrix).
    pub awq_groups: u32,
    pub warnings: Vec<String>,
    /// The safetensors files written.
    pub files: Vec<String>,
    pub seconds: f64,
    /// The summary table `mlx convert` prints.
    pub table: String,
}

#[napi(object)]
pub struct ImatrixOptions {
    /// The model folder to run.
    pub model: String,
    /// The calibration text.
    pub file: String,
    /// The `.imatrix.gguf` to write.
    pub output: String,
    /// Tokens per chunk, each from an empty cache (default 256).
    pub chunk_size: Option<u32>,
}

#[napi(object)]
pub struct ImatrixProgress {
    pub chunk: u32,
    pub chunks: u32,
    pub tokens_done: u32,
    pub elapsed_seconds: f64,
}

#[napi(object)]
pub struct ImatrixResult {
    pub output: String,
    pub chunks: u32,
    pub tokens: u32,
    pub entries: u32,
    pub seconds: f64,
}

fn row_to_js(r: SummaryRow) -> ConvertRow {
    ConvertRow {
        class: r.class,
        precision: r.precision,
        bits: r.bits,
        awq: r.awq,
        tensors: r.tensors as u32,
        parameters: r.parameters as f64,
        bytes: r.bytes as f64,
    }
}

fn summary_to_js(s: ConvertSummary) -> ConvertResult {
    ConvertResult {
        table: cli::summary_table(&s),
        output: s.output.display().to_string(),
        parameters: s.parameters as f64,
        output_bytes: s.output_bytes as f64,
        input_bytes: s.input_bytes as f64,
        bits_per_weight: s.bits_per_weight,
        awq_groups: s.awq_groups.len() as u32,
        warnings: s.warnings,
        files: s.files,
        seconds: s.seconds,
        rows: s.rows.into_iter().map(row_to_js).collect(),
    }
}

/// `callbacks.onProgress`, if given, as a function callable from any thread.
fn progress_callback<T: napi::bindgen_prelude::ToNapiValue + 'static>(
    callbacks: Option<Object>,
) -> Result<
    Option<napi::threadsafe_function::ThreadsafeFunction<T, (), T, napi::Status, false>>,
    JsError,
> {
    let Some(callbacks) = callbacks else {
        return Ok(None);
    };
    let f: Option<Function<T, ()>> = callbacks.get("onProgress").map_err(|e| {
        JsError::new(
            "INVALID_ARGUMENT".into(),
            format!("onProgress: {}", e.reason),
        )
    })?;
    match f {
        None => Ok(None),
        Some(f) => f
            .build_threadsafe_function::<T>()
            .build()
            .map(Some)
            .map_err(|e| JsError::new("INTERNAL_ERROR".into(), e.reason)),
    }
}

/// Runs `job` on a native thread of its own, handing each progress event (made JS-shaped by
/// `progress_to_js`) to `callbacks.onProgress`, and settles the returned promise with
/// `to_js` of its result or its coded error.
fn on_thread<'a, P, R, JsP, JsR>(
    env: &'a Env,
    callbacks: Option<Object>,
    job: impl FnOnce(&mut dyn FnMut(&P)) -> mlx_node_core::Result<R> + Send + 'static,
    progress_to_js: impl Fn(&P) -> JsP + Send + 'static,
    to_js: impl FnOnce(R) -> JsR + Send + 'static,
) -> Result<Object<'a>, JsError>
where
    R: Send + 'static,
    JsP: napi::bindgen_prelude::ToNapiValue + 'static,
    JsR: napi::bindgen_prelude::ToNapiValue + 'static,
{
    let progress = progress_callback::<JsP>(callbacks)?;
    let (deferred, promise) = promise::<JsR>(env)?;
    std::thread::spawn(move || {
        let result = catch_panic(|| {
            job(&mut |p| {
                if let Some(f) = &progress {
                    f.call(progress_to_js(p), ThreadsafeFunctionCallMode::NonBlocking);
                }
            })
        });
        deferred.resolve(Box::new(move |env| match result {
            Ok(r) => Ok(to_js(r)),
            Err(e) => Err(coded_error(env, e)),
        }));
    });
    Ok(promise)
}

/// Converts a checkpoint (what `mlx convert` does) on a native thread.
#[napi(
    ts_args_type = "options: ConvertOptions, callbacks?: { onProgress?: (progress: ConvertProgress) => void }",
    ts_return_type = "Promise<ConvertResult>"
)]
pub fn convert<'a>(
    env: &'a Env,
    options: serde_json::Value,
    callbacks: Option<Object>,
) -> Result<Object<'a>, JsError> {
    let options = match cli::convert_options(&options) {
        Ok(o) => o,
        Err(e) => return rejected(env, e),
    };
    on_thread(
        env,
        callbacks,
        move |progress| mlx_node_convert::convert(&options, progress),
        |p: &mlx_node_convert::ConvertProgress| ConvertProgress {
            tensor: p.tensor.clone(),
            tensors_done: p.tensors_done as u32,
            tensors_total: p.tensors_total as u32,
            bytes_done: p.bytes_done as f64,
            bytes_total: p.bytes_total as f64,
            elapsed_seconds: p.elapsed.as_secs_f64(),
        },
        summary_to_js,
    )
}

/// Computes an importance matrix with our engine (what `mlx imatrix` does).
#[napi(
    ts_args_type = "options: ImatrixOptions, callbacks?: { onProgress?: (progress: ImatrixProgress) => void }",
    ts_return_type = "Promise<ImatrixResult>"
)]
pub fn imatrix<'a>(
    env: &'a Env,
    options: serde_json::Value,
    callbacks: Option<Object>,
) -> Result<Object<'a>, JsError> {
    let options = match cli::imatrix_options(&options) {
        Ok(o) => o,
        Err(e) => return rejected(env, e),
    };
    on_thread(
        env,
        callbacks,
        move |progress| mlx_node_convert::calibrate::calibrate(&options, progress),
        |p: &mlx_node_convert::calibrate::CalibrateProgress| ImatrixProgress {
            chunk: p.chunk as u32,
            chunks: p.chunks as u32,
            tokens_done: p.tokens_done as u32,
            elapsed_seconds: p.elapsed.as_secs_f64(),
        },
        |s| ImatrixResult {
            output: s.output.display().to_string(),
            chunks: s.chunks as u32,
            tokens: s.tokens as u32,
            entries: s.entries as u32,
            seconds: s.seconds,
        },
    )
}

/// Runs the `mlx` command line (arguments after the program name); resolves to its exit
/// code. Progress and the summary go to the process's stderr and stdout.
#[napi(ts_return_type = "Promise<number>")]
pub fn run_cli<'a>(env: &'a Env, args: Vec<String>) -> Result<Object<'a>, JsError> {
    let (deferred, promise) = promise::<i32>(env)?;
    std::thread::spawn(move || {
        let code = std::panic::catch_unwind(|| cli::run(&args)).unwrap_or_else(|_| {
            eprintln!("error [INTERNAL_ERROR]: the command panicked");
            1
        });
        deferred.resolve(Box::new(move |_| Ok(code)));
    });
    Ok(promise)
}
