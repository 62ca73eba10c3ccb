// Presence (one member per user, however many sockets), integer user ids, and client events.

import assert from 'node:assert/strict';
import { describe, it } from 'node:test';

import {
    APP,
    QUIET_MS,
    connectedClient,
    disconnect,
    errorCode,
    isEvent,
    sdk,
    sdkGet,
    serverForSuite,
    sleep,
    subscribe,
} from './harness.mjs';

const member = (user_id, name) => ({ user_id, user_info: { name } });

describe('presence channels', () => {
    const suite = serverForSuite();

    it('announces a user with two sockets once: one member_added, one member_removed when the last leaves', async () => {
        const channel = 'presence-two-sockets';
        const watcher = await connectedClient(suite.server, { presence: member('1', 'Ann'), label: 'watcher (user 1)' });
        const watched = await subscribe(watcher, channel);
        const added = [];
        const removed = [];
        watched.bind('pusher:member_added', (m) => added.push(m));
        watched.bind('pusher:member_removed', (m) => removed.push(m));

        const first = await connectedClient(suite.server, { presence: member('2', 'Bob'), label: 'user 2, socket 1' });
        const second = await connectedClient(suite.server, { presence: member('2', 'Bob'), label: 'user 2, socket 2' });
        const firstChannel = await subscribe(first, channel);
        await watcher.inbox.waitFor(isEvent('pusher_internal:member_added', channel), 'member_added for user 2');
        const secondChannel = await subscribe(second, channel);
        assert.equal(firstChannel.members.count, 2);
        assert.equal(secondChannel.members.count, 2, 'the second socket of user 2 sees two users');
        assert.deepEqual(Object.keys(secondChannel.members.members).sort(), ['1', '2']);
        await watcher.inbox.assertCountAfterQuiet(isEvent('pusher_internal:member_added', channel), 1, 'member_added');
        assert.deepEqual(added, [{ id: '2', info: { name: 'Bob' } }]);
        // the first socket of user 2 is not told that its own user joined again
        await first.inbox.assertCountAfterQuiet(isEvent('pusher_internal:member_added', channel), 0, 'member_added');

        await disconnect(second);
        await watcher.inbox.assertCountAfterQuiet(
            isEvent('pusher_internal:member_removed', channel),
            0,
            'member_removed while user 2 still has a socket',
        );
        assert.equal(watched.members.count, 2);

        await disconnect(first);
        await watcher.inbox.waitFor(isEvent('pusher_internal:member_removed', channel), 'member_removed for user 2');
        await watcher.inbox.assertCountAfterQuiet(isEvent('pusher_internal:member_removed', channel), 1, 'member_removed');
        assert.deepEqual(removed.map((m) => m.id), ['2']);
        assert.equal(watched.members.count, 1);
    });

    it('counts a user once when the sockets of one user unsubscribe one by one', async () => {
        const channel = 'presence-unsubscribe';
        const watcher = await connectedClient(suite.server, { presence: member('w', 'Watcher') });
        await subscribe(watcher, channel);
        const a = await connectedClient(suite.server, { presence: member('u', 'U') });
        const b = await connectedClient(suite.server, { presence: member('u', 'U') });
        await subscribe(a, channel);
        await subscribe(b, channel);
        a.pusher.unsubscribe(channel);
        await watcher.inbox.assertCountAfterQuiet(isEvent('pusher_internal:member_removed', channel), 0, 'member_removed');
        b.pusher.unsubscribe(channel);
        await watcher.inbox.waitFor(isEvent('pusher_internal:member_removed', channel), 'member_removed');
        const removed = watcher.inbox.matching(isEvent('pusher_internal:member_removed', channel));
        assert.deepEqual(removed.map((m) => m.data.user_id), ['u']);
    });

    it('turns an integer user_id (as Laravel sends) into its string form everywhere', async () => {
        const channel = 'presence-integers';
        const watcher = await connectedClient(suite.server, { presence: member(7, 'Seven'), label: 'user 7' });
        const watched = await subscribe(watcher, channel);
        const own = watcher.inbox.matching(isEvent('pusher_internal:subscription_succeeded', channel))[0];
        assert.deepEqual(own.data.presence.ids, ['7']);
        assert.deepEqual(Object.keys(own.data.presence.hash), ['7']);
        assert.equal(watched.members.count, 1);

        const joiner = await connectedClient(suite.server, { presence: member(42, 'Forty-two'), label: 'user 42' });
        const joined = await subscribe(joiner, channel);
        const snapshot = joiner.inbox.matching(isEvent('pusher_internal:subscription_succeeded', channel))[0];
        assert.deepEqual([...snapshot.data.presence.ids].sort(), ['42', '7']);
        assert.equal(snapshot.data.presence.count, 2);
        assert.deepEqual(snapshot.data.presence.hash['42'], { name: 'Forty-two' });
        assert.equal(joined.members.count, 2);

        const added = await watcher.inbox.waitFor(isEvent('pusher_internal:member_added', channel), 'member_added');
        assert.strictEqual(added.data.user_id, '42', `member_added user_id: ${JSON.stringify(added.data)}`);
        const users = await sdkGet(sdk(suite.server), `/channels/${channel}/users`);
        assert.deepEqual(users.users.map((u) => u.id).sort(), ['42', '7']);

        await disconnect(joiner);
        const removed = await watcher.inbox.waitFor(isEvent('pusher_internal:member_removed', channel), 'member_removed');
        assert.strictEqual(removed.data.user_id, '42');
    });

    it('refuses a presence subscription signed with the wrong secret', async () => {
        const c = await connectedClient(suite.server, {
            presence: member('x', 'X'),
            signer: sdk(suite.server, { secret: 'wrong' }),
        });
        await assert.rejects(subscribe(c, 'presence-guarded'), /subscription_error/);
    });
});

describe('client events', () => {
    const suite = serverForSuite();

    it('delivers a client event on a private channel to the others, never back to the sender', async () => {
        const sender = await connectedClient(suite.server, { label: 'sender' });
        const receiver = await connectedClient(suite.server, { label: 'receiver' });
        const third = await connectedClient(suite.server, { label: 'third' });
        const channels = await Promise.all([sender, receiver, third].map((c) => subscribe(c, 'private-chat')));
        const got = new Promise((resolve) => channels[1].bind('client-typing', resolve));
        assert.equal(channels[0].trigger('client-typing', { who: 'sender' }), true);
        assert.deepEqual(await got, { who: 'sender' });
        await third.inbox.waitFor(isEvent('client-typing', 'private-chat'), 'client-typing on the third socket');
        await sender.inbox.assertCountAfterQuiet(isEvent('client-typing'), 0, 'client-typing echoed to its sender');
        await receiver.inbox.assertCountAfterQuiet(isEvent('client-typing'), 1, 'client-typing');
    });

    it('delivers a client event on a presence channel with the sender user_id', async () => {
        const sender = await connectedClient(suite.server, { presence: member('s', 'S'), label: 'sender' });
        const receiver = await connectedClient(suite.server, { presence: member('r', 'R'), label: 'receiver' });
        const [sent] = await Promise.all([subscribe(sender, 'presence-chat'), subscribe(receiver, 'presence-chat')]);
        sent.trigger('client-wave', { hi: true });
        const got = await receiver.inbox.waitFor(isEvent('client-wave', 'presence-chat'), 'client-wave');
        assert.deepEqual(got.data, { hi: true });
        assert.equal(got.user_id, 's', `client event on a presence channel carries user_id: ${JSON.stringify(got)}`);
        await sender.inbox.assertCountAfterQuiet(isEvent('client-wave'), 0, 'client-wave echoed to its sender');
    });

    it('does not deliver client events on a public channel', async () => {
        const sender = await connectedClient(suite.server, { label: 'sender' });
        const receiver = await connectedClient(suite.server, { label: 'receiver' });
        const [sent] = await Promise.all([subscribe(sender, 'public-chat'), subscribe(receiver, 'public-chat')]);
        sent.trigger('client-nope', {});
        await receiver.inbox.assertCountAfterQuiet(isEvent('client-nope'), 0, 'client-nope on a public channel');
    });
});

describe('client events on an app that disables them', () => {
    const suite = serverForSuite({
        apps: [{ id: 'quiet-id', key: 'quiet-key', secret: 'quiet-secret', enable_client_events: false }],
    });

    it('drops the client event: the other subscriber gets nothing', async () => {
        const signer = sdk(suite.server, { appId: 'quiet-id', key: 'quiet-key', secret: 'quiet-secret' });
        const sender = await connectedClient(suite.server, { key: 'quiet-key', signer, label: 'sender' });
        const receiver = await connectedClient(suite.server, { key: 'quiet-key', signer, label: 'receiver' });
        const [sent] = await Promise.all([subscribe(sender, 'private-quiet'), subscribe(receiver, 'private-quiet')]);
        sent.trigger('client-psst', {});
        await receiver.inbox.assertCountAfterQuiet(isEvent('client-psst'), 0, 'client-psst on an app without client events');
        await signer.trigger('private-quiet', 'server-said', {});
        await receiver.inbox.waitFor(isEvent('server-said'), 'server-said (server events still flow)');
    });
});

describe('client event rate limit', () => {
    const suite = serverForSuite({ apps: [{ ...APP, client_event_rate_per_s: 2 }] });

    it('answers a burst over client_event_rate_per_s with a 4301 error and stays connected', async () => {
        const sender = await connectedClient(suite.server, { label: 'sender' });
        const receiver = await connectedClient(suite.server, { label: 'receiver' });
        const [sent] = await Promise.all([subscribe(sender, 'private-burst'), subscribe(receiver, 'private-burst')]);
        for (let i = 0; i < 8; i++) sent.trigger('client-burst', { i });
        await sender.errors.waitFor((e) => errorCode(e) === 4301, 'an error with code 4301');
        await sleep(QUIET_MS);
        const delivered = receiver.inbox.matching(isEvent('client-burst')).length;
        assert.ok(delivered >= 1 && delivered < 8, `${delivered} of 8 client events were delivered at 2/s`);
        assert.equal(sender.pusher.connection.state, 'connected', 'a rate-limited client is not closed');
    });
});

describe('presence limits', () => {
    const tiny = { id: 'tiny-id', key: 'tiny-key', secret: 'tiny-secret', max_presence_members: 2 };
    const suite = serverForSuite({ apps: [tiny] });

    it('refuses a user over max_presence_members with subscription_error, not a second socket of a member', async () => {
        const signer = sdk(suite.server, { appId: tiny.id, key: tiny.key, secret: tiny.secret });
        const join = async (user_id) => {
            const c = await connectedClient(suite.server, { key: tiny.key, signer, presence: member(user_id, user_id) });
            return subscribe(c, 'presence-full');
        };
        await join('a');
        await join('b');
        await assert.rejects(join('c'), /subscription_error on presence-full/);
        const again = await join('b');
        assert.equal(again.members.count, 2);
    });
});
