//! GGUF weight names (llama.cpp's `qwen35` / `qwen35moe` architectures) → the Hugging Face
//! modules whose *input* an imatrix entry describes.
//!
//! HF paths are relative to the text model (`model.language_model.` or `model.` omitted) and have
//! no `.weight`: `layers.3.self_attn.q_proj`. The fused expert stacks use their on-disk names
//! (`layers.N.mlp.experts.gate_up_proj`, `layers.N.mlp.experts.down_proj`), one importance row per
//! expert.
//!
//! | GGUF `blk.N.…weight` | HF `layers.N.…` | input width |
//! |---|---|---|
//! | `attn_q` / `attn_k` / `attn_v` (full attention) | `self_attn.q_proj` / `k_proj` / `v_proj` | H |
//! | `attn_qkv` on a full-attention layer (fused form) | `self_attn.q_proj`, `k_proj`, `v_proj` | H |
//! | `attn_output` | `self_attn.o_proj` | nh·hd |
//! | `attn_qkv` (GDN) | `linear_attn.in_proj_qkv` | H |
//! | `attn_gate` | `linear_attn.in_proj_z` | H |
//! | `ssm_alpha` / `ssm_beta` | `linear_attn.in_proj_a` / `in_proj_b` | H |
//! | `ssm_out` | `linear_attn.out_proj`, columns put back into HF head order | Hv·dv |
//! | `ffn_gate` / `ffn_up` / `ffn_down` | `mlp.gate_proj` / `up_proj` / `down_proj` | H, H, I |
//! | `ffn_gate_inp` | `mlp.gate` (router) | H |
//! | `ffn_gate_exps`, `ffn_up_exps` | `mlp.experts.gate_up_proj` (E rows) | H |
//! | `ffn_down_exps` | `mlp.experts.down_proj` (E rows) | Ie |
//! | `ffn_gate_shexp` / `ffn_up_shexp` / `ffn_down_shexp` | `mlp.shared_expert.gate_proj` / `up_proj` / `down_proj` | H, H, Is |
//! | `ffn_gate_inp_shexp` | `mlp.shared_expert_gate` | H |
//! | `output.weight` (only with `--process-output`) | `lm_head` | H |

use std::collections::BTreeMap;

use crate::error::{Error, Result};
use crate::heads::value_channels_gguf_to_hf;
use crate::imatrix::{Entry, Imatrix};
use crate::shape::{LayerKind, ModelShape};

/// The importance of one HF module's input.
#[derive(Debug, Clone, PartialEq)]
pub struct Importance {
    /// Mean of x² per input column, one row per expert (one row for a plain linear).
    pub per_expert: Vec<Vec<f32>>,
    /// The GGUF weight names it was computed from. Two names when two GGUF weights describe one
    /// HF tensor (`ffn_gate_exps` + `ffn_up_exps` → `experts.gate_up_proj`); the rows are then the
    /// element-wise maximum (the two are identical in llama-imatrix output, as they read the same
    /// activations).
    pub sources: Vec<String>,
    /// True when the file has no entry for this module and the importance was copied from a
    /// sibling that reads the same input (see [`Imatrix::hf_importance`]).
    pub inferred: bool,
}

/// Which width a GGUF weight's input has.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Width {
    Hidden,
    AttnHeads,
    ValueDim,
    Intermediate,
    ExpertIntermediate,
    SharedIntermediate,
}

/// Where a GGUF weight lives.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Needs {
    FullAttention,
    LinearAttention,
    DenseMlp,
    MoeMlp,
    SharedExpert,
}

/// What one GGUF weight name maps to, for a given model.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MappedName {
    /// HF module paths sharing this input (several for a fused full-attention `attn_qkv`).
    pub hf_paths: Vec<String>,
    /// Expected experts (1 for a plain linear).
    pub experts: usize,
    /// Expected input columns per expert.
    pub columns: usize,
    /// True for `ssm_out` when Hv ≠ Hk: the columns are in GGUF head order.
    pub value_head_order: bool,
    /// Which config quantity `columns` is (for messages): `hidden_size`, `num_attention_heads ×
    /// head_dim`, ...
    pub columns_from: &'static str,
}

fn kind_table(kind: &str, layer: LayerKind) -> Option<(Needs, &'static [&'static str], Width)> {
    use Needs::*;
    use Width::*;
    Some(match (kind, layer) {
        ("attn_q", _) => (FullAttention, &["self_attn.q_proj"], Hidden),
        ("attn_k", _) => (FullAttention, &["self_attn.k_proj"], Hidden),
        ("attn_v", _) => (FullAttention, &["self_attn.v_proj"], Hidden),
        ("attn_output", _) => (FullAttention, &["self_attn.o_proj"], AttnHeads),
        ("attn_qkv", LayerKind::FullAttention) => (
            FullAttention,
            &["self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj"],
            Hidden,
        ),
        ("attn_qkv", LayerKind::LinearAttention) => {
            (LinearAttention, &["linear_attn.in_proj_qkv"], Hidden)
        }
        ("attn_gate", _) => (LinearAttention, &["linear_attn.in_proj_z"], Hidden),
        ("ssm_alpha", _) => (LinearAttention, &["linear_attn.in_proj_a"], Hidden),
        ("ssm_beta", _) => (LinearAttention, &["linear_attn.in_proj_b"], Hidden),
        ("ssm_out", _) => (LinearAttention, &["linear_attn.out_proj"], ValueDim),
        ("ffn_gate", _) => (DenseMlp, &["mlp.gate_proj"], Hidden),
        ("ffn_up", _) => (DenseMlp, &["mlp.up_proj"], Hidden),
        ("ffn_down", _) => (DenseMlp, &["mlp.down_proj"], Intermediate),
        ("ffn_gate_inp", _) => (MoeMlp, &["mlp.gate"], Hidden),
        ("ffn_gate_exps", _) | ("ffn_up_exps", _) => {
            (MoeMlp, &["mlp.experts.gate_up_proj"], Hidden)
        }
        ("ffn_down_exps", _) => (MoeMlp, &["mlp.experts.down_proj"], ExpertIntermediate),
        ("ffn_gate_shexp", _) => (SharedExpert, &["mlp.shared_expert.gate_proj"], Hidden),
        ("ffn_up_shexp", _) => (SharedExpert, &["mlp.shared_expert.up_proj"], Hidden),
        ("ffn_down_shexp", _) => (
            SharedExpert,
            &["mlp.shared_expert.down_proj"],
            SharedIntermediate,
        ),
        ("ffn_gate_inp_shexp", _) => (SharedExpert, &["mlp.shared_expert_gate"], Hidden),
        _ => return None,
    })
}

fn unknown(name: &str, reason: impl Into<String>) -> Error {
    Error::UnknownTensor {
        tensor: name.to_string(),
        reason: reason.into(),
    }
}

fn misfit(name: &str, what: &str, expected: impl Into<String>, found: impl Into<String>) -> Error {
    Error::DoesNotFit {
        tensor: name.to_string(),
        what: what.to_string(),
        expected: expected.into(),
        found: found.into(),
    }
}

/// Maps one GGUF weight name (`blk.0.attn_qkv.weight`) onto `shape`, or says why it does not fit.
pub fn map_gguf_name(name: &str, shape: &ModelShape) -> Result<MappedName> {
    if name == "output.weight" {
        return Ok(MappedName {
            hf_paths: vec!["lm_head".to_string()],
            experts: 1,
            columns: shape.hidden_size,
            value_head_order: false,
            columns_from: "hidden_size",
        });
    }
    let rest = name.strip_prefix("blk.").ok_or_else(|| {
        unknown(
            name,
            "expected blk.<layer>.<weight>.weight or output.weight",
        )
    })?;
    let (layer_str, rest) = rest
        .split_once('.')
        .ok_or_else(|| unknown(name, "expected blk.<layer>.<weight>.weight"))?;
    let layer = match layer_str.parse::<usize>() {
        Ok(n) if n.to_string() == layer_str => n,
        _ => {
            return Err(unknown(
                name,
                format!("layer index {layer_str:?} is not a number"),
            ))
        }
    };
    let kind = rest
        .strip_suffix(".weight")
        .ok_or_else(|| unknown(name, "expected a name ending in .weight"))?;
    if layer >= shape.num_layers() {
        let hint = if layer == shape.num_layers() {
            " (blk.<num_hidden_layers> holds the MTP block, which is not mapped)"
        } else {
            ""
        };
        return Err(misfit(
            name,
            "layer index",
            format!("< {} (num_hidden_layers)", shape.num_layers()),
            format!("{layer}{hint}"),
        ));
    }
    let layer_kind = shape.layer_kinds[layer];
    let (needs, modules, width) = kind_table(kind, layer_kind).ok_or_else(|| {
        unknown(
            name,
            format!("{kind:?} is not a weight llama.cpp's qwen35/qwen35moe imatrix records"),
        )
    })?;

    let layer_desc = format!("layer {layer} is {}", layer_kind.config_name());
    let model_desc = if shape.moe.is_some() {
        "a MoE model"
    } else {
        "a dense model"
    };
    let mut experts = 1;
    match needs {
        Needs::FullAttention if layer_kind != LayerKind::FullAttention => {
            return Err(misfit(
                name,
                "layer kind",
                "a full_attention layer",
                layer_desc,
            ));
        }
        Needs::LinearAttention if layer_kind != LayerKind::LinearAttention => {
            return Err(misfit(
                name,
                "layer kind",
                "a linear_attention layer",
                layer_desc,
            ));
        }
        Needs::DenseMlp if shape.intermediate_size.is_none() => {
            return Err(misfit(
                name,
                "MLP kind",
                "a dense model (intermediate_size)",
                model_desc,
            ));
        }
        Needs::MoeMlp | Needs::SharedExpert if shape.moe.is_none() => {
            return Err(misfit(
                name,
                "MLP kind",
                "a MoE model (num_experts)",
                model_desc,
            ));
        }
        Needs::SharedExpert
            if shape
                .moe
                .and_then(|m| m.shared_expert_intermediate_size)
                .is_none() =>
        {
            return Err(misfit(
                name,
                "MLP kind",
                "a model with a shared expert (shared_expert_intermediate_size)",
                "no shared expert",
            ));
        }
        Needs::MoeMlp if kind.ends_with("_exps") => {
            experts = shape.moe.map_or(1, |m| m.num_experts);
        }
        _ => {}
    }

    let (columns, columns_from) = match width {
        Width::Hidden => (shape.hidden_size, "hidden_size"),
        Width::AttnHeads => (
            shape.num_attention_heads * shape.head_dim,
            "num_attention_heads × head_dim",
        ),
        Width::ValueDim => (
            shape.linear_num_value_heads * shape.linear_value_head_dim,
            "linear_num_value_heads × linear_value_head_dim",
        ),
        Width::Intermediate => (shape.intermediate_size.unwrap_or(0), "intermediate_size"),
        Width::ExpertIntermediate => (
            shape.moe.map_or(0, |m| m.moe_intermediate_size),
            "moe_intermediate_size",
        ),
        Width::SharedIntermediate => (
            shape
                .moe
                .and_then(|m| m.shared_expert_intermediate_size)
                .unwrap_or(0),
            "shared_expert_intermediate_size",
        ),
    };
    Ok(MappedName {
        hf_paths: modules
            .iter()
            .map(|m| format!("layers.{layer}.{m}"))
            .collect(),
        experts,
        columns,
        value_head_order: width == Width::ValueDim
            && shape.linear_num_value_heads != shape.linear_num_key_heads,
        columns_from,
    })
}

/// Checks an entry against its mapping and returns its per-expert importance in HF column order.
fn entry_importance(
    name: &str,
    entry: &Entry,
    m: &MappedName,
    shape: &ModelShape,
) -> Result<Vec<Vec<f32>>> {
    let mut rows = entry.importance();
    if m.experts > 1 && entry.experts() == 1 && entry.columns() == m.experts * m.columns {
        // A flattened expert stack (the legacy .dat form stores n_expert · n_in values and one
        // ncall): split it expert-major.
        rows = rows[0]
            .chunks_exact(m.columns)
            .map(<[f32]>::to_vec)
            .collect();
    } else {
        if entry.experts() != m.experts {
            let expected = if m.experts == 1 {
                "1 (not an expert stack)".to_string()
            } else {
                format!("{} (num_experts)", m.experts)
            };
            return Err(misfit(
                name,
                "experts",
                expected,
                entry.experts().to_string(),
            ));
        }
        if entry.columns() != m.columns {
            return Err(misfit(
                name,
                "input columns",
                format!("{} ({})", m.columns, m.columns_from),
                entry.columns().to_string(),
            ));
        }
    }
    if m.value_head_order {
        for row in &mut rows {
            *row = value_channels_gguf_to_hf(
                row,
                shape.linear_num_key_heads,
                shape.linear_num_value_heads,
                shape.linear_value_head_dim,
            )?;
        }
    }
    Ok(rows)
}

/// Modules of one layer that read the very same activations (every token, same channels).
fn shared_input_groups(shape: &ModelShape, kind: LayerKind) -> Vec<Vec<&'static str>> {
    let mut groups = vec![match kind {
        LayerKind::FullAttention => {
            vec!["self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj"]
        }
        LayerKind::LinearAttention => vec![
            "linear_attn.in_proj_qkv",
            "linear_attn.in_proj_z",
            "linear_attn.in_proj_a",
            "linear_attn.in_proj_b",
        ],
    }];
    match shape.moe {
        None => groups.push(vec!["mlp.gate_proj", "mlp.up_proj"]),
        Some(moe) => {
            // The router and the shared expert see every token; routed experts see a subset and
            // are not part of the group.
            let mut g = vec!["mlp.gate"];
            if moe.shared_expert_intermediate_size.is_some() {
                g.extend([
                    "mlp.shared_expert.gate_proj",
                    "mlp.shared_expert.up_proj",
                    "mlp.shared_expert_gate",
                ]);
            }
            groups.push(g);
        }
    }
    groups
}

fn max_into(acc: &mut [Vec<f32>], rows: &[Vec<f32>]) {
    for (a, r) in acc.iter_mut().zip(rows) {
        for (x, y) in a.iter_mut().zip(r) {
            *x = x.max(*y);
        }
    }
}

impl Imatrix {
    /// The importance of every HF module input the file covers, for the model `shape`.
    ///
    /// Every entry must map (see the table in [`crate::names`]); the first one (in name order)
    /// that does not — unknown name, layer index out of range, wrong layer or MLP kind, wrong
    /// expert or column count — is refused with an error naming it. `ssm_out` columns are put
    /// back into HF value-head order when Hv ≠ Hk. Zero-count experts get importance 1.0.
    ///
    /// Modules that read the same activations as a module with an entry but have none
    /// themselves (e.g. `in_proj_a`/`in_proj_b` in a file without `ssm_alpha`/`ssm_beta`) get a
    /// copy of their siblings' importance, marked [`Importance::inferred`]. The groups are
    /// {q, k, v}; {in_proj_qkv, in_proj_z, in_proj_a, in_proj_b}; {gate_proj, up_proj};
    /// {router `mlp.gate`, shared expert gate/up, `shared_expert_gate`}.
    pub fn hf_importance(&self, shape: &ModelShape) -> Result<BTreeMap<String, Importance>> {
        shape.validate()?;
        let mut out: BTreeMap<String, Importance> = BTreeMap::new();
        for (name, entry) in &self.entries {
            let m = map_gguf_name(name, shape)?;
            let rows = entry_importance(name, entry, &m, shape)?;
            for path in m.hf_paths {
                match out.get_mut(&path) {
                    Some(imp) => {
                        max_into(&mut imp.per_expert, &rows);
                        imp.sources.push(name.clone());
                    }
                    None => {
                        out.insert(
                            path,
                            Importance {
                                per_expert: rows.clone(),
                                sources: vec![name.clone()],
                                inferred: false,
                            },
                        );
                    }
                }
            }
        }

        for (layer, &kind) in shape.layer_kinds.iter().enumerate() {
            for group in shared_input_groups(shape, kind) {
                let paths: Vec<String> = group
                    .iter()
                    .map(|m| format!("layers.{layer}.{m}"))
                    .collect();
                let mut combined: Option<Importance> = None;
                for p in &paths {
                    if let Some(imp) = out.get(p) {
                        match &mut combined {
                            None => combined = Some(imp.clone()),
                            Some(c) => {
                                max_into(&mut c.per_expert, &imp.per_expert);
                                for s in &imp.sources {
                                    if !c.sources.contains(s) {
                                        c.sources.push(s.clone());
                                    }
                                }
                            }
                        }
                    }
                }
                let Some(mut combined) = combined else {
                    continue;
                };
                combined.inferred = true;
                for p in paths {
                    out.entry(p).or_insert_with(|| combined.clone());
                }
            }
        }
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::shape::MoeShape;

    fn shape(hk: usize, hv: usize) -> ModelShape {
        ModelShape {
            hidden_size: 8,
            layer_kinds: vec![LayerKind::LinearAttention, LayerKind::FullAttention],
            num_attention_heads: 2,
            head_dim: 4,
            linear_num_key_heads: hk,
            linear_num_value_heads: hv,
            linear_key_head_dim: 4,
            linear_value_head_dim: 3,
            intermediate_size: Some(16),
            moe: None,
        }
    }

    /// An imatrix whose `ssm_out` column j has in_sum2 = j and count 1.
    fn ssm_out_only(hv: usize, dv: usize) -> Imatrix {
        let mut m = Imatrix::default();
        let sums: Vec<f32> = (0..hv * dv).map(|j| j as f32).collect();
        m.insert("blk.0.ssm_out.weight", Entry::dense(sums, 1.0).unwrap());
        m
    }

    #[test]
    fn ssm_out_columns_move_to_hf_head_order() {
        // Hk = 2, Hv = 6, dv = 3: GGUF head p holds HF head perm[p] = [0, 3, 1, 4, 2, 5][p].
        let s = shape(2, 6);
        let imp = ssm_out_only(6, 3).hf_importance(&s).unwrap();
        let row = &imp["layers.0.linear_attn.out_proj"].per_expert[0];
        let perm = [0usize, 3, 1, 4, 2, 5];
        for (p, &h) in perm.iter().enumerate() {
            for i in 0..3 {
                assert_eq!(
                    row[h * 3 + i],
                    (p * 3 + i) as f32,
                    "HF head {h} channel {i}"
                );
            }
        }
        // Concretely: HF head 1 (columns 3..6) was GGUF head 2 (columns 6..9).
        assert_eq!(&row[3..6], &[6.0, 7.0, 8.0]);
        assert_eq!(imp.len(), 1);
    }

    #[test]
    fn ssm_out_is_unchanged_when_hv_equals_hk() {
        let s = shape(3, 3);
        let imp = ssm_out_only(3, 3).hf_importance(&s).unwrap();
        let row = &imp["layers.0.linear_attn.out_proj"].per_expert[0];
        let identity: Vec<f32> = (0..9).map(|j| j as f32).collect();
        assert_eq!(row, &identity);
    }

    #[test]
    fn shared_inputs_are_filled_and_marked() {
        let s = shape(2, 2);
        let mut m = Imatrix::default();
        m.insert(
            "blk.0.attn_qkv.weight",
            Entry::dense(vec![2.0; 8], 2.0).unwrap(),
        );
        m.insert(
            "blk.0.attn_gate.weight",
            Entry::dense(vec![4.0; 8], 2.0).unwrap(),
        );
        m.insert(
            "blk.1.attn_qkv.weight",
            Entry::dense(vec![3.0; 8], 1.0).unwrap(),
        );
        let imp = m.hf_importance(&s).unwrap();
        assert!(!imp["layers.0.linear_attn.in_proj_qkv"].inferred);
        let a = &imp["layers.0.linear_attn.in_proj_a"];
        assert!(a.inferred);
        assert_eq!(a.per_expert, vec![vec![2.0; 8]]);
        assert_eq!(
            a.sources,
            vec!["blk.0.attn_qkv.weight", "blk.0.attn_gate.weight"]
        );
        // A fused qkv on a full-attention layer feeds q, k and v directly.
        for p in ["q_proj", "k_proj", "v_proj"] {
            let i = &imp[&format!("layers.1.self_attn.{p}")];
            assert!(!i.inferred);
            assert_eq!(i.per_expert, vec![vec![3.0; 8]]);
        }
        assert!(!imp.contains_key("layers.1.self_attn.o_proj"));
    }

    #[test]
    fn misfits_name_the_tensor_and_values() {
        let s = shape(2, 2);
        let one = |name: &str, e: Entry| {
            let mut m = Imatrix::default();
            m.insert(name, e);
            m.hf_importance(&s).unwrap_err().to_string()
        };
        let msg = one(
            "blk.0.ffn_up.weight",
            Entry::dense(vec![1.0; 9], 1.0).unwrap(),
        );
        assert!(
            msg.contains("blk.0.ffn_up.weight")
                && msg.contains("expected 8 (hidden_size), found 9"),
            "{msg}"
        );
        let msg = one(
            "blk.2.ffn_up.weight",
            Entry::dense(vec![1.0; 8], 1.0).unwrap(),
        );
        assert!(msg.contains("layer index: expected < 2"), "{msg}");
        let msg = one(
            "blk.0.attn_q.weight",
            Entry::dense(vec![1.0; 8], 1.0).unwrap(),
        );
        assert!(msg.contains("layer 0 is linear_attention"), "{msg}");
        let msg = one(
            "blk.1.ssm_out.weight",
            Entry::dense(vec![1.0; 6], 1.0).unwrap(),
        );
        assert!(msg.contains("layer 1 is full_attention"), "{msg}");
        let msg = one(
            "blk.0.ffn_up_exps.weight",
            Entry::dense(vec![1.0; 8], 1.0).unwrap(),
        );
        assert!(msg.contains("a MoE model"), "{msg}");
        let msg = one(
            "blk.0.ffn_up.weight",
            Entry::new(vec![1.0; 16], vec![1.0; 2], 2, 8).unwrap(),
        );
        assert!(msg.contains("experts: expected 1"), "{msg}");
        let msg = one(
            "blk.0.ssm_conv1d.weight",
            Entry::dense(vec![1.0; 8], 1.0).unwrap(),
        );
        assert!(msg.contains("not a known Qwen3.5 weight"), "{msg}");
        let msg = one(
            "token_embd.weight",
            Entry::dense(vec![1.0; 8], 1.0).unwrap(),
        );
        assert!(msg.contains("token_embd.weight"), "{msg}");
        let msg = one(
            "blk.01.ffn_up.weight",
            Entry::dense(vec![1.0; 8], 1.0).unwrap(),
        );
        assert!(msg.contains("not a number"), "{msg}");
    }

    #[test]
    fn expert_stacks_map_per_expert_and_flattened_stacks_are_split() {
        let mut s = shape(2, 2);
        s.intermediate_size = None;
        s.moe = Some(MoeShape {
            num_experts: 2,
            moe_intermediate_size: 4,
            shared_expert_intermediate_size: None,
        });
        let mut m = Imatrix::default();
        m.insert(
            "blk.0.ffn_down_exps.weight",
            Entry::new((0..8).map(|x| x as f32).collect(), vec![1.0, 2.0], 2, 4).unwrap(),
        );
        // The .dat form: one row of n_expert · n_in values and one ncall.
        m.insert(
            "blk.1.ffn_down_exps.weight",
            Entry::dense((0..8).map(|x| 2.0 * x as f32).collect(), 2.0).unwrap(),
        );
        let imp = m.hf_importance(&s).unwrap();
        assert_eq!(
            imp["layers.0.mlp.experts.down_proj"].per_expert,
            vec![vec![0.0, 1.0, 2.0, 3.0], vec![2.0, 2.5, 3.0, 3.5]]
        );
        assert_eq!(
            imp["layers.1.mlp.experts.down_proj"].per_expert,
            vec![vec![0.0, 1.0, 2.0, 3.0], vec![4.0, 5.0, 6.0, 7.0]]
        );
        let mut bad = Imatrix::default();
        bad.insert(
            "blk.0.ffn_gate_exps.weight",
            Entry::new(vec![1.0; 24], vec![1.0; 3], 3, 8).unwrap(),
        );
        let msg = bad.hf_importance(&s).unwrap_err().to_string();
        assert!(
            msg.contains("experts: expected 2 (num_experts), found 3"),
            "{msg}"
        );
    }
}
