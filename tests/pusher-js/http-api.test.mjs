// The signed HTTP API through the `pusher` server SDK: trigger to one and many channels, batch
// trigger, socket_id exclusion, channel queries across shards, and bad signatures.

import assert from 'node:assert/strict';
import { before, describe, it } from 'node:test';

import {
    APP,
    connectedClient,
    isEvent,
    request,
    sdk,
    sdkGet,
    serverForSuite,
    subscribe,
    within,
} from './harness.mjs';

describe('HTTP API through the pusher SDK', () => {
    const suite = serverForSuite();

    it('triggers an event on one channel', async () => {
        const c = await connectedClient(suite.server);
        await subscribe(c, 'orders');
        const res = await within(suite.api.trigger('orders', 'order-shipped', { id: 1, items: ['a', 'b'] }), 'trigger');
        assert.equal(res.status, 200);
        const got = await c.inbox.waitFor(isEvent('order-shipped', 'orders'), 'order-shipped on orders');
        assert.deepEqual(got.data, { id: 1, items: ['a', 'b'] });
        await c.inbox.assertCountAfterQuiet(isEvent('order-shipped'), 1, 'order-shipped');
    });

    it('triggers one event on many channels: each subscriber gets it once per channel', async () => {
        const a = await connectedClient(suite.server, { label: 'a' });
        const b = await connectedClient(suite.server, { label: 'b' });
        await Promise.all([subscribe(a, 'many-1'), subscribe(a, 'many-3'), subscribe(b, 'many-2'), subscribe(b, 'many-3')]);
        await within(suite.api.trigger(['many-1', 'many-2', 'many-3'], 'fanned', { n: 7 }), 'trigger to 3 channels');
        await a.inbox.waitForCount(isEvent('fanned'), 2, 'fanned on many-1 and many-3');
        await b.inbox.waitForCount(isEvent('fanned'), 2, 'fanned on many-2 and many-3');
        await a.inbox.assertCountAfterQuiet(isEvent('fanned'), 2, 'fanned');
        assert.deepEqual(a.inbox.matching(isEvent('fanned')).map((m) => m.channel).sort(), ['many-1', 'many-3']);
        assert.deepEqual(b.inbox.matching(isEvent('fanned')).map((m) => m.channel).sort(), ['many-2', 'many-3']);
        for (const m of [...a.inbox.matching(isEvent('fanned')), ...b.inbox.matching(isEvent('fanned'))]) {
            assert.deepEqual(m.data, { n: 7 });
        }
    });

    it('triggers to 100 channels at once (the protocol limit)', async () => {
        const c = await connectedClient(suite.server);
        await subscribe(c, 'wide-99');
        const channels = Array.from({ length: 100 }, (_, i) => `wide-${i}`);
        await within(suite.api.trigger(channels, 'wide', {}), 'trigger to 100 channels');
        await c.inbox.waitFor(isEvent('wide', 'wide-99'), 'wide on wide-99');
    });

    it('batch-triggers events to different channels', async () => {
        const c = await connectedClient(suite.server);
        await Promise.all([subscribe(c, 'batch-1'), subscribe(c, 'batch-2')]);
        const res = await within(
            suite.api.triggerBatch([
                { channel: 'batch-1', name: 'first', data: JSON.stringify({ n: 1 }) },
                { channel: 'batch-2', name: 'second', data: JSON.stringify({ n: 2 }) },
                { channel: 'batch-1', name: 'third', data: 'plain text' },
            ]),
            'triggerBatch',
        );
        assert.equal(res.status, 200);
        assert.deepEqual((await c.inbox.waitFor(isEvent('first', 'batch-1'), 'first')).data, { n: 1 });
        assert.deepEqual((await c.inbox.waitFor(isEvent('second', 'batch-2'), 'second')).data, { n: 2 });
        assert.equal((await c.inbox.waitFor(isEvent('third', 'batch-1'), 'third')).data, 'plain text');
    });

    it('excludes the socket named by socket_id from a trigger', async () => {
        const sender = await connectedClient(suite.server, { label: 'sender' });
        const other = await connectedClient(suite.server, { label: 'other' });
        await Promise.all([subscribe(sender, 'excl'), subscribe(other, 'excl')]);
        await within(suite.api.trigger('excl', 'no-echo', { x: 1 }, { socket_id: sender.socketId() }), 'trigger');
        await other.inbox.waitFor(isEvent('no-echo', 'excl'), 'no-echo on the other socket');
        await sender.inbox.assertCountAfterQuiet(isEvent('no-echo'), 0, 'no-echo on the excluded socket');
    });

    it('excludes the socket named by socket_id from a batch event', async () => {
        const sender = await connectedClient(suite.server, { label: 'sender' });
        const other = await connectedClient(suite.server, { label: 'other' });
        await Promise.all([subscribe(sender, 'excl-batch'), subscribe(other, 'excl-batch')]);
        await within(
            suite.api.triggerBatch([{ channel: 'excl-batch', name: 'batched', data: '{}', socket_id: sender.socketId() }]),
            'triggerBatch',
        );
        await other.inbox.waitFor(isEvent('batched'), 'batched on the other socket');
        await sender.inbox.assertCountAfterQuiet(isEvent('batched'), 0, 'batched on the excluded socket');
    });

    it('answers info=subscription_count on trigger', async () => {
        const clients = await Promise.all([1, 2, 3].map(() => connectedClient(suite.server)));
        await Promise.all(clients.map((c) => subscribe(c, 'counted')));
        const res = await within(suite.api.trigger('counted', 'e', {}, { info: 'subscription_count' }), 'trigger with info');
        const body = await res.json();
        assert.deepEqual(body, { channels: { counted: { subscription_count: 3 } } });
    });

    describe('channel queries, counted over both shards', () => {
        before(async () => {
            // Four sockets (so both shards hold some): users 1 and 2 in presence-q, user 2 twice.
            const members = [
                { user_id: '1', user_info: { name: 'one' } },
                { user_id: '2', user_info: { name: 'two' } },
                { user_id: '2', user_info: { name: 'two' } },
                { user_id: '3', user_info: { name: 'three' } },
            ];
            const clients = await Promise.all(members.map((presence) => connectedClient(suite.server, { presence })));
            await Promise.all(clients.slice(0, 3).map((c) => subscribe(c, 'presence-q')));
            await subscribe(clients[3], 'presence-qq');
            await Promise.all(clients.map((c) => subscribe(c, 'public-q')));
        });

        it('GET /channels lists occupied channels', async () => {
            const body = await sdkGet(suite.api, '/channels');
            for (const name of ['presence-q', 'presence-qq', 'public-q']) {
                assert.ok(name in body.channels, `${name} missing from ${JSON.stringify(body)}`);
            }
        });

        it('GET /channels?filter_by_prefix=presence-&info=user_count counts users', async () => {
            const body = await sdkGet(suite.api, '/channels', { filter_by_prefix: 'presence-q', info: 'user_count' });
            assert.deepEqual(body, { channels: { 'presence-q': { user_count: 2 }, 'presence-qq': { user_count: 1 } } });
        });

        it('GET /channels?filter_by_prefix=public- lists only that prefix', async () => {
            const body = await sdkGet(suite.api, '/channels', { filter_by_prefix: 'public-' });
            assert.deepEqual(Object.keys(body.channels), ['public-q']);
        });

        it('GET /channels/{name}?info=user_count,subscription_count', async () => {
            const body = await sdkGet(suite.api, '/channels/presence-q', { info: 'user_count,subscription_count' });
            assert.deepEqual(body, { occupied: true, user_count: 2, subscription_count: 3 });
        });

        it('GET /channels/{name} of a public channel with subscription_count', async () => {
            const body = await sdkGet(suite.api, '/channels/public-q', { info: 'subscription_count' });
            assert.deepEqual(body, { occupied: true, subscription_count: 4 });
        });

        it('GET /channels/{name} of an empty channel is not occupied', async () => {
            const body = await sdkGet(suite.api, '/channels/nobody-here');
            assert.equal(body.occupied, false);
        });

        it('GET /channels/{name}/users lists each user once', async () => {
            const body = await sdkGet(suite.api, '/channels/presence-q/users');
            assert.deepEqual(body.users.map((u) => u.id).sort(), ['1', '2']);
        });
    });

    describe('bad signatures', () => {
        it('rejects a trigger signed with the wrong secret with 401', async () => {
            const wrong = sdk(suite.server, { secret: 'wrong-secret' });
            await assert.rejects(within(wrong.trigger('orders', 'x', {}), 'trigger'), (e) => e.status === 401);
        });

        it('rejects a request with an unknown key with 401', async () => {
            const wrong = sdk(suite.server, { key: 'wrong-key' });
            await assert.rejects(within(wrong.trigger('orders', 'x', {}), 'trigger'), (e) => e.status === 401);
        });

        it('rejects a channel query signed with the wrong secret with 401', async () => {
            const wrong = sdk(suite.server, { secret: 'wrong-secret' });
            await assert.rejects(within(wrong.get({ path: '/channels' }), 'GET /channels'), (e) => e.status === 401);
        });

        it('rejects an unsigned request with 401 and a JSON error body, then keeps serving', async () => {
            const body = JSON.stringify({ name: 'x', channel: 'orders', data: '{}' });
            const res = await request(suite.server, 'POST', `/apps/${APP.id}/events`, body, { 'content-type': 'application/json' });
            assert.equal(res.status, 401);
            assert.doesNotThrow(() => JSON.parse(res.body), `401 body is not JSON: ${res.body}`);
            const ok = await within(suite.api.trigger('orders', 'after-401', {}), 'trigger after a 401');
            assert.equal(ok.status, 200);
        });
    });
});
