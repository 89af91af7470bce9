// What the realtime-js tests share: waiting for what a client should see,
// and HS256 tokens signed with the server's JWT_SECRET, the way any backend
// would sign them.

import assert from 'node:assert/strict';
import { createHmac } from 'node:crypto';
import WebSocket from 'ws';
import * as early from 'realtime-js-2-8';
import * as latest from 'realtime-js-2-latest';

/** The pinned realtime-js 2.x clients: 2.8 speaks vsn 1.0.0 over the
 * `websocket` package's W3C client; the latest, vsn 2.0.0 over `ws`. */
export const REALTIME_JS_2 = [
  { name: '@supabase/realtime-js 2.8.4', RealtimeClient: early.RealtimeClient, options: {} },
  {
    name: '@supabase/realtime-js 2.119.1 (ws transport, vsn 2.0.0)',
    RealtimeClient: latest.RealtimeClient,
    options: { transport: WebSocket, vsn: '2.0.0' },
  },
];

export const sleep = (ms) => new Promise((r) => setTimeout(r, ms));

/** Waits until `cond()` holds, or fails with `what` after `ms`. */
export async function until(cond, what, ms = 10_000, every = 20) {
  const deadline = Date.now() + ms;
  while (!cond()) {
    if (Date.now() > deadline) assert.fail(`timed out after ${ms} ms waiting for ${what}`);
    await sleep(every);
  }
}

const b64url = (s) => Buffer.from(s).toString('base64url');

/** An HS256 JWT of `claims`. */
export function jwt(claims, secret = process.env.JWT_SECRET) {
  const head = b64url(JSON.stringify({ alg: 'HS256', typ: 'JWT' }));
  const body = b64url(JSON.stringify(claims));
  const sig = createHmac('sha256', secret).update(`${head}.${body}`).digest('base64url');
  return `${head}.${body}.${sig}`;
}

/** Now, in seconds since the epoch (a token's `exp`). */
export const now = () => Math.floor(Date.now() / 1000);
