//! AWQ pre-scaling from llama.cpp's imatrix of the fixtures.
//!
//! * Scaled but not quantized (`-d float32`), the model computes what the original computes
//!   (logits within 1e-4), dense and MoE.
//! * Every tensor of every group, in every layer, was scaled: each consumer's column j is the
//!   original's times s_j, the norm the original's divided by s_j, one s per group, and
//!   s ∝ sqrt(importance) as the imatrix file says (read here on its own).
//! * Quantized with the unsloth recipe, AWQ never raises the activation-weighted weight error
//!   of a group and lowers their sum, and it lowers the KL divergence against the float model
//!   on text that is not in the calibration set, compared with the same recipe without AWQ,
//!   dense and MoE.

mod common;

use std::collections::HashMap;
use std::path::Path;

use common::*;
use mlx_node_convert::{convert, ConvertOptions};
use mlx_node_core::config::{LayerKind, ModelConfig};
use mlx_node_core::safetensors::{model_files, SafetensorsFile};
use mlx_node_imatrix::{Imatrix, ModelShape};
use mlx_rs::{ops, Array, Dtype};

fn read_all(dir: &Path) -> HashMap<String, Array> {
    let mut out = HashMap::new();
    for path in model_files(dir).unwrap() {
        let f = SafetensorsFile::open(&path).unwrap();
        for name in f.tensors.keys() {
            let dtype = if name.ends_with(".weight")
                && f.tensors.contains_key(&name.replace(".weight", ".scales"))
            {
                None
            } else {
                Some(Dtype::Float32)
            };
            out.insert(name.clone(), f.read(name, dtype).unwrap());
        }
    }
    out
}

fn to_vec(a: &Array) -> Vec<f32> {
    let a = a.as_dtype(Dtype::Float32).unwrap();
    a.eval().unwrap();
    a.as_slice::<f32>().to_vec()
}

fn f32_convert(input: &Path, output: &Path, imatrix: Option<&Path>) {
    let o = ConvertOptions {
        input: input.into(),
        output: output.into(),
        imatrix: imatrix.map(Into::into),
        dtype: Some("float32".into()),
        ..Default::default()
    };
    convert(&o, &mut |_| {}).unwrap();
}

/// The groups the issue names, per layer: (absorber, consumers, HF modules whose importance
/// defines s, whether s is per expert and the absorber divides rows instead of a norm).
fn groups(config: &ModelConfig, layer: usize) -> Vec<(String, Vec<String>, Vec<String>)> {
    let p = |m: &str| format!("language_model.model.layers.{layer}.{m}.weight");
    let h = |m: &str| format!("layers.{layer}.{m}");
    let mut g = Vec::new();
    match config.layer_kinds[layer] {
        LayerKind::Full => g.push((
            p("input_layernorm"),
            vec![
                p("self_attn.q_proj"),
                p("self_attn.k_proj"),
                p("self_attn.v_proj"),
            ],
            vec![h("self_attn.q_proj")],
        )),
        LayerKind::Linear => g.push((
            p("input_layernorm"),
            ["in_proj_qkv", "in_proj_z", "in_proj_a", "in_proj_b"]
                .iter()
                .map(|m| p(&format!("linear_attn.{m}")))
                .collect(),
            vec![h("linear_attn.in_proj_qkv")],
        )),
    }
    if config.moe.is_some() {
        g.push((
            p("post_attention_layernorm"),
            [
                "mlp.gate",
                "mlp.switch_mlp.gate_proj",
                "mlp.switch_mlp.up_proj",
                "mlp.shared_expert.gate_proj",
                "mlp.shared_expert.up_proj",
                "mlp.shared_expert_gate",
            ]
            .iter()
            .map(|m| p(m))
            .collect(),
            vec![h("mlp.gate")],
        ));
    } else {
        g.push((
            p("post_attention_layernorm"),
            vec![p("mlp.gate_proj"), p("mlp.up_proj")],
            vec![h("mlp.gate_proj")],
        ));
    }
    g
}

#[test]
fn prescaled_float_model_is_unchanged_and_every_group_is_scaled() {
    let Some(root) = fixtures() else { return };
    for model in ["tiny-dense", "tiny-moe"] {
        let dir = scratch(&format!("awq-f32-{model}"));
        let input = root.join(model);
        let imatrix = root.join(format!("reference/{model}.imatrix.gguf"));
        f32_convert(&input, &dir.join("plain"), None);
        f32_convert(&input, &dir.join("awq"), Some(&imatrix));

        let tokens = probe_tokens(24);
        let original = logits(&input, &tokens);
        let d = max_abs_diff(&original, &logits(&dir.join("awq"), &tokens));
        eprintln!("{model}: AWQ float32 logits vs original: max|Δ| = {d:.2e}");
        assert!(d <= 1e-4, "{model}: {d}");

        let plain = read_all(&dir.join("plain"));
        let awq = read_all(&dir.join("awq"));
        let config = ModelConfig::load(&input).unwrap();
        let shape = ModelShape::from_config_file(input.join("config.json")).unwrap();
        let importance = Imatrix::read(&imatrix)
            .unwrap()
            .hf_importance(&shape)
            .unwrap();
        let mut checked = 0;
        for layer in 0..config.layer_kinds.len() {
            for (norm, consumers, imp_from) in groups(&config, layer) {
                // s from the norm: original / scaled.
                let s: Vec<f32> = to_vec(&plain[&norm])
                    .iter()
                    .zip(to_vec(&awq[&norm]))
                    .map(|(a, b)| a / b)
                    .collect();
                assert!(
                    s.iter().any(|v| (v - 1.0).abs() > 1e-3),
                    "{norm} not scaled"
                );
                // s ∝ sqrt(importance), with max(s)·min(s) = 1.
                let imp = &importance[&imp_from[0]].per_expert[0];
                let ratio: Vec<f32> = s
                    .iter()
                    .zip(imp)
                    .map(|(s, i)| s / i.max(1e-8).sqrt())
                    .collect();
                let r0 = ratio[0];
                assert!(
                    ratio.iter().all(|r| (r / r0 - 1.0).abs() < 1e-3),
                    "{norm}: s ∝ sqrt(imp)"
                );
                let (mx, mn) = s
                    .iter()
                    .fold((f32::MIN, f32::MAX), |(a, b), &v| (a.max(v), b.min(v)));
                assert!((mx * mn - 1.0).abs() < 1e-3);
                for c in consumers {
                    let a = to_vec(&plain[&c]);
                    let b = to_vec(&awq[&c]);
                    let cols = s.len();
                    assert_eq!(a.len() % cols, 0, "{c}");
                    // up_proj's rows are also divided (the up → down group): one factor per
                    // row, read off its first column.
                    let row_scaled = c.ends_with("up_proj.weight");
                    for (row, (x, y)) in a.chunks(cols).zip(b.chunks(cols)).enumerate() {
                        let r = if row_scaled {
                            y[0] / (x[0] * s[0])
                        } else {
                            1.0
                        };
                        for j in 0..cols {
                            let want = x[j] * s[j] * r;
                            assert!(
                                (y[j] - want).abs() <= 1e-5 * (1.0 + want.abs()),
                                "{c} row {row} col {j}: {} vs {want}",
                                y[j]
                            );
                        }
                    }
                    checked += 1;
                }
            }
            // up_proj rows ↔ down_proj columns (dense; per expert for MoE).
            let p = |m: &str| format!("language_model.model.layers.{layer}.{m}.weight");
            let pairs: &[(&str, &str)] = if config.moe.is_some() {
                &[
                    ("mlp.switch_mlp.up_proj", "mlp.switch_mlp.down_proj"),
                    ("mlp.shared_expert.up_proj", "mlp.shared_expert.down_proj"),
                ]
            } else {
                &[("mlp.up_proj", "mlp.down_proj")]
            };
            for (up, down) in pairs {
                let down_plain = &plain[&p(down)];
                let cols = *down_plain.shape().last().unwrap() as usize;
                let rows_per = down_plain.shape()[down_plain.ndim() - 2] as usize;
                let experts = down_plain.size() / (cols * rows_per);
                let dp = to_vec(down_plain);
                let da = to_vec(&awq[&p(down)]);
                // s per expert from down_proj's first row.
                let mut scaled_somewhere = false;
                for e in 0..experts {
                    let base = e * rows_per * cols;
                    let s: Vec<f32> = (0..cols).map(|j| da[base + j] / dp[base + j]).collect();
                    scaled_somewhere |= s.iter().any(|v| (v - 1.0).abs() > 1e-3);
                    let up_plain = to_vec(&plain[&p(up)]);
                    let up_awq = to_vec(&awq[&p(up)]);
                    let up_cols = up_plain.len() / (experts * cols);
                    for (j, &sj) in s.iter().enumerate() {
                        for i in 0..rows_per {
                            let k = base + i * cols + j;
                            assert!(
                                (da[k] - dp[k] * sj).abs() <= 1e-5 * (1.0 + da[k].abs()),
                                "{down}[{e}] col {j}"
                            );
                        }
                    }
                    // up_proj row i of this expert is divided by s_i (its columns carry the
                    // post-norm group's scales).
                    let post = p("post_attention_layernorm");
                    let s_post: Vec<f32> = to_vec(&plain[&post])
                        .iter()
                        .zip(to_vec(&awq[&post]))
                        .map(|(a, b)| a / b)
                        .collect();
                    assert_eq!(s_post.len(), up_cols);
                    for (i, &si) in s.iter().enumerate() {
                        for (j, &sj) in s_post.iter().enumerate() {
                            let k = (e * cols + i) * up_cols + j;
                            let want = up_plain[k] * sj / si;
                            assert!(
                                (up_awq[k] - want).abs() <= 1e-5 * (1.0 + want.abs()),
                                "{up}[{e}] row {i} col {j}"
                            );
                        }
                    }
                }
                assert!(scaled_somewhere, "{down} not scaled");
                checked += 1;
            }
        }
        eprintln!("{model}: {checked} scaled tensors checked");
        std::fs::remove_dir_all(&dir).unwrap();
    }
}

/// Softmax KL(p ‖ q) per position, averaged.
fn mean_kl(p_logits: &[f32], q_logits: &[f32], vocab: usize) -> f64 {
    let rows = p_logits.len() / vocab;
    let mut total = 0.0;
    for r in 0..rows {
        let p = &p_logits[r * vocab..(r + 1) * vocab];
        let q = &q_logits[r * vocab..(r + 1) * vocab];
        let lse = |x: &[f32]| {
            let m = x.iter().cloned().fold(f32::MIN, f32::max) as f64;
            m + x.iter().map(|&v| (v as f64 - m).exp()).sum::<f64>().ln()
        };
        let (lp, lq) = (lse(p), lse(q));
        total += p
            .iter()
            .zip(q)
            .map(|(&a, &b)| {
                let la = a as f64 - lp;
                la.exp() * (la - (b as f64 - lq))
            })
            .sum::<f64>();
    }
    total / rows as f64
}

#[test]
fn awq_lowers_the_weighted_error_of_every_group() {
    let Some(root) = fixtures() else { return };
    for model in ["tiny-dense", "tiny-moe"] {
        let dir = scratch(&format!("awq-q-{model}"));
        let input = root.join(model);
        let imatrix = root.join(format!("reference/{model}.imatrix.gguf"));
        f32_convert(&input, &dir.join("plain"), None);
        let mut groups = Vec::new();
        for (name, im) in [("q", None), ("q-awq", Some(imatrix.clone()))] {
            let o = ConvertOptions {
                input: input.clone(),
                output: dir.join(name),
                quantize: true,
                recipe: Some("unsloth".into()),
                imatrix: im,
                ..Default::default()
            };
            let summary = convert(&o, &mut |_| {}).unwrap();
            if name == "q-awq" {
                groups = summary.awq_groups;
            }
        }
        let plain = read_all(&dir.join("plain"));
        let q = read_all(&dir.join("q"));
        let qa = read_all(&dir.join("q-awq"));
        let shape = ModelShape::from_config_file(input.join("config.json")).unwrap();
        let importance = Imatrix::read(&imatrix)
            .unwrap()
            .hf_importance(&shape)
            .unwrap();

        // The dequantized weight, or None where the tensor stayed float; bits and group size
        // from the packed width and the float tensor's input width.
        let dequant = |t: &HashMap<String, Array>, name: &str| -> Option<Vec<f32>> {
            let m = name.trim_end_matches(".weight");
            let scales = t.get(&format!("{m}.scales"))?;
            let w = &t[name];
            let inputs = *plain[name].shape().last().unwrap();
            let bits = *w.shape().last().unwrap() * 32 / inputs;
            let group = inputs / *scales.shape().last().unwrap();
            Some(to_vec(
                &ops::dequantize(w, scales, &t[&format!("{m}.biases")], group, bits).unwrap(),
            ))
        };
        // s_B[row] of the up → down group whose absorber is `name` (1 where none applies).
        let row_scale = |name: &str, flat: usize| -> f32 {
            let Some(b) = groups.iter().find(|b| b.absorber == name && b.alpha > 0.0) else {
                return 1.0;
            };
            let cols = *plain[name].shape().last().unwrap() as usize;
            let row = flat / cols; // over experts × rows
            b.scales.values[row]
        };
        let (mut total_plain, mut total_awq) = (0f64, 0f64);
        for g in &groups {
            // The importance of the group's input, from the file itself.
            let hf = g.consumers[0]
                .trim_start_matches("language_model.model.")
                .trim_end_matches(".weight")
                .replace("switch_mlp.gate_proj", "experts.gate_up_proj")
                .replace("switch_mlp.up_proj", "experts.gate_up_proj")
                .replace("switch_mlp.down_proj", "experts.down_proj");
            let rows = &importance[&hf].per_expert;
            let mut err = [0f64; 2];
            for c in &g.consumers {
                let orig = to_vec(&plain[c]);
                let cols = g.scales.len;
                let per_expert = orig.len() / g.scales.rows;
                for (k, t) in [&q, &qa].into_iter().enumerate() {
                    let Some(w) = dequant(t, c) else { continue };
                    err[k] += orig
                        .iter()
                        .zip(&w)
                        .enumerate()
                        .map(|(i, (o, x))| {
                            let e = if g.scales.rows > 1 { i / per_expert } else { 0 };
                            let imp = rows[if rows.len() > 1 && g.scales.rows > 1 {
                                e
                            } else {
                                0
                            }][i % cols] as f64;
                            let s = if k == 1 && g.alpha > 0.0 {
                                g.scales.values[e * cols + i % cols]
                            } else {
                                1.0
                            };
                            // up_proj's rows were also divided by the up → down group's scales.
                            let row = if k == 1 { row_scale(c, i) } else { 1.0 };
                            imp * ((o - x / s * row) as f64).powi(2)
                        })
                        .sum::<f64>();
                }
            }
            if err[0] == 0.0 {
                continue; // nothing of this group is quantized
            }
            eprintln!(
                "{model} layer {} {} → {}: α = {:.1}, weighted error without AWQ {:.4e}, with {:.4e} ({:+.1} %)",
                g.layer,
                g.absorber.rsplit('.').nth(1).unwrap(),
                g.consumers.iter().map(|c| c.rsplit('.').nth(1).unwrap()).collect::<Vec<_>>().join(","),
                g.alpha,
                err[0],
                err[1],
                100.0 * (err[1] / err[0] - 1.0)
            );
            assert!(err[1] <= err[0] * (1.0 + 1e-6), "AWQ made the group worse");
            total_plain += err[0];
            total_awq += err[1];
        }
        eprintln!(
            "{model}: summed weighted error without AWQ {total_plain:.4e}, with {total_awq:.4e}"
        );
        assert!(total_awq < total_plain);

        std::fs::remove_dir_all(&dir).unwrap();
    }
}

/// KL divergence against the float model, averaged over the unsloth ladder's bases 2, 3 and 4
/// and over two held-out texts (not in calibration.txt: the first 256 tokens of the project's
/// architecture and quantization notes, fixed so the measure does not move with edits). One
/// base on one text is too close to call on these random-weight fixtures (AWQ moves the KL by
/// a few per cent either way), the average is not.
#[test]
fn awq_lowers_the_kl_divergence_on_held_out_text() {
    let Some(root) = fixtures() else { return };
    let vocab = 248320;
    for model in ["tiny-dense", "tiny-moe"] {
        let dir = scratch(&format!("awq-kl-{model}"));
        let input = root.join(model);
        let imatrix = root.join(format!("reference/{model}.imatrix.gguf"));
        let tok = mlx_node_core::tokenizer::Tokenizer::from_model_dir(&input).unwrap();
        let texts: Vec<Vec<i32>> = ["qwen35.md", "quantization.md"]
            .iter()
            .map(|f| {
                let text = std::fs::read_to_string(root.join("../../docs").join(f)).unwrap();
                tok.encode(&text)
                    .unwrap()
                    .into_iter()
                    .take(256)
                    .map(|i| i as i32)
                    .collect()
            })
            .collect();
        let references: Vec<Vec<f32>> = texts.iter().map(|ids| logits(&input, ids)).collect();
        let mut mean = [0f64; 2];
        for base in [2, 3, 4] {
            let mut kl = [0f64; 2];
            for (k, im) in [None, Some(imatrix.clone())].into_iter().enumerate() {
                let out = dir.join(format!("b{base}-{k}"));
                let o = ConvertOptions {
                    input: input.clone(),
                    output: out.clone(),
                    quantize: true,
                    bits: Some(base),
                    recipe: Some("unsloth".into()),
                    imatrix: im,
                    ..Default::default()
                };
                convert(&o, &mut |_| {}).unwrap();
                for (ids, reference) in texts.iter().zip(&references) {
                    kl[k] += mean_kl(reference, &logits(&out, ids), vocab) / texts.len() as f64;
                }
                std::fs::remove_dir_all(&out).unwrap();
            }
            eprintln!(
                "{model} UD-Q{base}_K_XL: KL vs float, without AWQ {:.5}, with {:.5} ({:+.1} %)",
                kl[0],
                kl[1],
                100.0 * (kl[1] / kl[0] - 1.0)
            );
            mean[0] += kl[0] / 3.0;
            mean[1] += kl[1] / 3.0;
        }
        eprintln!(
            "{model}: mean KL without AWQ {:.5}, with {:.5}",
            mean[0], mean[1]
        );
        assert!(mean[1] < mean[0], "{model}: AWQ did not lower the mean KL");
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
