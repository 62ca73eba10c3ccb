// The compare peer on Bun.serve (uWebSockets inside): ws.subscribe / server.publish, which
// encodes a published message once for all subscribers. PORT, TOKEN from the environment.
// Run with the bun binary of the npm `bun` package (../../node_modules/.bin/bun).
import { isUtf8 } from "node:buffer";

const PORT = Number(process.env.PORT || 8080);
const TOKEN = process.env.TOKEN || "";
type Data = { topic: string | null };

function topicOf(pathname: string): string | null {
  const m = /^\/topics\/([^/]+)$/.exec(pathname);
  return m ? decodeURIComponent(m[1]) : null;
}

const server = Bun.serve<Data, {}>({
  hostname: "127.0.0.1",
  port: PORT,
  async fetch(req, server) {
    const { pathname } = new URL(req.url);
    const topic = pathname === "/echo" ? null : topicOf(pathname);
    if (pathname !== "/echo" && topic === null) return new Response("not found\n", { status: 404 });
    if (req.method === "GET") {
      if (server.upgrade(req, { data: { topic } })) return undefined;
      return new Response("expected a WebSocket upgrade\n", { status: 400 });
    }
    if (req.method !== "POST" || topic === null) return new Response("not found\n", { status: 404 });
    const body = new Uint8Array(await req.arrayBuffer());
    if (!TOKEN || req.headers.get("authorization") !== `Bearer ${TOKEN}`) {
      return new Response('{"error":"unauthorized"}', {
        status: 401,
        headers: { "content-type": "application/json" },
      });
    }
    // A string goes out as a text frame, bytes as a binary frame.
    server.publish(topic, isUtf8(body) ? new TextDecoder().decode(body) : body);
    return new Response('{"ok":true}', { status: 202, headers: { "content-type": "application/json" } });
  },
  websocket: {
    open(ws) {
      if (ws.data.topic !== null) ws.subscribe(ws.data.topic);
    },
    message(ws, message) {
      // message is a string for a text frame, a Buffer for a binary one: the opcode is kept.
      if (ws.data.topic === null) ws.send(message);
      else ws.publish(ws.data.topic, message); // excludes the sender
    },
  },
});
console.log(`bun: listening on ${server.hostname}:${server.port}`);
