//! Applies the database objects authorization needs (the SQL lives in the
//! contract crate, shared with the operator: see
//! [`realtime_contract::authorization`]).

pub use realtime_contract::authorization::{setup_sql, SETUP_SQL};

/// Applies the setup on `client`, in one transaction.
pub async fn apply(client: &tokio_postgres::Client, server_user: &str) -> Result<(), String> {
    let sql = realtime_contract::authorization::setup_transaction(server_user);
    client.batch_execute(&sql).await.map_err(|e| {
        let detail = e
            .as_db_error()
            .map(|d| d.message().to_string())
            .unwrap_or_else(|| e.to_string());
        format!("applying the authorization setup failed: {detail}")
    })
}
