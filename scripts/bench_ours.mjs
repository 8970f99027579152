// Our side of `npm run bench`: load a folder, prefill, decode; print one JSON line.
//   node scripts/bench_ours.mjs DIR PROMPT_TOKENS DECODE_TOKENS
import { createRequire } from 'node:module'
import { resourceUsage } from 'node:process'

const { loadModel } = createRequire(import.meta.url)('../index.js')
const [dir, promptTokens, decodeTokens] = [process.argv[2], Number(process.argv[3]), Number(process.argv[4])]

const baselineMiB = resourceUsage().maxRSS / 1024
let started = performance.now()
const model = await loadModel(dir)
const loadSeconds = (performance.now() - started) / 1000
// Resident memory the load added, against the weights as the engine holds them.
const loadAddedMiB = resourceUsage().maxRSS / 1024 - baselineMiB
const weightMiB = model.config.weightBytes / 2 ** 20
const prompt = Array.from({ length: promptTokens }, (_, i) => (i * 7919 + 13) % 240000)
await model.logits(prompt.slice(0, 2)) // warm-up
started = performance.now()
await model.logits(prompt)
const prefillSeconds = (performance.now() - started) / 1000
// Decode time: a generation of N + 1 tokens minus one of 1 token (both prefill the prompt).
started = performance.now()
await model.generate(prompt, { maxNewTokens: 1 })
const one = (performance.now() - started) / 1000
started = performance.now()
await model.generate(prompt, { maxNewTokens: decodeTokens + 1 })
const many = (performance.now() - started) / 1000
console.log(JSON.stringify({
  loadSeconds,
  prefillTokensPerSecond: promptTokens / prefillSeconds,
  decodeTokensPerSecond: decodeTokens / Math.max(many - one, 1e-9),
  peakRssMiB: resourceUsage().maxRSS / 1024,
  loadAddedMiB,
  weightMiB,
}))
await model.dispose()
