//! The bus: one plain SQL connection per server, beside the replication
//! connection, that `LISTEN`s on the cluster's channel and sends this
//! server's messages with `pg_notify`.
//!
//! Outgoing messages are sent in the order they were queued, as many as are
//! waiting (up to [`BATCH_MESSAGES`] / [`BATCH_BYTES`]) in one transaction:
//! PostgreSQL delivers a transaction's notifications together and in order,
//! and writes no WAL for them beyond the commit record. Incoming ones are read
//! as the connection delivers them and handed to the [`Cluster`] at once.
//!
//! When the connection fails, every message still queued fails (a broadcast
//! waiting for its ack is told), the bus reports down (log line, metric) and
//! reconnects with the database backoff; once back it sends this server's
//! full presence state and asks for everyone's. On shutdown it says goodbye.

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use futures::StreamExt;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::sync::mpsc;
use tokio_postgres::AsyncMessage;
use tokio_util::sync::CancellationToken;

use super::wire::Envelope;
use super::{BusError, Cluster, Outgoing};
use crate::config::DbSsl;

/// Most messages sent in one transaction.
pub const BATCH_MESSAGES: usize = 512;
/// Most payload bytes sent in one transaction (a message larger than this
/// still goes, alone).
pub const BATCH_BYTES: usize = 1 << 20;

/// How to reach the database.
#[derive(Clone)]
pub struct BusConnect {
    pub pg: tokio_postgres::Config,
    pub ssl: DbSsl,
}

impl BusConnect {
    /// The database of the server's configuration (`DB_*`).
    pub fn from_config(config: &crate::config::Config) -> BusConnect {
        let db = &config.db;
        let mut pg = tokio_postgres::Config::new();
        pg.host(&db.host)
            .port(db.port)
            .dbname(&db.name)
            .user(&db.user)
            .password(db.password.expose());
        BusConnect { pg, ssl: db.ssl }
    }

    async fn connect(
        &self,
    ) -> Result<
        (
            tokio_postgres::Client,
            mpsc::UnboundedReceiver<String>,
            tokio::task::JoinHandle<Option<String>>,
        ),
        tokio_postgres::Error,
    > {
        let (tx, rx) = mpsc::unbounded_channel();
        let mut pg = self.pg.clone();
        pg.application_name("realtime-server cluster bus")
            .keepalives_idle(Duration::from_secs(10))
            .connect_timeout(Duration::from_secs(10));
        match crate::tls::connector(self.ssl) {
            None => {
                let (client, connection) = pg.connect(tokio_postgres::NoTls).await?;
                Ok((client, rx, tokio::spawn(drive(connection, tx))))
            }
            Some(tls) => {
                pg.ssl_mode(tokio_postgres::config::SslMode::Require);
                let (client, connection) = pg.connect(tls).await?;
                Ok((client, rx, tokio::spawn(drive(connection, tx))))
            }
        }
    }
}

/// Drives the connection, forwarding notifications; ends with the reason
/// the connection closed.
async fn drive<S, T>(
    mut connection: tokio_postgres::Connection<S, T>,
    tx: mpsc::UnboundedSender<String>,
) -> Option<String>
where
    S: AsyncRead + AsyncWrite + Unpin,
    T: AsyncRead + AsyncWrite + Unpin,
{
    let mut messages = futures::stream::poll_fn(move |cx| connection.poll_message(cx));
    while let Some(m) = messages.next().await {
        match m {
            Ok(AsyncMessage::Notification(n)) => {
                if tx.send(n.payload().to_string()).is_err() {
                    return None;
                }
            }
            Ok(AsyncMessage::Notice(n)) => {
                tracing::info!(notice = %n.message(), "cluster bus: notice from the database")
            }
            Ok(_) => {}
            Err(e) => return Some(e.to_string()),
        }
    }
    None
}

/// A string literal for SQL, whatever `standard_conforming_strings` says.
fn literal(s: &str) -> String {
    let mut out = String::with_capacity(s.len() + 4);
    out.push_str("E'");
    for c in s.chars() {
        match c {
            '\'' => out.push_str("''"),
            '\\' => out.push_str("\\\\"),
            c => out.push(c),
        }
    }
    out.push('\'');
    out
}

/// The SQL that notifies `envelopes` on `channel`, in order, in one
/// transaction (a multi-statement simple query is one transaction).
fn notify_sql(channel: &str, envelopes: &[&Envelope]) -> String {
    let mut sql = String::new();
    let channel = literal(channel);
    for e in envelopes {
        for p in e.payloads() {
            sql.push_str("SELECT pg_notify(");
            sql.push_str(&channel);
            sql.push(',');
            sql.push_str(&literal(&p));
            sql.push_str(");");
        }
    }
    sql
}

/// Runs the bus until `stop`: connects, listens, sends, receives,
/// reconnects.
pub async fn run(cluster: Arc<Cluster>, connect: BusConnect, stop: CancellationToken) {
    let Some(mut out) = cluster
        .out_rx
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .take()
    else {
        tracing::error!("cluster bus started twice");
        return;
    };
    let settings = cluster.settings().clone();
    let channel = settings.channel();
    let mut backoff = settings.backoff_min;
    let mut first = true;
    loop {
        let (client, mut incoming, driver) = match connect.connect().await {
            Ok(c) => c,
            Err(e) => {
                tracing::warn!(error = %e, retry_ms = backoff.as_millis() as u64, "cluster bus: cannot connect to the database");
                tokio::select! {
                    _ = stop.cancelled() => return,
                    _ = tokio::time::sleep(backoff) => {}
                }
                backoff = (backoff * 2).min(settings.backoff_max);
                continue;
            }
        };
        if let Err(e) = client.batch_execute(&format!("LISTEN \"{channel}\"")).await {
            tracing::warn!(error = %e, channel = %channel, "cluster bus: LISTEN failed");
            driver.abort();
            tokio::select! {
                _ = stop.cancelled() => return,
                _ = tokio::time::sleep(backoff) => {}
            }
            backoff = (backoff * 2).min(settings.backoff_max);
            continue;
        }
        backoff = settings.backoff_min;
        cluster.set_up(true);
        if first {
            tracing::info!(node = %cluster.node(), channel = %channel, "cluster bus connected");
        } else {
            cluster.status.reconnects.fetch_add(1, Ordering::Relaxed);
            tracing::info!(node = %cluster.node(), channel = %channel, "cluster bus reconnected; resyncing presence");
        }
        first = false;
        cluster.connected();

        let mut heartbeat = tokio::time::interval(settings.heartbeat);
        heartbeat.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        // A send that takes this long means the database is not answering.
        let send_timeout = settings.node_timeout.max(Duration::from_secs(5));
        let mut batch: Vec<Outgoing> = Vec::new();
        let reason: String = loop {
            tokio::select! {
                biased;
                _ = stop.cancelled() => {
                    if let Some(bye) = cluster.bye() {
                        let sql = notify_sql(&channel, &[&bye]);
                        let _ = tokio::time::timeout(Duration::from_secs(2), client.batch_execute(&sql)).await;
                    }
                    cluster.set_up(false);
                    driver.abort();
                    return;
                }
                n = incoming.recv() => match n {
                    Some(payload) => cluster.receive(&payload),
                    None => break "the connection closed".to_string(),
                },
                _ = heartbeat.tick() => cluster.tick(),
                first = out.recv() => {
                    let Some(first) = first else { return };
                    let mut bytes = first.envelope.body.len();
                    batch.push(first);
                    while batch.len() < BATCH_MESSAGES && bytes < BATCH_BYTES {
                        match out.try_recv() {
                            Ok(m) => {
                                bytes += m.envelope.body.len();
                                batch.push(m);
                            }
                            Err(_) => break,
                        }
                    }
                    let envelopes: Vec<&Envelope> = batch.iter().map(|m| &m.envelope).collect();
                    let sql = notify_sql(&channel, &envelopes);
                    let result = match tokio::time::timeout(send_timeout, client.batch_execute(&sql)).await {
                        Ok(Ok(())) => Ok(()),
                        Ok(Err(e)) => Err(BusError::Failed(e.to_string())),
                        Err(_) => Err(BusError::Failed(format!("no answer from the database in {} ms", send_timeout.as_millis()))),
                    };
                    let failed = result.as_ref().err().cloned();
                    cluster.status.published.fetch_add(batch.len() as u64, Ordering::Relaxed);
                    for m in batch.drain(..) {
                        if let Some(done) = m.done {
                            let _ = done.send(result.clone());
                        }
                    }
                    if let Some(e) = failed {
                        cluster.status.failed.fetch_add(1, Ordering::Relaxed);
                        // A payload PostgreSQL refused (it should not happen)
                        // fails alone; a dead connection ends the session.
                        if client.is_closed() || matches!(&e, BusError::Failed(m) if m.starts_with("no answer")) {
                            break e.to_string();
                        }
                        tracing::warn!(error = %e, "cluster bus: a send failed");
                    }
                }
            }
        };
        cluster.set_up(false);
        driver.abort();
        let why = driver.await.ok().flatten().unwrap_or(reason);
        // What is still queued cannot be sent on this connection.
        while let Ok(m) = out.try_recv() {
            if let Some(done) = m.done {
                let _ = done.send(Err(BusError::Down));
            }
        }
        tracing::warn!(error = %why, retry_ms = backoff.as_millis() as u64, "cluster bus down: broadcasts reach this server's members only until it reconnects");
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = tokio::time::sleep(backoff) => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn literals_survive_quotes_and_backslashes() {
        assert_eq!(literal(r#"a'b\c"#), r#"E'a''b\\c'"#);
    }
}
