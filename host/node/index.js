// presence-uws: a drop-in for svelte-adapter-uws-extensions' `createPresence`,
// with the Rust presence engine (and its WebAssembly plugins) inside.
//
// A thin facade: `ws` and `platform` objects never cross into Rust. The
// facade keeps a connection id per `ws` (a WeakMap), calls the native
// tracker's async functions with ids and JSON text, and applies what the
// engine asks of connections (subscribe, send a state, publish a change)
// itself, buffering presence changes per topic into one `presence_diff`
// flushed on the next microtask, as the extension does.

import { MemoryStore, Tracker } from './native.js';

const PRESENCE = '__presence:';

/** An in-memory store: trackers made on the same one are instances of one fleet. */
export function createMemoryStore() {
	return new MemoryStore();
}

function option(condition, name, reason) {
	if (!condition) throw new Error(`presence: option \`${name}\` ${reason}`);
}

function positive(value) {
	return typeof value === 'number' && Number.isFinite(value) && value >= 1;
}

/** Where presence lives, from what the caller handed over as `client`. */
function backendOf(client) {
	if (client == null) return { store: new MemoryStore() };
	if (client instanceof MemoryStore) return { store: client };
	if (typeof client === 'string') return { url: client, keyPrefix: '' };
	if (typeof client !== 'object') throw new TypeError('presence: `client` must be a Redis client, a URL, { url, keyPrefix } or null');
	// The extension's client: an ioredis instance in `.redis`, and its prefix.
	if (client.redis && typeof client.redis === 'object') {
		const { url } = backendOf(client.redis);
		return { url, keyPrefix: client.keyPrefix ?? client.redis.options?.keyPrefix ?? '' };
	}
	if (typeof client.url === 'string') return { url: client.url, keyPrefix: client.keyPrefix ?? '' };
	// An ioredis Cluster: its seeds.
	if (client.isCluster && Array.isArray(client.startupNodes)) {
		const auth = client.options?.redisOptions ?? {};
		const seeds = client.startupNodes.map((node) => redisUrl({ ...auth, ...node }));
		return { url: seeds.join(','), keyPrefix: client.options?.keyPrefix ?? auth.keyPrefix ?? '' };
	}
	// An ioredis instance: its connection options.
	if (client.options && typeof client.options === 'object') {
		return { url: redisUrl(client.options), keyPrefix: client.options.keyPrefix ?? '' };
	}
	throw new TypeError('presence: `client` must be a Redis client, a URL, { url, keyPrefix } or null');
}

function redisUrl({ host = '127.0.0.1', port = 6379, username, password, db = 0, tls }) {
	const user = username ? encodeURIComponent(username) : '';
	const auth = password ? `${user}:${encodeURIComponent(password)}@` : user ? `${user}@` : '';
	return `${tls ? 'rediss' : 'redis'}://${auth}${host}:${port}/${db}`;
}

/** Calls into the application's objects never break presence: an error is logged once. */
function guarded(what) {
	let logged = false;
	return (fn) => {
		try {
			fn();
		} catch (error) {
			if (!logged) {
				logged = true;
				console.warn(`presence: ${what} threw (logged once): ${error?.message ?? error}`);
			}
		}
	};
}

/**
 * Create a presence tracker (synchronously; the backend is reached on first use).
 *
 * @param {object|string|null|undefined} client - the extension's Redis client, an
 *   ioredis instance, a URL, `{ url, keyPrefix }`, a `createMemoryStore()`, or
 *   nothing (in memory, this process only)
 * @param {object} [options]
 */
export function createPresence(client, options = {}) {
	option(options !== null && typeof options === 'object', 'options', 'must be an object');
	const key = options.key ?? 'id';
	option(typeof key === 'string' && key.length > 0, 'key', 'must be a non-empty string');
	const select = options.select;
	option(select == null || typeof select === 'function', 'select', 'must be a function');
	const heartbeat = options.heartbeat ?? 30000;
	option(positive(heartbeat), 'heartbeat', 'must be a finite number of milliseconds, at least 1');
	const ttl = options.ttl ?? 90;
	option(positive(ttl), 'ttl', 'must be a finite number of seconds, at least 1');
	option(ttl * 1000 > heartbeat, 'ttl', `(${ttl} s) must be longer than \`heartbeat\` (${heartbeat} ms)`);
	option(options.plugin == null || typeof options.plugin === 'string', 'plugin', 'must be the path of a .wasm component');
	option(options.prefix == null || typeof options.prefix === 'string', 'prefix', 'must be a string');
	option(options.redisTimeout == null || positive(options.redisTimeout), 'redisTimeout', 'must be a number of milliseconds, at least 1');
	option(options.maxMembersPerTopic == null || (Number.isInteger(options.maxMembersPerTopic) && options.maxMembersPerTopic >= 0), 'maxMembersPerTopic', 'must be an integer, 0 for no cap');
	// Accepted for the extension's callers; the engine announces a topic emptied by expiry itself.
	option(options.keyspaceNotifications == null || typeof options.keyspaceNotifications === 'boolean', 'keyspaceNotifications', 'must be a boolean');
	const metrics = instruments(options.metrics);
	const breaker = options.breaker ?? null;
	option(breaker == null || typeof breaker.guard === 'function', 'breaker', 'must be a circuit breaker (guard, success, failure)');

	const backend = backendOf(client);
	const tracker = new Tracker(
		{
			key,
			heartbeatMs: heartbeat,
			ttlS: ttl,
			redisUrl: backend.url,
			// One fleet with presenced: `--prefix` there is this prefix.
			prefix: options.prefix ?? (backend.url ? `${backend.keyPrefix}presence` : undefined),
			redisTimeoutMs: options.redisTimeout,
			plugin: options.plugin,
			maxMembersPerTopic: options.maxMembersPerTopic
		},
		backend.store ?? null,
		() => apply(current)
	);

	const ids = new WeakMap();
	/** id → ws, while the engine tracks the connection. */
	const sockets = new Map();
	let nextId = 1;
	/** The platform of the latest call: remote changes and heartbeats go through it. */
	let current = null;
	/** `__presence:T` → { joins: Map, leaves: Map } waiting for the next flush. */
	const diffs = new Map();
	let flushing = false;
	const onSend = guarded('platform.send');
	const onPublish = guarded('platform.publish');
	const onSocket = guarded('ws.subscribe');

	function idOf(ws) {
		let id = ids.get(ws);
		if (id === undefined) {
			id = nextId++;
			ids.set(ws, id);
		}
		sockets.set(id, ws);
		return id;
	}

	function userDataOf(ws) {
		if (!ws || typeof ws.getUserData !== 'function') {
			throw new TypeError('presence: `ws` must have getUserData() (a svelte-adapter-uws WebSocket)');
		}
		const data = ws.getUserData();
		try {
			return JSON.stringify(data ?? {});
		} catch (error) {
			throw new TypeError(`presence: the user data is not JSON-serializable: ${error.message}`);
		}
	}

	function publicDataOf(ws) {
		let data;
		try {
			data = select(ws.getUserData());
		} catch (error) {
			throw new Error(`presence: select threw: ${error?.message ?? error}`);
		}
		let json;
		try {
			json = JSON.stringify(data);
		} catch (error) {
			throw new Error(`presence: select returned data that is not JSON-serializable: ${error.message}`);
		}
		if (json === undefined) throw new Error('presence: select returned nothing (it must return the public data)');
		return json;
	}

	function schedule() {
		if (!flushing) {
			flushing = true;
			queueMicrotask(flushDiffs);
		}
	}

	function buffer(topic, event, member) {
		let diff = diffs.get(topic);
		if (!diff) diffs.set(topic, (diff = { joins: new Map(), leaves: new Map() }));
		if (event === 'leave') {
			diff.joins.delete(member.key);
			diff.leaves.set(member.key, member.data);
		} else {
			diff.leaves.delete(member.key);
			diff.joins.set(member.key, member.data);
		}
		schedule();
	}

	/** Do what the engine asked of connections and topics, in order. */
	function apply(platform) {
		const batch = tracker.drain();
		if (batch == null) return;
		for (const event of JSON.parse(batch)) {
			const ws = event.conn === undefined ? undefined : sockets.get(event.conn);
			switch (event.kind) {
				case 'subscribe':
					if (ws) onSocket(() => ws.subscribe(event.topic));
					break;
				case 'unsubscribe':
					if (ws) onSocket(() => ws.unsubscribe(event.topic));
					break;
				case 'send':
					if (ws && platform) onSend(() => platform.send(ws, event.topic, event.event, event.data));
					break;
				case 'publish':
					if (event.event === 'join' || event.event === 'leave' || event.event === 'updated') {
						buffer(event.topic, event.event, event.data);
					} else if (platform) {
						if (event.event === 'heartbeat') metrics.heartbeat(tracker);
						onPublish(() => platform.publish(event.topic, event.event, event.data));
					}
					break;
				case 'refused':
					console.warn(`presence: a kept join to ${event.topic} was refused: ${event.data}`);
					break;
			}
		}
	}

	/** Emit every buffered `presence_diff` now. */
	function flushDiffs() {
		flushing = false;
		const platform = current;
		for (const [topic, diff] of diffs) {
			diffs.delete(topic);
			if (!platform || (diff.joins.size === 0 && diff.leaves.size === 0)) continue;
			const data = { joins: Object.fromEntries(diff.joins), leaves: Object.fromEntries(diff.leaves) };
			metrics.diff(topic.slice(PRESENCE.length), diff);
			onPublish(() => platform.publish(topic, 'presence_diff', data, { relay: false }));
		}
	}

	/** Run one native call through the breaker, then do what it asked. */
	async function call(platform, run) {
		if (platform) current = platform;
		breaker?.guard();
		try {
			const result = await run();
			breaker?.success();
			return result;
		} catch (error) {
			breaker?.failure(error);
			throw error;
		} finally {
			apply(current);
		}
	}

	/** Joins waiting for this tick's batch: { entry (JSON text), resolve, reject }. */
	let joins = [];

	/** Join in this tick's batch: every join of a tick crosses into Rust once, together. */
	function joinInBatch(platform, entry) {
		if (platform) current = platform;
		breaker?.guard();
		return new Promise((resolve, reject) => {
			if (joins.length === 0) queueMicrotask(sendJoins);
			joins.push({ entry, resolve, reject });
		});
	}

	async function sendJoins() {
		const batch = joins;
		joins = [];
		let errors = null;
		try {
			errors = await tracker.joinBatch(`[${batch.map((join) => join.entry).join(',')}]`);
		} catch (error) {
			errors = batch.map(() => error.message);
		} finally {
			apply(current);
		}
		const outcomes = errors == null ? null : typeof errors === 'string' ? JSON.parse(errors) : errors;
		batch.forEach((join, i) => {
			const error = outcomes?.[i];
			if (error == null) {
				breaker?.success();
				join.resolve();
			} else {
				const failure = new Error(error);
				breaker?.failure(failure);
				join.reject(failure);
			}
		});
	}

	function forget(ws) {
		const id = ids.get(ws);
		if (id !== undefined) {
			sockets.delete(id);
			ids.delete(ws);
		}
	}

	const presence = {
		/** Add `ws` to `topic`'s presence: it is subscribed to `__presence:<topic>` and sent `presence_state`. */
		async join(ws, topic, platform) {
			const user = userDataOf(ws);
			const data = select ? publicDataOf(ws) : 'null';
			await joinInBatch(platform, `[${idOf(ws)},${user},${JSON.stringify(String(topic))},${data}]`);
		},

		/** Remove `ws` from one topic, or from every topic. */
		async leave(ws, platform, topic) {
			const id = ids.get(ws);
			if (id === undefined) return;
			await call(platform, () => tracker.leave(id, topic == null ? null : String(topic)));
			if (topic == null) forget(ws);
		},

		/** Watch `topic` without joining: `presence_state`, then live diffs. */
		async sync(ws, topic, platform) {
			const user = userDataOf(ws);
			const id = idOf(ws);
			await call(platform, () => tracker.sync(id, user, String(topic)));
		},

		/** The selected data of each user present on `topic`. */
		async list(topic) {
			const members = await call(null, () => tracker.list(String(topic)));
			return members.map(([, data]) => JSON.parse(data));
		},

		/** Unique users present on `topic`. */
		async count(topic) {
			return call(null, () => tracker.count(String(topic)));
		},

		/** This instance's figures, from its own state (no round trip). */
		metrics() {
			const [totalOnline, heartbeatLatencyMs] = tracker.localMetrics();
			return { totalOnline, heartbeatLatencyMs, staleCleanedTotal: 0 };
		},

		flushDiffs,

		/** Remove all presence state, local and shared. */
		async clear() {
			await call(null, () => tracker.clear());
		},

		/** Stop the heartbeat and the subscriber; the process can then exit. */
		destroy() {
			flushDiffs();
			tracker.destroy();
		},

		hooks: {
			async subscribe(ws, topic, { platform } = {}) {
				if (options.plugin) {
					const user = userDataOf(ws);
					const id = idOf(ws);
					return call(platform, () => tracker.hookSubscribe(id, user, String(topic)));
				}
				if (topic.startsWith(PRESENCE)) return presence.sync(ws, topic.slice(PRESENCE.length), platform);
				if (topic.startsWith('__')) return;
				return presence.join(ws, topic, platform);
			},
			async unsubscribe(ws, topic, { platform } = {}) {
				const id = ids.get(ws);
				if (id === undefined) return;
				if (options.plugin) {
					return call(platform, () => tracker.hookUnsubscribe(id, userDataOf(ws), String(topic)));
				}
				if (topic.startsWith(PRESENCE)) {
					current = platform ?? current;
					tracker.unsync(id, topic.slice(PRESENCE.length));
					return apply(current);
				}
				if (topic.startsWith('__')) return;
				return presence.leave(ws, platform, topic);
			},
			async close(ws, { platform } = {}) {
				const id = ids.get(ws);
				if (id === undefined) return;
				if (options.plugin) {
					let user = '{}';
					try {
						user = userDataOf(ws);
					} catch {
						// a closed socket may no longer give its data
					}
					await call(platform, () => tracker.hookClose(id, user));
					return forget(ws);
				}
				return presence.leave(ws, platform);
			}
		}
	};
	return presence;
}

/** The extension's metrics registry, when one is given: the same metric names. */
function instruments(registry) {
	if (registry == null) return { diff() {}, heartbeat() {} };
	option(typeof registry.counter === 'function' && typeof registry.gauge === 'function', 'metrics', 'must be a metrics registry (counter, gauge)');
	const label = (topic) => ({ topic: typeof registry.mapTopic === 'function' ? registry.mapTopic(topic) : topic });
	const joins = registry.counter('presence_joins_total', 'Presence join events', ['topic']);
	const leaves = registry.counter('presence_leaves_total', 'Presence leave events', ['topic']);
	const frames = registry.counter('presence_diff_frames_total', 'diff frames published to topic subscribers', ['topic']);
	const heartbeats = registry.counter('presence_heartbeats_total', 'Heartbeat refresh cycles');
	const online = registry.gauge('presence_total_online', 'Unique users present over the topics this instance tracks');
	const latency = registry.gauge('presence_heartbeat_latency_ms', 'Duration of the most recent heartbeat tick in milliseconds');
	let lastBeat = 0;
	return {
		diff(topic, diff) {
			if (diff.joins.size) joins.inc(label(topic), diff.joins.size);
			if (diff.leaves.size) leaves.inc(label(topic), diff.leaves.size);
			frames.inc(label(topic));
		},
		heartbeat(tracker) {
			// One heartbeat event per topic: count the tick once.
			const now = Date.now();
			if (now - lastBeat < 100) return;
			lastBeat = now;
			const [totalOnline, heartbeatLatencyMs] = tracker.localMetrics();
			heartbeats.inc();
			online.set(totalOnline);
			latency.set(heartbeatLatencyMs);
		}
	};
}
