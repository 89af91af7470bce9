//! Which tables the served publications contain, and their columns.
//!
//! Owns the one plain SQL connection of the server (tokio-postgres), opened
//! on first use and reopened after a failure, and the catalog query that a
//! `postgres_changes` join needs: the binding's table must be published, a
//! filter's column must exist and its value parse as the column's type, and
//! a `select` list names columns (the primary key always goes along).
//! The query is prepared once per connection, and concurrent joins share the
//! connection (tokio-postgres pipelines them): the lock is held only to
//! (re)connect. Must not touch the replication session.

use std::sync::Arc;

use tokio::sync::Mutex;

use crate::config::Config;
use crate::filter::Comparison;

/// A published table and how its columns compare.
#[derive(Debug, Clone)]
pub struct PublishedTable {
    pub schema: String,
    pub name: String,
    /// The table's OID (pgoutput's relation id).
    pub oid: u32,
    pub columns: Vec<(String, Comparison)>,
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

const TABLES_SQL: &str = "\
SELECT pt.schemaname::text, pt.tablename::text, a.attname::text, bt.typcategory::text, bt.typname::text, c.oid,
  EXISTS (SELECT 1 FROM pg_catalog.pg_index i WHERE i.indrelid = c.oid AND i.indisprimary AND a.attnum = ANY(i.indkey))
FROM pg_catalog.pg_publication_tables pt
JOIN pg_catalog.pg_namespace n ON n.nspname = pt.schemaname
JOIN pg_catalog.pg_class c ON c.relnamespace = n.oid AND c.relname = pt.tablename
JOIN pg_catalog.pg_attribute a ON a.attrelid = c.oid AND a.attnum > 0 AND NOT a.attisdropped
JOIN pg_catalog.pg_type t ON t.oid = a.atttypid
JOIN pg_catalog.pg_type bt ON bt.oid = CASE WHEN t.typtype = 'd' THEN t.typbasetype ELSE t.oid END
WHERE pt.pubname = ANY($1) AND pt.schemaname = $2 AND ($3::text IS NULL OR pt.tablename = $3)
ORDER BY 1, 2, a.attnum";

/// The catalog connection and its prepared query.
struct Catalog {
    client: tokio_postgres::Client,
    tables: tokio_postgres::Statement,
}

pub struct PublishedTables {
    config: Arc<Config>,
    catalog: Mutex<Option<Arc<Catalog>>>,
}

impl PublishedTables {
    pub fn new(config: Arc<Config>) -> Self {
        PublishedTables {
            config,
            catalog: Mutex::new(None),
        }
    }

    /// The published tables of `schema` (only `table` when given).
    pub async fn lookup(
        &self,
        schema: &str,
        table: Option<&str>,
    ) -> Result<Vec<PublishedTable>, String> {
        let catalog = {
            let mut guard = self.catalog.lock().await;
            match guard.as_ref() {
                Some(c) if !c.client.is_closed() => c.clone(),
                _ => {
                    let client = self.connect().await?;
                    let tables = client.prepare(TABLES_SQL).await.map_err(|e| {
                        format!("preparing the query of the publications' tables failed: {e}")
                    })?;
                    let c = Arc::new(Catalog { client, tables });
                    *guard = Some(c.clone());
                    c
                }
            }
        };
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
            let kind = Comparison::from_category(cat.chars().next().unwrap_or('S'), &typ);
            let table = match tables.last_mut() {
                Some(last) if last.schema == s && last.name == t => last,
                _ => {
                    tables.push(PublishedTable {
                        schema: s,
                        name: t,
                        oid,
                        columns: Vec::new(),
                        keys: Vec::new(),
                    });
                    tables.last_mut().expect("just pushed")
                }
            };
            if is_key {
                table.keys.push(col.clone());
            }
            table.columns.push((col, kind));
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
