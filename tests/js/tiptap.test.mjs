// A real Tiptap editor over wiresocket, as a Tiptap app runs it: headless Chromium pages, each
// with a Tiptap editor (@tiptap/core, @tiptap/starter-kit, @tiptap/extension-collaboration) and
// its own `@hocuspocus/provider` 4.8.0 on the Hocuspocus framing (path `/`), typed into with the
// keyboard. Run through `cargo test` (tests/interop_js.rs), which sets WIRESOCKET_BIN.
//
// Needs Debian's Chromium (`apt-get install chromium`; CHROMIUM_BIN names another build), driven
// with `puppeteer-core`. The page's script, tiptap.page.mjs, is bundled here with esbuild into one
// IIFE with the pinned packages of node_modules (one copy of `yjs`, checked below) and served from
// a small HTTP server on 127.0.0.1.
import { test } from 'node:test'
import assert from 'node:assert/strict'
import { startServer, TOKEN } from './server.mjs'
import { existsSync } from 'node:fs'
import { createServer } from 'node:http'
import { once } from 'node:events'
import { fileURLToPath } from 'node:url'
import * as esbuild from 'esbuild'
import puppeteer from 'puppeteer-core'

const CHROMIUM = process.env.CHROMIUM_BIN || '/usr/bin/chromium'


// The page's script as one IIFE. Fails if more than one copy of yjs went in (Collaboration,
// y-tiptap and the provider must share the one Y.Doc class), or of any other package (two
// prosemirror-model or lib0 copies break the same way).
async function bundle () {
  const result = await esbuild.build({
    absWorkingDir: fileURLToPath(new URL('.', import.meta.url)), // metafile paths relative to tests/js
    entryPoints: ['tiptap.page.mjs'],
    bundle: true,
    format: 'iife',
    platform: 'browser',
    target: 'es2022',
    write: false,
    metafile: true,
    logLevel: 'silent',
    define: { 'process.env.NODE_ENV': '"production"' }
  })
  const inputs = Object.keys(result.metafile.inputs)
  const yjs = inputs.filter(path => /(^|\/)node_modules\/yjs\//.test(path))
  assert.deepEqual(yjs, ['node_modules/yjs/dist/yjs.mjs'], 'exactly one copy of yjs in the bundle')
  const copies = {}
  for (const path of inputs) {
    const m = path.match(/^(.*node_modules\/((?:@[^/]+\/)?[^/]+))\//)
    if (m) (copies[m[2]] ??= new Set()).add(m[1])
  }
  for (const [name, dirs] of Object.entries(copies)) assert.equal(dirs.size, 1, `one copy of ${name} in the bundle: ${[...dirs]}`)
  assert.ok(copies['@tiptap/y-tiptap'] && copies['hocuspocus-provider-4'], 'the bundle holds y-tiptap and the provider')
  const code = result.outputFiles[0].text
  // yjs marks itself loaded under this key (and warns when a second copy loads).
  assert.equal(code.split('__ $YJS$ __').length - 1, 1, 'one yjs import marker in the bundle')
  return code
}

// Serves the page and its script on 127.0.0.1.
async function startHttp (code) {
  const html = '<!doctype html><meta charset="utf-8"><title>wiresocket tiptap</title>' +
    '<div id="editor"></div><script src="/bundle.js"></script>'
  const server = createServer((req, res) => {
    if (req.url === '/bundle.js') res.writeHead(200, { 'content-type': 'text/javascript' }).end(code)
    else if (req.url === '/') res.writeHead(200, { 'content-type': 'text/html' }).end(html)
    else if (req.url === '/favicon.ico') res.writeHead(204).end()
    else res.writeHead(404).end()
  })
  server.listen(0, '127.0.0.1')
  await once(server, 'listening')
  return { url: `http://127.0.0.1:${server.address().port}/`, stop: () => new Promise(resolve => server.close(resolve)) }
}

const WAIT = { timeout: 20000, polling: 25 }
const state = page => page.evaluate(() => window.editorState())

// A page with an editor on document `name`, synced with the server.
async function openEditor (browser, pageUrl, serverUrl, name) {
  const page = await browser.newPage()
  page.messages = []
  page.on('console', m => page.messages.push(`${m.type()}: ${m.text()}`))
  page.on('pageerror', e => page.messages.push(`pageerror: ${e.message}`))
  await page.goto(pageUrl, { timeout: 20000 })
  await page.evaluate((url, name, token) => window.startEditor({ url, name, token }), serverUrl, name, TOKEN)
  try {
    await page.waitForFunction(() => window.tiptap.provider.synced, WAIT)
  } catch (e) {
    throw new Error(`editor did not sync: ${JSON.stringify(await state(page))}`, { cause: e })
  }
  return page
}

// Puts the caret in paragraph `n` (1-based) at its `edge` ('Home' or 'End'), by mouse and key.
async function caret (page, n, edge) {
  await page.click(`.ProseMirror > p:nth-child(${n})`)
  await page.keyboard.press(edge)
}

const count = (haystack, needle) => haystack.split(needle).length - 1

test('tiptap: two Chromium pages with a Tiptap editor each type into one document and converge', { timeout: 120000 }, async t => {
  assert.ok(existsSync(CHROMIUM), `Chromium is missing at ${CHROMIUM}: apt-get install chromium (or set CHROMIUM_BIN)`)
  const code = await bundle()
  t.diagnostic(`bundle: ${Buffer.byteLength(code)} bytes`)
  const server = await startServer()
  const http = await startHttp(code)
  let browser
  const pages = []
  try {
    browser = await puppeteer.launch({ executablePath: CHROMIUM, headless: true, args: ['--no-sandbox'], timeout: 30000, protocolTimeout: 20000 })
    const name = 'tiptap-doc'
    const [a, b] = [await openEditor(browser, http.url, server.url, name), await openEditor(browser, http.url, server.url, name)]
    pages.push(a, b)
    // Each page acts as the focused window: two tabs of one browser otherwise share one focus,
    // and in the background tab Chromium renders no frames, so puppeteer's click (which waits
    // for the element to be scrolled into view) never returns there.
    for (const page of pages) await page.emulateFocusedPage(true)

    const converged = async (what, pieces) => {
      try {
        await a.waitForFunction(() => !window.tiptap.provider.hasUnsyncedChanges, WAIT)
        await b.waitForFunction(() => !window.tiptap.provider.hasUnsyncedChanges, WAIT)
        const deadline = Date.now() + 20000
        for (;;) {
          const [sa, sb] = [await state(a), await state(b)]
          if (sa.text === sb.text && pieces.every(p => sa.text.includes(p))) return sa.text
          if (Date.now() > deadline) throw new Error(`no convergence: ${JSON.stringify({ a: sa.text, b: sb.text, pieces })}`)
          await new Promise(resolve => setTimeout(resolve, 25))
        }
      } catch (e) {
        throw new Error(`${what}: ${e.message}`, { cause: e })
      }
    }

    // One after the other: A writes the first paragraph, B answers in a second one.
    await a.click('.ProseMirror')
    await a.keyboard.type('Hello from A.')
    await converged('A typed', ['Hello from A.'])
    await caret(b, 1, 'End')
    await b.keyboard.press('Enter')
    await b.keyboard.type('Reply from B.')
    await converged('B typed', ['Hello from A.', 'Reply from B.'])

    // Each opens a paragraph of its own (one after the other), then both type at once, each
    // in its own. (Splitting paragraphs at the same time as the other page types next to it is
    // left out: y-tiptap's ProseMirror <-> Y.XmlFragment mapping then sometimes moves a caret
    // into the other page's new paragraph, or writes a character the other page typed again as
    // its own; both pages still end up with the same document, but not with the text typed.)
    await caret(a, 1, 'End')
    await a.keyboard.press('Enter')
    await a.keyboard.type('A:')
    await converged('A opened a paragraph', ['Hello from A.', 'A:', 'Reply from B.'])
    await caret(b, 3, 'End')
    await b.keyboard.press('Enter')
    await b.keyboard.type('B:')
    await converged('B opened a paragraph', ['Hello from A.', 'A:', 'Reply from B.', 'B:'])
    await caret(a, 2, 'End')
    await caret(b, 4, 'End')
    await Promise.all([
      a.keyboard.type(' A types while B types.', { delay: 5 }),
      b.keyboard.type(' B types while A types.', { delay: 5 })
    ])
    const both = ['Hello from A.', 'Reply from B.', 'A: A types while B types.', 'B: B types while A types.']
    await converged('concurrent paragraphs', both)

    // Both at once in one paragraph: A at its start, B at its end.
    await caret(a, 1, 'Home')
    await caret(b, 1, 'End')
    await Promise.all([
      a.keyboard.type('[A first] ', { delay: 5 }),
      b.keyboard.type(' [B last]', { delay: 5 })
    ])
    both.push('[A first] Hello from A. [B last]')
    await converged('one paragraph, both ends', both)

    // Both at once at the very same place (the end of the last paragraph): the two runs may
    // interleave, but every keystroke lands once, on both pages alike.
    const last = (await state(a)).json.content.length
    await caret(a, last, 'End')
    await caret(b, last, 'End')
    await Promise.all([a.keyboard.type('1'.repeat(25), { delay: 5 }), b.keyboard.type('2'.repeat(25), { delay: 5 })])
    const text = await converged('one place', both)
    assert.equal(count(text, '1'), 25, 'every 1 typed by A')
    assert.equal(count(text, '2'), 25, 'every 2 typed by B')

    const [sa, sb] = [await state(a), await state(b)]
    t.diagnostic(`document: ${JSON.stringify(sa.text)}`)
    assert.deepEqual(sa.json, sb.json)
    assert.equal(sa.ytext, sb.ytext)
    for (const piece of both) assert.equal(count(sa.text, piece), 1, `"${piece}" once (no duplicated content)`)
    for (const s of [sa, sb]) {
      assert.equal(s.hasUnsyncedChanges, false)
      assert.equal(s.unsynced, 0)
      assert.equal(s.synced, true)
      assert.equal(s.status, 'connected')
    }
    // What the pages render is the document (4 paragraphs, none twice).
    for (const page of [a, b]) {
      const rendered = await page.$$eval('.ProseMirror > p', ps => ps.map(p => p.textContent))
      assert.deepEqual(rendered, sa.json.content.map(p => (p.content ?? []).map(n => n.text).join('')))
      assert.equal(rendered.length, 4)
    }

    // A third page opened now gets the same document from the server alone.
    const c = await openEditor(browser, http.url, server.url, name)
    pages.push(c)
    await c.waitForFunction(text => window.editorState().text === text, WAIT, sa.text)
    assert.deepEqual((await state(c)).json, sa.json)

    for (const [i, page] of pages.entries()) {
      if (page.messages.length) t.diagnostic(`page ${'abc'[i]} console: ${page.messages.join(' | ')}`)
      // No page error, no console error or warning (Tiptap warns of conflicting extensions,
      // yjs of a second copy of itself).
      assert.deepEqual(page.messages.filter(m => /^(pageerror|error|warn)/.test(m)), [], `page ${'abc'[i]}: no errors or warnings`)
    }
  } finally {
    for (const page of pages) await page.evaluate(() => window.tiptap?.provider.destroy()).catch(() => {})
    await browser?.close()
    await http.stop()
    await server.stop()
  }
})
