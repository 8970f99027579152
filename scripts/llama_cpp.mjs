// llama.cpp for `npm run bench`: built once from the PyPI source package of llama-cpp-python,
// which vendors llama.cpp (0.3.36 → llama.cpp 0c1e57098), into .mlx/llama.cpp/ (git-ignored).
//
// * ensureLlamaCpp(): `pip download` the sdist, unpack it, CMake Release CPU-only build of
//   llama-bench and llama-quantize (skipped when both binaries exist);
// * ensureConverterDeps(python): torch (PyPI's Linux wheel, i.e. the large CUDA build, which
//   runs on the CPU too) and the vendored gguf-py, into the given venv, once;
// * ggufFor(hfDir, …): convert_hf_to_gguf.py → BF16 GGUF → llama-quantize Q4_K_M, cached in
//   .mlx/bench/;
// * llamaBench(gguf, …): one `llama-bench -o json` run → prefill and decode tokens/s.
//
// Every function throws an Error (with the command's tail of output) instead of exiting, so the
// bench can report the column as not available and go on.
import { spawnSync } from 'node:child_process'
import { closeSync, existsSync, mkdirSync, openSync, readFileSync, readdirSync, renameSync, rmSync, statSync } from 'node:fs'
import { cpus } from 'node:os'
import { basename, dirname, join } from 'node:path'

import { root } from './lib.mjs'

export const LLAMA_CPP_PYTHON = '0.3.36'
export const LLAMA_CPP_COMMIT = '0c1e57098'
// The torch the converter was run with in this project's reference notes (Python 3.11).
export const TORCH = '2.15.0'

const base = join(root, '.mlx', 'llama.cpp')
const sdistDir = join(base, `llama_cpp_python-${LLAMA_CPP_PYTHON}`)
export const llamaCppSource = join(sdistDir, 'vendor', 'llama.cpp')
const buildDir = join(base, 'build')
export const llamaBenchBin = join(buildDir, 'bin', 'llama-bench')
export const llamaQuantizeBin = join(buildDir, 'bin', 'llama-quantize')
export const converterScript = join(llamaCppSource, 'convert_hf_to_gguf.py')

/** Runs a command; returns its stdout. Throws with the end of its output when it fails. */
function sh(cmd, args, { quiet = false, ...options } = {}) {
  const r = spawnSync(cmd, args, {
    cwd: root, encoding: 'utf8', maxBuffer: 256 * 2 ** 20,
    stdio: quiet ? ['ignore', 'pipe', 'pipe'] : ['ignore', 'pipe', 'inherit'], ...options,
  })
  if (r.error) throw new Error(`could not start ${cmd}: ${r.error.message}`)
  if (r.status !== 0) {
    const tail = `${r.stdout ?? ''}\n${r.stderr ?? ''}`.trim().split('\n').slice(-15).join('\n')
    throw new Error(`${basename(cmd)} ${args.join(' ')} exited with ${r.status ?? r.signal}\n${tail}`)
  }
  return r.stdout
}

/** Like sh(), with the command's output shown as it runs. */
function shown(cmd, args, options = {}) {
  const r = spawnSync(cmd, args, { cwd: root, stdio: 'inherit', ...options })
  if (r.error) throw new Error(`could not start ${cmd}: ${r.error.message}`)
  if (r.status !== 0) throw new Error(`${basename(cmd)} ${args.join(' ')} exited with ${r.status ?? r.signal}`)
}

/** Downloads and unpacks the sdist once; returns the vendored llama.cpp tree. */
export function ensureLlamaCppSource({ python = 'python3' } = {}) {
  mkdirSync(base, { recursive: true })
  if (!existsSync(join(llamaCppSource, 'CMakeLists.txt')) || !existsSync(converterScript)) {
    const tarball = join(base, `llama_cpp_python-${LLAMA_CPP_PYTHON}.tar.gz`)
    if (!existsSync(tarball)) {
      console.log(`llama.cpp: downloading the llama-cpp-python ${LLAMA_CPP_PYTHON} sdist (it vendors llama.cpp ${LLAMA_CPP_COMMIT}) ...`)
      shown(python, ['-m', 'pip', 'download', '--no-deps', '--no-binary', ':all:', '-q', '-d', base,
        `llama-cpp-python==${LLAMA_CPP_PYTHON}`])
    }
    rmSync(sdistDir, { recursive: true, force: true })
    sh('tar', ['-xzf', tarball, '-C', base])
    if (!existsSync(join(llamaCppSource, 'CMakeLists.txt'))) throw new Error(`no vendor/llama.cpp in ${tarball}`)
  }
  return llamaCppSource
}

/** Builds llama-bench and llama-quantize once; returns their paths and the source tree. */
export function ensureLlamaCpp({ jobs = Number(process.env.LLAMA_CPP_JOBS) || cpus().length, python = 'python3' } = {}) {
  const result = { llamaBench: llamaBenchBin, llamaQuantize: llamaQuantizeBin, converter: converterScript, source: llamaCppSource }
  if (existsSync(llamaBenchBin) && existsSync(llamaQuantizeBin) && existsSync(converterScript)) return result
  ensureLlamaCppSource({ python })
  // GCC prints thousands of warnings on ggml's AVX-512 code: the output goes to a log file.
  const log = join(base, 'build.log')
  console.log(`llama.cpp: CMake Release CPU build of llama-bench and llama-quantize, -j ${jobs} (once; output in ${log.replace(`${root}/`, '')}) ...`)
  const started = performance.now()
  const fd = openSync(log, 'w')
  try {
    shown('cmake', ['-S', llamaCppSource, '-B', buildDir, '-DCMAKE_BUILD_TYPE=Release',
      '-DGGML_NATIVE=ON', '-DLLAMA_OPENSSL=OFF', '-DBUILD_SHARED_LIBS=OFF',
      '-DGGML_CUDA=OFF', '-DGGML_METAL=OFF', '-DGGML_VULKAN=OFF', '-DGGML_BLAS=OFF',
      '-DLLAMA_BUILD_TESTS=OFF', '-DLLAMA_BUILD_EXAMPLES=OFF', '-DLLAMA_BUILD_SERVER=OFF',
      '-DLLAMA_BUILD_APP=OFF', '-DLLAMA_BUILD_TOOLS=ON'], { stdio: ['ignore', fd, fd] })
    shown('cmake', ['--build', buildDir, '--config', 'Release', '-j', String(jobs),
      '--target', 'llama-bench', 'llama-quantize'], { stdio: ['ignore', fd, fd] })
  } catch (e) {
    const tail = readFileSync(log, 'utf8').split('\n').filter((l) => /error|Error/.test(l)).slice(-10).join('\n')
    throw new Error(`${e.message} (see ${log})\n${tail}`)
  } finally {
    closeSync(fd)
  }
  for (const bin of [llamaBenchBin, llamaQuantizeBin]) if (!existsSync(bin)) throw new Error(`the build did not produce ${bin}`)
  console.log(`llama.cpp: built in ${((performance.now() - started) / 1000).toFixed(0)} s`)
  return result
}

const TORCH_CHECK = `import torch; assert torch.__version__.split('+')[0] == '${TORCH}', torch.__version__`
const GGUF_CHECK = 'import gguf, transformers, sentencepiece, safetensors, numpy'

/**
 * Installs what convert_hf_to_gguf.py needs into `python`'s venv, once: torch and the vendored
 * gguf-py (transformers, safetensors, numpy and sentencepiece come with mlx-lm already). Checks
 * afterwards that mlx-lm still imports (`mlxLmCheck`: Python code that must run).
 */
export function ensureConverterDeps(python, { mlxLmCheck = 'import mlx_lm' } = {}) {
  ensureLlamaCppSource()
  const runs = (code) => spawnSync(python, ['-c', code], { stdio: 'ignore' }).status === 0
  const venv = dirname(dirname(python)).replace(`${root}/`, '')
  let installed = false
  if (!runs(TORCH_CHECK)) {
    console.log(`llama.cpp converter: installing torch ${TORCH} into ${venv} (once). PyPI serves Linux torch as its ` +
      'large CUDA build (about 3 GB installed with the nvidia-* wheels it pulls in); it runs on the CPU, and the ' +
      'converter only uses it for tensors.')
    shown(python, ['-m', 'pip', 'install', '-q', `torch==${TORCH}`])
    installed = true
  }
  if (!runs(GGUF_CHECK)) {
    console.log(`llama.cpp converter: installing the vendored gguf-py into ${venv} (once) ...`)
    shown(python, ['-m', 'pip', 'install', '-q', join(llamaCppSource, 'gguf-py')])
    installed = true
  }
  if (!installed) return
  const r = spawnSync(python, ['-c', mlxLmCheck], { encoding: 'utf8' })
  if (r.status !== 0) throw new Error(`after installing the converter's dependencies, mlx-lm no longer imports:\n${r.stderr}`)
  for (const code of [TORCH_CHECK, GGUF_CHECK]) {
    const why = spawnSync(python, ['-c', code], { encoding: 'utf8' })
    if (why.status !== 0) throw new Error(`the converter's dependencies do not import after installing them:\n${why.stderr}`)
  }
}

function newer(a, than) {
  return existsSync(a) && statSync(a).mtimeMs >= statSync(than).mtimeMs
}

function safetensorsOf(dir) {
  return readdirSync(dir).filter((n) => n.endsWith('.safetensors')).map((n) => join(dir, n))
}

/**
 * HF folder → `<work>/<name>-bf16.gguf` → `<work>/<name>-Q4_K_M.gguf` (both kept; redone when the
 * folder's weights are newer). Returns { bf16, q4km }.
 */
export function ggufFor(hfDir, { python, work = join(root, '.mlx', 'bench'), outtype = 'bf16' } = {}) {
  ensureConverterDeps(python)
  mkdirSync(work, { recursive: true })
  const name = basename(hfDir)
  const full = join(work, `${name}-${outtype}.gguf`)
  const q4km = join(work, `${name}-Q4_K_M.gguf`)
  const newest = safetensorsOf(hfDir).sort((a, b) => statSync(b).mtimeMs - statSync(a).mtimeMs)[0]
  if (!newest) throw new Error(`no .safetensors in ${hfDir}`)
  if (!newer(full, newest)) {
    console.log(`llama.cpp: converting ${name} to a ${outtype.toUpperCase()} GGUF ...`)
    const tmp = `${full}.partial`
    rmSync(tmp, { force: true })
    sh(python, [converterScript, hfDir, '--outtype', outtype, '--no-mtp', '--outfile', tmp], { quiet: true })
    renameSync(tmp, full)
  }
  if (!newer(q4km, full)) {
    const { llamaQuantize } = ensureLlamaCpp()
    console.log(`llama.cpp: llama-quantize ${basename(full)} → Q4_K_M ...`)
    const tmp = `${q4km}.partial`
    rmSync(tmp, { force: true })
    sh(llamaQuantize, [full, tmp, 'Q4_K_M', String(cpus().length)], { quiet: true })
    renameSync(tmp, q4km)
  }
  return { [outtype]: full, q4km }
}

/**
 * One `llama-bench` run: `-p promptTokens` (prompt processing from an empty context) and
 * `-n decodeTokens` (generation from an empty context), `repetitions` each (llama-bench adds a
 * warm-up run of its own). Returns tokens/s as llama-bench reports them (avg_ts), and the
 * model's tensor bytes and parameter count from its JSON.
 */
export function llamaBench(gguf, { promptTokens, decodeTokens, threads = cpus().length, repetitions = 1 }) {
  const out = sh(llamaBenchBin, ['-m', gguf, '-t', String(threads), '-p', String(promptTokens),
    '-n', String(decodeTokens), '-r', String(repetitions), '-o', 'json'], { quiet: true })
  const rows = JSON.parse(out.slice(out.indexOf('[')))
  const pp = rows.find((r) => r.n_prompt > 0 && r.n_gen === 0)
  const tg = rows.find((r) => r.n_gen > 0 && r.n_prompt === 0)
  if (!pp || !tg) throw new Error(`llama-bench printed no pp/tg rows: ${out.slice(0, 400)}`)
  return {
    prefillTokensPerSecond: pp.avg_ts,
    decodeTokensPerSecond: tg.avg_ts,
    modelBytes: tg.model_size,
    parameters: tg.model_n_params,
    threads: tg.n_threads,
    build: `${tg.build_commit} (${tg.cpu_info})`,
  }
}
