//! How a durable `pgoutput` slot is created, by the operator (SQL) and by
//! the server (the replication protocol's command), so that both make the
//! same kind of slot: a failover slot where PostgreSQL has them (17+), so a
//! standby with `sync_replication_slots = on` keeps a copy and the slot
//! survives a failover to it.

/// The first `server_version_num` whose slots can be failover slots.
pub const FAILOVER_SLOTS_SINCE: i32 = 170000;

/// The SQL statement that creates a durable `pgoutput` slot named `$1` on a
/// server of `version` (`server_version_num`).
pub fn create_slot_sql(version: i32) -> &'static str {
    if version >= FAILOVER_SLOTS_SINCE {
        // (slot_name, plugin, temporary, twophase, failover)
        "SELECT pg_create_logical_replication_slot($1, 'pgoutput', false, false, true)"
    } else {
        "SELECT pg_create_logical_replication_slot($1, 'pgoutput')"
    }
}

/// The replication command that creates the durable `pgoutput` slot `slot`
/// (a valid slot name: lower-case letters, digits and `_`, as PostgreSQL
/// requires) on a server of `version`.
pub fn create_slot_command(slot: &str, version: i32) -> String {
    if version >= FAILOVER_SLOTS_SINCE {
        format!("CREATE_REPLICATION_SLOT {slot} LOGICAL pgoutput (FAILOVER true)")
    } else {
        format!("CREATE_REPLICATION_SLOT {slot} LOGICAL pgoutput")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn slots_are_failover_slots_from_postgresql_17_on() {
        assert_eq!(
            create_slot_sql(150004),
            "SELECT pg_create_logical_replication_slot($1, 'pgoutput')"
        );
        assert_eq!(create_slot_sql(169999), create_slot_sql(100000));
        assert_eq!(
            create_slot_sql(170000),
            "SELECT pg_create_logical_replication_slot($1, 'pgoutput', false, false, true)"
        );
        assert_eq!(create_slot_sql(180001), create_slot_sql(170000));
        assert_eq!(
            create_slot_command("s_0", 150004),
            "CREATE_REPLICATION_SLOT s_0 LOGICAL pgoutput"
        );
        assert_eq!(
            create_slot_command("s_0", 170002),
            "CREATE_REPLICATION_SLOT s_0 LOGICAL pgoutput (FAILOVER true)"
        );
    }
}
