#!/usr/bin/env node
// The `mlx` command (`npx mlx convert …`, `npx mlx imatrix …`): parsing, progress and the
// summary live in the native library, so the command and `convert()` behave the same.
const { runCli } = require('../index.js')

runCli(process.argv.slice(2)).then(
  (code) => {
    process.exitCode = code
  },
  (error) => {
    console.error(`error [${error.code ?? 'INTERNAL_ERROR'}]: ${error.message}`)
    process.exitCode = 1
  },
)
