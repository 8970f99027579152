// model.chat / chatStream / applyChatTemplate from JS on a fixture model (random weights, so the
// replies are noise; what is checked is the API's behaviour).
import assert from 'node:assert/strict'
import { cpSync, mkdtempSync, readFileSync, rmSync } from 'node:fs'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { after, before, describe, test } from 'node:test'

import { loadModel } from '../index.js'
import { fixtureOptions, fixtures } from './fixtures.mjs'

const options = fixtureOptions()

describe('chat', options, () => {
  let model
  before(async () => {
    model = await loadModel(join(fixtures, 'tiny-dense'))
  })
  after(() => model?.dispose())

  test('applyChatTemplate renders the text-only cases like transformers', () => {
    const { cases } = JSON.parse(readFileSync(join(fixtures, 'reference', 'chat_template_cases.json'), 'utf8'))
    const textOnly = cases.filter((c) => !JSON.stringify(c.messages).match(/"type":"(image|video)"/) && !c.kwargs.add_vision_id)
    assert.ok(textOnly.length >= 20)
    for (const c of textOnly) {
      const text = model.applyChatTemplate(c.messages, {
        tools: c.tools,
        enableThinking: c.kwargs.enable_thinking,
        addGenerationPrompt: c.kwargs.add_generation_prompt ?? false,
      })
      assert.equal(text, c.text, c.name)
    }
  })

  test('chat returns the reply with usage and timings', async () => {
    const r = await model.chat([{ role: 'user', content: 'Hello' }], { maxNewTokens: 8, temperature: 0, enableThinking: false })
    assert.equal(typeof r.text, 'string')
    assert.ok(['stop', 'length', 'tool_calls'].includes(r.finishReason))
    assert.ok(r.usage.promptTokens > 5)
    assert.ok(r.usage.completionTokens >= 1 && r.usage.completionTokens <= 8)
    assert.ok(r.performance.ttftMs > 0 && r.performance.decodeTokensPerSecond > 0)
    assert.deepEqual(r.toolCalls, [])
  })

  test('the stream adds up to the same reply, and breaking out stops it', async () => {
    const messages = [{ role: 'user', content: 'Write a poem.' }]
    const opts = { maxNewTokens: 24, temperature: 0, enableThinking: true }
    const full = await model.chat(messages, opts)
    let text = ''
    let thinking = ''
    for await (const chunk of model.chatStream(messages, opts)) {
      assert.ok(chunk.type === 'text' || chunk.type === 'thinking')
      if (chunk.type === 'text') text += chunk.text
      else thinking += chunk.text
    }
    assert.equal(text, full.text)
    assert.equal(thinking, full.thinking ?? '')

    let seen = 0
    for await (const _ of model.chatStream(messages, { ...opts, maxNewTokens: 2000 })) {
      if (++seen === 2) break
    }
    // The model is free again at once: a later call is not stuck behind 2000 tokens.
    const started = Date.now()
    await model.chat(messages, { maxNewTokens: 1 })
    assert.ok(Date.now() - started < 5000)
  })

  test('an AbortSignal stops generation with the partial reply', async () => {
    const controller = new AbortController()
    const pending = model.chat([{ role: 'user', content: 'Go on forever.' }], { maxNewTokens: 5000, temperature: 0, signal: controller.signal })
    setTimeout(() => controller.abort(), 50)
    const r = await pending
    assert.equal(r.finishReason, 'abort')
    assert.ok(r.usage.completionTokens < 5000)

    const already = AbortSignal.abort()
    const r2 = await model.chat([{ role: 'user', content: 'Hi' }], { maxNewTokens: 50, signal: already })
    assert.equal(r2.finishReason, 'abort')
    assert.equal(r2.usage.completionTokens, 0)
  })

  test('the same seed gives the same reply; later turns reuse the cache', async () => {
    const messages = [{ role: 'user', content: 'Pick a word.' }]
    const a = await model.chat(messages, { maxNewTokens: 10, temperature: 1, seed: 7 })
    const b = await model.chat(messages, { maxNewTokens: 10, temperature: 1, seed: 7 })
    assert.equal(a.text, b.text)
    const next = await model.chat([...messages, { role: 'assistant', content: a.text }, { role: 'user', content: 'Another.' }], { maxNewTokens: 4 })
    assert.ok(next.usage.cachedTokens > 0)
  })

  test('bad messages and options reject with codes', async () => {
    const reject = (p, code, re) => assert.rejects(p, (e) => e.code === code && (!re || re.test(e.message)))
    await reject(model.chat([]), 'INVALID_MESSAGES')
    await reject(model.chat([{ role: 'system', content: 'x' }]), 'TEMPLATE_ERROR', /No user query found/)
    await reject(model.chat([{ role: 'user', content: 'x' }], { temperature: -1 }), 'INVALID_ARGUMENT', /temperature/)
    await reject(model.chat([{ role: 'user', content: 'x' }], { maxNewTokens: 0 }), 'INVALID_ARGUMENT', /maxNewTokens/)
    await reject(model.chat([{ role: 'user', content: 'x' }], { stop: 3 }), 'INVALID_ARGUMENT', /stop/)
    const stream = model.chatStream([{ role: 'user', content: 'x' }], { topP: 2 })
    await assert.rejects(stream.next(), (e) => e.code === 'INVALID_ARGUMENT' && /topP/.test(e.message))
  })
})

describe('chat on the model thread', options, () => {
  test('the event loop keeps running during a multi-second generation', async () => {
    const model = await loadModel(join(fixtures, 'tiny-dense'))
    let last = performance.now()
    let worstGap = 0
    const timer = setInterval(() => {
      const now = performance.now()
      worstGap = Math.max(worstGap, now - last)
      last = now
    }, 10)
    // Generations back to back until a few seconds have passed, however fast the engine is.
    const started = performance.now()
    let tokens = 0
    while (performance.now() - started < 2500) {
      const r = await model.chat([{ role: 'user', content: 'Keep talking.' }], { maxNewTokens: 400, temperature: 0 })
      tokens += r.usage.completionTokens
    }
    const elapsed = performance.now() - started
    clearInterval(timer)
    await model.dispose()
    assert.ok(tokens >= 400, `only ${tokens} tokens were generated in ${elapsed.toFixed(0)} ms`)
    assert.ok(worstGap < 200, `the timer was blocked for ${worstGap.toFixed(0)} ms`)
  })

  test('a folder without tokenizer or template fails with a clear code', async () => {
    const scratch = mkdtempSync(join(tmpdir(), 'mlx-node-chat-'))
    try {
      const bare = join(scratch, 'bare')
      cpSync(join(fixtures, 'tiny-dense'), bare, { recursive: true, dereference: true })
      // The fixture's tokenizer.json may be a link flattened to its target's relative path.
      cpSync(join(fixtures, 'tokenizer', 'tokenizer.json'), join(bare, 'tokenizer.json'))
      rmSync(join(bare, 'chat_template.jinja'))
      const noTemplate = await loadModel(bare)
      assert.equal(noTemplate.tokenizer.encode('hi').length, 1)
      await assert.rejects(noTemplate.chat([{ role: 'user', content: 'hi' }]), (e) => e.code === 'MISSING_CHAT_TEMPLATE')
      assert.throws(() => noTemplate.applyChatTemplate([{ role: 'user', content: 'hi' }]), (e) => e.code === 'MISSING_CHAT_TEMPLATE')
      await noTemplate.dispose()

      rmSync(join(bare, 'tokenizer.json'))
      const noTokenizer = await loadModel(bare)
      assert.throws(() => noTokenizer.tokenizer, (e) => e.code === 'MISSING_TOKENIZER')
      await assert.rejects(noTokenizer.chat([{ role: 'user', content: 'hi' }]), (e) => e.code === 'MISSING_TOKENIZER')
      assert.equal((await noTokenizer.generate([1, 2, 3], { maxNewTokens: 2 })).length, 2, 'token-level calls still work')
      await noTokenizer.dispose()
    } finally {
      rmSync(scratch, { recursive: true, force: true })
    }
  })
})
