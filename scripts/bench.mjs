// `npm run bench [-- --quick] [-- --size small|0.8b]`: ours against mlx-lm on the same files,
// in one run, alternating the two. Prepares (once, cached in .mlx/bench/) a random Qwen3.5
// checkpoint from our generator, its mlx-lm 4-bit conversion, and mlx-lm in a venv of its own.
// Prints a table and writes bench/results.json. Every figure is a ratio measured in this run.
import { execFileSync, spawnSync } from 'node:child_process'
import { cpus } from 'node:os'
import { existsSync, mkdirSync, readFileSync, writeFileSync } from 'node:fs'
import { join } from 'node:path'

import { build } from './build.mjs'
import { fail, root, run } from './lib.mjs'

const args = process.argv.slice(2)
const quick = args.includes('--quick')
const size = args.includes('--size') ? args[args.indexOf('--size') + 1] : 'small'
if (!['small', '0.8b'].includes(size)) fail(`--size must be small or 0.8b, not ${size}`)
// On the CPU backend mlx-lm's bf16 path runs well below 1 token/s on the 0.8B shapes, so the
// default is the small model and few tokens; --size 0.8b uses the real shapes.
const promptTokens = quick ? 16 : size === '0.8b' ? 32 : 128
const decodeTokens = quick ? 8 : size === '0.8b' ? 8 : 32
const rounds = quick ? 1 : 2

build()
const work = join(root, '.mlx', 'bench')
mkdirSync(work, { recursive: true })
const venv = join(root, '.mlx', 'bench-venv')
const python = join(venv, 'bin', 'python')
// mlx 0.32.4: mlx-lm 0.32.2's quantized experts pass gather_qmm a `global_scale` that 0.32.2
// lacks. The same venv serves crates/convert/tests/mlx_lm.rs.
const peerReady = () =>
  existsSync(python) &&
  spawnSync(python, ['-c', "import mlx_lm, mlx.core as mx; assert mlx_lm.__version__ == '0.32.2' and mx.__version__ == '0.32.4'"]).status === 0
if (!peerReady()) {
  console.log('installing mlx-lm 0.32.2 (mlx 0.32.4) into .mlx/bench-venv (once) ...')
  run('python3', ['-m', 'venv', venv])
  run(join(venv, 'bin', 'pip'), ['install', '-q', 'mlx[cpu]==0.32.4', 'mlx-lm==0.32.2'])
}
const hf = join(work, `q35-${size}-hf`)
if (!existsSync(join(hf, 'config.json'))) {
  run('cargo', ['run', '--quiet', '--release', '-p', 'mlx-node-model-gen', '--', '--out', hf,
    '--preset', size, '--cache', join(root, '.mlx', 'cache')])
}
const q4 = join(work, `q35-${size}-mlx-q4`)
if (!existsSync(join(q4, 'config.json'))) {
  run(python, ['-m', 'mlx_lm', 'convert', '--hf-path', hf, '--mlx-path', q4, '-q', '--q-bits', '4', '--q-group-size', '64'])
}

function measure(cmd, cmdArgs) {
  const out = execFileSync(cmd, cmdArgs, { cwd: root, encoding: 'utf8', stdio: ['ignore', 'pipe', 'inherit'] })
  return JSON.parse(out.trim().split('\n').pop())
}
const runners = {
  ours: (dir) => measure(process.execPath, [join(root, 'scripts', 'bench_ours.mjs'), dir, promptTokens, decodeTokens]),
  'mlx-lm f32': (dir) => measure(python, [join(root, 'scripts', 'bench_mlx_lm.py'), '--model', dir, '--mode', 'f32', '--prompt-tokens', promptTokens, '--decode-tokens', decodeTokens]),
  'mlx-lm bf16': (dir) => measure(python, [join(root, 'scripts', 'bench_mlx_lm.py'), '--model', dir, '--mode', 'bf16', '--prompt-tokens', Math.min(promptTokens, 16), '--decode-tokens', Math.min(decodeTokens, 8)]),
}

const models = [{ name: `q35-${size} mlx-lm 4-bit g64`, dir: q4 }]
const results = []
for (const m of models) {
  const samples = Object.fromEntries(Object.keys(runners).map((k) => [k, []]))
  for (let r = 0; r < rounds; r++) {
    // Alternate the order each round so neither side always runs on a warmer machine.
    const order = r % 2 === 0 ? Object.keys(runners) : Object.keys(runners).reverse()
    for (const who of order) {
      const s = runners[who](m.dir)
      const load = s.weightMiB ? `, load added ${s.loadAddedMiB.toFixed(0)} MiB for ${s.weightMiB.toFixed(0)} MiB of weights (${(s.loadAddedMiB / s.weightMiB).toFixed(2)}×)` : ''
      console.log(`${m.name} | ${who}: decode ${s.decodeTokensPerSecond.toFixed(2)} tok/s, prefill ${s.prefillTokensPerSecond.toFixed(2)} tok/s, load ${s.loadSeconds.toFixed(2)} s, peak RSS ${s.peakRssMiB.toFixed(0)} MiB${load}`)
      samples[who].push(s)
    }
  }
  const best = (who, key) => Math.max(...samples[who].map((s) => s[key]))
  const row = { model: m.name, dir: m.dir, measured: {} }
  for (const who of Object.keys(runners)) {
    row.measured[who] = {
      decodeTokensPerSecond: best(who, 'decodeTokensPerSecond'),
      prefillTokensPerSecond: best(who, 'prefillTokensPerSecond'),
      loadSeconds: Math.min(...samples[who].map((s) => s.loadSeconds)),
      peakRssMiB: Math.min(...samples[who].map((s) => s.peakRssMiB)),
      ...(samples[who][0].weightMiB ? {
        weightMiB: samples[who][0].weightMiB,
        loadPeakVsWeights: Math.min(...samples[who].map((s) => s.loadAddedMiB / s.weightMiB)),
      } : {}),
    }
  }
  const mlxBest = (key) => Math.max(row.measured['mlx-lm f32'][key], row.measured['mlx-lm bf16'][key])
  row.decodeVsMlxLm = row.measured.ours.decodeTokensPerSecond / mlxBest('decodeTokensPerSecond')
  row.prefillVsMlxLm = row.measured.ours.prefillTokensPerSecond / mlxBest('prefillTokensPerSecond')
  const bytes = execFileSync('du', ['-sb', m.dir], { encoding: 'utf8' }).split('\t')[0]
  row.sizeMiB = Number(bytes) / 2 ** 20
  results.push(row)
}

const machine = { cpu: cpus()[0]?.model, cores: cpus().length, backend: 'mlx cpu', date: new Date().toISOString() }
const table = ['| Model | Size | Decode tok/s (ours) | mlx-lm f32 | mlx-lm bf16 | vs mlx-lm | Prefill tok/s (ours) | vs mlx-lm | Load s (ours / mlx-lm f32) |', '|---|---|---|---|---|---|---|---|---|']
for (const r of results) {
  const m = r.measured
  table.push(`| ${r.model} | ${r.sizeMiB.toFixed(0)} MiB | ${m.ours.decodeTokensPerSecond.toFixed(2)} | ${m['mlx-lm f32'].decodeTokensPerSecond.toFixed(2)} | ${m['mlx-lm bf16'].decodeTokensPerSecond.toFixed(2)} | ${r.decodeVsMlxLm.toFixed(2)}× | ${m.ours.prefillTokensPerSecond.toFixed(2)} | ${r.prefillVsMlxLm.toFixed(2)}× | ${m.ours.loadSeconds.toFixed(2)} / ${m['mlx-lm f32'].loadSeconds.toFixed(2)} |`)
}
console.log(`\n${machine.cpu}, ${machine.cores} cores, ${promptTokens}-token prefill, ${decodeTokens} decoded (mlx-lm bf16: ${Math.min(promptTokens, 16)} / ${Math.min(decodeTokens, 8)}), best of ${rounds}\n`)
console.log(table.join('\n'))
mkdirSync(join(root, 'bench'), { recursive: true })
writeFileSync(join(root, 'bench', 'results.json'), `${JSON.stringify({ machine, promptTokens, decodeTokens, rounds, results }, null, 2)}\n`)
