// The user turns of the benchmark's multi-turn chat (the same for every runner).
export const TURNS = [
  'Explain the hybrid attention mechanism in Qwen3.5 in a few sentences.',
  'How does the recurrent state of a Gated DeltaNet layer differ from a KV cache?',
  'Why would a mixed-precision quantization keep some tensors at higher bits?',
  'Summarise the three answers above as a short list.',
]
