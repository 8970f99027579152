// Where the shared fixtures are, and a reader for the float32 arrays of their references.
import { existsSync, readFileSync } from 'node:fs'
import { join } from 'node:path'

import { root } from '../scripts/lib.mjs'

export const fixtures = join(root, '..', 'shared', 'fixtures', 'qwen3_5')

/** Fixture tests fail when the fixtures are missing, unless MLX_NODE_NO_FIXTURES=1 skips them. */
export function fixtureOptions() {
  if (existsSync(fixtures)) return {}
  if (process.env.MLX_NODE_NO_FIXTURES === '1') return { skip: `no fixtures at ${fixtures}` }
  throw new Error(`the fixtures are missing at ${fixtures}; MLX_NODE_NO_FIXTURES=1 skips these tests`)
}

/** The tensors of a safetensors file, as typed arrays (F32 and I64 only: what references hold). */
export function readSafetensors(path) {
  const bytes = readFileSync(path)
  const headerLength = Number(bytes.readBigUInt64LE(0))
  const header = JSON.parse(bytes.subarray(8, 8 + headerLength).toString('utf8'))
  const data = 8 + headerLength
  const out = {}
  for (const [name, entry] of Object.entries(header)) {
    if (name === '__metadata__') continue
    const { dtype, data_offsets: [begin, end] } = entry
    const slice = bytes.buffer.slice(bytes.byteOffset + data + begin, bytes.byteOffset + data + end)
    if (dtype === 'F32') out[name] = new Float32Array(slice)
    else if (dtype === 'I64') out[name] = Array.from(new BigInt64Array(slice), Number)
  }
  return out
}

export function reference(model) {
  return {
    json: JSON.parse(readFileSync(join(fixtures, 'reference', `${model}.json`), 'utf8')),
    arrays: readSafetensors(join(fixtures, 'reference', `${model}.safetensors`)),
  }
}
