// Row level security with the real @supabase/realtime-js 2.x clients: two
// signed-in users subscribed to the same table each receive exactly their
// own rows (INSERT, UPDATE, DELETE), as the table's policy `owner =
// auth.uid()` says, and a table their role was never granted is refused at
// join with a readable error. Driven by tests/tests/realtime_js.rs, which
// starts PostgreSQL with the roles, the tables `rls_notes` (policy, REPLICA
// IDENTITY FULL) and `rls_secrets` (no grant) in the `realtime_test`
// publication, and the server with SECURE_CHANNELS=true and JWT_SECRET, and
// passes REALTIME_URL, DATABASE_URL and JWT_SECRET.

import { after, before, describe, it } from 'node:test';
import assert from 'node:assert/strict';
import { randomUUID } from 'node:crypto';
import pg from 'pg';
import { REALTIME_JS_2, jwt, now, sleep, until } from './support.mjs';

const { REALTIME_URL, DATABASE_URL, JWT_SECRET } = process.env;

const userToken = (sub) => jwt({ role: 'authenticated', sub, exp: now() + 3600 });

let db;
let nextId = 1;
before(async () => {
  assert.ok(REALTIME_URL && DATABASE_URL && JWT_SECRET, 'environment from realtime_js.rs');
  db = new pg.Client({ connectionString: DATABASE_URL });
  await db.connect();
});
after(async () => {
  await db?.end();
  setTimeout(() => process.exit(), 2_000).unref();
});

for (const version of REALTIME_JS_2) {
  describe(version.name, () => {
    const clients = [];
    const client = (token) => {
      const c = new version.RealtimeClient(REALTIME_URL, {
        ...version.options,
        heartbeatIntervalMs: 1_000,
        params: { apikey: token },
      });
      c.setAuth(token);
      clients.push(c);
      return c;
    };
    after(async () => {
      for (const c of clients) {
        for (const ch of c.getChannels?.() ?? c.channels ?? []) ch.rejoinTimer?.reset?.();
        await Promise.race([c.removeAllChannels(), sleep(1_000)]);
        await Promise.race([Promise.resolve(c.disconnect()), sleep(1_000)]);
        c.reconnectTimer?.reset?.();
      }
    });

    /** Subscribes to every change of `table`; records them as "TYPE:id". */
    const listen = (c, name, table) => {
      const seen = { statuses: [], changes: [], system: [] };
      c.channel(name)
        .on('postgres_changes', { event: '*', schema: 'public', table }, (p) =>
          seen.changes.push(`${p.eventType}:${p.new?.id ?? p.old?.id}`),
        )
        .on('system', {}, (p) => seen.system.push(p))
        .subscribe((status, err) => seen.statuses.push(err ? `${status}: ${err.message}` : status));
      return seen;
    };

    it('two users each receive exactly their own rows', async () => {
      const [alice, bob] = [randomUUID(), randomUUID()];
      const a = listen(client(userToken(alice)), `rls-a-${nextId}`, 'rls_notes');
      const b = listen(client(userToken(bob)), `rls-b-${nextId}`, 'rls_notes');
      for (const s of [a, b]) {
        await until(() => s.system.some((m) => m.status === 'ok'), 'bindings confirmed');
      }
      const [ia, ib] = [nextId++, nextId++];
      await db.query('INSERT INTO rls_notes VALUES ($1, $2, $3), ($4, $5, $6)', [
        ia, alice, 'a', ib, bob, 'b',
      ]);
      await db.query("UPDATE rls_notes SET body = body || '2' WHERE id IN ($1, $2)", [ia, ib]);
      await db.query('DELETE FROM rls_notes WHERE id IN ($1, $2)', [ia, ib]);
      const want = (id) => [`INSERT:${id}`, `UPDATE:${id}`, `DELETE:${id}`];
      await until(() => a.changes.length >= 3 && b.changes.length >= 3, 'three changes each');
      await sleep(500);
      assert.deepEqual(a.changes, want(ia), 'alice');
      assert.deepEqual(b.changes, want(ib), 'bob');
    });

    it('a table the role was never granted is refused at join and delivers nothing', async () => {
      const s = listen(client(userToken(randomUUID())), `rls-x-${nextId}`, 'rls_secrets');
      await until(() => s.system.some((m) => m.status === 'error'), 'a system error');
      const error = s.system.find((m) => m.status === 'error');
      assert.match(error.message, /public\.rls_secrets/);
      await db.query('INSERT INTO rls_secrets VALUES ($1)', [nextId++]);
      await sleep(500);
      assert.deepEqual(s.changes, []);
    });
  });
}
