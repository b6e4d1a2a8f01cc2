// The demo page a newcomer opens first (GET /demo, development tenant), in headless Chromium:
// at the URL `wiresocket serve` prints without a configuration (plain http/ws); and over
// https:// from the node itself (TLS with the test certificate, which Chromium is told to
// trust by its key), where each page gets a development token from the node and connects back
// over wss:// with the token in the `access_token` subprotocol; typing in one appears in the
// other, and each shows the other's presence and cursor. Run through `cargo test`
// (tests/interop_js.rs); the page's script is the bundle build.rs made.
import { test } from 'node:test'
import assert from 'node:assert/strict'
import { startServer } from './server.mjs'
import { createHash, X509Certificate } from 'node:crypto'
import { existsSync, mkdtempSync, readFileSync, writeFileSync } from 'node:fs'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { fileURLToPath } from 'node:url'
import puppeteer from 'puppeteer-core'

const CHROMIUM = process.env.CHROMIUM_BIN || '/usr/bin/chromium'
const WAIT = { timeout: 20000, polling: 25 }
const TLS = fileURLToPath(new URL('../tls', import.meta.url))

// The server certificate's key, as Chromium's --ignore-certificate-errors-spki-list takes it.
function spkiHash () {
  const cert = new X509Certificate(readFileSync(join(TLS, 'server.pem')))
  const spki = cert.publicKey.export({ type: 'spki', format: 'der' })
  return createHash('sha256').update(spki).digest('base64')
}

async function openDemo (browser, url) {
  const page = await browser.newPage()
  page.messages = []
  page.on('console', m => page.messages.push(`${m.type()}: ${m.text()}`))
  page.on('pageerror', e => page.messages.push(`pageerror: ${e.message}`))
  await page.goto(url, { timeout: 20000 })
  try {
    await page.waitForFunction(() => window.demo?.provider.synced, WAIT)
  } catch (e) {
    const status = await page.$eval('#status', el => el.textContent).catch(() => '?')
    throw new Error(`the demo did not sync (status: ${status}; ${page.messages.join('; ')})`, { cause: e })
  }
  await page.emulateFocusedPage(true)
  return page
}

const presence = page => page.$$eval('#presence li', items => items.map(i => i.dataset.name))

// What a newcomer does: `wiresocket serve` with no configuration prints the demo's URL;
// open it in two windows.
test('demo: the URL serve prints with no configuration, in two Chromium pages, over http/ws', { timeout: 120000 }, async () => {
  assert.ok(existsSync(CHROMIUM), `Chromium is missing at ${CHROMIUM}: apt-get install chromium (or set CHROMIUM_BIN)`)
  const server = await startServer()
  let browser
  try {
    assert.match(server.printed, /try it: open (http:\/\/127\.0\.0\.1:\d+\/demo) in two browser windows/)
    const url = server.printed.match(/open (\S+) in two/)[1]
    browser = await puppeteer.launch({ executablePath: CHROMIUM, headless: true, args: ['--no-sandbox'], timeout: 30000, protocolTimeout: 20000 })
    const a = await openDemo(browser, `${url}#newcomer`)
    const b = await openDemo(browser, `${url}#newcomer`)
    await a.click('.ProseMirror')
    await a.keyboard.type('First words.')
    await b.waitForFunction(() => window.demo.editor.getText().includes('First words.'), WAIT)
    const nameA = await a.evaluate(() => window.demo.user.name)
    await b.waitForFunction(n => [...document.querySelectorAll('#presence li')].some(li => li.dataset.name === n), WAIT, nameA)
  } finally {
    await browser?.close()
    await server.stop()
  }
})

test('demo: two Chromium pages on /demo over https/wss edit together and see each other', { timeout: 120000 }, async () => {
  assert.ok(existsSync(CHROMIUM), `Chromium is missing at ${CHROMIUM}: apt-get install chromium (or set CHROMIUM_BIN)`)
  const config = join(mkdtempSync(join(tmpdir(), 'wiresocket-demo-')), 'node.toml')
  writeFileSync(config, `allow_development_tenant = true\n[tls]\ncert_file = "${TLS}/server.pem"\nkey_file = "${TLS}/server.key"\n`)
  const server = await startServer('127.0.0.1:0', ['--config', config])
  const url = `https://localhost:${server.addr.split(':')[1]}/demo#demo-test`
  let browser
  try {
    browser = await puppeteer.launch({
      executablePath: CHROMIUM,
      headless: true,
      args: ['--no-sandbox', `--ignore-certificate-errors-spki-list=${spkiHash()}`],
      timeout: 30000,
      protocolTimeout: 20000
    })
    const a = await openDemo(browser, url)
    const b = await openDemo(browser, url)
    // The token went in the subprotocol, which the server selected.
    for (const page of [a, b]) {
      assert.equal(await page.evaluate(() => window.demo.provider.ws.protocol), 'access_token')
      assert.equal(await page.evaluate(() => location.protocol), 'https:')
    }
    const [nameA, nameB] = [await a.evaluate(() => window.demo.user.name), await b.evaluate(() => window.demo.user.name)]
    // Typing in one appears in the other.
    await a.click('.ProseMirror')
    await a.keyboard.type('Hello from A.')
    await b.waitForFunction(() => window.demo.editor.getText().includes('Hello from A.'), WAIT)
    await b.click('.ProseMirror')
    await b.keyboard.press('End')
    await b.keyboard.type(' And from B.')
    await a.waitForFunction(() => window.demo.editor.getText().includes('And from B.'), WAIT)
    assert.equal(await a.evaluate(() => window.demo.editor.getText()), await b.evaluate(() => window.demo.editor.getText()))
    // Each shows the other's presence, and its cursor with its name.
    await a.waitForFunction(n => [...document.querySelectorAll('#presence li')].some(li => li.dataset.name === n), WAIT, nameB)
    await b.waitForFunction(n => [...document.querySelectorAll('#presence li')].some(li => li.dataset.name === n), WAIT, nameA)
    assert.deepEqual((await presence(a)).sort(), [nameA, nameB].sort())
    await a.waitForFunction(n => [...document.querySelectorAll('.ProseMirror-yjs-cursor')].some(c => c.textContent.includes(n)), WAIT, nameB)
    await b.waitForFunction(n => [...document.querySelectorAll('.ProseMirror-yjs-cursor')].some(c => c.textContent.includes(n)), WAIT, nameA)
  } finally {
    await browser?.close()
    await server.stop()
  }
})
