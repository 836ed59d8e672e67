/**
 * The select plugin in TypeScript: the same policy as examples/select-guest
 * (Rust) and examples/select-py (Python). Others see a user's `id`, `name`
 * and `color`, nothing else; every other export keeps the built-in
 * behaviour.
 *
 * Build (from this folder): `npm install`, then `npm run build`, which
 * generates the types from ../../wit, type-checks, and writes
 * `select-js.wasm` with every optional WASI feature disabled.
 */
import { defaults, fail, type Guest } from 'presence-guest';
import type { Action, Connection } from 'presence:plugin/types@0.1.1';

export const guest = {
  authenticate: defaults.authenticate,

  authorize(_conn: Connection, _topic: string, _action: Action): void {},

  select(userData: string): string {
    let user;
    try {
      user = JSON.parse(userData);
    } catch (e) {
      fail(`user data is not JSON: ${e}`);
    }
    return JSON.stringify({ id: user.id ?? null, name: user.name ?? null, color: user.color ?? null });
  },

  onSubscribe: defaults.onSubscribe,
  onUnsubscribe: defaults.onUnsubscribe,
  onClose: defaults.onClose,
} satisfies Guest;
