// pusher-js connects to /app/{key}, subscribes to public, private and presence channels, and is
// refused with the protocol's close codes.

import assert from 'node:assert/strict';
import { describe, it } from 'node:test';

import {
    APP,
    QUIET_MS,
    client,
    connected,
    connectedClient,
    errorCode,
    isEvent,
    sdk,
    sleep,
    serverForSuite,
    subscribe,
    within,
} from './harness.mjs';

describe('connect and subscribe', () => {
    const suite = serverForSuite({
        apps: [
            APP,
            { id: 'off-id', key: 'off-key', secret: 'off-secret', enabled: false },
            { id: 'small-id', key: 'small-key', secret: 'small-secret', max_connections: 2 },
        ],
    });

    it('connects and gets a socket_id of the form digits.digits', async () => {
        const c = await connectedClient(suite.server);
        assert.match(c.socketId(), /^\d+\.\d+$/);
        assert.equal(c.pusher.connection.state, 'connected');
    });

    it('gives distinct socket_ids to connections spread over both shards', async () => {
        const clients = await Promise.all(Array.from({ length: 8 }, () => connectedClient(suite.server)));
        const ids = clients.map((c) => c.socketId());
        assert.equal(new Set(ids).size, ids.length, `duplicate socket_ids: ${ids}`);
    });

    it('answers pusher:ping with pusher:pong', async () => {
        const c = await connectedClient(suite.server);
        c.pusher.send_event('pusher:ping', {});
        await c.inbox.waitFor(isEvent('pusher:pong'), 'pusher:pong');
    });

    it('refuses an unknown app key with 4001 and pusher-js does not retry', async () => {
        const c = client(suite.server, { key: 'no-such-key', label: 'unknown key' });
        const error = await c.errors.waitFor((e) => errorCode(e) === 4001, 'an error with code 4001');
        assert.equal(errorCode(error), 4001);
        await c.states.waitFor((s) => s === 'disconnected' || s === 'failed', 'disconnected');
        await sleep(QUIET_MS);
        assert.ok(
            ['disconnected', 'failed'].includes(c.pusher.connection.state),
            `pusher-js must not reconnect after 4001; states: ${c.states.items}`,
        );
        assert.equal(c.states.matching((s) => s === 'connected').length, 0);
    });

    it('refuses a disabled app with 4003', async () => {
        const c = client(suite.server, { key: 'off-key', label: 'disabled app' });
        await c.errors.waitFor((e) => errorCode(e) === 4003, 'an error with code 4003');
        await sleep(QUIET_MS);
        assert.equal(c.states.matching((s) => s === 'connected').length, 0);
    });

    it('refuses a connection over the app quota (max_connections) with 4004', async () => {
        const signer = sdk(suite.server, { appId: 'small-id', key: 'small-key', secret: 'small-secret' });
        await connectedClient(suite.server, { key: 'small-key', signer });
        await connectedClient(suite.server, { key: 'small-key', signer });
        const third = client(suite.server, { key: 'small-key', signer, label: 'third of 2' });
        await third.errors.waitFor((e) => errorCode(e) === 4004, 'an error with code 4004');
        await sleep(QUIET_MS);
        assert.equal(third.states.matching((s) => s === 'connected').length, 0);
    });

    it('subscribes to a public channel and receives its events', async () => {
        const c = await connectedClient(suite.server);
        const channel = await subscribe(c, 'news');
        assert.equal(channel.subscribed, true);
        const got = new Promise((resolve) => channel.bind('headline', resolve));
        await sdk(suite.server).trigger('news', 'headline', { title: 'hello' });
        assert.deepEqual(await got, { title: 'hello' });
    });

    it('subscribes to a private channel with a valid signature', async () => {
        const c = await connectedClient(suite.server);
        const channel = await subscribe(c, 'private-inbox');
        assert.equal(channel.subscribed, true);
    });

    it('refuses a private channel signed with the wrong secret: subscription_error, still connected', async () => {
        const wrong = sdk(suite.server, { secret: 'not-the-secret' });
        const c = await connectedClient(suite.server, { signer: wrong, label: 'bad signer' });
        await assert.rejects(subscribe(c, 'private-secret'), /subscription_error on private-secret/);
        await sleep(QUIET_MS);
        assert.equal(c.pusher.connection.state, 'connected', 'a failed subscription must not close');
        // and the connection still works
        await subscribe(c, 'still-works');
    });

    it('passes private-encrypted payloads through: pusher-js decrypts what the SDK encrypted', async () => {
        const encrypting = sdk(suite.server, { encryptionMasterKeyBase64: Buffer.alloc(32, 7).toString('base64') });
        const c = await connectedClient(suite.server, { signer: encrypting });
        const channel = await subscribe(c, 'private-encrypted-vault');
        const got = new Promise((resolve) => channel.bind('secret', resolve));
        await encrypting.trigger('private-encrypted-vault', 'secret', { pin: 1234 });
        assert.deepEqual(await within(got, 'the decrypted secret'), { pin: 1234 });
        const raw = c.inbox.matching(isEvent('secret'))[0];
        assert.ok(raw.data.ciphertext && raw.data.nonce, `the server sent it encrypted: ${JSON.stringify(raw)}`);
    });

    it('subscribes to a presence channel and sees itself as the only member', async () => {
        const c = await connectedClient(suite.server, { presence: { user_id: 'solo', user_info: { name: 'Solo' } } });
        const channel = await subscribe(c, 'presence-lobby');
        assert.equal(channel.members.count, 1);
        assert.equal(channel.members.me.id, 'solo');
        assert.deepEqual(channel.members.me.info, { name: 'Solo' });
        const succeeded = c.inbox.matching(isEvent('pusher_internal:subscription_succeeded', 'presence-lobby'));
        assert.equal(succeeded.length, 1);
        const presence = succeeded[0].data.presence;
        assert.deepEqual(presence.ids, ['solo']);
        assert.equal(presence.count, 1);
        assert.deepEqual(presence.hash, { solo: { name: 'Solo' } });
    });

    it('stops delivering a channel after unsubscribe', async () => {
        const c = await connectedClient(suite.server);
        await subscribe(c, 'leaving-soon');
        c.pusher.unsubscribe('leaving-soon');
        await sleep(200);
        await sdk(suite.server).trigger('leaving-soon', 'late', { n: 1 });
        await c.inbox.assertCountAfterQuiet(isEvent('late'), 0, '"late" after unsubscribe');
    });

    it('stays connected while idle for a moment (no spurious close)', async () => {
        const c = await connectedClient(suite.server);
        await sleep(QUIET_MS);
        assert.equal(await connected(c), c.socketId());
        assert.equal(c.errors.items.length, 0, `errors: ${JSON.stringify(c.errors.items)}`);
    });
});

describe('graceful shutdown', () => {
    const suite = serverForSuite();

    it('closes pusher-js with 4200 on SIGTERM, which pusher-js answers by reconnecting at once', async () => {
        const c = await connectedClient(suite.server);
        await subscribe(c, 'until-shutdown');
        process.kill(suite.server.pid, 'SIGTERM');
        await c.errors.waitFor((e) => errorCode(e) === 4200, 'an error with code 4200', 10000);
        await c.states.waitFor((s) => s === 'connecting', 'pusher-js reconnecting after 4200');
        assert.equal(c.errors.matching((e) => errorCode(e) === 4009).length, 0, 'never 4009 on shutdown');
        const { code } = await within(suite.server.exited, 'ringcast to exit after SIGTERM', 15000);
        assert.equal(code, 0, 'a drained server exits 0');
    });
});

describe('activity timeout', () => {
    const suite = serverForSuite({ apps: [{ ...APP, activity_timeout_s: 1 }] });

    it('keeps an idle pusher-js connection alive with pusher:ping/pong at activity_timeout 1 s', async () => {
        // pusher-js pings after min(its own, the server's activity_timeout) of silence and
        // reconnects if no pusher:pong comes within pongTimeout.
        const c = await connectedClient(suite.server, { pusherOptions: { pongTimeout: 1500 } });
        const socketId = c.socketId();
        await sleep(4000);
        const keepalive = c.inbox.matching((m) => m.event === 'pusher:ping' || m.event === 'pusher:pong');
        assert.ok(keepalive.length >= 1, 'no pusher:ping or pusher:pong in 4 s at activity_timeout 1 s');
        assert.equal(c.pusher.connection.state, 'connected');
        assert.equal(c.socketId(), socketId, 'pusher-js reconnected: a pong was missing');
        assert.deepEqual(c.states.items, ['connected'], 'states after the first connect');
        assert.equal(c.errors.items.length, 0, `errors: ${JSON.stringify(c.errors.items)}`);
    });
});
