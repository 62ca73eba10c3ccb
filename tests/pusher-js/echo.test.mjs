// laravel-echo on pusher-js, as a Laravel app uses it: `.channel().listen`, `.private().listen`,
// `.join().here/.joining/.leaving` with integer user ids, and whispers.

import assert from 'node:assert/strict';
import { describe, it } from 'node:test';

import Echo from 'laravel-echo';
import PusherJs from 'pusher-js';

import {
    Inbox,
    authorize,
    connected,
    disconnect,
    pusherConfig,
    sdk,
    serverForSuite,
    track,
    within,
} from './harness.mjs';

/**
 * An Echo instance for a Laravel user `{ id, name }` (id an integer, as Laravel sends it).
 * `via: 'client'` hands Echo a pusher-js instance; `via: 'Pusher'` lets Echo construct one.
 */
function echoFor(server, user, via = 'client') {
    const signer = sdk(server);
    const options = {
        ...pusherConfig(server),
        channelAuthorization: {
            customHandler: ({ socketId, channelName }, callback) =>
                authorize(
                    () =>
                        signer.authorizeChannel(
                            socketId,
                            channelName,
                            channelName.startsWith('presence-') ? { user_id: user.id, user_info: user } : undefined,
                        ),
                    callback,
                ),
        },
    };
    const echo =
        via === 'client'
            ? new Echo({ broadcaster: 'pusher', key: 'app-key', client: new PusherJs('app-key', options) })
            : new Echo({ broadcaster: 'pusher', key: 'app-key', Pusher: PusherJs, ...options });
    const tracked = track(echo.connector.pusher, `echo user ${user.id}`);
    return { echo, tracked };
}

/** An Inbox fed by an Echo callback. */
function recorder(label) {
    const inbox = new Inbox(label);
    return { inbox, push: (item) => inbox.push(item) };
}

describe('laravel-echo', () => {
    const suite = serverForSuite();

    it('.channel().listen gets a namespaced Laravel event (client passed in)', async () => {
        const { echo, tracked } = echoFor(suite.server, { id: 1, name: 'Ann' }, 'client');
        await connected(tracked);
        assert.equal(echo.socketId(), tracked.socketId());
        const shipped = recorder('OrderShipped');
        const subscribed = new Promise((resolve) => echo.channel('orders').subscribed(resolve));
        echo.channel('orders').listen('OrderShipped', shipped.push);
        await within(subscribed, 'Echo subscribed to orders');
        await suite.api.trigger('orders', 'App\\Events\\OrderShipped', { order: { id: 5 } });
        const got = await shipped.inbox.waitFor(() => true, 'OrderShipped');
        assert.deepEqual(got, { order: { id: 5 } });
    });

    it('.listen with a leading dot takes the event name as is (Pusher constructed by Echo)', async () => {
        const { echo, tracked } = echoFor(suite.server, { id: 2, name: 'Bob' }, 'Pusher');
        await connected(tracked);
        const raw = recorder('.price.updated');
        const subscribed = new Promise((resolve) => echo.channel('prices').subscribed(resolve));
        echo.channel('prices').listen('.price.updated', raw.push);
        await within(subscribed, 'Echo subscribed to prices');
        await suite.api.trigger('prices', 'price.updated', { v: 3 });
        assert.deepEqual(await raw.inbox.waitFor(() => true, 'price.updated'), { v: 3 });
    });

    it('.private().listen subscribes to private-{name} with auth', async () => {
        const { echo, tracked } = echoFor(suite.server, { id: 3, name: 'Cy' });
        await connected(tracked);
        const updated = recorder('OrderUpdated');
        const subscribed = new Promise((resolve) => echo.private('orders.3').subscribed(resolve));
        echo.private('orders.3').listen('OrderUpdated', updated.push).error((e) => updated.push({ error: e }));
        await within(subscribed, 'Echo subscribed to private-orders.3');
        await suite.api.trigger('private-orders.3', 'App\\Events\\OrderUpdated', { status: 'paid' });
        assert.deepEqual(await updated.inbox.waitFor(() => true, 'OrderUpdated'), { status: 'paid' });
    });

    it('.join().here/.joining/.leaving with integer user ids', async () => {
        const room = 'chat.1';
        const ann = echoFor(suite.server, { id: 10, name: 'Ann' });
        const annHere = recorder('Ann here');
        const annJoining = recorder('Ann joining');
        const annLeaving = recorder('Ann leaving');
        ann.echo.join(room).here(annHere.push).joining(annJoining.push).leaving(annLeaving.push);
        assert.deepEqual(await annHere.inbox.waitFor(() => true, 'here for Ann'), [{ id: 10, name: 'Ann' }]);

        const bob = echoFor(suite.server, { id: 11, name: 'Bob' }, 'Pusher');
        const bobHere = recorder('Bob here');
        bob.echo.join(room).here(bobHere.push);
        const here = await bobHere.inbox.waitFor(() => true, 'here for Bob');
        assert.deepEqual(
            [...here].sort((a, b) => a.id - b.id),
            [
                { id: 10, name: 'Ann' },
                { id: 11, name: 'Bob' },
            ],
        );
        assert.deepEqual(await annJoining.inbox.waitFor(() => true, 'joining Bob'), { id: 11, name: 'Bob' });

        // whisper / listenForWhisper go over client events and are not echoed to the sender
        const whispers = recorder('Ann whispers');
        const own = recorder('Bob whispers');
        ann.echo.join(room).listenForWhisper('typing', whispers.push);
        bob.echo.join(room).listenForWhisper('typing', own.push);
        bob.echo.join(room).whisper('typing', { name: 'Bob' });
        assert.deepEqual(await whispers.inbox.waitFor(() => true, 'whisper'), { name: 'Bob' });
        await own.inbox.assertCountAfterQuiet(() => true, 0, 'whisper echoed to Bob');

        bob.echo.leave(room);
        assert.deepEqual(await annLeaving.inbox.waitFor(() => true, 'leaving Bob'), { id: 11, name: 'Bob' });
        await annLeaving.inbox.assertCountAfterQuiet(() => true, 1, 'leaving');
        await annJoining.inbox.assertCountAfterQuiet(() => true, 1, 'joining', 0);
        await disconnect(bob.tracked);
        await disconnect(ann.tracked);
    });
});
