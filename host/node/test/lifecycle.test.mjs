// The process around the addon: it exits when the application is done, on
// process.exit() with joins in flight, and survives worker threads that load
// the addon being created and torn down in a loop.

import { after, before, test } from 'node:test';
import assert from 'node:assert/strict';
import { child, startRedis } from './support.mjs';

let redis;
before(async () => {
	redis = await startRedis();
});
after(() => redis?.stop());

async function exits(name, args, what) {
	const run = child(name, args);
	const timer = setTimeout(() => run.proc.kill('SIGKILL'), 15000);
	const { code, signal } = await run.exited;
	clearTimeout(timer);
	assert.equal(signal, null, `${what}: killed by ${signal} (it did not exit by itself)\n${run.stderr()}`);
	return { code, messages: run.messages, stderr: run.stderr() };
}

for (const backend of ['memory', 'redis']) {
	const url = () => (backend === 'redis' ? redis.url : '-');

	test(`a done application exits, destroyed or not (${backend})`, async () => {
		for (const mode of ['destroy', 'keep']) {
			const { code, messages, stderr } = await exits('done', [url(), mode], `${mode}, ${backend}`);
			assert.equal(code, 0, stderr);
			assert.deepEqual(messages, [{ done: true }]);
		}
	});

	test(`process.exit() with joins in flight exits with its code (${backend})`, async () => {
		const args = backend === 'redis' ? [redis.url] : [];
		for (let i = 0; i < 5; i++) {
			const { code, stderr } = await exits('exit-mid-join', args, `exit ${i}`);
			assert.equal(code, 7, stderr);
			assert.doesNotMatch(stderr, /panicked|FATAL|Segmentation/, stderr);
		}
	});
}

test('worker threads running trackers, created and destroyed ×50: no crash, flat RSS', async () => {
	for (const url of [null, redis.url]) {
		const { code, messages, stderr } = await exits('workers', ['50', ...(url ? [url] : [])], `workers on ${url ?? 'memory'}`);
		assert.equal(code, 0, stderr);
		assert.equal(messages.length, 50, stderr);
		assert.ok(messages.every((m) => m.joined >= 50), JSON.stringify(messages.map((m) => m.joined)));
		// Worker heaps settle over the first rounds; after that nothing grows per round.
		const mb = (m) => m.rss / (1 << 20);
		const settled = mb(messages[9]);
		const last = mb(messages[49]);
		assert.ok(last - settled < 48, `RSS grew from ${settled.toFixed(0)} MB (round 10) to ${last.toFixed(0)} MB (round 50)`);
		console.log(`workers on ${url ? 'redis' : 'memory'}: RSS ${settled.toFixed(0)} MB after 10 rounds, ${last.toFixed(0)} MB after 50`);
	}
});
