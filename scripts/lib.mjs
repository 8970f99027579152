// Helpers shared by the build, test and demo scripts: where things are, and how to run a tool.
import { spawnSync } from 'node:child_process'
import { existsSync, statSync } from 'node:fs'
import { dirname, join } from 'node:path'
import { fileURLToPath } from 'node:url'

export const root = join(dirname(fileURLToPath(import.meta.url)), '..')

/** napi-rs's name for this machine's platform package (`linux-x64-gnu`, `darwin-arm64`, …). */
export function platformKey(platform = process.platform, arch = process.arch) {
  if (platform === 'linux') return `linux-${arch}-gnu`
  return `${platform}-${arch}`
}

/** The prefix of the MLX the native build links: MLX_DIR, or the wheel crates/mlx-sys unpacks. */
export function mlxPrefix() {
  return process.env.MLX_DIR || join(root, '.mlx', 'runtime', 'mlx')
}

/** Runs a command with inherited stdio; exits this process with a clear line if it fails. */
export function run(cmd, args, options = {}) {
  const result = spawnSync(cmd, args, { stdio: 'inherit', cwd: root, ...options })
  if (result.error) {
    fail(`could not start ${cmd}: ${result.error.message}`)
  }
  if (result.status !== 0) {
    fail(`${cmd} ${args.join(' ')} exited with ${result.status ?? result.signal}`)
  }
}

/** True when `cmd --version` runs. */
export function hasTool(cmd) {
  const result = spawnSync(cmd, ['--version'], { stdio: 'ignore' })
  return !result.error && result.status === 0
}

export function fail(message) {
  console.error(`\n${message}\n`)
  process.exit(1)
}

export function newerThan(a, b) {
  return existsSync(a) && existsSync(b) && statSync(a).mtimeMs >= statSync(b).mtimeMs
}
