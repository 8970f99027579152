#![allow(clippy::needless_range_loop)] // the oracle is written as plain index loops on purpose
//! An independent, deliberately naive float64 implementation of the Qwen3.5 forward pass,
//! written from the formulas in the architecture notes (per-token loops, no MLX), checked
//! against the engine on checkpoints whose shapes no fixture has: GQA ratio 3, three value
//! heads per key head, a conv kernel of 3, half-rotary heads, full attention first, 5 experts
//! with top-3 routing, untied and tied heads.

mod common;

use std::collections::HashMap;
use std::path::Path;

use common::max_abs_diff;
use mlx_node_core::generate::prefill;
use mlx_node_core::Qwen35;
use mlx_node_model_gen::{generate, GenerateOptions, LayerType, TokenizerSource};
use mlx_rs::{Array, Dtype};

struct Tensors(HashMap<String, (Vec<f64>, Vec<usize>)>);

impl Tensors {
    fn load(dir: &Path) -> Self {
        let mut map = HashMap::new();
        for entry in std::fs::read_dir(dir).unwrap() {
            let path = entry.unwrap().path();
            if path.extension().is_some_and(|e| e == "safetensors") {
                for (name, a) in Array::load_safetensors(&path).unwrap() {
                    let a = a.as_dtype(Dtype::Float32).unwrap();
                    a.eval().unwrap();
                    let shape = a.shape().iter().map(|&d| d as usize).collect();
                    let data = a.as_slice::<f32>().iter().map(|&x| x as f64).collect();
                    map.insert(name, (data, shape));
                }
            }
        }
        Tensors(map)
    }

    fn get(&self, name: &str) -> &[f64] {
        &self
            .0
            .get(&format!("model.language_model.{name}"))
            .or(self.0.get(name))
            .unwrap_or_else(|| panic!("{name}"))
            .0
    }

    fn has(&self, name: &str) -> bool {
        self.0.contains_key(name)
    }
}

/// `W x` for a row-major `[rows, cols]` matrix.
fn matvec(w: &[f64], x: &[f64]) -> Vec<f64> {
    let cols = x.len();
    w.chunks(cols)
        .map(|row| row.iter().zip(x).map(|(a, b)| a * b).sum())
        .collect()
}

fn rms_norm(x: &[f64], weight: &[f64], shift: f64, eps: f64) -> Vec<f64> {
    let inv = 1.0 / (x.iter().map(|v| v * v).sum::<f64>() / x.len() as f64 + eps).sqrt();
    x.iter()
        .zip(weight)
        .map(|(v, w)| v * inv * (w + shift))
        .collect()
}

fn silu(x: f64) -> f64 {
    x / (1.0 + (-x).exp())
}

fn sigmoid(x: f64) -> f64 {
    1.0 / (1.0 + (-x).exp())
}

struct Config {
    h: usize,
    vocab: usize,
    eps: f64,
    kinds: Vec<bool>, // true = full attention
    nh: usize,
    nkv: usize,
    hd: usize,
    rotary: usize,
    theta: f64,
    hk: usize,
    hv: usize,
    dk: usize,
    dv: usize,
    kernel: usize,
    moe: Option<(usize, usize)>, // (experts, top-k)
    tied: bool,
}

fn reference_logits(t: &Tensors, c: &Config, ids: &[u32]) -> Vec<f64> {
    let embed = t.get("embed_tokens.weight");
    let mut xs: Vec<Vec<f64>> = ids
        .iter()
        .map(|&id| embed[id as usize * c.h..(id as usize + 1) * c.h].to_vec())
        .collect();
    let n = ids.len();
    for (layer, &full) in c.kinds.iter().enumerate() {
        let p = |s: &str| format!("layers.{layer}.{s}");
        let normed: Vec<Vec<f64>> = xs
            .iter()
            .map(|x| rms_norm(x, t.get(&p("input_layernorm.weight")), 1.0, c.eps))
            .collect();
        let outs: Vec<Vec<f64>> = if full {
            let (q_w, k_w, v_w) = (
                t.get(&p("self_attn.q_proj.weight")),
                t.get(&p("self_attn.k_proj.weight")),
                t.get(&p("self_attn.v_proj.weight")),
            );
            let (qn, kn) = (
                t.get(&p("self_attn.q_norm.weight")),
                t.get(&p("self_attn.k_norm.weight")),
            );
            let rope = |v: &mut [f64], pos: usize| {
                let half = c.rotary / 2;
                for i in 0..half {
                    let angle = pos as f64 * c.theta.powf(-2.0 * i as f64 / c.rotary as f64);
                    let (a, b) = (v[i], v[i + half]);
                    v[i] = a * angle.cos() - b * angle.sin();
                    v[i + half] = b * angle.cos() + a * angle.sin();
                }
            };
            let mut qs = Vec::new();
            let mut gates = Vec::new();
            let mut ks = Vec::new();
            let mut vs = Vec::new();
            for (pos, h) in normed.iter().enumerate() {
                let qg = matvec(q_w, h);
                let mut q = Vec::new();
                let mut g = Vec::new();
                for head in 0..c.nh {
                    let block = &qg[head * 2 * c.hd..(head + 1) * 2 * c.hd];
                    let mut qh = rms_norm(&block[..c.hd], qn, 1.0, c.eps);
                    rope(&mut qh, pos);
                    q.push(qh);
                    g.extend_from_slice(&block[c.hd..]);
                }
                let kf = matvec(k_w, h);
                let k: Vec<Vec<f64>> = (0..c.nkv)
                    .map(|j| {
                        let mut kh = rms_norm(&kf[j * c.hd..(j + 1) * c.hd], kn, 1.0, c.eps);
                        rope(&mut kh, pos);
                        kh
                    })
                    .collect();
                let vf = matvec(v_w, h);
                qs.push(q);
                gates.push(g);
                ks.push(k);
                vs.push(
                    (0..c.nkv)
                        .map(|j| vf[j * c.hd..(j + 1) * c.hd].to_vec())
                        .collect::<Vec<_>>(),
                );
            }
            let scale = 1.0 / (c.hd as f64).sqrt();
            (0..n)
                .map(|tpos| {
                    let mut o = Vec::new();
                    for head in 0..c.nh {
                        let kvh = head / (c.nh / c.nkv);
                        let scores: Vec<f64> = (0..=tpos)
                            .map(|s| {
                                qs[tpos][head]
                                    .iter()
                                    .zip(&ks[s][kvh])
                                    .map(|(a, b)| a * b)
                                    .sum::<f64>()
                                    * scale
                            })
                            .collect();
                        let max = scores.iter().cloned().fold(f64::MIN, f64::max);
                        let e: Vec<f64> = scores.iter().map(|s| (s - max).exp()).collect();
                        let z: f64 = e.iter().sum();
                        for d in 0..c.hd {
                            o.push((0..=tpos).map(|s| e[s] / z * vs[s][kvh][d]).sum::<f64>());
                        }
                    }
                    let gated: Vec<f64> = o
                        .iter()
                        .zip(&gates[tpos])
                        .map(|(v, g)| v * sigmoid(*g))
                        .collect();
                    matvec(t.get(&p("self_attn.o_proj.weight")), &gated)
                })
                .collect()
        } else {
            let kd = c.hk * c.dk;
            let conv_dim = 2 * kd + c.hv * c.dv;
            let conv = t.get(&p("linear_attn.conv1d.weight")); // [C, 1, K]
            let mixed: Vec<Vec<f64>> = normed
                .iter()
                .map(|h| matvec(t.get(&p("linear_attn.in_proj_qkv.weight")), h))
                .collect();
            let a_log = t.get(&p("linear_attn.A_log"));
            let dt_bias = t.get(&p("linear_attn.dt_bias"));
            let norm_w = t.get(&p("linear_attn.norm.weight"));
            let mut state = vec![vec![0.0; c.dk * c.dv]; c.hv];
            let mut outs = Vec::new();
            for tpos in 0..n {
                let y: Vec<f64> = (0..conv_dim)
                    .map(|ch| {
                        let mut acc = 0.0;
                        for i in 0..c.kernel {
                            let src = tpos as isize - (c.kernel as isize - 1) + i as isize;
                            if src >= 0 {
                                acc += conv[ch * c.kernel + i] * mixed[src as usize][ch];
                            }
                        }
                        silu(acc)
                    })
                    .collect();
                let h = &normed[tpos];
                let z = matvec(t.get(&p("linear_attn.in_proj_z.weight")), h);
                let b = matvec(t.get(&p("linear_attn.in_proj_b.weight")), h);
                let a = matvec(t.get(&p("linear_attn.in_proj_a.weight")), h);
                let l2 = |v: &[f64]| -> Vec<f64> {
                    let inv = 1.0 / (v.iter().map(|x| x * x).sum::<f64>() + 1e-6).sqrt();
                    v.iter().map(|x| x * inv).collect()
                };
                let mut o_all = Vec::new();
                for j in 0..c.hv {
                    let kh = j / (c.hv / c.hk);
                    let q: Vec<f64> = l2(&y[kh * c.dk..(kh + 1) * c.dk])
                        .iter()
                        .map(|x| x / (c.dk as f64).sqrt())
                        .collect();
                    let k = l2(&y[kd + kh * c.dk..kd + (kh + 1) * c.dk]);
                    let v = &y[2 * kd + j * c.dv..2 * kd + (j + 1) * c.dv];
                    let beta = sigmoid(b[j]);
                    let softplus = (1.0 + (a[j] + dt_bias[j]).exp()).ln();
                    let decay = (-(a_log[j].exp()) * softplus).exp();
                    let s = &mut state[j];
                    s.iter_mut().for_each(|x| *x *= decay);
                    let mut o = vec![0.0; c.dv];
                    for d in 0..c.dv {
                        let u: f64 = (0..c.dk).map(|r| s[r * c.dv + d] * k[r]).sum();
                        let delta = beta * (v[d] - u);
                        for r in 0..c.dk {
                            s[r * c.dv + d] += k[r] * delta;
                        }
                        o[d] = (0..c.dk).map(|r| s[r * c.dv + d] * q[r]).sum();
                    }
                    let normed_o = rms_norm(&o, norm_w, 0.0, c.eps);
                    o_all.extend(
                        normed_o
                            .iter()
                            .zip(&z[j * c.dv..(j + 1) * c.dv])
                            .map(|(x, zz)| x * silu(*zz)),
                    );
                }
                outs.push(matvec(t.get(&p("linear_attn.out_proj.weight")), &o_all));
            }
            outs
        };
        for (x, o) in xs.iter_mut().zip(&outs) {
            x.iter_mut().zip(o).for_each(|(a, b)| *a += b);
        }
        for x in xs.iter_mut() {
            let h = rms_norm(x, t.get(&p("post_attention_layernorm.weight")), 1.0, c.eps);
            let swiglu = |gate: &[f64], up: &[f64], down: &[f64]| {
                let g = matvec(gate, &h);
                let u = matvec(up, &h);
                let inner: Vec<f64> = g.iter().zip(&u).map(|(a, b)| silu(*a) * b).collect();
                matvec(down, &inner)
            };
            let y = match c.moe {
                None => swiglu(
                    t.get(&p("mlp.gate_proj.weight")),
                    t.get(&p("mlp.up_proj.weight")),
                    t.get(&p("mlp.down_proj.weight")),
                ),
                Some((experts, top)) => {
                    let logits = matvec(t.get(&p("mlp.gate.weight")), &h);
                    let max = logits.iter().cloned().fold(f64::MIN, f64::max);
                    let e: Vec<f64> = logits.iter().map(|l| (l - max).exp()).collect();
                    let z: f64 = e.iter().sum();
                    let probs: Vec<f64> = e.iter().map(|x| x / z).collect();
                    let mut order: Vec<usize> = (0..experts).collect();
                    order.sort_by(|&a, &b| probs[b].partial_cmp(&probs[a]).unwrap());
                    let chosen = &order[..top];
                    let total: f64 = chosen.iter().map(|&i| probs[i]).sum();
                    let gate_up = t.get(&p("mlp.experts.gate_up_proj"));
                    let down = t.get(&p("mlp.experts.down_proj"));
                    let width = gate_up.len() / experts / 2 / c.h;
                    let mut y = vec![0.0; c.h];
                    for &ex in chosen {
                        let base = &gate_up[ex * 2 * width * c.h..(ex + 1) * 2 * width * c.h];
                        let out = swiglu(
                            &base[..width * c.h],
                            &base[width * c.h..],
                            &down[ex * c.h * width..(ex + 1) * c.h * width],
                        );
                        y.iter_mut()
                            .zip(&out)
                            .for_each(|(a, b)| *a += probs[ex] / total * b);
                    }
                    let shared = swiglu(
                        t.get(&p("mlp.shared_expert.gate_proj.weight")),
                        t.get(&p("mlp.shared_expert.up_proj.weight")),
                        t.get(&p("mlp.shared_expert.down_proj.weight")),
                    );
                    let sg = sigmoid(matvec(t.get(&p("mlp.shared_expert_gate.weight")), &h)[0]);
                    y.iter_mut().zip(&shared).for_each(|(a, b)| *a += sg * b);
                    y
                }
            };
            x.iter_mut().zip(&y).for_each(|(a, b)| *a += b);
        }
    }
    let last = rms_norm(&xs[n - 1], t.get("norm.weight"), 1.0, c.eps);
    let head = if c.tied || !t.has("lm_head.weight") {
        t.get("embed_tokens.weight")
    } else {
        t.get("lm_head.weight")
    };
    let logits = matvec(head, &last);
    assert_eq!(logits.len(), c.vocab);
    logits
}

#[test]
fn engine_matches_a_naive_float64_forward_on_unusual_shapes() {
    for (name, shape) in common::unusual_shapes() {
        let dir =
            std::env::temp_dir().join(format!("mlx-node-naive-{}-{name}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        let mut options = GenerateOptions::new(shape.clone(), &dir);
        options.tokenizer = TokenizerSource::Skip;
        options.init_std = 0.15;
        options.seed = 7;
        generate(&options).unwrap();

        let config = Config {
            h: shape.hidden_size,
            vocab: shape.vocab_size,
            eps: shape.rms_norm_eps,
            kinds: shape
                .layer_types()
                .iter()
                .map(|k| *k == LayerType::Full)
                .collect(),
            nh: shape.num_attention_heads,
            nkv: shape.num_key_value_heads,
            hd: shape.head_dim,
            rotary: (shape.head_dim as f64 * shape.partial_rotary_factor) as usize,
            theta: shape.rope_theta,
            hk: shape.linear_num_key_heads,
            hv: shape.linear_num_value_heads,
            dk: shape.linear_key_head_dim,
            dv: shape.linear_value_head_dim,
            kernel: shape.linear_conv_kernel_dim,
            moe: shape
                .moe
                .as_ref()
                .map(|m| (m.num_experts, m.num_experts_per_tok)),
            tied: shape.tie_word_embeddings,
        };
        let ids: Vec<u32> = vec![3, 141, 59, 26, 5, 35, 89, 79, 32, 238, 46, 264];
        let expected: Vec<f32> = reference_logits(&Tensors::load(&dir), &config, &ids)
            .iter()
            .map(|&x| x as f32)
            .collect();

        let model = Qwen35::load(&dir, Dtype::Float32).unwrap();
        let mut cache = model.new_cache();
        let got = prefill(&model, &mut cache, &ids, 5).unwrap();
        got.eval().unwrap();
        let delta = max_abs_diff(got.as_slice::<f32>(), &expected);
        let spread = expected.iter().cloned().fold(f32::MIN, f32::max)
            - expected.iter().cloned().fold(f32::MAX, f32::min);
        eprintln!("{name}: max|Δ| = {delta:.2e} (logits spread {spread:.2})");
        assert!(
            spread > 0.5,
            "{name}: the logits barely vary, the check would be weak"
        );
        assert!(
            delta <= 1e-3,
            "{name}: the engine differs from the naive forward by {delta}"
        );
        let _ = std::fs::remove_dir_all(&dir);
    }
}

/// The naive forward itself agrees with transformers on the fixture, so the comparison above
/// checks the engine against something known to be right.
#[test]
fn the_naive_forward_matches_transformers_on_the_fixture() {
    let Some(root) = common::fixtures() else {
        return;
    };
    for model in ["tiny-dense", "tiny-moe"] {
        let dir = root.join(model);
        let c: serde_json::Value =
            serde_json::from_str(&std::fs::read_to_string(dir.join("config.json")).unwrap())
                .unwrap();
        let t = &c["text_config"];
        let u = |k: &str| t[k].as_u64().unwrap() as usize;
        let config = Config {
            h: u("hidden_size"),
            vocab: u("vocab_size"),
            eps: t["rms_norm_eps"].as_f64().unwrap(),
            kinds: t["layer_types"]
                .as_array()
                .unwrap()
                .iter()
                .map(|k| k == "full_attention")
                .collect(),
            nh: u("num_attention_heads"),
            nkv: u("num_key_value_heads"),
            hd: u("head_dim"),
            rotary: (u("head_dim") as f64
                * t["rope_parameters"]["partial_rotary_factor"]
                    .as_f64()
                    .unwrap()) as usize,
            theta: t["rope_parameters"]["rope_theta"].as_f64().unwrap(),
            hk: u("linear_num_key_heads"),
            hv: u("linear_num_value_heads"),
            dk: u("linear_key_head_dim"),
            dv: u("linear_value_head_dim"),
            kernel: u("linear_conv_kernel_dim"),
            moe: t
                .get("num_experts")
                .map(|_| (u("num_experts"), u("num_experts_per_tok"))),
            tied: t["tie_word_embeddings"].as_bool().unwrap(),
        };
        let reference = common::Reference::load(&root, model);
        let ids = reference.ids("a_plain.input_ids");
        let got: Vec<f32> = reference_logits(&Tensors::load(&dir), &config, &ids)
            .iter()
            .map(|&x| x as f32)
            .collect();
        let delta = max_abs_diff(&got, &reference.floats("a_plain.last_logits"));
        eprintln!("{model}: naive vs transformers max|Δ| = {delta:.2e}");
        assert!(delta <= 1e-3, "{model}: {delta}");
    }
}
