//! Names derived from a resource: the replication slot prefix, the default
//! publication name, labels. Pure functions; every derived database name is valid
//! for PostgreSQL (`[a-z0-9_]`, at most 63 bytes) and deterministic.

use std::collections::BTreeMap;

use sha2::{Digest, Sha256};

/// PostgreSQL's longest identifier (NAMEDATALEN - 1).
pub const MAX_IDENTIFIER: usize = 63;
/// Room kept at the end of a slot prefix for `_<ordinal>`: up to five digits.
const ORDINAL_ROOM: usize = 6;
/// The label that every child carries with the resource's name.
pub const INSTANCE_LABEL: &str = "app.kubernetes.io/instance";

/// Hex of the first `n` bytes of SHA-256 of `input`.
pub fn short_hash(input: &str, n: usize) -> String {
    Sha256::digest(input.as_bytes())[..n]
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// `<kind>_<namespace>_<name>` made a valid PostgreSQL name of at most `max`
/// bytes. When the mapping is lossy (a `-` or `.` became `_`) or too long, a hash
/// of `namespace/name` is appended, so two resources never share a name.
fn db_name(kind: &str, namespace: &str, name: &str, max: usize) -> String {
    let raw = format!("{kind}_{namespace}_{name}");
    let clean: String = raw
        .chars()
        .map(|c| {
            if c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_' {
                c
            } else {
                '_'
            }
        })
        .collect();
    let lossless = !namespace.contains(['-', '.', '_']) && !name.contains(['-', '.', '_']);
    let lossless = lossless && clean == raw;
    if lossless && clean.len() <= max {
        return clean;
    }
    let hash = short_hash(&format!("{namespace}/{name}"), 4);
    let keep = max - hash.len() - 1;
    let mut head: String = clean.chars().take(keep).collect();
    while head.ends_with('_') {
        head.pop();
    }
    format!("{head}_{hash}")
}

/// The prefix of this resource's slots: replica `i` streams from `<prefix>_<i>`.
pub fn slot_prefix(namespace: &str, name: &str) -> String {
    db_name("rts", namespace, name, MAX_IDENTIFIER - ORDINAL_ROOM)
}

/// The `CLUSTER_NAME` of this resource's pods: its replicas are one
/// cluster (Broadcast and Presence cross them), and two resources on one
/// database are two clusters. At most 40 bytes, the server's limit.
pub fn cluster_name(namespace: &str, name: &str) -> String {
    db_name("rtc", namespace, name, 40)
}

/// The slot of replica `ordinal`.
pub fn slot_name(prefix: &str, ordinal: u32) -> String {
    format!("{prefix}_{ordinal}")
}

/// The ordinal of `slot` if it is one of the slots of `prefix`.
pub fn slot_ordinal(prefix: &str, slot: &str) -> Option<u32> {
    let rest = slot.strip_prefix(prefix)?.strip_prefix('_')?;
    if rest.is_empty() || !rest.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    rest.parse().ok()
}

/// The publication name used when the spec names none.
pub fn default_publication(namespace: &str, name: &str) -> String {
    db_name("realtime", namespace, name, MAX_IDENTIFIER)
}

/// The labels of every child (and the pod selector).
pub fn labels(name: &str) -> BTreeMap<String, String> {
    BTreeMap::from([
        ("app.kubernetes.io/name".into(), "realtime-server".into()),
        (INSTANCE_LABEL.into(), name.into()),
        (
            "app.kubernetes.io/managed-by".into(),
            "realtime-operator".into(),
        ),
    ])
}

/// The label selector of a resource's pods (and other children).
pub fn selector(name: &str) -> String {
    format!("{INSTANCE_LABEL}={name}")
}

/// The suffix of the headless Service's name.
pub const HEADLESS_SUFFIX: &str = "-headless";

/// The StatefulSet's governing (headless) Service of resource `name`.
pub fn headless_service(name: &str) -> String {
    format!("{name}{HEADLESS_SUFFIX}")
}

/// The StatefulSet's pod selector as a label selector string (every label of
/// [`labels`]): the scale subresource's `status.selector`.
pub fn pod_selector(name: &str) -> String {
    labels(name)
        .iter()
        .map(|(k, v)| format!("{k}={v}"))
        .collect::<Vec<_>>()
        .join(",")
}

/// The mark the operator puts on a publication it manages (its comment).
pub fn ownership_mark(namespace: &str, name: &str) -> String {
    format!("managed by realtime-operator for RealtimeServer {namespace}/{name}")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn valid(n: &str) -> bool {
        !n.is_empty()
            && n.len() <= MAX_IDENTIFIER
            && n.bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_')
    }

    #[test]
    fn each_resource_is_its_own_cluster_with_a_valid_name() {
        assert_eq!(cluster_name("default", "chat"), "rtc_default_chat");
        let long = cluster_name(&"n".repeat(63), &"x".repeat(253));
        assert!(long.len() <= 40 && valid(&long), "{long}");
        assert_ne!(long, cluster_name(&"n".repeat(63), &"x".repeat(252)));
        assert_ne!(cluster_name("a-b", "c"), cluster_name("a", "b-c"));
    }

    #[test]
    fn a_simple_name_gives_a_readable_prefix() {
        assert_eq!(slot_prefix("default", "chat"), "rts_default_chat");
        assert_eq!(slot_name("rts_default_chat", 1), "rts_default_chat_1");
        assert_eq!(
            default_publication("default", "chat"),
            "realtime_default_chat"
        );
    }

    #[test]
    fn dashes_are_mapped_with_a_hash_so_names_never_collide() {
        let a = slot_prefix("a-b", "c");
        let b = slot_prefix("a", "b-c");
        assert_ne!(a, b);
        assert!(valid(&a) && valid(&b), "{a} {b}");
    }

    #[test]
    fn long_names_are_cut_and_hashed_leaving_room_for_the_ordinal() {
        let ns = "n".repeat(63);
        let name = "x".repeat(253);
        let p = slot_prefix(&ns, &name);
        assert!(p.len() <= MAX_IDENTIFIER - ORDINAL_ROOM, "{p}");
        assert!(valid(&slot_name(&p, 99999)));
        assert_ne!(p, slot_prefix(&ns, &"x".repeat(252)));
        assert!(valid(&default_publication(&ns, &name)));
    }

    #[test]
    fn slot_ordinal_recognises_only_this_prefix() {
        assert_eq!(slot_ordinal("rts_a_b", "rts_a_b_3"), Some(3));
        assert_eq!(slot_ordinal("rts_a_b", "rts_a_b_c_3"), None);
        assert_eq!(slot_ordinal("rts_a_b", "rts_a_b_"), None);
        assert_eq!(slot_ordinal("rts_a_b", "rts_a_bc_1"), None);
    }
}
