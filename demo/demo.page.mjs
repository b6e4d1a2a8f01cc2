// The demo editor wiresocket serves at GET /demo (development tenant only): a Tiptap editor
// over yjs and y-websocket, the other editors' cursors and a list of who is here, both from
// awareness. It asks the same node for a development token (the OAuth client `dev`), then
// connects back to it with the token in the `access_token` subprotocol. build.rs bundles
// this file with esbuild into the one script the node serves at /demo/demo.js.
import { Editor, Extension } from '@tiptap/core'
import StarterKit from '@tiptap/starter-kit'
import Collaboration from '@tiptap/extension-collaboration'
import { yCursorPlugin } from '@tiptap/y-tiptap'
import * as Y from 'yjs'
import { WebsocketProvider } from 'y-websocket'

const COLORS = ['#d1495b', '#00798c', '#edae49', '#66a182', '#8e6c8a', '#2e4057']

// Another editor's awareness is anyone's input: its colour goes into style only when it is
// a plain #rrggbb, and its name only as text.
const safeColor = color => /^#[0-9a-f]{6}$/i.test(color) ? color : '#888888'

function cursorBuilder (user) {
  const cursor = document.createElement('span')
  cursor.classList.add('ProseMirror-yjs-cursor')
  cursor.style.borderColor = safeColor(user.color)
  const label = document.createElement('div')
  label.style.backgroundColor = safeColor(user.color)
  label.textContent = String(user.name).slice(0, 64)
  cursor.append('\u2060', label, '\u2060')
  return cursor
}

const selectionBuilder = user => ({
  style: `background-color: ${safeColor(user.color)}70`,
  class: 'ProseMirror-yjs-selection'
})

async function developmentToken () {
  const body = 'grant_type=client_credentials&client_id=dev&client_secret=dev-secret'
  const answer = await fetch('/connect/token', {
    method: 'POST',
    headers: { 'content-type': 'application/x-www-form-urlencoded' },
    body
  })
  if (!answer.ok) throw new Error(`no development token: HTTP ${answer.status}`)
  return (await answer.json()).access_token
}

function showPresence (awareness, list) {
  const here = [...awareness.getStates().entries()]
    .filter(([, state]) => state.user)
    .map(([id, state]) => ({ id, ...state.user, me: id === awareness.clientID }))
  list.replaceChildren(...here.map(user => {
    const item = document.createElement('li')
    const name = String(user.name).slice(0, 64)
    item.textContent = user.me ? `${name} (you)` : name
    item.style.color = safeColor(user.color)
    item.dataset.name = name
    return item
  }))
}

async function start () {
  const status = document.querySelector('#status')
  const name = decodeURIComponent(location.hash.slice(1)) || 'demo'
  document.querySelector('#document').textContent = name
  const token = await developmentToken()
  const ydoc = new Y.Doc()
  const scheme = location.protocol === 'https:' ? 'wss' : 'ws'
  const provider = new WebsocketProvider(`${scheme}://${location.host}`, name, ydoc, {
    protocols: ['access_token', token]
  })
  const user = {
    name: `Guest ${Math.floor(Math.random() * 900) + 100}`,
    color: COLORS[Math.floor(Math.random() * COLORS.length)]
  }
  provider.awareness.setLocalStateField('user', user)
  const Cursors = Extension.create({
    name: 'cursors',
    addProseMirrorPlugins: () => [yCursorPlugin(provider.awareness, { cursorBuilder, selectionBuilder })]
  })
  const editor = new Editor({
    element: document.querySelector('#editor'),
    extensions: [
      // Collaboration brings its own (Yjs) undo history: the StarterKit's must be off.
      StarterKit.configure({ undoRedo: false }),
      Collaboration.configure({ document: ydoc }),
      Cursors
    ]
  })
  const list = document.querySelector('#presence')
  provider.awareness.on('change', () => showPresence(provider.awareness, list))
  showPresence(provider.awareness, list)
  provider.on('status', ({ status: s }) => { status.textContent = s })
  provider.on('connection-close', event => {
    if (event) status.textContent = `closed ${event.code} ${event.reason}`
  })
  window.demo = { editor, provider, ydoc, user }
}

start().catch(error => {
  document.querySelector('#status').textContent = error.message
})
