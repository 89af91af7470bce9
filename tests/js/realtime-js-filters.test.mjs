// The newest @supabase/realtime-js (2.119.1, pinned in package.json) against
// the realtime server: filters written with the client's own
// `postgresChangesFilter()` builder and as raw strings, and the `select`
// column list; then 2.8.4, which has no builder, with the same grammar
// written as strings. Driven by tests/tests/realtime_js.rs, which starts PostgreSQL
// with the table below (REPLICA IDENTITY FULL) in the publication
// `realtime_test`, starts the server, and passes:
//   REALTIME_URL  ws://127.0.0.1:PORT/socket
//   DATABASE_URL  postgres://postgres@127.0.0.1:PORT/postgres
//
//   CREATE TABLE tasks (id bigint PRIMARY KEY, title text, status text,
//     priority int, done bool, due timestamptz, secret text);
//
// Which rows each filter should let through is asked of PostgreSQL itself:
// the same condition in SQL over the same rows.

import { after, before, describe, it } from 'node:test';
import assert from 'node:assert/strict';
import pg from 'pg';
import WebSocket from 'ws';
import { RealtimeClient, postgresChangesFilter as F } from 'realtime-js-2-latest';
import * as early from 'realtime-js-2-8';
import { sleep, until } from './support.mjs';

const REALTIME_URL = process.env.REALTIME_URL;
const DATABASE_URL = process.env.DATABASE_URL;
const WAIT_MS = 10_000;
const APIKEY = 'anon-key-unchecked-with-secure-channels-off';

/** Subscribes; resolves with the statuses once SUBSCRIBED, rejects on any other status. */
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

/** Six rows with ids base+1 .. base+6, and NULL in each column somewhere. */
const rows = (base) => ({
  ids: [1, 2, 3, 4, 5, 6].map((i) => base + i),
  sql: `
  INSERT INTO tasks VALUES
    (${base + 1}, 'buy milk', 'open', 1, false, '2024-01-01T00:00:00Z', 's1'),
    (${base + 2}, 'Buy bread', 'open', 3, NULL, '2024-07-01T00:00:00Z', 's2'),
    (${base + 3}, 'say "hi", (now)', 'a,b', 2, true, NULL, 's3'),
    (${base + 4}, 'clean', 'draft', NULL, NULL, '2024-05-01T00:00:00Z', NULL),
    (${base + 5}, 'archive it', 'archived', 5, true, '2024-02-01T00:00:00Z', 's5'),
    (${base + 6}, NULL, NULL, 2, false, NULL, 's6')`,
});

// [name, filter as the app writes it, the same condition in SQL]
const CASES = [
  ['eq+gt', F().eq('status', 'open').gt('priority', 1), `status = 'open' AND priority > 1`],
  ['in quoted', F().in('status', ['open', 'a,b']), `status = ANY('{open,"a,b"}')`],
  ['not in', F().not('status', 'in', ['draft', 'archived']), `NOT (status = ANY('{draft,archived}'))`],
  ['like', F().like('title', '%milk%'), `title LIKE '%milk%'`],
  ['ilike', F().ilike('title', 'BUY%'), `title ILIKE 'BUY%'`],
  ['is null', F().is('done', null), `done IS NULL`],
  ['not is null', F().not('done', 'is', null), `done IS NOT NULL`],
  ['is true', F().is('done', true), `done IS TRUE`],
  ['not is false', F().not('done', 'is', false), `done IS NOT FALSE`],
  ['match', F().match('title', '^buy [a-z]+$'), `title ~ '^buy [a-z]+$'`],
  ['imatch', F().imatch('title', '^BUY'), `title ~* '^BUY'`],
  ['isDistinct', F().isDistinct('status', 'open'), `status IS DISTINCT FROM 'open'`],
  ['neq+lte', F().neq('priority', 2).lte('due', '2024-06-01T00:00:00Z'), `priority <> 2 AND due <= '2024-06-01T00:00:00Z'`],
  ['quoted eq', F().eq('title', 'say "hi", (now)'), `title = 'say "hi", (now)'`],
  ['not like', F().not('title', 'like', '%i%'), `NOT (title LIKE '%i%')`],
  ['raw not gte', 'priority=not.gte.3', `NOT (priority >= 3)`],
  ['raw in with null', 'priority=in.(1,null)', `priority = ANY('{1,NULL}'::int[])`],
];

/**
 * Subscribes every case on `client`, inserts `rows`, and checks that each
 * channel received exactly the rows PostgreSQL selects with the case's SQL.
 */
async function heldToPostgres(client, db, cases, prefix, rows) {
  const got = {};
  const system = {};
  const channels = cases.map(([name, filter]) => {
    got[name] = [];
    system[name] = [];
    return client
      .channel(`${prefix}-${name.replace(/\W/g, '-')}`)
      .on('postgres_changes', { event: 'INSERT', schema: 'public', table: 'tasks', filter }, (p) =>
        got[name].push(Number(p.new.id)),
      )
      .on('system', {}, (p) => system[name].push(p));
  });
  const statuses = await Promise.all(channels.map(subscribe));
  for (const s of statuses) assert.deepEqual(s, ['SUBSCRIBED']);
  await until(() => Object.values(system).every((s) => s.length > 0), 'system pushes');
  for (const [name, s] of Object.entries(system)) {
    assert.equal(s[0].status, 'ok', `${name}: ${JSON.stringify(s[0])}`);
  }

  await db.query(rows.sql);
  for (const [name, filter, sql] of cases) {
    const result = await db.query(
      `SELECT id FROM tasks WHERE id = ANY($1) AND (${sql}) ORDER BY id`,
      [rows.ids],
    );
    const want = result.rows.map((r) => Number(r.id));
    await until(() => got[name].length >= want.length, `${name}: ${want.length} rows`);
    await sleep(want.length === 0 ? 300 : 50);
    assert.deepEqual(got[name], want, `${name}: filter ${String(filter)} (SQL: ${sql})`);
  }
}

describe('@supabase/realtime-js 2.119.1: filters and select', () => {
  let db;
  let client;

  before(async () => {
    assert.ok(REALTIME_URL, 'REALTIME_URL is set');
    assert.ok(DATABASE_URL, 'DATABASE_URL is set');
    db = new pg.Client({ connectionString: DATABASE_URL });
    await db.connect();
    client = new RealtimeClient(REALTIME_URL, {
      transport: WebSocket,
      vsn: '2.0.0',
      heartbeatIntervalMs: 1_000,
      params: { apikey: APIKEY },
    });
  });

  after(async () => {
    if (client) {
      await Promise.race([client.removeAllChannels(), sleep(2_000)]);
      await Promise.race([Promise.resolve(client.disconnect()), sleep(2_000)]);
    }
    await db?.end();
  });

  it("the client's filter builder and raw strings select the rows PostgreSQL selects", async () => {
    await heldToPostgres(client, db, CASES, 'filters', rows(0));
  });

  it('select trims new and old to the listed columns and the primary key', async () => {
    const got = [];
    const ch = client
      .channel('filters-select')
      .on(
        'postgres_changes',
        { event: 'UPDATE', schema: 'public', table: 'tasks', filter: F().eq('status', 'open'), select: ['title'] },
        (p) => got.push(p),
      );
    assert.deepEqual(await subscribe(ch), ['SUBSCRIBED']);
    await db.query(`UPDATE tasks SET title = 'buy oat milk' WHERE id = 1`);
    await until(() => got.length === 1, 'the update');
    assert.deepEqual(got[0].new, { id: 1, title: 'buy oat milk' });
    assert.deepEqual(got[0].old, { id: 1, title: 'buy milk' });
  });

  it('a filter the server cannot read is refused with the part that is wrong', async () => {
    const errors = [];
    const ch = client
      .channel('filters-bad')
      .on('postgres_changes', { event: '*', schema: 'public', table: 'tasks', filter: 'priority=eq.1,title=zz.x' }, () => {})
      .on('system', {}, (p) => errors.push(p));
    // The join itself is answered ok (the client reports SUBSCRIBED); the
    // bindings' refusal is the `system` push that follows, as from Supabase.
    assert.deepEqual(await subscribe(ch), ['SUBSCRIBED']);
    await until(() => errors.length > 0, 'the system push');
    assert.equal(errors[0].status, 'error');
    assert.match(
      errors[0].message,
      /^invalid filter "priority=eq\.1,title=zz\.x": unknown operator "zz" in "title=zz\.x"/,
    );
  });
});

describe('@supabase/realtime-js 2.8.4: the same grammar as strings', () => {
  let db;
  let client;

  before(async () => {
    db = new pg.Client({ connectionString: DATABASE_URL });
    await db.connect();
    client = new early.RealtimeClient(REALTIME_URL, { heartbeatIntervalMs: 1_000, params: { apikey: APIKEY } });
  });

  after(async () => {
    if (client) {
      await Promise.race([client.removeAllChannels(), sleep(2_000)]);
      await Promise.race([Promise.resolve(client.disconnect()), sleep(2_000)]);
    }
    await db?.end();
  });

  it('string filters of several conditions, negations and quoted values', async () => {
    const cases = [
      ['and', 'status=eq.open,priority=gt.1', `status = 'open' AND priority > 1`],
      ['not in', 'status=not.in.(draft,archived)', `NOT (status = ANY('{draft,archived}'))`],
      ['quoted in', 'status=in.(open,"a,b")', `status = ANY('{open,"a,b"}')`],
      ['ilike', 'title=ilike.*BREAD*', `title ILIKE '%BREAD%'`],
      ['is null', 'done=is.null', `done IS NULL`],
      ['imatch', 'title=imatch.^say', `title ~* '^say'`],
    ];
    await heldToPostgres(client, db, cases, 'early', rows(10));
  });
});
