// `npm run demo`: builds what is missing, makes a random-weight Qwen3.5 model once (real
// tokenizer, template and vocabulary; cached in .mlx/models/), calibrates an imatrix on it
// (`imatrix()`, over this README) and converts it with the unsloth recipe (`convert()`), then
// chats with the converted model: several turns with thinking on and off and a tool, streamed,
// with tokens/s.
// `npm run demo -- --model DIR` chats with a model folder of yours instead.
import { existsSync } from 'node:fs'
import { createRequire } from 'node:module'
import { join } from 'node:path'

import { build } from './build.mjs'
import { root, run } from './lib.mjs'

const args = process.argv.slice(2)
const modelFlag = args.indexOf('--model')
let modelDir = modelFlag >= 0 ? args[modelFlag + 1] : undefined
const random = !modelDir

build()
const { convert, imatrix, loadModel, mlxInfo } = createRequire(import.meta.url)('../index.js')
const info = mlxInfo()
console.log(`@mlx-node/lm on MLX ${info.version}, device ${info.device}, backend ${info.backend}`)

if (random) {
  modelDir = join(root, '.mlx', 'models', 'demo-small')
  if (!existsSync(join(modelDir, 'config.json'))) {
    console.log('making a random-weight Qwen3.5 model (once) ...')
    run('cargo', ['run', '--quiet', '--release', '-p', 'mlx-node-model-gen', '--',
      '--out', modelDir, '--preset', 'small', '--cache', join(root, '.mlx', 'cache')])
  }
  const converted = join(root, '.mlx', 'models', 'demo-small-UD-Q4_K_XL-mlx')
  if (!existsSync(join(converted, 'config.json'))) {
    const imatrixPath = join(root, '.mlx', 'models', 'demo-small.imatrix.gguf')
    console.log('calibrating an importance matrix on README.md (imatrix(), once) ...')
    const m = await imatrix({ model: modelDir, file: join(root, 'README.md'), output: imatrixPath })
    console.log(`  ${m.chunks} chunks of 256 tokens, ${m.entries} matrices, ${m.seconds.toFixed(1)} s`)
    console.log('converting: unsloth recipe, base 4 bits, AWQ from that imatrix (convert(), once) ...')
    const r = await convert({ input: modelDir, output: converted, quantize: true, bits: 4, recipe: 'unsloth', imatrixPath, force: true })
    console.log(r.table)
  }
  modelDir = converted
  console.log('note: this model has RANDOM weights, so its replies are noise; the speed is real.')
}

const loadStart = performance.now()
const model = await loadModel(modelDir)
const c = model.config
console.log(`loaded ${modelDir} in ${((performance.now() - loadStart) / 1000).toFixed(2)} s: ` +
  `${c.numLayers} layers, hidden ${c.hiddenSize}, ${c.quantized ? 'quantized' : 'not quantized'}, computing in ${c.dtype}\n`)

const tools = [{
  type: 'function',
  function: {
    name: 'get_weather',
    description: 'Current weather for a city',
    parameters: { type: 'object', properties: { city: { type: 'string' } }, required: ['city'] },
  },
}]
// A random model does not end its turns by itself, so keep replies short there.
const maxNewTokens = random ? 24 : 512
const messages = [{ role: 'system', content: 'You are a helpful assistant.' }]
const turns = [
  { content: 'Hello! Who are you?', enableThinking: false },
  { content: 'Why is the sky blue?', enableThinking: true },
  { content: 'What is the weather in Paris?', enableThinking: false, tools },
]

for (const turn of turns) {
  messages.push({ role: 'user', content: turn.content })
  console.log(`user: ${turn.content}   [thinking ${turn.enableThinking ? 'on' : 'off'}${turn.tools ? ', tools' : ''}]`)
  process.stdout.write('assistant: ')
  let mode = 'text'
  let reply = ''
  const started = performance.now()
  let tokens = 0
  for await (const chunk of model.chatStream(messages, { maxNewTokens, enableThinking: turn.enableThinking, tools: turn.tools })) {
    if (chunk.type !== mode) {
      process.stdout.write(chunk.type === 'thinking' ? '\n  (thinking) ' : '\n  ')
      mode = chunk.type
    }
    process.stdout.write(chunk.text)
    if (chunk.type === 'text') reply += chunk.text
    tokens++
  }
  const seconds = (performance.now() - started) / 1000
  console.log(`\n  [${tokens} chunks in ${seconds.toFixed(2)} s]`)
  messages.push({ role: 'assistant', content: reply })
}

// The same turn once more without streaming, to show the full result object.
const result = await model.chat(messages.slice(0, 2), { maxNewTokens, temperature: 0.6, enableThinking: false })
console.log(`\nchat(): finishReason ${result.finishReason}, ${result.usage.promptTokens} prompt tokens ` +
  `(${result.usage.cachedTokens} from the cache), ${result.usage.completionTokens} generated; ` +
  `time to first token ${result.performance.ttftMs.toFixed(0)} ms, ` +
  `prefill ${result.performance.prefillTokensPerSecond.toFixed(1)} tokens/s, ` +
  `decode ${result.performance.decodeTokensPerSecond.toFixed(1)} tokens/s`)
await model.dispose()
