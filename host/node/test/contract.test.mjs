// The extension's tracker contract (`../shared/reference/node-tracker.md`),
// in memory: what `createPresence` returns, what it calls on `ws` and
// `platform`, and what it refuses.

import { test } from 'node:test';
import assert from 'node:assert/strict';
import { createMemoryStore, createPresence } from '../index.js';
import { mockPlatform, mockWs, until } from './support.mjs';

const alice = () => mockWs({ id: 'a', name: 'Alice' });

test('join subscribes the socket, sends it the state and publishes one diff', async () => {
	const presence = createPresence(null);
	const platform = mockPlatform();
	const ws = alice();
	await presence.join(ws, 'room', platform);
	assert.ok(ws.isSubscribed('__presence:room'));
	assert.deepEqual(platform.stateOf(ws, 'room'), { a: { id: 'a', name: 'Alice' } });
	assert.deepEqual(platform.diffs('room'), [{ joins: { a: { id: 'a', name: 'Alice' } }, leaves: {} }]);
	const diff = platform.published.find((m) => m.event === 'presence_diff');
	assert.deepEqual(diff.options, { relay: false });
	assert.equal(await presence.count('room'), 1);
	assert.deepEqual(await presence.list('room'), [{ id: 'a', name: 'Alice' }]);
	presence.destroy();
});

test('a second join of the same socket and topic changes nothing', async () => {
	const presence = createPresence(null);
	const platform = mockPlatform();
	const ws = alice();
	await presence.join(ws, 'room', platform);
	presence.flushDiffs();
	platform.reset();
	await presence.join(ws, 'room', platform);
	presence.flushDiffs();
	assert.deepEqual(platform.diffs('room'), []);
	assert.equal(await presence.count('room'), 1);
	presence.destroy();
});

test('two tabs of one user are one entry; the leave comes with the last tab', async () => {
	const presence = createPresence(null);
	const platform = mockPlatform();
	const [one, two] = [alice(), alice()];
	await presence.join(one, 'room', platform);
	await presence.join(two, 'room', platform);
	presence.flushDiffs();
	assert.equal(await presence.count('room'), 1);
	assert.deepEqual(platform.diffs('room'), [{ joins: { a: { id: 'a', name: 'Alice' } }, leaves: {} }]);
	platform.reset();
	await presence.leave(one, platform, 'room');
	presence.flushDiffs();
	assert.deepEqual(platform.diffs('room'), [], 'one tab is still open');
	assert.equal(await presence.count('room'), 1);
	await presence.leave(two, platform, 'room');
	presence.flushDiffs();
	assert.deepEqual(platform.diffs('room'), [{ joins: {}, leaves: { a: { id: 'a', name: 'Alice' } } }]);
	assert.equal(await presence.count('room'), 0);
	presence.destroy();
});

test('topics that begin with __ are not joined', async () => {
	const presence = createPresence(null);
	const platform = mockPlatform();
	const ws = alice();
	await presence.join(ws, '__internal', platform);
	assert.equal(await presence.count('__internal'), 0);
	assert.equal(ws.topics.size, 0);
	assert.equal(platform.sent.length, 0);
	presence.destroy();
});

test('the default select drops internal and secret-looking fields; the key is read from the raw data', async () => {
	const presence = createPresence(null);
	const platform = mockPlatform();
	const ws = mockWs({ id: 'a', name: 'Alice', __session: 's', password: 'p', token: 't', profile: { apiKey: 'k', city: 'Oslo' } });
	await presence.join(ws, 'room', platform);
	assert.deepEqual(await presence.list('room'), [{ id: 'a', name: 'Alice', profile: { city: 'Oslo' } }]);
	presence.destroy();

	const named = createPresence(null, { select: (user) => ({ name: user.name }) });
	const [one, two] = [alice(), alice()];
	await named.join(one, 'room', platform);
	await named.join(two, 'room', platform);
	assert.equal(await named.count('room'), 1, 'both tabs are user `a` though select drops `id`');
	assert.deepEqual(await named.list('room'), [{ name: 'Alice' }]);
	named.destroy();
});

test('`key` names the field that identifies a user; without one each connection is its own', async () => {
	const presence = createPresence(null, { key: 'user' });
	const platform = mockPlatform();
	await presence.join(mockWs({ user: 'u1', id: 1 }), 'room', platform);
	await presence.join(mockWs({ user: 'u1', id: 2 }), 'room', platform);
	await presence.join(mockWs({ name: 'anonymous' }), 'room', platform);
	await presence.join(mockWs({ name: 'anonymous' }), 'room', platform);
	assert.equal(await presence.count('room'), 3);
	presence.destroy();
});

test('concurrent joins on one topic are coalesced into diffs; a key is never in both halves', async () => {
	const presence = createPresence(null);
	const platform = mockPlatform();
	const sockets = Array.from({ length: 10 }, (_, i) => mockWs({ id: `u${i}` }));
	await Promise.all(sockets.map((ws) => presence.join(ws, 'room', platform)));
	// One diff per window: usually one, two when a window closes mid-batch
	// on a busy machine; each key in exactly one of them.
	const diffs = platform.diffs('room');
	assert.ok(diffs.length <= 2, JSON.stringify(diffs));
	const joined = diffs.flatMap((diff) => Object.keys(diff.joins));
	assert.deepEqual(joined.sort(), sockets.map((_, i) => `u${i}`).sort());
	// Mixed operations in flight together: whatever the order they land in,
	// folding the diffs gives the final list, and no diff names a key twice.
	await Promise.all([
		...sockets.slice(0, 5).map((ws) => presence.leave(ws, platform)),
		...sockets.slice(0, 3).map((ws) => presence.join(ws, 'room', platform))
	]);
	presence.flushDiffs();
	const present = new Set();
	for (const diff of platform.diffs('room')) {
		for (const key of Object.keys(diff.joins)) {
			assert.ok(!(key in diff.leaves), `${key} in both halves of ${JSON.stringify(diff)}`);
			present.add(key);
		}
		for (const key of Object.keys(diff.leaves)) present.delete(key);
	}
	const listed = (await presence.list('room')).map((m) => m.id).sort();
	assert.deepEqual([...present].sort(), listed);
	presence.destroy();
});

test('flushDiffs emits what is buffered at once', async () => {
	const presence = createPresence(null);
	const platform = mockPlatform();
	await presence.join(alice(), 'one', platform);
	await presence.join(alice(), 'two', platform);
	presence.flushDiffs();
	assert.equal(platform.diffs('one').length, 1);
	assert.equal(platform.diffs('two').length, 1);
	await Promise.resolve();
	assert.equal(platform.published.filter((m) => m.event === 'presence_diff').length, 2, 'nothing is sent twice');
	presence.destroy();
});

test('a re-join with changed data is an update; with equal data nothing', async () => {
	const presence = createPresence(null);
	const platform = mockPlatform();
	const data = { id: 'a', status: 'here' };
	const ws = mockWs(data);
	await presence.join(ws, 'room', platform);
	presence.flushDiffs();
	platform.reset();
	await presence.join(mockWs({ id: 'a', status: 'here' }), 'room', platform);
	presence.flushDiffs();
	assert.deepEqual(platform.diffs('room'), []);
	await presence.join(mockWs({ id: 'a', status: 'away' }), 'room', platform);
	presence.flushDiffs();
	assert.deepEqual(platform.diffs('room'), [{ joins: { a: { id: 'a', status: 'away' } }, leaves: {} }]);
	presence.destroy();
});

test('sync watches without joining: the state, then live diffs', async () => {
	const presence = createPresence(null);
	const platform = mockPlatform();
	const watcher = mockWs({ id: 'w' });
	await presence.join(alice(), 'room', platform);
	presence.flushDiffs();
	await presence.sync(watcher, 'room', platform);
	assert.ok(watcher.isSubscribed('__presence:room'));
	assert.deepEqual(platform.stateOf(watcher, 'room'), { a: { id: 'a', name: 'Alice' } });
	assert.equal(await presence.count('room'), 1, 'a watcher is not present');
	await presence.sync(mockWs({ id: 'v' }), 'empty', platform);
	assert.deepEqual(platform.stateOf(platform.sent.at(-1).ws, 'empty'), {});
	presence.destroy();
});

test('leave without a topic leaves every topic; unknown sockets and topics are fine', async () => {
	const presence = createPresence(null);
	const platform = mockPlatform();
	const ws = alice();
	await presence.join(ws, 'one', platform);
	await presence.join(ws, 'two', platform);
	await presence.leave(mockWs({ id: 'x' }), platform);
	await presence.leave(ws, platform, 'never-joined');
	assert.equal(await presence.count('one'), 1);
	await presence.leave(ws, platform);
	assert.equal(await presence.count('one'), 0);
	assert.equal(await presence.count('two'), 0);
	assert.ok(!ws.isSubscribed('__presence:one') && !ws.isSubscribed('__presence:two'));
	presence.destroy();
});

test('list and count of an unknown topic are empty', async () => {
	const presence = createPresence(null);
	assert.deepEqual(await presence.list('nobody'), []);
	assert.equal(await presence.count('nobody'), 0);
	presence.destroy();
});

test('clear removes everything and joins work again after it', async () => {
	const presence = createPresence(null);
	const platform = mockPlatform();
	await presence.join(alice(), 'room', platform);
	await presence.join(mockWs({ id: 'b' }), 'other', platform);
	await presence.clear();
	assert.equal(await presence.count('room'), 0);
	assert.equal(await presence.count('other'), 0);
	await presence.join(alice(), 'room', platform);
	assert.equal(await presence.count('room'), 1);
	presence.destroy();
});

test('hooks route __presence: topics to sync, ignore other __ topics and join the rest', async () => {
	const presence = createPresence(null);
	const platform = mockPlatform();
	const { subscribe, unsubscribe, close } = presence.hooks;
	const ws = alice();
	await subscribe(ws, 'room', { platform });
	await subscribe(ws, '__presence:lobby', { platform });
	await subscribe(ws, '__private', { platform });
	assert.equal(await presence.count('room'), 1);
	assert.equal(await presence.count('lobby'), 0);
	assert.ok(ws.isSubscribed('__presence:lobby'));
	assert.ok(platform.stateOf(ws, 'lobby'));
	await unsubscribe(ws, '__presence:lobby', { platform });
	await unsubscribe(ws, 'room', { platform });
	assert.equal(await presence.count('room'), 0);
	await subscribe(ws, 'room', { platform });
	await close(ws, { platform });
	assert.equal(await presence.count('room'), 0);
	presence.destroy();
});

test('two trackers on one memory store are two instances of one fleet', async () => {
	const store = createMemoryStore();
	const [east, west] = [createPresence(store, { heartbeat: 200, ttl: 2 }), createPresence(store, { heartbeat: 200, ttl: 2 })];
	const [eastPlatform, westPlatform] = [mockPlatform(), mockPlatform()];
	const watcher = mockWs({ id: 'w' });
	await west.sync(watcher, 'room', westPlatform);
	await east.join(alice(), 'room', eastPlatform);
	assert.equal(await west.count('room'), 1);
	await until('west to hear east’s join', () => westPlatform.diffs('room').some((d) => d.joins.a));
	await west.join(alice(), 'room', westPlatform);
	const tab = eastPlatform.sent.at(-1).ws;
	await east.leave(tab, eastPlatform);
	assert.equal(await west.count('room'), 1, 'the user is still on west');
	east.destroy();
	west.destroy();
});

test('the heartbeat publishes the keys present on each local topic', async () => {
	const presence = createPresence(null, { heartbeat: 50, ttl: 1 });
	const platform = mockPlatform();
	await presence.join(alice(), 'room', platform);
	const beat = await until('a heartbeat', () => platform.published.find((m) => m.event === 'heartbeat'));
	assert.equal(beat.topic, '__presence:room');
	assert.deepEqual(beat.data, ['a']);
	const metrics = presence.metrics();
	assert.equal(metrics.totalOnline, 1);
	assert.equal(typeof metrics.heartbeatLatencyMs, 'number');
	assert.equal(metrics.staleCleanedTotal, 0);
	presence.destroy();
});

test('options are checked when the tracker is made, each error naming its option', () => {
	const cases = [
		[{ select: 'name' }, /`select`/],
		[{ heartbeat: 0 }, /`heartbeat`/],
		[{ heartbeat: Number.NaN }, /`heartbeat`/],
		[{ heartbeat: Infinity }, /`heartbeat`/],
		[{ heartbeat: '30000' }, /`heartbeat`/],
		[{ ttl: 0 }, /`ttl`/],
		[{ ttl: -5 }, /`ttl`/],
		[{ ttl: 1, heartbeat: 5000 }, /`ttl`.*longer than `heartbeat`/],
		[{ key: '' }, /`key`/],
		[{ plugin: 42 }, /`plugin`/],
		[{ metrics: {} }, /`metrics`/],
		[{ breaker: {} }, /`breaker`/]
	];
	for (const [options, message] of cases) {
		assert.throws(() => createPresence(null, options), message, JSON.stringify(options));
	}
	assert.throws(() => createPresence(42), /`client`/);
});

test('bad input is refused with a clear error and changes nothing', async () => {
	const platform = mockPlatform();
	const presence = createPresence(null);
	await assert.rejects(presence.join({}, 'room', platform), /getUserData/);
	await assert.rejects(presence.join(alice(), 'x'.repeat(10_000), platform), /topic/);
	const cyclic = { id: 'c' };
	cyclic.self = cyclic;
	await assert.rejects(presence.join(mockWs(cyclic), 'room', platform), /JSON/);
	assert.equal(await presence.count('room'), 0);
	presence.destroy();

	const throwing = createPresence(null, {
		select: () => {
			throw new Error('no profile');
		}
	});
	await assert.rejects(throwing.join(alice(), 'room', platform), /select threw: no profile/);
	assert.equal(await throwing.count('room'), 0);
	throwing.destroy();

	const bigint = createPresence(null, { select: () => ({ n: 1n }) });
	await assert.rejects(bigint.join(alice(), 'room', platform), /select returned data that is not JSON/);
	const nothing = createPresence(null, { select: () => undefined });
	await assert.rejects(nothing.join(alice(), 'room', platform), /select returned nothing/);
	assert.equal(await bigint.count('room'), 0);
	bigint.destroy();
	nothing.destroy();
	assert.equal(platform.sent.length, 0, 'nobody was sent anything');
});

test('a platform whose send throws: the join completes and counts, the error is logged once', async () => {
	const presence = createPresence(null);
	const platform = mockPlatform();
	platform.send = () => {
		throw new Error('socket gone');
	};
	const warnings = [];
	const warn = console.warn;
	console.warn = (...args) => warnings.push(args.join(' '));
	try {
		await presence.join(alice(), 'room', platform);
		await presence.join(mockWs({ id: 'b' }), 'room', platform);
	} finally {
		console.warn = warn;
	}
	assert.equal(await presence.count('room'), 2);
	assert.equal(warnings.length, 1, warnings.join('\n'));
	assert.match(warnings[0], /platform\.send threw.*socket gone/);
	presence.destroy();
});

test('a closed socket whose subscribe throws is ignored', async () => {
	const presence = createPresence(null);
	const platform = mockPlatform();
	const ws = alice();
	await presence.join(ws, 'room', platform);
	ws.close();
	await presence.hooks.close(ws, { platform });
	assert.equal(await presence.count('room'), 0);
	presence.destroy();
});

test('a breaker that is open refuses the call before anything changes', async () => {
	let open = false;
	const seen = { success: 0, failure: 0 };
	const breaker = {
		guard() {
			if (open) throw new Error('circuit open');
		},
		success: () => seen.success++,
		failure: () => seen.failure++
	};
	const presence = createPresence(null, { breaker });
	const platform = mockPlatform();
	await presence.join(alice(), 'room', platform);
	open = true;
	await assert.rejects(presence.join(mockWs({ id: 'b' }), 'room', platform), /circuit open/);
	open = false;
	assert.equal(await presence.count('room'), 1);
	assert.ok(seen.success >= 2);
	presence.destroy();
});

test('a metrics registry gets the extension’s metric names', async () => {
	const counters = new Map();
	const gauges = new Map();
	const registry = {
		counter(name) {
			const c = { value: 0, inc: (_labels, n = 1) => (c.value += typeof _labels === 'number' ? _labels : n) };
			counters.set(name, c);
			return c;
		},
		gauge(name) {
			const g = { value: 0, set: (v) => (g.value = v) };
			gauges.set(name, g);
			return g;
		}
	};
	const presence = createPresence(null, { metrics: registry, heartbeat: 50, ttl: 1 });
	const platform = mockPlatform();
	await presence.join(alice(), 'room', platform);
	await presence.join(mockWs({ id: 'b' }), 'room', platform);
	presence.flushDiffs();
	assert.equal(counters.get('presence_joins_total').value, 2);
	assert.equal(counters.get('presence_diff_frames_total').value, 2, 'one frame per awaited join');
	await until('a counted heartbeat', () => counters.get('presence_heartbeats_total').value > 0);
	assert.equal(gauges.get('presence_total_online').value, 2);
	presence.destroy();
});
