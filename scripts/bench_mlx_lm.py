"""mlx-lm's side of `npm run bench`: load a folder, prefill, decode; print one JSON line.

mode "bf16" measures mlx-lm as it loads a model; mode "f32" casts every floating parameter
(weights, quantization scales and biases) to float32 after loading, which is much faster on
MLX's CPU backend (bf16 arithmetic is emulated there).
"""
import argparse
import json
import resource
import time

import mlx.core as mx
from mlx.utils import tree_map
from mlx_lm import load
from mlx_lm.models.cache import make_prompt_cache

parser = argparse.ArgumentParser()
parser.add_argument("--model", required=True)
parser.add_argument("--mode", choices=["bf16", "f32"], required=True)
parser.add_argument("--prompt-tokens", type=int, required=True)
parser.add_argument("--decode-tokens", type=int, required=True)
args = parser.parse_args()

started = time.perf_counter()
model, _ = load(args.model)
if args.mode == "f32":
    model.update(tree_map(lambda p: p.astype(mx.float32) if mx.issubdtype(p.dtype, mx.floating) else p, model.parameters()))
mx.eval(model.parameters())
load_s = time.perf_counter() - started

prompt = mx.array([[(i * 7919 + 13) % 240000 for i in range(args.prompt_tokens)]])
cache = make_prompt_cache(model)
mx.eval(model(prompt[:, :2], cache=make_prompt_cache(model)))  # warm-up
started = time.perf_counter()
logits = model(prompt, cache=cache)
mx.eval(logits)
prefill_s = time.perf_counter() - started
token = mx.argmax(logits[:, -1, :], axis=-1)[:, None]
started = time.perf_counter()
for _ in range(args.decode_tokens):
    logits = model(token, cache=cache)
    token = mx.argmax(logits[:, -1, :], axis=-1)[:, None]
    mx.eval(token)
decode_s = time.perf_counter() - started
print(json.dumps({
    "loadSeconds": load_s,
    "prefillTokensPerSecond": args.prompt_tokens / prefill_s,
    "decodeTokensPerSecond": args.decode_tokens / decode_s,
    "peakRssMiB": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
}))
