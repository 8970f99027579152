//! `model.chat`, `model.chatStream` and `model.applyChatTemplate`: JS options and results
//! translated to and from `mlx_node_core::chat`.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use mlx_node_core::chat::{ChatChunk as CoreChunk, ChatOptions, ChatOutcome, ChunkKind};
use napi::bindgen_prelude::{FnArgs, Function, Object, Unknown};
use napi::{Env, ValueType};
use napi_derive::napi;
use serde_json::Value;

type EngineError = mlx_node_core::Error;

fn invalid(message: String) -> EngineError {
    EngineError::new(mlx_node_core::ErrorCode::InvalidArgument, message)
}

#[napi(object)]
pub struct ChatChunk {
    /// `text` for the answer, `thinking` for reasoning inside `<think>…</think>`.
    #[napi(js_name = "type", ts_type = "'text' | 'thinking'")]
    pub kind: String,
    pub text: String,
}

#[napi(object)]
pub struct ToolCall {
    pub id: String,
    pub name: String,
    /// Parameter values typed as JSON when they parse as JSON, else strings.
    #[napi(ts_type = "Record<string, unknown>")]
    pub arguments: Value,
}

#[napi(object)]
pub struct ChatUsage {
    pub prompt_tokens: u32,
    pub completion_tokens: u32,
    /// Prompt tokens reused from the previous turns' cache instead of being run again.
    pub cached_tokens: u32,
    /// Completion tokens spent inside the think block.
    pub reasoning_tokens: u32,
}

#[napi(object)]
pub struct ChatPerformance {
    pub ttft_ms: f64,
    pub prefill_tokens_per_second: f64,
    pub decode_tokens_per_second: f64,
}

#[napi(object)]
pub struct ChatResult {
    pub text: String,
    /// The reasoning, when the model thought (`enableThinking` on).
    pub thinking: Option<String>,
    pub tool_calls: Vec<ToolCall>,
    /// Tool-call blocks the model wrote but that could not be read; their text stays in `text`.
    pub tool_call_errors: Vec<String>,
    #[napi(ts_type = "'stop' | 'length' | 'tool_calls' | 'abort'")]
    pub finish_reason: String,
    pub usage: ChatUsage,
    pub performance: ChatPerformance,
}

pub fn chunk_to_js(c: CoreChunk) -> ChatChunk {
    ChatChunk {
        kind: match c.kind {
            ChunkKind::Text => "text".into(),
            ChunkKind::Thinking => "thinking".into(),
        },
        text: c.text,
    }
}

pub fn result_to_js(o: ChatOutcome) -> ChatResult {
    ChatResult {
        text: o.text,
        thinking: o.thinking,
        tool_calls: o
            .tool_calls
            .into_iter()
            .map(|(id, call)| ToolCall {
                id,
                name: call.name,
                arguments: Value::Object(call.arguments),
            })
            .collect(),
        tool_call_errors: o.tool_call_errors,
        finish_reason: o.finish_reason.as_str().to_owned(),
        usage: ChatUsage {
            prompt_tokens: o.prompt_tokens as u32,
            completion_tokens: o.completion_tokens as u32,
            cached_tokens: o.cached_tokens as u32,
            reasoning_tokens: o.reasoning_tokens as u32,
        },
        performance: ChatPerformance {
            ttft_ms: o.ttft_ms,
            prefill_tokens_per_second: o.prefill_tokens_per_second,
            decode_tokens_per_second: o.decode_tokens_per_second,
        },
    }
}

fn number(obj: &Object, key: &str) -> Result<Option<f64>, EngineError> {
    match obj.get::<Unknown>(key).map_err(|e| invalid(e.reason))? {
        None => Ok(None),
        Some(v) if matches!(v.get_type(), Ok(ValueType::Undefined | ValueType::Null)) => Ok(None),
        Some(v) => match v.get_type() {
            Ok(ValueType::Number) => Ok(Some(
                unsafe { v.cast::<f64>() }.map_err(|e| invalid(e.reason))?,
            )),
            _ => Err(invalid(format!("option `{key}` must be a number"))),
        },
    }
}

fn count(obj: &Object, key: &str, min: f64) -> Result<Option<usize>, EngineError> {
    match number(obj, key)? {
        Some(v) if v.fract() != 0.0 || v < min || v > 1e12 => Err(invalid(format!(
            "option `{key}` must be an integer ≥ {min}, got {v}"
        ))),
        Some(v) => Ok(Some(v as usize)),
        None => Ok(None),
    }
}

/// Reads the chat options object (everything but `signal`, which [`watch_signal`] handles).
fn chat_options(obj: Option<&Object>) -> Result<ChatOptions, EngineError> {
    let Some(obj) = obj else {
        return Ok(ChatOptions::default());
    };
    let f = |k: &str| -> Result<Option<f32>, EngineError> { Ok(number(obj, k)?.map(|v| v as f32)) };
    let stop = match obj.get::<Unknown>("stop").map_err(|e| invalid(e.reason))? {
        None => Vec::new(),
        Some(v) => match v.get_type() {
            Ok(ValueType::Undefined | ValueType::Null) => Vec::new(),
            Ok(ValueType::String) => {
                vec![unsafe { v.cast::<String>() }.map_err(|e| invalid(e.reason))?]
            }
            _ => unsafe { v.cast::<Vec<String>>() }.map_err(|_| {
                invalid("option `stop` must be a string or an array of strings".into())
            })?,
        },
    };
    let tools = match obj.get::<Unknown>("tools").map_err(|e| invalid(e.reason))? {
        Some(v) if !matches!(v.get_type(), Ok(ValueType::Undefined | ValueType::Null)) => {
            Some(unsafe { v.cast::<Vec<Value>>() }.map_err(|_| {
                invalid("option `tools` must be an array of tool definitions".into())
            })?)
        }
        _ => None,
    };
    let enable_thinking = match obj
        .get::<Unknown>("enableThinking")
        .map_err(|e| invalid(e.reason))?
    {
        Some(v) if matches!(v.get_type(), Ok(ValueType::Boolean)) => {
            Some(unsafe { v.cast::<bool>() }.map_err(|e| invalid(e.reason))?)
        }
        Some(v) if !matches!(v.get_type(), Ok(ValueType::Undefined | ValueType::Null)) => {
            return Err(invalid(
                "option `enableThinking` must be true or false".into(),
            ))
        }
        _ => None,
    };
    Ok(ChatOptions {
        max_new_tokens: count(obj, "maxNewTokens", 1.0)?,
        temperature: f("temperature")?,
        top_p: f("topP")?,
        top_k: count(obj, "topK", 0.0)?,
        min_p: f("minP")?,
        repetition_penalty: f("repetitionPenalty")?,
        presence_penalty: f("presencePenalty")?,
        frequency_penalty: f("frequencyPenalty")?,
        seed: count(obj, "seed", 0.0)?.map(|s| s as u64),
        stop,
        enable_thinking,
        tools,
        prefill_chunk: count(obj, "prefillChunkSize", 1.0)?,
    })
}

/// The options of a chat call and the flag its `signal` raises.
pub fn prepare(
    env: &Env,
    options: Option<&Object>,
) -> Result<(ChatOptions, Arc<AtomicBool>), EngineError> {
    let parsed = chat_options(options)?;
    let abort = Arc::new(AtomicBool::new(false));
    watch_signal(env, options, &abort)?;
    Ok((parsed, abort))
}

/// `(signal, abort) => void`, the JS glue that listens to an AbortSignal.
type Subscribe<'a> = Function<'a, FnArgs<(Object<'a>, Function<'a, (), ()>)>, ()>;

/// Raises `flag` when `options.signal` (an AbortSignal) aborts, or now if it already has.
fn watch_signal(
    env: &Env,
    options: Option<&Object>,
    flag: &Arc<AtomicBool>,
) -> Result<(), EngineError> {
    let Some(signal) = options
        .map(|o| o.get::<Object>("signal"))
        .transpose()
        .map_err(|_| invalid("option `signal` must be an AbortSignal".into()))?
        .flatten()
    else {
        return Ok(());
    };
    let raise = flag.clone();
    let abort = env
        .create_function_from_closure::<(), (), _>("abort", move |_| {
            raise.store(true, Ordering::Relaxed);
            Ok(())
        })
        .map_err(|e| invalid(e.reason))?;
    // The listener is plain JS: an AbortSignal is a DOM-style event target.
    let subscribe: Subscribe = env
        .run_script(
            "(function (signal, abort) { \
               if (typeof signal.addEventListener !== 'function') throw new TypeError('option `signal` must be an AbortSignal'); \
               if (signal.aborted) abort(); else signal.addEventListener('abort', () => abort(), { once: true }); })",
        )
        .map_err(|e| invalid(e.reason))?;
    subscribe
        .call((signal, abort).into())
        .map_err(|_| invalid("option `signal` must be an AbortSignal".into()))
}

/// A message in the OpenAI shape (snake_case spellings are accepted too).
#[napi(object, js_name = "ChatMessage")]
pub struct ChatMessageShape {
    #[napi(ts_type = "'system' | 'user' | 'assistant' | 'tool'")]
    pub role: String,
    #[napi(
        ts_type = "string | Array<{ type: 'text', text: string } | { type: 'image' | 'video', [key: string]: unknown }>"
    )]
    pub content: Option<Value>,
    /// An assistant turn's reasoning (kept by the template only after the last user turn).
    pub reasoning_content: Option<String>,
    /// An assistant turn's tool calls; `function.arguments` may be an object or a JSON string.
    #[napi(
        ts_type = "Array<{ id?: string, type?: 'function', function: { name: string, arguments: string | Record<string, unknown> } }>"
    )]
    pub tool_calls: Option<Value>,
    /// For `role: 'tool'`: the call this result answers.
    pub tool_call_id: Option<String>,
}

/// Options of `chat` and `chatStream`. Unset sampling options take the model's
/// generation_config.json values; `temperature: 0` is greedy.
#[napi(object, js_name = "ChatOptions")]
pub struct ChatOptionsShape {
    /// Default 2048.
    pub max_new_tokens: Option<u32>,
    pub temperature: Option<f64>,
    pub top_p: Option<f64>,
    pub top_k: Option<u32>,
    pub min_p: Option<f64>,
    pub repetition_penalty: Option<f64>,
    pub presence_penalty: Option<f64>,
    pub frequency_penalty: Option<f64>,
    /// The same seed gives the same reply.
    pub seed: Option<u32>,
    /// Strings that end the reply; they are never part of it.
    #[napi(ts_type = "string | string[]")]
    pub stop: Option<Value>,
    /// `false` uses the template's empty think block.
    pub enable_thinking: Option<bool>,
    /// OpenAI function tools.
    #[napi(
        ts_type = "Array<{ type: 'function', function: { name: string, description?: string, parameters?: Record<string, unknown> } }>"
    )]
    pub tools: Option<Value>,
    /// Stops generation within one decode step; the result has `finishReason: 'abort'`.
    #[napi(ts_type = "AbortSignal")]
    pub signal: Option<Value>,
    /// Prompt tokens per forward pass (default 512).
    pub prefill_chunk_size: Option<u32>,
}
