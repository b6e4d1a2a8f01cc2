// The browser side of tiptap.test.mjs: what a Tiptap app does to edit a document over wiresocket.
// tiptap.test.mjs bundles this file with esbuild into one IIFE (with the pinned `yjs`, Tiptap and
// `@hocuspocus/provider` 4.8.0 from node_modules) and loads it into headless Chromium pages.
import { Editor } from '@tiptap/core'
import StarterKit from '@tiptap/starter-kit'
import Collaboration from '@tiptap/extension-collaboration'
import * as Y from 'yjs'
import { HocuspocusProvider } from 'hocuspocus-provider-4'

// Starts an editor on document `name`, with its own provider (and socket) to `url`.
window.startEditor = ({ url, name, token }) => {
  const ydoc = new Y.Doc()
  const provider = new HocuspocusProvider({ url, name, document: ydoc, token })
  const editor = new Editor({
    element: document.querySelector('#editor'),
    extensions: [
      // Collaboration brings its own (Yjs) undo history: the StarterKit's must be off.
      StarterKit.configure({ undoRedo: false }),
      Collaboration.configure({ document: ydoc })
    ]
    // No `content`: the document is the Y.Doc's. (With Collaboration, Tiptap 3.35 drops a
    // `content` given here; seeding a document from every editor that opens it would add the
    // seed once per editor.)
  })
  const state = { editor, provider, ydoc, events: [] }
  for (const event of ['synced', 'authenticated', 'authenticationFailed', 'close', 'disconnect']) {
    provider.on(event, data => state.events.push({ event, code: data?.event?.code, reason: data?.reason }))
  }
  window.tiptap = state
}

// What the test reads back.
window.editorState = () => {
  const { editor, provider, ydoc } = window.tiptap
  return {
    text: editor.getText(),
    json: editor.getJSON(),
    ytext: ydoc.getXmlFragment('default').toString(),
    synced: provider.synced,
    unsynced: provider.unsyncedChanges,
    hasUnsyncedChanges: provider.hasUnsyncedChanges,
    status: provider.configuration.websocketProvider.status,
    events: window.tiptap.events
  }
}
