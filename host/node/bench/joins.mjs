// Joins per second through the Node API against the engine alone, in one
// run: the same joins (each user new to its topic, topics of 20 and of 200
// members, in batches awaited together as a busy server's hooks are), made
// through `createPresence` (facade, napi crossing, events back to
// JavaScript, diff buffer) and made by the engine inside Rust on its own
// hub. The difference per join is what crossing between JavaScript and Rust
// costs. CPU is the whole process's (every thread), per join.
//
// usage: node bench/joins.mjs [joins] [rounds]   (npm run bench)

import { benchEngineJoins } from '../native.js';
import { createPresence } from '../index.js';

const joins = Number(process.argv[2] ?? 20000);
const rounds = Number(process.argv[3] ?? 3);
const batch = 100;

const platform = { publish() {}, send() {} };
function socket(i) {
	const data = { id: `u${i}`, name: 'bench' };
	return { getUserData: () => data, subscribe() {}, unsubscribe() {} };
}

function cpuSeconds(since) {
	const { user, system } = process.cpuUsage(since);
	return (user + system) / 1e6;
}

async function throughNode(perTopic) {
	const presence = createPresence(null);
	const sockets = Array.from({ length: joins }, (_, i) => socket(i));
	await presence.count('warm-up');
	const cpu = process.cpuUsage();
	const started = process.hrtime.bigint();
	for (let at = 0; at < joins; at += batch) {
		const calls = [];
		for (let i = at; i < Math.min(at + batch, joins); i++) calls.push(presence.join(sockets[i], `room-${Math.floor(i / perTopic)}`, platform));
		await Promise.all(calls);
	}
	const seconds = Number(process.hrtime.bigint() - started) / 1e9;
	const used = cpuSeconds(cpu);
	presence.destroy();
	return { seconds, cpu: used };
}

async function engineAlone(perTopic) {
	const cpu = process.cpuUsage();
	const seconds = await benchEngineJoins(joins, perTopic, batch);
	return { seconds, cpu: cpuSeconds(cpu) };
}

/**
 * What the extension's API itself asks: a fresh `presence_state` object for
 * each joiner (the engine alone shares one frame per topic instead). The
 * same states the Node run builds (each topic filling from 1 to perTopic
 * members), parsed from their JSON, per join.
 */
function stateObjects(perTopic) {
	const states = [];
	const members = {};
	for (let i = 0; i < perTopic; i++) {
		members[`u${i}`] = { id: `u${i}`, name: 'bench' };
		states.push(JSON.stringify(members));
	}
	const started = process.hrtime.bigint();
	let kept;
	for (let i = 0; i < joins; i++) kept = JSON.parse(states[i % perTopic]);
	return { seconds: Number(process.hrtime.bigint() - started) / 1e9, kept };
}

const best = (runs) => runs.reduce((a, b) => (b.seconds < a.seconds ? b : a));
const us = (s) => ((s / joins) * 1e6).toFixed(1);

console.log(`${joins} joins per run, batches of ${batch}, best of ${rounds} alternating runs`);
console.log('| members per topic | engine alone | through Node | ratio | crossing per join | of which the joiner\'s state object | CPU per join (engine / Node) |');
console.log('|---|---|---|---|---|---|---|');
for (const perTopic of [20, 200]) {
	const engine = [];
	const node = [];
	for (let round = 0; round < rounds; round++) {
		engine.push(await engineAlone(perTopic));
		node.push(await throughNode(perTopic));
	}
	const [e, n] = [best(engine), best(node)];
	const states = best(Array.from({ length: rounds }, () => stateObjects(perTopic)));
	const rate = (r) => `${Math.round(joins / r.seconds).toLocaleString('en')} joins/s (${us(r.seconds)} µs)`;
	console.log(
		`| ${perTopic} | ${rate(e)} | ${rate(n)} | ${(e.seconds / n.seconds).toFixed(2)}× | ${us(n.seconds - e.seconds)} µs | ${us(states.seconds)} µs | ${us(e.cpu)} / ${us(n.cpu)} µs |`
	);
}
