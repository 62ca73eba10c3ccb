// The compare peer on Node's http module + ws (pinned in ../../package.json).
// PORT, TOKEN from the environment. Single-threaded (one Node event loop).
'use strict';
const http = require('node:http');
const { isUtf8 } = require('node:buffer');
const { WebSocketServer } = require('ws');

const PORT = Number(process.env.PORT || 8080);
const TOKEN = process.env.TOKEN || '';
const topics = new Map(); // name -> Set<WebSocket>
// Bodies with a Content-Length: after writeHead, Node would send them chunked otherwise.
const ACCEPTED = Buffer.from('{"ok":true}');
const UNAUTHORIZED = Buffer.from('{"error":"unauthorized"}');
const wss = new WebSocketServer({ noServer: true }); // perMessageDeflate is off by default

function topicOf(pathname) {
  const m = /^\/topics\/([^/]+)$/.exec(pathname);
  return m ? decodeURIComponent(m[1]) : null;
}

function publish(name, data, isBinary, except) {
  const subs = topics.get(name);
  if (!subs) return 0;
  let n = 0;
  for (const ws of subs) {
    if (ws !== except && ws.readyState === 1) {
      ws.send(data, { binary: isBinary });
      n++;
    }
  }
  return n;
}

const server = http.createServer((req, res) => {
  const { pathname } = new URL(req.url, 'http://x');
  const name = topicOf(pathname);
  if (req.method !== 'POST' || name === null) {
    res.writeHead(404, { 'content-type': 'text/plain', 'content-length': 10 });
    res.end('not found\n');
    return;
  }
  const chunks = [];
  req.on('data', (c) => chunks.push(c));
  req.on('end', () => {
    if (!TOKEN || req.headers.authorization !== `Bearer ${TOKEN}`) {
      res.writeHead(401, { 'content-type': 'application/json', 'content-length': UNAUTHORIZED.length });
      res.end(UNAUTHORIZED);
      return;
    }
    const body = Buffer.concat(chunks);
    const text = isUtf8(body);
    publish(name, text ? body.toString('utf8') : body, !text, null);
    res.writeHead(202, { 'content-type': 'application/json', 'content-length': ACCEPTED.length });
    res.end(ACCEPTED);
  });
});

server.on('upgrade', (req, socket, head) => {
  const { pathname } = new URL(req.url, 'http://x');
  const name = pathname === '/echo' ? null : topicOf(pathname);
  if (pathname !== '/echo' && name === null) {
    socket.end('HTTP/1.1 404 Not Found\r\ncontent-length: 0\r\n\r\n');
    return;
  }
  wss.handleUpgrade(req, socket, head, (ws) => {
    if (name === null) {
      ws.on('message', (data, isBinary) => ws.send(data, { binary: isBinary }));
      return;
    }
    let subs = topics.get(name);
    if (!subs) topics.set(name, (subs = new Set()));
    subs.add(ws);
    ws.on('message', (data, isBinary) => publish(name, data, isBinary, ws));
    ws.on('close', () => {
      subs.delete(ws);
      if (subs.size === 0 && topics.get(name) === subs) topics.delete(name);
    });
  });
});

server.listen(PORT, '127.0.0.1', () => {
  console.log(`node-ws: listening on 127.0.0.1:${server.address().port}`);
});
