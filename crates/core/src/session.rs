//! A loaded model folder with everything a conversation needs: the model, its tokenizer, its
//! generation defaults, and the conversation cache reused from one call to the next.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use mlx_node_chat::{ChatTemplate, TemplateError};
use mlx_rs::Dtype;

use crate::config::ModelConfig;
use crate::error::{Error, ErrorCode, Result};
use crate::generate::ConversationCache;
use crate::generation_config::GenerationDefaults;
use crate::model::Qwen35;
use crate::runtime::default_compute_dtype;
use crate::tokenizer::Tokenizer;

pub struct Session {
    pub model: Qwen35,
    /// Absent when the folder has no tokenizer.json (token-level calls still work).
    pub tokenizer: Option<Arc<Tokenizer>>,
    /// Absent when the folder has no chat template (chat calls then fail with a clear error).
    pub template: Option<Arc<ChatTemplate>>,
    pub defaults: GenerationDefaults,
    pub conversation: ConversationCache,
    pub dir: PathBuf,
}

impl Session {
    /// Loads `dir`, computing in `dtype` or the backend's default.
    pub fn load(dir: &Path, dtype: Option<Dtype>) -> Result<Self> {
        if !dir.is_dir() {
            return Err(Error::new(
                ErrorCode::Io,
                format!(
                    "{} is not a model folder (no such directory)",
                    dir.display()
                ),
            ));
        }
        let config = ModelConfig::load(dir)?;
        let dtype = dtype.unwrap_or_else(|| default_compute_dtype(config.dtype.as_deref()));
        let model = Qwen35::load(dir, dtype)?;
        let tokenizer = if dir.join("tokenizer.json").exists() {
            Some(Arc::new(Tokenizer::from_model_dir(dir)?))
        } else {
            None
        };
        let template = match ChatTemplate::from_model_dir(dir) {
            Ok(t) => Some(Arc::new(t)),
            Err(TemplateError::NotFound { .. }) => None,
            Err(e) => return Err(Error::new(ErrorCode::TemplateError, e.to_string())),
        };
        Ok(Session {
            model,
            tokenizer,
            template,
            defaults: GenerationDefaults::load(dir)?,
            conversation: ConversationCache::default(),
            dir: dir.to_path_buf(),
        })
    }

    pub fn tokenizer(&self) -> Result<&Arc<Tokenizer>> {
        self.tokenizer.as_ref().ok_or_else(|| {
            Error::new(
                ErrorCode::MissingTokenizer,
                format!("{} has no tokenizer.json", self.dir.display()),
            )
        })
    }

    pub fn template(&self) -> Result<&Arc<ChatTemplate>> {
        self.template.as_ref().ok_or_else(|| {
            Error::new(
                ErrorCode::MissingChatTemplate,
                format!(
                    "{} has no chat template (chat_template.jinja, or chat_template in tokenizer_config.json)",
                    self.dir.display()
                ),
            )
        })
    }

    /// Token ids that end a reply: the config's and generation_config's end tokens, and the
    /// chat end markers when the tokenizer knows them.
    pub fn stop_tokens(&self) -> Vec<u32> {
        let mut ids = self.defaults.eos_token_ids.clone();
        ids.extend(&self.model.config.eos_token_ids);
        if let Some(t) = &self.tokenizer {
            ids.extend(
                ["<|im_end|>", "<|endoftext|>"]
                    .iter()
                    .filter_map(|s| t.token_id(s)),
            );
        }
        ids.sort_unstable();
        ids.dedup();
        ids
    }
}
