// Loads the native addon: `PRESENCE_ADDON` if set, else the one `npm run
// build` put beside this file, else a build of the workspace (release, then
// debug), so tests and the benchmark run straight from a checkout.
import { existsSync } from 'node:fs';
import { dirname, join } from 'node:path';
import { fileURLToPath } from 'node:url';

const here = dirname(fileURLToPath(import.meta.url));
const candidates = [
	process.env.PRESENCE_ADDON,
	join(here, 'presence.node'),
	join(here, '..', '..', 'target', 'release', 'libpresence_node.so'),
	join(here, '..', '..', 'target', 'debug', 'libpresence_node.so')
].filter(Boolean);

const path = candidates.find((candidate) => existsSync(candidate));
if (!path) {
	throw new Error(
		'presence-uws: the native addon is not built; run `npm run build` in host/node ' +
			`(looked for ${candidates.join(', ')})`
	);
}
const addon = { exports: {} };
process.dlopen(addon, path);

export const { Tracker, MemoryStore, benchEngineJoins } = addon.exports;
