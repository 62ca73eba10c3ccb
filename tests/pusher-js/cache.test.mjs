// Cache channels: the last event is replayed on subscribe, `pusher:cache_miss` when there is none.

import assert from 'node:assert/strict';
import { describe, it } from 'node:test';

import { QUIET_MS, connectedClient, isEvent, serverForSuite, sleep, subscribe, within } from './harness.mjs';

describe('cache channels', () => {
    const suite = serverForSuite();

    for (const [channel, presence] of [
        ['cache-prices', undefined],
        ['private-cache-prices', undefined],
        ['presence-cache-prices', { user_id: 'p', user_info: {} }],
    ]) {
        it(`replays the last event of ${channel} to a new subscriber, and no cache_miss`, async () => {
            await within(suite.api.trigger(channel, 'price', { v: 1 }), 'trigger v1');
            await within(suite.api.trigger(channel, 'price', { v: 2 }), 'trigger v2');
            const c = await connectedClient(suite.server, { presence });
            const got = [];
            const subscription = c.pusher.subscribe(channel);
            subscription.bind('price', (data) => got.push(data));
            await subscribe(c, channel);
            await c.inbox.waitFor(isEvent('price', channel), 'the cached price');
            await c.inbox.assertCountAfterQuiet(isEvent('price', channel), 1, 'replayed price');
            assert.deepEqual(got, [{ v: 2 }], 'only the last event is replayed');
            assert.equal(c.inbox.matching(isEvent('pusher:cache_miss')).length, 0);
            // the replay comes after the subscription succeeded
            const order = c.inbox.items.map((m) => m.event).filter((e) => e === 'price' || e.endsWith('subscription_succeeded'));
            assert.deepEqual(order, ['pusher_internal:subscription_succeeded', 'price']);
        });
    }

    it('sends pusher:cache_miss on subscribing to a cache channel that holds nothing', async () => {
        const c = await connectedClient(suite.server);
        const subscription = c.pusher.subscribe('cache-empty');
        const miss = within(new Promise((resolve) => subscription.bind('pusher:cache_miss', resolve)), 'pusher:cache_miss');
        await subscribe(c, 'cache-empty');
        await miss;
        await c.inbox.assertCountAfterQuiet(isEvent('pusher:cache_miss', 'cache-empty'), 1, 'pusher:cache_miss');
    });

    it('answers a subscription before later events: cache_miss, then each live event once', async () => {
        const c = await connectedClient(suite.server);
        await subscribe(c, 'cache-live');
        // subscription_succeeded is in: the server knows the subscription before this publish
        await suite.api.trigger('cache-live', 'tick', { n: 1 });
        await suite.api.trigger('cache-live', 'tick', { n: 2 });
        await c.inbox.waitForCount(isEvent('tick', 'cache-live'), 2, 'two ticks');
        await sleep(QUIET_MS); // time for a late replay or a second copy to show up
        const sequence = c.inbox
            .matching((m) => m.channel === 'cache-live' && !m.event.startsWith('pusher_internal:'))
            .map((m) => (m.event === 'tick' ? `tick ${m.data.n}` : m.event));
        assert.deepEqual(sequence, ['pusher:cache_miss', 'tick 1', 'tick 2']);
        const late = await connectedClient(suite.server);
        await subscribe(late, 'cache-live');
        const replayed = await late.inbox.waitFor(isEvent('tick', 'cache-live'), 'the cached tick');
        assert.deepEqual(replayed.data, { n: 2 });
    });

    it('does not replay a non-cache channel', async () => {
        await suite.api.trigger('plain-prices', 'price', { v: 9 });
        const c = await connectedClient(suite.server);
        await subscribe(c, 'plain-prices');
        await c.inbox.assertCountAfterQuiet(
            (m) => m.channel === 'plain-prices' && !m.event.startsWith('pusher_internal:'),
            0,
            'events on plain-prices after subscribe',
        );
    });
});
