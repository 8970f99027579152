"""Float32 logits of an MLX folder as mlx-lm 0.32.2 computes them (used by tests/mlx_lm.rs).

Usage: python mlx_lm_logits.py MODEL_DIR OUT.safetensors ID ID ...
"""
import sys
from pathlib import Path

import mlx.core as mx
from mlx_lm.utils import load_model

model_dir, out, *ids = sys.argv[1:]
model, _ = load_model(Path(model_dir))
# mlx-lm computes in the dtype it loads (bf16); float32 compares with our float32 engine.
model.set_dtype(mx.float32)
logits = model(mx.array([[int(i) for i in ids]]))
mx.save_safetensors(out, {"logits": logits.astype(mx.float32)})
