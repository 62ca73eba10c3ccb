// User authentication: pusher-js `signin()`, server-to-user events, and terminate_connections.

import assert from 'node:assert/strict';
import { describe, it } from 'node:test';

import {
    Inbox,
    QUIET_MS,
    connectedClient,
    disconnect,
    errorCode,
    isEvent,
    sdk,
    sleep,
    serverForSuite,
    subscribe,
    within,
} from './harness.mjs';

/**
 * A connected client signed in as `id` (user data `{ id, user_info, ...more }`); resolves once
 * pusher-js has `user_data`. `before(c)` runs between connecting and `signin()`.
 */
async function signedIn(server, id, { more = {}, before = () => {}, ...options } = {}) {
    const user = { id, user_info: { name: `user ${id}` }, ...more };
    const c = await connectedClient(server, { user, label: `user ${id}`, ...options });
    before(c);
    c.pusher.signin();
    await c.inbox.waitFor(isEvent('pusher:signin_success'), 'pusher:signin_success');
    await within(c.pusher.user.signinDonePromise, 'signinDonePromise');
    return c;
}

describe('user sign-in', () => {
    const suite = serverForSuite();

    it('signs in: pusher:signin_success carries the signed user_data', async () => {
        const c = await signedIn(suite.server, 'alice');
        const success = c.inbox.matching(isEvent('pusher:signin_success'))[0];
        assert.equal(typeof success.data.user_data, 'string');
        assert.deepEqual(JSON.parse(success.data.user_data), { id: 'alice', user_info: { name: 'user alice' } });
        assert.equal(c.pusher.user.user_data.id, 'alice');
    });

    it('accepts the subscription pusher-js makes to #server-to-user-{id} after sign-in', async () => {
        const c = await signedIn(suite.server, 'dave');
        const channel = '#server-to-user-dave';
        await c.inbox.waitFor(
            (m) => m.channel === channel && /subscription_(succeeded|error)$/.test(m.event),
            `an answer to the subscription to ${channel}`,
        );
        const answers = c.inbox.matching((m) => m.channel === channel);
        assert.deepEqual(
            answers.map((m) => m.event),
            ['pusher_internal:subscription_succeeded'],
            `pusher-js subscribes to ${channel} after signin_success; the server answered ${JSON.stringify(answers)}`,
        );
        assert.equal(c.pusher.user.serverToUserChannel?.subscribed, true);
    });

    it('delivers sendToUser events to every socket of that user and no other', async () => {
        const first = await signedIn(suite.server, 'bob');
        const second = await signedIn(suite.server, 'bob');
        const other = await signedIn(suite.server, 'carol');
        const got = [first, second].map((c) => new Promise((resolve) => c.pusher.user.bind('note', resolve)));
        await within(suite.api.sendToUser('bob', 'note', { text: 'hi bob' }), 'sendToUser');
        assert.deepEqual(await within(Promise.all(got), "note on both of bob's sockets"), [
            { text: 'hi bob' },
            { text: 'hi bob' },
        ]);
        const note = first.inbox.matching(isEvent('note'))[0];
        assert.equal(note.channel, '#server-to-user-bob');
        await other.inbox.assertCountAfterQuiet(isEvent('note'), 0, "bob's note on carol's socket");
    });

    it('refuses a sign-in signed with the wrong secret with 4009 and no signin_success', async () => {
        const c = await connectedClient(suite.server, {
            user: { id: 'mallory' },
            signer: sdk(suite.server, { secret: 'wrong-secret' }),
            label: 'bad sign-in',
        });
        c.pusher.signin();
        await c.errors.waitFor((e) => errorCode(e) === 4009, 'an error with code 4009');
        await sleep(QUIET_MS);
        assert.equal(c.inbox.matching(isEvent('pusher:signin_success')).length, 0);
    });
});

describe('watchlist', () => {
    const suite = serverForSuite();

    it('tells a watcher when watched users are, come and go online, once per user', async () => {
        const watching = (e) => e.user_ids;
        const already = await signedIn(suite.server, 'wl-early');
        const events = new Inbox('watchlist events');
        await signedIn(suite.server, 'wl-watcher', {
            more: { watchlist: ['wl-early', 'wl-late'] },
            before: (c) => {
                c.pusher.user.watchlist.bind('online', (e) => events.push({ name: 'online', ids: watching(e) }));
                c.pusher.user.watchlist.bind('offline', (e) => events.push({ name: 'offline', ids: watching(e) }));
            },
        });
        const has = (name, id) => (e) => e.name === name && e.ids.includes(id);
        await events.waitFor(has('online', 'wl-early'), 'online for wl-early (already signed in)');

        const late = await Promise.all([1, 2].map(() => signedIn(suite.server, 'wl-late')));
        await events.waitFor(has('online', 'wl-late'), 'online for wl-late');
        await events.assertCountAfterQuiet(has('online', 'wl-late'), 1, 'online for wl-late (two sockets)');

        // The state sent at sign-in may already have said "offline" for wl-late: count from here.
        const offlineBefore = events.matching(has('offline', 'wl-late')).length;
        await disconnect(late[0]);
        await events.assertCountAfterQuiet(has('offline', 'wl-late'), offlineBefore, 'offline while wl-late has a socket');
        await disconnect(late[1]);
        await events.waitForCount(has('offline', 'wl-late'), offlineBefore + 1, 'offline for wl-late');
        await disconnect(already);
        await events.waitFor(has('offline', 'wl-early'), 'offline for wl-early');
    });
});

describe('terminate connections', () => {
    const suite = serverForSuite();

    it('closes every socket of the user with 4009; pusher-js stays disconnected; other users stay', async () => {
        // Several sockets of the user so that both shards hold some.
        const doomed = await Promise.all([1, 2, 3, 4].map(() => signedIn(suite.server, 'doomed')));
        const survivor = await signedIn(suite.server, 'survivor');
        await subscribe(survivor, 'after-terminate');

        const res = await within(suite.api.terminateUserConnections('doomed'), 'terminateUserConnections');
        assert.equal(res.status, 200);
        for (const c of doomed) {
            await c.errors.waitFor((e) => errorCode(e) === 4009, 'a close with code 4009');
            await c.states.waitFor((s) => s === 'disconnected', 'state "disconnected"');
        }
        await sleep(QUIET_MS);
        for (const c of doomed) {
            // 4000-4099: pusher-js must not reconnect
            assert.equal(c.pusher.connection.state, 'disconnected', `states: ${c.states.items}`);
        }
        assert.equal(survivor.pusher.connection.state, 'connected');
        await suite.api.trigger('after-terminate', 'still-here', {});
        await survivor.inbox.waitFor(isEvent('still-here'), 'still-here on the survivor');
    });

    it('answers terminate_connections for a user with no sockets', async () => {
        const res = await within(suite.api.terminateUserConnections('nobody'), 'terminateUserConnections');
        assert.equal(res.status, 200);
    });
});
