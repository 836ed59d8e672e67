/**
 * The token gate in TypeScript, the same policy as examples/token-gate (Rust):
 * connections authenticate with a signed token, and topics are authorized by
 * the roles inside it.
 *
 * A token is `base64url(payload) "." base64url(HMAC-SHA256(secret, base64url(payload)))`
 * with payload `{"id": "...", "name": "...", "roles": ["..."], "exp": <unix ms>}`,
 * sent as `?token=…` or in the `presence_token` cookie.
 *
 * Topics: a topic without `:` (e.g. `lobby`) is open to every valid token; a
 * topic `team:red` needs the role `team:red` or `team:*`; the role `admin`
 * opens everything. A refusal is the machine word `FORBIDDEN_ROLE`, which a
 * current client receives in its `denials` store as it is.
 *
 * Build (from this folder): `npm install`, then `npm run build`.
 */
import { hmac } from '@noble/hashes/hmac.js';
import { sha256 } from '@noble/hashes/sha2.js';
import { defaults, fail, type Guest } from 'presence-guest';
import { nowMs } from 'presence:plugin/clock@0.1.1';
import type { Action, Connection, Denial, UpgradeRequest } from 'presence:plugin/types@0.1.1';

/** The signing key: the demo's. Put your own here before you build. */
const SECRET = 'dev-secret-change-me';

interface Payload {
  id: string;
  name?: string;
  roles?: string[];
  exp: number;
}

function deny(status: number, reason: string): never {
  const denial: Denial = { status, reason };
  fail(denial);
}

function fromBase64Url(text: string): Uint8Array {
  const binary = atob(text.replace(/-/g, '+').replace(/_/g, '/'));
  return Uint8Array.from(binary, (c) => c.charCodeAt(0));
}

/** Byte equality in time independent of where they differ. */
function sameBytes(a: Uint8Array, b: Uint8Array): boolean {
  if (a.length !== b.length) return false;
  let diff = 0;
  for (let i = 0; i < a.length; i++) diff |= a[i] ^ b[i];
  return diff === 0;
}

function token(request: UpgradeRequest): string | undefined {
  const fromQuery = new URLSearchParams(request.query).get('token');
  return fromQuery ?? request.cookies.find((c) => c.name === 'presence_token')?.value;
}

/** Check the signature and expiry; return the payload. */
function verify(token: string): Payload {
  const [body, signature, extra] = token.split('.');
  if (!body || !signature || extra !== undefined) deny(401, 'malformed token');
  let given: Uint8Array;
  try {
    given = fromBase64Url(signature);
  } catch {
    deny(401, 'malformed token signature');
  }
  const expected = hmac(sha256, new TextEncoder().encode(SECRET), new TextEncoder().encode(body));
  if (!sameBytes(given, expected)) deny(401, 'bad token signature');
  let payload: Payload;
  try {
    payload = JSON.parse(new TextDecoder().decode(fromBase64Url(body)));
  } catch {
    deny(401, 'token payload is not JSON');
  }
  if (typeof payload.exp !== 'number' || payload.exp <= Number(nowMs())) deny(401, 'token expired');
  if (typeof payload.id !== 'string') deny(401, 'token has no id');
  return payload;
}

function allowed(roles: string[], topic: string): boolean {
  if (roles.includes('admin')) return true;
  const colon = topic.indexOf(':');
  if (colon < 0) return true;
  return roles.includes(topic) || roles.includes(`${topic.slice(0, colon)}:*`);
}

export const guest = {
  authenticate(request: UpgradeRequest): string {
    const given = token(request);
    if (given === undefined) deny(401, 'missing token');
    const payload = verify(given);
    // `exp` in seconds: a session cookie from the auth preflight ends with the token.
    const exp = Math.floor(payload.exp / 1000);
    return JSON.stringify({ id: payload.id, name: payload.name ?? null, roles: payload.roles ?? null, exp });
  },

  authorize(conn: Connection, topic: string, action: Action): void {
    if (action === 'unsubscribe') return;
    const user = JSON.parse(conn.userData);
    const roles: string[] = Array.isArray(user.roles) ? user.roles.filter((r: unknown) => typeof r === 'string') : [];
    if (!allowed(roles, topic)) fail('FORBIDDEN_ROLE');
  },

  /** Others see the name, not the roles. */
  select(userData: string): string {
    const user = JSON.parse(userData);
    return JSON.stringify({ id: user.id ?? null, name: user.name ?? null });
  },

  onSubscribe: defaults.onSubscribe,
  onUnsubscribe: defaults.onUnsubscribe,
  onClose: defaults.onClose,
} satisfies Guest;
