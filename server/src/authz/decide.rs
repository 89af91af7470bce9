//! Whether one change reaches one group, and with which of its values.
//!
//! The semantics, exactly (the README's Security section says the same):
//! - A change is decided on its own row image, the one the stream carries:
//!   the new row for INSERT and UPDATE, the old row for DELETE. Never the
//!   row as it is now in the table, which may have changed since (a row
//!   given to another user after a secret was written into it must not
//!   reveal the secret to them: each UPDATE is decided on its own new row).
//! - Policies that read other tables read them as they are when the check
//!   runs (milliseconds after the commit).
//! - An UPDATE's old values (`old_record`, with REPLICA IDENTITY FULL or a
//!   changed key) go along only when the group may also see the old row;
//!   otherwise `old_record` is sent empty.
//! - When the image lacks a column the policies read (a key-only old row,
//!   an unchanged TOASTed value, a generated column, a system column):
//!   INSERT and UPDATE are withheld from that group (counted as
//!   undecidable); a DELETE is sent with the primary key only, to every
//!   group whose role may SELECT the table and that is not denied every row
//!   (Supabase's behaviour for deletes).
//! - TRUNCATE (1.x topics) reaches every group whose role may SELECT.

use crate::change::{Change, ChangeKind, Row};

use super::authorizer::GroupAccess;
use super::image;
use super::plan::Access;

/// What to do with a change for one group.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verdict {
    /// Send it; `old`: with its old values.
    Deliver { old: bool },
    /// Not for this group.
    Skip,
    /// The image lacks what the policies read: withheld (counted).
    Undecidable,
    /// Check inside PostgreSQL: `images[0]` is the deciding image; when
    /// `old_checked`, `images[1]` is the old row of an UPDATE.
    Check {
        images: Vec<String>,
        old_checked: bool,
        /// Whether the old values go along when they are not checked.
        old_unchecked: bool,
    },
}

/// Decides what can be decided without the database.
pub fn decide(access: &GroupAccess, change: &Change) -> Verdict {
    if matches!(access.access, Access::Denied(_)) {
        return Verdict::Skip;
    }
    if change.kind == ChangeKind::Truncate {
        return Verdict::Deliver { old: true };
    }
    let table = &change.table;
    let Some(primary) = image::primary(change) else {
        return Verdict::Skip;
    };
    let previous = image::previous(change);
    let keys_only = |undecided: Verdict| {
        if change.kind == ChangeKind::Delete {
            Verdict::Deliver { old: true }
        } else {
            undecided
        }
    };
    match &access.access {
        Access::Denied(_) | Access::Nothing => Verdict::Skip,
        Access::Match(constraints) => {
            let columns: std::collections::BTreeSet<String> =
                constraints.iter().map(|(c, _)| c.clone()).collect();
            if !image::complete(table, primary, Some(&columns)) {
                return keys_only(Verdict::Undecidable);
            }
            if !image::matches(table, primary, constraints) {
                return Verdict::Skip;
            }
            let old = previous.is_none_or(|p: &Row| {
                image::complete(table, p, Some(&columns)) && image::matches(table, p, constraints)
            });
            Verdict::Deliver { old }
        }
        Access::Check => {
            let reads = access.plan.as_ref().and_then(|p| p.reads.as_ref());
            if !image::complete(table, primary, reads) {
                return keys_only(Verdict::Undecidable);
            }
            let mut images = vec![image::json(table, primary)];
            let (old_checked, old_unchecked) = match previous {
                None => (false, true),
                Some(p) if image::complete(table, p, reads) => {
                    images.push(image::json(table, p));
                    (true, false)
                }
                Some(_) => (false, false),
            };
            Verdict::Check {
                images,
                old_checked,
                old_unchecked,
            }
        }
    }
}

/// The verdict once a [`Verdict::Check`]'s images were checked (`passed`,
/// one per image).
pub fn after_check(old_checked: bool, old_unchecked: bool, passed: &[bool]) -> Verdict {
    if !passed.first().copied().unwrap_or(false) {
        return Verdict::Skip;
    }
    let old = if old_checked {
        passed.get(1).copied().unwrap_or(false)
    } else {
        old_unchecked
    };
    Verdict::Deliver { old }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::change::{Cell, ColumnInfo, TableInfo};
    use crate::replication::catalog::TypeKind;
    use crate::replication::pgoutput::ReplicaIdentity;
    use bytes::Bytes;
    use std::sync::Arc;

    fn table() -> Arc<TableInfo> {
        let col = |name: &str| ColumnInfo {
            name: name.into(),
            type_name: "text".into(),
            kind: TypeKind::Text,
            type_oid: 25,
            type_modifier: -1,
            is_key: name == "id",
        };
        Arc::new(TableInfo::new(
            1,
            "public".into(),
            "notes".into(),
            ReplicaIdentity::Full,
            vec![col("id"), col("owner"), col("body")],
        ))
    }

    fn row(id: &str, owner: Option<&str>, body: &str) -> Row {
        let t = |s: &str| Cell::Text(Bytes::copy_from_slice(s.as_bytes()));
        vec![t(id), owner.map(t).unwrap_or(Cell::Absent), t(body)]
    }

    fn change(kind: ChangeKind, new: Option<Row>, old: Option<Row>) -> Change {
        Change {
            kind,
            table: table(),
            commit_timestamp: "2024-01-01T00:00:00Z".into(),
            record: new,
            old_record: old,
            errors: vec![],
            unlimited: None,
        }
    }

    fn owner(v: &str) -> GroupAccess {
        GroupAccess {
            access: Access::Match(vec![("owner".into(), v.into())]),
            plan: None,
        }
    }

    #[test]
    fn an_update_that_gives_a_row_away_does_not_carry_the_previous_owners_values() {
        // B's row, with a secret, given to A.
        let c = change(
            ChangeKind::Update,
            Some(row("1", Some("A"), "secret")),
            Some(row("1", Some("B"), "secret")),
        );
        assert_eq!(decide(&owner("A"), &c), Verdict::Deliver { old: false });
        assert_eq!(decide(&owner("B"), &c), Verdict::Skip);
        // A's own update keeps its old values.
        let c = change(
            ChangeKind::Update,
            Some(row("1", Some("A"), "new")),
            Some(row("1", Some("A"), "old")),
        );
        assert_eq!(decide(&owner("A"), &c), Verdict::Deliver { old: true });
    }

    #[test]
    fn deletes_decide_on_the_old_row_or_send_the_key_only() {
        let full = change(ChangeKind::Delete, None, Some(row("1", Some("B"), "x")));
        assert_eq!(decide(&owner("A"), &full), Verdict::Skip);
        assert_eq!(decide(&owner("B"), &full), Verdict::Deliver { old: true });
        let key_only = change(ChangeKind::Delete, None, Some(row("1", None, "x")));
        assert_eq!(
            decide(&owner("A"), &key_only),
            Verdict::Deliver { old: true }
        );
        let nothing = GroupAccess {
            access: Access::Nothing,
            plan: None,
        };
        assert_eq!(decide(&nothing, &key_only), Verdict::Skip);
        let insert_without_owner = change(ChangeKind::Insert, Some(row("1", None, "x")), None);
        assert_eq!(
            decide(&owner("A"), &insert_without_owner),
            Verdict::Undecidable
        );
    }

    #[test]
    fn checks_carry_the_images_and_decide_the_old_values() {
        let plan = None;
        let check = GroupAccess {
            access: Access::Check,
            plan,
        };
        // Without a plan there is nothing the images could be checked for:
        // reads unknown, so undecidable.
        let c = change(ChangeKind::Insert, Some(row("1", Some("A"), "x")), None);
        assert_eq!(decide(&check, &c), Verdict::Undecidable);
        assert_eq!(
            after_check(true, false, &[true, false]),
            Verdict::Deliver { old: false }
        );
        assert_eq!(
            after_check(true, false, &[true, true]),
            Verdict::Deliver { old: true }
        );
        assert_eq!(
            after_check(false, true, &[true]),
            Verdict::Deliver { old: true }
        );
        assert_eq!(after_check(false, false, &[false]), Verdict::Skip);
    }
}
