// Being told that postgres_changes bindings are live, through realtime-js's
// own API, and that a write made right after is never missed
// (supabase-js#1599). Driven by tests/tests/realtime_js.rs, which starts
// PostgreSQL with `live_rows (id bigint PRIMARY KEY, tag text)` published,
// opens a transaction that holds an xid (so the server's replication slot
// cannot be created: logical slot creation waits for it), starts the server
// without waiting for it to be ready, and passes:
//   REALTIME_URL  ws://127.0.0.1:PORT/socket
//   DATABASE_URL  postgres://postgres@127.0.0.1:PORT/postgres
//   BLOCKER_APP   the application_name of the session holding the slot back
//
// While the stream is not live, channels join but are told nothing; once the
// blocking session ends, every channel is told, inserts its own row at once,
// and must receive it. Three ways to be told:
//   - `system` {extension: 'postgres_changes', status: 'ok'} (every client);
//   - `config.broadcast.replication_ready: true`: `system` {extension:
//     'system', status: 'ok', message: 'Replication connection established'};
//   - the newest client's `config.postgres_changes_options.wait: true`:
//     SUBSCRIBED itself.

import { after, before, describe, it } from 'node:test';
import assert from 'node:assert/strict';
import pg from 'pg';
import WebSocket from 'ws';
import * as early from 'realtime-js-2-8';
import * as latest from 'realtime-js-2-latest';
import { sleep, until as untilWithin } from './support.mjs';

const REALTIME_URL = process.env.REALTIME_URL;
const DATABASE_URL = process.env.DATABASE_URL;
const BLOCKER_APP = process.env.BLOCKER_APP;
const HEARTBEAT_MS = 1_000;
const APIKEY = 'anon-key-unchecked-with-secure-channels-off';
// Channels per way of being told, per client version, at the moment the
// stream turns live.
const CHANNELS = 8;
// Rounds once the stream is live: a channel, told, inserts at once.
const ROUNDS = 20;

/** Waits up to 20 s, looking every 10 ms: the turn to live is timed closely. */
const until = (cond, what, ms = 20_000) => untilWithin(cond, what, ms, 10);

const VERSIONS = {
  early: { RealtimeClient: early.RealtimeClient, options: {} },
  latest: { RealtimeClient: latest.RealtimeClient, options: { transport: WebSocket, vsn: '2.0.0' } },
};

/** `/readyz` of the server: 200 once the replication stream is live. */
async function readyz() {
  const url = new URL(REALTIME_URL);
  url.protocol = 'http:';
  url.pathname = '/readyz';
  return (await fetch(url)).status;
}

describe('told when postgres_changes bindings are live', () => {
  let db;
  const clients = [];
  const newClient = (name) => {
    const v = VERSIONS[name];
    const c = new v.RealtimeClient(REALTIME_URL, {
      ...v.options,
      heartbeatIntervalMs: HEARTBEAT_MS,
      params: { apikey: APIKEY },
    });
    clients.push(c);
    return c;
  };
  let nextId = 1;

  /**
   * A channel on `client` bound to its own row (`id=eq.N`), that inserts
   * that row the moment it is told (`how`), and records what it saw.
   */
  function watcher(client, how, label) {
    const id = nextId++;
    const w = { id, label: `${label} #${id}`, told: null, rows: [], inserted: null, statuses: [] };
    const config = {
      ...(how === 'replication_ready' ? { broadcast: { replication_ready: true } } : {}),
      ...(how === 'wait' ? { postgres_changes_options: { wait: true, timeout: 60_000 } } : {}),
    };
    const insert = () => {
      w.told = Date.now();
      w.inserted = db.query('INSERT INTO live_rows VALUES ($1, $2)', [id, w.label]);
    };
    const ch = client
      .channel(`live-${id}`, { config })
      .on('postgres_changes', { event: 'INSERT', schema: 'public', table: 'live_rows', filter: `id=eq.${id}` }, (p) =>
        w.rows.push(p.new.id),
      )
      .on('system', {}, (p) => {
        if (w.told) return;
        if (how === 'system' && p.extension === 'postgres_changes' && p.status === 'ok') insert();
        if (how === 'replication_ready' && p.extension === 'system' && p.status === 'ok') {
          assert.equal(p.message, 'Replication connection established');
          insert();
        }
      });
    ch.subscribe((status, err) => {
      w.statuses.push(err ? `${status}: ${err.message}` : status);
      if (how === 'wait' && status === 'SUBSCRIBED' && !w.told) insert();
    });
    w.channel = ch;
    return w;
  }

  before(async () => {
    assert.ok(REALTIME_URL && DATABASE_URL && BLOCKER_APP, 'REALTIME_URL, DATABASE_URL and BLOCKER_APP are set');
    db = new pg.Client({ connectionString: DATABASE_URL });
    await db.connect();
  });

  after(async () => {
    for (const c of clients) {
      await Promise.race([c.removeAllChannels(), sleep(2_000)]);
      await Promise.race([Promise.resolve(c.disconnect()), sleep(2_000)]);
    }
    await db?.end();
  });

  it('nothing is said while the stream is not live; once it is, a write made at once arrives, on every channel', async () => {
    assert.equal(await readyz(), 503, 'the stream is held back (the blocking transaction is open)');
    const early = newClient('early');
    const latest = newClient('latest');
    const watchers = [];
    for (let i = 0; i < CHANNELS; i++) {
      watchers.push(watcher(early, 'system', 'realtime-js 2.8.4, system postgres_changes'));
      watchers.push(watcher(early, 'replication_ready', 'realtime-js 2.8.4, replication_ready'));
      watchers.push(watcher(latest, 'system', 'realtime-js 2.119.1, system postgres_changes'));
      watchers.push(watcher(latest, 'replication_ready', 'realtime-js 2.119.1, replication_ready'));
      watchers.push(watcher(latest, 'wait', 'realtime-js 2.119.1, postgres_changes_options.wait'));
    }
    // Every join without wait is answered (SUBSCRIBED); nobody is told the
    // bindings are live, and the held joins are not answered.
    await until(
      () => watchers.filter((w) => !w.label.includes('wait')).every((w) => w.statuses.includes('SUBSCRIBED')),
      'the joins without wait answered',
    );
    await sleep(1_500);
    assert.deepEqual(watchers.filter((w) => w.told).map((w) => w.label), [], 'nobody was told while not live');
    assert.deepEqual(
      watchers.filter((w) => w.label.includes('wait')).flatMap((w) => w.statuses),
      [],
      'the joins with wait are held',
    );
    assert.equal(await readyz(), 503, 'still held back');

    // The stream may start: end the session that holds it back.
    const { rows } = await db.query(
      'SELECT pg_terminate_backend(pid) AS ended FROM pg_stat_activity WHERE application_name = $1',
      [BLOCKER_APP],
    );
    assert.deepEqual(rows.map((r) => r.ended), [true], 'the blocking session ended');

    await until(() => watchers.every((w) => w.told), `every channel told: ${watchers.filter((w) => !w.told).map((w) => w.label)}`);
    await Promise.all(watchers.map((w) => w.inserted));
    await until(
      () => watchers.every((w) => w.rows.length >= 1),
      `every row: missing ${watchers.filter((w) => w.rows.length === 0).map((w) => w.label)}`,
      10_000,
    );
    await sleep(300);
    for (const w of watchers) {
      assert.deepEqual(w.rows, [w.id], w.label);
      assert.deepEqual(w.statuses, ['SUBSCRIBED'], w.label);
    }
    assert.equal(await readyz(), 200);
  });

  it('once live, again and again: told, written at once, received', async () => {
    const early = newClient('early');
    const latest = newClient('latest');
    for (let round = 0; round < ROUNDS; round++) {
      const ws = [
        watcher(early, 'system', `round ${round}, realtime-js 2.8.4, system`),
        watcher(latest, 'replication_ready', `round ${round}, realtime-js 2.119.1, replication_ready`),
        watcher(latest, 'wait', `round ${round}, realtime-js 2.119.1, wait`),
      ];
      await until(() => ws.every((w) => w.told), `round ${round}: told`);
      await Promise.all(ws.map((w) => w.inserted));
      await until(() => ws.every((w) => w.rows.length >= 1), `round ${round}: every row`, 10_000);
      for (const w of ws) {
        assert.deepEqual(w.rows, [w.id], w.label);
        await w.channel.unsubscribe();
      }
    }
  });

  it('wait refuses the join when a binding is refused, with the reason', async () => {
    const latest = newClient('latest');
    const statuses = [];
    const ch = latest
      .channel('live-refused', { config: { postgres_changes_options: { wait: true } } })
      .on('postgres_changes', { event: 'INSERT', schema: 'public', table: 'live_rows', filter: 'nosuch=eq.1' }, () => {});
    ch.subscribe((status, err) => statuses.push(err ? `${status}: ${err.message}` : status));
    await until(() => statuses.length > 0, 'the join answered');
    assert.equal(statuses.length, 1, `${statuses}`);
    assert.match(statuses[0], /^CHANNEL_ERROR: .*nosuch/);
  });
});
