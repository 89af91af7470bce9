//! The database objects the server's authorization uses, as SQL that the
//! server (`realtime-server setup-authorization`) and the operator
//! (`spec.auth.setupAuthorization`) both apply: the roles tokens name
//! (`anon`, `authenticated`, `service_role`) granted to the server's user,
//! Supabase's `auth.uid()`, `auth.role()` and `auth.jwt()` when missing, and
//! for private channels `realtime.messages` (row level security on, no
//! policy: nobody reads or writes until policies say so) with
//! `realtime.topic()`. Idempotent; never replaces what exists.

use crate::sql::quote_ident;

/// The setup SQL, as shipped, with `:server_user` where the server's
/// database user goes.
pub const SETUP_SQL: &str = include_str!("authorization.sql");

/// The setup SQL for a server whose database user is `server_user`.
pub fn setup_sql(server_user: &str) -> String {
    SETUP_SQL.replace(":server_user", &quote_ident(server_user))
}

/// The setup in one transaction, for `batch_execute`.
pub fn setup_transaction(server_user: &str) -> String {
    format!("BEGIN;\n{}\nCOMMIT;", setup_sql(server_user))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_server_user_is_quoted_everywhere() {
        let sql = setup_sql("real\"time");
        assert!(sql.contains("TO \"real\"\"time\";"));
        assert!(!sql.contains(":server_user"));
        assert!(setup_transaction("u").starts_with("BEGIN;"));
    }
}
