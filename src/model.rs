//! `loadModel` and the `Model` class. Each model lives on its own native worker thread
//! (`mlx_node_core::worker`); every method queues a job there and returns a Promise that the
//! job settles, so the JS thread never waits for MLX.

use std::path::PathBuf;
use std::sync::Arc;

use mlx_node_core::generate::{greedy, prefill, DEFAULT_PREFILL_CHUNK};
use mlx_node_core::runtime::{dtype_name, parse_dtype};
use mlx_node_core::session::Session;
use mlx_node_core::tokenizer::Tokenizer as CoreTokenizer;
use mlx_node_core::worker::Worker;
use mlx_node_core::{config::LayerKind, Qwen35};
use napi::bindgen_prelude::{Float32Array, Function, Object, Unknown};
use napi::Env;
use napi_derive::napi;

use crate::chat::{chunk_to_js, prepare, result_to_js, ChatChunk};
use crate::errors::{catch_panic, guard, JsError};
use crate::stream::{Queue, Settle};
use mlx_node_core::chat::ChatTemplate;
use std::sync::atomic::AtomicBool;

#[napi(object)]
pub struct LoadOptions {
    /// Activation dtype: `float32`, `bfloat16` or `float16`. Default: float32 on the CPU
    /// backend, the model's dtype on Metal. Quantized weights stay quantized either way.
    pub dtype: Option<String>,
}

#[napi(object)]
pub struct GenerateOptions {
    /// Tokens to generate (default 16).
    pub max_new_tokens: Option<u32>,
    /// Prompt tokens per forward pass while prefilling (default 512).
    pub prefill_chunk_size: Option<u32>,
}

/// The shape of the loaded text model, as read from its config.json.
#[napi(object)]
#[derive(Clone)]
pub struct ModelShape {
    pub model_type: String,
    pub vocab_size: u32,
    pub hidden_size: u32,
    pub num_layers: u32,
    /// `linear_attention` or `full_attention` per layer.
    pub layer_types: Vec<String>,
    pub num_attention_heads: u32,
    pub num_key_value_heads: u32,
    pub head_dim: u32,
    pub linear_num_key_heads: u32,
    pub linear_num_value_heads: u32,
    pub num_experts: Option<u32>,
    pub num_experts_per_tok: Option<u32>,
    pub tie_word_embeddings: bool,
    pub quantized: bool,
    /// The activation dtype the engine computes in.
    pub dtype: String,
    /// Bytes of all weights as the engine holds them (after any dtype conversion).
    pub weight_bytes: f64,
}

fn shape_of(model: &Qwen35) -> ModelShape {
    let c = &model.config;
    ModelShape {
        model_type: c.model_type.clone(),
        vocab_size: c.vocab_size as u32,
        hidden_size: c.hidden_size as u32,
        num_layers: c.num_layers as u32,
        layer_types: c
            .layer_kinds
            .iter()
            .map(|k| match k {
                LayerKind::Linear => "linear_attention".into(),
                LayerKind::Full => "full_attention".into(),
            })
            .collect(),
        num_attention_heads: c.num_attention_heads as u32,
        num_key_value_heads: c.num_kv_heads as u32,
        head_dim: c.head_dim as u32,
        linear_num_key_heads: c.linear_key_heads as u32,
        linear_num_value_heads: c.linear_value_heads as u32,
        num_experts: c.moe.as_ref().map(|m| m.num_experts as u32),
        num_experts_per_tok: c.moe.as_ref().map(|m| m.experts_per_token as u32),
        tie_word_embeddings: c.tie_word_embeddings,
        quantized: c.quantization.default.is_some(),
        dtype: dtype_name(model.dtype).to_owned(),
        weight_bytes: model.weight_bytes as f64,
    }
}

/// The engine error as a JS `Error` with its `code`, built on the JS thread (a deferred can
/// only be rejected with a napi error; one made from a JS value rejects with that value).
pub(crate) fn coded_error(env: Env, e: mlx_node_core::Error) -> napi::Error {
    let js = JsError::new(e.code.as_str().to_owned(), e.message);
    // SAFETY: `env` is the live environment of the JS thread running this resolver.
    match unsafe { napi::bindgen_prelude::ToNapiValue::to_napi_value(env.raw(), js) } {
        Ok(raw) => napi::Error::from(unsafe { Unknown::from_raw_unchecked(env.raw(), raw) }),
        Err(e) => e,
    }
}

/// A new promise and the deferred that settles it.
pub(crate) fn promise<T: napi::bindgen_prelude::ToNapiValue + 'static>(
    env: &Env,
) -> Result<(napi::JsDeferred<T, Settle<T>>, Object<'_>), JsError> {
    env.create_deferred::<T, Settle<T>>()
        .map_err(|e| JsError::new("INTERNAL_ERROR".into(), e.reason))
}

/// Queues `job` on the model's thread and returns a Promise of `to_js` of its result.
fn on_worker<'a, R, T>(
    env: &'a Env,
    worker: &Worker<Session>,
    job: impl FnOnce(&mut Option<Session>) -> mlx_node_core::Result<R> + Send + 'static,
    to_js: impl FnOnce(Env, R) -> napi::Result<T> + Send + 'static,
) -> Result<Object<'a>, JsError>
where
    R: Send + 'static,
    T: napi::bindgen_prelude::ToNapiValue + 'static,
{
    let (deferred, promise) = promise::<T>(env)?;
    if worker.is_closed() {
        let e = mlx_node_core::Error::new(
            mlx_node_core::ErrorCode::Disposed,
            "the model has been disposed",
        );
        deferred.resolve(Box::new(move |env| Err(coded_error(env, e))));
        return Ok(promise);
    }
    worker
        .submit(move |state| {
            let result = catch_panic(|| job(state));
            deferred.resolve(Box::new(move |env| match result {
                Ok(value) => to_js(env, value),
                Err(e) => Err(coded_error(env, e)),
            }));
        })
        .map_err(crate::errors::to_js)?;
    Ok(promise)
}

fn loaded(state: &mut Option<Session>) -> mlx_node_core::Result<&mut Session> {
    state.as_mut().ok_or_else(|| {
        mlx_node_core::Error::new(
            mlx_node_core::ErrorCode::Disposed,
            "the model is not loaded",
        )
    })
}

/// A promise already rejected with `e` (argument errors reject like engine errors do).
pub(crate) fn rejected<'a>(env: &'a Env, e: mlx_node_core::Error) -> Result<Object<'a>, JsError> {
    let (deferred, promise) = promise::<()>(env)?;
    deferred.resolve(Box::new(move |env| Err(coded_error(env, e))));
    Ok(promise)
}

/// Loads a Qwen3.5 model folder (Hugging Face or MLX layout, quantized or not) on a new native
/// thread of its own.
#[napi(ts_return_type = "Promise<Model>")]
pub fn load_model(
    env: &Env,
    path: String,
    options: Option<LoadOptions>,
) -> Result<Object<'_>, JsError> {
    let requested = match options.and_then(|o| o.dtype).map(|name| parse_dtype(&name)) {
        Some(Ok(dtype)) => Some(dtype),
        Some(Err(e)) => return rejected(env, e),
        None => None,
    };
    let worker = Arc::new(guard(|| Worker::spawn("mlx-node-model"))?);
    let handle = worker.clone();
    let dir = PathBuf::from(path);
    on_worker(
        env,
        &worker,
        move |state| {
            let session = Session::load(&dir, requested)?;
            let shape = shape_of(&session.model);
            let tokenizer = session.tokenizer.clone();
            let template = session.template.clone();
            *state = Some(session);
            Ok((shape, tokenizer, template))
        },
        move |_, (shape, tokenizer, template)| {
            Ok(Model {
                worker: handle,
                shape,
                tokenizer: tokenizer.map(|inner| Tokenizer { inner }),
                template,
            })
        },
    )
}

/// A loaded model. Its methods run on the model's own thread, one call after another.
#[napi]
pub struct Model {
    worker: Arc<Worker<Session>>,
    shape: ModelShape,
    tokenizer: Option<Tokenizer>,
    template: Option<Arc<ChatTemplate>>,
}

#[napi(object)]
pub struct TemplateOptions {
    /// OpenAI-style function tools, rendered into the system turn.
    pub tools: Option<Vec<serde_json::Value>>,
    /// `false` renders the template's empty think block; unset means the template's default.
    pub enable_thinking: Option<bool>,
    /// End with the opening of an assistant turn (default true).
    pub add_generation_prompt: Option<bool>,
}

/// One step of a chat stream, as an async iterator yields it.
#[napi(object)]
pub struct StreamStep {
    pub done: bool,
    pub value: Option<ChatChunk>,
}

/// The reply of `chatStream`, chunk by chunk: `for await (const chunk of stream)`. Leaving the
/// loop early stops the generation.
#[napi]
pub struct ChatStream {
    queue: Arc<Queue<StreamStep>>,
}

#[napi]
impl ChatStream {
    /// The next chunk (`{ done: false, value }`) or the end (`{ done: true }`).
    #[napi(ts_return_type = "Promise<{ done: boolean, value?: ChatChunk }>")]
    pub fn next<'a>(&self, env: &'a Env) -> Result<Object<'a>, JsError> {
        let (deferred, promise) = promise::<StreamStep>(env)?;
        self.queue.pull(deferred);
        Ok(promise)
    }

    /// Stops the generation (what `break` in a `for await` loop calls).
    #[napi(
        js_name = "return",
        ts_return_type = "Promise<{ done: boolean, value?: ChatChunk }>"
    )]
    pub fn finish<'a>(&self, env: &'a Env) -> Result<Object<'a>, JsError> {
        self.queue.cancel();
        let (deferred, promise) = promise::<StreamStep>(env)?;
        deferred.resolve(Box::new(|_| {
            Ok(StreamStep {
                done: true,
                value: None,
            })
        }));
        Ok(promise)
    }
}

/// The model's tokenizer (from its tokenizer.json). Runs on the calling thread: it is fast and
/// touches no MLX state.
#[napi]
#[derive(Clone)]
pub struct Tokenizer {
    inner: Arc<CoreTokenizer>,
}

#[napi]
impl Tokenizer {
    /// Token ids of `text`; special tokens written in it (`<|im_start|>`) become their ids.
    #[napi]
    pub fn encode(&self, text: String) -> Result<Vec<u32>, JsError> {
        guard(|| self.inner.encode(&text))
    }

    /// The text of `ids`; special tokens are kept unless `skipSpecialTokens` is true.
    #[napi]
    pub fn decode(
        &self,
        ids: Vec<u32>,
        skip_special_tokens: Option<bool>,
    ) -> Result<String, JsError> {
        guard(|| {
            self.inner
                .decode(&ids, skip_special_tokens.unwrap_or(false))
        })
    }

    /// The id of one token string, if the vocabulary has it.
    #[napi]
    pub fn token_to_id(&self, token: String) -> Option<u32> {
        self.inner.token_id(&token)
    }
}

fn non_empty(ids: &[u32]) -> mlx_node_core::Result<()> {
    if ids.is_empty() {
        return Err(mlx_node_core::Error::new(
            mlx_node_core::ErrorCode::InvalidArgument,
            "tokenIds is empty",
        ));
    }
    Ok(())
}

#[napi]
impl Model {
    /// The model's shape, from its config.json.
    #[napi(getter)]
    pub fn config(&self) -> ModelShape {
        self.shape.clone()
    }

    /// The model's tokenizer; an error with code MISSING_TOKENIZER when the folder has none.
    #[napi(getter)]
    pub fn tokenizer(&self) -> Result<Tokenizer, JsError> {
        self.tokenizer.clone().ok_or_else(|| {
            JsError::new(
                "MISSING_TOKENIZER".to_owned(),
                "the model folder has no tokenizer.json",
            )
        })
    }

    /// Logits `[vocab]` at the last position after running `tokenIds` from an empty cache.
    #[napi(ts_return_type = "Promise<Float32Array>")]
    pub fn logits<'a>(&self, env: &'a Env, token_ids: Vec<u32>) -> Result<Object<'a>, JsError> {
        let ids = token_ids;
        on_worker(
            env,
            &self.worker,
            move |state| {
                non_empty(&ids)?;
                let model = &loaded(state)?.model;
                let mut cache = model.new_cache();
                let logits = prefill(model, &mut cache, &ids, DEFAULT_PREFILL_CHUNK)?;
                logits.eval()?;
                Ok(logits.as_slice::<f32>().to_vec())
            },
            |_, values| Ok(Float32Array::new(values)),
        )
    }

    /// Greedy continuation of `tokenIds`: the new token ids.
    #[napi(ts_return_type = "Promise<number[]>")]
    pub fn generate<'a>(
        &self,
        env: &'a Env,
        token_ids: Vec<u32>,
        options: Option<GenerateOptions>,
    ) -> Result<Object<'a>, JsError> {
        let ids = token_ids;
        let max_new = options
            .as_ref()
            .and_then(|o| o.max_new_tokens)
            .unwrap_or(16) as usize;
        let chunk = options
            .as_ref()
            .and_then(|o| o.prefill_chunk_size)
            .map_or(DEFAULT_PREFILL_CHUNK, |c| c as usize);
        on_worker(
            env,
            &self.worker,
            move |state| {
                non_empty(&ids)?;
                greedy(&loaded(state)?.model, &ids, max_new, chunk)
            },
            |_, ids| Ok(ids),
        )
    }

    /// The prompt the model's chat template makes of `messages` (OpenAI-shaped; camelCase or
    /// snake_case keys; tool-call arguments as objects or JSON strings).
    #[napi(ts_args_type = "messages: ChatMessage[], options?: TemplateOptions")]
    pub fn apply_chat_template(
        &self,
        messages: Vec<serde_json::Value>,
        options: Option<TemplateOptions>,
    ) -> Result<String, JsError> {
        let template = self.template.clone();
        let options = options.unwrap_or(TemplateOptions {
            tools: None,
            enable_thinking: None,
            add_generation_prompt: None,
        });
        guard(move || {
            let template = template.ok_or_else(|| {
                mlx_node_core::Error::new(
                    mlx_node_core::ErrorCode::MissingChatTemplate,
                    "the model folder has no chat template",
                )
            })?;
            mlx_node_core::chat::render(
                &template,
                &messages,
                options.tools.as_deref(),
                options.enable_thinking,
                options.add_generation_prompt.unwrap_or(true),
            )
        })
    }

    /// One chat turn: the reply, its thinking and tool calls, usage and timings.
    #[napi(
        ts_args_type = "messages: ChatMessage[], options?: ChatOptions",
        ts_return_type = "Promise<ChatResult>"
    )]
    pub fn chat<'a>(
        &self,
        env: &'a Env,
        messages: Vec<serde_json::Value>,
        options: Option<Object>,
    ) -> Result<Object<'a>, JsError> {
        let (parsed, abort) = match prepare(env, options.as_ref()) {
            Ok(prepared) => prepared,
            Err(e) => return rejected(env, e),
        };
        on_worker(
            env,
            &self.worker,
            move |state| {
                let session = loaded(state)?;
                session.chat(&messages, &parsed, &abort, |_| {})
            },
            |_, outcome| Ok(result_to_js(outcome)),
        )
    }

    /// The same turn as `chat`, streamed: an async iterable of text and thinking chunks.
    #[napi(
        ts_args_type = "messages: ChatMessage[], options?: ChatOptions",
        ts_return_type = "AsyncIterable<ChatChunk> & ChatStream"
    )]
    pub fn chat_stream<'a>(
        &self,
        env: &'a Env,
        messages: Vec<serde_json::Value>,
        options: Option<Object>,
    ) -> Result<Object<'a>, JsError> {
        let stream = self.start_stream(env, messages, options)?;
        // SAFETY: `env` is the live environment of this call.
        let raw = unsafe { napi::bindgen_prelude::ToNapiValue::to_napi_value(env.raw(), stream) }
            .map_err(|e| JsError::new("INTERNAL_ERROR".into(), e.reason))?;
        let instance = Object::from_raw(env.raw(), raw);
        // `for await` looks for Symbol.asyncIterator, which a napi class cannot declare.
        let iterable: Function<Object, Object> = env
            .run_script("(function (s) { s[Symbol.asyncIterator] = function () { return this }; return s })")
            .map_err(|e| JsError::new("INTERNAL_ERROR".into(), e.reason))?;
        iterable
            .call(instance)
            .map_err(|e| JsError::new("INTERNAL_ERROR".into(), e.reason))
    }

    fn start_stream(
        &self,
        env: &Env,
        messages: Vec<serde_json::Value>,
        options: Option<Object>,
    ) -> Result<ChatStream, JsError> {
        let fail_stream = |queue: &Queue<StreamStep>, e: mlx_node_core::Error| {
            queue.push(Box::new(move |env| Err(coded_error(env, e))));
        };
        let (parsed, abort) = match prepare(env, options.as_ref()) {
            Ok(prepared) => prepared,
            Err(e) => {
                // Errors surface from the first `next()`, like every other stream error.
                let queue = Queue::<StreamStep>::new(Arc::new(AtomicBool::new(false)));
                fail_stream(&queue, e);
                return Ok(ChatStream { queue });
            }
        };
        let queue = Queue::<StreamStep>::new(abort.clone());
        let stream = ChatStream {
            queue: queue.clone(),
        };
        let producer = queue.clone();
        let submitted = self.worker.submit(move |state| {
            let result = catch_panic(|| {
                let session = loaded(state)?;
                session.chat(&messages, &parsed, &abort, |chunk| {
                    let chunk = chunk_to_js(chunk);
                    producer.push(Box::new(move |_| {
                        Ok(StreamStep {
                            done: false,
                            value: Some(chunk),
                        })
                    }));
                })
            });
            match result {
                Ok(_) => producer.push(Box::new(|_| {
                    Ok(StreamStep {
                        done: true,
                        value: None,
                    })
                })),
                Err(e) => producer.push(Box::new(move |env| Err(coded_error(env, e)))),
            }
        });
        if let Err(e) = submitted {
            fail_stream(&queue, e);
        }
        Ok(stream)
    }

    /// Waits for calls in flight, then frees the model. Later calls fail with MODEL_DISPOSED.
    #[napi(ts_return_type = "Promise<void>")]
    pub fn dispose<'a>(&self, env: &'a Env) -> Result<Object<'a>, JsError> {
        let (deferred, promise) = promise::<()>(env)?;
        if self.worker.is_closed() {
            // Disposing twice is harmless: the second call has nothing left to free.
            deferred.resolve(Box::new(|_| Ok(())));
        } else {
            let _ = self.worker.close(move |state| {
                *state = None;
                deferred.resolve(Box::new(|_| Ok(())));
            });
        }
        Ok(promise)
    }
}
