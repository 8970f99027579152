//! llama.cpp importance matrices for Qwen3.5.
