// What the real-client test files share: the wiresocket binary cargo built (WIRESOCKET_BIN),
// a server on a free port (two shards: documents hash to either, and a Hocuspocus socket's
// documents on the other shard are reached over the shard mesh), development tokens as a
// newcomer gets them (`wiresocket token`), and bounded waits.
import { spawn, execFileSync } from 'node:child_process'
import { once } from 'node:events'

export const BIN = process.env.WIRESOCKET_BIN
if (!BIN) throw new Error('set WIRESOCKET_BIN to the wiresocket binary (cargo test does this)')

export async function startServer (listen = '127.0.0.1:0', extraArgs = []) {
  const proc = spawn(BIN, ['serve', '--listen', listen, '--shards', '2', ...extraArgs], { stdio: ['ignore', 'pipe', 'ignore'] })
  let out = ''
  for await (const chunk of proc.stdout) {
    out += chunk
    const m = out.match(/listening on (127\.0\.0\.1:\d+)/)
    if (m) {
      const exited = once(proc, 'exit')
      return {
        addr: m[1],
        // What it printed on stdout (the listening line, and for a newcomer what to try).
        printed: out,
        url: `ws://${m[1]}`,
        stop: async () => { proc.kill('SIGKILL'); await exited },
        // A drain (SIGTERM): resolves when the process has exited.
        drain: async () => { proc.kill('SIGTERM'); await exited }
      }
    }
  }
  throw new Error(`server did not start: ${out}`)
}

export const token = (...args) => execFileSync(BIN, ['token', ...args], { encoding: 'utf8' }).trim()
export const TOKEN = token()

export const TIMEOUT = { timeout: 60000 }

export async function waitFor (what, predicate, timeoutMs = 20000) {
  const deadline = Date.now() + timeoutMs
  while (!predicate()) {
    if (Date.now() > deadline) throw new Error(`timed out waiting for ${what}`)
    await new Promise(resolve => setTimeout(resolve, 10))
  }
}

export const tick = () => new Promise(resolve => setImmediate(resolve))
