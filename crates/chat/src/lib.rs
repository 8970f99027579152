//! The chat format of Qwen3.5 models.
