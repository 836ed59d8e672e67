// A wasm plugin under a running Node tracker: its authorize denies with its
// reason, its select shapes what others see, and a new build dropped in its
// place serves the next call without a restart.

import { test } from 'node:test';
import assert from 'node:assert/strict';
import { copyFileSync, mkdtempSync, renameSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { createPresence } from '../index.js';
import { mockPlatform, mockWs, until } from './support.mjs';

const { GUEST_TOKEN_GATE, GUEST_SELECT } = process.env;
const skip = !(GUEST_TOKEN_GATE && GUEST_SELECT) && 'GUEST_TOKEN_GATE and GUEST_SELECT are not set (tests/node.rs builds them)';

/** Put `wasm` at `target` the way a deploy does: whole, in one rename. */
function deploy(wasm, target) {
	const staged = `${target}.next`;
	copyFileSync(wasm, staged);
	renameSync(staged, target);
}

test('a plugin decides, and is hot-reloaded under a running tracker', { skip }, async () => {
	const dir = mkdtempSync(path.join(tmpdir(), 'presence-node-plugin-'));
	const plugin = path.join(dir, 'policy.wasm');
	deploy(GUEST_TOKEN_GATE, plugin);
	const presence = createPresence(null, { plugin });
	const platform = mockPlatform();
	try {
		const staff = mockWs({ id: 's', name: 'Sam', color: 'red', roles: ['staff:*'] });
		const guest = mockWs({ id: 'g', name: 'Gil', color: 'blue', roles: [] });
		await presence.join(staff, 'staff:ops', platform);
		await assert.rejects(presence.join(guest, 'staff:ops', platform), /denied: topic "staff:ops" needs a role this token does not have/);
		assert.deepEqual(await presence.list('staff:ops'), [{ id: 's', name: 'Sam' }], 'token-gate shows the name, not the roles');
		assert.equal(guest.topics.size, 0, 'a denied join subscribed nothing');
		// The hooks route through the plugin too.
		await assert.rejects(presence.hooks.subscribe(guest, '__presence:staff:ops', { platform }), /denied/);

		deploy(GUEST_SELECT, plugin);
		const reloaded = Date.now();
		await until('the new plugin to serve', async () => {
			await presence.join(guest, 'staff:ops', platform).catch(() => {});
			return (await presence.count('staff:ops')) === 2;
		});
		console.log(`the new plugin served ${Date.now() - reloaded} ms after the rename`);
		await presence.join(mockWs({ id: 'n', name: 'Nia', color: 'green', secret: 1 }), 'open', platform);
		assert.deepEqual(await presence.list('open'), [{ id: 'n', name: 'Nia', color: 'green' }]);
	} finally {
		presence.destroy();
		rmSync(dir, { recursive: true, force: true });
	}
});

test('a plugin that is not there fails the first call with its path, not the process', async () => {
	const presence = createPresence(null, { plugin: '/nonexistent/policy.wasm' });
	await assert.rejects(presence.join(mockWs({ id: 'a' }), 'room', mockPlatform()), /\/nonexistent\/policy\.wasm/);
	presence.destroy();
});
