// `npm run bench [-- --quick] [-- --size small|0.8b]`: ours against mlx-lm on the same files, in
// one run, alternating the two; every figure is a ratio measured in this run.
//
// Prepared once, cached in .mlx/bench/: a random Qwen3.5 checkpoint from our generator (the
// real 0.8B shapes with --size 0.8b; by default a smaller one with the real vocabulary, since
// mlx-lm decodes the 4-bit 0.8B shapes at ~0.15 tokens/s in bf16 on this CPU), an imatrix that
// our `mlx imatrix` computes on it over text of this repository, and its conversions: ours
// (unsloth base 3 and 4 with that imatrix, uniform 4-bit) and mlx-lm's (uniform 4-bit,
// mixed_3_6); and mlx-lm 0.32.2 in a venv of its own.
//
// Measured per folder, for ours, mlx-lm as it loads (bf16) and mlx-lm cast to float32: decode
// tokens/s at turn 4 of a greedy multi-turn chat, prefill tokens/s and time to first token on
// a raw prompt, load time, peak RSS; and for conversion, time and peak RSS of `mlx convert`
// against `mlx_lm convert` (uniform 4-bit). Prints the tables, writes bench/results.json.
import { execFileSync, spawnSync } from 'node:child_process'
import { cpus } from 'node:os'
import { existsSync, mkdirSync, readFileSync, readdirSync, rmSync, writeFileSync } from 'node:fs'
import { join } from 'node:path'

import { TURNS } from './bench_turns.mjs'
import { build } from './build.mjs'
import { fail, root, run } from './lib.mjs'

const args = process.argv.slice(2)
const quick = args.includes('--quick')
const sizeAt = args.indexOf('--size')
const size = sizeAt >= 0 ? args[sizeAt + 1] : 'small'
if (!['small', '0.8b'].includes(size)) fail(`--size must be small or 0.8b, not ${size}`)
const big = size === '0.8b'
const promptTokens = quick || big ? 16 : 128
const decodeTokens = quick || big ? 8 : 32
// mlx-lm in bf16 runs below 1 token/s on this CPU for larger shapes: fewer tokens there.
const bf16Prompt = Math.min(promptTokens, 16)
const bf16Decode = Math.min(decodeTokens, 8)
const rounds = quick ? 1 : 2
const calibrationChars = big || quick ? 24_000 : 96_000

build()
const work = join(root, '.mlx', 'bench')
mkdirSync(work, { recursive: true })
const mlx = join(root, 'bin', 'mlx.js')
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

/** Text of this repository (its README and Rust sources), for calibration. */
function calibrationText() {
  const files = [join(root, 'README.md')]
  for (const crate of readdirSync(join(root, 'crates'))) {
    const src = join(root, 'crates', crate, 'src')
    if (existsSync(src)) files.push(...readdirSync(src).filter((f) => f.endsWith('.rs')).map((f) => join(src, f)))
  }
  return files.map((f) => readFileSync(f, 'utf8')).join('\n').slice(0, calibrationChars)
}
const calibration = join(work, `calibration-${calibrationChars}.txt`)
if (!existsSync(calibration)) writeFileSync(calibration, calibrationText())
const imatrixFile = join(work, `q35-${size}-${calibrationChars}.imatrix.gguf`)
if (!existsSync(imatrixFile)) run(process.execPath, [mlx, 'imatrix', '-m', hf, '-f', calibration, '-o', imatrixFile])

const folders = [
  { name: `q35-${size} (original, bf16)`, dir: hf },
  { name: `ours UD-Q3_K_XL (unsloth 3 + AWQ)`, dir: join(work, `q35-${size}-ud3`), make: ['-q', '--q-recipe', 'unsloth', '--q-bits', '3', '--imatrix-path', imatrixFile] },
  { name: `ours UD-Q4_K_XL (unsloth 4 + AWQ)`, dir: join(work, `q35-${size}-ud4`), make: ['-q', '--q-recipe', 'unsloth', '--q-bits', '4', '--imatrix-path', imatrixFile] },
  { name: 'ours 4-bit g64', dir: join(work, `q35-${size}-q4-ours`), make: ['-q', '--q-bits', '4'] },
  { name: 'mlx-lm 4-bit g64', dir: join(work, `q35-${size}-mlx-q4`), mlxLm: ['-q', '--q-bits', '4', '--q-group-size', '64'] },
  { name: 'mlx-lm mixed_3_6', dir: join(work, `q35-${size}-mlx-mixed36`), mlxLm: ['-q', '--quant-predicate', 'mixed_3_6'] },
]
for (const f of folders) {
  if (existsSync(join(f.dir, 'config.json'))) continue
  if (f.make) run(process.execPath, [mlx, 'convert', '-i', hf, '-o', f.dir, '--force', ...f.make])
  if (f.mlxLm) run(python, ['-m', 'mlx_lm', 'convert', '--hf-path', hf, '--mlx-path', f.dir, ...f.mlxLm])
}

function lastJson(cmd, cmdArgs) {
  const out = execFileSync(cmd, cmdArgs, { cwd: root, encoding: 'utf8', stdio: ['ignore', 'pipe', 'inherit'] })
  return JSON.parse(out.trim().split('\n').pop())
}
const runners = {
  ours: (dir) => lastJson(process.execPath, [join(root, 'scripts', 'bench_ours.mjs'), dir, promptTokens, decodeTokens]),
  'mlx-lm f32': (dir) => lastJson(python, [join(root, 'scripts', 'bench_mlx_lm.py'), '--model', dir, '--mode', 'f32',
    '--prompt-tokens', promptTokens, '--decode-tokens', decodeTokens, '--turns', JSON.stringify(TURNS)]),
  'mlx-lm bf16': (dir) => lastJson(python, [join(root, 'scripts', 'bench_mlx_lm.py'), '--model', dir, '--mode', 'bf16',
    '--prompt-tokens', bf16Prompt, '--decode-tokens', bf16Decode, '--turns', JSON.stringify(TURNS)]),
}

const results = []
for (const f of folders) {
  const samples = Object.fromEntries(Object.keys(runners).map((k) => [k, []]))
  for (let r = 0; r < rounds; r++) {
    // Alternate the order each round so neither side always runs on a warmer machine.
    const order = r % 2 === 0 ? Object.keys(runners) : Object.keys(runners).reverse()
    for (const who of order) {
      const s = runners[who](f.dir)
      console.log(`${f.name} | ${who}: decode (turn 4) ${s.decodeTokensPerSecond.toFixed(2)} tok/s, prefill ${s.prefillTokensPerSecond.toFixed(2)} tok/s, ` +
        `TTFT ${s.ttftMs.toFixed(0)} ms, load ${s.loadSeconds.toFixed(2)} s, peak RSS ${s.peakRssMiB.toFixed(0)} MiB`)
      samples[who].push(s)
    }
  }
  const best = (who, key) => Math.max(...samples[who].map((s) => s[key]))
  const least = (who, key) => Math.min(...samples[who].map((s) => s[key]))
  const row = { model: f.name, dir: f.dir, measured: {} }
  for (const who of Object.keys(runners)) {
    row.measured[who] = {
      decodeTokensPerSecond: best(who, 'decodeTokensPerSecond'),
      prefillTokensPerSecond: best(who, 'prefillTokensPerSecond'),
      ttftMs: least(who, 'ttftMs'),
      loadSeconds: least(who, 'loadSeconds'),
      peakRssMiB: least(who, 'peakRssMiB'),
      turn4PromptTokens: samples[who][0].turn4PromptTokens,
      ...(samples[who][0].cacheRebuilds !== undefined ? { cacheRebuilds: samples[who][0].cacheRebuilds } : {}),
    }
  }
  const faster = (key) => Math.max(row.measured['mlx-lm f32'][key], row.measured['mlx-lm bf16'][key])
  row.decodeVsMlxLm = row.measured.ours.decodeTokensPerSecond / faster('decodeTokensPerSecond')
  row.prefillVsMlxLm = row.measured.ours.prefillTokensPerSecond / faster('prefillTokensPerSecond')
  const indexFile = join(f.dir, 'model.safetensors.index.json')
  const index = existsSync(indexFile) ? JSON.parse(readFileSync(indexFile, 'utf8')).metadata : {}
  const weights = readdirSync(f.dir).filter((n) => n.endsWith('.safetensors'))
    .reduce((sum, n) => sum + Number(execFileSync('stat', ['-c', '%s', join(f.dir, n)], { encoding: 'utf8' })), 0)
  row.sizeMiB = weights / 2 ** 20
  row.bitsPerWeight = index.total_parameters ? (weights * 8) / index.total_parameters : 16
  results.push(row)
}
const bf16Decode0 = results[0].measured.ours.decodeTokensPerSecond
for (const r of results) r.speedupVsBf16 = r.measured.ours.decodeTokensPerSecond / bf16Decode0

// Conversion: the same input to uniform 4-bit, ours and mlx-lm's, alternated.
const convert = { ours: [], 'mlx-lm': [] }
const scratch = join(work, 'convert-timing')
for (let r = 0; r < rounds; r++) {
  const order = r % 2 === 0 ? ['ours', 'mlx-lm'] : ['mlx-lm', 'ours']
  for (const who of order) {
    rmSync(scratch, { recursive: true, force: true })
    const cmd = who === 'ours'
      ? [process.execPath, mlx, 'convert', '-i', hf, '-o', scratch, '-q', '--q-bits', '4']
      : [python, '-m', 'mlx_lm', 'convert', '--hf-path', hf, '--mlx-path', scratch, '-q', '--q-bits', '4', '--q-group-size', '64']
    const s = lastJson('python3', [join(root, 'scripts', 'bench_run.py'), ...cmd])
    console.log(`convert ${size} → 4-bit | ${who}: ${s.seconds.toFixed(1)} s, peak RSS ${s.peakRssMiB.toFixed(0)} MiB`)
    convert[who].push(s)
  }
}
rmSync(scratch, { recursive: true, force: true })
const conv = Object.fromEntries(Object.entries(convert).map(([who, xs]) => [who, {
  seconds: Math.min(...xs.map((s) => s.seconds)),
  peakRssMiB: Math.min(...xs.map((s) => s.peakRssMiB)),
}]))
conv.speedVsMlxLm = conv['mlx-lm'].seconds / conv.ours.seconds
conv.rssVsMlxLm = conv.ours.peakRssMiB / conv['mlx-lm'].peakRssMiB

const machine = {
  cpu: cpus()[0]?.model,
  cores: cpus().length,
  backend: 'MLX CPU',
  ours: 'MLX 0.32.2 (mlx-cpu wheel)',
  peer: 'mlx-lm 0.32.2 on MLX 0.32.4 (mlx[cpu])',
  date: new Date().toISOString(),
}
const f2 = (x) => x.toFixed(2)
const lines = []
lines.push(`${machine.cpu}, ${machine.cores} cores, ${machine.backend}; decode at turn 4 of a greedy 4-turn chat, ${decodeTokens} tokens a turn; ` +
  `prefill/TTFT on a ${promptTokens}-token prompt; mlx-lm bf16 on ${bf16Prompt} / ${bf16Decode} tokens; best of ${rounds}`)
lines.push('')
lines.push('| Model | Bits/weight | Size | Decode tok/s | Speedup vs BF16 | vs mlx-lm | mlx-lm f32 | mlx-lm bf16 |')
lines.push('|---|---|---|---|---|---|---|---|')
for (const r of results) {
  const m = r.measured
  lines.push(`| ${r.model} | ${f2(r.bitsPerWeight)} | ${r.sizeMiB.toFixed(0)} MiB | ${f2(m.ours.decodeTokensPerSecond)} | ${f2(r.speedupVsBf16)}× | ` +
    `${f2(r.decodeVsMlxLm)}× | ${f2(m['mlx-lm f32'].decodeTokensPerSecond)} | ${f2(m['mlx-lm bf16'].decodeTokensPerSecond)} |`)
}
lines.push('')
lines.push('| Model | Prefill tok/s (ours / mlx-lm f32 / bf16) | vs mlx-lm | TTFT ms (ours / mlx-lm f32) | Load s (ours / mlx-lm f32) | Peak RSS MiB (ours / mlx-lm f32) |')
lines.push('|---|---|---|---|---|---|')
for (const r of results) {
  const m = r.measured
  lines.push(`| ${r.model} | ${f2(m.ours.prefillTokensPerSecond)} / ${f2(m['mlx-lm f32'].prefillTokensPerSecond)} / ${f2(m['mlx-lm bf16'].prefillTokensPerSecond)} | ` +
    `${f2(r.prefillVsMlxLm)}× | ${m.ours.ttftMs.toFixed(0)} / ${m['mlx-lm f32'].ttftMs.toFixed(0)} | ${f2(m.ours.loadSeconds)} / ${f2(m['mlx-lm f32'].loadSeconds)} | ` +
    `${m.ours.peakRssMiB.toFixed(0)} / ${m['mlx-lm f32'].peakRssMiB.toFixed(0)} |`)
}
lines.push('')
lines.push('| Convert (same input → 4-bit g64) | Seconds | Peak RSS MiB |')
lines.push('|---|---|---|')
lines.push(`| mlx convert | ${conv.ours.seconds.toFixed(1)} | ${conv.ours.peakRssMiB.toFixed(0)} |`)
lines.push(`| mlx_lm convert | ${conv['mlx-lm'].seconds.toFixed(1)} | ${conv['mlx-lm'].peakRssMiB.toFixed(0)} |`)
lines.push(`| ours vs mlx-lm | ${f2(conv.speedVsMlxLm)}× the speed | ${f2(conv.rssVsMlxLm)}× the memory |`)
console.log(`\n${lines.join('\n')}`)
mkdirSync(join(root, 'bench'), { recursive: true })
writeFileSync(join(root, 'bench', 'results.json'), `${JSON.stringify({
  machine, size, promptTokens, decodeTokens, bf16Prompt, bf16Decode, rounds, results, convert: conv, table: lines.join('\n'),
}, null, 2)}\n`)
