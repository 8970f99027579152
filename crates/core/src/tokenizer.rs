//! The model's tokenizer (`tokenizer.json`, through the `tokenizers` crate) and a streaming
//! decoder that only ever emits whole UTF-8 characters.

use std::path::{Path, PathBuf};

use crate::error::{fail, Error, ErrorCode, Result};

pub struct Tokenizer {
    inner: tokenizers::Tokenizer,
}

/// `tokenizer.json`, or the file it names when it is a flattened symbolic link: a checkout
/// without symlink support (git's `core.symlinks=false`) leaves a small text file holding the
/// link's relative target instead.
pub fn tokenizer_file(dir: &Path) -> Result<PathBuf> {
    let path = dir.join("tokenizer.json");
    let meta = std::fs::metadata(&path).map_err(|e| {
        Error::new(
            ErrorCode::Io,
            format!(
                "cannot read {}: {e} (the model folder needs its tokenizer.json)",
                path.display()
            ),
        )
    })?;
    if meta.len() < 1024 {
        if let Ok(text) = std::fs::read_to_string(&path) {
            let target = dir.join(text.trim());
            if !text.trim_start().starts_with('{') && target.is_file() {
                return Ok(target);
            }
        }
    }
    Ok(path)
}

impl Tokenizer {
    pub fn from_model_dir(dir: &Path) -> Result<Self> {
        let path = tokenizer_file(dir)?;
        let inner = tokenizers::Tokenizer::from_file(&path).map_err(|e| {
            Error::new(
                ErrorCode::InvalidConfig,
                format!("{} is not a valid tokenizer: {e}", path.display()),
            )
        })?;
        Ok(Tokenizer { inner })
    }

    /// Token ids of `text`; special tokens written in the text (`<|im_start|>`) become their
    /// ids, and nothing is added (Qwen3.5 has no BOS).
    pub fn encode(&self, text: &str) -> Result<Vec<u32>> {
        let encoding = self.inner.encode(text, false).map_err(|e| {
            Error::new(
                ErrorCode::InvalidArgument,
                format!("cannot tokenize the text: {e}"),
            )
        })?;
        Ok(encoding.get_ids().to_vec())
    }

    /// Token ids of `text` with special-token text (`<|im_start|>`) tokenized as ordinary
    /// text, as llama.cpp does for calibration text (`parse_special = false`).
    pub fn encode_as_text(&mut self, text: &str) -> Result<Vec<u32>> {
        self.inner.set_encode_special_tokens(true);
        let ids = self.encode(text);
        self.inner.set_encode_special_tokens(false);
        ids
    }

    /// The text of `ids`, special tokens included unless `skip_special`.
    pub fn decode(&self, ids: &[u32], skip_special: bool) -> Result<String> {
        self.inner.decode(ids, skip_special).map_err(|e| {
            Error::new(
                ErrorCode::InvalidArgument,
                format!("cannot decode token ids: {e}"),
            )
        })
    }

    pub fn token_id(&self, token: &str) -> Option<u32> {
        self.inner.token_to_id(token)
    }

    pub fn vocab_size(&self) -> usize {
        self.inner.get_vocab_size(true)
    }

    pub fn check_ids(&self, ids: &[u32], model_vocab: usize) -> Result<()> {
        if let Some(bad) = ids.iter().find(|&&id| id as usize >= model_vocab) {
            return fail(
                ErrorCode::InvalidArgument,
                format!("token id {bad} is outside the vocabulary (size {model_vocab})"),
            );
        }
        Ok(())
    }
}

/// Turns generated ids into text as they come. Byte-level BPE tokens can end inside a UTF-8
/// character, so text is only released once the decoded tail no longer ends in an incomplete
/// character (U+FFFD), and always as the difference between two decodes of the same window.
#[derive(Default)]
pub struct StreamDecoder {
    ids: Vec<u32>,
    /// Start of the window re-decoded each time (a few tokens back, for context-dependent
    /// decoders such as byte fallback).
    prefix: usize,
    /// Ids up to here have been released as text.
    read: usize,
}

impl StreamDecoder {
    pub fn new() -> Self {
        Self::default()
    }

    /// Adds one id and returns the text that became complete (maybe empty).
    pub fn push(&mut self, tokenizer: &Tokenizer, id: u32) -> Result<String> {
        self.ids.push(id);
        let before = tokenizer.decode(&self.ids[self.prefix..self.read], false)?;
        let now = tokenizer.decode(&self.ids[self.prefix..], false)?;
        if now.len() > before.len() && !now.ends_with('\u{FFFD}') && now.starts_with(&before) {
            let text = now[before.len()..].to_owned();
            self.prefix = self.read;
            self.read = self.ids.len();
            return Ok(text);
        }
        Ok(String::new())
    }

    /// Whatever is still held back (an incomplete character at the very end).
    pub fn finish(&mut self, tokenizer: &Tokenizer) -> Result<String> {
        let before = tokenizer.decode(&self.ids[self.prefix..self.read], false)?;
        let now = tokenizer.decode(&self.ids[self.prefix..], false)?;
        self.prefix = self.ids.len();
        self.read = self.ids.len();
        Ok(now.get(before.len()..).unwrap_or_default().to_owned())
    }
}
