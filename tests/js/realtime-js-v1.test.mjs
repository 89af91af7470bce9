// The real @supabase/realtime-js 1.x client (pinned in package.json) against
// the realtime server, under Node's own test runner. Driven by
// tests/tests/realtime_js.rs, which starts PostgreSQL with the `profiles`
// table below (REPLICA IDENTITY FULL) and a publication for all tables,
// starts the server, and passes:
//   REALTIME_URL  ws://127.0.0.1:PORT/socket  (the client appends /websocket)
//   DATABASE_URL  postgres://postgres@127.0.0.1:PORT/postgres
//
// The assertions are on what the app sees: the payload that realtime-js hands
// to the channel callbacks, and the values that realtime-js's own
// `Transformers.convertChangeData` makes of it from the `columns` metadata
// (what supabase-js 1.x does before calling the app).
//
//   CREATE TABLE profiles (id bigint PRIMARY KEY, name text, score numeric,
//     active bool, tags text[], meta jsonb, created_at timestamptz);
//   ALTER TABLE profiles REPLICA IDENTITY FULL;

import { after, before, beforeEach, describe, it } from 'node:test';
import assert from 'node:assert/strict';
import realtime from '@supabase/realtime-js';
import pg from 'pg';

const { RealtimeClient, Transformers } = realtime;

const REALTIME_URL = process.env.REALTIME_URL;
const DATABASE_URL = process.env.DATABASE_URL;
const TABLE = 'profiles';
const HEARTBEAT_MS = 200;
const WAIT_MS = 10_000;

/** Events as they arrive, awaited one at a time. */
class Queue {
  constructor(name) {
    this.name = name;
    this.items = [];
    this.waiters = [];
  }
  push(item) {
    const w = this.waiters.shift();
    if (w) w(item);
    else this.items.push(item);
  }
  next(ms = WAIT_MS) {
    if (this.items.length) return Promise.resolve(this.items.shift());
    return new Promise((resolve, reject) => {
      const timer = setTimeout(() => {
        this.waiters = this.waiters.filter((w) => w !== done);
        reject(new Error(`${this.name}: nothing arrived within ${ms} ms`));
      }, ms);
      const done = (item) => {
        clearTimeout(timer);
        resolve(item);
      };
      this.waiters.push(done);
    });
  }
  async none(ms = 500) {
    await sleep(ms);
    assert.deepEqual(this.items, [], `${this.name}: expected nothing more`);
  }
}

const sleep = (ms) => new Promise((r) => setTimeout(r, ms));

/** Subscribes and resolves once the server answered the join with ok. */
function subscribed(channel) {
  return new Promise((resolve, reject) => {
    channel
      .subscribe()
      .receive('ok', resolve)
      .receive('error', (e) => reject(new Error(`join ${channel.topic}: error ${JSON.stringify(e)}`)))
      .receive('timeout', () => reject(new Error(`join ${channel.topic}: timed out`)));
  });
}

/** What supabase-js 1.x passes to the app as `new` and `old`. */
function converted(payload) {
  return {
    new: payload.record && Transformers.convertChangeData(payload.columns, payload.record),
    old: payload.old_record && Transformers.convertChangeData(payload.columns, payload.old_record),
  };
}

const COLUMNS = [
  ['id', 'int8'],
  ['name', 'text'],
  ['score', 'numeric'],
  ['active', 'bool'],
  ['tags', '_text'],
  ['meta', 'jsonb'],
  ['created_at', 'timestamptz'],
];

/** The common parts of every change payload. */
function assertEnvelope(payload, type, startedAt) {
  assert.equal(payload.type, type);
  assert.equal(payload.schema, 'public');
  assert.equal(payload.table, TABLE);
  assert.deepEqual(
    payload.columns.map((c) => [c.name, c.type]),
    COLUMNS,
    'columns name the table and its types in order',
  );
  assert.deepEqual(payload.columns[0].flags, ['key'], 'the primary key is flagged');
  assert.equal(typeof payload.commit_timestamp, 'string');
  assert.match(payload.commit_timestamp, /^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d(\.\d+)?Z$/);
  const commit = Date.parse(payload.commit_timestamp);
  assert.ok(
    commit >= startedAt - 5_000 && commit <= Date.now() + 5_000,
    `commit_timestamp ${payload.commit_timestamp} is the time of the commit`,
  );
  assert.equal(payload.errors, null);
}

describe('@supabase/realtime-js 1.x', () => {
  let client;
  let db;
  const frames = []; // every frame the client decoded
  const pushes = []; // every frame the client sent, from its logger
  const socketEvents = { open: 0, close: [], error: [] };
  const table = {}; // queues on realtime:public:profiles, per binding
  const only2 = new Queue('realtime:public:profiles:id=eq.2 *');
  let tableChannel;
  let only2Channel;

  before(async () => {
    assert.ok(REALTIME_URL, 'REALTIME_URL is set');
    assert.ok(DATABASE_URL, 'DATABASE_URL is set');

    db = new pg.Client({ connectionString: DATABASE_URL });
    await db.connect();

    client = new RealtimeClient(REALTIME_URL, {
      heartbeatIntervalMs: HEARTBEAT_MS,
      logger: (kind, msg, data) => {
        if (kind === 'push') pushes.push({ msg, data });
      },
    });
    client.onOpen(() => socketEvents.open++);
    client.onClose((e) => socketEvents.close.push(e));
    client.onError((e) => socketEvents.error.push(e));
    client.onMessage((m) => frames.push(m));
    client.connect();

    tableChannel = client.channel(`realtime:public:${TABLE}`);
    for (const event of ['INSERT', 'UPDATE', 'DELETE', '*']) {
      table[event] = new Queue(`realtime:public:${TABLE} ${event}`);
      tableChannel.on(event, (payload, ref) => table[event].push({ payload, ref }));
    }
    only2Channel = client.channel(`realtime:public:${TABLE}:id=eq.2`);
    only2Channel.on('*', (payload, ref) => only2.push({ payload, ref }));

    await Promise.all([subscribed(tableChannel), subscribed(only2Channel)]);
    assert.ok(tableChannel.isJoined() && only2Channel.isJoined());
  });

  // A failed test can leave its events behind: start each test clean.
  beforeEach(async () => {
    await sleep(200);
    for (const q of [...Object.values(table), only2]) q.items.length = 0;
  });

  after(async () => {
    if (only2Channel?.isJoined()) {
      await new Promise((resolve) => only2Channel.unsubscribe().receive('ok', resolve).receive('timeout', resolve));
    }
    await client?.disconnect();
    // realtime-js 1.7 never hears back for the `access_token` pushes it sends
    // after each heartbeat (the server gives them no reply, as the client
    // expects), so each holds a 10 s timeout timer that would keep Node alive
    // after the last test. Settle them the way the client itself does when
    // such a timer fires.
    for (const channel of [tableChannel, only2Channel]) {
      for (const { event } of channel?.bindings ?? []) {
        if (event.startsWith('chan_reply_')) channel.trigger(event, { status: 'timeout', response: {} });
      }
    }
    await db?.end();
  });

  it('delivers INSERT, UPDATE and DELETE in order, with values realtime-js converts', async () => {
    const startedAt = Date.now();
    await db.query(
      `INSERT INTO ${TABLE} VALUES (1, 'Ada', 12.5, true, ARRAY['red', 'green'],
         '{"level": 3, "nested": {"ok": true}, "list": [1, "two", null]}',
         '2024-01-02 03:04:05.123456+00')`,
    );
    await db.query(
      `UPDATE ${TABLE} SET name = 'Ada Lovelace', score = -0.75, active = false,
         tags = ARRAY['blue'], meta = '{"level": 4}' WHERE id = 1`,
    );
    await db.query(`DELETE FROM ${TABLE} WHERE id = 1`);

    const inserted = {
      id: 1,
      name: 'Ada',
      score: 12.5,
      active: true,
      tags: ['red', 'green'],
      meta: { level: 3, nested: { ok: true }, list: [1, 'two', null] },
      created_at: '2024-01-02T03:04:05.123456Z',
    };
    const updated = {
      ...inserted,
      name: 'Ada Lovelace',
      score: -0.75,
      active: false,
      tags: ['blue'],
      meta: { level: 4 },
    };

    // INSERT
    const ins = await table.INSERT.next();
    assert.equal(ins.ref, null, 'a change is a push with a null ref');
    assertEnvelope(ins.payload, 'INSERT', startedAt);
    assert.equal('old_record' in ins.payload, false, 'INSERT has no old_record');
    // The wire form: Postgres text, which the client converts.
    const raw = ins.payload.record;
    assert.equal(raw.id, '1');
    assert.equal(raw.score, '12.5');
    assert.equal(raw.active, 't');
    assert.equal(raw.tags, '{red,green}');
    assert.equal(typeof raw.meta, 'string');
    assert.deepEqual(converted(ins.payload), { new: inserted, old: undefined });
    // int8 becomes a number, bool a boolean, text[] an array, jsonb an
    // object; timestamptz stays the string that the server sent.
    assert.equal(typeof converted(ins.payload).new.id, 'number');
    assert.equal(new Date(converted(ins.payload).new.created_at).toISOString(), '2024-01-02T03:04:05.123Z');

    // UPDATE, with the whole old row (REPLICA IDENTITY FULL)
    const upd = await table.UPDATE.next();
    assertEnvelope(upd.payload, 'UPDATE', startedAt);
    assert.deepEqual(converted(upd.payload), { new: updated, old: inserted });

    // DELETE: only the old row
    const del = await table.DELETE.next();
    assertEnvelope(del.payload, 'DELETE', startedAt);
    assert.equal('record' in del.payload, false, 'DELETE has no record');
    assert.deepEqual(converted(del.payload), { new: undefined, old: updated });

    // The '*' binding saw the same three payloads, in commit order.
    const star = [await table['*'].next(), await table['*'].next(), await table['*'].next()];
    assert.deepEqual(
      star.map((e) => e.payload),
      [ins.payload, upd.payload, del.payload],
    );
    const times = star.map((e) => Date.parse(e.payload.commit_timestamp));
    assert.ok(times[0] <= times[1] && times[1] <= times[2], `commit order: ${times}`);
    for (const q of Object.values(table)) await q.none(0);
  });

  it('a row filter topic receives only its row', async () => {
    const startedAt = Date.now();
    await db.query(
      `INSERT INTO ${TABLE} VALUES (2, NULL, NULL, NULL, NULL, NULL, NULL),
                                   (3, 'c', 3, true, '{}', 'null', now())`,
    );
    await db.query(`UPDATE ${TABLE} SET name = 'two', score = 2 WHERE id IN (2, 3)`);
    await db.query(`DELETE FROM ${TABLE} WHERE id IN (2, 3)`);

    const row2 = { id: 2, name: null, score: null, active: null, tags: null, meta: null, created_at: null };
    const row2After = { ...row2, name: 'two', score: 2 };

    const ins = await only2.next();
    assertEnvelope(ins.payload, 'INSERT', startedAt);
    assert.deepEqual(converted(ins.payload), { new: row2, old: undefined });
    // SQL NULL is JSON null on the wire, not a string.
    assert.equal(ins.payload.record.meta, null);
    const upd = await only2.next();
    assertEnvelope(upd.payload, 'UPDATE', startedAt);
    assert.deepEqual(converted(upd.payload), { new: row2After, old: row2 });
    const del = await only2.next();
    assertEnvelope(del.payload, 'DELETE', startedAt);
    assert.deepEqual(converted(del.payload), { new: undefined, old: row2After });
    await only2.none(500);

    // The unfiltered channel sees both rows.
    const all = [];
    for (let i = 0; i < 6; i++) all.push((await table['*'].next()).payload);
    assert.deepEqual(
      all.map((p) => [p.type, (p.record ?? p.old_record).id]),
      [
        ['INSERT', '2'],
        ['INSERT', '3'],
        ['UPDATE', '2'],
        ['UPDATE', '3'],
        ['DELETE', '2'],
        ['DELETE', '3'],
      ],
    );
    // jsonb 'null' is the JSON text "null", unlike SQL NULL; '{}' is an empty array.
    assert.equal(all[1].record.meta, 'null');
    assert.equal(converted(all[1]).new.meta, null);
    assert.deepEqual(converted(all[1]).new.tags, []);
    assert.equal(converted(all[1]).new.score, 3);
    for (const q of Object.values(table)) q.items.length = 0;
  });

  it('stays connected across heartbeats and the access_token pushes that follow them', async () => {
    const conn = client.conn;
    const heartbeats = () => pushes.filter((p) => p.msg.startsWith('phoenix heartbeat'));
    const tokens = () => pushes.filter((p) => / access_token /.test(p.msg));
    const before = heartbeats().length;
    const deadline = Date.now() + WAIT_MS;
    while (heartbeats().length < before + 3 && Date.now() < deadline) await sleep(50);
    await sleep(HEARTBEAT_MS / 2);
    assert.ok(heartbeats().length >= before + 3, `heartbeats sent: ${heartbeats().length}`);

    // realtime-js 1.7 follows each heartbeat with `access_token` (a null
    // token here) on every joined channel.
    assert.ok(tokens().length >= 2 * 3, `access_token pushes: ${tokens().length}`);
    assert.ok(tokens().every((p) => p.data && 'access_token' in p.data));

    // Each heartbeat got its ok reply in time (else the client closes the
    // socket itself), nothing was refused, nothing was closed.
    const heartbeatReplies = frames.filter((f) => f.topic === 'phoenix' && f.event === 'phx_reply');
    assert.ok(heartbeatReplies.length >= heartbeats().length - 1, 'a reply per heartbeat');
    assert.ok(heartbeatReplies.every((f) => f.payload.status === 'ok'));
    const bad = frames.filter(
      (f) =>
        f.event === 'phx_error' ||
        f.event === 'phx_close' ||
        (f.event === 'phx_reply' && f.payload?.status !== 'ok'),
    );
    assert.deepEqual(bad, [], 'no error, close or refused reply from the server');
    assert.equal(socketEvents.open, 1, 'connected once, never reconnected');
    assert.deepEqual(socketEvents.close, []);
    assert.deepEqual(socketEvents.error, []);
    assert.equal(client.conn, conn, 'the same socket');
    assert.ok(client.isConnected());
    assert.ok(tableChannel.isJoined() && only2Channel.isJoined());

    // And the channels still deliver.
    await db.query(`INSERT INTO ${TABLE} (id, name) VALUES (4, 'after heartbeats')`);
    const ins = await table.INSERT.next();
    assert.equal(converted(ins.payload).new.name, 'after heartbeats');
    assert.equal(converted(ins.payload).new.id, 4);
  });

  it('unsubscribe is acknowledged and stops the changes', async () => {
    const topic = tableChannel.topic;
    await new Promise((resolve, reject) => {
      tableChannel
        .unsubscribe()
        .receive('ok', resolve)
        .receive('timeout', () => reject(new Error('leave timed out')));
    });
    const deadline = Date.now() + WAIT_MS;
    while (!frames.some((f) => f.topic === topic && f.event === 'phx_close') && Date.now() < deadline) {
      await sleep(20);
    }
    assert.ok(frames.some((f) => f.topic === topic && f.event === 'phx_close'), 'phx_close after the leave');
    const seen = frames.length;
    await db.query(`UPDATE ${TABLE} SET name = 'unheard' WHERE id = 4`);
    await sleep(500);
    assert.deepEqual(
      frames.slice(seen).filter((f) => f.topic.startsWith('realtime:')),
      [],
      'no change reaches a channel that left, nor the id=eq.2 channel for row 4',
    );
    assert.ok(only2Channel.isJoined());
  });
});
