//! The tensor list of a Qwen3.5 checkpoint in the Hugging Face `*ForConditionalGeneration`
//! layout: names, shapes, dtypes and how each is initialised. Known completely before a byte is
//! written, which is what lets the writer emit every safetensors header first.

use crate::shape::{LayerType, ModelShape};
use crate::weights::{DType, Init};

/// One tensor of the checkpoint.
#[derive(Debug, Clone, PartialEq)]
pub struct TensorSpec {
    pub name: String,
    pub shape: Vec<usize>,
    pub dtype: DType,
    pub init: Init,
}

impl TensorSpec {
    pub fn numel(&self) -> usize {
        self.shape.iter().product()
    }

    pub fn nbytes(&self) -> u64 {
        (self.numel() * self.dtype.size()) as u64
    }
}

const PREFIX: &str = "model.language_model.";

/// Every tensor, in model order (embedding, layers, final norm, head). `std` is the standard
/// deviation of the normal-initialised matrices.
pub fn tensor_specs(shape: &ModelShape, std: f32) -> Vec<TensorSpec> {
    let mut out = Vec::new();
    let h = shape.hidden_size;
    let normal = Init::Normal { std };
    let mut push = |name: String, dims: &[usize], dtype: DType, init: Init| {
        out.push(TensorSpec {
            name,
            shape: dims.to_vec(),
            dtype,
            init,
        });
    };
    let bf16 = DType::BF16;

    push(
        format!("{PREFIX}embed_tokens.weight"),
        &[shape.vocab_size, h],
        bf16,
        normal,
    );
    for (i, kind) in shape.layer_types().into_iter().enumerate() {
        let p = format!("{PREFIX}layers.{i}.");
        push(
            format!("{p}input_layernorm.weight"),
            &[h],
            bf16,
            Init::ZeroCentredNorm,
        );
        match kind {
            LayerType::Full => {
                let (nh, nkv, hd) = (
                    shape.num_attention_heads,
                    shape.num_key_value_heads,
                    shape.head_dim,
                );
                let a = format!("{p}self_attn.");
                // q_proj carries the query and the output gate of every head.
                push(format!("{a}q_proj.weight"), &[2 * nh * hd, h], bf16, normal);
                push(format!("{a}k_proj.weight"), &[nkv * hd, h], bf16, normal);
                push(format!("{a}v_proj.weight"), &[nkv * hd, h], bf16, normal);
                push(format!("{a}o_proj.weight"), &[h, nh * hd], bf16, normal);
                push(
                    format!("{a}q_norm.weight"),
                    &[hd],
                    bf16,
                    Init::ZeroCentredNorm,
                );
                push(
                    format!("{a}k_norm.weight"),
                    &[hd],
                    bf16,
                    Init::ZeroCentredNorm,
                );
            }
            LayerType::Linear => {
                let hv = shape.linear_num_value_heads;
                let value_dim = hv * shape.linear_value_head_dim;
                let a = format!("{p}linear_attn.");
                push(
                    format!("{a}in_proj_qkv.weight"),
                    &[shape.linear_conv_dim(), h],
                    bf16,
                    normal,
                );
                push(
                    format!("{a}in_proj_z.weight"),
                    &[value_dim, h],
                    bf16,
                    normal,
                );
                push(format!("{a}in_proj_b.weight"), &[hv, h], bf16, normal);
                push(format!("{a}in_proj_a.weight"), &[hv, h], bf16, normal);
                push(
                    format!("{a}conv1d.weight"),
                    &[shape.linear_conv_dim(), 1, shape.linear_conv_kernel_dim],
                    bf16,
                    normal,
                );
                push(format!("{a}dt_bias"), &[hv], bf16, Init::DtBias);
                // Released checkpoints keep A_log in float32; engines read it as such.
                push(format!("{a}A_log"), &[hv], DType::F32, Init::ALog);
                push(
                    format!("{a}norm.weight"),
                    &[shape.linear_value_head_dim],
                    bf16,
                    Init::GatedNorm,
                );
                push(format!("{a}out_proj.weight"), &[h, value_dim], bf16, normal);
            }
        }
        push(
            format!("{p}post_attention_layernorm.weight"),
            &[h],
            bf16,
            Init::ZeroCentredNorm,
        );
        let m = format!("{p}mlp.");
        match &shape.moe {
            None => {
                let i = shape.intermediate_size;
                push(format!("{m}gate_proj.weight"), &[i, h], bf16, normal);
                push(format!("{m}up_proj.weight"), &[i, h], bf16, normal);
                push(format!("{m}down_proj.weight"), &[h, i], bf16, normal);
            }
            Some(moe) => {
                let (e, ie, is) = (
                    moe.num_experts,
                    moe.moe_intermediate_size,
                    moe.shared_expert_intermediate_size,
                );
                push(format!("{m}gate.weight"), &[e, h], bf16, normal);
                // Fused as transformers v5 stores them: gate rows first, then up rows.
                push(
                    format!("{m}experts.gate_up_proj"),
                    &[e, 2 * ie, h],
                    bf16,
                    normal,
                );
                push(format!("{m}experts.down_proj"), &[e, h, ie], bf16, normal);
                push(
                    format!("{m}shared_expert.gate_proj.weight"),
                    &[is, h],
                    bf16,
                    normal,
                );
                push(
                    format!("{m}shared_expert.up_proj.weight"),
                    &[is, h],
                    bf16,
                    normal,
                );
                push(
                    format!("{m}shared_expert.down_proj.weight"),
                    &[h, is],
                    bf16,
                    normal,
                );
                push(
                    format!("{m}shared_expert_gate.weight"),
                    &[1, h],
                    bf16,
                    normal,
                );
            }
        }
    }
    push(
        format!("{PREFIX}norm.weight"),
        &[h],
        bf16,
        Init::ZeroCentredNorm,
    );
    if !shape.tie_word_embeddings {
        push(
            "lm_head.weight".to_string(),
            &[shape.vocab_size, h],
            bf16,
            normal,
        );
    }
    out
}

/// Total number of stored values.
pub fn parameter_count(specs: &[TensorSpec]) -> u64 {
    specs.iter().map(|t| t.numel() as u64).sum()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_0_8b_has_the_released_parameter_count() {
        let specs = tensor_specs(&ModelShape::qwen35_0_8b(), 0.02);
        // 752M text parameters; the released 0.8B's remainder is the vision tower and MTP.
        let n = parameter_count(&specs);
        assert!((752_000_000..753_000_000).contains(&n), "{n}");
        assert_eq!(specs.iter().filter(|t| t.dtype == DType::F32).count(), 18);
    }

    #[test]
    fn untied_adds_lm_head_only() {
        let mut s = ModelShape::tiny();
        let tied = tensor_specs(&s, 0.02);
        s.tie_word_embeddings = false;
        let untied = tensor_specs(&s, 0.02);
        assert_eq!(untied.len(), tied.len() + 1);
        assert_eq!(untied.last().unwrap().name, "lm_head.weight");
    }
}
