// Webhooks received by a local node:http server and verified with the SDK's `webhook(req)`:
// channel_occupied/vacated once per transition over both shards, member_added/removed once per
// user, client_event, cache_miss, and the per-URL event_types filter.

import assert from 'node:assert/strict';
import { after, before, describe, it } from 'node:test';

import {
    APP,
    cleanup,
    connectedClient,
    disconnect,
    isEvent,
    startServer,
    subscribe,
    webhookReceiver,
} from './harness.mjs';

/** Webhooks are batched and may wait a little; this is how long a test waits for one. */
const WEBHOOK_WAIT_MS = 8000;
/** After the awaited webhook, how long a duplicate gets to show up. */
const WEBHOOK_QUIET_MS = 1500;

const named = (name, channel, extra = () => true) => (e) =>
    e.path === '/webhook' && e.name === name && e.channel === channel && extra(e);

describe('webhooks', () => {
    let server;
    let receiver;
    before(async () => {
        receiver = await webhookReceiver(APP);
        server = await startServer({
            apps: [
                {
                    ...APP,
                    webhooks: [
                        { url: receiver.url('/webhook') },
                        { url: receiver.url('/occupied-only'), event_types: ['channel_occupied'] },
                    ],
                },
            ],
        });
    });
    after(cleanup);

    it('signs every webhook: X-Pusher-Key and a valid X-Pusher-Signature', async () => {
        const c = await connectedClient(server);
        await subscribe(c, 'wh-signed');
        await receiver.events.waitFor(named('channel_occupied', 'wh-signed'), 'channel_occupied', WEBHOOK_WAIT_MS);
        for (const r of receiver.requests.items) {
            assert.equal(r.method, 'POST');
            assert.equal(r.headers['x-pusher-key'], APP.key);
            // the SDK's webhook(req) accepts exactly this content type and nothing else
            assert.equal(r.headers['content-type'], 'application/json');
            assert.match(r.headers['x-pusher-signature'] ?? '', /^[0-9a-f]{64}$/);
            assert.equal(r.valid, true, `webhook signature does not verify: ${JSON.stringify(r)}`);
            const body = JSON.parse(r.body);
            assert.equal(typeof body.time_ms, 'number');
            assert.ok(Array.isArray(body.events) && body.events.length > 0);
        }
    });

    it('sends channel_occupied and channel_vacated exactly once for sockets on both shards', async () => {
        const channel = 'wh-room';
        const clients = await Promise.all(Array.from({ length: 6 }, () => connectedClient(server)));
        await Promise.all(clients.map((c) => subscribe(c, channel)));
        await receiver.events.waitFor(named('channel_occupied', channel), 'channel_occupied', WEBHOOK_WAIT_MS);
        await receiver.events.assertCountAfterQuiet(named('channel_occupied', channel), 1, 'channel_occupied', WEBHOOK_QUIET_MS);
        assert.equal(receiver.events.matching(named('channel_vacated', channel)).length, 0, 'vacated while occupied');

        await Promise.all(clients.slice(1).map((c) => disconnect(c)));
        await receiver.events.assertCountAfterQuiet(named('channel_vacated', channel), 0, 'channel_vacated with one socket left', WEBHOOK_QUIET_MS);
        await disconnect(clients[0]);
        await receiver.events.waitFor(named('channel_vacated', channel), 'channel_vacated', WEBHOOK_WAIT_MS);
        await receiver.events.assertCountAfterQuiet(named('channel_vacated', channel), 1, 'channel_vacated', WEBHOOK_QUIET_MS);
        await receiver.events.assertCountAfterQuiet(named('channel_occupied', channel), 1, 'channel_occupied', 0);
    });

    it('sends member_added once per user and member_removed when the last socket leaves', async () => {
        const channel = 'presence-wh';
        const presence = (user_id) => ({ user_id, user_info: { name: String(user_id) } });
        const sevens = await Promise.all([1, 2, 3].map(() => connectedClient(server, { presence: presence('7') })));
        const eight = await connectedClient(server, { presence: presence(8) });
        for (const c of [...sevens, eight]) await subscribe(c, channel);
        await receiver.events.waitFor(named('member_added', channel, (e) => e.user_id === '7'), 'member_added 7', WEBHOOK_WAIT_MS);
        await receiver.events.waitFor(named('member_added', channel, (e) => e.user_id === '8'), 'member_added "8" (sent as integer 8)', WEBHOOK_WAIT_MS);
        await receiver.events.assertCountAfterQuiet(named('member_added', channel), 2, 'member_added', WEBHOOK_QUIET_MS);

        await disconnect(sevens[0]);
        await disconnect(sevens[1]);
        await receiver.events.assertCountAfterQuiet(named('member_removed', channel), 0, 'member_removed while 7 has a socket', WEBHOOK_QUIET_MS);
        await disconnect(sevens[2]);
        await receiver.events.waitFor(named('member_removed', channel, (e) => e.user_id === '7'), 'member_removed 7', WEBHOOK_WAIT_MS);
        await receiver.events.assertCountAfterQuiet(named('member_removed', channel), 1, 'member_removed', WEBHOOK_QUIET_MS);
    });

    it('sends client_event with the event, its data and the sender socket_id', async () => {
        const channel = 'private-wh-chat';
        const sender = await connectedClient(server);
        const receiverSocket = await connectedClient(server);
        const [sent] = await Promise.all([subscribe(sender, channel), subscribe(receiverSocket, channel)]);
        sent.trigger('client-ping', { n: 1 });
        await receiverSocket.inbox.waitFor(isEvent('client-ping'), 'client-ping');
        const hook = await receiver.events.waitFor(named('client_event', channel), 'client_event', WEBHOOK_WAIT_MS);
        assert.equal(hook.event, 'client-ping');
        assert.equal(hook.socket_id, sender.socketId());
        assert.deepEqual(typeof hook.data === 'string' ? JSON.parse(hook.data) : hook.data, { n: 1 });
    });

    it('sends client_event with user_id on a presence channel', async () => {
        const channel = 'presence-wh-chat';
        const sender = await connectedClient(server, { presence: { user_id: 'talker', user_info: {} } });
        const listener = await connectedClient(server, { presence: { user_id: 'listener', user_info: {} } });
        const [sent] = await Promise.all([subscribe(sender, channel), subscribe(listener, channel)]);
        sent.trigger('client-hello', {});
        const hook = await receiver.events.waitFor(named('client_event', channel), 'client_event', WEBHOOK_WAIT_MS);
        assert.equal(hook.user_id, 'talker');
        assert.equal(hook.socket_id, sender.socketId());
    });

    it('sends cache_miss for a cache channel with nothing cached', async () => {
        const c = await connectedClient(server);
        await subscribe(c, 'cache-wh-empty');
        await receiver.events.waitFor(named('cache_miss', 'cache-wh-empty'), 'cache_miss', WEBHOOK_WAIT_MS);
    });

    it('posts only the listed event_types to a filtered URL', async () => {
        const c = await connectedClient(server);
        await subscribe(c, 'wh-filtered');
        await disconnect(c);
        // Each URL is posted to on its own: wait for each, then give a stray event time to come.
        await receiver.events.waitFor(named('channel_vacated', 'wh-filtered'), 'channel_vacated', WEBHOOK_WAIT_MS);
        const filtered = (e) => e.path === '/occupied-only';
        await receiver.events.waitFor(
            (e) => filtered(e) && e.name === 'channel_occupied' && e.channel === 'wh-filtered',
            'channel_occupied at /occupied-only',
            WEBHOOK_WAIT_MS,
        );
        await receiver.events.assertCountAfterQuiet(
            (e) => filtered(e) && e.name !== 'channel_occupied',
            0,
            'events other than channel_occupied at /occupied-only',
            WEBHOOK_QUIET_MS,
        );
    });
});
