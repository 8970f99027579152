//! `config.json` of a Qwen3.5 folder: the text model's shape, read from `text_config` (the
//! released vision-language files) or from the top level (text-only files), and the
//! `quantization` block mlx-lm writes.

use std::collections::HashMap;
use std::path::Path;

use serde_json::{Map, Value};

use crate::error::{fail, Error, ErrorCode, Result};

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum LayerKind {
    /// Gated DeltaNet (linear attention with a recurrent state).
    Linear,
    /// Gated full attention with a KV cache.
    Full,
}

#[derive(Clone, Debug, PartialEq)]
pub struct MoeConfig {
    pub num_experts: usize,
    pub experts_per_token: usize,
    pub expert_intermediate_size: usize,
    pub shared_expert_intermediate_size: usize,
    pub norm_topk_prob: bool,
}

/// One quantized module's parameters (MLX affine quantization).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct QuantParams {
    pub group_size: usize,
    pub bits: usize,
}

/// mlx-lm's `quantization` block: a default plus per-module overrides keyed by the module path
/// in the MLX layout (`language_model.model.layers.3.self_attn.q_proj`); `false` = kept float.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Quantization {
    pub default: Option<QuantParams>,
    pub overrides: HashMap<String, Option<QuantParams>>,
}

impl Quantization {
    /// The parameters of a module, by its MLX-layout path.
    pub fn for_module(&self, path: &str) -> Option<QuantParams> {
        match self.overrides.get(path) {
            Some(params) => *params,
            None => self.default,
        }
    }
}

#[derive(Clone, Debug, PartialEq)]
pub struct ModelConfig {
    pub model_type: String,
    pub vocab_size: usize,
    pub hidden_size: usize,
    pub num_layers: usize,
    pub layer_kinds: Vec<LayerKind>,
    pub intermediate_size: usize,
    pub num_attention_heads: usize,
    pub num_kv_heads: usize,
    pub head_dim: usize,
    pub rms_norm_eps: f32,
    pub rope_theta: f32,
    pub partial_rotary_factor: f32,
    pub conv_kernel: usize,
    pub linear_key_heads: usize,
    pub linear_value_heads: usize,
    pub linear_key_dim: usize,
    pub linear_value_dim: usize,
    pub tie_word_embeddings: bool,
    pub moe: Option<MoeConfig>,
    /// Token ids that end generation, as the config lists them (may be empty).
    pub eos_token_ids: Vec<u32>,
    /// The dtype the checkpoint was trained/stored in (`dtype` or `torch_dtype`), if stated.
    pub dtype: Option<String>,
    pub quantization: Quantization,
}

const MODEL_TYPES: [&str; 4] = ["qwen3_5", "qwen3_5_text", "qwen3_5_moe", "qwen3_5_moe_text"];

/// Typed access to one JSON object, with errors that name the file and key.
struct Keys<'a> {
    map: &'a Map<String, Value>,
    file: &'a str,
    prefix: &'a str,
}

impl Keys<'_> {
    fn bad(&self, key: &str, what: &str) -> Error {
        Error::new(
            ErrorCode::InvalidConfig,
            format!("{}: `{}{key}` {what}", self.file, self.prefix),
        )
    }

    fn usize(&self, key: &str) -> Result<usize> {
        self.opt_usize(key)?
            .ok_or_else(|| self.bad(key, "is missing"))
    }

    fn opt_usize(&self, key: &str) -> Result<Option<usize>> {
        match self.map.get(key) {
            None | Some(Value::Null) => Ok(None),
            Some(v) => v
                .as_u64()
                .map(|n| Some(n as usize))
                .ok_or_else(|| self.bad(key, &format!("must be a non-negative integer, not {v}"))),
        }
    }

    fn opt_f64(&self, key: &str) -> Result<Option<f64>> {
        match self.map.get(key) {
            None | Some(Value::Null) => Ok(None),
            Some(v) => v
                .as_f64()
                .map(Some)
                .ok_or_else(|| self.bad(key, &format!("must be a number, not {v}"))),
        }
    }

    fn opt_bool(&self, key: &str) -> Result<Option<bool>> {
        match self.map.get(key) {
            None | Some(Value::Null) => Ok(None),
            Some(v) => v
                .as_bool()
                .map(Some)
                .ok_or_else(|| self.bad(key, &format!("must be true or false, not {v}"))),
        }
    }

    fn opt_str(&self, key: &str) -> Result<Option<&str>> {
        match self.map.get(key) {
            None | Some(Value::Null) => Ok(None),
            Some(v) => v
                .as_str()
                .map(Some)
                .ok_or_else(|| self.bad(key, &format!("must be a string, not {v}"))),
        }
    }
}

/// A token id or list of ids, as config files spell `eos_token_id`.
pub(crate) fn token_ids(value: Option<&Value>) -> Vec<u32> {
    match value {
        Some(Value::Number(n)) => n.as_u64().map(|n| vec![n as u32]).unwrap_or_default(),
        Some(Value::Array(a)) => a
            .iter()
            .filter_map(|v| v.as_u64().map(|n| n as u32))
            .collect(),
        _ => Vec::new(),
    }
}

impl ModelConfig {
    /// Reads `<dir>/config.json`.
    pub fn load(dir: &Path) -> Result<Self> {
        let path = dir.join("config.json");
        let text = std::fs::read_to_string(&path).map_err(|e| {
            Error::new(
                ErrorCode::Io,
                format!("cannot read {}: {e}", path.display()),
            )
        })?;
        Self::parse(&text, &path.display().to_string())
    }

    /// Parses the text of a `config.json`; `file` names it in errors.
    pub fn parse(text: &str, file: &str) -> Result<Self> {
        let root: Value = serde_json::from_str(text).map_err(|e| {
            Error::new(
                ErrorCode::InvalidConfig,
                format!("{file} is not valid JSON: {e}"),
            )
        })?;
        let Some(top) = root.as_object() else {
            return fail(
                ErrorCode::InvalidConfig,
                format!("{file} is not a JSON object"),
            );
        };
        let top_keys = Keys {
            map: top,
            file,
            prefix: "",
        };
        let (text_map, prefix) = match top.get("text_config") {
            Some(Value::Object(m)) => (m, "text_config."),
            Some(_) => return Err(top_keys.bad("text_config", "must be an object")),
            None => (top, ""),
        };
        let keys = Keys {
            map: text_map,
            file,
            prefix,
        };

        let model_type = keys
            .opt_str("model_type")?
            .or(top_keys.opt_str("model_type")?)
            .ok_or_else(|| top_keys.bad("model_type", "is missing"))?
            .to_owned();
        if !MODEL_TYPES.contains(&model_type.as_str()) {
            return fail(
                ErrorCode::UnsupportedModel,
                format!(
                    "{file}: model_type `{model_type}` is not supported (this engine runs {})",
                    MODEL_TYPES.join(", ")
                ),
            );
        }

        let hidden_size = keys.usize("hidden_size")?;
        let num_layers = keys.usize("num_hidden_layers")?;
        let num_attention_heads = keys.usize("num_attention_heads")?;
        let layer_kinds = match text_map.get("layer_types") {
            Some(Value::Array(items)) => items
                .iter()
                .map(|v| match v.as_str() {
                    Some("linear_attention") => Ok(LayerKind::Linear),
                    Some("full_attention") => Ok(LayerKind::Full),
                    _ => Err(keys.bad("layer_types", &format!("has an unknown entry {v}"))),
                })
                .collect::<Result<Vec<_>>>()?,
            Some(v) => return Err(keys.bad("layer_types", &format!("must be a list, not {v}"))),
            None => {
                let interval = keys
                    .opt_usize("full_attention_interval")?
                    .unwrap_or(4)
                    .max(1);
                (0..num_layers)
                    .map(|i| {
                        if (i + 1) % interval == 0 {
                            LayerKind::Full
                        } else {
                            LayerKind::Linear
                        }
                    })
                    .collect()
            }
        };
        if layer_kinds.len() != num_layers {
            return Err(keys.bad(
                "layer_types",
                &format!(
                    "lists {} layers but num_hidden_layers is {num_layers}",
                    layer_kinds.len()
                ),
            ));
        }

        // Released files nest RoPE settings in `rope_parameters`; older ones keep them flat.
        let rope = match text_map.get("rope_parameters") {
            Some(Value::Object(m)) => Keys {
                map: m,
                file,
                prefix: "rope_parameters.",
            },
            _ => Keys {
                map: text_map,
                file,
                prefix,
            },
        };
        if let Some(kind) = rope.opt_str("rope_type")?.or(rope.opt_str("type")?) {
            if kind != "default" {
                return fail(
                    ErrorCode::UnsupportedModel,
                    format!("{file}: rope_type `{kind}` is not supported (only `default`)"),
                );
            }
        }
        let rope_theta = rope
            .opt_f64("rope_theta")?
            .or(keys.opt_f64("rope_theta")?)
            .ok_or_else(|| keys.bad("rope_parameters.rope_theta", "is missing"))?;
        let partial_rotary_factor = rope
            .opt_f64("partial_rotary_factor")?
            .or(keys.opt_f64("partial_rotary_factor")?)
            .unwrap_or(0.25);

        let moe = if model_type.contains("moe") {
            Some(MoeConfig {
                num_experts: keys.usize("num_experts")?,
                experts_per_token: keys.usize("num_experts_per_tok")?,
                expert_intermediate_size: keys.usize("moe_intermediate_size")?,
                shared_expert_intermediate_size: keys.usize("shared_expert_intermediate_size")?,
                norm_topk_prob: keys.opt_bool("norm_topk_prob")?.unwrap_or(true),
            })
        } else {
            None
        };

        let config = ModelConfig {
            vocab_size: keys.usize("vocab_size")?,
            hidden_size,
            num_layers,
            layer_kinds,
            intermediate_size: match moe {
                Some(_) => keys.opt_usize("intermediate_size")?.unwrap_or(0),
                None => keys.usize("intermediate_size")?,
            },
            num_attention_heads,
            num_kv_heads: keys.usize("num_key_value_heads")?,
            head_dim: keys
                .opt_usize("head_dim")?
                .unwrap_or(hidden_size / num_attention_heads.max(1)),
            rms_norm_eps: keys.opt_f64("rms_norm_eps")?.unwrap_or(1e-6) as f32,
            rope_theta: rope_theta as f32,
            partial_rotary_factor: partial_rotary_factor as f32,
            conv_kernel: keys.opt_usize("linear_conv_kernel_dim")?.unwrap_or(4),
            linear_key_heads: keys.usize("linear_num_key_heads")?,
            linear_value_heads: keys.usize("linear_num_value_heads")?,
            linear_key_dim: keys.usize("linear_key_head_dim")?,
            linear_value_dim: keys.usize("linear_value_head_dim")?,
            tie_word_embeddings: keys
                .opt_bool("tie_word_embeddings")?
                .or(top_keys.opt_bool("tie_word_embeddings")?)
                .unwrap_or(false),
            moe,
            eos_token_ids: {
                let mut ids = token_ids(top.get("eos_token_id"));
                for id in token_ids(text_map.get("eos_token_id")) {
                    if !ids.contains(&id) {
                        ids.push(id);
                    }
                }
                ids
            },
            quantization: parse_quantization(top, file)?,
            dtype: keys
                .opt_str("dtype")?
                .or(keys.opt_str("torch_dtype")?)
                .or(top_keys.opt_str("torch_dtype")?)
                .map(str::to_owned),
            model_type,
        };
        config.validate(file)?;
        Ok(config)
    }

    fn validate(&self, file: &str) -> Result<()> {
        let bad = |what: String| fail(ErrorCode::InvalidConfig, format!("{file}: {what}"));
        let positive = [
            ("vocab_size", self.vocab_size),
            ("hidden_size", self.hidden_size),
            ("num_attention_heads", self.num_attention_heads),
            ("num_key_value_heads", self.num_kv_heads),
            ("head_dim", self.head_dim),
            ("linear_num_key_heads", self.linear_key_heads),
            ("linear_num_value_heads", self.linear_value_heads),
            ("linear_key_head_dim", self.linear_key_dim),
            ("linear_value_head_dim", self.linear_value_dim),
            ("linear_conv_kernel_dim", self.conv_kernel),
        ];
        for (name, value) in positive {
            if value == 0 {
                return bad(format!("{name} must be positive"));
            }
        }
        if !self.num_attention_heads.is_multiple_of(self.num_kv_heads) {
            return bad(format!(
                "num_attention_heads ({}) is not a multiple of num_key_value_heads ({})",
                self.num_attention_heads, self.num_kv_heads
            ));
        }
        if !self
            .linear_value_heads
            .is_multiple_of(self.linear_key_heads)
        {
            return bad(format!(
                "linear_num_value_heads ({}) is not a multiple of linear_num_key_heads ({})",
                self.linear_value_heads, self.linear_key_heads
            ));
        }
        let rotary = self.rotary_dims();
        if rotary == 0 || rotary > self.head_dim || !rotary.is_multiple_of(2) {
            return bad(format!(
                "partial_rotary_factor {} gives {rotary} rotary dims of head_dim {}",
                self.partial_rotary_factor, self.head_dim
            ));
        }
        if let Some(moe) = &self.moe {
            if moe.experts_per_token == 0 || moe.experts_per_token > moe.num_experts {
                return bad(format!(
                    "num_experts_per_tok ({}) must be in 1..={}",
                    moe.experts_per_token, moe.num_experts
                ));
            }
        }
        Ok(())
    }

    /// Dimensions of each attention head that RoPE rotates.
    pub fn rotary_dims(&self) -> usize {
        (self.head_dim as f32 * self.partial_rotary_factor) as usize
    }

    /// Channels of the GDN causal conv: q and k (key heads) then v (value heads).
    pub fn linear_conv_dim(&self) -> usize {
        2 * self.linear_key_heads * self.linear_key_dim
            + self.linear_value_heads * self.linear_value_dim
    }
}

fn parse_quant_params(
    value: &Value,
    default_group: Option<usize>,
    at: &str,
) -> Result<QuantParams> {
    let mode = value
        .get("mode")
        .and_then(Value::as_str)
        .unwrap_or("affine");
    if mode != "affine" {
        return fail(
            ErrorCode::UnsupportedQuantization,
            format!("{at}: quantization mode `{mode}` is not supported (only `affine`)"),
        );
    }
    let bits = value
        .get("bits")
        .and_then(Value::as_u64)
        .map(|b| b as usize);
    let group = value
        .get("group_size")
        .and_then(Value::as_u64)
        .map(|g| g as usize)
        .or(default_group);
    let (Some(bits), Some(group_size)) = (bits, group) else {
        return fail(
            ErrorCode::InvalidConfig,
            format!("{at}: quantization needs `bits` and `group_size`, got {value}"),
        );
    };
    if ![2, 3, 4, 5, 6, 8].contains(&bits) || ![32, 64, 128].contains(&group_size) {
        return fail(
            ErrorCode::UnsupportedQuantization,
            format!("{at}: {bits}-bit, group {group_size} is not supported (bits 2/3/4/5/6/8, groups 32/64/128)"),
        );
    }
    Ok(QuantParams { group_size, bits })
}

fn parse_quantization(top: &Map<String, Value>, file: &str) -> Result<Quantization> {
    let Some(block) = top.get("quantization").or(top.get("quantization_config")) else {
        return Ok(Quantization::default());
    };
    let Some(map) = block.as_object() else {
        return fail(
            ErrorCode::InvalidConfig,
            format!("{file}: `quantization` must be an object"),
        );
    };
    let at = format!("{file}: quantization");
    let default = parse_quant_params(block, None, &at)?;
    let mut overrides = HashMap::new();
    for (key, value) in map {
        match value {
            Value::Object(_) => {
                let params =
                    parse_quant_params(value, Some(default.group_size), &format!("{at}.{key}"))?;
                overrides.insert(key.clone(), Some(params));
            }
            Value::Bool(false) => {
                overrides.insert(key.clone(), None);
            }
            _ => {}
        }
    }
    Ok(Quantization {
        default: Some(default),
        overrides,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn base() -> Value {
        serde_json::json!({
            "model_type": "qwen3_5",
            "text_config": {
                "model_type": "qwen3_5_text", "vocab_size": 100, "hidden_size": 16,
                "num_hidden_layers": 3, "intermediate_size": 32, "num_attention_heads": 4,
                "num_key_value_heads": 1, "head_dim": 8, "linear_num_key_heads": 1,
                "linear_num_value_heads": 3, "linear_key_head_dim": 4, "linear_value_head_dim": 6,
                "rope_parameters": {"rope_theta": 1e6, "partial_rotary_factor": 0.5},
                "full_attention_interval": 3, "eos_token_id": 7
            },
            "eos_token_id": [5, 7]
        })
    }

    fn parse(v: &Value) -> Result<ModelConfig> {
        ModelConfig::parse(&v.to_string(), "config.json")
    }

    #[test]
    fn reads_nested_text_config_and_derives_layer_kinds() {
        let c = parse(&base()).unwrap();
        assert_eq!(
            c.layer_kinds,
            [LayerKind::Linear, LayerKind::Linear, LayerKind::Full]
        );
        assert_eq!(c.rotary_dims(), 4);
        assert_eq!(c.linear_conv_dim(), 2 * 4 + 3 * 6);
        assert_eq!(c.eos_token_ids, [5, 7]);
        assert_eq!(c.rope_theta, 1e6);
        assert!(!c.tie_word_embeddings && c.moe.is_none());
    }

    #[test]
    fn reads_a_flat_text_only_config() {
        let mut v = base()["text_config"].clone();
        v["rope_theta"] = serde_json::json!(5e5);
        v.as_object_mut().unwrap().remove("rope_parameters");
        let c = parse(&v).unwrap();
        assert_eq!((c.rope_theta, c.partial_rotary_factor), (5e5, 0.25));
    }

    #[test]
    fn errors_name_the_key() {
        let mut v = base();
        v["text_config"]
            .as_object_mut()
            .unwrap()
            .remove("hidden_size");
        let e = parse(&v).unwrap_err();
        assert_eq!(e.code, ErrorCode::InvalidConfig);
        assert!(
            e.message.contains("text_config.hidden_size"),
            "{}",
            e.message
        );

        let mut v = base();
        v["text_config"]["model_type"] = serde_json::json!("llama");
        assert_eq!(parse(&v).unwrap_err().code, ErrorCode::UnsupportedModel);

        let mut v = base();
        v["text_config"]["linear_num_value_heads"] = serde_json::json!(2);
        v["text_config"]["linear_num_key_heads"] = serde_json::json!(3);
        assert!(parse(&v).unwrap_err().message.contains("multiple"));
    }

    #[test]
    fn quantization_overrides_and_modes() {
        let mut v = base();
        v["quantization"] = serde_json::json!({
            "group_size": 64, "bits": 4, "mode": "affine",
            "language_model.model.layers.0.mlp.gate": {"group_size": 64, "bits": 8},
            "language_model.model.embed_tokens": {"group_size": null, "bits": 3},
            "language_model.lm_head": false
        });
        let q = parse(&v).unwrap().quantization;
        assert_eq!(
            q.for_module("x"),
            Some(QuantParams {
                group_size: 64,
                bits: 4
            })
        );
        assert_eq!(
            q.for_module("language_model.model.layers.0.mlp.gate")
                .unwrap()
                .bits,
            8
        );
        assert_eq!(
            q.for_module("language_model.model.embed_tokens")
                .unwrap()
                .group_size,
            64
        );
        assert_eq!(q.for_module("language_model.lm_head"), None);

        v["quantization"] = serde_json::json!({"group_size": 32, "bits": 4, "mode": "mxfp4"});
        assert_eq!(
            parse(&v).unwrap_err().code,
            ErrorCode::UnsupportedQuantization
        );
        v["quantization"] = serde_json::json!({"group_size": 32, "bits": 7});
        assert_eq!(
            parse(&v).unwrap_err().code,
            ErrorCode::UnsupportedQuantization
        );
    }
}
