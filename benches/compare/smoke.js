#!/usr/bin/env node
// Smoke test of the endpoint contract for one server:
//   node smoke.js 127.0.0.1:PORT TOKEN
// /echo keeps text and binary opcodes; /topics/{name}: a subscriber's message reaches the
// topic's other subscribers (not the sender, not another topic); POST /topics/{name} with the
// bearer token publishes to all (text if UTF-8 else binary), 202 {"ok":true}, 401 without or
// with a wrong token, pipelined requests answered in order on one keep-alive connection.
// --echo-only checks /echo alone. Exits 0 and prints "smoke: N passed, 0 failed" when all pass; bounded by a 20 s timer.
'use strict';
const net = require('node:net');
const WebSocket = require('ws');

const args = process.argv.slice(2);
const echoOnly = args.includes('--echo-only');
const [addr, token] = args.filter((a) => a !== '--echo-only');
if (!addr || !token) {
  console.error('usage: node smoke.js HOST:PORT TOKEN [--echo-only]');
  process.exit(2);
}
const [host, port] = [addr.slice(0, addr.lastIndexOf(':')), Number(addr.slice(addr.lastIndexOf(':') + 1))];
const suffix = `${process.pid}-${Date.now()}`;
let passed = 0;
let failed = 0;
const check = (name, ok, detail = '') => {
  if (ok) passed++;
  else failed++;
  console.log(`${ok ? 'ok  ' : 'FAIL'} ${name}${ok || !detail ? '' : `: ${detail}`}`);
};
const guard = setTimeout(() => {
  console.log('FAIL timed out');
  console.log(`smoke: ${passed} passed, ${failed + 1} failed`);
  process.exit(1);
}, 20000);

function open(path) {
  return new Promise((resolve, reject) => {
    const ws = new WebSocket(`ws://${addr}${path}`, { perMessageDeflate: false });
    const inbox = [];
    const waiters = [];
    ws.on('message', (data, isBinary) => {
      const m = { data: Buffer.from(data), isBinary };
      const w = waiters.shift();
      if (w) w(m);
      else inbox.push(m);
    });
    ws.next = (ms = 2000) =>
      new Promise((res) => {
        if (inbox.length) return res(inbox.shift());
        const t = setTimeout(() => {
          const i = waiters.indexOf(f);
          if (i >= 0) waiters.splice(i, 1);
          res(null);
        }, ms);
        const f = (m) => {
          clearTimeout(t);
          res(m);
        };
        waiters.push(f);
      });
    ws.pending = () => inbox.length;
    ws.once('open', () => resolve(ws));
    ws.once('error', reject);
  });
}

const same = (m, isBinary, bytes) => m && m.isBinary === isBinary && m.data.equals(Buffer.from(bytes));
const show = (m) => (m ? `${m.isBinary ? 'binary' : 'text'} ${m.data.toString('hex')}` : 'nothing');

// Raw HTTP/1.1: write all requests at once, read `count` responses (content-length or chunked).
function pipelined(requests, count) {
  return new Promise((resolve, reject) => {
    const sock = net.connect(port, host);
    let buf = Buffer.alloc(0);
    const out = [];
    sock.on('connect', () => sock.write(Buffer.concat(requests.map((r) => Buffer.from(r, 'latin1')))));
    sock.on('error', reject);
    sock.on('close', () => resolve(out));
    sock.on('data', (d) => {
      buf = Buffer.concat([buf, d]);
      for (;;) {
        const end = buf.indexOf('\r\n\r\n');
        if (end < 0) break;
        const head = buf.subarray(0, end).toString('latin1').split('\r\n');
        const status = Number(head[0].split(' ')[1]);
        const headers = {};
        for (const l of head.slice(1)) {
          const i = l.indexOf(':');
          headers[l.slice(0, i).trim().toLowerCase()] = l.slice(i + 1).trim();
        }
        let body;
        let rest;
        if (headers['transfer-encoding'] === 'chunked') {
          let p = end + 4;
          const parts = [];
          let done = false;
          for (;;) {
            const le = buf.indexOf('\r\n', p);
            if (le < 0) break;
            const n = parseInt(buf.subarray(p, le).toString(), 16);
            if (buf.length < le + 2 + n + 2) break;
            parts.push(buf.subarray(le + 2, le + 2 + n));
            p = le + 2 + n + 2;
            if (n === 0) {
              done = true;
              break;
            }
          }
          if (!done) break;
          body = Buffer.concat(parts);
          rest = buf.subarray(p);
        } else {
          const n = Number(headers['content-length'] || 0);
          if (buf.length < end + 4 + n) break;
          body = buf.subarray(end + 4, end + 4 + n);
          rest = buf.subarray(end + 4 + n);
        }
        out.push({ status, body: body.toString(), chunked: headers['transfer-encoding'] === 'chunked' });
        buf = rest;
        if (out.length === count) {
          sock.end();
          return;
        }
      }
    });
  });
}

function post(topic, body, auth) {
  const b = Buffer.from(body);
  return (
    `POST /topics/${topic} HTTP/1.1\r\nHost: ${addr}\r\n` +
    (auth === null ? '' : `Authorization: Bearer ${auth}\r\n`) +
    `Content-Type: application/octet-stream\r\nContent-Length: ${b.length}\r\n\r\n` +
    b.toString('latin1')
  );
}

async function main() {
  // /echo
  const e = await open('/echo');
  e.send('hello');
  check('echo text', same(await e.next(), false, 'hello'));
  const bin = Buffer.from([0, 1, 0xff, 0xfe]);
  e.send(bin);
  let m = await e.next();
  check('echo binary', same(m, true, bin), show(m));
  e.close();
  if (echoOnly) return;

  // /topics: A and B on one topic, C on another.
  const t1 = `smoke-${suffix}`;
  const t2 = `other-${suffix}`;
  const a = await open(`/topics/${t1}`);
  const b = await open(`/topics/${t1}`);
  const c = await open(`/topics/${t2}`);
  await new Promise((r) => setTimeout(r, 100)); // let the subscriptions settle
  a.send('from-a');
  m = await b.next();
  check('client publish reaches the other subscriber', same(m, false, 'from-a'), show(m));
  b.send(Buffer.from([0x80, 0x81]));
  m = await a.next();
  check('client publish keeps binary', same(m, true, [0x80, 0x81]), show(m));
  await new Promise((r) => setTimeout(r, 200));
  check('client publish skips the sender', a.pending() === 0 && b.pending() === 0, `a ${a.pending()} b ${b.pending()}`);
  check('client publish stays in its topic', c.pending() === 0, `c ${c.pending()}`);

  // POST: no token, wrong token.
  let r = await pipelined([post(t1, 'x', null)], 1);
  check('POST without a token: 401', r[0] && r[0].status === 401, JSON.stringify(r));
  r = await pipelined([post(t1, 'x', `${token}x`)], 1);
  check('POST with a wrong token: 401', r[0] && r[0].status === 401, JSON.stringify(r));
  await new Promise((r2) => setTimeout(r2, 100));
  check('rejected POSTs deliver nothing', a.pending() + b.pending() + c.pending() === 0);

  // POST pipelined: text, wrong token, binary (invalid UTF-8), text, all in one write.
  r = await pipelined(
    [post(t1, 'p1', token), post(t1, 'nope', 'bad'), post(t1, Buffer.from([0xc3, 0x28]), token), post(t1, 'p3', token)],
    4,
  );
  const statuses = r.map((x) => x.status).join(',');
  check('pipelined POSTs answered in order', statuses === '202,401,202,202', statuses);
  check('202 body is {"ok":true}', r[0] && JSON.parse(r[0].body).ok === true, r[0] && r[0].body);
  // `ringcast bench fanout --publish http` reads Content-Length bodies only.
  check('answers carry a Content-Length, not chunked', r.length > 0 && r.every((x) => !x.chunked));
  for (const [name, ws] of [['A', a], ['B', b]]) {
    const got = [await ws.next(), await ws.next(), await ws.next()];
    const ok = same(got[0], false, 'p1') && same(got[1], true, [0xc3, 0x28]) && same(got[2], false, 'p3');
    check(`POST publishes reach subscriber ${name} in order, text/binary`, ok, got.map(show).join(' | '));
  }
  await new Promise((r2) => setTimeout(r2, 100));
  check('POST publishes stay in their topic', c.pending() === 0, `c ${c.pending()}`);

  // Keep-alive: many sequential requests on one connection (pipelined in one write).
  const many = Array.from({ length: 64 }, (_, i) => post(`idle-${suffix}`, `m${i}`, token));
  r = await pipelined(many, 64);
  check('64 pipelined POSTs on one connection', r.length === 64 && r.every((x) => x.status === 202), `${r.length} answers`);

  for (const ws of [a, b, c]) ws.close();
}

main()
  .catch((err) => check('no error', false, String(err && err.stack ? err.stack : err)))
  .finally(() => {
    clearTimeout(guard);
    console.log(`smoke: ${passed} passed, ${failed} failed`);
    process.exit(failed ? 1 : 0);
  });
