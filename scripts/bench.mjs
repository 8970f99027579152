// `npm run bench [-- --quick] [-- --size small|0.8b] [-- --llama | --no-llama]
//   [-- --runners ours,llama.cpp,mlx-lm-f32,mlx-lm-bf16] [-- --folders original,ud3,ud4,q4-ours,mlx-q4,mlx-mixed36]
//   [-- --prompt N] [-- --decode N]`: ours against mlx-lm and llama.cpp on the
// same checkpoint, in one run, alternating them; every figure is a ratio measured in this run.
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
//
// llama.cpp (with --size 0.8b, or --llama): built once from the llama-cpp-python sdist
// (scripts/llama_cpp.mjs); the same bf16 checkpoint converted to GGUF and quantized to Q4_K_M;
// `llama-bench -t <cores>` is one more runner in each folder's rounds, so every row's
// "vs llama.cpp" is against the llama.cpp sample taken beside it. llama-bench measures prefill
// and decode from an empty context (no chat turns, no TTFT/load/RSS).
//
// Roofline: the machine's read bandwidth (crates/kernels/examples/bandwidth.rs) over the bytes
// of weights a decode step reads gives an upper bound on decode tokens/s; each of our rows gets
// the fraction of it reached.
import { execFileSync, spawnSync } from 'node:child_process'
import { cpus } from 'node:os'
import { closeSync, existsSync, mkdirSync, openSync, readFileSync, readSync, readdirSync, rmSync, writeFileSync } from 'node:fs'
import { join } from 'node:path'

import { ensureConverterDeps, ensureLlamaCpp, ggufFor, llamaBench, LLAMA_CPP_COMMIT, LLAMA_CPP_PYTHON } from './llama_cpp.mjs'

import { TURNS } from './bench_turns.mjs'
import { build } from './build.mjs'
import { fail, root, run } from './lib.mjs'

const args = process.argv.slice(2)
const quick = args.includes('--quick')
const sizeAt = args.indexOf('--size')
const size = sizeAt >= 0 ? args[sizeAt + 1] : 'small'
if (!['small', '0.8b'].includes(size)) fail(`--size must be small or 0.8b, not ${size}`)
const big = size === '0.8b'
// --prompt N / --decode N override the token counts (the 0.8B defaults are short for mlx-lm's
// sake; llama.cpp comparisons want the 128-token prefill).
const countArg = (name, fallback) => {
  const at = args.indexOf(name)
  if (at < 0) return fallback
  const n = Number(args[at + 1])
  if (!Number.isInteger(n) || n < 1) fail(`${name} takes a positive whole number, not ${args[at + 1]}`)
  return n
}
const promptTokens = countArg('--prompt', quick || big ? 16 : 128)
const decodeTokens = countArg('--decode', quick || big ? 8 : 32)
// mlx-lm in bf16 runs below 1 token/s on this CPU for larger shapes: fewer tokens there.
const bf16Prompt = Math.min(promptTokens, 16)
const bf16Decode = Math.min(decodeTokens, 8)
const rounds = quick ? 1 : 2
const calibrationChars = big || quick ? 24_000 : 96_000
const withLlama = args.includes('--no-llama') ? false : big || args.includes('--llama')
const runnerIds = { ours: 'ours', 'llama.cpp': 'llama.cpp Q4_K_M', 'mlx-lm-f32': 'mlx-lm f32', 'mlx-lm-bf16': 'mlx-lm bf16' }
const runnersAt = args.indexOf('--runners')
const chosen = runnersAt >= 0 ? args[runnersAt + 1].split(',') : Object.keys(runnerIds)
for (const id of chosen) if (!runnerIds[id]) fail(`--runners takes a comma list of ${Object.keys(runnerIds).join(', ')}, not ${id}`)
if (!chosen.includes('ours')) fail('--runners must include ours')
const cores = cpus().length

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

const allFolders = [
  { id: 'original', name: `q35-${size} (original, bf16)`, dir: hf },
  { id: 'ud3', name: `ours UD-Q3_K_XL (unsloth 3 + AWQ)`, dir: join(work, `q35-${size}-ud3`), make: ['-q', '--q-recipe', 'unsloth', '--q-bits', '3', '--imatrix-path', imatrixFile] },
  { id: 'ud4', name: `ours UD-Q4_K_XL (unsloth 4 + AWQ)`, dir: join(work, `q35-${size}-ud4`), make: ['-q', '--q-recipe', 'unsloth', '--q-bits', '4', '--imatrix-path', imatrixFile] },
  { id: 'q4-ours', name: 'ours 4-bit g64', dir: join(work, `q35-${size}-q4-ours`), make: ['-q', '--q-bits', '4'] },
  { id: 'mlx-q4', name: 'mlx-lm 4-bit g64', dir: join(work, `q35-${size}-mlx-q4`), mlxLm: ['-q', '--q-bits', '4', '--q-group-size', '64'] },
  { id: 'mlx-mixed36', name: 'mlx-lm mixed_3_6', dir: join(work, `q35-${size}-mlx-mixed36`), mlxLm: ['-q', '--quant-predicate', 'mixed_3_6'] },
]
// --folders keeps some rows (the imatrix, slow on the 0.8B bf16 checkpoint with MLX's CPU
// float32 matmul, is only computed when ud3 or ud4 is kept).
const foldersAt = args.indexOf('--folders')
const keptFolders = foldersAt >= 0 ? args[foldersAt + 1].split(',') : allFolders.map((f) => f.id)
for (const id of keptFolders) if (!allFolders.some((f) => f.id === id)) fail(`--folders takes a comma list of ${allFolders.map((f) => f.id).join(', ')}, not ${id}`)
const folders = allFolders.filter((f) => keptFolders.includes(f.id))
if (folders.some((f) => f.make?.includes(imatrixFile)) && !existsSync(imatrixFile)) {
  run(process.execPath, [mlx, 'imatrix', '-m', hf, '-f', calibration, '-o', imatrixFile])
}
for (const f of folders) {
  if (existsSync(join(f.dir, 'config.json'))) continue
  if (f.make) run(process.execPath, [mlx, 'convert', '-i', hf, '-o', f.dir, '--force', ...f.make])
  if (f.mlxLm) run(python, ['-m', 'mlx_lm', 'convert', '--hf-path', hf, '--mlx-path', f.dir, ...f.mlxLm])
}

// llama.cpp: build, converter dependencies, GGUF + Q4_K_M of the same bf16 checkpoint. When any
// step fails (no torch wheel, no disk, no network), the column says why instead of the bench failing.
let llama = withLlama && chosen.includes('llama.cpp') ? {} : { unavailable: withLlama ? 'not in --runners' : 'off (use --llama; on by default with --size 0.8b)' }
if (!llama.unavailable) {
  const started = performance.now()
  try {
    ensureLlamaCpp()
    ensureConverterDeps(python, { mlxLmCheck: "import mlx_lm, mlx.core as mx; assert mlx_lm.__version__ == '0.32.2' and mx.__version__ == '0.32.4'" })
    const g = ggufFor(hf, { python, work })
    llama = { gguf: g.q4km, setupSeconds: (performance.now() - started) / 1000 }
    console.log(`llama.cpp ready (${llama.setupSeconds.toFixed(0)} s): ${g.q4km}`)
  } catch (e) {
    llama = { unavailable: e.message.split('\n')[0] }
    console.log(`\nllama.cpp column not available: ${e.message}\n`)
  }
}

// Read bandwidth, for the decode roofline.
let bandwidth = null
try {
  const out = execFileSync('cargo', ['run', '--release', '-q', '-p', 'mlx-node-kernels', '--example', 'bandwidth'],
    { cwd: root, encoding: 'utf8', stdio: ['ignore', 'pipe', 'inherit'] })
  bandwidth = JSON.parse(out.trim().split('\n').pop())
  console.log(`read bandwidth: ${bandwidth.gbPerSecond.toFixed(2)} GB/s (${bandwidth.threads} threads, ${(bandwidth.bytes / 2 ** 30).toFixed(0)} GiB, best of ${bandwidth.passes}: ${bandwidth.passGbPerSecond.join(', ')})`)
} catch (e) {
  console.log(`read bandwidth not measured: ${e.message.split('\n')[0]}`)
}

/** Byte length of every tensor in a folder's .safetensors files, by name (from their headers). */
function tensorBytes(dir) {
  const sizes = {}
  for (const n of readdirSync(dir).filter((f) => f.endsWith('.safetensors'))) {
    const fd = openSync(join(dir, n), 'r')
    try {
      const head = Buffer.alloc(8)
      readSync(fd, head, 0, 8, 0)
      const json = Buffer.alloc(Number(head.readBigUInt64LE(0)))
      readSync(fd, json, 0, json.length, 8)
      for (const [name, t] of Object.entries(JSON.parse(json.toString('utf8')))) {
        if (name !== '__metadata__') sizes[name] = t.data_offsets[1] - t.data_offsets[0]
      }
    } finally {
      closeSync(fd)
    }
  }
  return sizes
}

/**
 * Bytes of weights one decode step reads: the folder's .safetensors bytes minus the embedding
 * table (with its quantization scales and biases), since a step gathers only one row of it —
 * except when the embeddings are tied (no lm_head tensor): then the same table is the output
 * head and is read in full every token, so it stays in. (File bytes, i.e. the bound for the
 * format as stored; the engine holds bf16 checkpoints and quantization scales in float32 on the
 * CPU, so it reads more than this for those.)
 */
function decodeBytesPerToken(dir, fileBytes) {
  const sizes = tensorBytes(dir)
  const names = Object.keys(sizes)
  const tied = !names.some((n) => /(^|\.)lm_head\./.test(n))
  const embedding = names.filter((n) => /(^|\.)embed_tokens\./.test(n)).reduce((sum, n) => sum + sizes[n], 0)
  return { bytes: tied ? fileBytes : fileBytes - embedding, tied, embeddingBytes: embedding }
}

function lastJson(cmd, cmdArgs) {
  const out = execFileSync(cmd, cmdArgs, { cwd: root, encoding: 'utf8', stdio: ['ignore', 'pipe', 'inherit'] })
  return JSON.parse(out.trim().split('\n').pop())
}
const allRunners = {
  ours: (dir) => lastJson(process.execPath, [join(root, 'scripts', 'bench_ours.mjs'), dir, promptTokens, decodeTokens]),
  // The same GGUF whatever the folder: a sample of llama.cpp beside each of our rows.
  'llama.cpp Q4_K_M': () => llamaBench(llama.gguf, { promptTokens, decodeTokens, threads: cores }),
  'mlx-lm f32': (dir) => lastJson(python, [join(root, 'scripts', 'bench_mlx_lm.py'), '--model', dir, '--mode', 'f32',
    '--prompt-tokens', promptTokens, '--decode-tokens', decodeTokens, '--turns', JSON.stringify(TURNS)]),
  'mlx-lm bf16': (dir) => lastJson(python, [join(root, 'scripts', 'bench_mlx_lm.py'), '--model', dir, '--mode', 'bf16',
    '--prompt-tokens', bf16Prompt, '--decode-tokens', bf16Decode, '--turns', JSON.stringify(TURNS)]),
}
const runners = Object.fromEntries(Object.entries(runnerIds)
  .filter(([id, key]) => chosen.includes(id) && (key !== 'llama.cpp Q4_K_M' || !llama.unavailable))
  .map(([, key]) => [key, allRunners[key]]))
const f2 = (x) => (x === undefined || x === null || Number.isNaN(x) ? '—' : x.toFixed(2))
const describe = (s) => [
  `decode${s.turn4PromptTokens !== undefined ? ' (turn 4)' : ''} ${f2(s.decodeTokensPerSecond)} tok/s`,
  `prefill ${f2(s.prefillTokensPerSecond)} tok/s`,
  s.ttftMs !== undefined && `TTFT ${s.ttftMs.toFixed(0)} ms`,
  s.loadSeconds !== undefined && `load ${s.loadSeconds.toFixed(2)} s`,
  s.peakRssMiB !== undefined && `peak RSS ${s.peakRssMiB.toFixed(0)} MiB`,
].filter(Boolean).join(', ')

const results = []
for (const f of folders) {
  const samples = Object.fromEntries(Object.keys(runners).map((k) => [k, []]))
  for (let r = 0; r < rounds; r++) {
    // Alternate the order each round so neither side always runs on a warmer machine.
    const order = r % 2 === 0 ? Object.keys(runners) : Object.keys(runners).reverse()
    for (const who of order) {
      const s = runners[who](f.dir)
      console.log(`${f.name} | ${who}: ${describe(s)}`)
      samples[who].push(s)
    }
  }
  const best = (who, key) => Math.max(...samples[who].map((s) => s[key]))
  const least = (who, key) => Math.min(...samples[who].map((s) => s[key]))
  const row = { model: f.name, dir: f.dir, measured: {} }
  for (const who of Object.keys(runners)) {
    const first = samples[who][0]
    const m = {
      decodeTokensPerSecond: best(who, 'decodeTokensPerSecond'),
      prefillTokensPerSecond: best(who, 'prefillTokensPerSecond'),
    }
    for (const key of ['ttftMs', 'loadSeconds', 'peakRssMiB']) if (first[key] !== undefined) m[key] = least(who, key)
    for (const key of ['turn4PromptTokens', 'cacheRebuilds', 'modelBytes', 'parameters', 'threads', 'build']) {
      if (first[key] !== undefined) m[key] = first[key]
    }
    row.measured[who] = m
  }
  const peers = ['mlx-lm f32', 'mlx-lm bf16'].filter((who) => row.measured[who])
  const faster = (key) => Math.max(...peers.map((who) => row.measured[who][key]))
  row.decodeVsMlxLm = peers.length ? row.measured.ours.decodeTokensPerSecond / faster('decodeTokensPerSecond') : null
  row.prefillVsMlxLm = peers.length ? row.measured.ours.prefillTokensPerSecond / faster('prefillTokensPerSecond') : null
  // ours ÷ llama.cpp's Q4_K_M, the sample taken in this folder's rounds.
  const beside = row.measured['llama.cpp Q4_K_M']
  row.decodeVsLlamaCpp = beside ? row.measured.ours.decodeTokensPerSecond / beside.decodeTokensPerSecond : null
  row.prefillVsLlamaCpp = beside ? row.measured.ours.prefillTokensPerSecond / beside.prefillTokensPerSecond : null
  const indexFile = join(f.dir, 'model.safetensors.index.json')
  const index = existsSync(indexFile) ? JSON.parse(readFileSync(indexFile, 'utf8')).metadata : {}
  const weights = readdirSync(f.dir).filter((n) => n.endsWith('.safetensors'))
    .reduce((sum, n) => sum + Number(execFileSync('stat', ['-c', '%s', join(f.dir, n)], { encoding: 'utf8' })), 0)
  row.sizeMiB = weights / 2 ** 20
  row.bitsPerWeight = index.total_parameters ? (weights * 8) / index.total_parameters : 16
  const perToken = decodeBytesPerToken(f.dir, weights)
  row.weightBytesPerToken = perToken.bytes
  row.tiedEmbeddings = perToken.tied
  row.rooflineDecodeTokensPerSecond = bandwidth ? (bandwidth.gbPerSecond * 1e9) / perToken.bytes : null
  row.decodeRooflineFraction = bandwidth ? row.measured.ours.decodeTokensPerSecond / row.rooflineDecodeTokensPerSecond : null
  results.push(row)
}
const original = results.find((r) => r.dir === hf)
for (const r of results) r.speedupVsBf16 = original ? r.measured.ours.decodeTokensPerSecond / original.measured.ours.decodeTokensPerSecond : null

// The llama.cpp row: best of its samples over all folders. Its embedding is tied (token_embd is
// the output head, stored as q6_K), so a decode step reads the whole file.
let llamaRow = null
if (!llama.unavailable && runners['llama.cpp Q4_K_M']) {
  const all = results.map((r) => r.measured['llama.cpp Q4_K_M'])
  const m = all[0]
  const fileBytes = Number(execFileSync('stat', ['-c', '%s', llama.gguf], { encoding: 'utf8' }))
  llamaRow = {
    model: 'llama.cpp Q4_K_M', gguf: llama.gguf, source: hf,
    llamaCpp: `llama-cpp-python ${LLAMA_CPP_PYTHON} sdist, llama.cpp ${LLAMA_CPP_COMMIT}, ${m.build}`,
    threads: m.threads,
    decodeTokensPerSecond: Math.max(...all.map((x) => x.decodeTokensPerSecond)),
    prefillTokensPerSecond: Math.max(...all.map((x) => x.prefillTokensPerSecond)),
    sizeMiB: fileBytes / 2 ** 20,
    bitsPerWeight: (m.modelBytes * 8) / m.parameters,
    weightBytesPerToken: m.modelBytes,
    setupSeconds: llama.setupSeconds,
  }
  llamaRow.rooflineDecodeTokensPerSecond = bandwidth ? (bandwidth.gbPerSecond * 1e9) / m.modelBytes : null
  llamaRow.decodeRooflineFraction = bandwidth ? llamaRow.decodeTokensPerSecond / llamaRow.rooflineDecodeTokensPerSecond : null
}

// Conversion: the same input to uniform 4-bit, ours and mlx-lm's, alternated.
const convert = { ours: [], 'mlx-lm': [] }
const scratch = join(work, `convert-timing-${size}`)
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
const times = (x) => (x === undefined || x === null || Number.isNaN(x) ? '—' : `${x.toFixed(2)}×`)
const pct = (x) => (x === undefined || x === null || Number.isNaN(x) ? '—' : `${(x * 100).toFixed(1)}%`)
const f0 = (x) => (x === undefined || x === null || Number.isNaN(x) ? '—' : x.toFixed(0))
const get = (r, who, key) => r.measured[who]?.[key]
const lc = 'llama.cpp Q4_K_M'
const llamaCell = (x) => (llama.unavailable ? 'n/a' : x)
const lines = []
lines.push(`${machine.cpu}, ${machine.cores} cores, ${machine.backend}; decode at turn 4 of a greedy 4-turn chat, ${decodeTokens} tokens a turn; ` +
  `prefill/TTFT on a ${promptTokens}-token prompt; ${runners['mlx-lm bf16'] ? `mlx-lm bf16 on ${bf16Prompt} / ${bf16Decode} tokens; ` : ''}best of ${rounds}` +
  (chosen.length < Object.keys(runnerIds).length ? `; runners: ${chosen.join(', ')}` : '') +
  (folders.length < allFolders.length ? `; folders: ${keptFolders.join(', ')}` : ''))
lines.push(llama.unavailable
  ? `llama.cpp: not available (${llama.unavailable})`
  : `llama.cpp: ${llamaRow.llamaCpp}; \`llama-bench -t ${llamaRow.threads} -p ${promptTokens} -n ${decodeTokens} -r 1\`, ` +
    `prefill and decode from an empty context; its Q4_K_M of the same bf16 checkpoint, ${f2(llamaRow.bitsPerWeight)} bits/weight`)
lines.push(bandwidth
  ? `read bandwidth ${f2(bandwidth.gbPerSecond)} GB/s (${bandwidth.threads} threads, best of ${bandwidth.passes}); roofline = bandwidth ÷ weight bytes read per decoded token ` +
    '(the files, less the embedding table unless it is tied to the output head)'
  : 'read bandwidth: not measured')
lines.push('')
lines.push('| Model | Bits/weight | Size | Decode tok/s | Speedup vs BF16 | vs mlx-lm | mlx-lm f32 | mlx-lm bf16 | vs llama.cpp | llama.cpp Q4_K_M | Roofline tok/s | of roofline |')
lines.push('|---|---|---|---|---|---|---|---|---|---|---|---|')
for (const r of results) {
  lines.push(`| ${r.model} | ${f2(r.bitsPerWeight)} | ${r.sizeMiB.toFixed(0)} MiB | ${f2(get(r, 'ours', 'decodeTokensPerSecond'))} | ${times(r.speedupVsBf16)} | ` +
    `${times(r.decodeVsMlxLm)} | ${f2(get(r, 'mlx-lm f32', 'decodeTokensPerSecond'))} | ${f2(get(r, 'mlx-lm bf16', 'decodeTokensPerSecond'))} | ` +
    `${llamaCell(times(r.decodeVsLlamaCpp))} | ${llamaCell(f2(get(r, lc, 'decodeTokensPerSecond')))} | ${f2(r.rooflineDecodeTokensPerSecond)} | ${pct(r.decodeRooflineFraction)} |`)
}
if (llamaRow) {
  lines.push(`| ${lc} (llama.cpp, best of its ${results.length * rounds} samples) | ${f2(llamaRow.bitsPerWeight)} | ${llamaRow.sizeMiB.toFixed(0)} MiB | ` +
    `${f2(llamaRow.decodeTokensPerSecond)} | — | — | — | — | — | — | ${f2(llamaRow.rooflineDecodeTokensPerSecond)} | ${pct(llamaRow.decodeRooflineFraction)} |`)
}
lines.push('')
lines.push('| Model | Prefill tok/s (ours / mlx-lm f32 / bf16) | vs mlx-lm | llama.cpp prefill | vs llama.cpp | TTFT ms (ours / mlx-lm f32) | Load s (ours / mlx-lm f32) | Peak RSS MiB (ours / mlx-lm f32) |')
lines.push('|---|---|---|---|---|---|---|---|')
for (const r of results) {
  lines.push(`| ${r.model} | ${f2(get(r, 'ours', 'prefillTokensPerSecond'))} / ${f2(get(r, 'mlx-lm f32', 'prefillTokensPerSecond'))} / ${f2(get(r, 'mlx-lm bf16', 'prefillTokensPerSecond'))} | ` +
    `${times(r.prefillVsMlxLm)} | ${llamaCell(f2(get(r, lc, 'prefillTokensPerSecond')))} | ${llamaCell(times(r.prefillVsLlamaCpp))} | ` +
    `${f0(get(r, 'ours', 'ttftMs'))} / ${f0(get(r, 'mlx-lm f32', 'ttftMs'))} | ${f2(get(r, 'ours', 'loadSeconds'))} / ${f2(get(r, 'mlx-lm f32', 'loadSeconds'))} | ` +
    `${f0(get(r, 'ours', 'peakRssMiB'))} / ${f0(get(r, 'mlx-lm f32', 'peakRssMiB'))} |`)
}
if (llamaRow) lines.push(`| ${lc} (best) | — | — | ${f2(llamaRow.prefillTokensPerSecond)} | — | — | — | — |`)
lines.push('')
lines.push('| Convert (same input → 4-bit g64) | Seconds | Peak RSS MiB |')
lines.push('|---|---|---|')
lines.push(`| mlx convert | ${conv.ours.seconds.toFixed(1)} | ${conv.ours.peakRssMiB.toFixed(0)} |`)
lines.push(`| mlx_lm convert | ${conv['mlx-lm'].seconds.toFixed(1)} | ${conv['mlx-lm'].peakRssMiB.toFixed(0)} |`)
lines.push(`| ours vs mlx-lm | ${f2(conv.speedVsMlxLm)}× the speed | ${f2(conv.rssVsMlxLm)}× the memory |`)
console.log(`\n${lines.join('\n')}`)
mkdirSync(join(root, 'bench'), { recursive: true })
writeFileSync(join(root, 'bench', 'results.json'), `${JSON.stringify({
  machine, size, promptTokens, decodeTokens, bf16Prompt, bf16Decode, rounds, runners: Object.keys(runners), bandwidth,
  llamaCpp: llamaRow ?? { unavailable: llama.unavailable }, results, convert: conv, table: lines.join('\n'),
}, null, 2)}\n`)
