// Real-client interop: the npm `yjs` + `y-websocket` client + `ws` against the wiresocket binary.
// Run through `cargo test` (tests/interop_js.rs), which builds the binary and sets WIRESOCKET_BIN.
import { test } from 'node:test'
import assert from 'node:assert/strict'
import { spawn } from 'node:child_process'
import { once } from 'node:events'
import { mkdtempSync, readFileSync, writeFileSync } from 'node:fs'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { fileURLToPath } from 'node:url'
import { startServer, token, TOKEN, TIMEOUT, waitFor, tick } from './server.mjs'
import WebSocket from 'ws'
import * as Y from 'yjs'
import { WebsocketProvider } from 'y-websocket'

function provider (url, name, doc = new Y.Doc(), options = { params: { token: TOKEN } }) {
  // disableBc: providers in one process would otherwise sync around the server.
  const p = new WebsocketProvider(url, name, doc, { WebSocketPolyfill: WebSocket, disableBc: true, maxBackoffTime: 500, ...options })
  // provider.destroy() leaves the awareness timer running; destroying the doc stops it.
  const destroy = p.destroy.bind(p)
  p.destroy = () => { destroy(); doc.destroy() }
  return p
}

const synced = p => waitFor('sync', () => p.synced)

test('8 providers x 500 concurrent edits on one document converge', TIMEOUT, async () => {
  const server = await startServer()
  const providers = Array.from({ length: 8 }, () => provider(server.url, 'converge'))
  try {
    await Promise.all(providers.map(synced))
    await Promise.all(providers.map(async (p, i) => {
      const text = p.doc.getText('t')
      for (let n = 0; n < 500; n++) {
        text.insert(Math.floor(Math.random() * (text.length + 1)), String.fromCharCode(97 + i))
        if (n % 10 === 0) await tick()
      }
    }))
    const total = 8 * 500
    await waitFor('convergence', () => providers.every(p => p.doc.getText('t').length === total))
    const first = providers[0].doc.getText('t').toString()
    for (const p of providers) assert.equal(p.doc.getText('t').toString(), first)
    for (let i = 0; i < 8; i++) {
      assert.equal(first.split(String.fromCharCode(97 + i)).length - 1, 500, `all edits of provider ${i}`)
    }
    // A fresh client gets the same state from the server alone.
    const late = provider(server.url, 'converge')
    await synced(late)
    assert.equal(late.doc.getText('t').toString(), first)
    late.destroy()
  } finally {
    providers.forEach(p => p.destroy())
    await server.stop()
  }
})

test('8 providers converge over wss:// with the node\'s own TLS, trusting only the test CA', TIMEOUT, async () => {
  const tls = fileURLToPath(new URL('../tls', import.meta.url))
  const config = join(mkdtempSync(join(tmpdir(), 'wiresocket-tls-')), 'node.toml')
  writeFileSync(config, `allow_development_tenant = true\n[tls]\ncert_file = "${tls}/server.pem"\nkey_file = "${tls}/server.key"\n`)
  const server = await startServer('127.0.0.1:0', ['--config', config])
  const url = `wss://localhost:${server.addr.split(':')[1]}`
  const ca = readFileSync(join(tls, 'ca.pem'))
  class TlsWebSocket extends WebSocket {
    constructor (address, protocols) { super(address, protocols, { ca }) }
  }
  const providers = Array.from({ length: 8 }, () =>
    provider(url, 'over-tls', new Y.Doc(), { params: { token: TOKEN }, WebSocketPolyfill: TlsWebSocket }))
  try {
    await Promise.all(providers.map(synced))
    providers.forEach((p, i) => {
      for (let n = 0; n < 50; n++) p.doc.getText('t').insert(0, String.fromCharCode(97 + i))
    })
    await waitFor('convergence', () => providers.every(p => p.doc.getText('t').length === 8 * 50))
    const first = providers[0].doc.getText('t').toString()
    for (const p of providers) assert.equal(p.doc.getText('t').toString(), first)
    // Without the CA the certificate is refused: the server's own, not a system one.
    const untrusted = new WebSocket(`${url}/x?token=${TOKEN}`)
    const [error] = await once(untrusted, 'error')
    assert.match(error.message, /certificate/)
  } finally {
    providers.forEach(p => p.destroy())
    await server.stop()
  }
})

test('several documents at once stay separate and each converges', TIMEOUT, async () => {
  const server = await startServer()
  const docs = ['alpha', 'beta', 'gamma', 'delta', 'epsilon']
  const groups = docs.map(name => Array.from({ length: 3 }, () => provider(server.url, name)))
  try {
    await Promise.all(groups.flat().map(synced))
    groups.forEach((group, d) => group.forEach((p, i) => p.doc.getText('t').insert(0, `${docs[d]}${i};`)))
    for (const [d, group] of groups.entries()) {
      await waitFor(`document ${docs[d]}`, () => group.every(p => p.doc.getText('t').length === 3 * (docs[d].length + 2)))
      const first = group[0].doc.getText('t').toString()
      for (const p of group) assert.equal(p.doc.getText('t').toString(), first)
      for (const other of docs.filter(n => n !== docs[d])) assert.ok(!first.includes(other), `${docs[d]} leaked ${other}`)
    }
  } finally {
    groups.flat().forEach(p => p.destroy())
    await server.stop()
  }
})

test('a client that edits while still connecting', TIMEOUT, async () => {
  const server = await startServer()
  const early = provider(server.url, 'early')
  // Edits before the socket is even open, then during the handshake.
  early.doc.getText('t').insert(0, 'before-open;')
  await tick()
  early.doc.getText('t').insert(0, 'during-connect;')
  const reader = provider(server.url, 'early')
  try {
    await waitFor('early edits', () => reader.doc.getText('t').length === 'before-open;during-connect;'.length)
    assert.equal(reader.doc.getText('t').toString(), early.doc.getText('t').toString())
  } finally {
    early.destroy()
    reader.destroy()
    await server.stop()
  }
})

test('clients whose socket the server closed reconnect and converge', TIMEOUT, async () => {
  const first = await startServer()
  const a = provider(first.url, 'phoenix')
  const b = provider(first.url, 'phoenix')
  let second
  try {
    await Promise.all([synced(a), synced(b)])
    a.doc.getText('t').insert(0, 'one;')
    await waitFor('first edit', () => b.doc.getText('t').length === 4)
    // The server goes away (its sockets close), both edit offline, a new server takes the port.
    await first.stop()
    await waitFor('disconnect', () => !a.wsconnected && !b.wsconnected)
    a.doc.getText('t').insert(0, 'a-offline;')
    b.doc.getText('t').insert(0, 'b-offline;')
    second = await startServer(first.addr)
    const expected = 'one;a-offline;b-offline;'.length
    await waitFor('reconvergence', () => a.doc.getText('t').length === expected && b.doc.getText('t').length === expected)
    assert.equal(a.doc.getText('t').toString(), b.doc.getText('t').toString())
    // The new server has the merged state too.
    const c = provider(second.url, 'phoenix')
    await synced(c)
    assert.equal(c.doc.getText('t').toString(), a.doc.getText('t').toString())
    c.destroy()
  } finally {
    a.destroy()
    b.destroy()
    if (second) await second.stop()
  }
})

test('the token travels as ?token= or as the access_token subprotocol', TIMEOUT, async () => {
  const server = await startServer()
  const byQuery = provider(server.url, 'transports')
  const byProtocol = provider(server.url, 'transports', new Y.Doc(), { protocols: ['access_token', TOKEN] })
  try {
    await Promise.all([synced(byQuery), synced(byProtocol)])
    // The server selected the marker, never the token.
    assert.equal(byProtocol.ws.protocol, 'access_token')
    byProtocol.doc.getText('t').insert(0, 'via subprotocol;')
    byQuery.doc.getText('t').insert(0, 'via query;')
    const expected = 'via subprotocol;via query;'.length
    await waitFor('both edits', () => byQuery.doc.getText('t').length === expected && byProtocol.doc.getText('t').length === expected)
  } finally {
    byQuery.destroy()
    byProtocol.destroy()
    await server.stop()
  }
})

test('a bad token is refused with 4002 after a handshake the browser accepts', TIMEOUT, async () => {
  const server = await startServer()
  try {
    const ws = new WebSocket(`${server.url}/doc`, ['access_token', 'not.a.token'])
    const [code, reason] = await once(ws, 'close')
    assert.equal(ws.protocol, 'access_token')
    assert.equal(code, 4002)
    assert.match(String(reason), /^Invalid token/)
    const missing = new WebSocket(`${server.url}/doc`)
    const [missingCode] = await once(missing, 'close')
    assert.equal(missingCode, 4001)
  } finally {
    await server.stop()
  }
})

test('a viewer receives edits but cannot make them', TIMEOUT, async () => {
  const server = await startServer()
  const editor = provider(server.url, 'roles')
  const viewer = provider(server.url, 'roles', new Y.Doc(), { params: { token: token('--role', 'viewer') } })
  const denied = []
  try {
    await Promise.all([synced(editor), synced(viewer)])
    editor.doc.getText('t').insert(0, 'from editor')
    await waitFor('viewer sees the edit', () => viewer.doc.getText('t').toString() === 'from editor')
    viewer.ws.addEventListener('message', e => { if (new Uint8Array(e.data)[0] === 2) denied.push(e) })
    viewer.doc.getText('t').insert(0, 'sneaky ')
    await waitFor('permission denied', () => denied.length > 0)
    await new Promise(resolve => setTimeout(resolve, 200))
    assert.equal(editor.doc.getText('t').toString(), 'from editor')
  } finally {
    editor.destroy()
    viewer.destroy()
    await server.stop()
  }
})

// The client side of pinning (README: "Following a redirect"): on 4009 REDIRECT:, open the
// same document at the node the reason names.
function followRedirects (url, name, doc, token) {
  const provider = new WebsocketProvider(url, name, doc, { WebSocketPolyfill: WebSocket, disableBc: true, params: { token } })
  provider.on('connection-close', event => {
    if (event?.code === 4009 && event.reason.startsWith('REDIRECT:')) {
      provider.destroy()
      const home = new URL(event.reason.slice('REDIRECT:'.length))
      followRedirects(`${home.protocol}//${home.host}`, name, doc, token)
    }
  })
  return provider
}

test('a y-websocket client follows a 4009 redirect to the home node and converges there', TIMEOUT, async () => {
  const CLUSTER = process.env.WIRESOCKET_CLUSTER_BIN
  assert.ok(CLUSTER, 'set WIRESOCKET_CLUSTER_BIN to the local_cluster example (cargo test does this)')
  const proc = spawn(CLUSTER, ['2'], { stdio: ['ignore', 'pipe', 'ignore'] })
  const exited = once(proc, 'exit')
  let out = ''
  for await (const chunk of proc.stdout) {
    out += chunk
    if ((out.match(/listening on/g) || []).length === 2) break
  }
  const [a, b] = [...out.matchAll(/listening on (127\.0\.0\.1:\d+)/g)].map(m => `ws://${m[1]}`)
  const home = provider(a, 'pinned-doc')
  const doc = new Y.Doc()
  try {
    await synced(home)
    home.doc.getText('t').insert(0, 'from the home node;')
    // This client starts at the other node; it is redirected to the first.
    const visitor = followRedirects(b, 'pinned-doc', doc, TOKEN)
    await waitFor('redirected sync', () => doc.getText('t').toString().includes('from the home node;'))
    doc.getText('t').insert(0, 'from the visitor;')
    const expected = 'from the visitor;from the home node;'
    await waitFor('convergence', () => home.doc.getText('t').toString() === expected)
    assert.equal(doc.getText('t').toString(), expected)
    visitor.destroy()
  } finally {
    home.destroy()
    doc.destroy()
    proc.kill('SIGKILL')
    await exited
  }
})
