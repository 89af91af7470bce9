//! The authorization service the rest of the server talks to.
//!
//! Owns the caches (the plan of each (table, role, command), the access of
//! each (table, group)), the groups themselves (one [`Principal`] per role
//! and claims, shared by every subscriber that has them), the catalog
//! watch that empties the caches when grants, policies, row level security
//! flags, roles, memberships or functions change (see [`FINGERPRINT_SQL`]),
//! private channels' read and write decisions on `realtime.messages`, and
//! the check at start that the server may switch to the roles tokens name.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, Weak};
use std::time::Duration;

use serde_json::{Map, Value};
use tokio::sync::{watch, OnceCell};

use super::db::{Db, DbError, Principal};
use super::lanes::Lanes;
use super::plan::{self, Access, Command, PlanError, PolicyPlan, RolePlan};

/// Settings (from the server's configuration).
#[derive(Debug, Clone)]
pub struct AuthzSettings {
    /// The role of a token without a `role` claim (PostgREST's anonymous role).
    pub default_role: String,
    /// How long one check statement may take.
    pub check_timeout: Duration,
    /// How often the catalog is looked at for changes.
    pub refresh_interval: Duration,
    /// Connections for checks.
    pub pool_size: usize,
}

/// What a group may see of a table, computed once per catalog generation.
#[derive(Debug, Clone)]
pub struct GroupAccess {
    pub access: Access,
    /// For [`Access::Check`]: what to check with.
    pub plan: Option<Arc<PolicyPlan>>,
}

/// Why an access could not be computed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AccessError {
    #[error(transparent)]
    Plan(#[from] PlanError),
    /// The policies raised an error, or the role could not be switched to,
    /// for this group.
    #[error("{0}")]
    Db(#[from] DbError),
}

/// What private channels need and may not have.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ChannelError {
    #[error(
        "private channels need the table realtime.messages and the function realtime.topic(): \
         run `realtime-server setup-authorization` against this database (or set \
         spec.auth.setupAuthorization: true on the RealtimeServer)"
    )]
    NotSetUp,
    #[error("checking the policies of realtime.messages failed: {0}")]
    Failed(String),
}

/// Read or write rights on a private channel, per extension.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct ChannelRights {
    pub broadcast: bool,
    pub presence: bool,
}

impl ChannelRights {
    /// Both: a public channel's member, or a private channel's whose role
    /// may read every extension.
    pub const ALL: ChannelRights = ChannelRights {
        broadcast: true,
        presence: true,
    };

    /// Whether a member with these rights receives `event`: broadcasts
    /// need `broadcast`, presence diffs and states `presence`, anything
    /// else both.
    pub fn allows(&self, event: &str) -> bool {
        match event {
            "broadcast" => self.broadcast,
            "presence_diff" | "presence_state" => self.presence,
            _ => self.broadcast && self.presence,
        }
    }
}

type PlanKey = (u32, String, Command);

/// (table, group id) -> its access, and the group's principal (to compute
/// the access again after a catalog change).
/// (table, group) -> an access being computed, shared by its callers.
type Pending = HashMap<(u32, u64), Arc<OnceCell<GroupAccess>>>;
type Accesses = HashMap<(u32, u64), (GroupAccess, Weak<Principal>)>;

/// The service.
pub struct Authorizer {
    pub db: Arc<Db>,
    pub lanes: Arc<Lanes>,
    settings: AuthzSettings,
    plans: Mutex<HashMap<PlanKey, Arc<OnceCell<RolePlan>>>>,
    /// (table, group) -> its access and the group (to compute it again
    /// after a catalog change, in place: until then the old one stands).
    accesses: Mutex<Accesses>,
    /// Accesses being computed: callers asking for the same one meanwhile
    /// wait for that computation (a reconnect storm of one group's sockets
    /// costs one check).
    pending: Mutex<Pending>,
    principals: Mutex<HashMap<Principal, (u64, Weak<Principal>)>>,
    next_principal: AtomicU64,
    generation: watch::Sender<u64>,
    pub stats: AuthzStats,
    /// Tables an undecidable change was last logged for, and when.
    undecidable_logged: Mutex<HashMap<u32, std::time::Instant>>,
}

impl std::fmt::Debug for Authorizer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Authorizer")
            .field("settings", &self.settings)
            .finish_non_exhaustive()
    }
}

/// Counters of decisions the server could not make (exported at `/metrics`).
#[derive(Debug, Default)]
pub struct AuthzStats {
    /// (change, group) pairs withheld because the change's image lacks a
    /// column the policies read.
    pub undecidable: AtomicU64,
    /// (change, group) pairs withheld because the group's access to the
    /// table was not computed yet (a schema-wide subscription's new table).
    pub unresolved: AtomicU64,
}

/// A group of subscribers: one principal, shared.
#[derive(Debug, Clone)]
pub struct Group {
    pub id: u64,
    pub principal: Arc<Principal>,
}

impl PartialEq for Group {
    fn eq(&self, other: &Self) -> bool {
        self.id == other.id
    }
}

impl Eq for Group {}

impl std::hash::Hash for Group {
    fn hash<H: std::hash::Hasher>(&self, state: &mut H) {
        self.id.hash(state)
    }
}

/// Changes to anything a decision depends on (`md5` of the relevant catalog
/// rows): policies, tables' row level security flags, owners and grants
/// (table, column, schema), column names of tables with row level security,
/// roles' attributes and memberships, and non-system functions (a policy's
/// helper may be redefined).
pub const FINGERPRINT_SQL: &str = "SELECT pg_catalog.md5(pg_catalog.concat_ws('|', \
    (SELECT pg_catalog.string_agg(pg_catalog.concat_ws(',', p.oid, p.polname, p.polrelid, \
       p.polcmd, p.polpermissive, p.polroles::text, pg_catalog.md5(coalesce(p.polqual::text, '')), \
       pg_catalog.md5(coalesce(p.polwithcheck::text, ''))), ';' ORDER BY p.oid) \
     FROM pg_catalog.pg_policy p), \
    (SELECT pg_catalog.string_agg(pg_catalog.concat_ws(',', c.oid, c.relrowsecurity, \
       c.relforcerowsecurity, c.relowner, c.relacl::text), ';' ORDER BY c.oid) \
     FROM pg_catalog.pg_class c WHERE c.relkind IN ('r', 'p') \
       AND c.relnamespace <> 'pg_catalog'::regnamespace \
       AND c.relnamespace <> 'information_schema'::regnamespace), \
    (SELECT pg_catalog.string_agg(pg_catalog.concat_ws(',', a.attrelid, a.attnum, a.attname, \
       a.attacl::text), ';' ORDER BY a.attrelid, a.attnum) \
     FROM pg_catalog.pg_attribute a JOIN pg_catalog.pg_class c ON c.oid = a.attrelid \
     WHERE a.attnum > 0 AND (a.attacl IS NOT NULL OR c.relrowsecurity)), \
    (SELECT pg_catalog.string_agg(pg_catalog.concat_ws(',', n.oid, n.nspname, n.nspacl::text), \
       ';' ORDER BY n.oid) FROM pg_catalog.pg_namespace n), \
    (SELECT pg_catalog.string_agg(pg_catalog.concat_ws(',', r.oid, r.rolname, r.rolsuper, \
       r.rolbypassrls, r.rolinherit), ';' ORDER BY r.oid) FROM pg_catalog.pg_roles r), \
    (SELECT pg_catalog.string_agg(pg_catalog.to_jsonb(m)::text, ';' ORDER BY m.roleid, m.member) \
     FROM pg_catalog.pg_auth_members m), \
    (SELECT pg_catalog.string_agg(pg_catalog.concat_ws(',', p.oid, p.provolatile, \
       p.proconfig::text, pg_catalog.md5(p.prosrc), \
       pg_catalog.md5(coalesce(pg_catalog.to_jsonb(p)->>'prosqlbody', ''))), ';' ORDER BY p.oid) \
     FROM pg_catalog.pg_proc p WHERE p.pronamespace <> 'pg_catalog'::regnamespace \
       AND p.pronamespace <> 'information_schema'::regnamespace)))";

impl Authorizer {
    pub fn new(db_config: crate::config::DbConfig, settings: AuthzSettings) -> Arc<Authorizer> {
        let db = Arc::new(Db::new(db_config, settings.pool_size));
        let lanes = Lanes::new(db.clone(), settings.check_timeout);
        Arc::new(Authorizer {
            db,
            lanes,
            settings,
            plans: Mutex::new(HashMap::new()),
            accesses: Mutex::new(HashMap::new()),
            pending: Mutex::new(HashMap::new()),
            principals: Mutex::new(HashMap::new()),
            next_principal: AtomicU64::new(1),
            generation: watch::channel(0).0,
            stats: AuthzStats::default(),
            undecidable_logged: Mutex::new(HashMap::new()),
        })
    }

    /// Logs (at most once a minute per table) that a change was withheld
    /// because its image lacks what the policies read.
    pub fn undecidable(&self, change: &crate::change::Change, group: &Group) {
        let mut logged = self
            .undecidable_logged
            .lock()
            .unwrap_or_else(|e| e.into_inner());
        let now = std::time::Instant::now();
        let due = logged
            .get(&change.table.id)
            .is_none_or(|t| now.duration_since(*t) >= Duration::from_secs(60));
        if due {
            logged.insert(change.table.id, now);
            tracing::warn!(
                table = %format!("{}.{}", change.table.schema, change.table.name),
                kind = change.kind.as_str(),
                role = %group.principal.role,
                "a change was withheld: its row image lacks a column the table's policies read \
                 (an unchanged TOASTed value, a generated or system column); set REPLICA \
                 IDENTITY FULL on the table if the policies read large values"
            );
        }
    }

    pub fn settings(&self) -> &AuthzSettings {
        &self.settings
    }

    /// The group of a verified token's claims (for private channels, of
    /// the claims and the channel's topic): equal claims give the same group.
    pub fn group(&self, claims: &Map<String, Value>, topic: Option<&str>) -> Group {
        let role = claims
            .get("role")
            .and_then(Value::as_str)
            .filter(|r| !r.is_empty())
            .unwrap_or(&self.settings.default_role)
            .to_string();
        // serde_json's map is ordered by key: equal claims, equal text.
        let principal = Principal {
            role,
            claims: Value::Object(claims.clone()).to_string(),
            topic: topic.map(str::to_string),
        };
        let mut principals = self.principals.lock().unwrap_or_else(|e| e.into_inner());
        if let Some((id, weak)) = principals.get(&principal) {
            if let Some(p) = weak.upgrade() {
                return Group {
                    id: *id,
                    principal: p,
                };
            }
        }
        let id = self.next_principal.fetch_add(1, Ordering::Relaxed);
        let shared = Arc::new(principal.clone());
        principals.insert(principal, (id, Arc::downgrade(&shared)));
        Group {
            id,
            principal: shared,
        }
    }

    /// Groups currently alive (held by a subscriber).
    pub fn group_count(&self) -> usize {
        self.principals
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .values()
            .filter(|(_, w)| w.strong_count() > 0)
            .count()
    }

    /// Bumped whenever the catalog changed: subscribers re-check what they
    /// were granted.
    pub fn generation(&self) -> watch::Receiver<u64> {
        self.generation.subscribe()
    }

    /// The plan of `table` for `role`, cached.
    pub async fn plan(
        &self,
        table: u32,
        role: &str,
        command: Command,
    ) -> Result<RolePlan, PlanError> {
        let cell = self
            .plans
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .entry((table, role.to_string(), command))
            .or_default()
            .clone();
        cell.get_or_try_init(|| plan::load(&self.db, table, role, command))
            .await
            .cloned()
    }

    /// What `group` may see of `table`, cached; computed again after every
    /// catalog change.
    pub async fn access(&self, table: u32, group: &Group) -> Result<GroupAccess, AccessError> {
        if let Some(a) = self.cached_access(table, group) {
            return Ok(a);
        }
        let key = (table, group.id);
        let cell = self
            .pending
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .entry(key)
            .or_default()
            .clone();
        let access = cell
            .get_or_try_init(|| async {
                let access = self.compute_access(table, &group.principal).await?;
                self.accesses
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .insert(key, (access.clone(), Arc::downgrade(&group.principal)));
                Ok::<_, AccessError>(access)
            })
            .await
            .cloned();
        let mut pending = self.pending.lock().unwrap_or_else(|e| e.into_inner());
        if pending.get(&key).is_some_and(|c| Arc::ptr_eq(c, &cell)) {
            pending.remove(&key);
        }
        access
    }

    async fn compute_access(
        &self,
        table: u32,
        principal: &Principal,
    ) -> Result<GroupAccess, AccessError> {
        let plan = self.plan(table, &principal.role, Command::Select).await?;
        Ok(match plan {
            RolePlan::Denied(why) => GroupAccess {
                access: Access::Denied(why),
                plan: None,
            },
            RolePlan::All => GroupAccess {
                access: Access::Match(Vec::new()),
                plan: None,
            },
            RolePlan::Policies(p) => {
                let access = p
                    .access_for(&self.db, principal, self.settings.check_timeout)
                    .await?;
                GroupAccess {
                    access,
                    plan: Some(p),
                }
            }
        })
    }

    /// The access already computed, if any (never waits).
    pub fn cached_access(&self, table: u32, group: &Group) -> Option<GroupAccess> {
        self.accesses
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get(&(table, group.id))
            .map(|(a, _)| a.clone())
    }

    /// Looks at the catalog every `refresh_interval`; when anything changed,
    /// forgets every plan and access and bumps the generation. Also forgets
    /// groups no subscriber holds any more.
    pub async fn watch_catalog(self: Arc<Self>) {
        let mut last: Option<String> = None;
        let mut tick = tokio::time::interval(self.settings.refresh_interval);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tick.tick().await;
            self.forget_unused_groups();
            let fingerprint = match self.fingerprint().await {
                Ok(f) => f,
                Err(e) => {
                    tracing::warn!(error = %e, "reading the catalog for changes to grants and policies failed; trying again");
                    continue;
                }
            };
            if last.as_ref().is_some_and(|l| *l != fingerprint) {
                tracing::info!(
                    "grants, policies or roles changed: every subscription is checked again"
                );
                self.refresh().await;
            }
            last = Some(fingerprint);
        }
    }

    /// The catalog changed: forgets every plan, computes every cached
    /// access again (the old ones stand meanwhile; an access that cannot be
    /// computed any more becomes a denial naming why), then bumps the
    /// generation so subscribers look at theirs again.
    pub async fn refresh(&self) {
        self.plans.lock().unwrap_or_else(|e| e.into_inner()).clear();
        self.db.forget_statements();
        let keys: Vec<((u32, u64), Weak<Principal>)> = self
            .accesses
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .iter()
            .map(|(k, (_, p))| (*k, p.clone()))
            .collect();
        let recompute = keys.into_iter().filter_map(|((table, id), weak)| {
            let principal = weak.upgrade()?;
            Some(async move {
                let access = match self.compute_access(table, &principal).await {
                    Ok(a) => a,
                    Err(e) => GroupAccess {
                        access: Access::Denied(e.to_string()),
                        plan: None,
                    },
                };
                ((table, id), access, Arc::downgrade(&principal))
            })
        });
        let fresh = futures::future::join_all(recompute).await;
        {
            let mut accesses = self.accesses.lock().unwrap_or_else(|e| e.into_inner());
            for (key, access, weak) in fresh {
                accesses.insert(key, (access, weak));
            }
        }
        self.generation.send_modify(|g| *g += 1);
    }

    async fn fingerprint(&self) -> Result<String, DbError> {
        let mut conn = self.db.lease().await?;
        let sql = conn.statement(FINGERPRINT_SQL).await?;
        let row = conn
            .client()
            .query_one(&sql, &[])
            .await
            .map_err(|e| DbError::Connection(e.to_string()))?;
        Ok(row.get::<_, Option<String>>(0).unwrap_or_default())
    }

    fn forget_unused_groups(&self) {
        let gone: Vec<u64> = {
            let mut principals = self.principals.lock().unwrap_or_else(|e| e.into_inner());
            let gone = principals
                .values()
                .filter(|(_, w)| w.strong_count() == 0)
                .map(|(id, _)| *id)
                .collect();
            principals.retain(|_, (_, w)| w.strong_count() > 0);
            gone
        };
        if !gone.is_empty() {
            let gone: std::collections::HashSet<u64> = gone.into_iter().collect();
            self.accesses
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .retain(|(_, g), _| !gone.contains(g));
        }
    }

    /// Checks at start that the server's database user may switch to the
    /// roles tokens name by default; logs what to run when it may not.
    pub async fn check_roles(&self, roles: &[&str]) {
        let user = self.db.user().to_string();
        for role in roles {
            match can_switch_to(&self.db, role, self.settings.check_timeout).await {
                Ok(()) => tracing::info!(%role, "the server can switch to role {role:?}"),
                Err(e) => tracing::error!(
                    %role,
                    error = %e,
                    "the server's database user {user:?} cannot switch to role {role:?}, so \
                     tokens with that role are refused: run `{}` (and create the \
                     role if it does not exist: `CREATE ROLE {} NOLOGIN;`)",
                    grant_role_sql(role, &user),
                    plan::quote_ident(role),
                ),
            }
        }
    }

    /// What `group` (whose principal carries the channel's topic) may do on
    /// a private channel: read (`Command::Select`) or write
    /// (`Command::Insert`), per extension, as the policies of
    /// `realtime.messages` decide for the row Supabase's Realtime would
    /// insert to ask (topic, extension, `private` false).
    pub async fn channel_rights(
        &self,
        group: &Group,
        command: Command,
    ) -> Result<ChannelRights, ChannelError> {
        let table = self.messages_table().await?;
        let plan = self
            .plan(table, &group.principal.role, command)
            .await
            .map_err(|e| ChannelError::Failed(e.to_string()))?;
        let policies = match plan {
            RolePlan::Denied(_) => return Ok(ChannelRights::default()),
            RolePlan::All => {
                return Ok(ChannelRights {
                    broadcast: true,
                    presence: true,
                })
            }
            RolePlan::Policies(p) => p,
        };
        let access = policies
            .access_for(&self.db, &group.principal, self.settings.check_timeout)
            .await
            .map_err(|e| ChannelError::Failed(e.to_string()))?;
        match access {
            Access::Denied(_) | Access::Nothing => return Ok(ChannelRights::default()),
            Access::Match(c) if c.is_empty() => {
                return Ok(ChannelRights {
                    broadcast: true,
                    presence: true,
                })
            }
            Access::Match(_) | Access::Check => {}
        }
        let Some(sql) = &policies.check_sql else {
            return Ok(ChannelRights::default());
        };
        let topic = group.principal.topic.clone().unwrap_or_default();
        let images: Vec<String> = ["broadcast", "presence"]
            .iter()
            .map(|extension| message_row(&topic, extension))
            .collect();
        let rows = self
            .db
            .as_group(
                &group.principal,
                sql,
                &[&images],
                self.settings.check_timeout,
            )
            .await
            .map_err(|e| {
                tracing::error!(
                    %topic,
                    role = %group.principal.role,
                    policies = ?policies.names,
                    error = %e,
                    "checking the policies of realtime.messages failed"
                );
                ChannelError::Failed(e.to_string())
            })?;
        let passed: Vec<i32> = rows.iter().map(|r| r.get(0)).collect();
        Ok(ChannelRights {
            broadcast: passed.contains(&1),
            presence: passed.contains(&2),
        })
    }

    /// The OID of `realtime.messages`, when it and `realtime.topic()` exist.
    async fn messages_table(&self) -> Result<u32, ChannelError> {
        let mut conn = self
            .db
            .lease()
            .await
            .map_err(|e| ChannelError::Failed(e.to_string()))?;
        let sql = conn
            .statement(
                "SELECT pg_catalog.to_regclass('realtime.messages')::oid, \
                 pg_catalog.to_regprocedure('realtime.topic()') IS NOT NULL",
            )
            .await
            .map_err(|e| ChannelError::Failed(e.to_string()))?;
        let row = conn
            .client()
            .query_one(&sql, &[])
            .await
            .map_err(|e| ChannelError::Failed(e.to_string()))?;
        match (row.get::<_, Option<u32>>(0), row.get::<_, bool>(1)) {
            (Some(oid), true) => Ok(oid),
            _ => Err(ChannelError::NotSetUp),
        }
    }
}

/// The row Supabase's Realtime inserts into `realtime.messages` to ask its
/// policies: the channel's topic (without `realtime:`), the extension, and
/// the column defaults (`private` false, the timestamps now, a new id).
fn message_row(topic: &str, extension: &str) -> String {
    let now = chrono::Utc::now()
        .format("%Y-%m-%d %H:%M:%S%.6f")
        .to_string();
    serde_json::json!({
        "topic": topic,
        "extension": extension,
        "private": false,
        "event": null,
        "payload": null,
        "inserted_at": now,
        "updated_at": now,
        "id": random_uuid(),
    })
    .to_string()
}

/// A version 4 UUID from the clock and a counter: unique, not secret.
fn random_uuid() -> String {
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos())
        .unwrap_or(0);
    let n = COUNTER.fetch_add(1, Ordering::Relaxed);
    let a = (nanos as u64) ^ n.rotate_left(32);
    let b = ((nanos >> 64) as u64)
        ^ n.wrapping_mul(0x9e37_79b9_7f4a_7c15)
        ^ u64::from(std::process::id());
    format!(
        "{:08x}-{:04x}-4{:03x}-{:04x}-{:012x}",
        (a >> 32) as u32,
        (a >> 16) as u16,
        (a & 0x0fff) as u16,
        ((b >> 48) as u16 & 0x3fff) | 0x8000,
        b & 0xffff_ffff_ffff
    )
}

/// Whether `db`'s user may switch to `role`, as every check does: runs
/// `SELECT 1` as the role, in the transaction every check runs in.
pub async fn can_switch_to(db: &Db, role: &str, timeout: Duration) -> Result<(), DbError> {
    let who = Principal {
        role: role.to_string(),
        claims: "{}".into(),
        topic: None,
    };
    db.as_group(&who, "SELECT 1", &[], timeout)
        .await
        .map(|_| ())
}

/// The statement that lets the server's database user `user` switch to `role`.
pub fn grant_role_sql(role: &str, user: &str) -> String {
    format!(
        "GRANT {} TO {};",
        plan::quote_ident(role),
        plan::quote_ident(user)
    )
}
