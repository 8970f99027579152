//! The architecture hyper-parameters of a Qwen3.5 text model, with presets and a string setter
//! keyed by the Hugging Face `text_config` names (what the CLI overrides go through).

use crate::error::{Error, Result};

/// The token-mixer of one decoder layer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LayerType {
    /// Gated DeltaNet (`linear_attn.*`).
    Linear,
    /// Gated softmax attention (`self_attn.*`).
    Full,
}

impl LayerType {
    /// The spelling used in `config.json`'s `layer_types`.
    pub fn config_name(self) -> &'static str {
        match self {
            LayerType::Linear => "linear_attention",
            LayerType::Full => "full_attention",
        }
    }

    /// Accepts the `config.json` spelling and the short `linear`/`full`.
    pub fn parse(s: &str) -> Option<LayerType> {
        match s.trim() {
            "linear_attention" | "linear" | "l" => Some(LayerType::Linear),
            "full_attention" | "full" | "f" => Some(LayerType::Full),
            _ => None,
        }
    }
}

/// The routed-experts part of a MoE model; `None` in [`ModelShape::moe`] means a dense SwiGLU MLP.
#[derive(Debug, Clone, PartialEq)]
pub struct MoeShape {
    pub num_experts: usize,
    pub num_experts_per_tok: usize,
    pub moe_intermediate_size: usize,
    pub shared_expert_intermediate_size: usize,
}

/// Every shape-relevant `text_config` field of a Qwen3.5 checkpoint.
#[derive(Debug, Clone, PartialEq)]
pub struct ModelShape {
    pub vocab_size: usize,
    pub hidden_size: usize,
    pub num_hidden_layers: usize,
    /// An explicit per-layer pattern. `None` derives it from `full_attention_interval`
    /// (every interval-th layer is full attention), which is how the released configs read.
    pub layer_types: Option<Vec<LayerType>>,
    pub full_attention_interval: usize,
    /// Dense MLP width; unused (and not written) when `moe` is set.
    pub intermediate_size: usize,
    pub num_attention_heads: usize,
    pub num_key_value_heads: usize,
    pub head_dim: usize,
    pub linear_num_key_heads: usize,
    pub linear_num_value_heads: usize,
    pub linear_key_head_dim: usize,
    pub linear_value_head_dim: usize,
    pub linear_conv_kernel_dim: usize,
    pub rope_theta: f64,
    pub partial_rotary_factor: f64,
    pub rms_norm_eps: f64,
    pub max_position_embeddings: usize,
    pub tie_word_embeddings: bool,
    pub moe: Option<MoeShape>,
}

/// The vocabulary every Qwen3.5 checkpoint ships: 248,077 token ids padded to 248,320 rows.
pub const QWEN35_VOCAB_SIZE: usize = 248_320;

impl ModelShape {
    /// The released Qwen3.5-0.8B text model (752M parameters, tied embeddings).
    pub fn qwen35_0_8b() -> ModelShape {
        ModelShape {
            vocab_size: QWEN35_VOCAB_SIZE,
            hidden_size: 1024,
            num_hidden_layers: 24,
            layer_types: None,
            full_attention_interval: 4,
            intermediate_size: 3584,
            num_attention_heads: 8,
            num_key_value_heads: 2,
            head_dim: 256,
            linear_num_key_heads: 16,
            linear_num_value_heads: 16,
            linear_key_head_dim: 128,
            linear_value_head_dim: 128,
            linear_conv_kernel_dim: 4,
            rope_theta: 1e7,
            partial_rotary_factor: 0.25,
            rms_norm_eps: 1e-6,
            max_position_embeddings: 262_144,
            tie_word_embeddings: true,
            moe: None,
        }
    }

    /// A demo model (about 70M parameters, most of them the real-size embedding) that keeps
    /// every structural feature: 3 GDN layers + 1 full-attention layer, GQA, Hv = 2 Hk.
    pub fn small() -> ModelShape {
        ModelShape {
            hidden_size: 256,
            num_hidden_layers: 4,
            intermediate_size: 768,
            num_attention_heads: 4,
            num_key_value_heads: 2,
            head_dim: 64,
            linear_num_key_heads: 2,
            linear_num_value_heads: 4,
            linear_key_head_dim: 64,
            linear_value_head_dim: 64,
            ..ModelShape::qwen35_0_8b()
        }
    }

    /// The shapes of the `tiny-dense` fixture (hidden 64, 8 layers, tied).
    pub fn tiny() -> ModelShape {
        ModelShape {
            hidden_size: 64,
            num_hidden_layers: 8,
            intermediate_size: 128,
            num_attention_heads: 4,
            num_key_value_heads: 2,
            head_dim: 32,
            linear_num_key_heads: 2,
            linear_num_value_heads: 4,
            linear_key_head_dim: 32,
            linear_value_head_dim: 32,
            ..ModelShape::qwen35_0_8b()
        }
    }

    /// The shapes of the `tiny-moe` fixture (8 experts, top-2, untied).
    pub fn tiny_moe() -> ModelShape {
        ModelShape {
            tie_word_embeddings: false,
            ..ModelShape::tiny().into_moe()
        }
    }

    /// Looks a preset up by its CLI name.
    pub fn preset(name: &str) -> Result<ModelShape> {
        match name {
            "0.8b" | "0.8B" | "qwen3.5-0.8b" => Ok(ModelShape::qwen35_0_8b()),
            "small" => Ok(ModelShape::small()),
            "tiny" => Ok(ModelShape::tiny()),
            "tiny-moe" => Ok(ModelShape::tiny_moe()),
            _ => Err(Error::bad_value(
                "--preset",
                name,
                "expected one of 0.8b, small, tiny, tiny-moe",
            )),
        }
    }

    /// Switches to a MoE MLP (unless already MoE): 8 experts, top-2, and expert and shared-expert
    /// widths of half the dense width, which reproduces the fixture's tiny-moe from `tiny()`.
    pub fn into_moe(mut self) -> ModelShape {
        if self.moe.is_none() {
            self.moe = Some(self.default_moe());
        }
        self
    }

    fn default_moe(&self) -> MoeShape {
        let width = (self.intermediate_size / 2).max(1);
        MoeShape {
            num_experts: 8,
            num_experts_per_tok: 2,
            moe_intermediate_size: width,
            shared_expert_intermediate_size: width,
        }
    }

    pub fn is_moe(&self) -> bool {
        self.moe.is_some()
    }

    /// The per-layer pattern, explicit or derived from `full_attention_interval`.
    pub fn layer_types(&self) -> Vec<LayerType> {
        match &self.layer_types {
            Some(types) => types.clone(),
            None => (0..self.num_hidden_layers)
                .map(|i| {
                    if self.full_attention_interval > 0
                        && (i + 1) % self.full_attention_interval == 0
                    {
                        LayerType::Full
                    } else {
                        LayerType::Linear
                    }
                })
                .collect(),
        }
    }

    /// Dimensions of attention that RoPE rotates (`head_dim · partial_rotary_factor`).
    pub fn rotary_dim(&self) -> usize {
        (self.head_dim as f64 * self.partial_rotary_factor).floor() as usize
    }

    /// M-RoPE frequency split over (temporal, height, width). With text-only positions the
    /// split has no effect on the math, so any partition of the `rotary_dim / 2` frequencies is
    /// valid; this one gives [11, 11, 10] for the released 64 rotary dims and [2, 1, 1] for 8.
    pub fn mrope_section(&self) -> [usize; 3] {
        let n = self.rotary_dim() / 2;
        let (base, rest) = (n / 3, n % 3);
        [
            base + usize::from(rest > 0),
            base + usize::from(rest > 1),
            base,
        ]
    }

    /// Channels of the GDN causal convolution: q | k | v.
    pub fn linear_conv_dim(&self) -> usize {
        2 * self.linear_num_key_heads * self.linear_key_head_dim
            + self.linear_num_value_heads * self.linear_value_head_dim
    }

    /// Checks everything an engine relies on; the error names the offending field.
    pub fn validate(&self) -> Result<()> {
        let positive = [
            ("vocab_size", self.vocab_size),
            ("hidden_size", self.hidden_size),
            ("num_hidden_layers", self.num_hidden_layers),
            ("num_attention_heads", self.num_attention_heads),
            ("num_key_value_heads", self.num_key_value_heads),
            ("head_dim", self.head_dim),
            ("linear_num_key_heads", self.linear_num_key_heads),
            ("linear_num_value_heads", self.linear_num_value_heads),
            ("linear_key_head_dim", self.linear_key_head_dim),
            ("linear_value_head_dim", self.linear_value_head_dim),
            ("linear_conv_kernel_dim", self.linear_conv_kernel_dim),
            ("max_position_embeddings", self.max_position_embeddings),
        ];
        for (field, value) in positive {
            if value == 0 {
                return Err(Error::shape(field, "must be at least 1"));
            }
        }
        if !self.is_moe() && self.intermediate_size == 0 {
            return Err(Error::shape("intermediate_size", "must be at least 1"));
        }
        if !self
            .num_attention_heads
            .is_multiple_of(self.num_key_value_heads)
        {
            return Err(Error::shape(
                "num_key_value_heads",
                format!(
                    "{} does not divide num_attention_heads {}",
                    self.num_key_value_heads, self.num_attention_heads
                ),
            ));
        }
        if !self
            .linear_num_value_heads
            .is_multiple_of(self.linear_num_key_heads)
        {
            return Err(Error::shape(
                "linear_num_key_heads",
                format!(
                    "{} does not divide linear_num_value_heads {} (each key head serves a whole \
                     group of value heads)",
                    self.linear_num_key_heads, self.linear_num_value_heads
                ),
            ));
        }
        let finite_positive = [
            ("rope_theta", self.rope_theta),
            ("partial_rotary_factor", self.partial_rotary_factor),
            ("rms_norm_eps", self.rms_norm_eps),
        ];
        for (field, value) in finite_positive {
            if !(value.is_finite() && value > 0.0) {
                return Err(Error::shape(
                    field,
                    format!("{value} is not a positive number"),
                ));
            }
        }
        if self.partial_rotary_factor > 1.0 {
            return Err(Error::shape("partial_rotary_factor", "must be at most 1"));
        }
        let rd = self.rotary_dim();
        if rd < 2 || !rd.is_multiple_of(2) {
            return Err(Error::shape(
                "partial_rotary_factor",
                format!(
                    "head_dim {} x {} gives {rd} rotary dims; RoPE needs an even number of at \
                     least 2",
                    self.head_dim, self.partial_rotary_factor
                ),
            ));
        }
        let types = self.layer_types();
        if types.len() != self.num_hidden_layers {
            return Err(Error::shape(
                "layer_types",
                format!(
                    "has {} entries for num_hidden_layers {}",
                    types.len(),
                    self.num_hidden_layers
                ),
            ));
        }
        if self.layer_types.is_none() && self.full_attention_interval == 0 {
            return Err(Error::shape(
                "full_attention_interval",
                "must be at least 1",
            ));
        }
        if let Some(moe) = &self.moe {
            for (field, value) in [
                ("num_experts", moe.num_experts),
                ("num_experts_per_tok", moe.num_experts_per_tok),
                ("moe_intermediate_size", moe.moe_intermediate_size),
                (
                    "shared_expert_intermediate_size",
                    moe.shared_expert_intermediate_size,
                ),
            ] {
                if value == 0 {
                    return Err(Error::shape(field, "must be at least 1"));
                }
            }
            if moe.num_experts_per_tok > moe.num_experts {
                return Err(Error::shape(
                    "num_experts_per_tok",
                    format!(
                        "{} exceeds num_experts {}",
                        moe.num_experts_per_tok, moe.num_experts
                    ),
                ));
            }
        }
        Ok(())
    }

    /// Sets one field from text, by its `text_config` name. Setting a MoE field on a dense
    /// shape turns it into a MoE one (see [`ModelShape::into_moe`] for the other defaults).
    /// `layer_types` takes a comma-separated list (`linear,linear,full`); setting
    /// `num_hidden_layers` or `full_attention_interval` drops an explicit pattern only if its
    /// length no longer fits, so `layer_types` can be given before or after the layer count.
    pub fn set(&mut self, key: &str, value: &str) -> Result<()> {
        let field = key.trim_start_matches('-').replace('-', "_");
        let uint = |v: &str| -> Result<usize> {
            v.trim()
                .replace('_', "")
                .parse::<usize>()
                .map_err(|_| Error::bad_value(key, v, "expected a non-negative integer"))
        };
        let float = |v: &str| -> Result<f64> {
            match v.trim().parse::<f64>() {
                Ok(x) if x.is_finite() => Ok(x),
                _ => Err(Error::bad_value(key, v, "expected a number")),
            }
        };
        let boolean = |v: &str| -> Result<bool> {
            match v.trim() {
                "true" | "1" | "yes" => Ok(true),
                "false" | "0" | "no" => Ok(false),
                _ => Err(Error::bad_value(key, v, "expected true or false")),
            }
        };
        match field.as_str() {
            "vocab_size" => self.vocab_size = uint(value)?,
            "hidden_size" => self.hidden_size = uint(value)?,
            "num_hidden_layers" => {
                self.num_hidden_layers = uint(value)?;
                if self
                    .layer_types
                    .as_ref()
                    .is_some_and(|t| t.len() != self.num_hidden_layers)
                {
                    self.layer_types = None;
                }
            }
            "full_attention_interval" => {
                self.full_attention_interval = uint(value)?;
                self.layer_types = None;
            }
            "layer_types" => {
                let types = value
                    .split(',')
                    .filter(|s| !s.trim().is_empty())
                    .map(|s| {
                        LayerType::parse(s).ok_or_else(|| {
                            Error::bad_value(
                                key,
                                value,
                                format!(
                                    "`{}` is neither linear_attention nor full_attention",
                                    s.trim()
                                ),
                            )
                        })
                    })
                    .collect::<Result<Vec<_>>>()?;
                if types.is_empty() {
                    return Err(Error::bad_value(key, value, "the list is empty"));
                }
                self.num_hidden_layers = types.len();
                self.layer_types = Some(types);
            }
            "intermediate_size" => self.intermediate_size = uint(value)?,
            "num_attention_heads" => self.num_attention_heads = uint(value)?,
            "num_key_value_heads" => self.num_key_value_heads = uint(value)?,
            "head_dim" => self.head_dim = uint(value)?,
            "linear_num_key_heads" => self.linear_num_key_heads = uint(value)?,
            "linear_num_value_heads" => self.linear_num_value_heads = uint(value)?,
            "linear_key_head_dim" => self.linear_key_head_dim = uint(value)?,
            "linear_value_head_dim" => self.linear_value_head_dim = uint(value)?,
            "linear_conv_kernel_dim" => self.linear_conv_kernel_dim = uint(value)?,
            "rope_theta" => self.rope_theta = float(value)?,
            "partial_rotary_factor" => self.partial_rotary_factor = float(value)?,
            "rms_norm_eps" => self.rms_norm_eps = float(value)?,
            "max_position_embeddings" => self.max_position_embeddings = uint(value)?,
            "tie_word_embeddings" => self.tie_word_embeddings = boolean(value)?,
            "num_experts" => self.moe_mut().num_experts = uint(value)?,
            "num_experts_per_tok" => self.moe_mut().num_experts_per_tok = uint(value)?,
            "moe_intermediate_size" => self.moe_mut().moe_intermediate_size = uint(value)?,
            "shared_expert_intermediate_size" => {
                self.moe_mut().shared_expert_intermediate_size = uint(value)?
            }
            _ => return Err(Error::UnknownField(key.to_string())),
        }
        Ok(())
    }

    fn moe_mut(&mut self) -> &mut MoeShape {
        let default = self.default_moe();
        self.moe.get_or_insert(default)
    }

    /// The names [`ModelShape::set`] accepts.
    pub const FIELDS: &'static [&'static str] = &[
        "vocab_size",
        "hidden_size",
        "num_hidden_layers",
        "layer_types",
        "full_attention_interval",
        "intermediate_size",
        "num_attention_heads",
        "num_key_value_heads",
        "head_dim",
        "linear_num_key_heads",
        "linear_num_value_heads",
        "linear_key_head_dim",
        "linear_value_head_dim",
        "linear_conv_kernel_dim",
        "rope_theta",
        "partial_rotary_factor",
        "rms_norm_eps",
        "max_position_embeddings",
        "tie_word_embeddings",
        "num_experts",
        "num_experts_per_tok",
        "moe_intermediate_size",
        "shared_expert_intermediate_size",
    ];
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn released_pattern_is_three_linear_then_one_full() {
        let types = ModelShape::qwen35_0_8b().layer_types();
        assert_eq!(types.len(), 24);
        for (i, t) in types.iter().enumerate() {
            let expect = if i % 4 == 3 {
                LayerType::Full
            } else {
                LayerType::Linear
            };
            assert_eq!(*t, expect, "layer {i}");
        }
    }

    #[test]
    fn mrope_section_sums_to_the_rotary_frequencies() {
        assert_eq!(ModelShape::qwen35_0_8b().mrope_section(), [11, 11, 10]);
        assert_eq!(ModelShape::tiny().mrope_section(), [2, 1, 1]);
        let mut s = ModelShape::tiny();
        s.head_dim = 40; // 10 rotary dims, 5 frequencies
        assert_eq!(s.mrope_section().iter().sum::<usize>(), 5);
    }

    #[test]
    fn presets_are_valid() {
        for s in [
            ModelShape::qwen35_0_8b(),
            ModelShape::small(),
            ModelShape::tiny(),
            ModelShape::tiny_moe(),
            ModelShape::qwen35_0_8b().into_moe(),
        ] {
            s.validate().unwrap();
        }
        assert!(ModelShape::preset("7b").is_err());
    }

    #[test]
    fn set_parses_and_rejects() {
        let mut s = ModelShape::tiny();
        s.set("hidden_size", "128").unwrap();
        assert_eq!(s.hidden_size, 128);
        s.set("--rms-norm-eps", "1e-5").unwrap();
        assert_eq!(s.rms_norm_eps, 1e-5);
        s.set("layer_types", "full,linear,linear").unwrap();
        assert_eq!(s.num_hidden_layers, 3);
        assert_eq!(s.layer_types()[0], LayerType::Full);
        s.set("num_experts", "4").unwrap();
        assert_eq!(s.moe.as_ref().unwrap().num_experts, 4);
        assert_eq!(s.hidden_size, 128, "turning MoE on keeps the other fields");
        s.set("tie_word_embeddings", "false").unwrap();
        assert!(!s.tie_word_embeddings);

        let err = s.set("hidden_size", "big").unwrap_err().to_string();
        assert!(err.contains("hidden_size") && err.contains("big"), "{err}");
        assert!(matches!(s.set("nope", "1"), Err(Error::UnknownField(_))));
        assert!(s.set("layer_types", "linear,dense").is_err());
    }

    #[test]
    fn validate_names_the_field() {
        let mut s = ModelShape::tiny();
        s.linear_num_value_heads = 3;
        let err = s.validate().unwrap_err().to_string();
        assert!(err.contains("linear_num_key_heads"), "{err}");

        let mut s = ModelShape::tiny();
        s.layer_types = Some(vec![LayerType::Full]);
        assert!(s
            .validate()
            .unwrap_err()
            .to_string()
            .contains("layer_types"));

        let mut s = ModelShape::tiny();
        s.partial_rotary_factor = 0.01;
        assert!(s
            .validate()
            .unwrap_err()
            .to_string()
            .contains("partial_rotary_factor"));
    }
}
