// convert() and the `mlx` command from JS: progress, the summary, the converted folder in
// loadModel, and refusals with stable codes. The conversion itself is tested in Rust
// (crates/convert/tests), including byte equality with mlx-lm's own conversions.
import assert from 'node:assert/strict'
import { execFileSync, spawnSync } from 'node:child_process'
import { existsSync, mkdirSync, mkdtempSync, readFileSync, rmSync } from 'node:fs'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { after, describe, test } from 'node:test'

import { convert, imatrix, loadModel } from '../index.js'
import { root } from '../scripts/lib.mjs'
import { fixtureOptions, fixtures } from './fixtures.mjs'

const options = fixtureOptions()
const scratch = mkdtempSync(join(tmpdir(), 'mlx-node-convert-'))
after(() => rmSync(scratch, { recursive: true, force: true }))
const bin = join(root, 'bin', 'mlx.js')

async function rejectsWith(promise, code, pattern) {
  await assert.rejects(promise, (e) => {
    assert.ok(e instanceof Error, 'an Error')
    assert.equal(e.code, code, e.message)
    if (pattern) assert.match(e.message, pattern)
    return true
  })
}

describe('convert()', options, () => {
  test('the unsloth recipe with an imatrix: progress, summary, and a folder loadModel chats with', async () => {
    const output = join(scratch, 'ud-q3')
    const seen = []
    const result = await convert(
      {
        input: join(fixtures, 'tiny-moe'),
        output,
        quantize: true,
        bits: 3,
        recipe: 'unsloth',
        imatrixPath: join(fixtures, 'reference', 'tiny-moe.imatrix.gguf'),
      },
      { onProgress: (p) => seen.push(p) },
    )
    assert.ok(seen.length > 10, `progress events: ${seen.length}`)
    const last = seen.at(-1)
    assert.equal(last.tensorsDone, last.tensorsTotal)
    assert.equal(last.bytesDone, last.bytesTotal)
    assert.ok(result.awqGroups > 0)
    assert.deepEqual(result.warnings, [])
    assert.deepEqual(result.files, ['model.safetensors'])
    const row = (cls) => result.rows.filter((r) => r.class === cls)
    assert.equal(row('experts gate/up (switch_mlp)')[0].bits, 3)
    assert.equal(row('experts down (switch_mlp)')[0].bits, 4)
    assert.equal(row('linear_attn.out_proj')[0].precision, 'bfloat16')
    assert.match(result.table, /bits per weight/)
    const card = readFileSync(join(output, 'README.md'), 'utf8')
    assert.match(card, /loadModel\('\.\/ud-q3'\)/)

    const model = await loadModel(output)
    const reply = await model.chat([{ role: 'user', content: 'Hello' }], {
      maxNewTokens: 4,
      temperature: 0.6,
      enableThinking: false,
    })
    assert.equal(typeof reply.text, 'string')
    assert.equal(reply.usage.completionTokens > 0, true)
    model.dispose()
  })

  test('refusals carry codes', async () => {
    const input = join(fixtures, 'tiny-dense')
    await rejectsWith(convert({ input }), 'INVALID_ARGUMENT', /output/)
    await rejectsWith(convert({ input, output: join(scratch, 'x'), quantise: true }), 'INVALID_ARGUMENT', /quantise/)
    await rejectsWith(convert({ input, output: join(scratch, 'x'), quantize: true, bits: 7 }), 'INVALID_ARGUMENT', /7/)
    await rejectsWith(convert({ input: join(scratch, 'missing'), output: join(scratch, 'x') }), 'IO_ERROR', /missing/)
    await rejectsWith(convert({ input: join(fixtures, 'tiny-dense-mlx-q4'), output: join(scratch, 'x') }), 'ALREADY_QUANTIZED')
    mkdirSync(join(scratch, 'taken'))
    await rejectsWith(convert({ input, output: join(scratch, 'taken') }), 'OUTPUT_EXISTS', /--force/)
    await rejectsWith(
      convert({ input, output: join(scratch, 'y'), imatrixPath: join(fixtures, 'reference', 'tiny-moe.imatrix.gguf') }),
      'IMATRIX_MISMATCH',
      /blk\./,
    )
    assert.equal(existsSync(join(scratch, 'x')), false)
    assert.equal(existsSync(join(scratch, 'y')), false)
  })
})

describe('the mlx command', options, () => {
  test('mlx convert prints the summary table and exits 0', () => {
    const output = join(scratch, 'cli-q4')
    const out = execFileSync(process.execPath, [bin, 'convert', '-i', join(fixtures, 'tiny-dense'), '-o', output, '-q'], {
      encoding: 'utf8',
      stdio: ['ignore', 'pipe', 'pipe'],
    })
    assert.match(out, /tensor class\s+precision/)
    assert.match(out, /4-bit g64/)
    assert.ok(existsSync(join(output, 'model.safetensors')))
  })

  test('bad flags print the usage and exit 2; --help exits 0', () => {
    const bad = spawnSync(process.execPath, [bin, 'convert', '-i', 'a', '-o', 'b', '--frobnicate'], { encoding: 'utf8' })
    assert.equal(bad.status, 2)
    assert.match(bad.stderr, /unknown flag `--frobnicate`/)
    assert.match(bad.stderr, /Usage:/)
    const help = spawnSync(process.execPath, [bin, '--help'], { encoding: 'utf8' })
    assert.equal(help.status, 0)
    assert.match(help.stdout, /mlx imatrix -m/)
    const failed = spawnSync(process.execPath, [bin, 'convert', '-i', join(scratch, 'none'), '-o', join(scratch, 'z')], { encoding: 'utf8' })
    assert.equal(failed.status, 1)
    assert.match(failed.stderr, /IO_ERROR/)
  })
})

describe('imatrix()', options, () => {
  test('calibrates on our own text, and convert() takes the result', async () => {
    const output = join(scratch, 'readme.imatrix.gguf')
    const seen = []
    const r = await imatrix(
      { model: join(fixtures, 'tiny-dense'), file: join(root, 'README.md'), output, chunkSize: 128 },
      { onProgress: (p) => seen.push(p) },
    )
    assert.equal(r.entries, 62)
    assert.ok(r.chunks >= 4, `${r.chunks} chunks`)
    assert.equal(seen.at(-1).chunk, r.chunks)
    assert.equal(r.tokens, r.chunks * 128)
    const converted = await convert({
      input: join(fixtures, 'tiny-dense'),
      output: join(scratch, 'awq-own'),
      quantize: true,
      recipe: 'unsloth',
      imatrixPath: output,
    })
    assert.ok(converted.awqGroups > 0)
  })

  test('refuses bad options with codes', async () => {
    await rejectsWith(imatrix({ model: join(fixtures, 'tiny-dense') }), 'INVALID_ARGUMENT', /file/)
    await rejectsWith(
      imatrix({ model: join(fixtures, 'tiny-dense'), file: join(scratch, 'none.txt'), output: join(scratch, 'o.gguf') }),
      'IO_ERROR',
    )
  })
})
