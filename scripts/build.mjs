// Builds the native addon (release) and lays out what it loads at run time; installs the npm
// dev dependencies first if they are missing. `npm test` and `npm run demo` call this, so a
// fresh clone needs nothing run before them.
//
// Layout (the same beside the root's .node and inside the platform package npm/<platform>/):
//   mlx-node.<platform>.node
//   mlx-runtime/mlx/lib/libmlx.*           (+ mlx.metallib on macOS)
//   mlx-runtime/<wheel>.libs/*             libraries the wheel bundles for libmlx (Linux)
//   mlx-runtime/licenses/<wheel>/          their licenses and bill of materials
// The addon's rpath is $ORIGIN/mlx-runtime/mlx/lib (build.rs); libmlx finds its bundled
// libraries through its own rpath, $ORIGIN/../../<wheel>.libs.
import { copyFileSync, cpSync, existsSync, mkdirSync, readdirSync, rmSync } from 'node:fs'
import { basename, dirname, join } from 'node:path'
import { pathToFileURL } from 'node:url'

import { fail, hasTool, mlxPrefix, newerThan, platformKey, root, run } from './lib.mjs'

function ensureTools() {
  const missing = ['cargo', 'cmake', 'python3'].filter((tool) => !hasTool(tool))
  if (missing.length > 0) {
    fail(
      `missing build tools: ${missing.join(', ')}.\n` +
        'Install Rust (rustup), CMake and Python 3 with pip; on Debian/Ubuntu also libclang-dev:\n' +
        '  apt-get install cmake libclang-dev python3-pip',
    )
  }
}

export function ensureNodeModules() {
  const installed = join(root, 'node_modules', '.package-lock.json')
  if (!newerThan(installed, join(root, 'package-lock.json'))) {
    run('npm', ['ci', '--no-audit', '--no-fund'])
  }
}

/** Copies the MLX runtime libraries next to a built addon in `dir`. */
export function layOutRuntime(dir) {
  const prefix = mlxPrefix()
  const libDir = join(prefix, 'lib')
  const target = join(dir, 'mlx-runtime')
  rmSync(target, { recursive: true, force: true })
  mkdirSync(join(target, 'mlx', 'lib'), { recursive: true })
  const libs = existsSync(libDir)
    ? readdirSync(libDir).filter((f) => f.startsWith('libmlx.') || f === 'mlx.metallib')
    : []
  if (!libs.some((f) => f.startsWith('libmlx.'))) {
    fail(`no libmlx in ${libDir}: the native build should have put MLX there (or set MLX_DIR)`)
  }
  for (const f of libs) copyFileSync(join(libDir, f), join(target, 'mlx', 'lib', f))
  // A wheel keeps libmlx's own dependencies in <package>.libs/ beside the mlx/ folder, and its
  // license and bill of materials in <package>.dist-info/.
  const site = dirname(prefix)
  for (const entry of existsSync(site) ? readdirSync(site) : []) {
    if (entry.endsWith('.libs')) cpSync(join(site, entry), join(target, entry), { recursive: true })
    if (entry.endsWith('.dist-info')) {
      const into = join(target, 'licenses', entry.replace(/\.dist-info$/, ''))
      for (const part of ['licenses', 'sboms']) {
        const from = join(site, entry, part)
        if (existsSync(from)) cpSync(from, into, { recursive: true })
      }
    }
  }
}

export function build() {
  ensureTools()
  ensureNodeModules()
  run(process.execPath, [join(root, 'node_modules', '@napi-rs', 'cli', 'dist', 'cli.js'), 'build', '--platform', '--release'])
  const key = platformKey()
  const addon = join(root, `mlx-node.${key}.node`)
  if (!existsSync(addon)) fail(`napi build produced no ${basename(addon)}`)
  layOutRuntime(root)
  const pkg = join(root, 'npm', key)
  if (existsSync(join(pkg, 'package.json'))) {
    copyFileSync(addon, join(pkg, basename(addon)))
    layOutRuntime(pkg)
  }
}

if (import.meta.url === pathToFileURL(process.argv[1]).href) build()
