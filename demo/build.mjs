// Bundles demo.page.mjs into one script (an IIFE for browsers) at the path given: what
// build.rs runs, and what the node serves at /demo/demo.js.
import * as esbuild from 'esbuild'
import { fileURLToPath } from 'node:url'

const out = process.argv[2]
if (!out) throw new Error('usage: node build.mjs OUTPUT.js')
await esbuild.build({
  absWorkingDir: fileURLToPath(new URL('.', import.meta.url)),
  entryPoints: ['demo.page.mjs'],
  outfile: out,
  bundle: true,
  minify: true,
  format: 'iife',
  platform: 'browser',
  target: 'es2022',
  legalComments: 'none',
  logLevel: 'warning',
  define: { 'process.env.NODE_ENV': '"production"' }
})
