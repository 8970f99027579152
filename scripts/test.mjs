// `npm test`: builds what is missing, then every test: Rust (cargo) and JS (node's runner).
import { join } from 'node:path'

import { build } from './build.mjs'
import { root, run } from './lib.mjs'

build()
run('cargo', ['test', '--release', '--workspace'])
run(process.execPath, ['--test', join(root, '__test__')])
