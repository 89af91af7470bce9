//! The database objects authorization needs, shipped with the server: the
//! roles tokens name (granted to the server's user), Supabase's `auth`
//! helpers when missing, and `realtime.messages` with `realtime.topic()`
//! for private channels. The SQL is idempotent and never replaces what
//! exists; `realtime-server setup-authorization` applies or prints it, and
//! the operator applies it on request.

use super::plan::quote_ident;

/// The setup SQL, as shipped.
pub const SETUP_SQL: &str = include_str!("setup.sql");

/// The setup SQL for a server whose database user is `server_user`.
pub fn setup_sql(server_user: &str) -> String {
    SETUP_SQL.replace(":server_user", &quote_ident(server_user))
}

/// Applies the setup on `client` (one transaction).
pub async fn apply(client: &tokio_postgres::Client, server_user: &str) -> Result<(), String> {
    let sql = format!("BEGIN;\n{}\nCOMMIT;", setup_sql(server_user));
    client.batch_execute(&sql).await.map_err(|e| {
        let detail = e
            .as_db_error()
            .map(|d| d.message().to_string())
            .unwrap_or_else(|| e.to_string());
        format!("applying the authorization setup failed: {detail}")
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_server_user_is_quoted() {
        let sql = setup_sql("real\"time");
        assert!(sql.contains("TO \"real\"\"time\";"));
        assert!(!sql.contains(":server_user"));
    }
}
