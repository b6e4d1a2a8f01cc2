// An authorization callback for wiresocket (PRODUCT.md 9.4; README "Decide who opens which
// document"): wiresocket POSTs, signed the Standard Webhooks way,
//   {"type":"connection.authorize","tenantId","appId","document","data":{"sub","role","claims"}}
// and this answers {"allow": true, "role": "editor"|"viewer"} or {"allow": false, "reason"}.
// Node.js 18+, no packages.
//
//   WEBHOOK_SECRET=whsec_... ROLES_FILE=roles.json PORT=8090 node examples/authorize-receiver.mjs
//
// roles.json maps documents to users' roles: {"plan": {"alice": "editor", "bob": "viewer"}};
// in an application this is a lookup in its own database (`roleOf` below).
import { createServer } from 'node:http'
import { createHmac, timingSafeEqual } from 'node:crypto'
import { readFileSync } from 'node:fs'
import { pathToFileURL } from 'node:url'

const BODY_BYTES_MAX = 64 * 1024
const TOLERANCE_S = 300

// Whether the request was signed with `secret` in the last five minutes.
export function verified (secret, headers, body) {
  const key = Buffer.from(secret.replace(/^whsec_/, ''), 'base64')
  const id = headers['webhook-id']
  const timestamp = Number(headers['webhook-timestamp'])
  const signatures = headers['webhook-signature']
  if (!id || !signatures || !(Math.abs(Date.now() / 1000 - timestamp) <= TOLERANCE_S)) return false
  const expected = createHmac('sha256', key).update(`${id}.${timestamp}.`).update(body).digest()
  return signatures.split(' ').some(candidate => {
    const [version, value] = candidate.split(',')
    const given = Buffer.from(value ?? '', 'base64')
    return version === 'v1' && given.length === expected.length && timingSafeEqual(given, expected)
  })
}

// An HTTP server answering wiresocket's calls with `roleOf(sub, document, claims)`, which
// returns 'editor', 'viewer' or null (no access), or a promise of one. If it throws, the
// answer is 503: wiresocket closes the connection with 1013 and the client retries later.
export function authorizeServer ({ secret, roleOf }) {
  return createServer((req, res) => {
    const chunks = []
    let size = 0
    req.on('data', chunk => {
      size += chunk.length
      if (size > BODY_BYTES_MAX) req.destroy()
      else chunks.push(chunk)
    })
    req.on('end', async () => {
      const body = Buffer.concat(chunks)
      if (req.method !== 'POST' || !verified(secret, req.headers, body)) {
        res.writeHead(401).end()
        return
      }
      let answer
      try {
        const { document, data } = JSON.parse(body)
        const role = await roleOf(data.sub, document, data.claims)
        answer = role ? { allow: true, role } : { allow: false, reason: 'you are not a member of this document' }
      } catch (error) {
        res.writeHead(503).end()
        return
      }
      res.writeHead(200, { 'content-type': 'application/json' }).end(JSON.stringify(answer))
    })
  })
}

if (process.argv[1] && import.meta.url === pathToFileURL(process.argv[1]).href) {
  const roles = () => JSON.parse(readFileSync(process.env.ROLES_FILE, 'utf8'))
  const server = authorizeServer({
    secret: process.env.WEBHOOK_SECRET,
    roleOf: (sub, document) => roles()[document]?.[sub] ?? null
  })
  server.listen(Number(process.env.PORT ?? 8090), '127.0.0.1', () => {
    console.log(`authorizing on http://127.0.0.1:${server.address().port}/`)
  })
}
