'use strict';
// A browser calls agentrt through the edge with gRPC-Web: headless Chromium loads a page
// from another origin, whose script frames RuntimeService calls by hand and sends them with
// fetch(), CORS preflight included. AGENTRT_EDGE_URL names the edge, AGENTRT_API_KEY a
// tenant's key, CHROMIUM the browser (default /usr/bin/chromium);
// tests/e2e/test_k8s_edge.py provides them.

const assert = require('node:assert/strict');
const fs = require('node:fs');
const http = require('node:http');
const { describe, it, before, after } = require('node:test');
const { RuntimeClient } = require('../client');

const { AGENTRT_EDGE_URL: EDGE, AGENTRT_API_KEY: API_KEY } = process.env;
const CHROMIUM = process.env.CHROMIUM || '/usr/bin/chromium';
const skip = !EDGE || !API_KEY ? 'AGENTRT_EDGE_URL and AGENTRT_API_KEY are not set'
  : !fs.existsSync(CHROMIUM) ? `no browser at ${CHROMIUM}` : false;

// The page's script: protobuf and gRPC-Web framing written out, as a browser app without
// generated code would do it. Runs in the browser.
const PAGE = `<!doctype html><meta charset="utf-8"><title>agentrt from a browser</title>
<script>
const utf8 = new TextEncoder();
function field(number, bytes) {                       // a length-delimited field
  const out = [(number << 3) | 2];
  for (let n = bytes.length; ; n >>= 7) { if (n < 0x80) { out.push(n); break; } out.push((n & 0x7f) | 0x80); }
  return new Uint8Array([...out, ...bytes]);
}
function frame(message) {
  const out = new Uint8Array(5 + message.length);
  new DataView(out.buffer).setUint32(1, message.length);
  out.set(message, 5);
  return out;
}
function firstString(message) {                       // field 1 of a message, as text
  let i = 1, length = 0, shift = 0;
  for (;; i += 1) { length |= (message[i] & 0x7f) << shift; shift += 7; if (!(message[i] & 0x80)) break; }
  return new TextDecoder().decode(message.slice(i + 1, i + 1 + length));
}
async function call(edge, key, method, message) {
  const response = await fetch(edge + '/agentrt.gateway.v1.RuntimeService/' + method, {
    method: 'POST',
    headers: { 'content-type': 'application/grpc-web+proto', 'x-grpc-web': '1', authorization: 'Bearer ' + key },
    body: frame(message),
  });
  const body = new Uint8Array(await response.arrayBuffer());
  const messages = [];
  let trailers = '';
  for (let at = 0; at < body.length;) {
    const length = new DataView(body.buffer, at + 1, 4).getUint32(0);
    const payload = body.slice(at + 5, at + 5 + length);
    if (body[at] & 0x80) trailers += new TextDecoder().decode(payload); else messages.push(payload);
    at += 5 + length;
  }
  const status = response.headers.get('grpc-status') || (/grpc-status:\\s*(\\d+)/i.exec(trailers) || [])[1];
  return { http: response.status, status: Number(status), messages };
}
window.execute = async (edge, key, prompt) => {
  const spec = [...field(1, utf8.encode(prompt)), ...field(4, utf8.encode('local'))];
  const reply = await call(edge, key, 'Execute', field(1, spec));
  return { ...reply, job: reply.messages.length ? firstString(reply.messages[0]) : '' };
};
window.getJob = async (edge, key, name) => {
  const reply = await call(edge, key, 'GetJob', field(1, utf8.encode(name)));
  return { ...reply, job: reply.messages.length ? firstString(reply.messages[0]) : '' };
};
</script>`;

describe('a browser through the edge', { skip, timeout: 60000 }, () => {
  let browser;
  let server;
  let origin;

  before(async () => {
    const { chromium } = require('playwright-core');
    server = http.createServer((request, response) => {
      response.writeHead(200, { 'content-type': 'text/html' });
      response.end(PAGE);
    });
    await new Promise((resolve) => { server.listen(0, '127.0.0.1', resolve); });
    // Another host name than the edge's, so that the calls are cross-origin.
    origin = `http://localhost:${server.address().port}`;
    browser = await chromium.launch({
      executablePath: CHROMIUM,
      args: ['--headless', '--no-sandbox', '--disable-gpu'],
    });
  });

  after(async () => {
    if (browser) await browser.close();
    if (server) server.close();
  });

  it('runs a job with gRPC-Web and reads it back', async () => {
    const page = await browser.newPage();
    await page.goto(origin);
    const started = await page.evaluate(([edge, key]) => window.execute(edge, key, 'hello from a browser'), [EDGE, API_KEY]);
    assert.equal(started.http, 200);
    assert.equal(started.status, 0);
    assert.match(started.job, /^jobs\/[0-9a-z]{26}$/);

    const read = await page.evaluate(([edge, key, name]) => window.getJob(edge, key, name), [EDGE, API_KEY, started.job]);
    assert.equal(read.status, 0);
    assert.equal(read.job, started.job);

    const client = new RuntimeClient(new URL(EDGE).host, API_KEY);
    try {
      const done = await client.result(started.job);
      assert.equal(done.state, 'JOB_STATE_SUCCEEDED');
      assert.match(done.result.output, /hello from a browser/);
    } finally {
      client.close();
    }
  });

  it('sees the status of a refused call', async () => {
    const page = await browser.newPage();
    await page.goto(origin);
    const refused = await page.evaluate(([edge]) => window.getJob(edge, 'agk_not-a-key', 'jobs/01aaaaaaaaaaaaaaaaaaaaaaaa'), [EDGE]);
    assert.equal(refused.status, 16); // UNAUTHENTICATED, readable thanks to the exposed headers
    assert.equal(refused.messages.length, 0);
  });
});
