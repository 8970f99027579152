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
//! Scales: `a = max(importance, 1e-8)^α`, `s = a / sqrt(max a · min a)` (so max·min = 1),
//! importance = `in_sum2 / counts`, element-wise maximum over the group's consumers. mlx-node
//! fixes α = 0.5; with a quantizer to measure against, α is searched per group as AWQ does
//! ([`Strength::Search`]): the imatrix's diagonal makes Σ_j imp_j ‖W_j − Ŵ_j‖² the expected
//! output error of the group, which the search minimises on a sample of each consumer's rows
//! with the recipe's own bits. α = 0 (no scaling) is a candidate, so AWQ never makes a group
//! worse by that measure.

use std::collections::{BTreeMap, HashMap};
use std::path::Path;
use std::sync::Arc;

use mlx_node_core::config::LayerKind;
use mlx_node_core::error::{fail, Error, ErrorCode, Result};
use mlx_node_core::linear::slice_axis;
use mlx_node_imatrix::{Imatrix, Importance, ModelShape};
use mlx_rs::{ops, Array, Dtype};

use crate::source::{Source, SourceTensor};

/// How strongly to scale.
pub enum Strength<'a> {
    /// `a = importance^α` for every group.
    Fixed(f32),
    /// Per group, the α of [`ALPHAS`] with the least activation-weighted error of the group's
    /// quantized consumers: `quant` gives a tensor's (bits, group size), or None if it stays
    /// float; weights are rounded to `dtype` before quantizing, as the converter does.
    Search {
        quant: &'a dyn Fn(&SourceTensor) -> Option<(u32, u32)>,
        dtype: Dtype,
    },
}

/// The α grid of the search.
pub const ALPHAS: [f32; 11] = [0.0, 0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9, 1.0];
/// Rows of each consumer the search quantizes (rows are quantized independently).
const SAMPLE_ROWS: usize = 512;

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
    /// The strength used (fixed or found by the search); 0 leaves the group unscaled.
    pub alpha: f32,
    /// Weighted error of the sampled consumers at α = 0 and at the chosen α (search only).
    pub error: Option<(f64, f64)>,
    pub scales: Arc<Scales>,
}

/// Every scaling to apply, keyed by MLX tensor name.
#[derive(Debug)]
pub struct AwqPlan {
    pub scalings: HashMap<String, Vec<Scaling>>,
    pub groups: Vec<Group>,
    /// The dtype the norms are stored in.
    norm_dtype: Dtype,
}

/// `s` for one importance vector at strength `alpha` (mlx-node's fixed formula is 0.5).
pub fn scales_for(importance: &[f32], alpha: f32) -> Vec<f32> {
    let a: Vec<f64> = importance
        .iter()
        .map(|&x| (x.max(1e-8) as f64).powf(alpha as f64))
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
    /// `norm_dtype`: the dtype the output stores norms in (see [`exact_for_norm`]).
    pub fn build(
        source: &Source,
        imatrix_path: &Path,
        strength: &Strength,
        norm_dtype: Dtype,
    ) -> Result<AwqPlan> {
        let imatrix = Imatrix::read(imatrix_path).map_err(|e| imatrix_error(imatrix_path, e))?;
        let shape = ModelShape::from_config(&source.config_json)
            .map_err(|e| imatrix_error(imatrix_path, e))?;
        let importance = imatrix
            .hf_importance(&shape)
            .map_err(|e| imatrix_error(imatrix_path, e))?;
        let mut plan = AwqPlan {
            scalings: HashMap::new(),
            groups: Vec::new(),
            norm_dtype,
        };
        for (layer, kind) in source.config.layer_kinds.iter().enumerate() {
            plan.layer(source, layer, *kind, &importance, imatrix_path, strength)?;
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
        strength: &Strength,
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
        self.norm_group(
            source,
            strength,
            layer,
            "input_layernorm",
            &found,
            consumers,
            &mlx,
        )?;

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
            // up rows → down columns, per expert; planned first so that the search of the
            // post-norm group quantizes up_proj with its rows already divided.
            let down = need(&["mlp.experts.down_proj"])?;
            self.up_down_group(
                source,
                strength,
                layer,
                "mlp.switch_mlp",
                down[0],
                true,
                &mlx,
            )?;
            if exists("mlp.shared_expert.down_proj.weight") {
                let down = need(&["mlp.shared_expert.down_proj"])?;
                self.up_down_group(
                    source,
                    strength,
                    layer,
                    "mlp.shared_expert",
                    down[0],
                    false,
                    &mlx,
                )?;
            }
            self.norm_group(
                source,
                strength,
                layer,
                "post_attention_layernorm",
                &found,
                &consumers,
                &mlx,
            )?;
        } else {
            let down = need(&["mlp.down_proj"])?;
            self.up_down_group(source, strength, layer, "mlp", down[0], false, &mlx)?;
            let found = need(&["mlp.gate_proj", "mlp.up_proj"])?;
            self.norm_group(
                source,
                strength,
                layer,
                "post_attention_layernorm",
                &found,
                &["mlp.gate_proj", "mlp.up_proj"],
                &mlx,
            )?;
        }
        Ok(())
    }

    #[allow(clippy::too_many_arguments)]
    fn norm_group(
        &mut self,
        source: &Source,
        strength: &Strength,
        layer: usize,
        norm: &str,
        found: &[&Importance],
        consumers: &[&str],
        mlx: &dyn Fn(&str) -> String,
    ) -> Result<()> {
        // Dense entries have one row; an expert stack standing in contributes its mean.
        let rows: Vec<Vec<f32>> = found.iter().map(|i| mean_row(&i.per_expert)).collect();
        let refs: Vec<&[f32]> = rows.iter().map(|r| r.as_slice()).collect();
        let imp = elementwise_max(&refs);
        let names: Vec<String> = consumers
            .iter()
            .map(|c| mlx(&format!("{c}.weight")))
            .collect();
        let (alpha, error, s) = pick(source, strength, &self.scalings, &names, None, &imp)?;
        let norm_name = mlx(&format!("{norm}.weight"));
        let s = if alpha > 0.0 {
            exact_for_norm(source, &norm_name, s, self.norm_dtype)?
        } else {
            s
        };
        let scales = Arc::new(Scales {
            rows: 1,
            len: s.len(),
            values: s,
        });
        if alpha > 0.0 {
            for name in &names {
                self.add(name, Scaling::Columns(scales.clone()));
            }
            self.add(
                &mlx(&format!("{norm}.weight")),
                Scaling::Norm(scales.clone()),
            );
        }
        self.groups.push(Group {
            layer,
            absorber: mlx(&format!("{norm}.weight")),
            consumers: names,
            sources: found.iter().flat_map(|i| i.sources.clone()).collect(),
            alpha,
            error,
            scales,
        });
        Ok(())
    }

    #[allow(clippy::too_many_arguments)]
    fn up_down_group(
        &mut self,
        source: &Source,
        strength: &Strength,
        layer: usize,
        block: &str,
        down: &Importance,
        per_expert: bool,
        mlx: &dyn Fn(&str) -> String,
    ) -> Result<()> {
        let rows = if per_expert {
            down.per_expert.clone()
        } else {
            vec![mean_row(&down.per_expert)]
        };
        let len = rows[0].len();
        let up = mlx(&format!("{block}.up_proj.weight"));
        let down_name = mlx(&format!("{block}.down_proj.weight"));
        // Each expert is a group of its own (its own α); one α per group is reported.
        let mut values = Vec::with_capacity(rows.len() * len);
        let mut alphas = Vec::new();
        let mut errors = (0.0, 0.0);
        let mut searched = false;
        for (e, imp) in rows.iter().enumerate() {
            let expert = per_expert.then_some(e);
            let (alpha, error, s) = pick(
                source,
                strength,
                &self.scalings,
                std::slice::from_ref(&down_name),
                expert,
                imp,
            )?;
            if let Some((a, b)) = error {
                errors.0 += a;
                errors.1 += b;
                searched = true;
            }
            alphas.push(alpha);
            values.extend(s);
        }
        let scales = Arc::new(Scales {
            rows: rows.len(),
            len,
            values,
        });
        let alpha = alphas.iter().cloned().fold(0.0, f32::max);
        if alpha > 0.0 {
            self.add(&up, Scaling::Rows(scales.clone()));
            self.add(&down_name, Scaling::Columns(scales.clone()));
        }
        self.groups.push(Group {
            layer,
            absorber: up,
            consumers: vec![down_name],
            sources: down.sources.clone(),
            alpha,
            error: searched.then_some(errors),
            scales,
        });
        Ok(())
    }

    fn add(&mut self, name: &str, scaling: Scaling) {
        self.scalings
            .entry(name.to_string())
            .or_default()
            .push(scaling);
    }
}

/// α, the weighted error at α = 0 and at α (when searched), and the scales.
type Picked = (f32, Option<(f64, f64)>, Vec<f32>);

/// The α for one group and its scales: fixed, or the best of [`ALPHAS`] on the consumers'
/// sampled rows (`expert`: only that expert of a stacked consumer).
fn pick(
    source: &Source,
    strength: &Strength,
    planned: &HashMap<String, Vec<Scaling>>,
    consumers: &[String],
    expert: Option<usize>,
    imp: &[f32],
) -> Result<Picked> {
    let (quant, dtype) = match strength {
        Strength::Fixed(alpha) => return Ok((*alpha, None, scales_for(imp, *alpha))),
        Strength::Search { quant, dtype } => (quant, *dtype),
    };
    let mut samples = Vec::new();
    for name in consumers {
        let Some(t) = source.tensors.iter().find(|t| &t.name == name) else {
            continue;
        };
        let Some((bits, group)) = quant(t) else {
            continue;
        };
        // The sample as the converter will see it, with the scalings already planned for it
        // (up_proj's rows).
        let done = planned.get(name).map(Vec::as_slice).unwrap_or(&[]);
        let w = if t.shape.len() == 3 {
            let e = expert.unwrap_or(0);
            let (out, inp) = (t.shape[1] as i32, t.shape[2] as i32);
            apply(&source.read(t, e..e + 1)?, done, e..e + 1)?.reshape(&[out, inp])?
        } else {
            let rows = 0..t.shape[0].min(SAMPLE_ROWS);
            apply(&source.read(t, rows.clone())?, done, rows)?
        };
        let rows = w.shape()[0].min(SAMPLE_ROWS as i32);
        samples.push((slice_axis(&w, 0, 0, rows)?, bits as i32, group as i32));
    }
    if samples.is_empty() {
        // Nothing in the group is quantized: scaling cannot help it.
        return Ok((0.0, None, vec![1.0; imp.len()]));
    }
    let weight = Array::from_slice(imp, &[1, imp.len() as i32]);
    let mut best: Option<(f32, f64, Vec<f32>)> = None;
    let mut unscaled = 0.0;
    for alpha in ALPHAS {
        let s = scales_for(imp, alpha);
        let sv = Array::from_slice(&s, &[1, s.len() as i32]);
        let mut error = 0.0;
        for (w, bits, group) in &samples {
            let ws = ops::multiply(w, &sv)?.as_dtype(dtype)?;
            let (q, scales, biases) = ops::quantize(&ws, *group, *bits)?;
            let back =
                ops::dequantize(&q, &scales, &biases, *group, *bits)?.as_dtype(Dtype::Float32)?;
            let diff = ops::subtract(w, &ops::divide(&back, &sv)?)?;
            let e = ops::multiply(&ops::square(&diff)?, &weight)?.sum(None)?;
            e.eval()?;
            error += e.item_exact::<f32>() as f64;
        }
        if alpha == 0.0 {
            unscaled = error;
        }
        if best.as_ref().is_none_or(|b| error < b.1) {
            best = Some((alpha, error, s));
        }
    }
    let (alpha, error, s) = best.expect("ALPHAS is not empty");
    Ok((alpha, Some((unscaled, error)), s))
}

/// Adjusts `s` so that the stored norm is exactly `(1 + w) / s`: the norm is rounded to its
/// output dtype once, and `s` is recomputed from the rounded value (in float32), so the
/// consumers, quantized from float32, carry the same factor the norm lost. Without this the
/// bf16 rounding of the divided norm would add its own error (~0.4 % per channel) on top of
/// the rounding the plain conversion has.
fn exact_for_norm(source: &Source, norm: &str, s: Vec<f32>, dtype: Dtype) -> Result<Vec<f32>> {
    let Some(t) = source.tensors.iter().find(|t| t.name == norm) else {
        return fail(
            ErrorCode::MissingTensor,
            format!("`{norm}`, the norm an AWQ group divides, is not in the checkpoint"),
        );
    };
    let n = source.read(t, 0..t.shape[0])?;
    let sv = Array::from_slice(&s, &[s.len() as i32]);
    let rounded = ops::divide(&n, &sv)?
        .as_dtype(dtype)?
        .as_dtype(Dtype::Float32)?;
    let exact = ops::divide(&n, &rounded)?;
    exact.eval()?;
    Ok(exact
        .as_slice::<f32>()
        .iter()
        .zip(&s)
        .map(|(&e, &s)| if e.is_finite() && e > 0.0 { e } else { s })
        .collect())
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
            (Scaling::Norm(s), 1) => ops::divide(&a, vector(s.row(0), &[s.len as i32]))?,
            (Scaling::Columns(s), 2) => ops::multiply(&a, vector(s.row(0), &[1, s.len as i32]))?,
            (Scaling::Rows(s), 2) => {
                let part = &s.row(0)[rows.clone()];
                ops::divide(&a, vector(part, &[part.len() as i32, 1]))?
            }
            (Scaling::Columns(s), 3) if s.rows == 1 => {
                ops::multiply(&a, vector(s.row(0), &[1, 1, s.len as i32]))?
            }
            (Scaling::Columns(s), 3) => {
                let part = &s.values[rows.start * s.len..rows.end * s.len];
                ops::multiply(&a, vector(part, &[rows.len() as i32, 1, s.len as i32]))?
            }
            (Scaling::Rows(s), 3) => {
                let part = &s.values[rows.start * s.len..rows.end * s.len];
                ops::divide(&a, vector(part, &[rows.len() as i32, s.len as i32, 1]))?
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
        let s = scales_for(&[4.0, 1.0, 0.25, 16.0], 0.5);
        use std::f32::consts::{FRAC_1_SQRT_2, SQRT_2};
        let want = [SQRT_2, FRAC_1_SQRT_2, SQRT_2 / 4.0, 2.0 * SQRT_2];
        for (a, b) in s.iter().zip(want) {
            assert!((a - b).abs() < 1e-5, "{s:?}");
        }
        assert!((s[2] * s[3] - 1.0).abs() < 1e-6);
    }

    #[test]
    fn constant_importance_gives_unit_scales() {
        assert_eq!(scales_for(&[1.0; 8], 0.5), vec![1.0; 8]);
        assert_eq!(scales_for(&[4.0, 1.0], 0.0), vec![1.0; 2]);
        // Zero importance is floored, not divided by.
        assert!(scales_for(&[0.0, 0.0], 0.5)
            .iter()
            .all(|v| (v - 1.0).abs() < 1e-6));
    }
}
