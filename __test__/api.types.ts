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
