// Packs what would be published: this platform's native package (npm/<platform>/, filled by the
// build) and the main package, whose package.json gains `optionalDependencies` on every
// platform package at the same version (as `napi prepublish` does; the repository's own
// package.json leaves them out so that `npm ci` never looks for unpublished packages).
//   node scripts/pack.mjs [destination]   → prints the two tarball paths as JSON
import { execFileSync } from 'node:child_process'
import { cpSync, existsSync, mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs'
import { tmpdir } from 'node:os'
import { join, resolve } from 'node:path'
import { pathToFileURL } from 'node:url'

import { fail, platformKey, root } from './lib.mjs'

function npmPack(dir, destination) {
  const out = execFileSync('npm', ['pack', '--json', '--pack-destination', destination], {
    cwd: dir,
    encoding: 'utf8',
  })
  const [info] = JSON.parse(out)
  return { file: join(destination, info.filename), files: info.files.map((f) => f.path) }
}

export function packRelease(destination) {
  const manifest = JSON.parse(readFileSync(join(root, 'package.json'), 'utf8'))
  const platformDir = join(root, 'npm', platformKey())
  if (!existsSync(join(platformDir, `mlx-node.${platformKey()}.node`))) {
    fail(`no addon in ${platformDir}: run \`npm run build\` first`)
  }
  const native = npmPack(platformDir, destination)

  const staging = mkdtempSync(join(tmpdir(), 'mlx-node-release-'))
  try {
    for (const f of manifest.files) cpSync(join(root, f), join(staging, f), { recursive: true })
    for (const f of ['README.md', 'LICENSE']) {
      if (existsSync(join(root, f))) cpSync(join(root, f), join(staging, f))
    }
    const targets = ['linux-x64-gnu', 'darwin-arm64']
    manifest.optionalDependencies = Object.fromEntries(
      targets.map((t) => [`${manifest.name}-${t}`, manifest.version]),
    )
    delete manifest.devDependencies
    delete manifest.scripts
    writeFileSync(join(staging, 'package.json'), `${JSON.stringify(manifest, null, 2)}\n`)
    return { main: npmPack(staging, destination), native }
  } finally {
    rmSync(staging, { recursive: true, force: true })
  }
}

if (import.meta.url === pathToFileURL(process.argv[1]).href) {
  console.log(JSON.stringify(packRelease(resolve(process.argv[2] ?? root)), null, 2))
}
