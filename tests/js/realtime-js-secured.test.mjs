// Secured channels with the real @supabase/realtime-js 2.x clients: the
// client passes its token at connect (`params.apikey`) and in every join
// (`setAuth`), a bad token keeps it out, and a token that expires under a
// joined channel ends that channel with an error the app can read. Driven by
// tests/tests/realtime_js.rs, which starts PostgreSQL with
//   CREATE TABLE secured_items (id bigint PRIMARY KEY);
// in the `realtime_test` publication and the server with SECURE_CHANNELS=true
// and JWT_SECRET, and passes REALTIME_URL, DATABASE_URL and JWT_SECRET.

import { after, before, describe, it } from 'node:test';
import assert from 'node:assert/strict';
import pg from 'pg';
import { REALTIME_JS_2, jwt, now, sleep, until } from './support.mjs';

const { REALTIME_URL, DATABASE_URL, JWT_SECRET } = process.env;

const good = () => jwt({ role: 'authenticated', exp: now() + 3600 });

let db;
let nextId = 1;
before(async () => {
  assert.ok(REALTIME_URL && DATABASE_URL && JWT_SECRET, 'environment from realtime_js.rs');
  db = new pg.Client({ connectionString: DATABASE_URL });
  await db.connect();
});
after(async () => {
  await db?.end();
  // realtime-js leaves timers behind for a socket the server refused (it
  // keeps retrying); once every test has reported, do not wait for them.
  setTimeout(() => process.exit(), 2_000).unref();
});

for (const version of REALTIME_JS_2) {
  describe(version.name, () => {
    const clients = [];
    const client = (apikey) => {
      const c = new version.RealtimeClient(REALTIME_URL, {
        ...version.options,
        heartbeatIntervalMs: 1_000,
        params: { apikey },
      });
      clients.push(c);
      return c;
    };
    after(async () => {
      for (const c of clients) {
        // A refused socket keeps retrying, and a closed channel keeps trying
        // to rejoin: stop their timers too, or Node never exits
        // (disconnect() only resets the reconnect timer while connected).
        for (const ch of c.getChannels?.() ?? c.channels ?? []) ch.rejoinTimer?.reset?.();
        await Promise.race([c.removeAllChannels(), sleep(1_000)]);
        await Promise.race([Promise.resolve(c.disconnect()), sleep(1_000)]);
        c.reconnectTimer?.reset?.();
      }
    });

    /** A channel on secured_items; records statuses, changes, system pushes. */
    const listen = (c, name) => {
      const seen = { statuses: [], inserts: [], system: [] };
      const ch = c
        .channel(name)
        .on('postgres_changes', { event: 'INSERT', schema: 'public', table: 'secured_items' }, (p) =>
          seen.inserts.push(Number(p.new.id)),
        )
        .on('system', {}, (p) => seen.system.push(p));
      ch.subscribe((status, err) => seen.statuses.push(err ? `${status}: ${err.message}` : status));
      return seen;
    };

    it('passes its token at connect and at join, and receives changes', async () => {
      const token = good();
      const c = client(token);
      c.setAuth(token);
      const seen = listen(c, `ok-${nextId}`);
      await until(() => seen.statuses.includes('SUBSCRIBED'), 'SUBSCRIBED');
      await until(() => seen.system.some((s) => s.status === 'ok'), 'bindings confirmed');
      const id = nextId++;
      await db.query('INSERT INTO secured_items VALUES ($1)', [id]);
      await until(() => seen.inserts.includes(id), `INSERT ${id}`);
    });

    it('a forged token never gets a channel', async () => {
      const c = client(jwt({ role: 'authenticated' }, 'not-the-secret'));
      const seen = listen(c, `forged-${nextId}`);
      await sleep(3_000);
      assert.ok(!seen.statuses.includes('SUBSCRIBED'), `statuses: ${seen.statuses}`);
      const id = nextId++;
      await db.query('INSERT INTO secured_items VALUES ($1)', [id]);
      await sleep(500);
      assert.deepEqual(seen.inserts, []);
    });

    it('a token that expires under a joined channel ends it with a readable error', async () => {
      const c = client(good());
      c.setAuth(jwt({ role: 'authenticated', exp: now() + 2 }));
      const seen = listen(c, `expiring-${nextId}`);
      await until(() => seen.statuses.includes('SUBSCRIBED'), 'SUBSCRIBED');
      await until(
        () => seen.system.some((s) => s.status === 'error'),
        'a system error when the token expires',
      );
      const error = seen.system.find((s) => s.status === 'error');
      assert.equal(error.message, 'access token has expired');
      const id = nextId++;
      await db.query('INSERT INTO secured_items VALUES ($1)', [id]);
      await sleep(500);
      assert.deepEqual(seen.inserts, [], 'the closed channel receives nothing');
    });
  });
}
