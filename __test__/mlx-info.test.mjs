// The addon loads from the repository (ESM and CommonJS) and reports the MLX it runs on.
import assert from 'node:assert/strict'
import { existsSync, readFileSync } from 'node:fs'
import { createRequire } from 'node:module'
import { join } from 'node:path'
import { test } from 'node:test'

import { mlxInfo } from '../index.js'

const root = join(import.meta.dirname, '..')

test('mlxInfo reports the MLX version, device and backend', () => {
  const info = mlxInfo()
  assert.deepEqual(Object.keys(info).sort(), ['backend', 'device', 'version'])
  assert.match(info.version, /^\d+\.\d+\.\d+/)
  assert.ok(['cpu', 'metal', 'cuda'].includes(info.backend), info.backend)
  if (process.platform === 'linux') {
    assert.equal(info.backend, 'cpu')
    assert.equal(info.device, 'cpu:0')
  }
  // Without MLX_DIR the build links the PyPI wheel crates/mlx-sys unpacked: its version.
  const stamp = join(root, '.mlx', 'runtime', 'WHEEL')
  if (!process.env.MLX_DIR && existsSync(stamp)) {
    const pinned = readFileSync(stamp, 'utf8').trim().split('==')[1]
    assert.equal(info.version, pinned)
  }
})

test('the CommonJS entry point exports the same function', () => {
  const require = createRequire(import.meta.url)
  const cjs = require('../index.js')
  assert.equal(typeof cjs.mlxInfo, 'function')
  assert.deepEqual(cjs.mlxInfo(), mlxInfo())
})
