// Types of presence-uws: the extension's `RedisPresenceTracker` surface
// (svelte-adapter-uws-extensions 0.5.1, `redis/presence.d.ts`), with the
// engine's own options and the in-memory store added.

/** What the tracker calls on the adapter's platform. */
export interface PresencePlatform {
	publish(topic: string, event: string, data?: unknown, options?: { relay?: boolean }): unknown;
	send(ws: any, topic: string, event: string, data?: unknown): unknown;
}

/** What the tracker calls on a WebSocket: its user data and its topics. */
export interface PresenceSocket {
	getUserData(): any;
	subscribe(topic: string): unknown;
	unsubscribe(topic: string): unknown;
}

/** An in-memory store: trackers made on one are instances of one fleet. */
export class MemoryStore {
	private constructor();
}

/** The extension's Redis client (`createRedisClient`): ioredis in `.redis`. */
export interface ExtensionRedisClient {
	redis: { options: IoRedisOptions };
	keyPrefix?: string;
}

/** The connection settings an ioredis instance keeps in `.options`. */
export interface IoRedisOptions {
	host?: string;
	port?: number;
	username?: string;
	password?: string;
	db?: number;
	tls?: unknown;
	keyPrefix?: string;
}

/**
 * Where presence lives: the extension's client, an ioredis instance or
 * Cluster, a Redis URL (several, comma-separated, for a cluster's seeds),
 * `{ url, keyPrefix }`, a `createMemoryStore()`, or nothing (memory, this
 * process only).
 */
export type PresenceClient =
	| ExtensionRedisClient
	| { options: IoRedisOptions }
	| { url: string; keyPrefix?: string }
	| string
	| MemoryStore
	| null
	| undefined;

/** A Prometheus registry as the extension's `prometheus` module makes it. */
export interface MetricsRegistry {
	counter(name: string, help: string, labels?: string[]): { inc(labels?: Record<string, string> | number, value?: number): void };
	gauge(name: string, help: string, labels?: string[]): { set(labels: Record<string, string> | number, value?: number): void };
	mapTopic?(topic: string): string;
}

/** A circuit breaker as the extension's `shared/breaker.js` makes it. */
export interface CircuitBreaker {
	guard(): void;
	success(): void;
	failure(error?: unknown): void;
}

export interface RedisPresenceOptions {
	/** Field of the user data that identifies a user across tabs. @default 'id' */
	key?: string;
	/** Public fields of the user data. @default drops `__`-prefixed and secret-looking fields */
	select?: (userData: any) => Record<string, any>;
	/** Milliseconds between TTL refreshes and `heartbeat` frames. @default 30000 */
	heartbeat?: number;
	/** Seconds a crashed instance's users stay listed (more than `heartbeat`). @default 90 */
	ttl?: number;
	/** Prometheus registry: the extension's metric names. */
	metrics?: MetricsRegistry;
	/** Asked before every call (`guard` throws to refuse); told of its outcome. */
	breaker?: CircuitBreaker;
	/** A policy plugin (a `.wasm` component), hot-reloaded when the file changes. */
	plugin?: string;
	/** First part of every Redis key and channel (presenced's `--prefix`). @default keyPrefix + 'presence' */
	prefix?: string;
	/** Bound on each Redis call, in milliseconds. @default 2000 */
	redisTimeout?: number;
	/** Users one topic may list; 0 for no cap. @default 10000 */
	maxMembersPerTopic?: number;
}

export interface PresenceMetrics {
	totalOnline: number;
	heartbeatLatencyMs: number;
	staleCleanedTotal: number;
}

export interface RedisPresenceTracker {
	/** Add a connection to a topic's presence. Ignores `__`-prefixed topics. Idempotent. */
	join(ws: PresenceSocket, topic: string, platform: PresencePlatform): Promise<void>;
	/** Remove a connection from a specific topic, or all topics if omitted. */
	leave(ws: PresenceSocket, platform: PresencePlatform, topic?: string): Promise<void>;
	/** Send the current presence list without joining, then live diffs. */
	sync(ws: PresenceSocket, topic: string, platform: PresencePlatform): Promise<void>;
	/** The selected data of each user present on a topic. */
	list(topic: string): Promise<Record<string, any>[]>;
	/** The number of unique users present on a topic. */
	count(topic: string): Promise<number>;
	/** This instance's figures, from local state. */
	metrics(): PresenceMetrics;
	/** Emit every buffered `presence_diff` now. */
	flushDiffs(): void;
	/** Clear all presence state, local and shared. */
	clear(): Promise<void>;
	/** Stop the heartbeat and the subscriber. */
	destroy(): void;
	/** Ready-made WebSocket hooks: `export const { subscribe, unsubscribe, close } = presence.hooks;` */
	hooks: {
		subscribe(ws: PresenceSocket, topic: string, ctx: { platform: PresencePlatform }): Promise<void>;
		unsubscribe(ws: PresenceSocket, topic: string, ctx: { platform: PresencePlatform }): Promise<void>;
		close(ws: PresenceSocket, ctx: { platform: PresencePlatform }): Promise<void>;
	};
}

/** Create a presence tracker (synchronously; the backend is reached on first use). */
export function createPresence(client?: PresenceClient, options?: RedisPresenceOptions): RedisPresenceTracker;

/** An in-memory store several trackers can share. */
export function createMemoryStore(): MemoryStore;
