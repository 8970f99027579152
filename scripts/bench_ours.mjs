// Our side of `npm run bench`, on one model folder; prints one JSON line.
//   node scripts/bench_ours.mjs DIR PROMPT_TOKENS DECODE_TOKENS
// * load: loadModel's time, and the resident memory it added against the weights held;
// * prefill / time to first token: a raw PROMPT_TOKENS-token prompt, one token generated;
// * decode: turn 4 of a greedy multi-turn chat (thinking off), DECODE_TOKENS tokens a turn,
//   the model card's method: what the engine reports for that turn's decode.
import { createRequire } from 'node:module'
import { resourceUsage } from 'node:process'

import { TURNS } from './bench_turns.mjs'

const { loadModel } = createRequire(import.meta.url)('../index.js')
const [dir, promptTokens, decodeTokens] = [process.argv[2], Number(process.argv[3]), Number(process.argv[4])]

const baselineMiB = resourceUsage().maxRSS / 1024
let started = performance.now()
const model = await loadModel(dir)
const loadSeconds = (performance.now() - started) / 1000
const loadAddedMiB = resourceUsage().maxRSS / 1024 - baselineMiB
const weightMiB = model.config.weightBytes / 2 ** 20

const prompt = Array.from({ length: promptTokens }, (_, i) => (i * 7919 + 13) % 240000)
await model.generate(prompt.slice(0, 2), { maxNewTokens: 1 }) // warm-up
started = performance.now()
await model.generate(prompt, { maxNewTokens: 1 })
const ttftMs = performance.now() - started
// Prefill alone: the logits at the last position of the prompt.
started = performance.now()
await model.logits(prompt)
const prefillSeconds = (performance.now() - started) / 1000

const messages = []
let turn4
for (const [i, content] of TURNS.entries()) {
  messages.push({ role: 'user', content })
  const r = await model.chat(messages, { maxNewTokens: decodeTokens, temperature: 0, enableThinking: false })
  messages.push({ role: 'assistant', content: r.text })
  if (i === 3) turn4 = r
}
console.log(JSON.stringify({
  loadSeconds,
  ttftMs,
  prefillTokensPerSecond: promptTokens / prefillSeconds,
  decodeTokensPerSecond: turn4.performance.decodeTokensPerSecond,
  turn4PromptTokens: turn4.usage.promptTokens,
  turn4CachedTokens: turn4.usage.cachedTokens,
  turn4CompletionTokens: turn4.usage.completionTokens,
  peakRssMiB: resourceUsage().maxRSS / 1024,
  loadAddedMiB,
  weightMiB,
}))
await model.dispose()
