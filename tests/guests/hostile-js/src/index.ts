/**
 * A hostile JavaScript plugin for sandbox tests, the JS twin of
 * tests/guests/hostile. Its `select` misbehaves as the user data's `attack`
 * field says (`loop`, `memory`, `recursion`, `throw`, `throw-string`,
 * `huge`, `not-json`, `host-spam`); without one it answers like a normal
 * plugin. Its `authorize` refuses `word-*` topics with a machine word and
 * throws an Error on `throw-*` topics; its `authenticate` throws on
 * `?throw=1`.
 */
import { log } from 'presence:plugin/log@0.1.1';
import { get } from 'presence:plugin/kv@0.1.1';
import { join, leave } from 'presence:plugin/presence@0.1.1';
import type { Action, Connection, UpgradeRequest } from 'presence:plugin/types@0.1.1';

type Guest = typeof import('presence:plugin/guest@0.1.1');

function recurse(depth: number): number {
  return recurse(depth + 1) + 1;
}

export const guest = {
  authenticate(request: UpgradeRequest): string {
    if (request.query.includes('throw=1')) throw new Error('authenticate throws on purpose: secret internals');
    return JSON.stringify({ id: 'anonymous' });
  },

  authorize(_conn: Connection, topic: string, _action: Action): void {
    if (topic.startsWith('word-')) throw { payload: 'ROOM_FULL' };
    if (topic.startsWith('throw-')) throw new TypeError('authorize throws on purpose');
  },

  select(userData: string): string {
    const user = JSON.parse(userData);
    switch (user.attack) {
      case 'loop':
        for (;;) {}
      case 'memory': {
        const hoard: Uint8Array[] = [];
        for (;;) hoard.push(new Uint8Array(8 << 20).fill(hoard.length));
      }
      case 'recursion':
        return String(recurse(0));
      case 'throw':
        throw new Error('select throws on purpose');
      case 'throw-string':
        throw 'select throws a string on purpose';
      case 'huge':
        return JSON.stringify('x'.repeat(2 << 20));
      case 'not-json':
        return 'this is not json';
      case 'host-spam':
        for (let i = 0; i < 1_000_000; i++) {
          log('info', `host call ${i}`);
          get('k');
        }
        return '{}';
      default:
        return JSON.stringify({ id: user.id ?? null, hostile: true });
    }
  },

  onSubscribe(conn: Connection, topic: string): void {
    join(conn.id, topic);
  },
  onUnsubscribe(conn: Connection, topic: string): void {
    leave(conn.id, topic);
  },
  onClose(conn: Connection): void {
    leave(conn.id, undefined);
  },
} satisfies Guest;
