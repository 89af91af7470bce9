// The real @supabase/realtime-js 2.x clients (two versions, pinned in
// package.json under npm aliases) against the realtime server, under Node's
// own test runner. Driven by tests/tests/realtime_js.rs, which starts
// PostgreSQL with the tables below (REPLICA IDENTITY FULL) and a publication
// naming all but `unpublished`, starts the server, and passes:
//   REALTIME_URL  ws://127.0.0.1:PORT/socket  (the client appends /websocket)
//   DATABASE_URL  postgres://postgres@127.0.0.1:PORT/postgres
//
// For each version TAG in VERSIONS (2_8, 2_latest):
//   CREATE TABLE messages_TAG (id bigint PRIMARY KEY, room int, body text);
//   CREATE TABLE typed_TAG (id bigint PRIMARY KEY, i4 int, i8 bigint, num numeric,
//     f8 float8, flag bool, off bool, doc jsonb, tags text[], nums int[],
//     ts timestamptz, label text, nothing text);
// plus `unpublished (id bigint PRIMARY KEY)`, in no publication.
//
// Every assertion is on what the app sees through realtime-js's own API: the
// subscribe callback's status, the payloads handed to `.on(...)` callbacks,
// `send()`'s result, and `presenceState()`. The newest client goes through a
// recording `ws` transport, so that a failure shows the frames it sent and how
// the server closed the socket.
//
// Note: with vsn 2.0.0 the newest client sends `channel.send({type:
// 'broadcast'})` as a BINARY frame (its serializer's "user broadcast push",
// kind 3: [3, len(join_ref), len(ref), len(topic), len(event), len(meta),
// encoding (1 = JSON, 0 = binary)] + join_ref + ref + topic + event + meta +
// payload), and reads a broadcast with a binary payload from a kind 4 frame
// ([4, len(topic), len(event), len(meta), encoding] + topic + event + meta +
// payload), handing the app an ArrayBuffer.

import { after, before, describe, it } from 'node:test';
import assert from 'node:assert/strict';
import pg from 'pg';
import WebSocket from 'ws';
import * as early from 'realtime-js-2-8';
import * as latest from 'realtime-js-2-latest';
import { sleep, until } from './support.mjs';

const REALTIME_URL = process.env.REALTIME_URL;
const DATABASE_URL = process.env.DATABASE_URL;
const DEBUG = !!process.env.REALTIME_JS_DEBUG;
// Short, but not so short that a busy machine makes the client give up: both
// clients close the socket themselves ("heartbeat timeout") when the reply to
// one heartbeat has not arrived by the time the next one is due.
const HEARTBEAT_MS = 1_000;
const WAIT_MS = 10_000;
const APIKEY = 'anon-key-unchecked-with-secure-channels-off';

/**
 * The `ws` transport, recording what the client puts on the wire and how the
 * socket closed, so that a protocol mismatch shows in the failure message.
 */
class RecordingWebSocket extends WebSocket {
  constructor(...args) {
    super(...args);
    this.sent = [];
    // Text frames received, parsed ([join_ref, ref, topic, event, payload]
    // on vsn 2.0.0, {topic, event, payload, ref} on 1.0.0); binary frames as
    // their kind.
    this.received = [];
    this.closed = null;
    this.on('close', (code, reason) => (this.closed = { code, reason: reason.toString() }));
    this.on('message', (data, isBinary) => {
      if (isBinary) return this.received.push({ binaryKind: new Uint8Array(data)[0] });
      const m = JSON.parse(data.toString());
      this.received.push(Array.isArray(m) ? { topic: m[2], event: m[3], payload: m[4] } : m);
    });
  }
  send(data, ...rest) {
    this.sent.push(
      typeof data === 'string'
        ? { text: data }
        : {
            binary: Buffer.from(data instanceof ArrayBuffer ? new Uint8Array(data) : data)
              .toString('latin1')
              .replace(/[^\x20-\x7e]/g, (c) => `\\x${c.charCodeAt(0).toString(16).padStart(2, '0')}`),
          },
    );
    return super.send(data, ...rest);
  }
}

/** What the client's own sockets sent and how they closed. */
function wire(client) {
  return (client.sockets_ ?? []).map((s) => ({
    url: s.url,
    sent: s.sent.filter((f) => !f.text?.includes('"phoenix"')).slice(-3),
    closed: s.closed,
  }));
}

const VERSIONS = [
  {
    tag: '2_8',
    name: '@supabase/realtime-js 2.8.4',
    RealtimeClient: early.RealtimeClient,
    // 2.8 speaks vsn 1.0.0 only, over the `websocket` package's W3C client.
    options: {},
  },
  {
    tag: '2_latest',
    name: '@supabase/realtime-js 2.119.1 (ws transport, vsn 2.0.0)',
    RealtimeClient: latest.RealtimeClient,
    options: { transport: RecordingWebSocket, vsn: '2.0.0' },
    // The same client with the JSON serializer, which it also allows.
    vsn1: { transport: RecordingWebSocket, vsn: '1.0.0' },
  },
];

function newClient(version, options = version.options, url = REALTIME_URL) {
  const log = [];
  const sockets = [];
  let transport = options?.transport;
  if (transport === RecordingWebSocket) {
    // A class per client, to tell its sockets from the others'.
    transport = class extends RecordingWebSocket {
      constructor(...args) {
        super(...args);
        sockets.push(this);
      }
    };
  }
  const client = new version.RealtimeClient(url, {
    ...options,
    ...(transport ? { transport } : {}),
    heartbeatIntervalMs: HEARTBEAT_MS,
    params: { apikey: APIKEY },
    logger: (kind, msg, data) => {
      log.push({ kind, msg, data });
      if (DEBUG) console.error(`[${version.tag}] ${kind}: ${msg}`, JSON.stringify(data));
    },
  });
  client.sockets_ = sockets;
  return client;
}

/** Subscribes; resolves once the callback reports SUBSCRIBED, fails on any other status. */
function subscribe(channel) {
  const statuses = [];
  return new Promise((resolve, reject) => {
    const timer = setTimeout(
      () => reject(new Error(`${channel.topic}: no SUBSCRIBED within ${WAIT_MS} ms (saw ${statuses})`)),
      WAIT_MS,
    );
    channel.subscribe((status, err) => {
      statuses.push(err ? `${status}: ${err.message}` : status);
      clearTimeout(timer);
      if (status === 'SUBSCRIBED') resolve(statuses);
      else reject(new Error(`${channel.topic}: ${statuses.join(' / ')}`));
    });
  });
}

/** Leaves every channel and closes the socket, quickly. */
async function closeClient(client) {
  if (!client) return;
  await Promise.race([client.removeAllChannels(), sleep(2_000)]);
  await Promise.race([Promise.resolve(client.disconnect()), sleep(2_000)]);
}

const ISO = /^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d(\.\d+)?(Z|[+-]\d\d:?\d\d)$/;

for (const version of VERSIONS) {
  const { tag } = version;
  const MESSAGES = `messages_${tag}`;
  const TYPED = `typed_${tag}`;

  describe(version.name, () => {
    let db;
    const clients = [];
    const client = (options, url) => {
      const c = newClient(version, options, url);
      clients.push(c);
      return c;
    };

    before(async () => {
      assert.ok(REALTIME_URL, 'REALTIME_URL is set');
      assert.ok(DATABASE_URL, 'DATABASE_URL is set');
      db = new pg.Client({ connectionString: DATABASE_URL });
      await db.connect();
    });

    after(async () => {
      await Promise.all(clients.map(closeClient));
      await db?.end();
    });

    it('postgres_changes: * and INSERT, with and without filter, every filter operator', async () => {
      const c = client();
      const got = {}; // channel name -> [[eventType, id], ...]
      const payloads = {}; // channel name -> full payloads
      const system = {}; // channel name -> system payloads
      const channels = {};
      const listen = (name, bindings) => {
        const ch = c.channel(`pg-${tag}-${name}`);
        got[name] = [];
        payloads[name] = [];
        system[name] = [];
        for (const [key, event, filter] of bindings) {
          got[key] = got[key] ?? [];
          payloads[key] = payloads[key] ?? [];
          ch.on(
            'postgres_changes',
            { event, schema: 'public', table: MESSAGES, ...(filter ? { filter } : {}) },
            (p) => {
              got[key].push([p.eventType, p.eventType === 'DELETE' ? p.old.id : p.new.id]);
              payloads[key].push(p);
            },
          );
        }
        ch.on('system', {}, (p) => system[name].push(p));
        channels[name] = ch;
      };
      // One channel with two bindings (ids 1 and 2): '*' and INSERT, no filter.
      listen('all', [
        ['all*', '*'],
        ['allINSERT', 'INSERT'],
      ]);
      const OPS = {
        eq: 'room=eq.2',
        neq: 'room=neq.2',
        lt: 'room=lt.2',
        lte: 'room=lte.2',
        gt: 'room=gt.2',
        gte: 'room=gte.2',
        in: 'room=in.(1,3)',
      };
      for (const [op, filter] of Object.entries(OPS)) listen(op, [[op, '*', filter]]);
      listen('insertEq1', [['insertEq1', 'INSERT', 'room=eq.1']]);

      const statuses = await Promise.all(Object.values(channels).map((ch) => subscribe(ch)));
      for (const s of statuses) assert.deepEqual(s, ['SUBSCRIBED']);
      // The server confirms each channel's bindings with a `system` push.
      await until(() => Object.values(system).every((s) => s.length > 0), 'system pushes');
      for (const [name, s] of Object.entries(system)) {
        assert.equal(s.length, 1, `${name}: one system push`);
        assert.equal(s[0].extension, 'postgres_changes');
        assert.equal(s[0].status, 'ok', `${name}: ${JSON.stringify(s[0])}`);
        assert.equal(s[0].channel, `pg-${tag}-${name}`);
        assert.equal(typeof s[0].message, 'string');
      }

      const startedAt = Date.now();
      await db.query(`INSERT INTO ${MESSAGES} VALUES (1, 1, 'one')`);
      await db.query(`INSERT INTO ${MESSAGES} VALUES (2, 2, 'two'), (3, 3, 'three')`);
      await db.query(`UPDATE ${MESSAGES} SET body = 'TWO' WHERE id = 2`);
      await db.query(`DELETE FROM ${MESSAGES} WHERE id = 3`);

      const I = (id) => ['INSERT', id];
      const U = (id) => ['UPDATE', id];
      const D = (id) => ['DELETE', id];
      const expected = {
        'all*': [I(1), I(2), I(3), U(2), D(3)],
        allINSERT: [I(1), I(2), I(3)],
        eq: [I(2), U(2)],
        neq: [I(1), I(3), D(3)],
        lt: [I(1)],
        lte: [I(1), I(2), U(2)],
        gt: [I(3), D(3)],
        gte: [I(2), I(3), U(2), D(3)],
        in: [I(1), I(3), D(3)],
        insertEq1: [I(1)],
      };
      await until(
        () => Object.entries(expected).every(([k, v]) => got[k].length >= v.length),
        `changes: ${JSON.stringify(got)}`,
      ).catch(() => {});
      await sleep(500); // anything extra would have arrived by now
      for (const [k, v] of Object.entries(expected)) {
        assert.deepEqual(got[k], v, `binding ${k} (${OPS[k] ?? 'no filter'})`);
      }

      // The whole payloads, as realtime-js hands them to the app.
      const [ins1, , , upd2, del3] = payloads['all*'];
      for (const p of payloads['all*']) {
        assert.equal(p.schema, 'public');
        assert.equal(p.table, MESSAGES);
        assert.match(p.commit_timestamp, ISO);
        const t = Date.parse(p.commit_timestamp);
        assert.ok(t >= startedAt - 5_000 && t <= Date.now() + 5_000, `commit_timestamp ${p.commit_timestamp}`);
        assert.equal(p.errors, null);
      }
      assert.deepEqual(
        { eventType: ins1.eventType, new: ins1.new, old: ins1.old },
        { eventType: 'INSERT', new: { id: 1, room: 1, body: 'one' }, old: {} },
      );
      assert.deepEqual(
        { eventType: upd2.eventType, new: upd2.new, old: upd2.old },
        { eventType: 'UPDATE', new: { id: 2, room: 2, body: 'TWO' }, old: { id: 2, room: 2, body: 'two' } },
      );
      assert.deepEqual(
        { eventType: del3.eventType, new: del3.new, old: del3.old },
        { eventType: 'DELETE', new: {}, old: { id: 3, room: 3, body: 'three' } },
      );
      // The INSERT binding on the same channel got the same INSERT payload.
      assert.deepEqual(payloads.allINSERT[0], ins1);
    });

    it('postgres_changes: values arrive typed (numbers, booleans, json, arrays)', async () => {
      const c = client();
      const got = [];
      const ch = c
        .channel(`typed-${tag}`)
        .on('postgres_changes', { event: '*', schema: 'public', table: TYPED }, (p) => got.push(p));
      await subscribe(ch);

      await db.query(
        `INSERT INTO ${TYPED} VALUES (1, 42, 1234567890123, 12.5, -0.25, true, false,
           '{"a": 1, "b": [true, null, "x"], "c": {"d": "e"}}', ARRAY['red', 'green'],
           ARRAY[1, 2, 3], '2024-01-02 03:04:05.123456+00', 'text', NULL)`,
      );
      await db.query(`UPDATE ${TYPED} SET flag = false, doc = '[1, 2]', nums = '{}' WHERE id = 1`);
      await until(() => got.length >= 2, 'INSERT and UPDATE on the typed table');

      const row = {
        id: 1,
        i4: 42,
        i8: 1234567890123,
        num: 12.5,
        f8: -0.25,
        flag: true,
        off: false,
        doc: { a: 1, b: [true, null, 'x'], c: { d: 'e' } },
        tags: ['red', 'green'],
        nums: [1, 2, 3],
        label: 'text',
        nothing: null,
      };
      const [ins, upd] = got;
      assert.equal(ins.eventType, 'INSERT');
      const { ts, ...rest } = ins.new;
      assert.deepEqual(rest, row);
      assert.equal(typeof ins.new.i8, 'number');
      assert.equal(typeof ins.new.flag, 'boolean');
      assert.equal(typeof ins.new.doc, 'object');
      assert.ok(Array.isArray(ins.new.nums));
      assert.equal(typeof ts, 'string');
      assert.equal(new Date(ts).toISOString(), '2024-01-02T03:04:05.123Z');

      assert.equal(upd.eventType, 'UPDATE');
      assert.deepEqual(upd.old, ins.new, 'the whole old row (REPLICA IDENTITY FULL)');
      assert.deepEqual(upd.new, { ...ins.new, flag: false, doc: [1, 2], nums: [] });
    });

    it('postgres_changes on an unpublished table or a bad filter: the server says why', async () => {
      const c = client();
      const cases = {
        unpublished: { event: '*', schema: 'public', table: 'unpublished' },
        badColumn: { event: 'INSERT', schema: 'public', table: MESSAGES, filter: 'nosuch=eq.1' },
        badValue: { event: 'INSERT', schema: 'public', table: MESSAGES, filter: 'room=eq.notanumber' },
      };
      const seen = {};
      await Promise.all(
        Object.entries(cases).map(async ([name, binding]) => {
          const ch = c.channel(`bad-${tag}-${name}`);
          const system = [];
          const statuses = [];
          ch.on('postgres_changes', binding, () => {}).on('system', {}, (p) => system.push(p));
          ch.subscribe((status, err) => statuses.push(err ? `${status}: ${err.message}` : status));
          await until(() => system.length > 0, `${name}: a system push`);
          await sleep(200);
          seen[name] = { system, statuses };
        }),
      );
      for (const [name, { system, statuses }] of Object.entries(seen)) {
        assert.equal(system.length, 1, name);
        assert.equal(system[0].extension, 'postgres_changes');
        assert.equal(system[0].status, 'error', `${name}: ${JSON.stringify(system[0])}`);
        assert.equal(system[0].channel, `bad-${tag}-${name}`);
        // Both clients hand the error to a `system` listener only: the join
        // itself was answered ok, so the subscribe callback says SUBSCRIBED.
        assert.deepEqual(statuses, ['SUBSCRIBED'], name);
      }
      assert.match(seen.unpublished.system[0].message, /unpublished/);
      assert.match(seen.unpublished.system[0].message, /publication/);
      assert.match(seen.badColumn.system[0].message, /nosuch/);
      assert.match(seen.badValue.system[0].message, /notanumber/);
    });

    const broadcastTest = (label, options) =>
      it(`broadcast between two clients, with self and ack${label}`, async () => {
        const a = client(options);
        const b = client(options);
        const topic = `room-bc-${tag}${label ? '-vsn1' : ''}`;
        const gotA = [];
        const gotB = [];
        const otherB = [];
        const chA = a
          .channel(topic, { config: { broadcast: { self: true, ack: true } } })
          .on('broadcast', { event: 'ping' }, (m) => gotA.push(m))
          .on('broadcast', { event: 'pong' }, (m) => gotA.push(m));
        const chB = b
          .channel(topic)
          .on('broadcast', { event: 'ping' }, (m) => gotB.push(m))
          .on('broadcast', { event: 'pong' }, (m) => otherB.push(m));
        await Promise.all([subscribe(chA), subscribe(chB)]);

        // ack: send resolves 'ok' once the server acknowledged it (it would
        // be 'timed out' without the reply).
        const sent = chA.send({ type: 'broadcast', event: 'ping', payload: { n: 1, s: 'hi', o: { x: [1] } } });
        const ping = { type: 'broadcast', event: 'ping', payload: { n: 1, s: 'hi', o: { x: [1] } } };
        await until(
          () => (gotB.length >= 1 && gotA.length >= 1) || wire(a).some((s) => s.closed),
          'the ping at both ends',
        ).catch(() => {});
        assert.deepEqual(
          wire(a).filter((s) => s.closed),
          [],
          `the server kept the sender's socket open; the client sent and the server closed: ${JSON.stringify(wire(a))}`,
        );
        assert.equal(await sent, 'ok');
        await until(() => gotB.length >= 1 && gotA.length >= 1, 'the ping at both ends');
        assert.deepEqual(gotB, [ping], 'the other client receives it');
        assert.deepEqual(gotA, [ping], 'self: the sender receives its own');

        // Without self, the sender does not; the other event's listener only.
        assert.equal(await chB.send({ type: 'broadcast', event: 'pong', payload: { n: 2 } }), 'ok');
        await until(() => gotA.length >= 2, 'the pong at A');
        await sleep(300);
        assert.deepEqual(gotA[1], { type: 'broadcast', event: 'pong', payload: { n: 2 } });
        assert.deepEqual(otherB, [], 'no self without config.broadcast.self');
        assert.equal(gotB.length, 1, 'the ping listener did not get the pong');
        assert.ok(a.isConnected() && b.isConnected(), 'both sockets still open');
      });
    broadcastTest('', undefined);
    if (version.vsn1) broadcastTest(' (vsn 1.0.0)', version.vsn1);

    it('broadcast from a channel that is not joined goes over POST /api/broadcast', async () => {
      const a = client();
      const b = client();
      const topic = `room-rest-${tag}`;
      const got = [];
      const chB = b.channel(topic).on('broadcast', { event: 'rest' }, (m) => got.push(m));
      await subscribe(chB);
      // Never subscribed: realtime-js posts {"messages":[{topic, event, payload}]}.
      const chA = a.channel(topic);
      assert.equal(await chA.send({ type: 'broadcast', event: 'rest', payload: { via: 'http' } }), 'ok');
      await until(() => got.length >= 1, 'the REST broadcast');
      assert.deepEqual(got, [{ type: 'broadcast', event: 'rest', payload: { via: 'http' } }]);
      if (typeof chA.httpSend === 'function') {
        // The newest client's httpSend(): POST /api/broadcast/<topic>/events/<event>.
        assert.deepEqual(await chA.httpSend('rest', { via: 'httpSend' }), { success: true });
        await until(() => got.length >= 2, 'the httpSend broadcast');
        assert.deepEqual(got[1], { type: 'broadcast', event: 'rest', payload: { via: 'httpSend' } });
        // A typed array goes as application/octet-stream; B (vsn 2.0.0)
        // gets the bytes back as an ArrayBuffer.
        assert.deepEqual(await chA.httpSend('rest', new Uint8Array([1, 2, 255])), { success: true });
        await until(() => got.length >= 3, 'the binary httpSend broadcast');
        assert.equal(got[2].event, 'rest');
        assert.ok(got[2].payload instanceof ArrayBuffer, `an ArrayBuffer, got ${JSON.stringify(got[2])}`);
        assert.deepEqual([...new Uint8Array(got[2].payload)], [1, 2, 255]);
        // The server stores no broadcast: persist is refused with the reason.
        const chP = a.channel(`${topic}-private`, { config: { private: true } });
        const persisted = await chP.httpSend('rest', { n: 1 }, { persist: true }).catch((e) => e);
        assert.match(String(persisted?.message ?? persisted), /persist is not supported/);
      }
    });

    it('the socket and REST routes under /realtime/v1, where supabase-js points the client', async () => {
      // supabase-js builds `${projectUrl}/realtime/v1`: the socket is
      // /realtime/v1/websocket, the REST routes /realtime/v1/api/broadcast...
      const base = REALTIME_URL.replace(/\/socket$/, '/realtime/v1');
      const urls = [];
      const recording = (version.options?.transport ? version.options : {});
      const a = client({ ...recording, fetch: (url, init) => (urls.push(String(url)), fetch(url, init)) }, base);
      const b = client(undefined, base);
      const topic = `room-v1path-${tag}`;
      const got = [];
      const chB = b.channel(topic).on('broadcast', { event: 'v1path' }, (m) => got.push(m));
      await subscribe(chB);
      assert.ok(b.isConnected(), 'the socket at /realtime/v1/websocket is open');
      const chA = a.channel(topic);
      assert.equal(await chA.send({ type: 'broadcast', event: 'v1path', payload: { via: 'rest' } }), 'ok');
      await until(() => got.length >= 1, 'the REST broadcast under /realtime/v1');
      assert.deepEqual(got[0].payload, { via: 'rest' });
      if (typeof chA.httpSend === 'function') {
        assert.deepEqual(await chA.httpSend('v1path', { via: 'httpSend' }), { success: true });
        await until(() => got.length >= 2, 'the httpSend broadcast under /realtime/v1');
        assert.deepEqual(got[1].payload, { via: 'httpSend' });
      }
      assert.ok(urls.length >= 1 && urls.every((u) => new URL(u).pathname.startsWith('/realtime/v1/api/broadcast')),
        `the client posted under /realtime/v1: ${urls}`);
    });

    if (tag === '2_latest') {
      it('binary broadcast: bytes reach vsn 2.0.0 members as bytes, not vsn 1.0.0 members', async () => {
        const a = client();
        const b = client();
        const v1 = client(version.vsn1);
        const old = newClient(VERSIONS[0]);
        clients.push(old);
        const topic = 'room-binary';
        const got = { a: [], b: [], v1: [], old: [] };
        const join = (c, name, config) =>
          c
            .channel(topic, config)
            .on('broadcast', { event: 'blob' }, (m) => got[name].push(m))
            .on('broadcast', { event: 'after' }, (m) => got[name].push(m));
        const chA = join(a, 'a', { config: { broadcast: { self: true, ack: true } } });
        const channels = [chA, join(b, 'b'), join(v1, 'v1'), join(old, 'old')];
        await Promise.all(channels.map((ch) => subscribe(ch)));

        const bytes = new Uint8Array([0, 1, 2, 127, 128, 254, 255]);
        // ack: the server acknowledged the binary frame (no closed socket).
        assert.equal(await chA.send({ type: 'broadcast', event: 'blob', payload: bytes.buffer }), 'ok');
        assert.ok(
          a.sockets_[0].sent.some((f) => f.binary?.startsWith('\\x03')),
          `sent as a binary frame, kind 3: ${JSON.stringify(wire(a))}`,
        );
        await until(() => got.a.length >= 1 && got.b.length >= 1, 'the bytes at A (self) and B');
        for (const name of ['a', 'b']) {
          const [m] = got[name];
          assert.equal(m.type, 'broadcast');
          assert.equal(m.event, 'blob');
          assert.ok(m.payload instanceof ArrayBuffer, `${name}: an ArrayBuffer, got ${JSON.stringify(m)}`);
          assert.deepEqual([...new Uint8Array(m.payload)], [...bytes], name);
        }
        assert.ok(
          b.sockets_[0].received.some((f) => f.binaryKind === 4),
          'B read it from a kind 4 binary frame',
        );
        // A JSON broadcast after it reaches everyone; the vsn 1.0.0 members
        // (the newest client on JSON, and 2.8) got nothing before it.
        assert.equal(await chA.send({ type: 'broadcast', event: 'after', payload: { n: 1 } }), 'ok');
        await until(() => Object.values(got).every((g) => g.some((m) => m.event === 'after')), 'the JSON broadcast everywhere');
        assert.deepEqual(got.v1.map((m) => m.event), ['after']);
        assert.deepEqual(got.old.map((m) => m.event), ['after']);
        assert.ok(v1.isConnected() && old.isConnected(), 'their sockets stayed open');
        assert.deepEqual(wire(a).filter((s) => s.closed), []);
      });

      it('presence.enabled false: no presence_state or diffs for that member; its track still shows', async () => {
        const quiet = client();
        const watcher = client();
        const topic = 'room-presence-enabled';
        const joins = [];
        // No presence listener: the client joins with presence.enabled false.
        const chQ = quiet.channel(topic, { config: { presence: { key: 'quiet' } } });
        const chW = watcher
          .channel(topic, { config: { presence: { key: 'watcher' } } })
          .on('presence', { event: 'join' }, (e) => joins.push(e.key));
        await Promise.all([subscribe(chQ), subscribe(chW)]);
        assert.equal(await chQ.track({ who: 'quiet' }), 'ok');
        assert.equal(await chW.track({ who: 'watcher' }), 'ok');
        await until(() => joins.includes('quiet') && joins.includes('watcher'), 'both joins at the watcher');
        await sleep(300);
        const presenceFrames = (c) =>
          c.sockets_[0].received.filter((f) => f.topic === `realtime:${topic}` && f.event?.startsWith('presence'));
        assert.deepEqual(presenceFrames(quiet), [], 'the quiet member got no presence_state nor presence_diff');
        const watched = presenceFrames(watcher).map((f) => f.event);
        assert.equal(watched[0], 'presence_state', `the watcher got the state first: ${watched}`);
        assert.ok(watched.includes('presence_diff'), `and diffs: ${watched}`);
      });
    }

    it('presence between clients: sync, join, and leave when a client disconnects', async () => {
      const b = client();
      const carol = client();
      const topic = `room-pr-${tag}`;
      const events = [];
      let syncs = 0;
      const chB = b
        .channel(topic, { config: { presence: { key: 'bob' } } })
        .on('presence', { event: 'sync' }, () => syncs++)
        .on('presence', { event: 'join' }, (e) => events.push(e))
        .on('presence', { event: 'leave' }, (e) => events.push(e));
      await subscribe(chB);
      await until(() => syncs >= 1, 'the first sync (presence_state on join)');
      assert.deepEqual(chB.presenceState(), {});

      const chC = carol.channel(topic, { config: { presence: { key: 'carol' } } });
      await subscribe(chC);
      assert.equal(await chC.track({ user: 'carol', online_at: 123, flags: { admin: false } }), 'ok');

      await until(() => events.some((e) => e.event === 'join' && e.key === 'carol'), 'join of carol');
      const join = events.find((e) => e.event === 'join' && e.key === 'carol');
      assert.deepEqual(join.currentPresences, []);
      assert.equal(join.newPresences.length, 1);
      const { presence_ref, ...meta } = join.newPresences[0];
      assert.equal(typeof presence_ref, 'string');
      assert.deepEqual(meta, { user: 'carol', online_at: 123, flags: { admin: false } });
      await until(() => 'carol' in chB.presenceState(), 'carol in presenceState');
      assert.deepEqual(chB.presenceState(), { carol: [join.newPresences[0]] });
      const syncsBefore = syncs;

      // B tracks too: both are present in B's view.
      assert.equal(await chB.track({ user: 'bob' }), 'ok');
      await until(() => 'bob' in chB.presenceState(), 'bob in presenceState');
      assert.deepEqual(Object.keys(chB.presenceState()).sort(), ['bob', 'carol']);
      assert.ok(syncs > syncsBefore, 'a sync after each diff');

      // Carol's socket goes away without leaving the channel.
      await carol.disconnect();
      await until(() => events.some((e) => e.event === 'leave' && e.key === 'carol'), 'leave of carol');
      const leave = events.find((e) => e.event === 'leave' && e.key === 'carol');
      assert.deepEqual(leave.leftPresences.map(({ presence_ref: _r, ...m }) => m), [meta]);
      assert.deepEqual(leave.currentPresences, []);
      await until(() => !('carol' in chB.presenceState()), 'carol gone from presenceState');
      assert.deepEqual(Object.keys(chB.presenceState()), ['bob']);
      assert.equal(chB.presenceState().bob[0].user, 'bob');
    });
  });
}
