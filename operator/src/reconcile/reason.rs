//! Every reason the operator gives a user: the `reason` of a status condition
//! and of an Event. Code names a reason only through [`Reason`]; an Event's
//! type and action come with its reason. `operator/README.md` ("Reasons")
//! lists each one with where it appears and what it means, and a test keeps
//! that list and this enum equal.

use kube::runtime::events::EventType;

/// Defines [`Reason`] with [`Reason::ALL`] and [`Reason::as_str`] (the
/// variant's name, which is what users see).
macro_rules! reasons {
    ($($(#[$doc:meta])* $name:ident,)*) => {
        /// A reason in a condition or an Event.
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
        pub enum Reason {
            $($(#[$doc])* $name,)*
        }

        impl Reason {
            /// Every reason, in the README's order.
            pub const ALL: &'static [Reason] = &[$(Reason::$name,)*];

            /// The reason as written in status and Events.
            pub fn as_str(self) -> &'static str {
                match self {
                    $(Reason::$name => stringify!($name),)*
                }
            }
        }
    };
}

reasons! {
    /// The spec is invalid: every condition, and a Warning Event.
    InvalidSpec,
    /// A condition not checked because an earlier step stopped.
    Blocked,
    /// `DatabaseReady`: a referenced Secret or key is missing.
    SecretNotFound,
    /// `DatabaseReady`: the database refused the user or the password.
    AuthenticationFailed,
    /// `DatabaseReady`: the database of `spec.database.name` does not exist.
    DatabaseNotFound,
    /// `DatabaseReady`: the database could not be reached.
    ConnectionFailed,
    /// `DatabaseReady`: `wal_level` is not `logical`.
    WalLevelNotLogical,
    /// `DatabaseReady` True.
    Connected,
    /// `PublicationReady` or `SlotsReady` True.
    Ready,
    /// `PublicationReady`: a statement on the publication failed.
    PublicationError,
    /// `PublicationReady`: another resource manages the publication.
    PublicationConflict,
    /// `PublicationReady`: the publication exists and was not created by a resource.
    PublicationNotOwned,
    /// `PublicationReady`: reading or setting a replica identity failed.
    ReplicaIdentityError,
    /// `PublicationReady`: a table of `replicaIdentityFull` does not exist.
    TableNotFound,
    /// `PublicationReady`: applying `spec.auth.setupAuthorization` failed.
    AuthorizationSetupError,
    /// `SlotsReady`: slots of removed replicas wait for their pods to go.
    WaitingForPods,
    /// `SlotsReady`: managing the slots failed.
    SlotError,
    /// `SlotsReady` and a Warning Event: a slot the operator had created
    /// vanished (failover, restore) and was recreated.
    SlotLost,
    /// `Available`: applying the children failed.
    RolloutFailed,
    /// `Available`: `spec.replicas` is 0.
    ScaledToZero,
    /// `Available` True.
    AllReplicasReady,
    /// `Available`: some pods are not ready.
    ReplicasNotReady,
    /// Warning Event: `max_slot_wal_keep_size` is unlimited.
    UnlimitedWalRetention,
    /// Event: the operator created the publication.
    PublicationCreated,
    /// Event: the operator adopted an existing publication.
    PublicationAdopted,
    /// Event: the publication's tables changed.
    PublicationUpdated,
    /// Event: a table was set to `REPLICA IDENTITY FULL`.
    ReplicaIdentitySet,
    /// Event: a replication slot was created.
    SlotCreated,
    /// Event: a replication slot was dropped.
    SlotDropped,
    /// Event: no PodDisruptionBudget, as the cluster does not serve `policy/v1`.
    PodDisruptionBudgetSkipped,
    /// Event: deletion did not wait for a database never reached.
    CleanupSkipped,
    /// Warning Event: deletion gave up on dropping slots.
    SlotsLeftBehind,
    /// Event: the publication was dropped (`reclaimPolicy: Delete`).
    PublicationDropped,
}

impl Reason {
    /// For a reason that is told in an Event: the Event's type and action.
    pub fn event(self) -> Option<(EventType, &'static str)> {
        use EventType::{Normal, Warning};
        use Reason::*;
        Some(match self {
            InvalidSpec => (Warning, "Validate"),
            // A step that failed: told in its condition and in a Warning
            // Event (once per distinct message).
            SecretNotFound => (Warning, "ReadSecret"),
            AuthenticationFailed | DatabaseNotFound | ConnectionFailed => (Warning, "Connect"),
            WalLevelNotLogical => (Warning, "CheckDatabase"),
            PublicationError | PublicationConflict | PublicationNotOwned => {
                (Warning, "ManagePublication")
            }
            ReplicaIdentityError | TableNotFound => (Warning, "AlterTable"),
            AuthorizationSetupError => (Warning, "SetupAuthorization"),
            SlotError => (Warning, "ManageSlots"),
            SlotLost => (Warning, "CreateSlot"),
            RolloutFailed => (Warning, "Apply"),
            UnlimitedWalRetention => (Warning, "CheckDatabase"),
            PublicationCreated => (Normal, "CreatePublication"),
            PublicationAdopted => (Normal, "AdoptPublication"),
            PublicationUpdated => (Normal, "UpdatePublication"),
            ReplicaIdentitySet => (Normal, "AlterTable"),
            SlotCreated => (Normal, "CreateSlot"),
            SlotDropped => (Normal, "DropSlot"),
            PodDisruptionBudgetSkipped => (Normal, "ApplyPodDisruptionBudget"),
            CleanupSkipped => (Normal, "Cleanup"),
            SlotsLeftBehind => (Warning, "Cleanup"),
            PublicationDropped => (Normal, "DropPublication"),
            Blocked | Connected | Ready | WaitingForPods | ScaledToZero | AllReplicasReady
            | ReplicasNotReady => return None,
        })
    }
}

impl std::fmt::Display for Reason {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The rows of the README's "Reasons" table: (reason, where it appears).
    fn readme_rows() -> Vec<(String, String)> {
        let readme = include_str!("../../README.md");
        let section = readme
            .split("\n## Reasons\n")
            .nth(1)
            .expect("operator/README.md has a section ## Reasons");
        let section = section.split("\n## ").next().unwrap_or(section);
        section
            .lines()
            .filter(|l| l.starts_with("| `"))
            .map(|l| {
                let cells: Vec<&str> = l.split('|').map(str::trim).collect();
                (cells[1].trim_matches('`').to_string(), cells[2].to_string())
            })
            .collect()
    }

    #[test]
    fn the_readme_lists_every_reason_and_no_other() {
        let rows = readme_rows();
        let listed: Vec<&str> = rows.iter().map(|(r, _)| r.as_str()).collect();
        let known: Vec<&str> = Reason::ALL.iter().map(|r| r.as_str()).collect();
        let missing: Vec<&&str> = known.iter().filter(|r| !listed.contains(r)).collect();
        let extra: Vec<&&str> = listed.iter().filter(|r| !known.contains(r)).collect();
        assert!(
            missing.is_empty() && extra.is_empty(),
            "operator/README.md's Reasons table: missing {missing:?}, not a reason {extra:?}"
        );
        assert_eq!(listed.len(), known.len(), "a reason is listed twice");
    }

    #[test]
    fn the_readme_says_which_reasons_are_events_and_of_what_type() {
        for (name, place) in readme_rows() {
            let reason = Reason::ALL
                .iter()
                .find(|r| r.as_str() == name)
                .unwrap_or_else(|| panic!("{name} is not a reason"));
            match reason.event() {
                Some((EventType::Warning, _)) => {
                    assert!(place.contains("Warning Event"), "{name}: {place}")
                }
                Some((EventType::Normal, _)) => assert!(
                    place.contains("Event") && !place.contains("Warning"),
                    "{name}: {place}"
                ),
                None => assert!(!place.contains("Event"), "{name}: {place}"),
            }
        }
    }

    #[test]
    fn a_reason_reads_as_its_name() {
        assert_eq!(Reason::SecretNotFound.as_str(), "SecretNotFound");
        assert_eq!(Reason::AllReplicasReady.to_string(), "AllReplicasReady");
    }
}
