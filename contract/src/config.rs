//! Server configuration: this module owns turning the process environment into a
//! typed [`Config`], and every check of it. All problems are found at start, all at
//! once: [`Config::from_vars`] collects every bad variable into one [`ConfigError`]
//! (one line each) instead of stopping at the first, so an operator fixes them in
//! one round. Nothing else in the server reads the environment; the operator
//! writes pods' environments with the names in [`var`].
//!
//! The names and defaults are those of Supabase Realtime, the Elixir server
//! this one replaces, so an environment written for it carries over; where
//! this server differs, the table says so.
//!
//! Rules for every variable: an empty value (or only whitespace) is the same as
//! unset; booleans accept `true`/`false`/`1`/`0`/`yes`/`no` in any case; an error
//! names the variable, its value and what was expected, except for the secret
//! variables (`DB_PASSWORD`, `JWT_SECRET`, `SECRET_KEY_BASE`), whose values never
//! appear in errors or in `Debug` output (see [`Secret`]).
//!
//! | variable | default | meaning |
//! | --- | --- | --- |
//! | `PORT` | 4000 | listen port |
//! | `BIND_ADDRESS` | `0.0.0.0` | listen address, an IP address (`::` for IPv6 too) |
//! | `DB_HOST` | `localhost` | database host |
//! | `DB_PORT` | 5432 | database port |
//! | `DB_NAME` | `postgres` | database name |
//! | `DB_USER` | `postgres` | database user (needs the REPLICATION attribute) |
//! | `DB_PASSWORD` | `postgres` | database password (secret) |
//! | `DB_SSL` | `false` | TLS to the database: `false`/`disable`, `true`/`require`, `verify-full` |
//! | `PUBLICATIONS` | `["supabase_realtime"]` | JSON array of publication names, at least one |
//! | `SLOT_NAME` | unset | durable replication slot to stream from and resume (`[a-z0-9_]`, 1-63 bytes); unset: a temporary slot |
//! | `POD_NAME` | - | the pod's name (downward API); its trailing ordinal replaces `{ordinal}` in `SLOT_NAME` |
//! | `TEMPORARY_SLOT` | `false` | force a temporary slot even when `SLOT_NAME` is set |
//! | `MAX_REPLICATION_LAG_MB` | 0 (off) | past this retained WAL (at connect) or unconfirmed WAL (while streaming), drop and recreate the slot |
//! | `RESUME_DELAY_MS` | 5000 | with a durable slot that holds changes to replay, wait at most this long after start (less once clients are back) before streaming them; a new or empty slot never waits; 0 streams at once |
//! | `SECURE_CHANNELS` | `true` | require a JWT, and decide every delivery by the token's role and claims (grants and row level security); when true, `JWT_SECRET`, `JWT_JWKS` or `JWT_JWKS_URL` must be set |
//! | `JWT_SECRET` | - | HMAC secret that signs client tokens (secret) |
//! | `JWT_JWKS` | - | a JWKS (`{"keys": [...]}`) or one JWK, inline: RSA, EC and OKP public keys that verify RS*, PS*, ES256/384 and EdDSA tokens |
//! | `JWT_JWKS_URL` | - | an `https://` (or `http://`) URL to fetch a JWKS from, at start, every 5 minutes, and when a token names an unknown `kid` (at most once per 10 s) |
//! | `JWT_LEEWAY` | 5 | seconds by which `exp` and `nbf` may be off |
//! | `DB_ANON_ROLE` | `anon` | the database role of a token without a `role` claim |
//! | `AUTHZ_CHECK_TIMEOUT_MS` | 5000 | ms one authorization statement may take; past it the change is withheld from that group; > 0 |
//! | `AUTHZ_REFRESH_MS` | 2000 | ms between looks at the catalog for changed grants, policies and roles; > 0 |
//! | `AUTHZ_POOL_SIZE` | 4 | database connections for authorization checks; > 0 |
//! | `PRIVATE_ONLY` | `false` | refuse joins of public channels (`config.private` not true) |
//! | `JWT_CLAIM_VALIDATORS` | `{}` | JSON object: every pair must equal a claim of the token |
//! | `SECRET_KEY_BASE` | - | refused: Supabase Realtime signs its Phoenix sessions with it; this server signs nothing (client tokens are checked with `JWT_SECRET`), so a value set here is a mistake the server names at start |
//! | `MAX_RECORD_BYTES` | 1048576 | a record over this is sent without its large values; > 0 |
//! | `DB_RECONNECT_BACKOFF_MIN` | 100 | ms, first database reconnect delay; > 0 and <= the max |
//! | `DB_RECONNECT_BACKOFF_MAX` | 120000 | ms, longest database reconnect delay; > 0 |
//! | `MAX_CONNECTIONS` | 100000 | open WebSockets accepted at once; > 0 |
//! | `MAX_CHANNELS_PER_SOCKET` | 100 | channels one socket may have joined at once; > 0 |
//! | `MAX_FRAME_BYTES` | 1048576 | largest WebSocket frame/message accepted from a client; > 0 |
//! | `SOCKET_QUEUE_DEPTH` | 16384 | frames queued for one socket before it is closed as a slow consumer; > 0 |
//! | `SOCKET_QUEUE_BYTES` | 16777216 | bytes queued for one socket before it is closed as a slow consumer (a frame shared by many sockets counts in each); > 0 |
//! | `MEMORY_BUDGET_MB` | half the cgroup memory limit, else 1024 | past this many MiB queued over all sockets, new sockets (503) and joins are refused; > 0 |
//! | `MAX_PENDING_CONNECTIONS` | 1000 | TCP connections that are not (yet) WebSockets (handshakes, HTTP requests, idle keep-alive), counted from accept; > 0 |
//! | `HEADER_READ_TIMEOUT_MS` | 10000 | a connection that has not sent a whole request head within this is closed; > 0 |
//! | `MAX_FILTER_VALUES` | 100 | values in one `in` filter list (Supabase Realtime's limit); > 0 |
//! | `MAX_FILTER_CONDITIONS` | 10 | conditions (joined with `,`) in one `postgres_changes` filter; > 0 |
//! | `MAX_BINDINGS_PER_JOIN` | 100 | `postgres_changes` bindings in one join; > 0 |
//! | `MAX_TOPIC_BYTES` | 255 | length of a channel's topic; > 0 |
//! | `MAX_PRESENCE_KEY_BYTES` | 255 | length of a presence key; > 0 |
//! | `MAX_PRESENCE_META_BYTES` | 4096 | size (as JSON) of what one `track` carries; > 0 |
//! | `MAX_PRESENCE_MEMBERS` | 1000 | presences tracked on one topic; > 0 |
//! | `MAX_EVENTS_PER_SECOND` | 100 | messages one socket may send per second (heartbeats aside), in bursts of as many; > 0 |
//! | `MAX_JOINS_PER_SECOND` | 100 | joins one socket may send per second; > 0 |
//! | `MAX_PRESENCE_EVENTS_PER_SECOND` | 10 | presence `track`/`untrack` one socket may send per second; > 0 |
//! | `MAX_CATALOG_LOOKUPS_PER_SECOND` | 2000 | catalog queries (one per `postgres_changes` binding the published tables' snapshot would refuse) the whole server sends PostgreSQL per second; > 0 |
//! | `CLUSTER_NAME` | `default` | servers on one database with the same name share Broadcast and Presence (`[a-z0-9_]`, 1-40 bytes) |
//! | `CLUSTER_HEARTBEAT_MS` | 1000 | how often a server tells the cluster it is alive; > 0 and < the node timeout |
//! | `CLUSTER_NODE_TIMEOUT_MS` | 5000 | a server not heard from for this long is gone, and its presences leave; > 0 |
//! | `CLUSTER_MAX_MESSAGE_BYTES` | 1048576 | largest broadcast payload sent to the cluster; a larger one is refused with a reason; > 0 |
//! | `CORS_ALLOWED_ORIGINS` | `*` | origins whose browsers may call the HTTP broadcast routes: `*` for any, or a comma-separated list of origins (`https://app.example.com,http://localhost:3000`) |
//! | `REPLICATION_READY_TIMEOUT_MS` | 60000 | a channel joined with `broadcast.replication_ready` is told within this that the replication stream is live, or closed with an error; > 0 |
//! | `POSTGRES_CHANGES_WAIT_MAX_MS` | 20000 | longest a join with `postgres_changes_options.wait` is held until its bindings are live (a client asking for longer waits this long); > 0 |
//!
//! `HOSTNAME` is not read: Docker and Kubernetes set it to the container's
//! name in every container, so it cannot say anything about this server; the
//! listen address is `BIND_ADDRESS`.

use std::collections::HashMap;
use std::fmt;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::time::Duration;

/// Default `JWT_LEEWAY`, seconds.
pub const DEFAULT_JWT_LEEWAY_S: u64 = 5;
/// Default `DB_ANON_ROLE`: PostgREST's and Supabase's anonymous role.
pub const DEFAULT_ANON_ROLE: &str = "anon";
/// Default `AUTHZ_CHECK_TIMEOUT_MS`.
pub const DEFAULT_AUTHZ_CHECK_TIMEOUT_MS: u64 = 5000;
/// Default `AUTHZ_REFRESH_MS`: grants, policies and roles changed while
/// clients are joined take effect within this (plus one check).
pub const DEFAULT_AUTHZ_REFRESH_MS: u64 = 2000;
/// Default `AUTHZ_POOL_SIZE`.
pub const DEFAULT_AUTHZ_POOL_SIZE: usize = 4;

/// Default `PORT`: Supabase Realtime's, which its clients' examples use.
pub const DEFAULT_PORT: u16 = 4000;
/// Default `BIND_ADDRESS`: every IPv4 interface, as in a container.
pub const DEFAULT_BIND_ADDRESS: IpAddr = IpAddr::V4(Ipv4Addr::UNSPECIFIED);
/// Default `DB_HOST`.
pub const DEFAULT_DB_HOST: &str = "localhost";
/// Default `DB_PORT`: PostgreSQL's port.
pub const DEFAULT_DB_PORT: u16 = 5432;
/// Default `DB_NAME`.
pub const DEFAULT_DB_NAME: &str = "postgres";
/// Default `DB_USER`.
pub const DEFAULT_DB_USER: &str = "postgres";
/// Default `DB_PASSWORD`: the PostgreSQL docker image's example, for local use only.
pub const DEFAULT_DB_PASSWORD: &str = "postgres";
/// Default `PUBLICATIONS`: the publication Supabase projects create.
pub const DEFAULT_PUBLICATION: &str = "supabase_realtime";
/// Default `RESUME_DELAY_MS`: realtime-js retries a lost socket after 1, 2
/// and 5 s, so most clients are back within this after a restart.
pub const DEFAULT_RESUME_DELAY_MS: u64 = 5000;
/// Default `MAX_RECORD_BYTES` (1 MiB): Supabase Realtime's limit; a larger record is sent
/// with its large values left out, which keeps one wide row from stalling every socket.
pub const DEFAULT_MAX_RECORD_BYTES: usize = 1024 * 1024;
/// Default `DB_RECONNECT_BACKOFF_MIN` (ms): fast enough that a database restart
/// is barely noticed, slow enough not to spin.
pub const DEFAULT_RECONNECT_BACKOFF_MIN_MS: u64 = 100;
/// Default `DB_RECONNECT_BACKOFF_MAX` (ms): two minutes, so a long outage costs the
/// database at most one connection attempt every two minutes.
pub const DEFAULT_RECONNECT_BACKOFF_MAX_MS: u64 = 120_000;
/// Default `MAX_CONNECTIONS`: well above what one node serves in practice, but a
/// bound, so a connection flood runs into a clean refusal rather than out of file
/// descriptors or memory.
pub const DEFAULT_MAX_CONNECTIONS: usize = 100_000;
/// Default `MAX_CHANNELS_PER_SOCKET`: apps join a handful of channels per socket;
/// 100 is Supabase's own default per-client limit, and bounds what one client can
/// make the server track.
pub const DEFAULT_MAX_CHANNELS_PER_SOCKET: usize = 100;
/// Default `MAX_FRAME_BYTES` (1 MiB): larger than any legitimate client frame
/// (joins, heartbeats, broadcasts), and caps what one frame can make us allocate.
pub const DEFAULT_MAX_FRAME_BYTES: usize = 1024 * 1024;
/// Default `CLUSTER_NAME`.
pub const DEFAULT_CLUSTER_NAME: &str = "default";
/// Default `CLUSTER_HEARTBEAT_MS`: one small `NOTIFY` a second per server.
pub const DEFAULT_CLUSTER_HEARTBEAT_MS: u64 = 1000;
/// Default `CLUSTER_NODE_TIMEOUT_MS`: five missed heartbeats, so a busy
/// database or a pause of the process does not make a live server leave.
pub const DEFAULT_CLUSTER_NODE_TIMEOUT_MS: u64 = 5000;
/// Default `CLUSTER_MAX_MESSAGE_BYTES`: `MAX_FRAME_BYTES`'s default, so any
/// broadcast a client may send crosses the cluster (in pieces of under 8000
/// bytes, PostgreSQL's `NOTIFY` limit, notified in one transaction).
pub const DEFAULT_CLUSTER_MAX_MESSAGE_BYTES: usize = 1024 * 1024;
/// Default `SOCKET_QUEUE_DEPTH`: absorbs the burst of a large transaction for a
/// client that is reading, while a client that stopped reading is closed after at
/// most this many frames instead of growing the server's memory without bound.
pub const DEFAULT_SOCKET_QUEUE_DEPTH: usize = 16_384;
/// Default `SOCKET_QUEUE_BYTES` (16 MiB): a burst of a large transaction for a
/// client that reads, while a client that does not is closed before it holds
/// more than this (plus one frame).
pub const DEFAULT_SOCKET_QUEUE_BYTES: usize = 16 * 1024 * 1024;
/// Default `MEMORY_BUDGET_MB` when the process has no cgroup memory limit.
pub const DEFAULT_MEMORY_BUDGET_MB: u64 = 1024;
/// Default `MAX_PENDING_CONNECTIONS`: connections accepted that are not
/// WebSockets yet. Far above what health checks, scrapes and handshakes in
/// flight need, and a bound on the file descriptors a flood of half-open
/// connections can hold beside `MAX_CONNECTIONS`.
pub const DEFAULT_MAX_PENDING_CONNECTIONS: usize = 1000;
/// Default `HEADER_READ_TIMEOUT_MS`: a browser on a slow network sends a
/// request head in well under a second; a peer that takes longer than this
/// holds a connection for nothing (slowloris).
pub const DEFAULT_HEADER_READ_TIMEOUT_MS: u64 = 10_000;
/// Default `MAX_FILTER_VALUES`: Supabase Realtime's limit on an `in` list. Each
/// distinct value is a key of the hub's index, touched under its lock at join
/// and leave.
pub const DEFAULT_MAX_FILTER_VALUES: usize = 100;
/// Default `MAX_FILTER_CONDITIONS`: a filter ANDs a few conditions (a room
/// and a status); each is checked for every change that reaches its binding,
/// so their number bounds a change's cost per subscriber.
pub const DEFAULT_MAX_FILTER_CONDITIONS: usize = 10;
/// Default `MAX_BINDINGS_PER_JOIN`: an app binds a few tables per channel; each
/// binding is a catalog lookup and an entry in the hub's index.
pub const DEFAULT_MAX_BINDINGS_PER_JOIN: usize = 100;
/// Default `MAX_TOPIC_BYTES`: topics are names (`realtime:room:42`); the hub keeps
/// each joined one.
pub const DEFAULT_MAX_TOPIC_BYTES: usize = 255;
/// Default `MAX_PRESENCE_KEY_BYTES`: a key names a user or a device.
pub const DEFAULT_MAX_PRESENCE_KEY_BYTES: usize = 255;
/// Default `MAX_PRESENCE_META_BYTES`: a presence carries a few fields (a name,
/// an avatar URL, a status); the server keeps it until untracked, and every
/// join of the topic receives it.
pub const DEFAULT_MAX_PRESENCE_META_BYTES: usize = 4096;
/// Default `MAX_PRESENCE_MEMBERS`: with `MAX_PRESENCE_META_BYTES`, bounds a
/// topic's presence state (what each join receives) to about 4 MiB.
pub const DEFAULT_MAX_PRESENCE_MEMBERS: usize = 1000;
/// Default `MAX_EVENTS_PER_SECOND` (per socket): ten times what realtime-js
/// sends at most by default (`eventsPerSecond: 10`); each broadcast costs the
/// server one frame per member of the topic.
pub const DEFAULT_MAX_EVENTS_PER_SECOND: u32 = 100;
/// Default `MAX_JOINS_PER_SECOND` (per socket): as many as a socket may hold
/// channels, so an app joins all of its channels at once.
pub const DEFAULT_MAX_JOINS_PER_SECOND: u32 = 100;
/// Default `MAX_PRESENCE_EVENTS_PER_SECOND` (per socket): presence is for who
/// is there, not for positions; every track is sent to every member.
pub const DEFAULT_MAX_PRESENCE_EVENTS_PER_SECOND: u32 = 10;
/// Default `MAX_CATALOG_LOOKUPS_PER_SECOND` (whole server): a binding the
/// snapshot of the published tables would refuse is checked once more with
/// a query to PostgreSQL; this keeps a storm of such joins from becoming a
/// database storm.
pub const DEFAULT_MAX_CATALOG_LOOKUPS_PER_SECOND: u32 = 2000;

/// Default `REPLICATION_READY_TIMEOUT_MS`: Supabase Realtime's.
pub const DEFAULT_REPLICATION_READY_TIMEOUT_MS: u64 = 60_000;
/// Default `POSTGRES_CHANGES_WAIT_MAX_MS`: Supabase Realtime's; realtime-js
/// asks for 15 s by default.
pub const DEFAULT_POSTGRES_CHANGES_WAIT_MAX_MS: u64 = 20_000;

/// In `SLOT_NAME`, replaced by the ordinal of the StatefulSet pod named by
/// `POD_NAME` (`rts-2` gives `2`).
pub const ORDINAL_PLACEHOLDER: &str = "{ordinal}";

/// The name of every variable this module reads (see the module documentation
/// for what each means). Code that writes a server's environment, the
/// operator's pod template, uses these rather than spelling the names again.
pub mod var {
    pub const PORT: &str = "PORT";
    pub const BIND_ADDRESS: &str = "BIND_ADDRESS";
    pub const DB_HOST: &str = "DB_HOST";
    pub const DB_PORT: &str = "DB_PORT";
    pub const DB_NAME: &str = "DB_NAME";
    pub const DB_USER: &str = "DB_USER";
    pub const DB_PASSWORD: &str = "DB_PASSWORD";
    pub const DB_SSL: &str = "DB_SSL";
    pub const PUBLICATIONS: &str = "PUBLICATIONS";
    pub const SLOT_NAME: &str = "SLOT_NAME";
    pub const POD_NAME: &str = "POD_NAME";
    pub const TEMPORARY_SLOT: &str = "TEMPORARY_SLOT";
    pub const MAX_REPLICATION_LAG_MB: &str = "MAX_REPLICATION_LAG_MB";
    pub const RESUME_DELAY_MS: &str = "RESUME_DELAY_MS";
    pub const SECURE_CHANNELS: &str = "SECURE_CHANNELS";
    pub const JWT_SECRET: &str = "JWT_SECRET";
    pub const JWT_CLAIM_VALIDATORS: &str = "JWT_CLAIM_VALIDATORS";
    pub const JWT_JWKS: &str = "JWT_JWKS";
    pub const JWT_JWKS_URL: &str = "JWT_JWKS_URL";
    pub const JWT_LEEWAY: &str = "JWT_LEEWAY";
    pub const DB_ANON_ROLE: &str = "DB_ANON_ROLE";
    pub const AUTHZ_CHECK_TIMEOUT_MS: &str = "AUTHZ_CHECK_TIMEOUT_MS";
    pub const AUTHZ_REFRESH_MS: &str = "AUTHZ_REFRESH_MS";
    pub const AUTHZ_POOL_SIZE: &str = "AUTHZ_POOL_SIZE";
    pub const PRIVATE_ONLY: &str = "PRIVATE_ONLY";
    pub const SECRET_KEY_BASE: &str = "SECRET_KEY_BASE";
    pub const MAX_RECORD_BYTES: &str = "MAX_RECORD_BYTES";
    pub const DB_RECONNECT_BACKOFF_MIN: &str = "DB_RECONNECT_BACKOFF_MIN";
    pub const DB_RECONNECT_BACKOFF_MAX: &str = "DB_RECONNECT_BACKOFF_MAX";
    pub const MAX_CONNECTIONS: &str = "MAX_CONNECTIONS";
    pub const MAX_CHANNELS_PER_SOCKET: &str = "MAX_CHANNELS_PER_SOCKET";
    pub const MAX_FRAME_BYTES: &str = "MAX_FRAME_BYTES";
    pub const SOCKET_QUEUE_DEPTH: &str = "SOCKET_QUEUE_DEPTH";
    pub const SOCKET_QUEUE_BYTES: &str = "SOCKET_QUEUE_BYTES";
    pub const MEMORY_BUDGET_MB: &str = "MEMORY_BUDGET_MB";
    pub const MAX_PENDING_CONNECTIONS: &str = "MAX_PENDING_CONNECTIONS";
    pub const HEADER_READ_TIMEOUT_MS: &str = "HEADER_READ_TIMEOUT_MS";
    pub const MAX_FILTER_VALUES: &str = "MAX_FILTER_VALUES";
    pub const MAX_FILTER_CONDITIONS: &str = "MAX_FILTER_CONDITIONS";
    pub const MAX_BINDINGS_PER_JOIN: &str = "MAX_BINDINGS_PER_JOIN";
    pub const MAX_TOPIC_BYTES: &str = "MAX_TOPIC_BYTES";
    pub const MAX_PRESENCE_KEY_BYTES: &str = "MAX_PRESENCE_KEY_BYTES";
    pub const MAX_PRESENCE_META_BYTES: &str = "MAX_PRESENCE_META_BYTES";
    pub const MAX_PRESENCE_MEMBERS: &str = "MAX_PRESENCE_MEMBERS";
    pub const MAX_EVENTS_PER_SECOND: &str = "MAX_EVENTS_PER_SECOND";
    pub const MAX_JOINS_PER_SECOND: &str = "MAX_JOINS_PER_SECOND";
    pub const MAX_PRESENCE_EVENTS_PER_SECOND: &str = "MAX_PRESENCE_EVENTS_PER_SECOND";
    pub const MAX_CATALOG_LOOKUPS_PER_SECOND: &str = "MAX_CATALOG_LOOKUPS_PER_SECOND";
    pub const CLUSTER_NAME: &str = "CLUSTER_NAME";
    pub const CLUSTER_HEARTBEAT_MS: &str = "CLUSTER_HEARTBEAT_MS";
    pub const CLUSTER_NODE_TIMEOUT_MS: &str = "CLUSTER_NODE_TIMEOUT_MS";
    pub const CLUSTER_MAX_MESSAGE_BYTES: &str = "CLUSTER_MAX_MESSAGE_BYTES";
    pub const CORS_ALLOWED_ORIGINS: &str = "CORS_ALLOWED_ORIGINS";
    pub const REPLICATION_READY_TIMEOUT_MS: &str = "REPLICATION_READY_TIMEOUT_MS";
    pub const POSTGRES_CHANGES_WAIT_MAX_MS: &str = "POSTGRES_CHANGES_WAIT_MAX_MS";
}

/// Every variable this module reads.
pub const VARIABLES: &[&str] = &[
    var::PORT,
    var::BIND_ADDRESS,
    var::DB_HOST,
    var::DB_PORT,
    var::DB_NAME,
    var::DB_USER,
    var::DB_PASSWORD,
    var::DB_SSL,
    var::PUBLICATIONS,
    var::SLOT_NAME,
    var::POD_NAME,
    var::TEMPORARY_SLOT,
    var::MAX_REPLICATION_LAG_MB,
    var::RESUME_DELAY_MS,
    var::SECURE_CHANNELS,
    var::JWT_SECRET,
    var::JWT_CLAIM_VALIDATORS,
    var::JWT_JWKS,
    var::JWT_JWKS_URL,
    var::JWT_LEEWAY,
    var::DB_ANON_ROLE,
    var::AUTHZ_CHECK_TIMEOUT_MS,
    var::AUTHZ_REFRESH_MS,
    var::AUTHZ_POOL_SIZE,
    var::PRIVATE_ONLY,
    var::SECRET_KEY_BASE,
    var::MAX_RECORD_BYTES,
    var::DB_RECONNECT_BACKOFF_MIN,
    var::DB_RECONNECT_BACKOFF_MAX,
    var::MAX_CONNECTIONS,
    var::MAX_CHANNELS_PER_SOCKET,
    var::MAX_FRAME_BYTES,
    var::SOCKET_QUEUE_DEPTH,
    var::SOCKET_QUEUE_BYTES,
    var::MEMORY_BUDGET_MB,
    var::MAX_PENDING_CONNECTIONS,
    var::HEADER_READ_TIMEOUT_MS,
    var::MAX_FILTER_VALUES,
    var::MAX_FILTER_CONDITIONS,
    var::MAX_BINDINGS_PER_JOIN,
    var::MAX_TOPIC_BYTES,
    var::MAX_PRESENCE_KEY_BYTES,
    var::MAX_PRESENCE_META_BYTES,
    var::MAX_PRESENCE_MEMBERS,
    var::MAX_EVENTS_PER_SECOND,
    var::MAX_JOINS_PER_SECOND,
    var::MAX_PRESENCE_EVENTS_PER_SECOND,
    var::MAX_CATALOG_LOOKUPS_PER_SECOND,
    var::CLUSTER_NAME,
    var::CLUSTER_HEARTBEAT_MS,
    var::CLUSTER_NODE_TIMEOUT_MS,
    var::CLUSTER_MAX_MESSAGE_BYTES,
    var::CORS_ALLOWED_ORIGINS,
    var::REPLICATION_READY_TIMEOUT_MS,
    var::POSTGRES_CHANGES_WAIT_MAX_MS,
];

/// Variables whose values are secrets: never printed.
pub const SECRET_VARIABLES: &[&str] = &[var::DB_PASSWORD, var::JWT_SECRET, var::SECRET_KEY_BASE];

/// The server's whole configuration. See the module documentation for the variables.
#[derive(Debug, Clone)]
pub struct Config {
    pub port: u16,
    pub bind_address: IpAddr,
    pub db: DbConfig,
    /// At least one, each non-empty.
    pub publications: Vec<String>,
    pub slot: SlotConfig,
    /// `None` when unset or 0: no lag check.
    pub max_replication_lag_mb: Option<u64>,
    /// With a durable slot, how long the first session waits before streaming.
    pub resume_delay: Duration,
    pub secure_channels: bool,
    /// With `jwt_jwks` or `jwt_jwks_url`, at least one is set when
    /// `secure_channels` is true.
    pub jwt_secret: Option<Secret>,
    pub jwt_jwks: Option<String>,
    pub jwt_jwks_url: Option<String>,
    pub jwt_leeway: Duration,
    /// The role of a token without a `role` claim.
    pub anon_role: String,
    pub authz_check_timeout: Duration,
    pub authz_refresh: Duration,
    pub authz_pool_size: usize,
    pub private_only: bool,
    pub jwt_claim_validators: serde_json::Map<String, serde_json::Value>,
    pub max_record_bytes: usize,
    pub reconnect_backoff_min: Duration,
    pub reconnect_backoff_max: Duration,
    pub max_connections: usize,
    pub max_channels_per_socket: usize,
    pub max_frame_bytes: usize,
    pub socket_queue_depth: usize,
    pub socket_queue_bytes: usize,
    /// `None` when unset: the server derives it (half the cgroup memory
    /// limit, else [`DEFAULT_MEMORY_BUDGET_MB`]).
    pub memory_budget_mb: Option<u64>,
    pub max_pending_connections: usize,
    pub header_read_timeout: Duration,
    pub max_filter_values: usize,
    pub max_filter_conditions: usize,
    pub max_bindings_per_join: usize,
    pub max_topic_bytes: usize,
    pub max_presence_key_bytes: usize,
    pub max_presence_meta_bytes: usize,
    pub max_presence_members: usize,
    pub max_events_per_second: u32,
    pub max_joins_per_second: u32,
    pub max_presence_events_per_second: u32,
    pub max_catalog_lookups_per_second: u32,
    pub cluster: ClusterConfig,
    pub cors_allowed_origins: CorsOrigins,
    pub replication_ready_timeout: Duration,
    pub postgres_changes_wait_max: Duration,
}

/// The origins whose browsers may call the HTTP routes (`CORS_ALLOWED_ORIGINS`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CorsOrigins {
    /// `*`: any origin.
    Any,
    /// These origins (`scheme://host[:port]`, lowercase), no other.
    List(Vec<String>),
}

impl CorsOrigins {
    /// Whether a browser at `origin` (its `Origin` header) may call.
    pub fn allows(&self, origin: &str) -> bool {
        match self {
            CorsOrigins::Any => true,
            CorsOrigins::List(list) => list.iter().any(|o| o.eq_ignore_ascii_case(origin)),
        }
    }

    /// `*`, or a comma-separated list of origins such as
    /// `https://app.example.com,http://localhost:3000`.
    pub fn parse(v: &str) -> Result<CorsOrigins, String> {
        const EXPECTED: &str = "* (any origin) or a comma-separated list of origins such as \
             https://app.example.com,http://localhost:3000";
        if v.trim() == "*" {
            return Ok(CorsOrigins::Any);
        }
        let mut list = Vec::new();
        for part in v.split(',') {
            let origin = part.trim();
            let Some((scheme, rest)) = origin.split_once("://") else {
                return Err(format!("{EXPECTED} ({origin:?} has no scheme://)"));
            };
            let scheme_ok = !scheme.is_empty()
                && scheme
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || matches!(c, '+' | '-' | '.'));
            if !scheme_ok || rest.is_empty() {
                return Err(format!("{EXPECTED} ({origin:?} is not scheme://host)"));
            }
            if rest.contains(['/', '?', '#', '*', ' ']) {
                return Err(format!(
                    "{EXPECTED} ({origin:?} has more than scheme://host[:port]: an origin has no \
                     path, and * stands alone)"
                ));
            }
            list.push(origin.to_ascii_lowercase());
        }
        Ok(CorsOrigins::List(list))
    }
}

/// How this server shares Broadcast and Presence with the others on its
/// database (`CLUSTER_*`).
#[derive(Debug, Clone)]
pub struct ClusterConfig {
    /// `[a-z0-9_]`, 1-40 bytes: the bus channel is `realtime_cluster_<name>`.
    pub name: String,
    pub heartbeat: Duration,
    pub node_timeout: Duration,
    pub max_message_bytes: usize,
}

/// Where and how to reach the database.
#[derive(Debug, Clone)]
pub struct DbConfig {
    pub host: String,
    pub port: u16,
    pub name: String,
    pub user: String,
    pub password: Secret,
    pub ssl: DbSsl,
}

/// TLS to the database (`DB_SSL`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DbSsl {
    /// `false`, `disable` (and the other false spellings): plain TCP.
    Disable,
    /// `true`, `require` (and the other true spellings): TLS, certificate not verified.
    Require,
    /// `verify-full`: TLS, certificate chain and host name verified.
    VerifyFull,
}

/// Which replication slot to stream from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SlotConfig {
    /// `SLOT_NAME` set (and `TEMPORARY_SLOT` not true): create if missing, resume from it.
    Durable(SlotName),
    /// A temporary slot, named by the server, gone when the connection ends.
    Temporary,
}

/// A valid PostgreSQL replication slot name: `[a-z0-9_]`, 1 to 63 bytes.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct SlotName(String);

impl SlotName {
    /// The longest slot name PostgreSQL accepts (NAMEDATALEN - 1).
    pub const MAX_LEN: usize = 63;

    /// Accepts only what PostgreSQL accepts as a replication slot name; the error
    /// says what is expected.
    pub fn parse(name: &str) -> Result<SlotName, String> {
        const EXPECTED: &str = "a replication slot name: 1 to 63 characters of a-z, 0-9 and _";
        if name.is_empty() {
            return Err(format!("{EXPECTED} (it is empty)"));
        }
        if name.len() > Self::MAX_LEN {
            return Err(format!("{EXPECTED} (it is {} bytes long)", name.len()));
        }
        if let Some(bad) = name
            .chars()
            .find(|c| !(c.is_ascii_lowercase() || c.is_ascii_digit() || *c == '_'))
        {
            return Err(format!("{EXPECTED} (it contains {bad:?})"));
        }
        Ok(SlotName(name.to_owned()))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for SlotName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// A secret value: `Debug` and `Display` print `<redacted>`; read it with [`Secret::expose`].
#[derive(Clone)]
pub struct Secret(String);

impl Secret {
    pub fn new(value: impl Into<String>) -> Secret {
        Secret(value.into())
    }

    /// The secret itself; only for the code that uses it (a key, a password).
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("<redacted>")
    }
}

impl fmt::Display for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("<redacted>")
    }
}

/// One problem with the environment.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ConfigIssue {
    /// A variable's value is not what it should be.
    #[error("{var}={}: expected {expected}", shown(.value))]
    BadValue {
        var: &'static str,
        value: String,
        expected: String,
    },
    /// A secret variable's value is unusable (the value is not kept).
    #[error("{var} (value not shown, it is secret): expected {expected}")]
    BadSecret { var: &'static str, expected: String },
    /// A variable's value is not valid UTF-8 (so it cannot be shown either).
    #[error("{var} is not valid UTF-8: expected a UTF-8 string")]
    NotUnicode { var: &'static str },
    /// A variable the server refuses to take, whatever its value (which is
    /// not shown: the only such variable is a secret).
    #[error("{var} is set: {why}")]
    Refused { var: &'static str, why: String },
    /// Variables that are each fine but do not go together.
    #[error("{0}")]
    Conflict(String),
}

impl ConfigIssue {
    /// The variable the problem is about, for a single-variable problem.
    pub fn variable(&self) -> Option<&'static str> {
        match self {
            ConfigIssue::BadValue { var, .. }
            | ConfigIssue::BadSecret { var, .. }
            | ConfigIssue::NotUnicode { var, .. }
            | ConfigIssue::Refused { var, .. } => Some(var),
            ConfigIssue::Conflict(_) => None,
        }
    }
}

/// Why the server cannot start: every problem found, one per line.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ConfigError {
    #[error("{}", lines(.0))]
    Invalid(Vec<ConfigIssue>),
}

impl ConfigError {
    pub fn issues(&self) -> &[ConfigIssue] {
        match self {
            ConfigError::Invalid(issues) => issues,
        }
    }
}

fn lines(issues: &[ConfigIssue]) -> String {
    issues
        .iter()
        .map(ToString::to_string)
        .collect::<Vec<_>>()
        .join("\n")
}

/// A value as shown in an error: control characters escaped (so each problem
/// stays on one line) and cut at 200 characters.
fn shown(value: &str) -> String {
    const LIMIT: usize = 200;
    let mut out = String::new();
    for (i, c) in value.chars().enumerate() {
        if i == LIMIT {
            out.push_str("...");
            break;
        }
        if c.is_control() {
            out.extend(c.escape_default());
        } else {
            out.push(c);
        }
    }
    out
}

impl Config {
    /// Reads the process environment. Values that are not valid UTF-8 are errors
    /// for the variables this module reads, and ignored for all others.
    pub fn from_env() -> Result<Config, ConfigError> {
        let mut vars = HashMap::new();
        let mut not_unicode = Vec::new();
        for (name, value) in std::env::vars_os() {
            let Some(name) = name.to_str() else { continue };
            let Some(&known) = VARIABLES.iter().find(|v| **v == name) else {
                continue;
            };
            match value.into_string() {
                Ok(value) => {
                    vars.insert(known, value);
                }
                Err(_) => not_unicode.push(known),
            }
        }
        Self::from_map(vars, not_unicode)
    }

    /// Reads the given variables as if they were the whole environment; for tests.
    /// A name given twice: the last value wins. Unknown names are ignored.
    pub fn from_vars<I, K, V>(vars: I) -> Result<Config, ConfigError>
    where
        I: IntoIterator<Item = (K, V)>,
        K: AsRef<str>,
        V: AsRef<str>,
    {
        let mut map = HashMap::new();
        for (name, value) in vars {
            if let Some(&known) = VARIABLES.iter().find(|v| **v == name.as_ref()) {
                map.insert(known, value.as_ref().to_owned());
            }
        }
        Self::from_map(map, Vec::new())
    }

    /// The socket address to listen on.
    pub fn listen_addr(&self) -> SocketAddr {
        SocketAddr::new(self.bind_address, self.port)
    }

    fn from_map(
        vars: HashMap<&'static str, String>,
        not_unicode: Vec<&'static str>,
    ) -> Result<Config, ConfigError> {
        let mut r = Reader {
            vars,
            not_unicode,
            issues: Vec::new(),
        };

        let port = r.parse(var::PORT, DEFAULT_PORT, parse_port);
        let bind_address = r.parse(var::BIND_ADDRESS, DEFAULT_BIND_ADDRESS, |v| {
            v.parse::<IpAddr>()
                .map_err(|_| "an IP address such as 0.0.0.0 or :: (not a host name)".to_owned())
        });

        let db = DbConfig {
            host: r
                .string(var::DB_HOST)
                .unwrap_or_else(|| DEFAULT_DB_HOST.into()),
            port: r.parse(var::DB_PORT, DEFAULT_DB_PORT, parse_port),
            name: r
                .string(var::DB_NAME)
                .unwrap_or_else(|| DEFAULT_DB_NAME.into()),
            user: r
                .string(var::DB_USER)
                .unwrap_or_else(|| DEFAULT_DB_USER.into()),
            password: r
                .secret(var::DB_PASSWORD)
                .unwrap_or_else(|| Secret::new(DEFAULT_DB_PASSWORD)),
            ssl: r.parse(var::DB_SSL, DbSsl::Disable, parse_db_ssl),
        };

        let publications = r.parse(
            var::PUBLICATIONS,
            vec![DEFAULT_PUBLICATION.to_owned()],
            parse_publications,
        );

        // A StatefulSet shares one pod template among its replicas, so the
        // operator sets SLOT_NAME=prefix_{ordinal} and POD_NAME from the
        // downward API: each pod streams from its own slot.
        let pod_name = r.string(var::POD_NAME);
        let slot_name = r.optional(var::SLOT_NAME, |v| {
            if !v.contains(ORDINAL_PLACEHOLDER) {
                return SlotName::parse(v);
            }
            let pod = pod_name.as_deref().ok_or_else(|| {
                format!(
                    "POD_NAME to be set: the name contains {ORDINAL_PLACEHOLDER}, which is \
                     replaced by the ordinal at the end of POD_NAME (a StatefulSet pod, e.g. rts-0)"
                )
            })?;
            let ordinal = pod
                .rsplit_once('-')
                .map(|(_, n)| n)
                .filter(|n| !n.is_empty() && n.bytes().all(|b| b.is_ascii_digit()))
                .ok_or_else(|| {
                    format!(
                        "POD_NAME={pod:?} to end in -<ordinal> (a StatefulSet pod name), to \
                         replace {ORDINAL_PLACEHOLDER}"
                    )
                })?;
            SlotName::parse(&v.replace(ORDINAL_PLACEHOLDER, ordinal))
        });
        let temporary_slot = r.parse(var::TEMPORARY_SLOT, false, parse_bool);
        let slot = match slot_name {
            Some(name) if !temporary_slot => SlotConfig::Durable(name),
            _ => SlotConfig::Temporary,
        };

        let max_replication_lag_mb: u64 = r.parse(var::MAX_REPLICATION_LAG_MB, 0, |v| {
            parse_number(v, "a whole number of megabytes (0 to turn the check off)")
        });
        let max_replication_lag_mb = (max_replication_lag_mb > 0).then_some(max_replication_lag_mb);

        let secure_channels_set = r.is_set(var::SECURE_CHANNELS);
        let secure_channels = r.optional(var::SECURE_CHANNELS, parse_bool);
        let jwt_secret = r.secret(var::JWT_SECRET);
        let jwt_jwks = r.optional(var::JWT_JWKS, |v| {
            serde_json::from_str::<serde_json::Value>(v)
                .ok()
                .filter(serde_json::Value::is_object)
                .map(|_| v.to_owned())
                .ok_or_else(|| "a JSON object: a JWKS ({\"keys\": [...]}) or one JWK".to_owned())
        });
        let jwt_jwks_url = r.optional(var::JWT_JWKS_URL, |v| {
            if (v.starts_with("https://") || v.starts_with("http://"))
                && !v.contains(char::is_whitespace)
            {
                Ok(v.to_owned())
            } else {
                Err("an https:// (or http://) URL".to_owned())
            }
        });
        let jwt_leeway = r.parse(var::JWT_LEEWAY, DEFAULT_JWT_LEEWAY_S, |v| {
            parse_number::<u64>(v, "a whole number of seconds (0 for none)")
        });
        let no_key = jwt_secret.is_none()
            && jwt_jwks.is_none()
            && jwt_jwks_url.is_none()
            && !r.is_set(var::JWT_JWKS)
            && !r.is_set(var::JWT_JWKS_URL);
        if secure_channels.unwrap_or(!secure_channels_set) && no_key {
            r.issues.push(ConfigIssue::Conflict(format!(
                "SECURE_CHANNELS is true{} but JWT_SECRET is not set: set JWT_SECRET to the \
                 secret that signs your clients' tokens (or JWT_JWKS / JWT_JWKS_URL for \
                 asymmetric keys), or SECURE_CHANNELS=false to accept anyone",
                if secure_channels_set {
                    ""
                } else {
                    " (the default)"
                }
            )));
        }
        let secure_channels = secure_channels.unwrap_or(true);

        let jwt_claim_validators = r.parse(
            var::JWT_CLAIM_VALIDATORS,
            serde_json::Map::new(),
            parse_claim_validators,
        );
        if r.is_set(var::SECRET_KEY_BASE) {
            r.issues.push(ConfigIssue::Refused {
                var: var::SECRET_KEY_BASE,
                why: "this server signs nothing with it (Supabase Realtime signs its Phoenix \
                      sessions with it; client tokens are checked with JWT_SECRET): unset it, and \
                      put the secret that signs your clients' tokens in JWT_SECRET"
                    .to_owned(),
            });
        }

        let anon_role = r
            .string(var::DB_ANON_ROLE)
            .map(|v| v.trim().to_owned())
            .unwrap_or_else(|| DEFAULT_ANON_ROLE.to_owned());
        let authz_check_timeout = r.positive(
            var::AUTHZ_CHECK_TIMEOUT_MS,
            DEFAULT_AUTHZ_CHECK_TIMEOUT_MS,
            "milliseconds",
        );
        let authz_refresh = r.positive(
            var::AUTHZ_REFRESH_MS,
            DEFAULT_AUTHZ_REFRESH_MS,
            "milliseconds",
        );
        let authz_pool_size =
            r.positive(var::AUTHZ_POOL_SIZE, DEFAULT_AUTHZ_POOL_SIZE, "connections");
        let private_only = r.parse(var::PRIVATE_ONLY, false, parse_bool);

        let resume_delay_ms = r.parse(var::RESUME_DELAY_MS, DEFAULT_RESUME_DELAY_MS, |v| {
            parse_number::<u64>(v, "a whole number of milliseconds (0 streams at once)")
        });

        let max_record_bytes = r.positive(var::MAX_RECORD_BYTES, DEFAULT_MAX_RECORD_BYTES, "bytes");

        let backoff_min = r.positive(
            var::DB_RECONNECT_BACKOFF_MIN,
            DEFAULT_RECONNECT_BACKOFF_MIN_MS,
            "milliseconds",
        );
        let backoff_max = r.positive(
            var::DB_RECONNECT_BACKOFF_MAX,
            DEFAULT_RECONNECT_BACKOFF_MAX_MS,
            "milliseconds",
        );
        if backoff_min > backoff_max {
            r.issues.push(ConfigIssue::Conflict(format!(
                "DB_RECONNECT_BACKOFF_MIN={backoff_min} is greater than \
                 DB_RECONNECT_BACKOFF_MAX={backoff_max}: expected the minimum delay to be at most the maximum"
            )));
        }

        let max_connections =
            r.positive(var::MAX_CONNECTIONS, DEFAULT_MAX_CONNECTIONS, "connections");
        let max_channels_per_socket = r.positive(
            var::MAX_CHANNELS_PER_SOCKET,
            DEFAULT_MAX_CHANNELS_PER_SOCKET,
            "channels",
        );
        let max_frame_bytes = r.positive(var::MAX_FRAME_BYTES, DEFAULT_MAX_FRAME_BYTES, "bytes");
        let socket_queue_depth = r.positive(
            var::SOCKET_QUEUE_DEPTH,
            DEFAULT_SOCKET_QUEUE_DEPTH,
            "frames",
        );
        let socket_queue_bytes =
            r.positive(var::SOCKET_QUEUE_BYTES, DEFAULT_SOCKET_QUEUE_BYTES, "bytes");
        let memory_budget_mb = r.optional(var::MEMORY_BUDGET_MB, |v| {
            let expected = "a positive whole number of MiB";
            match parse_number::<u64>(v, expected)? {
                0 => Err(expected.to_owned()),
                n => Ok(n),
            }
        });
        let max_pending_connections = r.positive(
            var::MAX_PENDING_CONNECTIONS,
            DEFAULT_MAX_PENDING_CONNECTIONS,
            "connections",
        );
        let header_read_timeout_ms = r.positive(
            var::HEADER_READ_TIMEOUT_MS,
            DEFAULT_HEADER_READ_TIMEOUT_MS,
            "milliseconds",
        );
        let max_filter_values =
            r.positive(var::MAX_FILTER_VALUES, DEFAULT_MAX_FILTER_VALUES, "values");
        let max_filter_conditions = r.positive(
            var::MAX_FILTER_CONDITIONS,
            DEFAULT_MAX_FILTER_CONDITIONS,
            "conditions",
        );
        let max_bindings_per_join = r.positive(
            var::MAX_BINDINGS_PER_JOIN,
            DEFAULT_MAX_BINDINGS_PER_JOIN,
            "bindings",
        );
        let max_topic_bytes = r.positive(var::MAX_TOPIC_BYTES, DEFAULT_MAX_TOPIC_BYTES, "bytes");
        let max_presence_key_bytes = r.positive(
            var::MAX_PRESENCE_KEY_BYTES,
            DEFAULT_MAX_PRESENCE_KEY_BYTES,
            "bytes",
        );
        let max_presence_meta_bytes = r.positive(
            var::MAX_PRESENCE_META_BYTES,
            DEFAULT_MAX_PRESENCE_META_BYTES,
            "bytes",
        );
        let max_presence_members = r.positive(
            var::MAX_PRESENCE_MEMBERS,
            DEFAULT_MAX_PRESENCE_MEMBERS,
            "presences",
        );
        let max_events_per_second = r.positive(
            var::MAX_EVENTS_PER_SECOND,
            DEFAULT_MAX_EVENTS_PER_SECOND,
            "messages per second",
        );
        let max_joins_per_second = r.positive(
            var::MAX_JOINS_PER_SECOND,
            DEFAULT_MAX_JOINS_PER_SECOND,
            "joins per second",
        );
        let max_presence_events_per_second = r.positive(
            var::MAX_PRESENCE_EVENTS_PER_SECOND,
            DEFAULT_MAX_PRESENCE_EVENTS_PER_SECOND,
            "presence events per second",
        );
        let max_catalog_lookups_per_second = r.positive(
            var::MAX_CATALOG_LOOKUPS_PER_SECOND,
            DEFAULT_MAX_CATALOG_LOOKUPS_PER_SECOND,
            "lookups per second",
        );

        let cluster_name = r.parse(var::CLUSTER_NAME, DEFAULT_CLUSTER_NAME.to_owned(), |v| {
            if !v.is_empty()
                && v.len() <= 40
                && v.bytes()
                    .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_')
            {
                Ok(v.to_owned())
            } else {
                Err("1-40 characters of a-z, 0-9 and _ (it names a LISTEN channel)".to_owned())
            }
        });
        let heartbeat_ms = r.positive(
            var::CLUSTER_HEARTBEAT_MS,
            DEFAULT_CLUSTER_HEARTBEAT_MS,
            "milliseconds",
        );
        let node_timeout_ms = r.positive(
            var::CLUSTER_NODE_TIMEOUT_MS,
            DEFAULT_CLUSTER_NODE_TIMEOUT_MS,
            "milliseconds",
        );
        if heartbeat_ms >= node_timeout_ms {
            r.issues.push(ConfigIssue::Conflict(format!(
                "CLUSTER_HEARTBEAT_MS={heartbeat_ms} is not less than \
                 CLUSTER_NODE_TIMEOUT_MS={node_timeout_ms}: a live server would be taken for gone \
                 between two heartbeats; make the timeout several heartbeats long"
            )));
        }
        let cluster_max_message_bytes = r.positive(
            var::CLUSTER_MAX_MESSAGE_BYTES,
            DEFAULT_CLUSTER_MAX_MESSAGE_BYTES,
            "bytes",
        );

        let cors_allowed_origins = r.parse(
            var::CORS_ALLOWED_ORIGINS,
            CorsOrigins::Any,
            CorsOrigins::parse,
        );
        let replication_ready_timeout_ms = r.positive(
            var::REPLICATION_READY_TIMEOUT_MS,
            DEFAULT_REPLICATION_READY_TIMEOUT_MS,
            "milliseconds",
        );
        let postgres_changes_wait_max_ms = r.positive(
            var::POSTGRES_CHANGES_WAIT_MAX_MS,
            DEFAULT_POSTGRES_CHANGES_WAIT_MAX_MS,
            "milliseconds",
        );

        if !r.issues.is_empty() {
            return Err(ConfigError::Invalid(r.issues));
        }
        Ok(Config {
            port,
            bind_address,
            db,
            publications,
            slot,
            max_replication_lag_mb,
            resume_delay: Duration::from_millis(resume_delay_ms),
            secure_channels,
            jwt_secret,
            jwt_jwks,
            jwt_jwks_url,
            jwt_leeway: Duration::from_secs(jwt_leeway),
            anon_role,
            authz_check_timeout: Duration::from_millis(authz_check_timeout),
            authz_refresh: Duration::from_millis(authz_refresh),
            authz_pool_size,
            private_only,
            jwt_claim_validators,
            max_record_bytes,
            reconnect_backoff_min: Duration::from_millis(backoff_min),
            reconnect_backoff_max: Duration::from_millis(backoff_max),
            max_connections,
            max_channels_per_socket,
            max_frame_bytes,
            socket_queue_depth,
            socket_queue_bytes,
            memory_budget_mb,
            max_pending_connections,
            header_read_timeout: Duration::from_millis(header_read_timeout_ms),
            max_filter_values,
            max_filter_conditions,
            max_bindings_per_join,
            max_topic_bytes,
            max_presence_key_bytes,
            max_presence_meta_bytes,
            max_presence_members,
            max_events_per_second,
            max_joins_per_second,
            max_presence_events_per_second,
            max_catalog_lookups_per_second,
            cluster: ClusterConfig {
                name: cluster_name,
                heartbeat: Duration::from_millis(heartbeat_ms),
                node_timeout: Duration::from_millis(node_timeout_ms),
                max_message_bytes: cluster_max_message_bytes,
            },
            cors_allowed_origins,
            replication_ready_timeout: Duration::from_millis(replication_ready_timeout_ms),
            postgres_changes_wait_max: Duration::from_millis(postgres_changes_wait_max_ms),
        })
    }
}

/// Reads variables, remembering every problem instead of stopping at the first.
struct Reader {
    vars: HashMap<&'static str, String>,
    not_unicode: Vec<&'static str>,
    issues: Vec<ConfigIssue>,
}

impl Reader {
    fn is_set(&self, var: &'static str) -> bool {
        self.not_unicode.contains(&var) || self.raw(var).is_some()
    }

    /// The value, if set and not blank.
    fn raw(&self, var: &'static str) -> Option<&str> {
        self.vars
            .get(var)
            .map(String::as_str)
            .filter(|v| !v.trim().is_empty())
    }

    /// `Some` when set and valid; records the problem when set and invalid.
    fn optional<T>(
        &mut self,
        var: &'static str,
        parse: impl FnOnce(&str) -> Result<T, String>,
    ) -> Option<T> {
        if self.not_unicode.contains(&var) {
            self.issues.push(ConfigIssue::NotUnicode { var });
            return None;
        }
        let value = self.raw(var)?.trim().to_owned();
        match parse(&value) {
            Ok(parsed) => Some(parsed),
            Err(expected) => {
                let issue = if SECRET_VARIABLES.contains(&var) {
                    ConfigIssue::BadSecret { var, expected }
                } else {
                    ConfigIssue::BadValue {
                        var,
                        value,
                        expected,
                    }
                };
                self.issues.push(issue);
                None
            }
        }
    }

    /// The parsed value, or `default` when unset or invalid (then the problem is recorded).
    fn parse<T>(
        &mut self,
        var: &'static str,
        default: T,
        parse: impl FnOnce(&str) -> Result<T, String>,
    ) -> T {
        self.optional(var, parse).unwrap_or(default)
    }

    /// A free-form string, kept as given (not trimmed).
    fn string(&mut self, var: &'static str) -> Option<String> {
        if self.not_unicode.contains(&var) {
            self.issues.push(ConfigIssue::NotUnicode { var });
            return None;
        }
        self.raw(var).map(str::to_owned)
    }

    /// A secret, kept as given (not trimmed).
    fn secret(&mut self, var: &'static str) -> Option<Secret> {
        self.string(var).map(Secret)
    }

    /// A number greater than zero.
    fn positive<T>(&mut self, var: &'static str, default: T, unit: &str) -> T
    where
        T: std::str::FromStr + PartialEq + From<u8>,
    {
        self.parse(var, default, |v| {
            let expected = format!("a positive whole number of {unit}");
            match parse_number::<T>(v, &expected)? {
                n if n == T::from(0) => Err(expected),
                n => Ok(n),
            }
        })
    }
}

fn parse_number<T: std::str::FromStr>(value: &str, expected: &str) -> Result<T, String> {
    // `FromStr` for integers accepts a leading '+'; we accept digits only.
    if value.is_empty() || !value.bytes().all(|b| b.is_ascii_digit()) {
        return Err(expected.to_owned());
    }
    value.parse().map_err(|_| expected.to_owned())
}

fn parse_port(value: &str) -> Result<u16, String> {
    const EXPECTED: &str = "a port number (1-65535)";
    match parse_number::<u16>(value, EXPECTED)? {
        0 => Err(EXPECTED.to_owned()),
        port => Ok(port),
    }
}

/// `true`/`false`/`1`/`0`/`yes`/`no`, any case.
pub fn parse_bool(value: &str) -> Result<bool, String> {
    match value.to_ascii_lowercase().as_str() {
        "true" | "1" | "yes" => Ok(true),
        "false" | "0" | "no" => Ok(false),
        _ => Err("a boolean: true, false, 1, 0, yes or no".to_owned()),
    }
}

fn parse_db_ssl(value: &str) -> Result<DbSsl, String> {
    match value.to_ascii_lowercase().as_str() {
        "disable" => Ok(DbSsl::Disable),
        "require" => Ok(DbSsl::Require),
        "verify-full" => Ok(DbSsl::VerifyFull),
        other => match parse_bool(other) {
            Ok(true) => Ok(DbSsl::Require),
            Ok(false) => Ok(DbSsl::Disable),
            Err(_) => Err("false, disable, true, require or verify-full".to_owned()),
        },
    }
}

fn parse_publications(value: &str) -> Result<Vec<String>, String> {
    const EXPECTED: &str =
        "a JSON array of one or more non-empty publication names, such as [\"supabase_realtime\"]";
    let parsed: serde_json::Value =
        serde_json::from_str(value).map_err(|e| format!("{EXPECTED} (invalid JSON: {e})"))?;
    let serde_json::Value::Array(items) = parsed else {
        return Err(format!("{EXPECTED} (it is not an array)"));
    };
    if items.is_empty() {
        return Err(format!("{EXPECTED} (the array is empty)"));
    }
    items
        .into_iter()
        .map(|item| match item {
            serde_json::Value::String(name) if !name.is_empty() => Ok(name),
            serde_json::Value::String(_) => Err(format!("{EXPECTED} (a name is empty)")),
            other => Err(format!("{EXPECTED} ({other} is not a string)")),
        })
        .collect()
}

fn parse_claim_validators(
    value: &str,
) -> Result<serde_json::Map<String, serde_json::Value>, String> {
    const EXPECTED: &str =
        "a JSON object of claim names to required values, such as {\"iss\":\"supabase\"}";
    match serde_json::from_str(value) {
        Ok(serde_json::Value::Object(map)) => Ok(map),
        Ok(_) => Err(format!("{EXPECTED} (it is not an object)")),
        Err(e) => Err(format!("{EXPECTED} (invalid JSON: {e})")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const SECRET: &str = "sup3r-s3cret-value";

    fn ok(vars: &[(&str, &str)]) -> Config {
        Config::from_vars(vars.iter().copied()).unwrap_or_else(|e| panic!("{e}"))
    }

    fn err(vars: &[(&str, &str)]) -> ConfigError {
        match Config::from_vars(vars.iter().copied()) {
            Ok(config) => panic!("expected an error, got {config:?}"),
            Err(e) => e,
        }
    }

    /// Insecure mode, so only the variables under test matter.
    fn with_insecure<'a>(vars: &[(&'a str, &'a str)]) -> Vec<(&'a str, &'a str)> {
        let mut all = vec![("SECURE_CHANNELS", "false")];
        all.extend_from_slice(vars);
        all
    }

    #[test]
    fn defaults() {
        let c = ok(&[("JWT_SECRET", SECRET)]);
        assert_eq!(c.port, 4000);
        assert_eq!(c.bind_address, "0.0.0.0".parse::<IpAddr>().unwrap());
        assert_eq!(c.listen_addr(), "0.0.0.0:4000".parse().unwrap());
        assert_eq!(c.db.host, "localhost");
        assert_eq!(c.db.port, 5432);
        assert_eq!(c.db.name, "postgres");
        assert_eq!(c.db.user, "postgres");
        assert_eq!(c.db.password.expose(), "postgres");
        assert_eq!(c.db.ssl, DbSsl::Disable);
        assert_eq!(c.publications, vec!["supabase_realtime".to_owned()]);
        assert_eq!(c.slot, SlotConfig::Temporary);
        assert_eq!(c.max_replication_lag_mb, None);
        assert!(c.secure_channels);
        assert_eq!(c.jwt_secret.as_ref().map(Secret::expose), Some(SECRET));
        assert!(c.jwt_claim_validators.is_empty());
        assert_eq!(c.max_record_bytes, 1_048_576);
        assert_eq!(c.reconnect_backoff_min, Duration::from_millis(100));
        assert_eq!(c.reconnect_backoff_max, Duration::from_millis(120_000));
        assert_eq!(c.max_connections, 100_000);
        assert_eq!(c.max_channels_per_socket, 100);
        assert_eq!(c.max_frame_bytes, 1_048_576);
        assert_eq!(c.socket_queue_depth, 16_384);
        assert_eq!(c.socket_queue_bytes, 16 << 20);
        assert_eq!(c.memory_budget_mb, None);
        assert_eq!(c.max_pending_connections, 1000);
        assert_eq!(c.header_read_timeout, Duration::from_secs(10));
        assert_eq!(c.max_filter_values, 100);
        assert_eq!(c.max_filter_conditions, 10);
        assert_eq!(c.max_bindings_per_join, 100);
        assert_eq!(c.max_topic_bytes, 255);
        assert_eq!(c.max_presence_key_bytes, 255);
        assert_eq!(c.max_presence_meta_bytes, 4096);
        assert_eq!(c.max_presence_members, 1000);
        assert_eq!(c.max_events_per_second, 100);
        assert_eq!(c.max_joins_per_second, 100);
        assert_eq!(c.max_presence_events_per_second, 10);
        assert_eq!(c.max_catalog_lookups_per_second, 2000);
        assert_eq!(c.cors_allowed_origins, CorsOrigins::Any);
        assert_eq!(c.replication_ready_timeout, Duration::from_secs(60));
        assert_eq!(c.postgres_changes_wait_max, Duration::from_secs(20));
    }

    #[test]
    fn cors_allowed_origins_is_any_or_a_list_of_origins() {
        let c = ok(&with_insecure(&[(
            "CORS_ALLOWED_ORIGINS",
            "https://App.example.com, http://localhost:3000",
        )]));
        let cors = &c.cors_allowed_origins;
        assert_eq!(
            cors,
            &CorsOrigins::List(vec![
                "https://app.example.com".into(),
                "http://localhost:3000".into()
            ])
        );
        assert!(cors.allows("https://app.example.com"));
        assert!(cors.allows("http://localhost:3000"));
        assert!(!cors.allows("http://localhost:3001"));
        assert!(!cors.allows("https://evil.example.com"));
        assert!(CorsOrigins::parse(" * ")
            .unwrap()
            .allows("https://any.where"));
        for (bad, why) in [
            ("app.example.com", "has no scheme://"),
            (
                "https://app.example.com/",
                "has more than scheme://host[:port]",
            ),
            (
                "https://*.example.com",
                "has more than scheme://host[:port]",
            ),
            ("*,https://a.example.com", "has no scheme://"),
            ("https://", "is not scheme://host"),
            (
                "https://a.example.com,,https://b.example.com",
                "has no scheme://",
            ),
        ] {
            let e = err(&with_insecure(&[("CORS_ALLOWED_ORIGINS", bad)]));
            let message = e.to_string();
            assert!(
                message.starts_with(&format!(
                    "CORS_ALLOWED_ORIGINS={bad}: expected * (any origin)"
                )),
                "{message}"
            );
            assert!(message.contains(why), "{bad}: {message}");
        }
    }

    #[test]
    fn every_value_is_read() {
        let c = ok(&[
            ("PORT", "8080"),
            ("BIND_ADDRESS", "::"),
            ("DB_HOST", "db.internal"),
            ("DB_PORT", "6543"),
            ("DB_NAME", "app"),
            ("DB_USER", "replicator"),
            ("DB_PASSWORD", "pw"),
            ("DB_SSL", "verify-full"),
            ("PUBLICATIONS", r#"["a","b"]"#),
            ("SLOT_NAME", "realtime_slot_1"),
            ("MAX_REPLICATION_LAG_MB", "512"),
            ("SECURE_CHANNELS", "yes"),
            ("JWT_SECRET", SECRET),
            ("JWT_CLAIM_VALIDATORS", r#"{"iss":"supabase","n":1}"#),
            ("MAX_RECORD_BYTES", "2048"),
            ("DB_RECONNECT_BACKOFF_MIN", "5"),
            ("DB_RECONNECT_BACKOFF_MAX", "5"),
            ("MAX_CONNECTIONS", "10"),
            ("MAX_CHANNELS_PER_SOCKET", "3"),
            ("MAX_FRAME_BYTES", "4096"),
            ("SOCKET_QUEUE_DEPTH", "7"),
            ("SOCKET_QUEUE_BYTES", "9000"),
            ("MEMORY_BUDGET_MB", "300"),
            ("MAX_PENDING_CONNECTIONS", "8"),
            ("HEADER_READ_TIMEOUT_MS", "250"),
            ("MAX_FILTER_VALUES", "2"),
            ("MAX_FILTER_CONDITIONS", "12"),
            ("MAX_BINDINGS_PER_JOIN", "3"),
            ("MAX_TOPIC_BYTES", "4"),
            ("MAX_PRESENCE_KEY_BYTES", "5"),
            ("MAX_PRESENCE_META_BYTES", "6"),
            ("MAX_PRESENCE_MEMBERS", "7"),
            ("MAX_EVENTS_PER_SECOND", "8"),
            ("MAX_JOINS_PER_SECOND", "9"),
            ("MAX_PRESENCE_EVENTS_PER_SECOND", "10"),
            ("MAX_CATALOG_LOOKUPS_PER_SECOND", "11"),
            ("CORS_ALLOWED_ORIGINS", "https://app.example.com"),
            ("REPLICATION_READY_TIMEOUT_MS", "1500"),
            ("POSTGRES_CHANGES_WAIT_MAX_MS", "2500"),
            ("UNRELATED", "whatever"),
        ]);
        assert_eq!(c.listen_addr(), "[::]:8080".parse().unwrap());
        assert_eq!(c.db.host, "db.internal");
        assert_eq!(c.db.port, 6543);
        assert_eq!(c.db.name, "app");
        assert_eq!(c.db.user, "replicator");
        assert_eq!(c.db.password.expose(), "pw");
        assert_eq!(c.db.ssl, DbSsl::VerifyFull);
        assert_eq!(c.publications, vec!["a".to_owned(), "b".to_owned()]);
        assert_eq!(
            c.slot,
            SlotConfig::Durable(SlotName::parse("realtime_slot_1").unwrap())
        );
        assert_eq!(c.max_replication_lag_mb, Some(512));
        assert!(c.secure_channels);
        assert_eq!(c.jwt_claim_validators["iss"], "supabase");
        assert_eq!(c.jwt_claim_validators["n"], 1);
        assert_eq!(c.max_record_bytes, 2048);
        assert_eq!(c.reconnect_backoff_min, Duration::from_millis(5));
        assert_eq!(c.reconnect_backoff_max, Duration::from_millis(5));
        assert_eq!(c.max_connections, 10);
        assert_eq!(c.max_channels_per_socket, 3);
        assert_eq!(c.max_frame_bytes, 4096);
        assert_eq!(c.socket_queue_depth, 7);
        assert_eq!(c.socket_queue_bytes, 9000);
        assert_eq!(c.memory_budget_mb, Some(300));
        assert_eq!(c.max_pending_connections, 8);
        assert_eq!(c.header_read_timeout, Duration::from_millis(250));
        assert_eq!(c.max_filter_values, 2);
        assert_eq!(c.max_filter_conditions, 12);
        assert_eq!(c.max_bindings_per_join, 3);
        assert_eq!(c.max_topic_bytes, 4);
        assert_eq!(c.max_presence_key_bytes, 5);
        assert_eq!(c.max_presence_meta_bytes, 6);
        assert_eq!(c.max_presence_members, 7);
        assert_eq!(c.max_events_per_second, 8);
        assert_eq!(c.max_joins_per_second, 9);
        assert_eq!(c.max_presence_events_per_second, 10);
        assert_eq!(c.max_catalog_lookups_per_second, 11);
        assert_eq!(
            c.cors_allowed_origins,
            CorsOrigins::List(vec!["https://app.example.com".into()])
        );
        assert_eq!(c.replication_ready_timeout, Duration::from_millis(1500));
        assert_eq!(c.postgres_changes_wait_max, Duration::from_millis(2500));
    }

    #[test]
    fn empty_values_are_unset() {
        let c = ok(&[
            ("JWT_SECRET", SECRET),
            ("PORT", ""),
            ("DB_SSL", ""),
            ("PUBLICATIONS", ""),
            ("SLOT_NAME", ""),
            ("SECURE_CHANNELS", " "),
            ("MAX_CONNECTIONS", ""),
            ("SECRET_KEY_BASE", " "),
        ]);
        assert_eq!(c.port, 4000);
        assert_eq!(c.publications, vec!["supabase_realtime".to_owned()]);
        assert_eq!(c.slot, SlotConfig::Temporary);
        assert!(c.secure_channels);
        // An empty JWT_SECRET is no secret at all.
        let e = err(&[("JWT_SECRET", "")]);
        assert!(e.to_string().contains("JWT_SECRET is not set"), "{e}");
    }

    #[test]
    fn every_bad_value_names_its_variable() {
        let cases = [
            ("PORT", "abc"),
            ("PORT", "0"),
            ("PORT", "65536"),
            ("PORT", "-1"),
            ("BIND_ADDRESS", "localhost"),
            ("DB_PORT", "abc"),
            ("DB_SSL", "maybe"),
            ("PUBLICATIONS", "supabase_realtime"),
            ("SLOT_NAME", "Bad-Name"),
            ("TEMPORARY_SLOT", "perhaps"),
            ("MAX_REPLICATION_LAG_MB", "-5"),
            ("SECURE_CHANNELS", "on"),
            ("JWT_CLAIM_VALIDATORS", "[1]"),
            ("MAX_RECORD_BYTES", "1MB"),
            ("MAX_RECORD_BYTES", "0"),
            ("DB_RECONNECT_BACKOFF_MIN", "fast"),
            ("DB_RECONNECT_BACKOFF_MIN", "0"),
            ("DB_RECONNECT_BACKOFF_MAX", "1.5"),
            ("MAX_CONNECTIONS", "0"),
            ("MAX_CONNECTIONS", "lots"),
            ("MAX_CHANNELS_PER_SOCKET", "0"),
            ("MAX_FRAME_BYTES", "0"),
            ("SOCKET_QUEUE_DEPTH", "0"),
            ("SOCKET_QUEUE_DEPTH", "+5"),
            ("SOCKET_QUEUE_BYTES", "0"),
            ("MEMORY_BUDGET_MB", "0"),
            ("MAX_PENDING_CONNECTIONS", "0"),
            ("HEADER_READ_TIMEOUT_MS", "10s"),
            ("MAX_FILTER_VALUES", "0"),
            ("MAX_FILTER_CONDITIONS", "0"),
            ("MAX_BINDINGS_PER_JOIN", "0"),
            ("MAX_TOPIC_BYTES", "0"),
            ("MAX_PRESENCE_KEY_BYTES", "0"),
            ("MAX_PRESENCE_META_BYTES", "0"),
            ("MAX_PRESENCE_MEMBERS", "0"),
            ("MAX_EVENTS_PER_SECOND", "0"),
            ("MAX_JOINS_PER_SECOND", "0"),
            ("MAX_PRESENCE_EVENTS_PER_SECOND", "0"),
            ("MAX_CATALOG_LOOKUPS_PER_SECOND", "0"),
            ("CORS_ALLOWED_ORIGINS", "localhost"),
            ("REPLICATION_READY_TIMEOUT_MS", "0"),
            ("POSTGRES_CHANGES_WAIT_MAX_MS", "20s"),
        ];
        for (var, value) in cases {
            let e = err(&with_insecure(&[(var, value)]));
            assert_eq!(e.issues().len(), 1, "{var}={value}: {e}");
            assert_eq!(e.issues()[0].variable(), Some(var));
            let message = e.to_string();
            assert!(
                message.starts_with(&format!("{var}={value}: expected ")),
                "{var}={value}: {message}"
            );
        }
    }

    #[test]
    fn error_message_format() {
        let e = err(&with_insecure(&[("DB_PORT", "abc")]));
        assert_eq!(
            e.to_string(),
            "DB_PORT=abc: expected a port number (1-65535)"
        );
        let e = err(&with_insecure(&[("DB_PORT", "a\nb")]));
        assert_eq!(e.to_string().lines().count(), 1, "{e}");
    }

    #[test]
    fn secrets_never_shown() {
        let e = err(&[
            ("DB_PASSWORD", SECRET),
            ("SECRET_KEY_BASE", SECRET),
            ("JWT_SECRET", SECRET),
            ("PORT", "x"),
            ("JWT_CLAIM_VALIDATORS", "nope"),
        ]);
        assert!(!e.to_string().contains(SECRET));
        assert!(!format!("{e:?}").contains(SECRET));

        let c = ok(&[("DB_PASSWORD", SECRET), ("JWT_SECRET", SECRET)]);
        let debug = format!("{c:?}");
        assert!(!debug.contains(SECRET), "{debug}");
        assert!(debug.contains("<redacted>"));
        assert_eq!(format!("{}", c.db.password), "<redacted>");
        assert_eq!(format!("{:?}", c.db.password), "<redacted>");
        assert_eq!(c.db.password.expose(), SECRET);

        let issue = ConfigIssue::BadSecret {
            var: "JWT_SECRET",
            expected: "something".into(),
        };
        assert!(issue.to_string().starts_with("JWT_SECRET "));
    }

    #[test]
    fn secure_channels_needs_jwt_secret() {
        let e = err(&[]);
        assert_eq!(
            e.to_string(),
            "SECURE_CHANNELS is true (the default) but JWT_SECRET is not set: set JWT_SECRET \
             to the secret that signs your clients' tokens (or JWT_JWKS / JWT_JWKS_URL for \
             asymmetric keys), or SECURE_CHANNELS=false to accept anyone"
        );
        assert!(ok(&[("JWT_JWKS", r#"{"keys": []}"#)]).secure_channels);
        assert!(ok(&[("JWT_JWKS_URL", "https://example.com/jwks")]).secure_channels);
        let e = err(&[("JWT_SECRET", SECRET), ("JWT_JWKS_URL", "ftp://x")]);
        assert!(
            e.to_string().starts_with("JWT_JWKS_URL=ftp://x: expected"),
            "{e}"
        );
        let e = err(&[("JWT_SECRET", SECRET), ("JWT_LEEWAY", "-1")]);
        assert!(e.to_string().starts_with("JWT_LEEWAY=-1: expected"), "{e}");
        let c = ok(&[("JWT_SECRET", SECRET)]);
        assert_eq!(c.anon_role, "anon");
        assert!(!c.private_only);
        assert_eq!(c.authz_refresh, Duration::from_secs(2));
        let e = err(&[("SECURE_CHANNELS", "TRUE")]);
        assert!(
            e.to_string()
                .starts_with("SECURE_CHANNELS is true but JWT_SECRET is not set"),
            "{e}"
        );
        assert!(ok(&[("JWT_SECRET", SECRET)]).secure_channels);
        let c = ok(&[("SECURE_CHANNELS", "false")]);
        assert!(!c.secure_channels);
        assert!(c.jwt_secret.is_none());
        // A bad SECURE_CHANNELS is reported once, not also as a missing secret.
        let e = err(&[("SECURE_CHANNELS", "nah")]);
        assert_eq!(e.issues().len(), 1, "{e}");
    }

    #[test]
    fn booleans() {
        for (value, expected) in [
            ("true", true),
            ("True", true),
            ("1", true),
            ("YES", true),
            ("false", false),
            ("FALSE", false),
            ("0", false),
            ("no", false),
        ] {
            let c = ok(&[("JWT_SECRET", SECRET), ("SECURE_CHANNELS", value)]);
            assert_eq!(c.secure_channels, expected, "{value}");
        }
        let e = err(&with_insecure(&[("TEMPORARY_SLOT", "2")]));
        assert!(e
            .to_string()
            .starts_with("TEMPORARY_SLOT=2: expected a boolean"));
    }

    #[test]
    fn publications() {
        let c = ok(&with_insecure(&[("PUBLICATIONS", r#"["a","b"]"#)]));
        assert_eq!(c.publications, vec!["a".to_owned(), "b".to_owned()]);
        for (value, why) in [
            ("[\"a\"", "invalid JSON"),
            ("{\"a\":1}", "not an array"),
            ("\"a\"", "not an array"),
            ("[]", "the array is empty"),
            ("[\"\"]", "a name is empty"),
            ("[\"a\",1]", "1 is not a string"),
        ] {
            let e = err(&with_insecure(&[("PUBLICATIONS", value)]));
            let message = e.to_string();
            assert!(
                message.starts_with(&format!("PUBLICATIONS={value}: expected a JSON array")),
                "{message}"
            );
            assert!(message.contains(why), "{message}");
        }
    }

    #[test]
    fn slot_names() {
        assert_eq!(
            SlotName::parse("realtime_1").unwrap().as_str(),
            "realtime_1"
        );
        assert_eq!(SlotName::parse("abc").unwrap().to_string(), "abc");
        assert!(SlotName::parse(&"a".repeat(63)).is_ok());
        assert!(SlotName::parse(&"a".repeat(64))
            .unwrap_err()
            .contains("64 bytes"));
        assert!(SlotName::parse("Realtime").unwrap_err().contains("'R'"));
        assert!(SlotName::parse("real-time").unwrap_err().contains("'-'"));
        assert!(SlotName::parse("").is_err());
        assert!(SlotName::parse("slot é").is_err());

        let e = err(&with_insecure(&[("SLOT_NAME", "MySlot")]));
        assert!(e
            .to_string()
            .starts_with("SLOT_NAME=MySlot: expected a replication slot name"));
        let long = "a".repeat(64);
        let e = err(&with_insecure(&[("SLOT_NAME", &long)]));
        assert_eq!(e.issues()[0].variable(), Some("SLOT_NAME"));
        let e = err(&with_insecure(&[("SLOT_NAME", "my-slot")]));
        assert_eq!(e.issues()[0].variable(), Some("SLOT_NAME"));
    }

    #[test]
    fn slot_name_takes_the_statefulset_ordinal_from_pod_name() {
        let c = ok(&with_insecure(&[
            ("SLOT_NAME", "rts_default_chat_{ordinal}"),
            ("POD_NAME", "chat-12"),
        ]));
        assert_eq!(
            c.slot,
            SlotConfig::Durable(SlotName::parse("rts_default_chat_12").unwrap())
        );
        let e = err(&with_insecure(&[("SLOT_NAME", "rts_{ordinal}")]));
        assert_eq!(e.issues()[0].variable(), Some("SLOT_NAME"));
        assert!(e.to_string().contains("POD_NAME"), "{e}");
        let e = err(&with_insecure(&[
            ("SLOT_NAME", "rts_{ordinal}"),
            ("POD_NAME", "chat"),
        ]));
        assert!(e.to_string().contains("-<ordinal>"), "{e}");
    }

    #[test]
    fn slot_modes() {
        let durable = SlotConfig::Durable(SlotName::parse("rt").unwrap());
        assert_eq!(ok(&with_insecure(&[("SLOT_NAME", "rt")])).slot, durable);
        assert_eq!(
            ok(&with_insecure(&[
                ("SLOT_NAME", "rt"),
                ("TEMPORARY_SLOT", "false")
            ]))
            .slot,
            durable
        );
        assert_eq!(
            ok(&with_insecure(&[
                ("SLOT_NAME", "rt"),
                ("TEMPORARY_SLOT", "true")
            ]))
            .slot,
            SlotConfig::Temporary
        );
        assert_eq!(
            ok(&with_insecure(&[("TEMPORARY_SLOT", "true")])).slot,
            SlotConfig::Temporary
        );
    }

    #[test]
    fn db_ssl_modes() {
        for (value, expected) in [
            ("false", DbSsl::Disable),
            ("disable", DbSsl::Disable),
            ("DISABLE", DbSsl::Disable),
            ("true", DbSsl::Require),
            ("require", DbSsl::Require),
            ("Require", DbSsl::Require),
            ("verify-full", DbSsl::VerifyFull),
            ("VERIFY-FULL", DbSsl::VerifyFull),
        ] {
            assert_eq!(
                ok(&with_insecure(&[("DB_SSL", value)])).db.ssl,
                expected,
                "{value}"
            );
        }
        let e = err(&with_insecure(&[("DB_SSL", "verify-ca")]));
        assert_eq!(
            e.to_string(),
            "DB_SSL=verify-ca: expected false, disable, true, require or verify-full"
        );
    }

    #[test]
    fn replication_lag() {
        assert_eq!(
            ok(&with_insecure(&[("MAX_REPLICATION_LAG_MB", "0")])).max_replication_lag_mb,
            None
        );
        assert_eq!(
            ok(&with_insecure(&[("MAX_REPLICATION_LAG_MB", "100")])).max_replication_lag_mb,
            Some(100)
        );
    }

    #[test]
    fn backoff_min_above_max() {
        let e = err(&with_insecure(&[
            ("DB_RECONNECT_BACKOFF_MIN", "5000"),
            ("DB_RECONNECT_BACKOFF_MAX", "1000"),
        ]));
        assert_eq!(e.issues().len(), 1);
        assert!(
            e.to_string().contains("DB_RECONNECT_BACKOFF_MIN=5000"),
            "{e}"
        );
        assert!(
            e.to_string().contains("DB_RECONNECT_BACKOFF_MAX=1000"),
            "{e}"
        );
        // Against the default maximum too.
        let e = err(&with_insecure(&[("DB_RECONNECT_BACKOFF_MIN", "120001")]));
        assert_eq!(e.issues().len(), 1);
    }

    #[test]
    fn cluster_settings() {
        let c = ok(&with_insecure(&[]));
        assert_eq!(c.cluster.name, "default");
        assert_eq!(c.cluster.heartbeat, Duration::from_secs(1));
        assert_eq!(c.cluster.node_timeout, Duration::from_secs(5));
        assert_eq!(c.cluster.max_message_bytes, 1_048_576);
        let c = ok(&with_insecure(&[
            ("CLUSTER_NAME", "chat_eu"),
            ("CLUSTER_HEARTBEAT_MS", "200"),
            ("CLUSTER_NODE_TIMEOUT_MS", "1500"),
            ("CLUSTER_MAX_MESSAGE_BYTES", "20000"),
        ]));
        assert_eq!(c.cluster.name, "chat_eu");
        assert_eq!(c.cluster.heartbeat, Duration::from_millis(200));
        assert_eq!(c.cluster.node_timeout, Duration::from_millis(1500));
        assert_eq!(c.cluster.max_message_bytes, 20_000);
        for bad in ["Chat", "a-b", &"x".repeat(41)] {
            let e = err(&with_insecure(&[("CLUSTER_NAME", bad)]));
            assert!(e.to_string().contains("CLUSTER_NAME"), "{e}");
            assert!(e.to_string().contains("a-z, 0-9 and _"), "{e}");
        }
        let e = err(&with_insecure(&[
            ("CLUSTER_HEARTBEAT_MS", "5000"),
            ("CLUSTER_MAX_MESSAGE_BYTES", "0"),
        ]));
        assert_eq!(e.issues().len(), 2, "{e}");
        assert!(e.to_string().contains("CLUSTER_HEARTBEAT_MS=5000"), "{e}");
        assert!(e.to_string().contains("CLUSTER_MAX_MESSAGE_BYTES"), "{e}");
    }

    #[test]
    fn claim_validators() {
        let e = err(&with_insecure(&[("JWT_CLAIM_VALIDATORS", "{bad")]));
        assert!(e
            .to_string()
            .starts_with("JWT_CLAIM_VALIDATORS={bad: expected a JSON object"));
    }

    #[test]
    fn all_errors_are_reported() {
        let e = err(&[
            ("PORT", "abc"),
            ("DB_PORT", "99999"),
            ("DB_SSL", "sometimes"),
            ("PUBLICATIONS", "[]"),
            ("SLOT_NAME", "UPPER"),
            ("MAX_CONNECTIONS", "0"),
        ]);
        let vars: Vec<_> = e.issues().iter().map(ConfigIssue::variable).collect();
        assert_eq!(
            vars,
            vec![
                Some("PORT"),
                Some("DB_PORT"),
                Some("DB_SSL"),
                Some("PUBLICATIONS"),
                Some("SLOT_NAME"),
                None, // SECURE_CHANNELS without JWT_SECRET
                Some("MAX_CONNECTIONS"),
            ]
        );
        let message = e.to_string();
        assert_eq!(message.lines().count(), 7, "{message}");
        for var in [
            "PORT=",
            "DB_PORT=",
            "DB_SSL=",
            "PUBLICATIONS=",
            "SLOT_NAME=",
            "JWT_SECRET",
            "MAX_CONNECTIONS=",
        ] {
            assert!(message.contains(var), "{var}: {message}");
        }
    }

    #[test]
    fn the_readme_names_every_variable() {
        let readme = include_str!("../../README.md");
        let table = readme
            .split("\n## Configuration\n")
            .nth(1)
            .and_then(|s| s.split("\n## ").next())
            .expect("README.md has a section ## Configuration");
        let missing: Vec<&&str> = VARIABLES
            .iter()
            .filter(|v| !table.contains(&format!("`{v}`")))
            .collect();
        assert!(
            missing.is_empty(),
            "README.md's Configuration table lacks {missing:?}"
        );
    }

    #[test]
    fn hostname_is_not_read() {
        // Every container has one (its name): it must neither fail the start
        // nor change the listen address.
        let c = ok(&with_insecure(&[
            ("HOSTNAME", "realtime-0"),
            ("PORT", "4100"),
        ]));
        assert_eq!(c.listen_addr(), "0.0.0.0:4100".parse().unwrap());
        assert!(!VARIABLES.contains(&"HOSTNAME"));
        let c = ok(&with_insecure(&[("HOSTNAME", "not an address")]));
        assert_eq!(c.bind_address, DEFAULT_BIND_ADDRESS);
    }

    #[test]
    fn secret_key_base_is_refused_without_showing_it() {
        let e = err(&with_insecure(&[("SECRET_KEY_BASE", SECRET)]));
        assert_eq!(e.issues().len(), 1, "{e}");
        assert_eq!(e.issues()[0].variable(), Some("SECRET_KEY_BASE"));
        let message = e.to_string();
        assert!(
            message.starts_with("SECRET_KEY_BASE is set: this server signs nothing with it"),
            "{message}"
        );
        assert!(message.contains("JWT_SECRET"), "{message}");
        assert!(!message.contains(SECRET) && !format!("{e:?}").contains(SECRET));
        // Beside other problems, it is one line among them.
        let e = err(&[("SECRET_KEY_BASE", SECRET), ("PORT", "x")]);
        assert_eq!(e.issues().len(), 3, "{e}");
    }

    #[test]
    fn last_value_wins() {
        let c = ok(&with_insecure(&[("PORT", "1"), ("PORT", "2")]));
        assert_eq!(c.port, 2);
    }
}
