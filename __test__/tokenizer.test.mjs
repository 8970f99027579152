// model.tokenizer from JS: the chat-template renderings encode to transformers' ids and back.
import assert from 'node:assert/strict'
import { readFileSync } from 'node:fs'
import { join } from 'node:path'
import { describe, test } from 'node:test'

import { loadModel } from '../index.js'
import { fixtureOptions, fixtures } from './fixtures.mjs'

describe('model.tokenizer', fixtureOptions(), () => {
  test('encode/decode agree with the reference ids for every chat case', async () => {
    const model = await loadModel(join(fixtures, 'tiny-dense'))
    const { tokenizer } = model
    const { cases } = JSON.parse(readFileSync(join(fixtures, 'reference', 'chat_template_cases.json'), 'utf8'))
    assert.equal(cases.length, 31)
    for (const c of cases) {
      assert.deepEqual(tokenizer.encode(c.text), c.input_ids, c.name)
      assert.equal(tokenizer.decode(c.input_ids), c.text, c.name)
    }
    assert.equal(tokenizer.tokenToId('<|im_end|>'), 248046)
    assert.equal(tokenizer.decode([248045, 846], true), 'user', 'special tokens can be skipped')
    await model.dispose()
  })
})
