// Test support: doubles shaped like the extension's published ones
// (`testing/mock-platform.js` records calls; `testing/mock-ws.js` keeps a
// topic set and a closed flag), real redis-server processes on free ports,
// and polling with a deadline.

import { spawn } from 'node:child_process';
import { mkdtempSync, rmSync } from 'node:fs';
import net from 'node:net';
import { tmpdir } from 'node:os';
import path from 'node:path';

/** A platform that records what it is asked to do, as the extension's double does. */
export function mockPlatform() {
	const p = {
		published: [],
		sent: [],
		publish(topic, event, data, options) {
			p.published.push({ topic, event, data, options });
			return true;
		},
		send(ws, topic, event, data) {
			p.sent.push({ ws, topic, event, data });
			return 1;
		},
		reset() {
			p.published.length = 0;
			p.sent.length = 0;
		},
		/** The `presence_diff`s published on `topic`'s presence channel. */
		diffs(topic) {
			return p.published.filter((m) => m.topic === `__presence:${topic}` && m.event === 'presence_diff').map((m) => m.data);
		},
		/** The last `presence_state` sent to `ws` for `topic`. */
		stateOf(ws, topic) {
			return p.sent.filter((m) => m.ws === ws && m.topic === `__presence:${topic}` && m.event === 'presence_state').at(-1)?.data;
		}
	};
	return p;
}

/** A WebSocket as svelte-adapter-uws hands it to hooks: user data, topics, closed. */
export function mockWs(userData = {}) {
	const ws = {
		topics: new Set(),
		closed: false,
		getUserData: () => userData,
		subscribe(topic) {
			if (ws.closed) throw new Error('Invalid access of closed uWS.WebSocket/SSLWebSocket.');
			ws.topics.add(topic);
			return true;
		},
		unsubscribe(topic) {
			if (ws.closed) throw new Error('Invalid access of closed uWS.WebSocket/SSLWebSocket.');
			return ws.topics.delete(topic);
		},
		isSubscribed: (topic) => ws.topics.has(topic),
		close() {
			ws.closed = true;
		}
	};
	return ws;
}

/** Poll `check` until it returns something truthy, or fail naming `what`. */
export async function until(what, check, { timeout = 10000, every = 20 } = {}) {
	const deadline = Date.now() + timeout;
	let last;
	for (;;) {
		try {
			const value = await check();
			if (value) return value;
			last = value;
		} catch (error) {
			last = error;
		}
		if (Date.now() > deadline) throw new Error(`timed out after ${timeout} ms waiting for ${what} (last: ${last?.stack ?? JSON.stringify(last)})`);
		await new Promise((resolve) => setTimeout(resolve, every));
	}
}

/** A port nobody listens on now. */
export async function freePort() {
	const server = net.createServer();
	await new Promise((resolve) => server.listen(0, '127.0.0.1', resolve));
	const { port } = server.address();
	await new Promise((resolve) => server.close(resolve));
	return port;
}

/** One RESP command over a fresh connection; the raw reply text. */
export function redisCommand(port, ...args) {
	return new Promise((resolve, reject) => {
		const socket = net.connect(port, '127.0.0.1');
		let reply = '';
		socket.setTimeout(2000, () => socket.destroy(new Error(`redis on ${port} did not answer ${args[0]}`)));
		socket.on('error', reject);
		socket.on('data', (chunk) => {
			reply += chunk;
			if (reply.endsWith('\r\n')) {
				socket.end();
				resolve(reply);
			}
		});
		socket.write(`*${args.length}\r\n${args.map((a) => `$${Buffer.byteLength(String(a))}\r\n${a}\r\n`).join('')}`);
	});
}

/** A redis-server of its own on a free port, stopped by `stop()`. */
export async function startRedis() {
	const port = await freePort();
	const dir = mkdtempSync(path.join(tmpdir(), 'presence-node-redis-'));
	const child = spawn('redis-server', ['--port', String(port), '--bind', '127.0.0.1', '--save', '', '--appendonly', 'no', '--dir', dir], {
		stdio: 'ignore'
	});
	await until(`redis-server on ${port}`, async () => (await redisCommand(port, 'PING')).startsWith('+PONG'));
	return {
		port,
		url: `redis://127.0.0.1:${port}`,
		stop() {
			child.kill('SIGKILL');
			rmSync(dir, { recursive: true, force: true });
		}
	};
}

/** A Node child process running `fixtures/<name>.mjs`, its stdout lines as JSON messages. */
export function child(name, args, { env = {} } = {}) {
	const proc = spawn(process.execPath, [new URL(`./fixtures/${name}.mjs`, import.meta.url).pathname, ...args], {
		stdio: ['ignore', 'pipe', 'pipe'],
		env: { ...process.env, ...env }
	});
	const messages = [];
	let stderr = '';
	let pending = '';
	proc.stdout.on('data', (chunk) => {
		pending += chunk;
		let newline;
		while ((newline = pending.indexOf('\n')) >= 0) {
			const line = pending.slice(0, newline);
			pending = pending.slice(newline + 1);
			if (line.trim()) messages.push(JSON.parse(line));
		}
	});
	proc.stderr.on('data', (chunk) => (stderr += chunk));
	const exited = new Promise((resolve) => proc.on('exit', (code, signal) => resolve({ code, signal })));
	return { proc, messages, exited, stderr: () => stderr };
}
