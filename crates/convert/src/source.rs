//! The checkpoint being converted: its config, its safetensors files, and the tensors of the
//! MLX model each output tensor is made from (renamed, experts split or stacked, conv1d
//! transposed, zero-centred norms shifted).

use std::collections::HashMap;
use std::ops::Range;
use std::path::{Path, PathBuf};

use mlx_node_core::config::{LayerKind, ModelConfig};
use mlx_node_core::error::{fail, Error, ErrorCode, Result};
use mlx_node_core::linear::slice_axis;
use mlx_node_core::safetensors::{model_files, SafetensorsFile};
use mlx_rs::{ops, Array, Dtype};
use serde_json::Value;

/// How an output tensor's values are obtained from the input files.
#[derive(Clone, Debug)]
pub enum Read {
    /// One input tensor as it is.
    Whole(String),
    /// Rows `rows` of axis 1 of a stacked input (`experts.gate_up_proj` holds gate then up).
    Axis1(String, Range<usize>),
    /// One input tensor per slice of axis 0, stacked (per-expert checkpoints).
    Stack(Vec<String>),
}

/// What a tensor is, for the transforms it needs.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Role {
    /// A weight matrix (or expert stack) of a quantizable module.
    Matrix,
    /// An RMSNorm weight that Hugging Face stores zero-centred (the model computes `1 + w`).
    ZeroCentredNorm,
    /// The depthwise conv1d weight, `[C, 1, K]` in HF, `[C, K, 1]` in MLX.
    Conv,
    /// `A_log`: stays float32, as mlx-lm keeps it.
    Float32,
    /// Any other vector kept in the output dtype (`linear_attn.norm`, `dt_bias`).
    Vector,
}

/// One tensor of the output model.
#[derive(Clone, Debug)]
pub struct SourceTensor {
    /// Its MLX name (`language_model.model.layers.0.mlp.switch_mlp.gate_proj.weight`).
    pub name: String,
    /// The module path (the name without `.weight`; the name itself for `A_log`, `dt_bias`).
    pub module: String,
    pub layer: Option<usize>,
    pub role: Role,
    /// The shape in the output model (before quantization).
    pub shape: Vec<usize>,
    pub read: Read,
    /// Bytes it occupies in the input files.
    pub input_bytes: u64,
}

/// Where the input's weights live.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Layout {
    /// Hugging Face: `model.language_model.*` (or `model.*`), zero-centred norms.
    HuggingFace,
    /// mlx-lm: `language_model.model.*`, norms already `1 + w`, conv1d `[C, K, 1]`.
    Mlx,
}

pub struct Source {
    pub dir: PathBuf,
    /// `config.json` as written.
    pub config_json: Value,
    pub config: ModelConfig,
    pub layout: Layout,
    pub tensors: Vec<SourceTensor>,
    files: Vec<SafetensorsFile>,
    file_of: HashMap<String, usize>,
}

/// Tensors a text model leaves out, as mlx-lm does: the vision tower and the MTP head.
fn dropped(name: &str) -> bool {
    name.starts_with("model.visual.")
        || name.starts_with("visual.")
        || name.starts_with("vision_tower.")
        || name.starts_with("mtp.")
        || name.starts_with("model.mtp.")
}

const ZERO_CENTRED: [&str; 4] = [
    ".input_layernorm.weight",
    ".post_attention_layernorm.weight",
    ".q_norm.weight",
    ".k_norm.weight",
];

impl Source {
    pub fn open(dir: &Path) -> Result<Source> {
        if !dir.is_dir() {
            return fail(
                ErrorCode::Io,
                format!("input {}: not a folder", dir.display()),
            );
        }
        let config_path = dir.join("config.json");
        let text = std::fs::read_to_string(&config_path).map_err(|e| {
            Error::new(
                ErrorCode::Io,
                format!("cannot read {}: {e}", config_path.display()),
            )
        })?;
        let config_json: Value = serde_json::from_str(&text).map_err(|e| {
            Error::new(
                ErrorCode::InvalidConfig,
                format!("{}: {e}", config_path.display()),
            )
        })?;
        if let Some(q) = config_json
            .get("quantization")
            .or_else(|| config_json.get("quantization_config"))
        {
            return fail(
                ErrorCode::AlreadyQuantized,
                format!(
                    "{} is already quantized (config.json has {}); convert the original \
                     checkpoint instead",
                    dir.display(),
                    serde_json::to_string(q).unwrap_or_default()
                ),
            );
        }
        let config = ModelConfig::parse(&text, &config_path.display().to_string())?;
        let mut files = Vec::new();
        let mut file_of = HashMap::new();
        for path in model_files(dir)? {
            let file = SafetensorsFile::open(&path)?;
            for name in file.tensors.keys() {
                file_of.insert(name.clone(), files.len());
            }
            files.push(file);
        }
        if let Some(name) = file_of.keys().find(|n| n.ends_with(".scales")) {
            return fail(
                ErrorCode::AlreadyQuantized,
                format!(
                    "{} holds quantized weights (`{name}`); convert the original checkpoint \
                     instead",
                    dir.display()
                ),
            );
        }
        let mut source = Source {
            dir: dir.to_path_buf(),
            config_json,
            config,
            layout: Layout::HuggingFace,
            tensors: Vec::new(),
            files,
            file_of,
        };
        source.plan()?;
        Ok(source)
    }

    fn info(&self, name: &str) -> &mlx_node_core::safetensors::TensorInfo {
        &self.files[self.file_of[name]].tensors[name]
    }

    /// Maps every input tensor onto the output model.
    fn plan(&mut self) -> Result<()> {
        let mut names: Vec<&String> = self.file_of.keys().filter(|n| !dropped(n)).collect();
        names.sort();
        let layout = if names.iter().any(|n| n.starts_with("language_model.model.")) {
            Layout::Mlx
        } else if names.iter().any(|n| n.starts_with("model.")) {
            Layout::HuggingFace
        } else {
            return fail(
                ErrorCode::UnsupportedModel,
                format!(
                    "{}: no Qwen3.5 text-model tensors (expected names under \
                     `model.language_model.`, `model.` or `language_model.model.`)",
                    self.dir.display()
                ),
            );
        };
        self.layout = layout;
        let mut out = Vec::new();
        let mut experts: HashMap<(usize, String), Vec<(usize, String)>> = HashMap::new();
        for name in names {
            let rest = match strip_model_prefix(name) {
                Some(rest) => rest.to_string(),
                None if name == "lm_head.weight" || name == "language_model.lm_head.weight" => {
                    out.push(self.tensor(name, "language_model.lm_head.weight", Role::Matrix));
                    continue;
                }
                None => {
                    return fail(
                        ErrorCode::UnsupportedModel,
                        format!(
                            "{}: tensor `{name}` is not part of a Qwen3.5 text model",
                            self.dir.display()
                        ),
                    )
                }
            };
            let mlx = format!("language_model.model.{rest}");
            // Per-expert checkpoints: layers.N.mlp.experts.E.{gate,up,down}_proj.weight.
            if let Some((layer, e, proj)) = per_expert(&rest) {
                experts
                    .entry((layer, proj.to_string()))
                    .or_default()
                    .push((e, name.clone()));
                continue;
            }
            if rest.ends_with(".mlp.experts.gate_up_proj") {
                let shape = self.info(name).shape.clone();
                if shape.len() != 3 || !shape[1].is_multiple_of(2) {
                    return fail(
                        ErrorCode::ShapeMismatch,
                        format!("`{name}` has shape {shape:?}, expected [experts, 2·I, hidden]"),
                    );
                }
                let half = shape[1] / 2;
                let base = mlx.trim_end_matches(".experts.gate_up_proj");
                let bytes = self.input_bytes(name) / 2;
                for (proj, rows) in [("gate_proj", 0..half), ("up_proj", half..2 * half)] {
                    let out_name = format!("{base}.switch_mlp.{proj}.weight");
                    out.push(SourceTensor {
                        module: out_name.trim_end_matches(".weight").to_string(),
                        layer: layer_of(&out_name),
                        name: out_name,
                        role: Role::Matrix,
                        shape: vec![shape[0], half, shape[2]],
                        read: Read::Axis1(name.clone(), rows),
                        input_bytes: bytes,
                    });
                }
                continue;
            }
            if rest.ends_with(".mlp.experts.down_proj") {
                let out_name = format!(
                    "{}.switch_mlp.down_proj.weight",
                    mlx.trim_end_matches(".experts.down_proj")
                );
                out.push(self.tensor(name, &out_name, Role::Matrix));
                continue;
            }
            let role = if rest.ends_with(".conv1d.weight") {
                Role::Conv
            } else if rest.ends_with(".A_log") {
                Role::Float32
            } else if ZERO_CENTRED.iter().any(|s| rest.ends_with(s)) || rest == "norm.weight" {
                Role::ZeroCentredNorm
            } else if self.info(name).shape.len() >= 2 {
                Role::Matrix
            } else {
                Role::Vector
            };
            let mut t = self.tensor(name, &mlx, role);
            if role == Role::Conv {
                let s = &t.shape;
                let conv_is_hf = s.len() == 3 && s[2] != 1;
                if conv_is_hf != (layout == Layout::HuggingFace) && s.len() == 3 && s[1] != s[2] {
                    return fail(
                        ErrorCode::ShapeMismatch,
                        format!(
                            "`{name}` has shape {s:?}, which does not match the {} layout of \
                             the other tensors",
                            if layout == Layout::Mlx {
                                "MLX"
                            } else {
                                "Hugging Face"
                            }
                        ),
                    );
                }
                if layout == Layout::HuggingFace {
                    t.shape = vec![s[0], s[2], s[1]];
                }
            }
            out.push(t);
        }
        for ((layer, proj), mut list) in experts {
            list.sort();
            let first = &list[0].1;
            let inner = self.info(first).shape.clone();
            let mut shape = vec![list.len()];
            shape.extend(inner);
            let name = format!("language_model.model.layers.{layer}.mlp.switch_mlp.{proj}.weight");
            out.push(SourceTensor {
                module: name.trim_end_matches(".weight").to_string(),
                layer: Some(layer),
                input_bytes: list.iter().map(|(_, n)| self.input_bytes(n)).sum(),
                read: Read::Stack(list.into_iter().map(|(_, n)| n).collect()),
                name,
                role: Role::Matrix,
                shape,
            });
        }
        out.sort_by_key(process_order);
        self.check_layers(&out)?;
        self.tensors = out;
        Ok(())
    }

    fn input_bytes(&self, name: &str) -> u64 {
        let info = self.info(name);
        info.len() as u64 * info.dtype.size()
    }

    fn tensor(&self, input: &str, output: &str, role: Role) -> SourceTensor {
        let module = output.strip_suffix(".weight").unwrap_or(output).to_string();
        SourceTensor {
            name: output.to_string(),
            layer: layer_of(output),
            module,
            role,
            shape: self.info(input).shape.clone(),
            read: Read::Whole(input.to_string()),
            input_bytes: self.input_bytes(input),
        }
    }

    /// Every decoder layer the config declares has its mixer; nothing beyond the stack.
    fn check_layers(&self, tensors: &[SourceTensor]) -> Result<()> {
        let layers = self.config.layer_kinds.len();
        if let Some(t) = tensors
            .iter()
            .find(|t| t.layer.is_some_and(|l| l >= layers))
        {
            return fail(
                ErrorCode::ShapeMismatch,
                format!(
                    "`{}` belongs to a layer beyond num_hidden_layers = {layers}",
                    t.name
                ),
            );
        }
        for (i, kind) in self.config.layer_kinds.iter().enumerate() {
            let probe = match kind {
                LayerKind::Linear => "linear_attn.in_proj_qkv.weight",
                LayerKind::Full => "self_attn.q_proj.weight",
            };
            let want = format!("language_model.model.layers.{i}.{probe}");
            if !tensors.iter().any(|t| t.name == want) {
                return fail(
                    ErrorCode::MissingTensor,
                    format!(
                        "{}: `{want}` is missing (layer {i} is {kind:?} in config.json)",
                        self.dir.display()
                    ),
                );
            }
        }
        Ok(())
    }

    /// Whether reading `t` involves arithmetic (the +1 of a Hugging Face norm).
    pub fn shifts(&self, t: &SourceTensor) -> bool {
        self.layout == Layout::HuggingFace && t.role == Role::ZeroCentredNorm
    }

    /// Rows `rows` (along axis 0) of `t` as float32, in the MLX layout: conv1d transposed,
    /// zero-centred norms shifted by +1 when the input is in the Hugging Face layout.
    pub fn read(&self, t: &SourceTensor, rows: Range<usize>) -> Result<Array> {
        self.read_as(t, rows, Dtype::Float32)
    }

    /// [`Source::read`] in `dtype` (read straight into it when nothing has to be computed in
    /// float32 first).
    pub fn read_as(&self, t: &SourceTensor, rows: Range<usize>, dtype: Dtype) -> Result<Array> {
        let f32 = Some(dtype);
        let file = |name: &str| &self.files[self.file_of[name]];
        let mut a = match &t.read {
            Read::Whole(name) => file(name).read_rows(name, rows, f32)?,
            Read::Axis1(name, r) => {
                let stack = file(name).read_rows(name, rows, f32)?;
                slice_axis(&stack, 1, r.start as i32, r.end as i32)?
            }
            Read::Stack(names) => {
                let parts = names[rows]
                    .iter()
                    .map(|n| file(n).read(n, f32))
                    .collect::<Result<Vec<_>>>()?;
                ops::stack(&parts, 0)?
            }
        };
        if self.layout == Layout::HuggingFace {
            match t.role {
                Role::Conv => a = a.transpose_axes(&[0, 2, 1])?,
                Role::ZeroCentredNorm => a = ops::add(&a, Array::from_slice(&[1.0f32], &[]))?,
                _ => {}
            }
        }
        Ok(a)
    }

    /// The files to copy beside the weights, as (source, name in the output): tokenizer,
    /// template, generation defaults, licenses. A tokenizer.json that is a flattened symbolic
    /// link is copied from the file it names.
    pub fn side_files(&self) -> Result<Vec<(PathBuf, String)>> {
        let entries = std::fs::read_dir(&self.dir)
            .map_err(|e| Error::new(ErrorCode::Io, format!("{}: {e}", self.dir.display())))?;
        let mut files = Vec::new();
        for entry in entries.flatten() {
            let name = entry.file_name().to_string_lossy().to_string();
            let upper = name.to_ascii_uppercase();
            let wanted = matches!(
                name.as_str(),
                "tokenizer.json"
                    | "tokenizer_config.json"
                    | "special_tokens_map.json"
                    | "added_tokens.json"
                    | "vocab.json"
                    | "merges.txt"
                    | "chat_template.jinja"
                    | "chat_template.json"
                    | "generation_config.json"
            ) || upper.starts_with("LICENSE")
                || upper.starts_with("NOTICE")
                || upper.starts_with("COPYING");
            if !wanted || !entry.path().is_file() {
                continue;
            }
            let from = if name == "tokenizer.json" {
                mlx_node_core::tokenizer::tokenizer_file(&self.dir)?
            } else {
                entry.path()
            };
            files.push((from, name));
        }
        files.sort_by(|a, b| a.1.cmp(&b.1));
        Ok(files)
    }
}

fn strip_model_prefix(name: &str) -> Option<&str> {
    ["model.language_model.", "language_model.model.", "model."]
        .iter()
        .find_map(|p| name.strip_prefix(p))
}

fn layer_of(name: &str) -> Option<usize> {
    let rest = name.split(".layers.").nth(1)?;
    rest.split('.').next()?.parse().ok()
}

/// `layers.N.mlp.experts.E.{gate,up,down}_proj.weight` → (N, E, proj).
fn per_expert(rest: &str) -> Option<(usize, usize, &str)> {
    let after = rest.strip_prefix("layers.")?;
    let (layer, after) = after.split_once('.')?;
    let after = after.strip_prefix("mlp.experts.")?;
    let (e, after) = after.split_once('.')?;
    let proj = after.strip_suffix(".weight")?;
    if !matches!(proj, "gate_proj" | "up_proj" | "down_proj") {
        return None;
    }
    Some((layer.parse().ok()?, e.parse().ok()?, proj))
}

/// Embedding first, then the layers in order, then the final norm and the head: the order a
/// reader of the progress expects.
fn process_order(t: &SourceTensor) -> (usize, usize, String) {
    let rank = match t.layer {
        _ if t.name.ends_with("embed_tokens.weight") => (0, 0),
        Some(l) => (1, l),
        None if t.name.contains("lm_head") => (3, 0),
        None => (2, 0),
    };
    (rank.0, rank.1, t.name.clone())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names() {
        assert_eq!(
            layer_of("language_model.model.layers.12.mlp.gate.weight"),
            Some(12)
        );
        assert_eq!(layer_of("language_model.model.norm.weight"), None);
        assert_eq!(
            per_expert("layers.3.mlp.experts.17.down_proj.weight"),
            Some((3, 17, "down_proj"))
        );
        assert_eq!(per_expert("layers.3.mlp.experts.down_proj"), None);
        assert!(dropped("model.visual.blocks.0.attn.qkv.weight"));
        assert!(dropped("mtp.fc.weight"));
        assert!(!dropped("model.language_model.norm.weight"));
    }
}
