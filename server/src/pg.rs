//! Plain SQL connections to the database (the catalog's and the
//! authorization checks'): TLS as `DB_SSL` says, and the connection driven
//! on a task of its own that logs why it ended. The replication stream and
//! the cluster bus drive their connections themselves.

use futures::FutureExt;
use tokio_postgres::config::SslMode;
use tokio_postgres::{Client, Config, Error};

use crate::config::DbSsl;

/// Connects with `pg` over `ssl`; `purpose` names the connection in the log
/// line written when it ends with an error.
pub async fn connect(mut pg: Config, ssl: DbSsl, purpose: &'static str) -> Result<Client, Error> {
    let (client, connection) = match crate::tls::connector(ssl) {
        None => {
            let (client, connection) = pg.connect(tokio_postgres::NoTls).await?;
            (client, watch(connection, purpose).boxed())
        }
        Some(tls) => {
            pg.ssl_mode(SslMode::Require);
            let (client, connection) = pg.connect(tls).await?;
            (client, watch(connection, purpose).boxed())
        }
    };
    tokio::spawn(connection);
    Ok(client)
}

async fn watch<F: std::future::Future<Output = Result<(), Error>>>(
    connection: F,
    purpose: &'static str,
) {
    if let Err(e) = connection.await {
        tracing::warn!(error = %e, "the {purpose} connection ended");
    }
}
