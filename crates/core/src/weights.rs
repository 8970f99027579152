//! The tensors of a model folder under one naming scheme, whatever layout wrote them:
//!
//! | layout | body prefix | output head | norms | conv1d |
//! |---|---|---|---|---|
//! | Hugging Face (vision-language) | `model.language_model.` | `lm_head.weight` | stored as `w`, used as `1 + w` | `[C, 1, K]` |
//! | Hugging Face (text only) | `model.` | `lm_head.weight` | as above | as above |
//! | MLX (mlx-lm) | `language_model.model.` | `language_model.lm_head.weight` | stored as `1 + w` | `[C, K, 1]` |
//!
//! Names here are relative to the text model (`layers.3.self_attn.q_proj.weight`, `norm.weight`,
//! `lm_head.weight`). Vision tower and multi-token-prediction tensors are skipped. Float weights
//! are converted to the compute dtype while they are read from the file (see `safetensors`).

use std::cell::Cell;
use std::collections::HashMap;
use std::path::Path;

use mlx_rs::{Array, Dtype};

use crate::config::{ModelConfig, QuantParams};
use crate::error::{fail, Error, ErrorCode, Result};
use crate::linear::{slice_axis, Weight};
use crate::safetensors::{model_files, SafetensorsFile, StDtype};

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Layout {
    HuggingFace,
    HuggingFaceText,
    Mlx,
}

impl Layout {
    /// The MLX-layout module path of a text-model name (without `.weight`), as mlx-lm's
    /// `quantization` overrides spell it.
    fn mlx_module_path(name: &str) -> String {
        match name.strip_prefix("lm_head") {
            Some(rest) => format!("language_model.lm_head{rest}"),
            None => format!("language_model.model.{name}"),
        }
    }
}

/// Where a tensor is: which file, under which name there.
struct Entry {
    file: usize,
    name: String,
}

pub struct WeightStore {
    files: Vec<SafetensorsFile>,
    tensors: HashMap<String, Entry>,
    pub layout: Layout,
    /// Whether the zero-centred norms still need `+1` (Hugging Face files).
    shift_norms: bool,
    dtype: Dtype,
    config: ModelConfig,
    /// Bytes of the arrays handed out so far: what the model will hold.
    held: Cell<usize>,
}

impl WeightStore {
    /// Opens every safetensors file of `dir` (checking each header) and maps tensor names.
    pub fn open(dir: &Path, config: &ModelConfig, dtype: Dtype) -> Result<Self> {
        let mut tensors = HashMap::new();
        let mut files = Vec::new();
        let mut layout = None;
        for path in model_files(dir)? {
            let file = SafetensorsFile::open(&path)?;
            for name in file.tensors.keys() {
                let Some((canonical, found)) = Self::canonical(name) else {
                    continue;
                };
                if let Some(found) = found {
                    layout.get_or_insert(found);
                }
                let entry = Entry {
                    file: files.len(),
                    name: name.clone(),
                };
                tensors.insert(canonical, entry);
            }
            files.push(file);
        }
        let Some(layout) = layout else {
            return fail(
                ErrorCode::MissingTensor,
                format!("{} holds no Qwen3.5 text-model tensors", dir.display()),
            );
        };
        // mlx-lm's rule: a conv1d weight still in PyTorch's [C, 1, K] layout means the file
        // was not sanitized, so its zero-centred norms have not been shifted either.
        let shift_norms = tensors.iter().any(|(n, e)| {
            n.ends_with("conv1d.weight") && files[e.file].tensors[&e.name].shape.last() != Some(&1)
        });
        Ok(WeightStore {
            files,
            tensors,
            layout,
            shift_norms,
            dtype,
            config: config.clone(),
            held: Cell::new(0),
        })
    }

    /// Bytes of every array taken from the store so far.
    pub fn held_bytes(&self) -> usize {
        self.held.get()
    }

    /// Maps a file's tensor name to the text-model name, and says which layout it implies;
    /// `None` for tensors a text model does not use.
    fn canonical(name: &str) -> Option<(String, Option<Layout>)> {
        if name.starts_with("model.visual.")
            || name.starts_with("vision_tower.")
            || name.starts_with("mtp.")
            || name.starts_with("language_model.mtp.")
        {
            return None;
        }
        if let Some(rest) = name.strip_prefix("model.language_model.") {
            return Some((rest.to_owned(), Some(Layout::HuggingFace)));
        }
        if let Some(rest) = name.strip_prefix("language_model.model.") {
            return Some((rest.to_owned(), Some(Layout::Mlx)));
        }
        if let Some(rest) = name.strip_prefix("language_model.") {
            return Some((rest.to_owned(), Some(Layout::Mlx)));
        }
        if let Some(rest) = name.strip_prefix("model.") {
            return Some((rest.to_owned(), Some(Layout::HuggingFaceText)));
        }
        if name.starts_with("lm_head.") {
            return Some((name.to_owned(), None));
        }
        None
    }

    pub fn contains(&self, name: &str) -> bool {
        self.tensors.contains_key(name)
    }

    fn entry(
        &self,
        name: &str,
    ) -> Result<(&SafetensorsFile, &crate::safetensors::TensorInfo, &str)> {
        let entry = self.tensors.get(name).ok_or_else(|| {
            Error::new(
                ErrorCode::MissingTensor,
                format!(
                    "tensor `{name}` is missing from the model files ({:?} layout)",
                    self.layout
                ),
            )
        })?;
        let file = &self.files[entry.file];
        Ok((file, &file.tensors[&entry.name], &entry.name))
    }

    fn check_shape(&self, name: &str, expected: &[usize]) -> Result<()> {
        let (file, info, _) = self.entry(name)?;
        if info.shape != expected {
            return fail(
                ErrorCode::ShapeMismatch,
                format!(
                    "tensor `{name}` in {} has shape {:?}, the config implies {expected:?}",
                    file.path.display(),
                    info.shape
                ),
            );
        }
        Ok(())
    }

    /// Reads a tensor, converting floats to `dtype` (integers are read as they are).
    fn read(&self, name: &str, dtype: Dtype) -> Result<Array> {
        let (file, _, in_file) = self.entry(name)?;
        file.read(in_file, Some(dtype))
    }

    /// Makes `a` (computed from what was read) real and counts it as held by the model.
    fn keep(&self, a: Array) -> Result<Array> {
        a.eval()?;
        self.held.set(self.held.get() + a.nbytes());
        Ok(a)
    }

    /// A float tensor of the given shape, in the compute dtype.
    pub fn tensor(&self, name: &str, shape: &[usize]) -> Result<Array> {
        self.check_shape(name, shape)?;
        self.keep(self.read(name, self.dtype)?)
    }

    /// A dense matrix for `x · wᵀ`: with float32 activations a 16-bit matrix stays as stored
    /// (our CPU kernel widens it exactly as it reads it, at half the bytes of a float32 copy;
    /// linear.rs converts it for MLX's own ops); otherwise in the compute dtype.
    fn matmul_operand(&self, name: &str, shape: &[usize]) -> Result<Array> {
        self.check_shape(name, shape)?;
        let (file, info, in_file) = self.entry(name)?;
        let narrow = matches!(info.dtype, StDtype::BF16 | StDtype::F16);
        if self.dtype == Dtype::Float32 && narrow {
            return self.keep(file.read(in_file, None)?);
        }
        self.keep(self.read(name, self.dtype)?)
    }

    /// A float tensor kept in float32 whatever the compute dtype (A_log, dt_bias).
    pub fn tensor_f32(&self, name: &str, shape: &[usize]) -> Result<Array> {
        self.check_shape(name, shape)?;
        self.keep(self.read(name, Dtype::Float32)?)
    }

    /// A zero-centred RMSNorm weight as the multiplier `1 + w`, added and kept in float32.
    pub fn shifted_norm(&self, name: &str, dim: usize) -> Result<Array> {
        self.check_shape(name, &[dim])?;
        let w = self.read(name, Dtype::Float32)?;
        if !self.shift_norms {
            return self.keep(w);
        }
        self.keep(w.add(Array::from_f32(1.0))?)
    }

    /// The depthwise conv weight as `[C, K]` (tap `K − 1` multiplies the newest input).
    pub fn conv_weight(&self, name: &str, channels: usize, kernel: usize) -> Result<Array> {
        let (_, info, _) = self.entry(name)?;
        if info.shape != [channels, 1, kernel] && info.shape != [channels, kernel, 1] {
            return fail(
                ErrorCode::ShapeMismatch,
                format!(
                    "tensor `{name}` has shape {:?}, the config implies [{channels}, 1, {kernel}] \
                     (or MLX's [{channels}, {kernel}, 1])",
                    info.shape
                ),
            );
        }
        self.keep(
            self.read(name, self.dtype)?
                .reshape(&[channels as i32, kernel as i32])?,
        )
    }

    /// The weight of the module `prefix` (e.g. `layers.0.mlp.down_proj`) mapping `inputs` to
    /// `outputs`, quantized when the file has `prefix.scales`.
    pub fn linear(&self, prefix: &str, outputs: usize, inputs: usize) -> Result<Weight> {
        self.matrix(prefix, &[], outputs, inputs)
    }

    /// Like [`Self::linear`] for a stacked `[E, out, in]` bank stored under one name.
    pub fn matrix(
        &self,
        prefix: &str,
        lead: &[usize],
        outputs: usize,
        inputs: usize,
    ) -> Result<Weight> {
        let weight = format!("{prefix}.weight");
        let scales = format!("{prefix}.scales");
        let mut full = lead.to_vec();
        full.extend([outputs, inputs]);
        if !self.contains(&scales) {
            return Ok(Weight::Dense(self.matmul_operand(&weight, &full)?));
        }
        let params = self.quant_params(prefix, inputs)?;
        let mut packed = lead.to_vec();
        packed.extend([outputs, inputs * params.bits / 32]);
        let mut grouped = lead.to_vec();
        grouped.extend([outputs, inputs / params.group_size]);
        self.check_shape(&weight, &packed)?;
        let (_, info, _) = self.entry(&weight)?;
        if info.dtype != StDtype::U32 {
            return fail(
                ErrorCode::UnsupportedQuantization,
                format!(
                    "quantized tensor `{weight}` is {:?}, expected uint32 codes",
                    info.dtype
                ),
            );
        }
        let biases = format!("{prefix}.biases");
        Ok(Weight::Quantized {
            codes: self.keep(self.read(&weight, Dtype::Uint32)?)?,
            scales: self.tensor(&scales, &grouped)?,
            biases: self.tensor(&biases, &grouped)?,
            params,
        })
    }

    fn quant_params(&self, prefix: &str, inputs: usize) -> Result<QuantParams> {
        let path = Layout::mlx_module_path(prefix);
        let params = self.config.quantization.for_module(&path).ok_or_else(|| {
            Error::new(
                ErrorCode::UnsupportedQuantization,
                format!("`{prefix}` has quantization scales but config.json gives no quantization for `{path}`"),
            )
        })?;
        if !inputs.is_multiple_of(params.group_size) || !(inputs * params.bits).is_multiple_of(32) {
            return fail(
                ErrorCode::ShapeMismatch,
                format!(
                    "`{prefix}`: input size {inputs} does not split into groups of {} at {} bits",
                    params.group_size, params.bits
                ),
            );
        }
        Ok(params)
    }

    /// The routed experts' `gate`, `up` and `down` banks of MoE layer `layer`, from any of the
    /// three forms: mlx-lm's `switch_mlp.*`, the fused `experts.gate_up_proj` /
    /// `experts.down_proj` of Hugging Face files, or one tensor per expert.
    pub fn experts(
        &self,
        layer: usize,
        experts: usize,
        hidden: usize,
        width: usize,
    ) -> Result<[Weight; 3]> {
        let base = format!("layers.{layer}.mlp");
        let switch = format!("{base}.switch_mlp");
        if self.contains(&format!("{switch}.gate_proj.weight")) {
            return Ok([
                self.matrix(&format!("{switch}.gate_proj"), &[experts], width, hidden)?,
                self.matrix(&format!("{switch}.up_proj"), &[experts], width, hidden)?,
                self.matrix(&format!("{switch}.down_proj"), &[experts], hidden, width)?,
            ]);
        }
        let fused = format!("{base}.experts.gate_up_proj");
        if self.contains(&fused) {
            self.check_shape(&fused, &[experts, 2 * width, hidden])?;
            let down = format!("{base}.experts.down_proj");
            self.check_shape(&down, &[experts, hidden, width])?;
            let gate_up = self.read(&fused, self.dtype)?;
            let w = width as i32;
            // Gate rows come first. Each half is copied out whole, so the kernels see
            // contiguous banks and the fused buffer is freed.
            let half = |start: i32| -> Result<Weight> {
                let part = slice_axis(&gate_up, 1, start, start + w)?.contiguous()?;
                Ok(Weight::Dense(self.keep(part)?))
            };
            let down = Weight::Dense(self.keep(self.read(&down, self.dtype)?)?);
            return Ok([half(0)?, half(w)?, down]);
        }
        let per_expert = |proj: &str, rows: usize, cols: usize| -> Result<Weight> {
            let parts = (0..experts)
                .map(|e| {
                    let name = format!("{base}.experts.{e}.{proj}.weight");
                    self.check_shape(&name, &[rows, cols])?;
                    self.read(&name, self.dtype)
                })
                .collect::<Result<Vec<_>>>()?;
            Ok(Weight::Dense(self.keep(mlx_rs::ops::stack(&parts, 0)?)?))
        };
        Ok([
            per_expert("gate_proj", width, hidden)?,
            per_expert("up_proj", width, hidden)?,
            per_expert("down_proj", hidden, width)?,
        ])
    }
}
