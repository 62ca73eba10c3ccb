// Shared harness of the pusher-js suite: starts the real `ringcast serve` (the binary named by
// RINGCAST_BIN) on 127.0.0.1 port 0 with a generated config, builds pusher-js clients and
// `pusher` SDK clients against it, and receives webhooks on a local HTTP server.
//
// Rules: it binds nothing but 127.0.0.1, never uses a fixed port, gives every wait a deadline
// (a broken server fails a test, never hangs it), and `cleanup()` closes every client, receiver
// and server it made, also when a test failed. A server is killed by its PID on process exit
// as a last resort.

import assert from 'node:assert/strict';
import { spawn } from 'node:child_process';
import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import http from 'node:http';
import os from 'node:os';
import path from 'node:path';
import { after, before } from 'node:test';

import PusherJs from 'pusher-js';
import PusherSdk from 'pusher';

/** Deadline of one wait for something the server should send. */
export const WAIT_MS = 5000;
/** How long a test watches for something that must not arrive (or arrive a second time). */
export const QUIET_MS = 700;
/** Deadline of the server's start: the listening line, then `GET /health` 200. */
const STARTUP_MS = 10000;

/** The development app every test server has unless a test configures others. */
export const APP = Object.freeze({
    id: 'app-id',
    key: 'app-key',
    secret: 'app-secret',
    enable_client_events: true,
});

const live = { servers: new Set(), clients: new Set(), receivers: new Set() };

export const sleep = (ms) => new Promise((resolve) => setTimeout(resolve, ms));

/** Resolves like `promise`, or rejects after `ms` naming `what`. */
export function within(promise, what, ms = WAIT_MS) {
    let timer;
    const timeout = new Promise((_, reject) => {
        timer = setTimeout(() => reject(new Error(`timed out after ${ms} ms: ${what}`)), ms);
    });
    return Promise.race([promise, timeout]).finally(() => clearTimeout(timer));
}

// ---------------------------------------------------------------------------------------------
// Inbox: everything one source delivered, with waits that look at the past and the future
// ---------------------------------------------------------------------------------------------

export class Inbox {
    constructor(label) {
        this.label = label;
        this.items = [];
        this.waiters = new Set();
    }

    push(item) {
        this.items.push(item);
        for (const check of this.waiters) check();
    }

    matching(pred) {
        return this.items.filter(pred);
    }

    /** The first item matching `pred`, already received or still to come. */
    async waitFor(pred, what, ms = WAIT_MS) {
        const [first] = await this.waitForCount(pred, 1, what, ms);
        return first;
    }

    /** The first `n` items matching `pred`, once there are that many. */
    waitForCount(pred, n, what, ms = WAIT_MS) {
        return new Promise((resolve, reject) => {
            const done = () => {
                clearTimeout(timer);
                this.waiters.delete(check);
            };
            const check = () => {
                const found = this.items.filter(pred);
                if (found.length >= n) {
                    done();
                    resolve(found.slice(0, n));
                }
            };
            const timer = setTimeout(() => {
                done();
                reject(
                    new Error(
                        `${this.label}: no ${n > 1 ? `${n} x ` : ''}${what} within ${ms} ms; ` +
                            `received: ${describe(this.items)}`,
                    ),
                );
            }, ms);
            this.waiters.add(check);
            check();
        });
    }

    /** Waits `ms`, then asserts that exactly `n` items match `pred`. */
    async assertCountAfterQuiet(pred, n, what, ms = QUIET_MS) {
        await sleep(ms);
        const found = this.items.filter(pred);
        assert.equal(
            found.length,
            n,
            `${this.label}: expected ${n} x ${what}, got ${found.length}: ${describe(found)}`,
        );
    }
}

function describe(items) {
    const text = JSON.stringify(items.slice(-12));
    return text.length > 1500 ? `${text.slice(0, 1500)}...` : text;
}

// ---------------------------------------------------------------------------------------------
// The server under test
// ---------------------------------------------------------------------------------------------

/**
 * Starts `ringcast serve --listen 127.0.0.1:0 --admin-listen 127.0.0.1:0 --shards 2 --config F`
 * where F holds `apps` as `[[apps]]` tables (default: the development app with client events).
 */
export async function startServer({ apps = [APP], shards = 2 } = {}) {
    const bin = process.env.RINGCAST_BIN;
    assert.ok(bin, 'RINGCAST_BIN must name the ringcast binary (tests/pusher_js.rs sets it)');
    const dir = mkdtempSync(path.join(os.tmpdir(), 'ringcast-pusher-js-'));
    const configPath = path.join(dir, 'ringcast.toml');
    writeFileSync(configPath, appsToml(apps));

    // The server reads settings from RINGCAST_* variables: pass none but the log filter.
    const env = Object.fromEntries(
        Object.entries(process.env).filter(
            ([name]) => !name.startsWith('RINGCAST_') || name === 'RINGCAST_LOG',
        ),
    );
    const args = ['serve', '--listen', '127.0.0.1:0', '--admin-listen', '127.0.0.1:0'];
    args.push('--shards', String(shards), '--config', configPath);
    // The I/O driver, as for the Rust integration tests (`RINGCAST_TEST_IO=epoll`).
    if (process.env.RINGCAST_TEST_IO) args.push('--io', process.env.RINGCAST_TEST_IO);
    const child = spawn(bin, args, { env, stdio: ['ignore', 'pipe', 'pipe'] });
    const server = {
        child,
        pid: child.pid,
        host: '127.0.0.1',
        port: 0,
        stderr: [],
        exited: new Promise((resolve) => child.once('exit', (code, signal) => resolve({ code, signal }))),
        log: () => server.stderr.slice(-60).join('\n'),
        stop: () => stopServer(server),
    };
    live.servers.add(server);
    lineReader(child.stderr, (line) => {
        server.stderr.push(line);
        if (server.stderr.length > 2000) server.stderr.splice(0, 1000);
    });
    const listening = new Promise((resolve) => {
        lineReader(child.stdout, (line) => {
            const m = /^ringcast: listening on 127\.0\.0\.1:(\d+)\s*$/.exec(line);
            if (m) resolve(Number(m[1]));
        });
    });
    const exitedEarly = server.exited.then(({ code, signal }) => {
        throw new Error(`ringcast exited before listening (code ${code}, signal ${signal})`);
    });
    try {
        server.port = await within(Promise.race([listening, exitedEarly]), 'the listening line', STARTUP_MS);
        await waitForHealth(server);
    } catch (e) {
        await stopServer(server);
        e.message += `\nargs: ${args.join(' ')}\nconfig:\n${appsToml(apps)}\nstderr:\n${server.log()}`;
        throw e;
    } finally {
        rmSync(dir, { recursive: true, force: true });
    }
    exitedEarly.catch(() => {}); // after a clean start, a later exit is reported by stopServer
    return server;
}

async function waitForHealth(server) {
    const deadline = Date.now() + STARTUP_MS;
    let last = 'no answer';
    while (Date.now() < deadline) {
        try {
            const res = await request(server, 'GET', '/health');
            if (res.status === 200) return;
            last = `status ${res.status}`;
        } catch (e) {
            last = e.message;
        }
        await sleep(50);
    }
    throw new Error(`GET /health did not answer 200 within ${STARTUP_MS} ms (last: ${last})`);
}

/** Kills the server by its PID (SIGKILL) and waits for the exit. Idempotent. */
async function stopServer(server) {
    live.servers.delete(server);
    if (server.child.exitCode === null && server.child.signalCode === null) {
        process.kill(server.pid, 'SIGKILL');
    }
    await within(server.exited, `ringcast pid ${server.pid} to exit after SIGKILL`);
}

// Last resort: no server outlives the test process, whatever happened.
process.on('exit', () => {
    for (const server of live.servers) {
        try {
            process.kill(server.pid, 'SIGKILL');
        } catch {
            // already gone
        }
    }
});

/** The `[[apps]]` TOML for `apps` (objects of scalars, string arrays and `webhooks`). */
export function appsToml(apps) {
    const lines = [];
    for (const app of apps) {
        lines.push('[[apps]]');
        for (const [name, value] of Object.entries(app)) {
            if (name !== 'webhooks') lines.push(`${name} = ${tomlValue(value)}`);
        }
        for (const hook of app.webhooks ?? []) {
            lines.push('[[apps.webhooks]]');
            for (const [name, value] of Object.entries(hook)) lines.push(`${name} = ${tomlValue(value)}`);
        }
        lines.push('');
    }
    return lines.join('\n');
}

function tomlValue(value) {
    if (Array.isArray(value)) return `[${value.map(tomlValue).join(', ')}]`;
    if (typeof value === 'string') return JSON.stringify(value); // a TOML basic string
    return String(value);
}

function lineReader(stream, onLine) {
    let rest = '';
    stream.setEncoding('utf8');
    stream.on('data', (chunk) => {
        rest += chunk;
        let at;
        while ((at = rest.indexOf('\n')) >= 0) {
            onLine(rest.slice(0, at));
            rest = rest.slice(at + 1);
        }
    });
}

/** One plain HTTP request to the server: `{ status, headers, body }` (body as text). */
export function request(server, method, pathAndQuery, body, headers = {}) {
    return within(
        new Promise((resolve, reject) => {
            const req = http.request(
                { host: server.host, port: server.port, method, path: pathAndQuery, headers, agent: false },
                (res) => {
                    let text = '';
                    res.setEncoding('utf8');
                    res.on('data', (chunk) => (text += chunk));
                    res.on('end', () => resolve({ status: res.statusCode, headers: res.headers, body: text }));
                },
            );
            req.on('error', reject);
            req.end(body);
        }),
        `${method} ${pathAndQuery}`,
    );
}

// ---------------------------------------------------------------------------------------------
// The pusher server SDK
// ---------------------------------------------------------------------------------------------

/**
 * A `pusher` SDK client for `server` (the development app's credentials unless overridden;
 * other SDK options, e.g. `encryptionMasterKeyBase64`, pass through).
 */
export function sdk(server, { appId = APP.id, key = APP.key, secret = APP.secret, ...more } = {}) {
    return new PusherSdk({ appId, key, secret, host: server.host, port: String(server.port), useTLS: false, ...more });
}

/** The parsed JSON body of a signed `GET` through the SDK (`path` below `/apps/{id}`). */
export async function sdkGet(client, pathBelowApp, params = {}) {
    const res = await within(client.get({ path: pathBelowApp, params }), `GET ${pathBelowApp}`);
    return res.json();
}

// ---------------------------------------------------------------------------------------------
// pusher-js clients
// ---------------------------------------------------------------------------------------------

/**
 * A pusher-js client of `server`, authorized in-process by the `pusher` SDK (no auth endpoint).
 *
 * Options: `key` (the app key it connects with), `signer` (the SDK that signs: a wrong secret
 * makes bad signatures), `presence` (`{ user_id, user_info }` for presence channels), `user`
 * (`{ id, ... }` for `signin()`), `label` (for failure messages), `pusherOptions` (extra).
 * Returns `{ pusher, inbox, errors, states, socketId() }`: `inbox` holds every message the
 * connection received (`{ event, channel, data, user_id }`, data parsed), `errors` the
 * connection's `error` events, `states` its states in order.
 */
export function client(server, options = {}) {
    const { key = APP.key, presence, user, label = 'pusher-js', pusherOptions = {} } = options;
    const signer = options.signer ?? sdk(server);
    const pusher = new PusherJs(key, {
        ...pusherConfig(server),
        channelAuthorization: {
            customHandler: ({ socketId, channelName }, callback) => {
                authorize(() => signer.authorizeChannel(socketId, channelName, channelName.startsWith('presence-') ? presence : undefined), callback);
            },
        },
        userAuthentication: {
            customHandler: ({ socketId }, callback) => {
                authorize(() => signer.authenticateUser(socketId, user), callback);
            },
        },
        ...pusherOptions,
    });
    return track(pusher, label);
}

/** The connection options every pusher-js client (and laravel-echo) here uses. */
export function pusherConfig(server) {
    return {
        wsHost: server.host,
        wsPort: server.port,
        forceTLS: false,
        enabledTransports: ['ws'],
        cluster: 'mt1',
        disableStats: true,
    };
}

/** Calls `sign` and hands its result (or its exception) to a pusher-js auth callback. */
export function authorize(sign, callback) {
    let data;
    try {
        data = sign();
    } catch (e) {
        callback(e, null);
        return;
    }
    callback(null, data);
}

/** Records a pusher-js instance's messages, errors and states, and closes it in `cleanup()`. */
export function track(pusher, label = 'pusher-js') {
    const inbox = new Inbox(`${label} messages`);
    const errors = new Inbox(`${label} errors`);
    const states = new Inbox(`${label} states`);
    pusher.connection.bind('message', (message) => inbox.push(message));
    pusher.connection.bind('error', (error) => errors.push(error));
    pusher.connection.bind('state_change', ({ current }) => states.push(current));
    const tracked = { pusher, inbox, errors, states, label, socketId: () => pusher.connection.socket_id };
    live.clients.add(tracked);
    return tracked;
}

/** Waits until the client is connected; returns its socket_id. */
export async function connected(c) {
    if (c.pusher.connection.state !== 'connected') {
        await c.states.waitFor((s) => s === 'connected', 'state "connected"');
    }
    return c.socketId();
}

/** A connected client (see `client`). */
export async function connectedClient(server, options) {
    const c = client(server, options);
    await connected(c);
    return c;
}

/**
 * Subscribes `c` to `name` and waits for `pusher:subscription_succeeded`; rejects with the data
 * of a `pusher:subscription_error`. Returns the pusher-js channel.
 */
export async function subscribe(c, name) {
    const channel = c.pusher.subscribe(name);
    if (channel.subscribed) return channel;
    await within(
        new Promise((resolve, reject) => {
            channel.bind('pusher:subscription_succeeded', resolve);
            channel.bind('pusher:subscription_error', (data) =>
                reject(new Error(`${c.label}: subscription_error on ${name}: ${JSON.stringify(data)}`)),
            );
        }),
        `${c.label}: subscription_succeeded on ${name}`,
    );
    return channel;
}

/** The close or error code in a pusher-js connection `error` event, wherever it sits. */
export function errorCode(error) {
    return error?.data?.code ?? error?.error?.data?.code ?? error?.code;
}

/** A predicate for inbox messages: `event` on `channel` (any channel if omitted). */
export function isEvent(event, channel) {
    return (m) => m.event === event && (channel === undefined || m.channel === channel);
}

/** Disconnects the client and waits for pusher-js to report it disconnected. */
export async function disconnect(c) {
    live.clients.delete(c);
    if (c.pusher.connection.state === 'disconnected') return;
    c.pusher.disconnect();
    if (c.pusher.connection.state !== 'disconnected') {
        await c.states.waitFor((s) => s === 'disconnected', 'state "disconnected"');
    }
}

// ---------------------------------------------------------------------------------------------
// Webhook receiver
// ---------------------------------------------------------------------------------------------

/**
 * A node:http server on 127.0.0.1 port 0 that answers every POST 200 and records it.
 * `requests` holds `{ method, path, headers, body, valid }` (valid: the SDK's
 * `webhook(req).isValid()` with `app`'s key and secret); `events` holds each event of each body
 * as `{ path, valid, time_ms, ...event }`. `url(path)` is where the server should post.
 */
export async function webhookReceiver(app = APP) {
    const verifier = new PusherSdk({ appId: app.id, key: app.key, secret: app.secret });
    const requests = new Inbox('webhook requests');
    const events = new Inbox('webhook events');
    const server = http.createServer((req, res) => {
        let rawBody = '';
        req.setEncoding('utf8');
        req.on('data', (chunk) => (rawBody += chunk));
        req.on('end', () => {
            res.writeHead(200, { 'content-type': 'text/plain' }).end('ok');
            let valid = false;
            let body = null;
            try {
                valid = verifier.webhook({ headers: req.headers, rawBody }).isValid();
                body = JSON.parse(rawBody);
            } catch {
                // recorded as invalid below
            }
            requests.push({ method: req.method, path: req.url, headers: req.headers, body: rawBody, valid });
            for (const event of body?.events ?? []) {
                events.push({ path: req.url, valid, time_ms: body.time_ms, ...event });
            }
        });
    });
    await new Promise((resolve, reject) => {
        server.once('error', reject);
        server.listen(0, '127.0.0.1', resolve);
    });
    const port = server.address().port;
    const receiver = {
        requests,
        events,
        url: (p = '/webhook') => `http://127.0.0.1:${port}${p}`,
        close: () =>
            new Promise((resolve) => {
                live.receivers.delete(receiver);
                server.closeAllConnections?.();
                server.close(() => resolve());
            }),
    };
    live.receivers.add(receiver);
    return receiver;
}

// ---------------------------------------------------------------------------------------------
// Cleanup
// ---------------------------------------------------------------------------------------------

/**
 * Gives the enclosing `describe` its own server: started in `before` (with `startServer`'s
 * options), closed with everything else in `after`. Returns `{ server, api }` (api: an SDK
 * client of the development app), filled in once `before` has run.
 */
export function serverForSuite(options) {
    const suite = {};
    before(async () => {
        suite.server = await startServer(options);
        suite.api = sdk(suite.server);
    });
    after(cleanup);
    return suite;
}

/** Closes every client, receiver and server made so far. For `after()` in every test file. */
export async function cleanup() {
    for (const c of live.clients) {
        try {
            c.pusher.disconnect();
        } catch {
            // a client that already failed
        }
    }
    live.clients.clear();
    await Promise.allSettled([...live.receivers].map((r) => r.close()));
    const servers = [...live.servers];
    await Promise.all(servers.map((s) => stopServer(s)));
}

/** Disconnects every client made so far (between tests that share a server). */
export async function disconnectAll() {
    await Promise.allSettled([...live.clients].map((c) => disconnect(c)));
}
