// `npm run demo`: builds what is missing, then shows what the library runs on.
// (The chat demo over a generated Qwen3.5 model replaces this once the engine lands.)
import { createRequire } from 'node:module'

import { build } from './build.mjs'

build()
const { mlxInfo } = createRequire(import.meta.url)('../index.js')
const info = mlxInfo()
console.log(`@mlx-node/lm on MLX ${info.version}, device ${info.device}, backend ${info.backend}`)
