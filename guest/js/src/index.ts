/**
 * The JavaScript/TypeScript guest SDK: what the Rust SDK's `defaults` module
 * gives Rust guests, for guests built with `jco componentize`.
 *
 * - `defaults`: the built-in behaviour of every export, to reuse piecemeal.
 * - `fail(reason)`: end an export that returns a `result` with its `err`.
 * - `Guest`: the exports `wit/plugin.wit` asks for; `satisfies Guest` on the
 *   exported object makes a wrong signature a type error, not a load error.
 *
 * The `presence:plugin/*` modules are the host's imports; their types come
 * from `jco guest-types` (each guest generates them from `wit/`).
 */
import { join, leave, sync, unsync } from 'presence:plugin/presence@0.1.1';
import type { Connection, Json, UpgradeRequest } from 'presence:plugin/types@0.1.1';

/** The exports of the `plugin` world. */
export type Guest = typeof import('presence:plugin/guest@0.1.1');

/**
 * Fail the export with `reason` as its `err`: a string for `authorize`,
 * `select` and the hooks, a `{status, reason}` denial for `authenticate`.
 * (jco lowers a thrown value's `payload`; any other exception is a trap,
 * which the host turns into a denial and a fresh instance.)
 */
export function fail(reason: unknown): never {
  throw { payload: reason };
}

const PRESENCE = '__presence:';

/** The built-in behaviours, export by export. */
export const defaults = {
  /** The query string's pairs become the user data. */
  authenticate(request: UpgradeRequest): Json {
    return JSON.stringify(Object.fromEntries(new URLSearchParams(request.query)));
  },

  /** A regular topic joins; `__presence:<topic>` watches without joining; other `__` topics do nothing. */
  onSubscribe(conn: Connection, topic: string): void {
    if (topic.startsWith(PRESENCE)) sync(conn.id, topic.slice(PRESENCE.length));
    else if (!topic.startsWith('__')) join(conn.id, topic);
  },

  /** The reverse of `onSubscribe`. */
  onUnsubscribe(conn: Connection, topic: string): void {
    if (topic.startsWith(PRESENCE)) unsync(conn.id, topic.slice(PRESENCE.length));
    else if (!topic.startsWith('__')) leave(conn.id, topic);
  },

  /** Leave every topic. */
  onClose(conn: Connection): void {
    leave(conn.id, undefined);
  },
};
