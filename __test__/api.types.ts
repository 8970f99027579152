// Compiled by `npm run typecheck` (tsc, no emit): the typings say what the API accepts.
import { mlxInfo, type MlxInfo } from '../index.js'

const info: MlxInfo = mlxInfo()
const version: string = info.version
const backend: string = info.backend
void [version, backend, info.device]

// @ts-expect-error mlxInfo takes no arguments
mlxInfo('cpu')
// @ts-expect-error there is no such field
void info.gpuName

import { convert, imatrix, type ConvertResult, type ImatrixResult } from '../index.js'

async function conversions() {
  const r: ConvertResult = await convert(
    { input: 'in', output: 'out', quantize: true, bits: 3, recipe: 'unsloth', imatrixPath: 'i.gguf', dtype: 'bfloat16' },
    { onProgress: (p) => void [p.bytesDone / p.bytesTotal, p.tensor] },
  )
  const bpw: number = r.bitsPerWeight
  void [bpw, r.rows[0].precision, r.table]
  // @ts-expect-error recipes are a closed set
  await convert({ input: 'in', output: 'out', recipe: 'mixed_5_7' })
  const m: ImatrixResult = await imatrix({ model: 'm', file: 't.txt', output: 'o.gguf', chunkSize: 256 })
  void m.entries
}
void conversions
