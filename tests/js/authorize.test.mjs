// The authorization callback (PRODUCT.md 9.4) with real clients: the README's example receiver
// (examples/authorize-receiver.mjs, which checks signatures with node:crypto) decides; the npm
// y-websocket provider, refused with 1013 while the application's database is down, retries as
// it always does and gets in once the receiver answers; @hocuspocus/provider 4 is refused one
// document with the receiver's reason and told another is read-only.
import { test } from 'node:test'
import assert from 'node:assert/strict'
import { writeFileSync, mkdtempSync } from 'node:fs'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { execFileSync } from 'node:child_process'
import { startServer, BIN, TIMEOUT, waitFor } from './server.mjs'
import { authorizeServer } from '../../examples/authorize-receiver.mjs'
import WebSocket from 'ws'
import * as Y from 'yjs'
import { WebsocketProvider } from 'y-websocket'
import { HocuspocusProvider, HocuspocusProviderWebsocket } from 'hocuspocus-provider-4'

const SECRET = 'whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw'
const KEYS = new URL('../keys/', import.meta.url).pathname

// The example receiver on a free port; `roleOf` as the application decides.
async function receiver (roleOf) {
  const server = authorizeServer({ secret: SECRET, roleOf })
  server.listen(0, '127.0.0.1')
  await new Promise(resolve => server.once('listening', resolve))
  return { url: `http://127.0.0.1:${server.address().port}/authorize`, close: () => server.close() }
}

function config (authorizeUrl) {
  const dir = mkdtempSync(join(tmpdir(), 'wiresocket-authorize-'))
  const path = join(dir, 'wiresocket.toml')
  writeFileSync(path, `
[rate_limits]
handshakes_per_minute = 1000000
[[tenants]]
id = "acme"
[[tenants.keys]]
alg = "EdDSA"
public_key_file = "${KEYS}ed25519_public.pem"
private_key_file = "${KEYS}ed25519_private.pem"
[[apps]]
id = "web"
tenant = "acme"
webhook_secret = "${SECRET}"
webhook_allow_private = true
authorize_url = "${authorizeUrl}"
authorize_timeout_ms = 1000
`)
  const tokenOf = sub => execFileSync(BIN, ['token', '--config', path, '--app', 'web', '--sub', sub, '--ttl-s', '600'], { encoding: 'utf8' }).trim()
  return { path, tokenOf }
}

// y-websocket with its default retry; the close codes it saw.
function provider (url, name, token) {
  const doc = new Y.Doc()
  const p = new WebsocketProvider(url, name, doc, { WebSocketPolyfill: WebSocket, disableBc: true, params: { token } })
  p.closes = []
  p.on('connection-close', event => event && p.closes.push(`${event.code} ${event.reason}`))
  const destroy = p.destroy.bind(p)
  p.destroy = () => { destroy(); doc.destroy() }
  return p
}

test('y-websocket follows 1013 with its usual retry and gets in once the app answers', TIMEOUT, async () => {
  let calls = 0
  const hook = await receiver(async (sub, document) => {
    calls += 1
    if (calls <= 2) throw new Error('the database is down')
    return { alice: 'editor', bob: null }[sub] ?? null
  })
  const { path, tokenOf } = config(hook.url)
  const server = await startServer('127.0.0.1:0', ['--config', path])
  try {
    const alice = provider(server.url, 'plan', tokenOf('alice'))
    await waitFor('alice synced after the retries', () => alice.synced)
    assert.equal(alice.closes.length, 2, alice.closes.join())
    for (const close of alice.closes) assert.match(close, /^1013 Service unavailable: the application did not authorize/)
    assert.equal(calls, 3)
    // Alice again, on another connection: the kept answer, no call; the two edit together.
    const again = provider(server.url, 'plan', tokenOf('alice'))
    await waitFor('the second synced', () => again.synced)
    alice.doc.getText('t').insert(0, 'hello')
    await waitFor('the edit arrives', () => again.doc.getText('t').toString() === 'hello')
    assert.equal(calls, 3)
    // Bob is refused with the application's reason (y-websocket retries; each is refused).
    const bob = provider(server.url, 'plan', tokenOf('bob'))
    await waitFor('bob refused', () => bob.closes.length > 0)
    assert.equal(bob.closes[0], '4003 Forbidden: you are not a member of this document')
    assert.equal(bob.synced, false)
    for (const p of [alice, again, bob]) p.destroy()
  } finally {
    await server.stop()
    hook.close()
  }
})

test('@hocuspocus/provider 4: a refused document and a read-only one on one socket', TIMEOUT, async () => {
  const roles = { plan: { carol: 'viewer' }, notes: {} }
  const hook = await receiver((sub, document) => roles[document]?.[sub] ?? null)
  const { path, tokenOf } = config(hook.url)
  const server = await startServer('127.0.0.1:0', ['--config', path])
  try {
    const carol = tokenOf('carol')
    const ws = new HocuspocusProviderWebsocket({ url: server.url, WebSocketPolyfill: WebSocket })
    const failures = []
    const plan = new HocuspocusProvider({ websocketProvider: ws, name: 'plan', document: new Y.Doc(), token: carol })
    const notes = new HocuspocusProvider({ websocketProvider: ws, name: 'notes', document: new Y.Doc(), token: carol, onAuthenticationFailed: ({ reason }) => failures.push(reason) })
    plan.attach()
    notes.attach()
    await waitFor('plan synced and notes refused', () => plan.synced && failures.length > 0)
    assert.equal(failures[0], '4003 Forbidden: you are not a member of this document')
    assert.equal(plan.authorizedScope, 'readonly')
    plan.destroy()
    notes.destroy()
    ws.destroy()
  } finally {
    await server.stop()
    hook.close()
  }
})
