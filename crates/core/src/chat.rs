//! A chat turn: messages rendered through the model's own template, generated with the
//! conversation cache, and the reply split into thinking, text and tool calls as it streams.

use std::sync::atomic::AtomicBool;

pub use mlx_node_chat::ChatTemplate;
use mlx_node_chat::{
    normalize_messages, parse_tool_calls, MessageError, RenderOptions, Segment, StopMatcher,
    TemplateError, ThinkingSplitter, ToolCall,
};
use serde_json::Value;

use crate::error::{Error, ErrorCode, Result};
use crate::generate::{generate, Finish, Request, Step, DEFAULT_PREFILL_CHUNK};
use crate::generation_config::GenerationDefaults;
use crate::sampling::SamplingParams;
use crate::session::Session;
use crate::tokenizer::StreamDecoder;

/// What a caller may set; `None` takes the model's generation_config.json value, then ours.
#[derive(Clone, Debug, Default)]
pub struct ChatOptions {
    pub max_new_tokens: Option<usize>,
    pub temperature: Option<f32>,
    pub top_p: Option<f32>,
    pub top_k: Option<usize>,
    pub min_p: Option<f32>,
    pub repetition_penalty: Option<f32>,
    pub presence_penalty: Option<f32>,
    pub frequency_penalty: Option<f32>,
    pub seed: Option<u64>,
    pub stop: Vec<String>,
    pub enable_thinking: Option<bool>,
    pub tools: Option<Vec<Value>>,
    pub prefill_chunk: Option<usize>,
}

/// Replies stop here unless the caller asks for more.
pub const DEFAULT_MAX_NEW_TOKENS: usize = 2048;

impl ChatOptions {
    fn sampling(&self, defaults: &GenerationDefaults) -> SamplingParams {
        let greedy_default = defaults.do_sample == Some(false);
        SamplingParams {
            temperature: self.temperature.unwrap_or(if greedy_default {
                0.0
            } else {
                defaults.temperature.unwrap_or(0.0)
            }),
            top_k: self.top_k.or(defaults.top_k).unwrap_or(0),
            top_p: self.top_p.or(defaults.top_p).unwrap_or(1.0),
            min_p: self.min_p.or(defaults.min_p).unwrap_or(0.0),
            repetition_penalty: self
                .repetition_penalty
                .or(defaults.repetition_penalty)
                .unwrap_or(1.0),
            presence_penalty: self.presence_penalty.unwrap_or(0.0),
            frequency_penalty: self.frequency_penalty.unwrap_or(0.0),
            seed: self.seed,
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ChunkKind {
    Text,
    Thinking,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ChatChunk {
    pub kind: ChunkKind,
    pub text: String,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FinishReason {
    Stop,
    Length,
    ToolCalls,
    Abort,
}

impl FinishReason {
    pub fn as_str(self) -> &'static str {
        match self {
            FinishReason::Stop => "stop",
            FinishReason::Length => "length",
            FinishReason::ToolCalls => "tool_calls",
            FinishReason::Abort => "abort",
        }
    }
}

#[derive(Clone, Debug)]
pub struct ChatOutcome {
    pub text: String,
    pub thinking: Option<String>,
    /// `(id, call)` in the order the model wrote them.
    pub tool_calls: Vec<(String, ToolCall)>,
    /// Tool-call blocks that could not be read; their text stays in `text`.
    pub tool_call_errors: Vec<String>,
    pub finish_reason: FinishReason,
    pub prompt_tokens: usize,
    pub completion_tokens: usize,
    pub cached_tokens: usize,
    pub reasoning_tokens: usize,
    pub ttft_ms: f64,
    pub prefill_tokens_per_second: f64,
    pub decode_tokens_per_second: f64,
}

fn template_error(e: TemplateError) -> Error {
    match e {
        TemplateError::NotFound { .. } => Error::new(ErrorCode::MissingChatTemplate, e.to_string()),
        TemplateError::Raised(message) => Error::new(ErrorCode::TemplateError, message),
        other => Error::new(ErrorCode::TemplateError, other.to_string()),
    }
}

fn message_error(e: MessageError) -> Error {
    Error::new(ErrorCode::InvalidMessages, e.to_string())
}

/// Renders `messages` as the model's template does (OpenAI-shaped messages accepted).
pub fn render(
    template: &ChatTemplate,
    messages: &[Value],
    tools: Option<&[Value]>,
    enable_thinking: Option<bool>,
    add_generation_prompt: bool,
) -> Result<String> {
    let messages = normalize_messages(messages).map_err(message_error)?;
    let options = RenderOptions {
        add_generation_prompt,
        enable_thinking,
        ..Default::default()
    };
    template
        .render(&messages, tools, &options)
        .map_err(template_error)
}

/// Where the assistant's reply starts in `ids`: just after the last `<|im_start|>assistant\n`.
/// The next turn's prompt re-renders this turn up to there, so a snapshot there is reused.
fn reply_start(ids: &[u32], marker: &[u32]) -> Option<usize> {
    if marker.is_empty() || ids.len() < marker.len() {
        return None;
    }
    (0..=ids.len() - marker.len())
        .rev()
        .find(|&i| ids[i..i + marker.len()] == *marker)
        .map(|i| i + marker.len())
}

impl Session {
    /// Runs one chat turn; `on_chunk` receives the reply as it is generated.
    pub fn chat(
        &mut self,
        messages: &[Value],
        options: &ChatOptions,
        abort: &AtomicBool,
        mut on_chunk: impl FnMut(ChatChunk),
    ) -> Result<ChatOutcome> {
        let tokenizer = self.tokenizer()?.clone();
        let template = self.template()?.clone();
        let prompt = render(
            &template,
            messages,
            options.tools.as_deref(),
            options.enable_thinking,
            true,
        )?;
        let ids = tokenizer.encode(&prompt)?;
        let marker = tokenizer.encode("<|im_start|>assistant\n")?;
        let snapshot_at: Vec<usize> = reply_start(&ids, &marker).into_iter().collect();
        let stop_tokens = self.stop_tokens();
        let max_new_tokens = options.max_new_tokens.unwrap_or(DEFAULT_MAX_NEW_TOKENS);
        if max_new_tokens == 0 {
            return Err(Error::new(
                ErrorCode::InvalidArgument,
                "maxNewTokens must be at least 1",
            ));
        }
        let request = Request {
            prompt: &ids,
            max_new_tokens,
            sampling: options.sampling(&self.defaults),
            stop_tokens: &stop_tokens,
            prefill_chunk: options.prefill_chunk.unwrap_or(DEFAULT_PREFILL_CHUNK),
            snapshot_at: &snapshot_at,
        };

        let mut decoder = StreamDecoder::new();
        let mut stopper = StopMatcher::new(options.stop.iter().filter(|s| !s.is_empty()));
        let mut splitter = ThinkingSplitter::for_prompt(&prompt);
        let (mut text, mut thinking, mut saw_thinking) = (String::new(), String::new(), false);
        let mut reasoning_tokens = 0;
        let mut route = |segments: Vec<Segment>, on_chunk: &mut dyn FnMut(ChatChunk)| {
            for segment in segments {
                let chunk = match segment {
                    Segment::Thinking(t) => {
                        saw_thinking = true;
                        thinking.push_str(&t);
                        ChatChunk {
                            kind: ChunkKind::Thinking,
                            text: t,
                        }
                    }
                    Segment::Text(t) => {
                        text.push_str(&t);
                        ChatChunk {
                            kind: ChunkKind::Text,
                            text: t,
                        }
                    }
                };
                if !chunk.text.is_empty() {
                    on_chunk(chunk);
                }
            }
        };
        let generated = generate(
            &self.model,
            &mut self.conversation,
            &request,
            abort,
            |token| {
                if splitter.in_thinking() {
                    reasoning_tokens += 1;
                }
                let piece = decoder.push(&tokenizer, token)?;
                let (released, stopped) = stopper.push(&piece);
                route(splitter.push(&released), &mut on_chunk);
                Ok(if stopped { Step::Stop } else { Step::Continue })
            },
        )?;
        let stopped_by_string = generated.finish == Finish::Stopped;
        if !stopped_by_string {
            let tail = decoder.finish(&tokenizer)?;
            let (released, _) = stopper.push(&tail);
            let mut rest = released;
            rest.push_str(&stopper.finish());
            route(splitter.push(&rest), &mut on_chunk);
        }
        route(splitter.finish(), &mut on_chunk);

        let (remaining, calls, errors) = parse_tool_calls(&text);
        let finish_reason = match generated.finish {
            Finish::Abort => FinishReason::Abort,
            Finish::Length => FinishReason::Length,
            _ if !calls.is_empty() => FinishReason::ToolCalls,
            _ => FinishReason::Stop,
        };
        let stamp = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_micros());
        let tool_calls = calls
            .into_iter()
            .enumerate()
            .map(|(i, call)| (format!("call_{stamp:x}_{i}"), call))
            .collect();
        let computed = generated.prompt_tokens - generated.cached_tokens;
        Ok(ChatOutcome {
            text: remaining,
            thinking: saw_thinking.then_some(thinking),
            tool_calls,
            tool_call_errors: errors.iter().map(|e| e.to_string()).collect(),
            finish_reason,
            prompt_tokens: generated.prompt_tokens,
            completion_tokens: generated.tokens.len(),
            cached_tokens: generated.cached_tokens,
            reasoning_tokens,
            ttft_ms: generated.time_to_first_token * 1e3,
            prefill_tokens_per_second: computed as f64 / generated.prefill_seconds.max(1e-9),
            decode_tokens_per_second: generated.tokens.len() as f64
                / generated.decode_seconds.max(1e-9),
        })
    }
}
