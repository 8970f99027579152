"""mlx-lm's side of `npm run bench`, on one model folder; prints one JSON line.

The same protocol as scripts/bench_ours.mjs: load; a raw prompt of --prompt-tokens tokens with
one token generated (time to first token, prompt tokens/s as mlx-lm reports them); then a
greedy 4-turn chat (thinking off) with --decode-tokens tokens a turn, the prompt cache kept
across turns, and turn 4's generation tokens/s as mlx-lm reports it.

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
from mlx_lm import load, stream_generate
from mlx_lm.models.cache import make_prompt_cache
from mlx_lm.sample_utils import make_sampler

parser = argparse.ArgumentParser()
parser.add_argument("--model", required=True)
parser.add_argument("--mode", choices=["bf16", "f32"], required=True)
parser.add_argument("--prompt-tokens", type=int, required=True)
parser.add_argument("--decode-tokens", type=int, required=True)
parser.add_argument("--turns", required=True, help="JSON list of the user turns")
args = parser.parse_args()

started = time.perf_counter()
model, tokenizer = load(args.model)
if args.mode == "f32":
    model.update(tree_map(lambda p: p.astype(mx.float32) if mx.issubdtype(p.dtype, mx.floating) else p, model.parameters()))
mx.eval(model.parameters())
load_s = time.perf_counter() - started
greedy = make_sampler(temp=0.0)

prompt = [(i * 7919 + 13) % 240000 for i in range(args.prompt_tokens)]
for _ in stream_generate(model, tokenizer, prompt[:2], max_tokens=1, sampler=greedy):  # warm-up
    pass
started = time.perf_counter()
for r in stream_generate(model, tokenizer, prompt, max_tokens=1, sampler=greedy):
    ttft_ms = (time.perf_counter() - started) * 1000
    prompt_tps = r.prompt_tps

messages = []
cache = make_prompt_cache(model)
cached = []  # token ids the cache holds
rebuilt = 0
for i, content in enumerate(json.loads(args.turns)):
    messages.append({"role": "user", "content": content})
    ids = tokenizer.apply_chat_template(messages, add_generation_prompt=True, enable_thinking=False)
    if ids[: len(cached)] == cached:
        new = ids[len(cached):]
    else:
        # The re-rendered history differs from what was generated (a reply that does not
        # round-trip through the tokenizer): start the cache over, as mlx-lm's server does.
        cache = make_prompt_cache(model)
        cached, new = [], ids
        rebuilt += 1
    out = []
    last = None
    for r in stream_generate(model, tokenizer, new, max_tokens=args.decode_tokens, sampler=greedy, prompt_cache=cache):
        out.append(r.token)
        last = r
    cached = ids + out
    messages.append({"role": "assistant", "content": tokenizer.decode(out)})
    if i == 3:
        turn4 = {"decodeTokensPerSecond": last.generation_tps, "turn4PromptTokens": len(ids), "turn4CompletionTokens": last.generation_tokens}

print(json.dumps({
    "loadSeconds": load_s,
    "ttftMs": ttft_ms,
    "prefillTokensPerSecond": prompt_tps,
    **turn4,
    "cacheRebuilds": rebuilt,
    "peakRssMiB": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
}))
