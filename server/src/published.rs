//! Which tables the served publications contain, and their columns.
//!
//! Owns the one plain SQL connection of the server (tokio-postgres), opened
//! on first use and reopened after a failure, and what a `postgres_changes`
//! join needs to know: the binding's table must be published, a filter's
//! column must exist and its value parse as the column's type, and a
//! `select` list names columns (the primary key always goes along).
//!
//! Joins are answered from a [`Snapshot`] of every published table, loaded
//! in one query by the first join that needs it (the others wait for that
//! one load: a reconnect storm costs the database one query, not one per
//! join) and replaced when it may be stale:
//! - the replication stream's `Relation` message for a table names a column
//!   the snapshot does not have or gives it another type, or names a table
//!   it does not have ([`PublishedTables::relation`]: DDL on a published
//!   table, a table published since);
//! - every `AUTHZ_REFRESH_MS` a fingerprint of the publications and their
//!   tables' columns is read ([`PublishedTables::watch`]): a table added to
//!   or dropped from a publication, a column added, dropped or retyped;
//! - a join the snapshot would refuse (no such table, no such column, a
//!   value that does not parse as the column's type) is checked once more
//!   against the catalog itself ([`PublishedTables::lookup_live`]) before it
//!   is refused, so a table published a moment ago is joinable at once.
//!
//! The queries are prepared once per connection, and concurrent callers
//! share the connection (tokio-postgres pipelines them): the lock is held
//! only to (re)connect. Must not touch the replication session.

use std::collections::HashMap;
use std::sync::Arc;

use tokio::sync::{Mutex, OnceCell};

use crate::replication::pgoutput::Relation;

use crate::config::Config;
use crate::filter::Comparison;
use crate::metrics::METRICS;

/// A published table and how its columns compare.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PublishedTable {
    pub schema: String,
    pub name: String,
    /// The table's OID (pgoutput's relation id).
    pub oid: u32,
    pub columns: Vec<(String, Comparison)>,
    /// Each column's type (`atttypid`), as `columns`.
    pub type_oids: Vec<u32>,
    /// The primary key's columns (none without one).
    pub keys: Vec<String>,
}

impl PublishedTable {
    pub fn column(&self, name: &str) -> Option<Comparison> {
        self.columns
            .iter()
            .find(|(c, _)| c == name)
            .map(|(_, k)| *k)
    }
}

/// The published tables' columns: of one schema (`$2`), of one table of it
/// (`$3`), or of every schema (`$2` null).
const TABLES_SQL: &str = "\
SELECT pt.schemaname::text, pt.tablename::text, a.attname::text, bt.typcategory::text, bt.typname::text, c.oid,
  EXISTS (SELECT 1 FROM pg_catalog.pg_index i WHERE i.indrelid = c.oid AND i.indisprimary AND a.attnum = ANY(i.indkey)),
  a.atttypid
FROM pg_catalog.pg_publication_tables pt
JOIN pg_catalog.pg_namespace n ON n.nspname = pt.schemaname
JOIN pg_catalog.pg_class c ON c.relnamespace = n.oid AND c.relname = pt.tablename
JOIN pg_catalog.pg_attribute a ON a.attrelid = c.oid AND a.attnum > 0 AND NOT a.attisdropped
JOIN pg_catalog.pg_type t ON t.oid = a.atttypid
JOIN pg_catalog.pg_type bt ON bt.oid = CASE WHEN t.typtype = 'd' THEN t.typbasetype ELSE t.oid END
WHERE pt.pubname = ANY($1) AND ($2::text IS NULL OR pt.schemaname = $2)
  AND ($3::text IS NULL OR pt.tablename = $3)
ORDER BY 1, 2, a.attnum";

/// A fingerprint of what [`TABLES_SQL`] reads for every schema: changes
/// with a table published or unpublished, and with a published table's
/// columns (name, type, primary key) and name.
const FINGERPRINT_SQL: &str = "\
SELECT pg_catalog.md5(coalesce(pg_catalog.string_agg(pg_catalog.concat_ws(',', c.oid, pt.schemaname,
  pt.tablename, a.attnum, a.attname, a.atttypid,
  (SELECT pg_catalog.string_agg(i.indkey::text, ';') FROM pg_catalog.pg_index i
   WHERE i.indrelid = c.oid AND i.indisprimary)),
  '|' ORDER BY c.oid, a.attnum), ''))
FROM pg_catalog.pg_publication_tables pt
JOIN pg_catalog.pg_namespace n ON n.nspname = pt.schemaname
JOIN pg_catalog.pg_class c ON c.relnamespace = n.oid AND c.relname = pt.tablename
JOIN pg_catalog.pg_attribute a ON a.attrelid = c.oid AND a.attnum > 0 AND NOT a.attisdropped
WHERE pt.pubname = ANY($1)";

/// Every published table, by schema and by OID.
#[derive(Debug, Default)]
pub struct Snapshot {
    /// [`FINGERPRINT_SQL`] read just before the tables: the catalog is at
    /// least as new as this.
    fingerprint: String,
    /// Each schema's tables, in name order.
    schemas: HashMap<String, Vec<Arc<PublishedTable>>>,
    by_oid: HashMap<u32, Arc<PublishedTable>>,
}

impl Snapshot {
    fn new(fingerprint: String, tables: Vec<PublishedTable>) -> Snapshot {
        let mut snapshot = Snapshot {
            fingerprint,
            ..Snapshot::default()
        };
        for t in tables {
            let t = Arc::new(t);
            snapshot.by_oid.insert(t.oid, t.clone());
            snapshot
                .schemas
                .entry(t.schema.clone())
                .or_default()
                .push(t);
        }
        snapshot
    }

    /// The published tables of `schema` (only `table` when given).
    fn tables(&self, schema: &str, table: Option<&str>) -> Vec<Arc<PublishedTable>> {
        let Some(all) = self.schemas.get(schema) else {
            return Vec::new();
        };
        match table {
            None => all.clone(),
            Some(name) => all.iter().filter(|t| t.name == name).cloned().collect(),
        }
    }

    /// Whether a `Relation` message says something this snapshot does not
    /// know: a table it lacks, a column it lacks or types otherwise. (A
    /// publication's column list may leave columns out of the message, so
    /// fewer columns are no news.)
    fn is_news(&self, rel: &Relation) -> bool {
        let Some(t) = self.by_oid.get(&rel.id) else {
            return true;
        };
        t.schema != rel.namespace
            || t.name != rel.name
            || rel.columns.iter().any(|c| {
                match t.columns.iter().position(|(name, _)| *name == c.name) {
                    Some(i) => t.type_oids.get(i) != Some(&c.type_oid),
                    None => true,
                }
            })
    }
}

/// The catalog connection and its prepared queries.
struct Catalog {
    client: tokio_postgres::Client,
    tables: tokio_postgres::Statement,
    fingerprint: tokio_postgres::Statement,
}

/// A snapshot being loaded or loaded; replaced whole when stale.
type Cell = Arc<OnceCell<Arc<Snapshot>>>;

pub struct PublishedTables {
    config: Arc<Config>,
    catalog: Mutex<Option<Arc<Catalog>>>,
    snapshot: std::sync::Mutex<Cell>,
}

impl std::fmt::Debug for PublishedTables {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PublishedTables")
            .field("publications", &self.config.publications)
            .finish_non_exhaustive()
    }
}

impl PublishedTables {
    pub fn new(config: Arc<Config>) -> Self {
        PublishedTables {
            config,
            catalog: Mutex::new(None),
            snapshot: std::sync::Mutex::new(Cell::default()),
        }
    }

    /// The published tables of `schema` (only `table` when given), from
    /// the snapshot (loading it first when there is none: one load however
    /// many callers wait for it).
    pub async fn lookup(
        &self,
        schema: &str,
        table: Option<&str>,
    ) -> Result<Vec<Arc<PublishedTable>>, String> {
        let cell = self.current();
        let snapshot = cell
            .get_or_try_init(|| async {
                let fingerprint = self.fingerprint().await?;
                let tables = self.query(None, None).await?;
                METRICS.catalog_snapshot_loads.inc();
                Ok::<_, String>(Arc::new(Snapshot::new(fingerprint, tables)))
            })
            .await?;
        Ok(snapshot.tables(schema, table))
    }

    /// The published tables of `schema` (only `table` when given), read
    /// from the catalog now: for a join the snapshot would refuse. When the
    /// answer is not the snapshot's, the snapshot is dropped.
    pub async fn lookup_live(
        &self,
        schema: &str,
        table: Option<&str>,
    ) -> Result<Vec<Arc<PublishedTable>>, String> {
        METRICS.catalog_live_lookups.inc();
        let fresh: Vec<Arc<PublishedTable>> = self
            .query(Some(schema), table)
            .await?
            .into_iter()
            .map(Arc::new)
            .collect();
        let cell = self.current();
        if let Some(snapshot) = cell.get() {
            if snapshot.tables(schema, table) != fresh {
                tracing::info!(%schema, table = table.unwrap_or("*"), "the published tables changed: the catalog snapshot is read again");
                self.forget(&cell);
            }
        }
        Ok(fresh)
    }

    /// Told of every `Relation` message of the replication stream: drops
    /// the snapshot when the message says something it does not know.
    pub fn relation(&self, rel: &Relation) {
        let cell = self.current();
        if cell.get().is_some_and(|s| s.is_news(rel)) {
            tracing::info!(table = %format!("{}.{}", rel.namespace, rel.name), "a published table changed (its Relation message): the catalog snapshot is read again");
            self.forget(&cell);
        }
    }

    /// Loads the snapshot now (at start, so the first joins find it).
    pub async fn preload(&self) {
        if let Err(e) = self.lookup("", None).await {
            tracing::warn!(error = %e, "reading the published tables failed; the first join tries again");
        }
    }

    /// Reads the fingerprint of the publications and their tables' columns
    /// every `interval`, and drops the snapshot when it was loaded under
    /// another one.
    pub async fn watch(self: Arc<Self>, interval: std::time::Duration) {
        let mut tick = tokio::time::interval(interval);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tick.tick().await;
            let cell = self.current();
            let Some(snapshot) = cell.get() else {
                // None loaded: the next join loads a current one.
                continue;
            };
            let fingerprint = match self.fingerprint().await {
                Ok(f) => f,
                Err(e) => {
                    tracing::warn!(error = %e, "reading the publications for changes failed; trying again");
                    continue;
                }
            };
            if fingerprint != snapshot.fingerprint {
                tracing::info!(
                    "a publication or a published table changed: the catalog snapshot is read again"
                );
                self.forget(&cell);
            }
        }
    }

    fn current(&self) -> Cell {
        self.snapshot
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    /// Replaces `stale` (if still current) with an empty cell: the next
    /// lookup loads a new snapshot.
    fn forget(&self, stale: &Cell) {
        let mut current = self.snapshot.lock().unwrap_or_else(|e| e.into_inner());
        if Arc::ptr_eq(&current, stale) {
            *current = Cell::default();
        }
    }

    async fn fingerprint(&self) -> Result<String, String> {
        let catalog = self.catalog().await?;
        let row = catalog
            .client
            .query_one(&catalog.fingerprint, &[&self.config.publications])
            .await
            .map_err(|e| format!("reading the publications' fingerprint failed: {e}"))?;
        Ok(row.get(0))
    }

    /// The connection and its statements, (re)connecting when needed.
    async fn catalog(&self) -> Result<Arc<Catalog>, String> {
        let mut guard = self.catalog.lock().await;
        if let Some(c) = guard.as_ref().filter(|c| !c.client.is_closed()) {
            return Ok(c.clone());
        }
        let client = self.connect().await?;
        let prepare = |e| format!("preparing the query of the publications' tables failed: {e}");
        let tables = client.prepare(TABLES_SQL).await.map_err(prepare)?;
        let fingerprint = client.prepare(FINGERPRINT_SQL).await.map_err(prepare)?;
        let c = Arc::new(Catalog {
            client,
            tables,
            fingerprint,
        });
        *guard = Some(c.clone());
        Ok(c)
    }

    /// The published tables' columns, of every schema or of one.
    async fn query(
        &self,
        schema: Option<&str>,
        table: Option<&str>,
    ) -> Result<Vec<PublishedTable>, String> {
        let catalog = self.catalog().await?;
        let rows = match catalog
            .client
            .query(
                &catalog.tables,
                &[&self.config.publications, &schema, &table],
            )
            .await
        {
            Ok(rows) => rows,
            Err(e) => {
                // The next lookup reconnects if the connection is gone.
                return Err(format!("reading the publications' tables failed: {e}"));
            }
        };
        let mut tables: Vec<PublishedTable> = Vec::new();
        for row in rows {
            let (s, t, col, cat, typ): (String, String, String, String, String) =
                (row.get(0), row.get(1), row.get(2), row.get(3), row.get(4));
            let oid: u32 = row.get(5);
            let is_key: bool = row.get(6);
            let type_oid: u32 = row.get(7);
            let kind = Comparison::from_category(cat.chars().next().unwrap_or('S'), &typ);
            let table = match tables.last_mut() {
                Some(last) if last.schema == s && last.name == t => last,
                _ => {
                    tables.push(PublishedTable {
                        schema: s,
                        name: t,
                        oid,
                        columns: Vec::new(),
                        type_oids: Vec::new(),
                        keys: Vec::new(),
                    });
                    tables.last_mut().expect("just pushed")
                }
            };
            if is_key {
                table.keys.push(col.clone());
            }
            table.columns.push((col, kind));
            table.type_oids.push(type_oid);
        }
        Ok(tables)
    }

    async fn connect(&self) -> Result<tokio_postgres::Client, String> {
        let db = &self.config.db;
        let mut pg = tokio_postgres::Config::new();
        pg.host(&db.host)
            .port(db.port)
            .dbname(&db.name)
            .user(&db.user)
            .password(db.password.expose())
            .application_name("realtime-server catalog");
        let failed = |e: tokio_postgres::Error| {
            format!("connecting to the database for the catalog failed: {e}")
        };
        crate::pg::connect(pg, db.ssl, "catalog")
            .await
            .map_err(failed)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::replication::pgoutput::{RelationColumn, ReplicaIdentity};

    fn table(oid: u32, columns: &[(&str, u32)]) -> PublishedTable {
        PublishedTable {
            schema: "public".into(),
            name: format!("t{oid}"),
            oid,
            columns: columns
                .iter()
                .map(|(n, _)| (n.to_string(), Comparison::Number))
                .collect(),
            type_oids: columns.iter().map(|(_, t)| *t).collect(),
            keys: vec!["id".into()],
        }
    }

    fn relation(oid: u32, columns: &[(&str, u32)]) -> Relation {
        Relation {
            id: oid,
            namespace: "public".into(),
            name: format!("t{oid}"),
            replica_identity: ReplicaIdentity::Default,
            columns: columns
                .iter()
                .map(|(n, t)| RelationColumn {
                    is_key: *n == "id",
                    name: n.to_string(),
                    type_oid: *t,
                    type_modifier: -1,
                })
                .collect(),
        }
    }

    #[test]
    fn a_relation_message_is_news_only_when_it_says_something_the_snapshot_lacks() {
        let s = Snapshot::new(String::new(), vec![table(1, &[("id", 23), ("v", 25)])]);
        // The same, or fewer columns (a publication's column list): no news.
        assert!(!s.is_news(&relation(1, &[("id", 23), ("v", 25)])));
        assert!(!s.is_news(&relation(1, &[("id", 23)])));
        // A column added or retyped, a table renamed or unknown: news.
        assert!(s.is_news(&relation(1, &[("id", 23), ("v", 25), ("w", 23)])));
        assert!(s.is_news(&relation(1, &[("id", 23), ("v", 23)])));
        let mut renamed = relation(1, &[("id", 23)]);
        renamed.name = "other".into();
        assert!(s.is_news(&renamed));
        assert!(s.is_news(&relation(2, &[("id", 23)])));
    }

    #[test]
    fn a_snapshot_answers_by_schema_and_table() {
        let s = Snapshot::new(
            String::new(),
            vec![table(1, &[("id", 23)]), table(2, &[("id", 23)])],
        );
        assert_eq!(s.tables("public", None).len(), 2);
        assert_eq!(s.tables("public", Some("t2"))[0].oid, 2);
        assert!(s.tables("public", Some("t3")).is_empty());
        assert!(s.tables("other", None).is_empty());
    }
}
