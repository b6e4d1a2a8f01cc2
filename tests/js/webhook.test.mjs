// Webhooks to a real receiver: a Node HTTP server that checks Standard Webhooks signatures with
// node:crypto (not the server's code), and applies session.ended's state with the npm `yjs`.
import { test } from 'node:test'
import assert from 'node:assert/strict'
import { createServer } from 'node:http'
import { createHmac, timingSafeEqual } from 'node:crypto'
import { writeFileSync, mkdtempSync } from 'node:fs'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { execFileSync } from 'node:child_process'
import { startServer, BIN, TIMEOUT, waitFor, tick } from './server.mjs'
import WebSocket from 'ws'
import * as Y from 'yjs'
import { WebsocketProvider } from 'y-websocket'

const SECRET = 'whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw'
const KEYS = new URL('../keys/', import.meta.url).pathname

function verified (headers, body) {
  const key = Buffer.from(SECRET.slice('whsec_'.length), 'base64')
  const ts = Number(headers['webhook-timestamp'])
  if (Math.abs(Date.now() / 1000 - ts) > 300) return false
  const expected = createHmac('sha256', key).update(`${headers['webhook-id']}.${ts}.`).update(body).digest()
  return headers['webhook-signature'].split(' ').some(s => {
    const [version, value] = s.split(',')
    const given = Buffer.from(value ?? '', 'base64')
    return version === 'v1' && given.length === expected.length && timingSafeEqual(given, expected)
  })
}

// Records every request; `failFirst` requests are answered 500.
async function receiver (failFirst = 0) {
  const requests = []
  const server = createServer((req, res) => {
    const chunks = []
    req.on('data', c => chunks.push(c))
    req.on('end', () => {
      const body = Buffer.concat(chunks)
      const status = requests.length < failFirst ? 500 : 204
      requests.push({ headers: req.headers, body: JSON.parse(body), ok: verified(req.headers, body), status })
      res.writeHead(status).end()
    })
  })
  server.listen(0, '127.0.0.1')
  await new Promise(resolve => server.once('listening', resolve))
  return { url: `http://127.0.0.1:${server.address().port}/hooks`, requests, close: () => server.close() }
}

function config (hookUrl, extra = '') {
  const dir = mkdtempSync(join(tmpdir(), 'wiresocket-webhook-'))
  const path = join(dir, 'wiresocket.toml')
  writeFileSync(path, `
[documents]
grace_period_ms = 300
[rate_limits]
handshakes_per_minute = 1000000
[webhooks]
retry_initial_ms = 50
retry_max_ms = 200
${extra}
[[tenants]]
id = "acme"
[[tenants.keys]]
alg = "EdDSA"
public_key_file = "${KEYS}ed25519_public.pem"
private_key_file = "${KEYS}ed25519_private.pem"
[[apps]]
id = "web"
tenant = "acme"
webhook_url = "${hookUrl}"
webhook_secret = "${SECRET}"
webhook_allow_private = true
`)
  const token = execFileSync(BIN, ['token', '--config', path, '--app', 'web', '--ttl-s', '600'], { encoding: 'utf8' }).trim()
  return { path, token }
}

function provider (url, name, token) {
  const doc = new Y.Doc()
  const p = new WebsocketProvider(url, name, doc, { WebSocketPolyfill: WebSocket, disableBc: true, maxBackoffTime: 500, params: { token } })
  const destroy = p.destroy.bind(p)
  p.destroy = () => { destroy(); doc.destroy() }
  return p
}

const ended = (requests, document) => requests.filter(r => r.status === 204 && r.body.type === 'session.ended' && r.body.document === document)

test('8 clients edit and leave: session.ended holds their final text, signed, after session.started', TIMEOUT, async () => {
  const hooks = await receiver()
  const { path, token } = config(hooks.url)
  const server = await startServer('127.0.0.1:0', ['--config', path])
  try {
    const providers = Array.from({ length: 8 }, () => provider(server.url, 'minutes', token))
    await Promise.all(providers.map(p => waitFor('sync', () => p.synced)))
    providers.forEach((p, i) => p.awareness.setLocalStateField('user', { name: `user ${i}` }))
    await Promise.all(providers.map(async (p, i) => {
      for (let n = 0; n < 50; n++) {
        const text = p.doc.getText('t')
        text.insert(Math.floor(Math.random() * (text.length + 1)), String.fromCharCode(97 + i))
        if (n % 5 === 0) await tick()
      }
    }))
    await waitFor('convergence', () => providers.every(p => p.doc.getText('t').length === 400))
    const final = providers[0].doc.getText('t').toString()
    // document.changed, 2 s after the edits stop: its updates, applied in order to an empty
    // document, give the clients' text.
    const changed = () => hooks.requests.filter(r => r.body.type === 'document.changed' && r.body.document === 'minutes')
    const replayed = new Y.Doc()
    let applied = 0
    await waitFor('document.changed with every edit', () => {
      for (const r of changed().slice(applied)) {
        Y.applyUpdate(replayed, Buffer.from(r.body.data.update, 'base64'))
        applied++
      }
      return replayed.getText('t').toString() === final
    })
    // presence.changed, 1 s after awareness settles: the eight users' objects.
    const present = () => hooks.requests.filter(r => r.body.type === 'presence.changed' && r.body.document === 'minutes')
    await waitFor('presence.changed with 8 users', () => present().some(r => r.body.data.count === 8 && r.body.data.users.length === 8))
    const names = present().find(r => r.body.data.count === 8).body.data.users.map(u => u.name).sort()
    assert.deepEqual(names, Array.from({ length: 8 }, (_, i) => `user ${i}`))
    const lastChange = changed().at(-1).body.data
    // The same clocks (the order of a state vector's entries is free).
    const clocks = sv => [...Y.decodeStateVector(sv).entries()].sort((a, b) => a[0] - b[0])
    assert.deepEqual(clocks(Buffer.from(lastChange.stateVector, 'base64')), clocks(Y.encodeStateVector(replayed)))
    providers.forEach(p => p.destroy())
    await waitFor('session.ended', () => ended(hooks.requests, 'minutes').length === 1)
    const mine = hooks.requests.filter(r => r.body.document === 'minutes')
    const kinds = mine.map(r => r.body.type)
    assert.equal(kinds[0], 'session.started')
    assert.equal(kinds.at(-1), 'session.ended')
    assert.ok(kinds.slice(1, -1).every(k => k === 'document.changed' || k === 'presence.changed') && kinds.length >= 4, kinds.join())
    for (const r of mine) {
      assert.ok(r.ok, 'signature verifies')
      assert.deepEqual(Object.keys(r.body).sort(), ['appId', 'data', 'document', 'tenantId', 'timestamp', 'type'])
      assert.equal(r.body.tenantId, 'acme')
      assert.equal(r.body.appId, 'web')
    }
    const doc = new Y.Doc()
    Y.applyUpdate(doc, Buffer.from(mine.at(-1).body.data.state, 'base64'))
    assert.equal(doc.getText('t').toString(), final)
  } finally {
    await server.stop()
    hooks.close()
  }
})

test('a receiver that fails for a while gets session.ended later, state intact, and a drain delivers it', TIMEOUT, async () => {
  const hooks = await receiver(30)
  const { path, token } = config(hooks.url, '[node]\ndrain_timeout_ms = 2000')
  const server = await startServer('127.0.0.1:0', ['--config', path])
  try {
    const p = provider(server.url, 'kept', token)
    await waitFor('sync', () => p.synced)
    p.doc.getText('t').insert(0, 'kept through the outage')
    await new Promise(resolve => setTimeout(resolve, 100))
    p.destroy()
    // The receiver answers 500 thirty times (seconds, with retries every 25-200 ms), past
    // the 300 ms grace period: the document stays, pinned, until its final state is taken,
    // and a client coming back meanwhile finds it whole.
    await new Promise(resolve => setTimeout(resolve, 600))
    assert.equal(ended(hooks.requests, 'kept').length, 0, 'the receiver is still failing')
    const back = provider(server.url, 'kept', token)
    await waitFor('sync', () => back.synced)
    assert.equal(back.doc.getText('t').toString(), 'kept through the outage')
    back.destroy()
    await waitFor('session.ended', () => ended(hooks.requests, 'kept').length >= 1)
    const state = ended(hooks.requests, 'kept').at(-1).body.data.state
    const doc = new Y.Doc()
    Y.applyUpdate(doc, Buffer.from(state, 'base64'))
    assert.equal(doc.getText('t').toString(), 'kept through the outage')
    const failed = hooks.requests.filter(r => r.status === 500)
    assert.equal(failed.length, 30)
    // Every event went through once, under the id of its failed attempts.
    const ids = new Set(failed.map(r => r.headers['webhook-id']))
    for (const id of ids) {
      assert.equal(hooks.requests.filter(r => r.headers['webhook-id'] === id && r.status === 204).length, 1)
    }
    // A document still open when the node drains: its session.ended goes out before exit.
    const q = provider(server.url, 'open-at-exit', token)
    await waitFor('sync', () => q.synced)
    q.doc.getText('t').insert(0, 'still open')
    await new Promise(resolve => setTimeout(resolve, 100))
    await server.drain()
    q.destroy()
    // At least once: the drain may send it beside the grace period's own.
    const atExit = ended(hooks.requests, 'open-at-exit')
    assert.ok(atExit.length >= 1, 'session.ended delivered before exit')
    const last = new Y.Doc()
    Y.applyUpdate(last, Buffer.from(atExit.at(-1).body.data.state, 'base64'))
    assert.equal(last.getText('t').toString(), 'still open')
  } finally {
    await server.stop()
    hooks.close()
  }
})
