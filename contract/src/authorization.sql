-- realtime-server: the database objects authorization uses (idempotent).
--
-- Run by `realtime-server setup-authorization` (or printed by it with
-- --print, for an administrator to run), and by the operator when a
-- RealtimeServer sets spec.auth.setupAuthorization. Needs a role that may
-- create roles and schemas. Creates only what is missing; never replaces what exists (a
-- Supabase database already has all of it).
--
-- :server_user is replaced by the server's database user, quoted.

-- The roles tokens name, as PostgREST and Supabase define them: `anon` for
-- tokens without a role, `authenticated` for signed-in users, and
-- `service_role`, which bypasses row level security.
DO $setup$
BEGIN
  IF NOT EXISTS (SELECT FROM pg_catalog.pg_roles WHERE rolname = 'anon') THEN
    CREATE ROLE anon NOLOGIN NOINHERIT;
  END IF;
  IF NOT EXISTS (SELECT FROM pg_catalog.pg_roles WHERE rolname = 'authenticated') THEN
    CREATE ROLE authenticated NOLOGIN NOINHERIT;
  END IF;
  IF NOT EXISTS (SELECT FROM pg_catalog.pg_roles WHERE rolname = 'service_role') THEN
    CREATE ROLE service_role NOLOGIN NOINHERIT BYPASSRLS;
  END IF;
END
$setup$;

-- The server switches to them for every check (SET LOCAL ROLE).
GRANT anon, authenticated, service_role TO :server_user;

-- auth.uid(), auth.role(), auth.jwt(), as Supabase defines them, when
-- missing: policies written for Supabase or PostgREST use them.
CREATE SCHEMA IF NOT EXISTS auth;
DO $setup$
BEGIN
  IF pg_catalog.to_regprocedure('auth.uid()') IS NULL THEN
    CREATE FUNCTION auth.uid() RETURNS uuid LANGUAGE sql STABLE AS $fn$
      select coalesce(
        nullif(current_setting('request.jwt.claim.sub', true), ''),
        (nullif(current_setting('request.jwt.claims', true), '')::jsonb ->> 'sub')
      )::uuid
    $fn$;
  END IF;
  IF pg_catalog.to_regprocedure('auth.role()') IS NULL THEN
    CREATE FUNCTION auth.role() RETURNS text LANGUAGE sql STABLE AS $fn$
      select coalesce(
        nullif(current_setting('request.jwt.claim.role', true), ''),
        (nullif(current_setting('request.jwt.claims', true), '')::jsonb ->> 'role')
      )::text
    $fn$;
  END IF;
  IF pg_catalog.to_regprocedure('auth.jwt()') IS NULL THEN
    CREATE FUNCTION auth.jwt() RETURNS jsonb LANGUAGE sql STABLE AS $fn$
      select coalesce(
        nullif(current_setting('request.jwt.claim', true), ''),
        nullif(current_setting('request.jwt.claims', true), '')
      )::jsonb
    $fn$;
  END IF;
END
$setup$;
GRANT USAGE ON SCHEMA auth TO anon, authenticated, service_role;

-- Private channels (Supabase's Realtime Authorization): policies on
-- realtime.messages decide who may read (SELECT) and write (INSERT) a
-- channel, and realtime.topic() is the channel's topic inside a policy.
CREATE SCHEMA IF NOT EXISTS realtime;
CREATE TABLE IF NOT EXISTS realtime.messages (
  topic text NOT NULL,
  extension text NOT NULL,
  payload jsonb,
  event text,
  private boolean DEFAULT false,
  updated_at timestamp without time zone DEFAULT now() NOT NULL,
  inserted_at timestamp without time zone DEFAULT now() NOT NULL,
  id uuid NOT NULL,
  PRIMARY KEY (id, inserted_at)
);
ALTER TABLE realtime.messages ENABLE ROW LEVEL SECURITY;
DO $setup$
BEGIN
  IF pg_catalog.to_regprocedure('realtime.topic()') IS NULL THEN
    CREATE FUNCTION realtime.topic() RETURNS text LANGUAGE sql STABLE AS $fn$
      select nullif(current_setting('realtime.topic', true), '')::text;
    $fn$;
  END IF;
END
$setup$;
GRANT USAGE ON SCHEMA realtime TO anon, authenticated, service_role;
GRANT SELECT, INSERT ON realtime.messages TO anon, authenticated, service_role;
