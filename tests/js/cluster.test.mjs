// Many servers, one service: @supabase/realtime-js 2.x clients spread over
// the servers of one cluster (REALTIME_URLS, comma-separated socket URLs of
// servers on one PostgreSQL), driven by tests/tests/cluster.rs.
//
// Broadcast (socket and HTTP) crosses servers once each and in the sender's
// order; presence state, diffs and leaves cross servers; a broadcast over
// CLUSTER_MAX_MESSAGE_BYTES (set to MAX_MESSAGE_BYTES by the driver) is
// answered with an error and a reason, one over PostgreSQL's NOTIFY limit
// arrives whole; and, last, the server at KILL_PID (the last URL) is killed
// with SIGKILL: its client's presence leaves on the others within
// LEAVE_BOUND_MS.

import { after, describe, it } from 'node:test';
import assert from 'node:assert/strict';
import WebSocket from 'ws';
import * as latest from 'realtime-js-2-latest';
import * as early from 'realtime-js-2-8';
import { sleep, until } from './support.mjs';

const URLS = (process.env.REALTIME_URLS ?? '').split(',').filter(Boolean);
const KILL_PID = Number(process.env.KILL_PID ?? 0);
const LEAVE_BOUND_MS = Number(process.env.LEAVE_BOUND_MS ?? 0);
const MAX_MESSAGE_BYTES = Number(process.env.MAX_MESSAGE_BYTES ?? 0);
const DEBUG = !!process.env.REALTIME_JS_DEBUG;
const WAIT_MS = 10_000;
const APIKEY = 'anon-key-unchecked-with-secure-channels-off';

/** The `ws` transport, keeping what the server sent (to read error reasons). */
class RecordingWebSocket extends WebSocket {
  constructor(...args) {
    super(...args);
    this.received = [];
    this.on('message', (data) => this.received.push(data.toString()));
  }
}

const clients = [];

/** A client of server `i` (the newest realtime-js; `early` for 2.8.4). */
function client(i, { version = 'latest' } = {}) {
  const sockets = [];
  const transport = class extends RecordingWebSocket {
    constructor(...args) {
      super(...args);
      sockets.push(this);
    }
  };
  const options =
    version === 'latest' ? { transport, vsn: '2.0.0' } : {};
  const Client = version === 'latest' ? latest.RealtimeClient : early.RealtimeClient;
  const c = new Client(URLS[i], {
    ...options,
    heartbeatIntervalMs: 1_000,
    params: { apikey: APIKEY },
    logger: DEBUG ? (kind, msg, data) => console.error(`[${i}] ${kind}: ${msg}`, JSON.stringify(data)) : undefined,
  });
  c.sockets_ = sockets;
  clients.push(c);
  return c;
}

function subscribe(channel) {
  return new Promise((resolve, reject) => {
    const timer = setTimeout(() => reject(new Error(`${channel.topic}: no SUBSCRIBED`)), WAIT_MS);
    channel.subscribe((status, err) => {
      clearTimeout(timer);
      if (status === 'SUBSCRIBED') resolve();
      else reject(new Error(`${channel.topic}: ${status} ${err?.message ?? ''}`));
    });
  });
}

after(async () => {
  for (const c of clients) {
    await Promise.race([Promise.resolve(c.disconnect()), sleep(1_000)]);
  }
});

describe(`a cluster of ${URLS.length} servers`, () => {
  it('broadcast over sockets crosses servers, once per subscriber, in the sender order', async () => {
    assert.ok(URLS.length >= 2, 'REALTIME_URLS names at least two servers');
    const topic = 'cluster-bc';
    const got = URLS.map(() => []);
    const self = [];
    const channels = [];
    for (let i = 0; i < URLS.length; i++) {
      const ch = client(i)
        .channel(topic, { config: { broadcast: { self: i === 0, ack: true } } })
        .on('broadcast', { event: 'n' }, (m) => (i === 0 ? self : got[i]).push(m.payload.n));
      channels.push(ch);
    }
    // A 2.8.4 client on the second server, too.
    const old = [];
    const chOld = client(1, { version: 'early' })
      .channel(topic)
      .on('broadcast', { event: 'n' }, (m) => old.push(m.payload.n));
    await Promise.all([...channels, chOld].map(subscribe));
    const N = 200;
    const sent = [];
    for (let n = 0; n < N; n++) sent.push(channels[0].send({ type: 'broadcast', event: 'n', payload: { n } }));
    assert.deepEqual(new Set(await Promise.all(sent)), new Set(['ok']), 'ack: every one handed to the cluster');
    const want = Array.from({ length: N }, (_, n) => n);
    for (let i = 1; i < URLS.length; i++) {
      await until(() => got[i].length >= N, `${N} broadcasts on server ${i}`);
    }
    await until(() => old.length >= N && self.length >= N, 'the 2.8.4 client and the sender (self)');
    await sleep(300);
    for (let i = 1; i < URLS.length; i++) assert.deepEqual(got[i], want, `server ${i}: each once, in order`);
    assert.deepEqual(old, want, 'realtime-js 2.8.4 on server 1');
    assert.deepEqual(self, want, 'self: true gives the sender its own, once');

    // A reply from server 1: reaches server 0's member, not its own sender.
    const back = [];
    channels[0].on('broadcast', { event: 'back' }, (m) => back.push(m.payload));
    const gotBackOn1 = [];
    channels[1].on('broadcast', { event: 'back' }, (m) => gotBackOn1.push(m.payload));
    assert.equal(await channels[1].send({ type: 'broadcast', event: 'back', payload: { from: 1 } }), 'ok');
    await until(() => back.length >= 1, 'the reply on server 0');
    await sleep(300);
    assert.deepEqual(back, [{ from: 1 }]);
    assert.deepEqual(gotBackOn1, [], 'self: false excludes only the sender');
  });

  it('broadcast over HTTP (POST /api/broadcast and httpSend) crosses servers', async () => {
    const topic = 'cluster-http';
    const got = [];
    const listening = client(URLS.length - 1)
      .channel(topic)
      .on('broadcast', { event: 'rest' }, (m) => got.push(m.payload));
    await subscribe(listening);
    // Never subscribed on server 0: realtime-js posts to server 0's /api/broadcast.
    const sender = client(0).channel(topic);
    assert.equal(await sender.send({ type: 'broadcast', event: 'rest', payload: { via: 'http' } }), 'ok');
    assert.deepEqual(await sender.httpSend('rest', { via: 'httpSend' }), { success: true });
    await until(() => got.length >= 2, 'both HTTP broadcasts on the last server');
    assert.deepEqual(got, [{ via: 'http' }, { via: 'httpSend' }]);
  });

  it('presence: a newcomer gets the whole cluster state; tracks, untracks and disconnects cross servers', async () => {
    const topic = 'cluster-pr';
    const last = URLS.length - 1;
    // Channels read through presenceState() without presence listeners ask
    // for presence (realtime-js 2.1xx sends presence.enabled: false
    // otherwise, and then gets none, as from Supabase Realtime).
    const bob = client(1).channel(topic, { config: { presence: { key: 'bob', enabled: true } } });
    const carolClient = client(last);
    const carol = carolClient.channel(topic, { config: { presence: { key: 'carol', enabled: true } } });
    await Promise.all([subscribe(bob), subscribe(carol)]);
    assert.equal(await bob.track({ user: 'bob' }), 'ok');
    assert.equal(await carol.track({ user: 'carol' }), 'ok');

    // Alice joins on server 0 afterwards: her first state has both.
    const events = [];
    const alice = client(0)
      .channel(topic, { config: { presence: { key: 'alice' } } })
      .on('presence', { event: 'join' }, (e) => events.push(e))
      .on('presence', { event: 'leave' }, (e) => events.push(e));
    await subscribe(alice);
    await until(
      () => 'bob' in alice.presenceState() && 'carol' in alice.presenceState(),
      'bob and carol in the newcomer state',
    );
    assert.equal(alice.presenceState().bob[0].user, 'bob');
    assert.equal(alice.presenceState().carol[0].user, 'carol');

    // Alice tracks: bob (server 1) and carol (another server) see her.
    assert.equal(await alice.track({ user: 'alice' }), 'ok');
    await until(() => 'alice' in bob.presenceState() && 'alice' in carol.presenceState(), 'alice everywhere');

    // Bob untracks: a leave on the other servers.
    assert.equal(await bob.untrack(), 'ok');
    await until(() => events.some((e) => e.event === 'leave' && e.key === 'bob'), 'the leave of bob on server 0');
    await until(() => !('bob' in carol.presenceState()), 'bob gone on the last server');

    // Carol's socket goes away without leaving: a leave everywhere.
    await carolClient.disconnect();
    await until(() => events.some((e) => e.event === 'leave' && e.key === 'carol'), 'the leave of carol on server 0');
    await until(() => !('carol' in bob.presenceState()), 'carol gone on server 1');
    assert.deepEqual(Object.keys(alice.presenceState()), ['alice']);
  });

  it('a broadcast over CLUSTER_MAX_MESSAGE_BYTES is refused with a reason; one over the NOTIFY limit arrives whole', async () => {
    assert.ok(MAX_MESSAGE_BYTES > 9000, 'MAX_MESSAGE_BYTES is set above one NOTIFY');
    const topic = 'cluster-big';
    const got = [];
    const a = client(0);
    const chA = a.channel(topic, { config: { broadcast: { ack: true } } });
    const chB = client(1)
      .channel(topic)
      .on('broadcast', { event: 'big' }, (m) => got.push(m.payload.text));
    await Promise.all([subscribe(chA), subscribe(chB)]);
    // Over 8000 bytes (cut into pieces on the bus), multi-byte text.
    const text = 'é€'.repeat(2_000) + "'\\\"" + 'x'.repeat(2_000);
    assert.equal(await chA.send({ type: 'broadcast', event: 'big', payload: { text } }), 'ok');
    await until(() => got.length >= 1, 'the large broadcast on server 1');
    assert.equal(got[0], text);

    // Over the limit: the ack is an error, and the reply says why.
    const huge = 'y'.repeat(MAX_MESSAGE_BYTES);
    assert.equal(await chA.send({ type: 'broadcast', event: 'big', payload: { text: huge } }), 'error');
    const replies = a.sockets_.flatMap((s) => s.received).filter((f) => f.includes('CLUSTER_MAX_MESSAGE_BYTES'));
    assert.equal(replies.length, 1, 'one error reply naming CLUSTER_MAX_MESSAGE_BYTES');
    // Over HTTP: refused too, not dropped.
    const rest = client(0).channel(topic);
    assert.equal(await rest.send({ type: 'broadcast', event: 'big', payload: { text: huge } }), 'error');
    await sleep(500);
    assert.equal(got.length, 1, 'nothing over the limit arrived');
  });

  it('a server killed with SIGKILL: its clients presences leave on the others within the bound', async () => {
    assert.ok(KILL_PID > 0 && LEAVE_BOUND_MS > 0, 'KILL_PID and LEAVE_BOUND_MS are set');
    const topic = 'cluster-kill';
    const last = URLS.length - 1;
    const watchers = [];
    for (let i = 0; i < last; i++) {
      const ch = client(i).channel(topic, { config: { presence: { key: `watcher${i}`, enabled: true } } });
      watchers.push(ch);
    }
    const doomedClient = client(last);
    const doomed = doomedClient.channel(topic, { config: { presence: { key: 'doomed' } } });
    await Promise.all([...watchers, doomed].map(subscribe));
    assert.equal(await doomed.track({ user: 'doomed' }), 'ok');
    await until(() => watchers.every((w) => 'doomed' in w.presenceState()), 'the doomed presence everywhere');
    // The client must not come back through another server (one service
    // would route it there): it only retries its own, dead, server.
    process.kill(KILL_PID, 'SIGKILL');
    const killed = Date.now();
    await until(
      () => watchers.every((w) => !('doomed' in w.presenceState())),
      'the dead server presences to leave',
      LEAVE_BOUND_MS + 5_000,
    );
    const took = Date.now() - killed;
    console.log(`# presences of the killed server left after ${took} ms (bound ${LEAVE_BOUND_MS} ms)`);
    assert.ok(took <= LEAVE_BOUND_MS, `left after ${took} ms, over the bound of ${LEAVE_BOUND_MS} ms`);
    doomedClient.disconnect();
  });
});
