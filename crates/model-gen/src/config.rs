//! `config.json` and `generation_config.json` with the keys and constants of the released
//! Qwen3.5 checkpoints.
//!
//! Keys are emitted in alphabetical order (as transformers' `to_json_string` sorts them), and
//! the `json!` literals below list them alphabetically too, so the output is the same whether
//! or not some other crate in the build enables serde_json's `preserve_order`.

use serde_json::{json, Value};

use crate::shape::ModelShape;

/// Token ids fixed by the Qwen3.5 vocabulary.
pub const IMAGE_TOKEN_ID: u32 = 248_056;
pub const VIDEO_TOKEN_ID: u32 = 248_057;
pub const VISION_START_TOKEN_ID: u32 = 248_053;
pub const VISION_END_TOKEN_ID: u32 = 248_054;
/// `<|endoftext|>`, what the released `text_config.eos_token_id` says.
pub const ENDOFTEXT_ID: u32 = 248_044;
/// `<|im_end|>`, the end of an assistant turn.
pub const IM_END_ID: u32 = 248_046;

/// A float that the released files write as an integer when it is one (`rope_theta: 10000000`).
fn number(x: f64) -> Value {
    if x.fract() == 0.0 && x.abs() < 9.0e15 {
        json!(x as i64)
    } else {
        json!(x)
    }
}

/// The `text_config` object. `initializer_range` records the std the weights were drawn with.
pub fn text_config(shape: &ModelShape, initializer_range: f32) -> Value {
    let layer_types: Vec<&str> = shape
        .layer_types()
        .iter()
        .map(|t| t.config_name())
        .collect();
    let moe = shape.moe.as_ref();
    let mut c = json!({
        "attention_bias": false,
        "attention_dropout": 0.0,
        "attn_output_gate": true,
        "dtype": "bfloat16",
        "eos_token_id": ENDOFTEXT_ID,
        "full_attention_interval": shape.full_attention_interval,
        "head_dim": shape.head_dim,
        "hidden_act": "silu",
        "hidden_size": shape.hidden_size,
        // Printed through f64 from its shortest f32 spelling, so 0.02 reads 0.02, not 0.0199999.
        "initializer_range": number(initializer_range.to_string().parse::<f64>().unwrap_or(0.02)),
        "layer_types": layer_types,
        "linear_conv_kernel_dim": shape.linear_conv_kernel_dim,
        "linear_key_head_dim": shape.linear_key_head_dim,
        "linear_num_key_heads": shape.linear_num_key_heads,
        "linear_num_value_heads": shape.linear_num_value_heads,
        "linear_value_head_dim": shape.linear_value_head_dim,
        "mamba_ssm_dtype": "float32",
        "max_position_embeddings": shape.max_position_embeddings,
        "mlp_only_layers": [],
        "model_type": if moe.is_some() { "qwen3_5_moe_text" } else { "qwen3_5_text" },
        // The released configs say 1, but these checkpoints carry no `mtp.*` weights, and a
        // speculative decoder reading 1 would look for them.
        "mtp_num_hidden_layers": 0,
        "mtp_use_dedicated_embeddings": false,
        "num_attention_heads": shape.num_attention_heads,
        "num_hidden_layers": shape.num_hidden_layers,
        "num_key_value_heads": shape.num_key_value_heads,
        "rms_norm_eps": shape.rms_norm_eps,
        "rope_parameters": {
            "mrope_interleaved": true,
            "mrope_section": shape.mrope_section(),
            "partial_rotary_factor": shape.partial_rotary_factor,
            "rope_theta": number(shape.rope_theta),
            "rope_type": "default",
        },
        "tie_word_embeddings": shape.tie_word_embeddings,
        "use_cache": true,
        "vocab_size": shape.vocab_size,
    });
    let obj = c.as_object_mut().expect("a json object literal");
    match moe {
        None => {
            obj.insert("intermediate_size".into(), json!(shape.intermediate_size));
        }
        Some(m) => {
            obj.insert(
                "moe_intermediate_size".into(),
                json!(m.moe_intermediate_size),
            );
            obj.insert("num_experts".into(), json!(m.num_experts));
            obj.insert("num_experts_per_tok".into(), json!(m.num_experts_per_tok));
            obj.insert("router_aux_loss_coef".into(), json!(0.001));
            obj.insert(
                "shared_expert_intermediate_size".into(),
                json!(m.shared_expert_intermediate_size),
            );
        }
    }
    sort_keys(c)
}

/// The whole `config.json` value. There is no `vision_config`: the weights are text-only.
pub fn config(shape: &ModelShape, initializer_range: f32) -> Value {
    let moe = shape.is_moe();
    json!({
        "architectures": [if moe {
            "Qwen3_5MoeForConditionalGeneration"
        } else {
            "Qwen3_5ForConditionalGeneration"
        }],
        "image_token_id": IMAGE_TOKEN_ID,
        "model_type": if moe { "qwen3_5_moe" } else { "qwen3_5" },
        "text_config": text_config(shape, initializer_range),
        "tie_word_embeddings": shape.tie_word_embeddings,
        "transformers_version": "5.23.0",
        "video_token_id": VIDEO_TOKEN_ID,
        "vision_end_token_id": VISION_END_TOKEN_ID,
        "vision_start_token_id": VISION_START_TOKEN_ID,
    })
}

/// The released Qwen3.5 `generation_config.json` values.
pub fn generation_config() -> Value {
    json!({
        "bos_token_id": ENDOFTEXT_ID,
        "do_sample": true,
        "eos_token_id": [IM_END_ID, ENDOFTEXT_ID],
        "pad_token_id": ENDOFTEXT_ID,
        "temperature": 0.6,
        "top_k": 20,
        "top_p": 0.95,
        "transformers_version": "4.57.0.dev0",
    })
}

/// Rebuilds an object with its keys in order whatever map type serde_json was built with
/// (insertions after the `json!` literal would otherwise land at the end under
/// `preserve_order`).
fn sort_keys(v: Value) -> Value {
    match v {
        Value::Object(map) => {
            let mut entries: Vec<(String, Value)> = map.into_iter().collect();
            entries.sort_by(|a, b| a.0.cmp(&b.0));
            Value::Object(
                entries
                    .into_iter()
                    .map(|(k, v)| (k, sort_keys(v)))
                    .collect(),
            )
        }
        other => other,
    }
}

/// Pretty JSON with a final newline, as the released files are written.
pub fn to_pretty(v: &Value) -> String {
    let mut s = serde_json::to_string_pretty(v).expect("a JSON value serialises");
    s.push('\n');
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn numbers_are_written_like_the_released_files() {
        let c = text_config(&ModelShape::qwen35_0_8b(), 0.02);
        assert_eq!(c["rope_parameters"]["rope_theta"].to_string(), "10000000");
        assert_eq!(c["initializer_range"].to_string(), "0.02");
        assert_eq!(c["rope_parameters"]["mrope_section"], json!([11, 11, 10]));
        assert!(c.get("intermediate_size").is_some());
        let m = text_config(&ModelShape::tiny_moe(), 0.1);
        assert!(m.get("intermediate_size").is_none());
        assert_eq!(m["num_experts"], 8);
    }
}
