//! `generation_config.json`: the sampling defaults and end tokens a checkpoint ships with.

use std::path::Path;

use serde_json::Value;

use crate::error::{Error, ErrorCode, Result};

#[derive(Clone, Debug, Default, PartialEq)]
pub struct GenerationDefaults {
    pub temperature: Option<f32>,
    pub top_k: Option<usize>,
    pub top_p: Option<f32>,
    pub min_p: Option<f32>,
    pub repetition_penalty: Option<f32>,
    /// `false` means greedy by default.
    pub do_sample: Option<bool>,
    pub eos_token_ids: Vec<u32>,
}

impl GenerationDefaults {
    /// Reads `<dir>/generation_config.json`; a folder without one has no defaults.
    pub fn load(dir: &Path) -> Result<Self> {
        let path = dir.join("generation_config.json");
        let Ok(text) = std::fs::read_to_string(&path) else {
            return Ok(Self::default());
        };
        let json: Value = serde_json::from_str(&text).map_err(|e| {
            Error::new(
                ErrorCode::InvalidConfig,
                format!("{} is not valid JSON: {e}", path.display()),
            )
        })?;
        let f = |k: &str| json.get(k).and_then(Value::as_f64).map(|v| v as f32);
        let eos_token_ids = crate::config::token_ids(json.get("eos_token_id"));
        Ok(GenerationDefaults {
            temperature: f("temperature"),
            top_k: json
                .get("top_k")
                .and_then(Value::as_u64)
                .map(|v| v as usize),
            top_p: f("top_p"),
            min_p: f("min_p"),
            repetition_penalty: f("repetition_penalty"),
            do_sample: json.get("do_sample").and_then(Value::as_bool),
            eos_token_ids,
        })
    }
}
