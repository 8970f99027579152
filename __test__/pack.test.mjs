// What a user installs: the main package and this platform's package as `npm pack` makes them
// for publishing (scripts/pack.mjs), installed from the tarball files into an empty project
// outside the repository, and called there with no LD_LIBRARY_PATH / DYLD_LIBRARY_PATH.
import assert from 'node:assert/strict'
import { execFileSync } from 'node:child_process'
import { existsSync, mkdtempSync, readdirSync, realpathSync, rmSync, writeFileSync } from 'node:fs'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { after, test } from 'node:test'

import { platformKey } from '../scripts/lib.mjs'
import { packRelease } from '../scripts/pack.mjs'

const work = mkdtempSync(join(tmpdir(), 'mlx-node-pack-'))
after(() => rmSync(work, { recursive: true, force: true }))

function npm(args, cwd) {
  return execFileSync('npm', [...args, '--no-audit', '--no-fund'], { cwd, encoding: 'utf8' })
}

function cleanEnv() {
  const env = { ...process.env }
  for (const name of ['LD_LIBRARY_PATH', 'DYLD_LIBRARY_PATH', 'DYLD_FALLBACK_LIBRARY_PATH']) {
    delete env[name]
  }
  return env
}

test('packed tarballs install into a fresh project and load there', { timeout: 300_000 }, () => {
  const key = platformKey()
  const { main, native } = packRelease(work)

  // The main package is JS only; the platform package carries the addon and MLX's runtime.
  assert.ok(main.files.includes('index.js') && main.files.includes('index.d.ts'), main.files)
  assert.ok(!main.files.some((f) => f.endsWith('.node')), main.files)
  assert.ok(native.files.includes(`mlx-node.${key}.node`), native.files)
  assert.ok(native.files.some((f) => /^mlx-runtime\/mlx\/lib\/libmlx\./.test(f)), native.files)

  const app = join(work, 'app')
  execFileSync('mkdir', ['-p', app])
  writeFileSync(join(app, 'package.json'), JSON.stringify({ name: 'app', version: '1.0.0', private: true }))
  npm(['install', '--prefer-offline', main.file, native.file], app)

  const script = `
    const { mlxInfo } = require('@mlx-node/lm')
    const where = require.resolve('@mlx-node/lm-${key}')
    console.log(JSON.stringify({ info: mlxInfo(), where }))`
  const out = JSON.parse(
    execFileSync(process.execPath, ['-e', script], { cwd: app, env: cleanEnv(), encoding: 'utf8' }),
  )
  assert.match(out.info.version, /^\d+\.\d+\.\d+/)
  assert.ok(realpathSync(out.where).startsWith(realpathSync(app)), out.where)

  const esm = execFileSync(
    process.execPath,
    ['--input-type=module', '-e', "import { mlxInfo } from '@mlx-node/lm'; console.log(mlxInfo().backend)"],
    { cwd: app, env: cleanEnv(), encoding: 'utf8' },
  )
  assert.equal(esm.trim(), out.info.backend)
  assert.ok(existsSync(join(app, 'node_modules', '@mlx-node', `lm-${key}`, 'mlx-runtime')))
  assert.ok(readdirSync(join(app, 'node_modules', '@mlx-node')).includes('lm'))
})
