// The low-level model API from JS: loadModel, config, logits, generate, dispose, and errors
// with stable codes. Parity itself is tested in Rust (crates/core/tests/parity.rs); here the
// same references check that JS receives the engine's numbers unchanged.
import assert from 'node:assert/strict'
import { cpSync, mkdtempSync, readFileSync, rmSync, truncateSync, writeFileSync, statSync } from 'node:fs'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { after, describe, test } from 'node:test'

import { loadModel } from '../index.js'
import { fixtureOptions, fixtures, reference } from './fixtures.mjs'

const options = fixtureOptions()
const scratch = mkdtempSync(join(tmpdir(), 'mlx-node-model-'))
after(() => rmSync(scratch, { recursive: true, force: true }))

/** A copy of a fixture folder (links resolved) that a test may damage. */
function copyOf(name) {
  const dir = join(scratch, `${name}-${Math.random().toString(36).slice(2)}`)
  cpSync(join(fixtures, name), dir, { recursive: true, dereference: true })
  return dir
}

async function rejectsWith(promise, code, pattern) {
  await assert.rejects(promise, (e) => {
    assert.ok(e instanceof Error, 'an Error')
    assert.equal(e.code, code, e.message)
    if (pattern) assert.match(e.message, pattern)
    return true
  })
}

describe('loadModel', options, () => {
  test('loads a Hugging Face folder and reports its shape', async () => {
    const model = await loadModel(join(fixtures, 'tiny-moe'))
    const c = model.config
    assert.equal(c.modelType, 'qwen3_5_moe_text')
    assert.equal(c.hiddenSize, 64)
    assert.equal(c.numLayers, 8)
    assert.deepEqual(c.layerTypes.slice(0, 4), ['linear_attention', 'linear_attention', 'linear_attention', 'full_attention'])
    assert.equal(c.numExperts, 8)
    assert.equal(c.numExpertsPerTok, 2)
    assert.equal(c.tieWordEmbeddings, false)
    assert.equal(c.quantized, false)
    if (process.platform === 'linux') assert.equal(c.dtype, 'float32')
    await model.dispose()
  })

  test('logits and greedy tokens equal the reference', async () => {
    for (const name of ['tiny-dense', 'tiny-dense-mlx-q4']) {
      const model = await loadModel(join(fixtures, name), { dtype: 'float32' })
      const { json, arrays } = reference(name)
      const prompt = json.prompts.b_think
      const logits = await model.logits(prompt.input_ids)
      assert.ok(logits instanceof Float32Array)
      const expected = arrays['b_think.last_logits']
      assert.equal(logits.length, expected.length)
      let delta = 0
      for (let i = 0; i < logits.length; i++) delta = Math.max(delta, Math.abs(logits[i] - expected[i]))
      assert.ok(delta <= 1e-3, `${name}: max|Δ| ${delta}`)

      const steps = prompt.greedy_ids.length
      const ids = await model.generate(prompt.input_ids, { maxNewTokens: steps, prefillChunkSize: 7 })
      const comparable = prompt.top2_margins.findIndex((m) => m < 1e-3)
      const n = comparable === -1 ? steps : comparable
      assert.deepEqual(ids.slice(0, n), prompt.greedy_ids.slice(0, n), name)
      await model.dispose()
    }
  })

  test('calls on one model run in order, off the JS thread', async () => {
    const model = await loadModel(join(fixtures, 'tiny-dense'))
    const ids = reference('tiny-dense').json.prompts.d_long.input_ids
    let ticks = 0
    const timer = setInterval(() => ticks++, 5)
    const started = Date.now()
    const results = await Promise.all([
      model.generate(ids, { maxNewTokens: 8 }),
      model.generate(ids.slice(0, 50), { maxNewTokens: 8 }),
      model.generate(ids, { maxNewTokens: 8 }),
    ])
    clearInterval(timer)
    const elapsed = Date.now() - started
    assert.deepEqual(results[0], results[2], 'the same call gives the same tokens')
    assert.ok(ticks >= Math.floor(elapsed / 5 / 4), `only ${ticks} timer ticks in ${elapsed} ms`)
    await model.dispose()
  })

  test('dispose waits for work in flight and later calls fail', async () => {
    const model = await loadModel(join(fixtures, 'tiny-dense'))
    const pending = model.generate([1, 2, 3], { maxNewTokens: 4 })
    const disposed = model.dispose()
    assert.equal((await pending).length, 4)
    await disposed
    await rejectsWith(model.logits([1, 2]), 'MODEL_DISPOSED')
    await model.dispose()
  })

  test('bad input becomes an Error with a code that names the problem', async () => {
    await rejectsWith(loadModel(join(scratch, 'nowhere')), 'IO_ERROR', /nowhere/)
    await rejectsWith(loadModel(join(fixtures, 'tiny-dense'), { dtype: 'int4' }), 'INVALID_ARGUMENT', /int4/)

    const wrongType = copyOf('tiny-dense')
    const config = JSON.parse(readFileSync(join(wrongType, 'config.json'), 'utf8'))
    config.text_config.model_type = 'llama'
    writeFileSync(join(wrongType, 'config.json'), JSON.stringify(config))
    await rejectsWith(loadModel(wrongType), 'UNSUPPORTED_MODEL', /llama/)

    const wrongShape = copyOf('tiny-dense')
    config.text_config.model_type = 'qwen3_5_text'
    config.text_config.intermediate_size = 96
    writeFileSync(join(wrongShape, 'config.json'), JSON.stringify(config))
    await rejectsWith(loadModel(wrongShape), 'SHAPE_MISMATCH', /mlp\.gate_proj\.weight.*\[128, 64\].*\[96, 64\]/)

    const truncated = copyOf('tiny-dense')
    const file = join(truncated, 'model.safetensors')
    truncateSync(file, statSync(file).size - 1000)
    await rejectsWith(loadModel(truncated), 'INVALID_SAFETENSORS', /model\.safetensors.*truncated/)

    const missing = copyOf('tiny-moe')
    const index = JSON.parse(readFileSync(join(missing, 'model.safetensors.index.json'), 'utf8'))
    rmSync(join(missing, 'model-00002-of-00002.safetensors'))
    index.weight_map = Object.fromEntries(Object.entries(index.weight_map).filter(([, f]) => f.endsWith('00001-of-00002.safetensors')))
    writeFileSync(join(missing, 'model.safetensors.index.json'), JSON.stringify(index))
    await rejectsWith(loadModel(missing), 'MISSING_TENSOR', /layers\.4\./)

    const quant = copyOf('tiny-dense-mlx-q4')
    const qconfig = JSON.parse(readFileSync(join(quant, 'config.json'), 'utf8'))
    qconfig.quantization.mode = 'mxfp4'
    writeFileSync(join(quant, 'config.json'), JSON.stringify(qconfig))
    await rejectsWith(loadModel(quant), 'UNSUPPORTED_QUANTIZATION', /mxfp4/)

    const model = await loadModel(join(fixtures, 'tiny-dense'))
    await rejectsWith(model.logits([1, 248320]), 'INVALID_ARGUMENT', /248320/)
    await rejectsWith(model.logits([]), 'INVALID_ARGUMENT', /empty/)
    await model.dispose()
  })
})
