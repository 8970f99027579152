//! Random-weight Qwen3.5 checkpoints for demos, benchmarks and tests.
