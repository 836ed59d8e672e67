// One fleet on a real redis-server: every form of `client`, Node processes
// seeing each other, a killed process's users leaving, and Node instances
// sharing presence with presenced.

import { after, before, test } from 'node:test';
import assert from 'node:assert/strict';
import { spawn } from 'node:child_process';
import WebSocket from 'ws';
import { createPresence } from '../index.js';
import { child, freePort, mockPlatform, mockWs, redisCommand, startRedis, until } from './support.mjs';

let redis;
before(async () => {
	redis = await startRedis();
});
after(() => redis?.stop());

const fast = { heartbeat: 200, ttl: 2 };

test('every form of client reaches the same Redis, under its key prefix', async () => {
	const { port, url } = redis;
	const clients = [
		[url, 'presence{'],
		[{ url, keyPrefix: 'app1:' }, 'app1:presence{'],
		// An ioredis instance: its settings are in `.options`.
		[{ options: { host: '127.0.0.1', port, db: 0, keyPrefix: 'app2:' } }, 'app2:presence{'],
		// The extension's client: ioredis in `.redis`, and its prefix.
		[{ redis: { options: { host: '127.0.0.1', port } }, keyPrefix: 'app3:', key: (k) => `app3:${k}` }, 'app3:presence{']
	];
	for (const [client, prefix] of clients) {
		const presence = createPresence(client, fast);
		await presence.join(mockWs({ id: 'a' }), 'shapes', mockPlatform());
		assert.equal(await presence.count('shapes'), 1);
		const keys = await redisCommand(port, 'KEYS', `${prefix}*`);
		assert.match(keys, /shapes/, `${JSON.stringify(client)}: ${keys}`);
		await presence.clear();
		presence.destroy();
	}
});

test('two Node processes on one Redis see each other, and a killed one’s users leave', async () => {
	const presence = createPresence(redis.url, fast);
	const platform = mockPlatform();
	await presence.sync(mockWs({ id: 'watcher' }), 'fleet', platform);
	const other = child('instance', [redis.url, 'bob', 'fleet', '200', '2']);
	try {
		await until('the other process to join', () => other.messages.find((m) => m.joined));
		await presence.join(mockWs({ id: 'alice', name: 'alice' }), 'fleet', platform);
		await until('this process to hear bob', () => platform.diffs('fleet').some((d) => d.joins.bob));
		await until('the other process to hear alice', () => other.messages.some((m) => m.diff?.joins.alice));
		assert.equal(await presence.count('fleet'), 2);

		other.proc.kill('SIGKILL');
		const killed = Date.now();
		await until('bob to leave after his process was killed', () => platform.diffs('fleet').some((d) => d.leaves.bob), { timeout: 6000 });
		const took = Date.now() - killed;
		console.log(`bob left ${took} ms after his process was killed (ttl 2 s, heartbeat 0.2 s)`);
		assert.ok(took <= 2200 + 500, `bob left ${took} ms after the kill (ttl 2 s + heartbeat 0.2 s)`);
		assert.deepEqual(await presence.list('fleet'), [{ id: 'alice', name: 'alice' }]);
	} finally {
		other.proc.kill('SIGKILL');
		await presence.clear();
		presence.destroy();
	}
});

test('a Node instance and presenced on one Redis share their users', { skip: !process.env.PRESENCED && 'PRESENCED is not set' }, async () => {
	const port = await freePort();
	const server = spawn(process.env.PRESENCED, ['--listen', `127.0.0.1:${port}`, '--redis', redis.url, '--heartbeat-ms', '200', '--ttl-s', '2'], {
		stdio: ['ignore', 'ignore', 'pipe']
	});
	let log = '';
	server.stderr.on('data', (chunk) => (log += chunk));
	const presence = createPresence(redis.url, fast);
	const platform = mockPlatform();
	let socket;
	try {
		await until('presenced to be ready', async () => (await fetch(`http://127.0.0.1:${port}/readyz`)).ok, { timeout: 15000 });
		socket = new WebSocket(`ws://127.0.0.1:${port}/ws?id=carol&name=Carol`);
		const frames = [];
		socket.on('message', (data) => frames.push(JSON.parse(data.toString())));
		await new Promise((resolve, reject) => socket.once('open', resolve).once('error', reject));
		// A 0.4 client: it joins `mixed` and watches it.
		socket.send(JSON.stringify({ type: 'subscribe-batch', topics: ['mixed', '__presence:mixed'] }));
		await until('Node to count carol', async () => (await presence.count('mixed')) === 1);
		await presence.join(mockWs({ id: 'dave', name: 'Dave' }), 'mixed', platform);
		assert.deepEqual(Object.keys(platform.stateOf(platform.sent.at(-1).ws, 'mixed')).sort(), ['carol', 'dave']);
		await until('the presenced tab to hear dave', () => frames.some((f) => JSON.stringify(f.data ?? {}).includes('"dave"')));
		socket.close();
		await until('Node to hear carol leave', () => platform.diffs('mixed').some((d) => d.leaves.carol));
	} catch (error) {
		error.message += `\npresenced said:\n${log}`;
		throw error;
	} finally {
		socket?.terminate();
		server.kill('SIGKILL');
		await presence.clear();
		presence.destroy();
	}
});
