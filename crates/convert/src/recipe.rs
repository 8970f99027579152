//! Which bits each quantizable module gets: uniform (mlx-lm's default predicate), mlx-lm's
//! `mixed_*` recipes, and the Unsloth Dynamic ladder as this project builds it.
//!
//! Modules are named by their MLX path without `.weight`
//! (`language_model.model.layers.3.self_attn.q_proj`), the keys `config.json`'s `quantization`
//! uses.

use mlx_node_core::error::{fail, ErrorCode, Result};

/// What a module becomes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Choice {
    /// Affine quantization with these bits and group size.
    Quantize { bits: u32, group_size: u32 },
    /// Stays a float tensor in the output dtype.
    Keep,
}

/// The tensor classes the recipes speak about (and the summary table lists).
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum TensorClass {
    Embedding,
    LmHead,
    AttentionQkv,
    AttentionOutput,
    LinearQkvZ,
    LinearAB,
    LinearOutput,
    MlpGateUp,
    MlpDown,
    ExpertGateUp,
    ExpertDown,
    SharedExpertGateUp,
    SharedExpertDown,
    Router,
    SharedExpertGate,
    /// Everything that is never quantized: norms, conv1d, `A_log`, `dt_bias`.
    Other,
}

impl TensorClass {
    /// Classifies an MLX module path (without `.weight`).
    pub fn of(module: &str) -> TensorClass {
        let last = module.rsplit('.').next().unwrap_or(module);
        let has = |s: &str| module.contains(s);
        match last {
            "embed_tokens" => TensorClass::Embedding,
            "lm_head" => TensorClass::LmHead,
            "q_proj" | "k_proj" | "v_proj" if has(".self_attn.") => TensorClass::AttentionQkv,
            "o_proj" if has(".self_attn.") => TensorClass::AttentionOutput,
            "in_proj_qkv" | "in_proj_z" => TensorClass::LinearQkvZ,
            "in_proj_a" | "in_proj_b" => TensorClass::LinearAB,
            "out_proj" if has(".linear_attn.") => TensorClass::LinearOutput,
            "gate_proj" | "up_proj" if has(".switch_mlp.") => TensorClass::ExpertGateUp,
            "down_proj" if has(".switch_mlp.") => TensorClass::ExpertDown,
            "gate_proj" | "up_proj" if has(".shared_expert.") => TensorClass::SharedExpertGateUp,
            "down_proj" if has(".shared_expert.") => TensorClass::SharedExpertDown,
            "gate_proj" | "up_proj" if has(".mlp.") => TensorClass::MlpGateUp,
            "down_proj" if has(".mlp.") => TensorClass::MlpDown,
            "gate" if has(".mlp.") => TensorClass::Router,
            "shared_expert_gate" => TensorClass::SharedExpertGate,
            _ => TensorClass::Other,
        }
    }

    /// True for the modules MLX can quantize (Linear, Embedding, SwitchLinear).
    pub fn quantizable(self) -> bool {
        self != TensorClass::Other
    }

    /// The label of the summary table and the model card.
    pub fn label(self) -> &'static str {
        match self {
            TensorClass::Embedding => "embed_tokens",
            TensorClass::LmHead => "lm_head",
            TensorClass::AttentionQkv => "self_attn.q/k/v_proj",
            TensorClass::AttentionOutput => "self_attn.o_proj",
            TensorClass::LinearQkvZ => "linear_attn.in_proj_qkv/z",
            TensorClass::LinearAB => "linear_attn.in_proj_a/b",
            TensorClass::LinearOutput => "linear_attn.out_proj",
            TensorClass::MlpGateUp => "mlp.gate_proj/up_proj",
            TensorClass::MlpDown => "mlp.down_proj",
            TensorClass::ExpertGateUp => "experts gate/up (switch_mlp)",
            TensorClass::ExpertDown => "experts down (switch_mlp)",
            TensorClass::SharedExpertGateUp => "shared_expert.gate/up_proj",
            TensorClass::SharedExpertDown => "shared_expert.down_proj",
            TensorClass::Router => "router mlp.gate",
            TensorClass::SharedExpertGate => "mlp.shared_expert_gate",
            TensorClass::Other => "norms, conv1d, A_log, dt_bias",
        }
    }
}

/// A quantization recipe.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Recipe {
    /// Every quantizable module at `bits`, except MoE router gates at 8 bits (group 64), as
    /// mlx-lm's Qwen3.5 predicate does.
    Uniform { bits: u32 },
    /// mlx-lm's `mixed_<low>_<high>`: `v_proj` and `down_proj` of some layers and `lm_head` at
    /// `high`, everything else (router gates included) at `low`.
    Mixed { low: u32, high: u32 },
    /// The Unsloth Dynamic ladder on base bits `base` (UD-Q<base>_K_XL).
    Unsloth { base: u32 },
}

/// MLX's affine widths.
pub const SUPPORTED_BITS: [u32; 6] = [2, 3, 4, 5, 6, 8];
pub const SUPPORTED_GROUPS: [u32; 3] = [32, 64, 128];

impl Recipe {
    /// Builds a recipe from the CLI's names: `None` = uniform, or one of `unsloth`,
    /// `mixed_2_6`, `mixed_3_4`, `mixed_3_6`, `mixed_4_6`. `bits` is the uniform width or
    /// the Unsloth base (defaults 4 and 3); the mixed recipes fix their own widths.
    pub fn from_name(name: Option<&str>, bits: Option<u32>) -> Result<Recipe> {
        let recipe = match name {
            None | Some("uniform") => Recipe::Uniform {
                bits: bits.unwrap_or(4),
            },
            Some("unsloth") => Recipe::Unsloth {
                base: bits.unwrap_or(3),
            },
            Some("mixed_2_6") => Recipe::Mixed { low: 2, high: 6 },
            Some("mixed_3_4") => Recipe::Mixed { low: 3, high: 4 },
            Some("mixed_3_6") => Recipe::Mixed { low: 3, high: 6 },
            Some("mixed_4_6") => Recipe::Mixed { low: 4, high: 6 },
            Some(other) => {
                return fail(
                    ErrorCode::InvalidArgument,
                    format!(
                        "--q-recipe: unknown recipe `{other}` (expected unsloth, mixed_2_6, \
                         mixed_3_4, mixed_3_6 or mixed_4_6)"
                    ),
                )
            }
        };
        match recipe {
            Recipe::Uniform { bits } | Recipe::Unsloth { base: bits }
                if !SUPPORTED_BITS.contains(&bits) =>
            {
                let hint = if bits == 7 {
                    " (MLX has no 7-bit quantization, so there is no UD-Q7_K_XL)"
                } else {
                    ""
                };
                fail(
                    ErrorCode::InvalidArgument,
                    format!("--q-bits: {bits} is not one of 2, 3, 4, 5, 6, 8{hint}"),
                )
            }
            Recipe::Mixed { .. } if bits.is_some() => fail(
                ErrorCode::InvalidArgument,
                "--q-bits: the mixed_* recipes fix their own widths; leave --q-bits out",
            ),
            r => Ok(r),
        }
    }

    /// The name the model card and `config.json` readers see.
    pub fn name(&self) -> String {
        match self {
            Recipe::Uniform { bits } => format!("uniform {bits}-bit"),
            Recipe::Mixed { low, high } => format!("mixed_{low}_{high}"),
            Recipe::Unsloth { base } => format!("unsloth (UD-Q{base}_K_XL)"),
        }
    }

    /// The top-level bits of `config.json`'s `quantization`.
    pub fn default_bits(&self) -> u32 {
        match *self {
            Recipe::Uniform { bits } => bits,
            Recipe::Mixed { low, .. } => low,
            Recipe::Unsloth { base } => base,
        }
    }

    /// What `module` (an MLX path) becomes. `layer` is its decoder layer (None outside the
    /// stack), `layers` the stack's depth, `input_dim` the size of the axis groups run along.
    pub fn choose(
        &self,
        module: &str,
        layer: Option<usize>,
        layers: usize,
        input_dim: usize,
        group_size: u32,
    ) -> Choice {
        let class = TensorClass::of(module);
        if !class.quantizable() {
            return Choice::Keep;
        }
        let choice = match *self {
            Recipe::Uniform { bits } => match class {
                TensorClass::Router | TensorClass::SharedExpertGate => Choice::Quantize {
                    bits: 8,
                    group_size: 64,
                },
                _ => Choice::Quantize { bits, group_size },
            },
            Recipe::Mixed { low, high } => {
                let i = layer.unwrap_or(0);
                let eighth = layers / 8;
                let more = i < eighth || i >= 7 * layers / 8 || (i - eighth) % 3 == 2;
                let high_here = match class {
                    TensorClass::LmHead => true,
                    TensorClass::AttentionQkv => module.ends_with(".v_proj") && more,
                    TensorClass::MlpDown
                    | TensorClass::ExpertDown
                    | TensorClass::SharedExpertDown => more,
                    _ => false,
                };
                Choice::Quantize {
                    bits: if high_here { high } else { low },
                    group_size,
                }
            }
            Recipe::Unsloth { base } => {
                let at = |bits: u32| Choice::Quantize {
                    bits: snap(bits),
                    group_size,
                };
                match class {
                    TensorClass::Embedding
                    | TensorClass::AttentionQkv
                    | TensorClass::LinearQkvZ => at(base + 2),
                    TensorClass::LmHead => at(base + 3),
                    TensorClass::AttentionOutput
                    | TensorClass::LinearOutput
                    | TensorClass::LinearAB => Choice::Keep,
                    TensorClass::Router | TensorClass::SharedExpertGate => Choice::Quantize {
                        bits: 8,
                        group_size: 64,
                    },
                    TensorClass::MlpDown
                    | TensorClass::ExpertDown
                    | TensorClass::SharedExpertDown => at(base + 1),
                    _ => at(base),
                }
            }
        };
        match choice {
            Choice::Quantize { group_size, .. }
                if !input_dim.is_multiple_of(group_size as usize) =>
            {
                Choice::Keep
            }
            c => c,
        }
    }
}

/// MLX has no 7-bit (and nothing above 8): round a ladder step onto a width it has.
fn snap(bits: u32) -> u32 {
    match bits {
        0..=2 => 2,
        3..=6 => bits,
        _ => 8,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const G: u32 = 64;

    fn bits(recipe: &Recipe, module: &str, layer: Option<usize>, layers: usize) -> Option<u32> {
        match recipe.choose(module, layer, layers, 4096, G) {
            Choice::Quantize { bits, .. } => Some(bits),
            Choice::Keep => None,
        }
    }

    fn layer(i: usize, rest: &str) -> String {
        format!("language_model.model.layers.{i}.{rest}")
    }

    #[test]
    fn unsloth_ladder_matches_the_table_for_every_base() {
        // Rows of the recipe table (docs/quantization.md §2.3, older version: o_proj,
        // out_proj and in_proj_a/b kept): B = 2, 3, 4, 5, 6, 8.
        let table: [(&str, [Option<u32>; 6]); 15] = [
            (
                "language_model.model.embed_tokens",
                [Some(4), Some(5), Some(6), Some(8), Some(8), Some(8)],
            ),
            (
                "language_model.lm_head",
                [Some(5), Some(6), Some(8), Some(8), Some(8), Some(8)],
            ),
            (
                "self_attn.q_proj",
                [Some(4), Some(5), Some(6), Some(8), Some(8), Some(8)],
            ),
            (
                "self_attn.v_proj",
                [Some(4), Some(5), Some(6), Some(8), Some(8), Some(8)],
            ),
            (
                "linear_attn.in_proj_qkv",
                [Some(4), Some(5), Some(6), Some(8), Some(8), Some(8)],
            ),
            (
                "linear_attn.in_proj_z",
                [Some(4), Some(5), Some(6), Some(8), Some(8), Some(8)],
            ),
            ("self_attn.o_proj", [None; 6]),
            ("linear_attn.out_proj", [None; 6]),
            ("linear_attn.in_proj_a", [None; 6]),
            (
                "mlp.gate_proj",
                [Some(2), Some(3), Some(4), Some(5), Some(6), Some(8)],
            ),
            (
                "mlp.down_proj",
                [Some(3), Some(4), Some(5), Some(6), Some(8), Some(8)],
            ),
            (
                "mlp.switch_mlp.up_proj",
                [Some(2), Some(3), Some(4), Some(5), Some(6), Some(8)],
            ),
            (
                "mlp.shared_expert.down_proj",
                [Some(3), Some(4), Some(5), Some(6), Some(8), Some(8)],
            ),
            ("mlp.gate", [Some(8); 6]),
            ("mlp.shared_expert_gate", [Some(8); 6]),
        ];
        for (i, base) in [2, 3, 4, 5, 6, 8].into_iter().enumerate() {
            let r = Recipe::from_name(Some("unsloth"), Some(base)).unwrap();
            for (module, row) in &table {
                let path = if module.starts_with("language_model") {
                    module.to_string()
                } else {
                    layer(5, module)
                };
                assert_eq!(
                    bits(&r, &path, Some(5), 24),
                    row[i],
                    "{path} at base {base}"
                );
            }
        }
    }

    #[test]
    fn unsloth_router_is_8_bit_group_64_whatever_the_group() {
        let r = Recipe::Unsloth { base: 3 };
        assert_eq!(
            r.choose(&layer(0, "mlp.gate"), Some(0), 8, 4096, 128),
            Choice::Quantize {
                bits: 8,
                group_size: 64
            }
        );
        assert_eq!(
            r.choose(&layer(0, "mlp.up_proj"), Some(0), 8, 4096, 128),
            Choice::Quantize {
                bits: 3,
                group_size: 128
            }
        );
    }

    #[test]
    fn seven_bits_and_unknown_recipes_are_refused() {
        let e = Recipe::from_name(Some("unsloth"), Some(7)).unwrap_err();
        assert!(e.message.contains("7-bit"), "{}", e.message);
        assert_eq!(e.code, ErrorCode::InvalidArgument);
        assert!(Recipe::from_name(Some("mixed_5_9"), None).is_err());
        assert!(Recipe::from_name(None, Some(1)).is_err());
        assert!(Recipe::from_name(Some("mixed_3_6"), Some(4)).is_err());
        assert_eq!(
            Recipe::from_name(Some("unsloth"), None).unwrap(),
            Recipe::Unsloth { base: 3 }
        );
        assert_eq!(
            Recipe::from_name(None, None).unwrap(),
            Recipe::Uniform { bits: 4 }
        );
    }

    #[test]
    fn mixed_recipes_promote_the_layers_mlx_lm_promotes() {
        // docs/quantization.md §1.5: L = 24 → {0,1,2, 5,8,11,14,17,20, 21,22,23}.
        let r = Recipe::Mixed { low: 3, high: 6 };
        let high: Vec<usize> = (0..24)
            .filter(|&i| bits(&r, &layer(i, "mlp.down_proj"), Some(i), 24) == Some(6))
            .collect();
        assert_eq!(high, vec![0, 1, 2, 5, 8, 11, 14, 17, 20, 21, 22, 23]);
        let high40: Vec<usize> = (0..40)
            .filter(|&i| bits(&r, &layer(i, "self_attn.v_proj"), Some(i), 40) == Some(6))
            .collect();
        let mut want: Vec<usize> = (0..5).collect();
        want.extend((7..35).step_by(3));
        want.extend(35..40);
        assert_eq!(high40, want);
        // Only v_proj among the attention projections, and the router at the low width.
        assert_eq!(
            bits(&r, &layer(0, "self_attn.q_proj"), Some(0), 24),
            Some(3)
        );
        assert_eq!(bits(&r, &layer(0, "mlp.gate"), Some(0), 24), Some(3));
        assert_eq!(bits(&r, "language_model.lm_head", None, 24), Some(6));
        assert_eq!(
            bits(&r, "language_model.model.embed_tokens", None, 24),
            Some(3)
        );
    }

    #[test]
    fn uniform_keeps_router_gates_at_8_bits_like_mlx_lm() {
        let r = Recipe::Uniform { bits: 4 };
        assert_eq!(bits(&r, &layer(1, "mlp.gate"), Some(1), 8), Some(8));
        assert_eq!(
            bits(&r, &layer(1, "mlp.shared_expert_gate"), Some(1), 8),
            Some(8)
        );
        assert_eq!(
            bits(&r, &layer(1, "linear_attn.out_proj"), Some(1), 8),
            Some(4)
        );
        assert_eq!(bits(&r, &layer(1, "linear_attn.conv1d"), Some(1), 8), None);
        assert_eq!(bits(&r, &layer(1, "input_layernorm"), Some(1), 8), None);
    }

    #[test]
    fn inputs_the_group_does_not_divide_stay_float() {
        let r = Recipe::Uniform { bits: 4 };
        assert_eq!(
            r.choose(&layer(0, "mlp.down_proj"), Some(0), 8, 96, 64),
            Choice::Keep
        );
        assert_eq!(
            r.choose(&layer(0, "mlp.down_proj"), Some(0), 8, 96, 32),
            Choice::Quantize {
                bits: 4,
                group_size: 32
            }
        );
    }
}
