//! The Qwen3.5 model shape the name mapping needs, read from a Hugging Face `config.json`.

use std::path::Path;

use serde_json::Value;

use crate::error::{Error, Result};

/// The mixer of one decoder layer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LayerKind {
    /// Gated DeltaNet (`"linear_attention"`): `linear_attn.*`.
    LinearAttention,
    /// Gated softmax attention (`"full_attention"`): `self_attn.*`.
    FullAttention,
}

impl LayerKind {
    /// The `layer_types` spelling.
    pub fn config_name(self) -> &'static str {
        match self {
            Self::LinearAttention => "linear_attention",
            Self::FullAttention => "full_attention",
        }
    }
}

/// The sparse-MLP part of a MoE model.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MoeShape {
    /// E.
    pub num_experts: usize,
    /// Ie: input width of each expert's `down_proj`.
    pub moe_intermediate_size: usize,
    /// Is: input width of `shared_expert.down_proj`; `None` if the model has no shared expert.
    pub shared_expert_intermediate_size: Option<usize>,
}

/// What the mapping needs to know about a Qwen3.5 text model. Every layer of a MoE model is
/// sparse (as in all released checkpoints and mlx-lm; `mlp_only_layers` is not honoured).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ModelShape {
    /// H.
    pub hidden_size: usize,
    /// One entry per decoder layer (its length is the layer count).
    pub layer_kinds: Vec<LayerKind>,
    /// nh (query heads of full attention).
    pub num_attention_heads: usize,
    /// hd.
    pub head_dim: usize,
    /// Hk.
    pub linear_num_key_heads: usize,
    /// Hv (a multiple of Hk).
    pub linear_num_value_heads: usize,
    /// dk.
    pub linear_key_head_dim: usize,
    /// dv.
    pub linear_value_head_dim: usize,
    /// I, the dense MLP width; `None` for a MoE model.
    pub intermediate_size: Option<usize>,
    /// `Some` for a MoE model.
    pub moe: Option<MoeShape>,
}

/// One linear layer's input as the imatrix describes it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LinearInput {
    /// HF module path relative to the text model, without `.weight` (`layers.3.self_attn.q_proj`).
    pub path: String,
    /// Number of matrices (experts); 1 for a plain linear.
    pub experts: usize,
    /// Input width.
    pub columns: usize,
}

fn text_config(config: &Value) -> &Value {
    match config.get("text_config") {
        Some(t) if t.is_object() => t,
        _ => config,
    }
}

fn opt_usize(cfg: &Value, key: &str) -> Result<Option<usize>> {
    match cfg.get(key) {
        None | Some(Value::Null) => Ok(None),
        Some(v) => v
            .as_u64()
            .and_then(|n| usize::try_from(n).ok())
            .map(Some)
            .ok_or_else(|| Error::Config {
                key: key.to_string(),
                reason: format!("expected a non-negative integer, found {v}"),
            }),
    }
}

fn req_usize(cfg: &Value, key: &str) -> Result<usize> {
    opt_usize(cfg, key)?.ok_or_else(|| Error::Config {
        key: key.to_string(),
        reason: "missing".to_string(),
    })
}

impl ModelShape {
    /// Number of decoder layers.
    pub fn num_layers(&self) -> usize {
        self.layer_kinds.len()
    }

    /// `r = Hv / Hk`.
    pub fn value_heads_per_key_head(&self) -> usize {
        self.linear_num_value_heads / self.linear_num_key_heads.max(1)
    }

    /// Builds the shape from a parsed `config.json`; text keys are read from `text_config` when
    /// present, else from the top level (a text-only config).
    pub fn from_config(config: &Value) -> Result<Self> {
        let cfg = text_config(config);
        if !cfg.is_object() {
            return Err(Error::Config {
                key: "(root)".to_string(),
                reason: "expected a JSON object".to_string(),
            });
        }
        let hidden_size = req_usize(cfg, "hidden_size")?;
        let num_layers = req_usize(cfg, "num_hidden_layers")?;
        let num_attention_heads = req_usize(cfg, "num_attention_heads")?;
        let head_dim = match opt_usize(cfg, "head_dim")? {
            Some(d) => d,
            None => hidden_size / num_attention_heads.max(1),
        };
        let layer_kinds = match cfg.get("layer_types") {
            Some(Value::Array(items)) => items
                .iter()
                .enumerate()
                .map(|(i, v)| match v.as_str() {
                    Some("linear_attention") => Ok(LayerKind::LinearAttention),
                    Some("full_attention") => Ok(LayerKind::FullAttention),
                    _ => Err(Error::Config {
                        key: format!("layer_types[{i}]"),
                        reason: format!(
                            "expected \"linear_attention\" or \"full_attention\", found {v}"
                        ),
                    }),
                })
                .collect::<Result<Vec<_>>>()?,
            None | Some(Value::Null) => {
                let interval = opt_usize(cfg, "full_attention_interval")?.unwrap_or(4);
                if interval == 0 {
                    return Err(Error::Config {
                        key: "full_attention_interval".to_string(),
                        reason: "must be at least 1".to_string(),
                    });
                }
                (0..num_layers)
                    .map(|i| {
                        if (i + 1) % interval == 0 {
                            LayerKind::FullAttention
                        } else {
                            LayerKind::LinearAttention
                        }
                    })
                    .collect()
            }
            Some(v) => {
                return Err(Error::Config {
                    key: "layer_types".to_string(),
                    reason: format!("expected an array, found {v}"),
                })
            }
        };
        if layer_kinds.len() != num_layers {
            return Err(Error::Config {
                key: "layer_types".to_string(),
                reason: format!(
                    "{} entries for num_hidden_layers = {num_layers}",
                    layer_kinds.len()
                ),
            });
        }
        let moe = match opt_usize(cfg, "num_experts")? {
            Some(e) if e > 0 => Some(MoeShape {
                num_experts: e,
                moe_intermediate_size: req_usize(cfg, "moe_intermediate_size")?,
                shared_expert_intermediate_size: opt_usize(cfg, "shared_expert_intermediate_size")?
                    .filter(|&n| n > 0),
            }),
            _ => None,
        };
        let intermediate_size = match moe {
            Some(_) => None,
            None => Some(req_usize(cfg, "intermediate_size")?),
        };
        let shape = Self {
            hidden_size,
            layer_kinds,
            num_attention_heads,
            head_dim,
            linear_num_key_heads: req_usize(cfg, "linear_num_key_heads")?,
            linear_num_value_heads: req_usize(cfg, "linear_num_value_heads")?,
            linear_key_head_dim: req_usize(cfg, "linear_key_head_dim")?,
            linear_value_head_dim: req_usize(cfg, "linear_value_head_dim")?,
            intermediate_size,
            moe,
        };
        shape.validate()?;
        Ok(shape)
    }

    /// Reads and parses a `config.json` file.
    pub fn from_config_file(path: impl AsRef<Path>) -> Result<Self> {
        let path = path.as_ref();
        let bytes = crate::imatrix::read_file(path)?;
        let value: Value = serde_json::from_slice(&bytes).map_err(|source| Error::Json {
            path: path.to_path_buf(),
            source,
        })?;
        Self::from_config(&value)
    }

    /// Checks that every size is positive and Hv is a multiple of Hk.
    pub fn validate(&self) -> Result<()> {
        let positive = [
            ("hidden_size", Some(self.hidden_size)),
            ("num_hidden_layers", Some(self.layer_kinds.len())),
            ("num_attention_heads", Some(self.num_attention_heads)),
            ("head_dim", Some(self.head_dim)),
            ("linear_num_key_heads", Some(self.linear_num_key_heads)),
            ("linear_num_value_heads", Some(self.linear_num_value_heads)),
            ("linear_key_head_dim", Some(self.linear_key_head_dim)),
            ("linear_value_head_dim", Some(self.linear_value_head_dim)),
            ("intermediate_size", self.intermediate_size),
            (
                "moe_intermediate_size",
                self.moe.map(|m| m.moe_intermediate_size),
            ),
            (
                "shared_expert_intermediate_size",
                self.moe.and_then(|m| m.shared_expert_intermediate_size),
            ),
        ];
        for (key, v) in positive {
            if v == Some(0) {
                return Err(Error::Config {
                    key: key.to_string(),
                    reason: "must be at least 1".to_string(),
                });
            }
        }
        if self.intermediate_size.is_none() && self.moe.is_none() {
            return Err(Error::Config {
                key: "intermediate_size".to_string(),
                reason: "a dense model needs intermediate_size (or num_experts for MoE)"
                    .to_string(),
            });
        }
        if !self
            .linear_num_value_heads
            .is_multiple_of(self.linear_num_key_heads)
        {
            return Err(Error::Config {
                key: "linear_num_value_heads".to_string(),
                reason: format!(
                    "Hv = {} is not a multiple of Hk = {}",
                    self.linear_num_value_heads, self.linear_num_key_heads
                ),
            });
        }
        Ok(())
    }

    /// Every linear layer of the text model whose input llama-imatrix records by default (all
    /// `blk.*` mat-muls: not `embed_tokens`, not `lm_head`, not the MTP head), in layer order.
    pub fn linear_inputs(&self) -> Vec<LinearInput> {
        let h = self.hidden_size;
        let mut out = Vec::new();
        let mut push = |layer: usize, module: &str, experts: usize, columns: usize| {
            out.push(LinearInput {
                path: format!("layers.{layer}.{module}"),
                experts,
                columns,
            })
        };
        for (n, kind) in self.layer_kinds.iter().enumerate() {
            match kind {
                LayerKind::FullAttention => {
                    for m in ["self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj"] {
                        push(n, m, 1, h);
                    }
                    push(
                        n,
                        "self_attn.o_proj",
                        1,
                        self.num_attention_heads * self.head_dim,
                    );
                }
                LayerKind::LinearAttention => {
                    for m in [
                        "linear_attn.in_proj_qkv",
                        "linear_attn.in_proj_z",
                        "linear_attn.in_proj_a",
                        "linear_attn.in_proj_b",
                    ] {
                        push(n, m, 1, h);
                    }
                    push(
                        n,
                        "linear_attn.out_proj",
                        1,
                        self.linear_num_value_heads * self.linear_value_head_dim,
                    );
                }
            }
            match (self.moe, self.intermediate_size) {
                (Some(moe), _) => {
                    push(n, "mlp.gate", 1, h);
                    push(n, "mlp.experts.gate_up_proj", moe.num_experts, h);
                    push(
                        n,
                        "mlp.experts.down_proj",
                        moe.num_experts,
                        moe.moe_intermediate_size,
                    );
                    if let Some(is) = moe.shared_expert_intermediate_size {
                        push(n, "mlp.shared_expert.gate_proj", 1, h);
                        push(n, "mlp.shared_expert.up_proj", 1, h);
                        push(n, "mlp.shared_expert.down_proj", 1, is);
                        push(n, "mlp.shared_expert_gate", 1, h);
                    }
                }
                (None, Some(i)) => {
                    push(n, "mlp.gate_proj", 1, h);
                    push(n, "mlp.up_proj", 1, h);
                    push(n, "mlp.down_proj", 1, i);
                }
                (None, None) => {}
            }
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn dense() -> Value {
        json!({"text_config": {
            "hidden_size": 64, "num_hidden_layers": 4, "num_attention_heads": 4, "head_dim": 32,
            "linear_num_key_heads": 2, "linear_num_value_heads": 4,
            "linear_key_head_dim": 32, "linear_value_head_dim": 32, "intermediate_size": 128
        }})
    }

    #[test]
    fn layer_kinds_follow_the_interval_when_layer_types_is_absent() {
        let s = ModelShape::from_config(&dense()).unwrap();
        use LayerKind::*;
        assert_eq!(
            s.layer_kinds,
            vec![
                LinearAttention,
                LinearAttention,
                LinearAttention,
                FullAttention
            ]
        );
        assert_eq!(s.intermediate_size, Some(128));
        assert!(s.moe.is_none());
        // Top-level (text-only) configs work too.
        let flat = dense()["text_config"].clone();
        assert_eq!(ModelShape::from_config(&flat).unwrap(), s);
    }

    #[test]
    fn bad_configs_name_the_key() {
        let mut c = dense();
        c["text_config"]["linear_num_value_heads"] = json!(3);
        let err = ModelShape::from_config(&c).unwrap_err();
        assert!(err.to_string().contains("linear_num_value_heads"), "{err}");

        let mut c = dense();
        c["text_config"]
            .as_object_mut()
            .unwrap()
            .remove("hidden_size");
        let err = ModelShape::from_config(&c).unwrap_err();
        assert!(err.to_string().contains("hidden_size: missing"), "{err}");

        let mut c = dense();
        c["text_config"]["layer_types"] = json!(["linear_attention"]);
        let err = ModelShape::from_config(&c).unwrap_err();
        assert!(err.to_string().contains("layer_types"), "{err}");

        let mut c = dense();
        c["text_config"]["layer_types"] =
            json!(["linear_attention", "x", "full_attention", "full_attention"]);
        let err = ModelShape::from_config(&c).unwrap_err();
        assert!(err.to_string().contains("layer_types[1]"), "{err}");

        let mut c = dense();
        c["text_config"]["hidden_size"] = json!(-1);
        assert!(ModelShape::from_config(&c).is_err());
    }
}
