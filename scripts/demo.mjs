// `npm run demo`: builds what is missing, makes a random Qwen3.5 model once (the real
// tokenizer, template and vocabulary, random weights; cached in .mlx/models/), loads it and
// generates from it. `npm run demo -- --model DIR` uses a model folder of yours instead.
// (The chat demo — text in, text out — arrives with the tokenizer and template layer.)
import { existsSync } from 'node:fs'
import { createRequire } from 'node:module'
import { join } from 'node:path'

import { build } from './build.mjs'
import { root, run } from './lib.mjs'

const args = process.argv.slice(2)
const modelFlag = args.indexOf('--model')
let modelDir = modelFlag >= 0 ? args[modelFlag + 1] : undefined

build()
const { loadModel, mlxInfo } = createRequire(import.meta.url)('../index.js')
const info = mlxInfo()
console.log(`@mlx-node/lm on MLX ${info.version}, device ${info.device}, backend ${info.backend}`)

if (!modelDir) {
  modelDir = join(root, '.mlx', 'models', 'demo-small')
  if (!existsSync(join(modelDir, 'config.json'))) {
    console.log('making a random-weight Qwen3.5 model (once) ...')
    run('cargo', ['run', '--quiet', '--release', '-p', 'mlx-node-model-gen', '--',
      '--out', modelDir, '--preset', 'small', '--cache', join(root, '.mlx', 'cache')])
  }
  console.log('note: the weights are random, so the tokens mean nothing; the speed is real.')
}

const loadStart = performance.now()
const model = await loadModel(modelDir)
const c = model.config
console.log(`loaded ${modelDir} in ${((performance.now() - loadStart) / 1000).toFixed(2)} s: ` +
  `${c.modelType}, ${c.numLayers} layers, hidden ${c.hiddenSize}, vocab ${c.vocabSize}, ` +
  `${c.quantized ? 'quantized' : 'not quantized'}, computing in ${c.dtype}`)

// "<|im_start|>user\nHello<|im_end|>\n<|im_start|>assistant\n" in Qwen3.5's vocabulary.
const prompt = [248045, 846, 198, 9419, 248046, 198, 248045, 74455, 198]
const maxNewTokens = 32
const started = performance.now()
const ids = await model.generate(prompt, { maxNewTokens })
const seconds = (performance.now() - started) / 1000
console.log(`generated ${ids.length} tokens in ${seconds.toFixed(2)} s ` +
  `(${(ids.length / seconds).toFixed(1)} tokens/s including the prompt): ${ids.join(' ')}`)
await model.dispose()
