//! AWQ-style pre-scaling from an importance matrix: important input channels of a group of
//! linears are scaled up (and so quantized more finely) and the producer of their shared input
//! divides by the same factors, so the float model computes the same function.
//!
//! Groups, per layer (all exact identities, docs/quantization.md §5.3–5.4):
//! * `input_layernorm` → `self_attn.{q,k,v}_proj` (full attention), or
//!   `linear_attn.{in_proj_qkv, in_proj_z}` with `in_proj_a`/`in_proj_b` compensated (GDN);
//! * `post_attention_layernorm` → `mlp.{gate,up}_proj` (dense), or for MoE the router
//!   `mlp.gate`, every expert's gate and up, the shared expert's gate and up and
//!   `shared_expert_gate`;
//! * `up_proj` rows → `down_proj` columns (dense, each expert on its own, the shared expert).
//!
//! Scales: `a = max(importance, 1e-8)^0.5`, `s = a / sqrt(max a · min a)` (so max·min = 1),
//! importance = `in_sum2 / counts`, element-wise maximum over the group's consumers.

use std::collections::{BTreeMap, HashMap};
use std::path::Path;
use std::sync::Arc;

use mlx_node_core::config::LayerKind;
use mlx_node_core::error::{fail, Error, ErrorCode, Result};
use mlx_node_imatrix::{Imatrix, Importance, ModelShape};
use mlx_rs::{ops, Array};

use crate::source::Source;

/// Per-channel factors: `rows` vectors (one per expert, or one) of `len` values.
#[derive(Clone, Debug, PartialEq)]
pub struct Scales {
    pub rows: usize,
    pub len: usize,
    pub values: Vec<f32>,
}

impl Scales {
    fn row(&self, r: usize) -> &[f32] {
        &self.values[r * self.len..(r + 1) * self.len]
    }
}

/// One change AWQ makes to a tensor.
#[derive(Clone, Debug)]
pub enum Scaling {
    /// Multiply input column j by s_j (per expert when `rows` > 1).
    Columns(Arc<Scales>),
    /// Divide output row j by s_j (per expert when `rows` > 1).
    Rows(Arc<Scales>),
    /// Divide a norm weight (in the MLX form, `1 + w`) by s.
    Norm(Arc<Scales>),
}

/// One AWQ group, for the report and the model card.
#[derive(Clone, Debug)]
pub struct Group {
    pub layer: usize,
    /// `input_layernorm`, `post_attention_layernorm`, `up_proj → down_proj`, …
    pub absorber: String,
    /// MLX tensor names multiplied by s.
    pub consumers: Vec<String>,
    /// The imatrix entries the importance came from (GGUF names).
    pub sources: Vec<String>,
    pub min_scale: f32,
    pub max_scale: f32,
}

/// Every scaling to apply, keyed by MLX tensor name.
#[derive(Debug, Default)]
pub struct AwqPlan {
    pub scalings: HashMap<String, Vec<Scaling>>,
    pub groups: Vec<Group>,
}

/// `s` for one importance vector.
pub fn scales_for(importance: &[f32]) -> Vec<f32> {
    let a: Vec<f64> = importance
        .iter()
        .map(|&x| (x.max(1e-8) as f64).sqrt())
        .collect();
    let max = a.iter().cloned().fold(f64::MIN, f64::max);
    let min = a.iter().cloned().fold(f64::MAX, f64::min);
    let norm = (max * min).sqrt().max(1e-8);
    a.iter().map(|v| (v / norm) as f32).collect()
}

fn elementwise_max(vectors: &[&[f32]]) -> Vec<f32> {
    let mut out = vectors[0].to_vec();
    for v in &vectors[1..] {
        for (o, x) in out.iter_mut().zip(v.iter()) {
            *o = o.max(*x);
        }
    }
    out
}

impl AwqPlan {
    /// Reads the imatrix, checks it against the model, and plans every group.
    pub fn build(source: &Source, imatrix_path: &Path) -> Result<AwqPlan> {
        let imatrix = Imatrix::read(imatrix_path).map_err(|e| imatrix_error(imatrix_path, e))?;
        let shape = ModelShape::from_config(&source.config_json)
            .map_err(|e| imatrix_error(imatrix_path, e))?;
        let importance = imatrix
            .hf_importance(&shape)
            .map_err(|e| imatrix_error(imatrix_path, e))?;
        let mut plan = AwqPlan::default();
        for (layer, kind) in source.config.layer_kinds.iter().enumerate() {
            plan.layer(source, layer, *kind, &importance, imatrix_path)?;
        }
        Ok(plan)
    }

    fn layer(
        &mut self,
        source: &Source,
        layer: usize,
        kind: LayerKind,
        imp: &BTreeMap<String, Importance>,
        path: &Path,
    ) -> Result<()> {
        let hf = |m: &str| format!("layers.{layer}.{m}");
        let mlx = |m: &str| format!("language_model.model.layers.{layer}.{m}");
        let exists = |m: &str| source.tensors.iter().any(|t| t.name == mlx(m));
        let need = |modules: &[&str]| -> Result<Vec<&Importance>> {
            let found: Vec<&Importance> = modules.iter().filter_map(|m| imp.get(&hf(m))).collect();
            if found.is_empty() {
                return fail(
                    ErrorCode::ImatrixMismatch,
                    format!(
                        "{}: no entry for layer {layer}'s {} (the imatrix does not cover this \
                         model)",
                        path.display(),
                        modules.join(" / ")
                    ),
                );
            }
            Ok(found)
        };

        // input_layernorm → the mixer's input projections.
        let (read, consumers): (&[&str], &[&str]) = match kind {
            LayerKind::Full => (
                &["self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj"],
                &["self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj"],
            ),
            LayerKind::Linear => (
                &["linear_attn.in_proj_qkv", "linear_attn.in_proj_z"],
                &[
                    "linear_attn.in_proj_qkv",
                    "linear_attn.in_proj_z",
                    "linear_attn.in_proj_a",
                    "linear_attn.in_proj_b",
                ],
            ),
        };
        let found = need(read)?;
        self.norm_group(layer, "input_layernorm", &found, consumers, &mlx);

        // post_attention_layernorm → the MLP's input projections.
        if source.config.moe.is_some() {
            let read = [
                "mlp.gate",
                "mlp.shared_expert.gate_proj",
                "mlp.shared_expert.up_proj",
                "mlp.shared_expert_gate",
            ];
            let mut found: Vec<&Importance> = read.iter().filter_map(|m| imp.get(&hf(m))).collect();
            if found.is_empty() {
                // Every token reaches k experts, so the experts' count-weighted mean is the
                // token mean the router sees; without counts here, the plain mean stands in.
                found = need(&["mlp.experts.gate_up_proj"])?;
            }
            let consumers: Vec<&str> = [
                "mlp.gate",
                "mlp.switch_mlp.gate_proj",
                "mlp.switch_mlp.up_proj",
                "mlp.shared_expert.gate_proj",
                "mlp.shared_expert.up_proj",
                "mlp.shared_expert_gate",
            ]
            .into_iter()
            .filter(|m| exists(&format!("{m}.weight")))
            .collect();
            self.norm_group(layer, "post_attention_layernorm", &found, &consumers, &mlx);
            // up rows → down columns, per expert.
            let down = need(&["mlp.experts.down_proj"])?;
            self.up_down_group(layer, "mlp.switch_mlp", down[0], true, &mlx);
            if exists("mlp.shared_expert.down_proj.weight") {
                let down = need(&["mlp.shared_expert.down_proj"])?;
                self.up_down_group(layer, "mlp.shared_expert", down[0], false, &mlx);
            }
        } else {
            let found = need(&["mlp.gate_proj", "mlp.up_proj"])?;
            self.norm_group(
                layer,
                "post_attention_layernorm",
                &found,
                &["mlp.gate_proj", "mlp.up_proj"],
                &mlx,
            );
            let down = need(&["mlp.down_proj"])?;
            self.up_down_group(layer, "mlp", down[0], false, &mlx);
        }
        Ok(())
    }

    fn norm_group(
        &mut self,
        layer: usize,
        norm: &str,
        found: &[&Importance],
        consumers: &[&str],
        mlx: &dyn Fn(&str) -> String,
    ) {
        // Dense entries have one row; an expert stack standing in contributes its mean.
        let rows: Vec<Vec<f32>> = found.iter().map(|i| mean_row(&i.per_expert)).collect();
        let refs: Vec<&[f32]> = rows.iter().map(|r| r.as_slice()).collect();
        let s = scales_for(&elementwise_max(&refs));
        let scales = Arc::new(Scales {
            rows: 1,
            len: s.len(),
            values: s,
        });
        let mut names = Vec::new();
        for c in consumers {
            let name = mlx(&format!("{c}.weight"));
            self.add(&name, Scaling::Columns(scales.clone()));
            names.push(name);
        }
        self.add(
            &mlx(&format!("{norm}.weight")),
            Scaling::Norm(scales.clone()),
        );
        self.groups.push(Group {
            layer,
            absorber: mlx(&format!("{norm}.weight")),
            consumers: names,
            sources: found.iter().flat_map(|i| i.sources.clone()).collect(),
            min_scale: min(&scales.values),
            max_scale: max(&scales.values),
        });
    }

    fn up_down_group(
        &mut self,
        layer: usize,
        block: &str,
        down: &Importance,
        per_expert: bool,
        mlx: &dyn Fn(&str) -> String,
    ) {
        let rows = if per_expert {
            down.per_expert.clone()
        } else {
            vec![mean_row(&down.per_expert)]
        };
        let len = rows[0].len();
        let values: Vec<f32> = rows.iter().flat_map(|r| scales_for(r)).collect();
        let scales = Arc::new(Scales {
            rows: rows.len(),
            len,
            values,
        });
        let up = mlx(&format!("{block}.up_proj.weight"));
        let down_name = mlx(&format!("{block}.down_proj.weight"));
        self.add(&up, Scaling::Rows(scales.clone()));
        self.add(&down_name, Scaling::Columns(scales.clone()));
        self.groups.push(Group {
            layer,
            absorber: up,
            consumers: vec![down_name],
            sources: down.sources.clone(),
            min_scale: min(&scales.values),
            max_scale: max(&scales.values),
        });
    }

    fn add(&mut self, name: &str, scaling: Scaling) {
        self.scalings
            .entry(name.to_string())
            .or_default()
            .push(scaling);
    }
}

fn mean_row(rows: &[Vec<f32>]) -> Vec<f32> {
    if rows.len() == 1 {
        return rows[0].clone();
    }
    let n = rows.len() as f32;
    (0..rows[0].len())
        .map(|j| rows.iter().map(|r| r[j]).sum::<f32>() / n)
        .collect()
}

fn min(v: &[f32]) -> f32 {
    v.iter().cloned().fold(f32::MAX, f32::min)
}

fn max(v: &[f32]) -> f32 {
    v.iter().cloned().fold(f32::MIN, f32::max)
}

fn imatrix_error(path: &Path, e: mlx_node_imatrix::Error) -> Error {
    let io = matches!(e, mlx_node_imatrix::Error::Io { .. });
    Error::new(
        if io {
            ErrorCode::Io
        } else {
            ErrorCode::ImatrixMismatch
        },
        format!("imatrix {}: {e}", path.display()),
    )
}

/// Applies `scalings` to rows `rows` (axis 0) of a float32 tensor of rank 1–3.
pub fn apply(a: &Array, scalings: &[Scaling], rows: std::ops::Range<usize>) -> Result<Array> {
    let mut a = a.clone();
    let rank = a.ndim();
    for s in scalings {
        a = match (s, rank) {
            (Scaling::Norm(s), 1) => ops::divide(&a, &vector(s.row(0), &[s.len as i32]))?,
            (Scaling::Columns(s), 2) => ops::multiply(&a, &vector(s.row(0), &[1, s.len as i32]))?,
            (Scaling::Rows(s), 2) => {
                let part = &s.row(0)[rows.clone()];
                ops::divide(&a, &vector(part, &[part.len() as i32, 1]))?
            }
            (Scaling::Columns(s), 3) if s.rows == 1 => {
                ops::multiply(&a, &vector(s.row(0), &[1, 1, s.len as i32]))?
            }
            (Scaling::Columns(s), 3) => {
                let part = &s.values[rows.start * s.len..rows.end * s.len];
                ops::multiply(&a, &vector(part, &[rows.len() as i32, 1, s.len as i32]))?
            }
            (Scaling::Rows(s), 3) => {
                let part = &s.values[rows.start * s.len..rows.end * s.len];
                ops::divide(&a, &vector(part, &[rows.len() as i32, s.len as i32, 1]))?
            }
            _ => {
                return fail(
                    ErrorCode::Internal,
                    format!("AWQ scaling {s:?} does not fit a rank-{rank} tensor"),
                )
            }
        };
    }
    Ok(a)
}

fn vector(values: &[f32], shape: &[i32]) -> Array {
    Array::from_slice(values, shape)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn worked_example_of_the_doc() {
        // docs/quantization.md §5.5.
        let s = scales_for(&[4.0, 1.0, 0.25, 16.0]);
        let want = [1.41421, 0.70711, 0.35355, 2.82843];
        for (a, b) in s.iter().zip(want) {
            assert!((a - b).abs() < 1e-5, "{s:?}");
        }
        assert!((s[2] * s[3] - 1.0).abs() < 1e-6);
    }

    #[test]
    fn constant_importance_gives_unit_scales() {
        assert_eq!(scales_for(&[1.0; 8]), vec![1.0; 8]);
        // Zero importance is floored, not divided by.
        assert!(scales_for(&[0.0, 0.0])
            .iter()
            .all(|v| (v - 1.0).abs() < 1e-6));
    }
}
