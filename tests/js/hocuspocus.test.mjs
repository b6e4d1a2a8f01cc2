// Real-client interop for the Hocuspocus framing (path `/`): the npm `@hocuspocus/provider`
// 2.15.3, 3.4.4 and 4.8.0 (npm aliases hocuspocus-provider-2/-3/-4, one shared `yjs`) against
// the wiresocket binary. Run through `cargo test` (tests/interop_js.rs), which sets WIRESOCKET_BIN.
//
// What differs between the provider releases, as used here:
// - v2: `new HocuspocusProvider({ websocketProvider })` attaches itself in its constructor; the
//   Auth frame is sent only when `token` is set; `broadcast: false` keeps providers in one process
//   from syncing through a BroadcastChannel; PermissionDenied detaches the provider from the socket;
//   `unsyncedChanges` is not floored at 0 (a SyncStatus ack for an update queued offline takes it
//   below 0 after a reconnect, because `startSync` resets it to 1).
// - v3/v4: with a shared `websocketProvider` the provider must be `attach()`ed; the Auth frame is
//   always sent (v4 appends the provider version); `unsyncedChanges` is floored at 0.
// Every version needs `WebSocketPolyfill` (node 20 has no global WebSocket) on the
// HocuspocusProviderWebsocket, and all take the JWT as the provider's `token`.
import { test } from 'node:test'
import assert from 'node:assert/strict'
import { startServer, token, TOKEN, TIMEOUT, waitFor, tick } from './server.mjs'
import WebSocket from 'ws'
import * as Y from 'yjs'
import { WebsocketProvider } from 'y-websocket'
import * as hocuspocus2 from 'hocuspocus-provider-2'
import * as hocuspocus3 from 'hocuspocus-provider-3'
import * as hocuspocus4 from 'hocuspocus-provider-4'

const VERSIONS = { 2: hocuspocus2, 3: hocuspocus3, 4: hocuspocus4 }

const sleep = ms => new Promise(resolve => setTimeout(resolve, ms))
const text = p => p.document.getText('t').toString()

// Reconnect quickly after the server goes away (defaults: 1 s, doubling, up to 30 s).
const FAST_RETRY = { delay: 50, minDelay: 50, maxDelay: 300 }

// One socket (HocuspocusProviderWebsocket) of provider release `version`.
function socket (version, url, options = {}) {
  const { HocuspocusProviderWebsocket } = VERSIONS[version]
  const ws = new HocuspocusProviderWebsocket({ url, WebSocketPolyfill: WebSocket, ...options })
  // Raw frames received, for the tests that look at the bytes.
  ws.frames = []
  ws.on('message', event => ws.frames.push(new Uint8Array(event.data)))
  // Connections made (the provider emits 'connect' on the first message of each socket).
  ws.connects = 0
  ws.on('connect', () => { ws.connects += 1 })
  return ws
}

// A provider for document `name`, multiplexed on `ws`.
function provider (version, ws, name, options = {}) {
  const { HocuspocusProvider } = VERSIONS[version]
  const p = new HocuspocusProvider({
    websocketProvider: ws,
    name,
    document: new Y.Doc(),
    token: TOKEN,
    broadcast: false, // v2 only: no cross-tab BroadcastChannel between providers of one process
    ...options
  })
  if (version >= 3) p.attach() // v2 attached itself in its constructor
  return p
}

// A client: one socket carrying one provider per document name.
function client (version, url, names, { socketOptions, ...options } = {}) {
  const ws = socket(version, url, socketOptions)
  const providers = names.map(name => provider(version, ws, name, options))
  return {
    ws,
    providers,
    destroy () {
      for (const p of providers) {
        p.destroy() // sends CLOSE for the document (v3/v4) and detaches
        p.document.destroy()
      }
      ws.destroy() // a shared socket is not destroyed with its providers
    }
  }
}

// Every change acknowledged. v2 does not floor the counter at 0, so surplus acks would show
// there as a negative count; v3/v4 floor it.
const acknowledged = p => p.unsyncedChanges === 0
const synced = (p, what = 'sync') => waitFor(`${what} of ${p.configuration.name}`, () => p.synced)

// A y-websocket client for `name` (path /name, token in the query).
function yWebsocket (url, name) {
  const doc = new Y.Doc()
  const p = new WebsocketProvider(url, name, doc, { WebSocketPolyfill: WebSocket, disableBc: true, params: { token: TOKEN } })
  const destroy = p.destroy.bind(p)
  p.destroy = () => { destroy(); doc.destroy() }
  return p
}

// `addr` followed by `bytes`: the frame layout of the Hocuspocus framing (short ASCII names).
const frame = (addr, ...bytes) => Uint8Array.from([addr.length, ...Buffer.from(addr), ...bytes])
const hasFrame = (frames, expected) => frames.some(f => Buffer.compare(Buffer.from(f), Buffer.from(expected)) === 0)

for (const version of [2, 3, 4]) {
  test(`hocuspocus v${version}: 4 clients x 2 documents on one socket each, 100 edits per client, converge and all acknowledged`, TIMEOUT, async () => {
    const server = await startServer()
    const names = [`v${version}-left`, `v${version}-right`]
    const clients = Array.from({ length: 4 }, () => client(version, server.url, names))
    const all = clients.flatMap(c => c.providers)
    let late
    try {
      await Promise.all(all.map(p => synced(p)))
      for (const c of clients) assert.equal(c.ws.status, 'connected')
      for (const p of all) assert.equal(p.authorizedScope, 'read-write')
      await Promise.all(clients.map(async (c, i) => {
        for (let n = 0; n < 100; n++) {
          const t = c.providers[n % 2].document.getText('t')
          t.insert(Math.floor(Math.random() * (t.length + 1)), String.fromCharCode(97 + i))
          if (n % 10 === 0) await tick()
        }
      }))
      for (const d of [0, 1]) {
        const group = clients.map(c => c.providers[d])
        await waitFor(`convergence of ${names[d]}`, () => group.every(p => p.document.getText('t').length === 4 * 50))
        const first = text(group[0])
        for (const p of group) assert.equal(text(p), first)
        for (let i = 0; i < 4; i++) {
          assert.equal(first.split(String.fromCharCode(97 + i)).length - 1, 50, `all edits of client ${i} in ${names[d]}`)
        }
      }
      await waitFor('every change acknowledged (08 01)', () => all.every(acknowledged))
      for (const p of all) assert.equal(p.hasUnsyncedChanges, false)
      // A fresh client gets the same state from the server alone.
      late = client(version, server.url, names)
      await Promise.all(late.providers.map(p => synced(p)))
      late.providers.forEach((p, d) => assert.equal(text(p), text(clients[0].providers[d])))
      await waitFor('the late client acknowledged', () => late.providers.every(acknowledged))
    } finally {
      clients.forEach(c => c.destroy())
      late?.destroy()
      await server.stop()
    }
  })

  test(`hocuspocus v${version}: a y-websocket client and a Hocuspocus provider edit one document and converge`, TIMEOUT, async () => {
    const server = await startServer()
    const name = `mixed-v${version}`
    const hp = client(version, server.url, [name])
    const yws = yWebsocket(server.url, name)
    const [p] = hp.providers
    try {
      await Promise.all([synced(p), waitFor('y-websocket sync', () => yws.synced)])
      p.document.getText('t').insert(0, 'from hocuspocus;')
      yws.doc.getText('t').insert(0, 'from y-websocket;')
      await waitFor('each sees the other', () =>
        text(p).includes('from y-websocket;') && yws.doc.getText('t').toString().includes('from hocuspocus;'))
      for (let n = 0; n < 20; n++) {
        p.document.getText('t').insert(0, 'h')
        yws.doc.getText('t').insert(0, 'y')
        await tick()
      }
      const length = 'from hocuspocus;from y-websocket;'.length + 40
      await waitFor('convergence', () => text(p).length === length && yws.doc.getText('t').length === length)
      assert.equal(text(p), yws.doc.getText('t').toString())
      await waitFor('the provider acknowledged', () => acknowledged(p))
    } finally {
      yws.destroy()
      hp.destroy()
      await server.stop()
    }
  })

  test(`hocuspocus v${version}: a refused document (4003) does not stop the other document on the socket`, TIMEOUT, async () => {
    const server = await startServer()
    const open = `open-v${version}`
    const closed = `closed-v${version}`
    const failures = []
    const ws = socket(version, server.url)
    const restricted = token('--docs', 'open-*')
    const allowed = provider(version, ws, open, { token: restricted })
    const refused = provider(version, ws, closed, { token: restricted, onAuthenticationFailed: ({ reason }) => failures.push(reason) })
    // Full-token peers on both documents.
    const peers = client(version, server.url, [open, closed])
    const [openPeer, closedPeer] = peers.providers
    try {
      await waitFor('onAuthenticationFailed', () => failures.length > 0)
      assert.equal(failures.length, 1)
      assert.match(failures[0], /^4003/)
      assert.equal(refused.isAuthenticated, false)
      assert.equal(refused.synced, false)
      await Promise.all([synced(allowed), synced(openPeer), synced(closedPeer)])
      assert.equal(allowed.authorizedScope, 'read-write')
      // The refused provider edits anyway (v3/v4 still send these frames; v2 detached itself).
      refused.document.getText('t').insert(0, 'must not leak;')
      // The other document on the same socket syncs both ways.
      allowed.document.getText('t').insert(0, 'from restricted;')
      openPeer.document.getText('t').insert(0, 'from peer;')
      const both = 'from restricted;from peer;'.length
      await waitFor('the allowed document syncs', () => text(allowed).length === both && text(openPeer).length === both)
      assert.equal(text(allowed), text(openPeer))
      await waitFor('the allowed document acknowledged', () => acknowledged(allowed))
      // The refused document never got the frames of the refused provider.
      closedPeer.document.getText('t').insert(0, 'peer only;')
      await sleep(300)
      assert.equal(text(closedPeer), 'peer only;')
      assert.equal(text(refused), 'must not leak;')
      assert.equal(ws.status, 'connected')
    } finally {
      for (const p of [allowed, refused]) { p.destroy(); p.document.destroy() }
      ws.destroy()
      peers.destroy()
      await server.stop()
    }
  })

  test(`hocuspocus v${version}: a viewer receives edits and its own edits reach no one`, TIMEOUT, async () => {
    const server = await startServer()
    const name = `roles-v${version}`
    const editor = client(version, server.url, [name])
    const viewer = client(version, server.url, [name], { token: token('--role', 'viewer') })
    const [e] = editor.providers
    const [v] = viewer.providers
    let late
    try {
      await Promise.all([synced(e), synced(v)])
      assert.equal(e.authorizedScope, 'read-write')
      assert.equal(v.authorizedScope, 'readonly')
      e.document.getText('t').insert(0, 'from editor;')
      await waitFor('the viewer sees the edit', () => text(v) === 'from editor;')
      v.document.getText('t').insert(0, 'sneaky;')
      // The server answers the viewer's update with SyncStatus rejected (08 00).
      await waitFor('SyncStatus 08 00 to the viewer', () => hasFrame(viewer.ws.frames, frame(name, 8, 0)))
      assert.equal(v.hasUnsyncedChanges, true, 'a rejected update stays unsynced')
      // A later edit of the editor still reaches the viewer; the viewer's edit reached no one.
      e.document.getText('t').insert(text(e).length, 'more;')
      await waitFor('the viewer sees the second edit', () => text(v).includes('more;'))
      await sleep(200)
      assert.equal(text(e), 'from editor;more;')
      await waitFor('the editor acknowledged', () => acknowledged(e))
      late = client(version, server.url, [name])
      await synced(late.providers[0])
      assert.equal(text(late.providers[0]), 'from editor;more;')
    } finally {
      editor.destroy()
      viewer.destroy()
      late?.destroy()
      await server.stop()
    }
  })

  test(`hocuspocus v${version}: providers reconnect on their own to a restarted server and re-send their state`, TIMEOUT, async () => {
    const first = await startServer()
    const names = [`phoenix-v${version}-x`, `phoenix-v${version}-y`]
    const a = client(version, first.url, names, { socketOptions: FAST_RETRY })
    const b = client(version, first.url, names, { socketOptions: FAST_RETRY })
    const all = [...a.providers, ...b.providers]
    let second, late
    try {
      await Promise.all(all.map(p => synced(p)))
      a.providers[0].document.getText('t').insert(0, 'one;')
      await waitFor('first edit', () => text(b.providers[0]) === 'one;')
      // The server goes away (and with it every document: it keeps none); both edit offline.
      await first.stop()
      await waitFor('disconnect', () => all.every(p => !p.synced))
      a.providers[0].document.getText('t').insert(4, 'a-offline;')
      b.providers[1].document.getText('t').insert(0, 'b-offline;')
      // A new server takes the same port; the providers reconnect with their own backoff.
      second = await startServer(first.addr)
      await waitFor('reconvergence', () =>
        [a, b].every(c => text(c.providers[0]) === 'one;a-offline;' && text(c.providers[1]) === 'b-offline;'))
      await Promise.all(all.map(p => synced(p, 'resync')))
      for (const c of [a, b]) {
        assert.equal(c.ws.status, 'connected')
        assert.ok(c.ws.connects >= 2, `a new connection (${c.ws.connects} connects)`)
      }
      // v2 counts the ack of an update it queued while offline below the reset to 1 (no floor at 0).
      await waitFor('every change acknowledged', () => all.every(p => version === 2 ? !p.hasUnsyncedChanges : acknowledged(p)))
      // The new server holds the merged state, sent to it by the reconnected providers.
      late = client(version, second.url, names)
      await Promise.all(late.providers.map(p => synced(p)))
      assert.equal(text(late.providers[0]), 'one;a-offline;')
      assert.equal(text(late.providers[1]), 'b-offline;')
    } finally {
      a.destroy()
      b.destroy()
      late?.destroy()
      if (second) await second.stop()
      else await first.stop().catch(() => {})
    }
  })
}
