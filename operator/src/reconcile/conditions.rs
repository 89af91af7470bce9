//! Status conditions: building them so that `lastTransitionTime` only moves when
//! a condition's status changes (a reconcile that finds nothing new writes
//! nothing).

use super::reason::Reason;
use crate::crd::Condition;

pub const DATABASE_READY: &str = "DatabaseReady";
pub const PUBLICATION_READY: &str = "PublicationReady";
pub const SLOTS_READY: &str = "SlotsReady";
pub const AVAILABLE: &str = "Available";
/// Every condition, in the order of the steps that set them.
pub const ALL: [&str; 4] = [DATABASE_READY, PUBLICATION_READY, SLOTS_READY, AVAILABLE];

/// A wanted condition, before its transition time is known.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Wanted {
    pub type_: &'static str,
    pub status: bool,
    pub reason: Reason,
    pub message: String,
}

impl Wanted {
    pub fn ok(type_: &'static str, reason: Reason, message: impl Into<String>) -> Wanted {
        Wanted {
            type_,
            status: true,
            reason,
            message: message.into(),
        }
    }
    pub fn not(type_: &'static str, reason: Reason, message: impl Into<String>) -> Wanted {
        Wanted {
            type_,
            status: false,
            reason,
            message: message.into(),
        }
    }
}

/// The conditions to write: `wanted`, keeping each transition time from `old`
/// when the status did not change; `now` (RFC 3339) otherwise.
pub fn merge(
    old: &[Condition],
    wanted: &[Wanted],
    generation: Option<i64>,
    now: &str,
) -> Vec<Condition> {
    wanted
        .iter()
        .map(|w| {
            let status = if w.status { "True" } else { "False" }.to_string();
            let since = old
                .iter()
                .find(|c| c.type_ == w.type_ && c.status == status)
                .map(|c| c.last_transition_time.clone())
                .unwrap_or_else(|| now.to_string());
            Condition {
                type_: w.type_.into(),
                status,
                reason: w.reason.as_str().into(),
                message: w.message.clone(),
                last_transition_time: since,
                observed_generation: generation,
            }
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn transition_time_moves_only_with_the_status() {
        let w = [Wanted::ok(AVAILABLE, Reason::AllReplicasReady, "1/1")];
        let first = merge(&[], &w, Some(1), "t1");
        let again = merge(
            &first,
            &[Wanted::ok(AVAILABLE, Reason::AllReplicasReady, "2/2")],
            Some(2),
            "t2",
        );
        assert_eq!(again[0].last_transition_time, "t1");
        let flipped = merge(
            &again,
            &[Wanted::not(AVAILABLE, Reason::ReplicasNotReady, "0/2")],
            Some(2),
            "t3",
        );
        assert_eq!(flipped[0].last_transition_time, "t3");
    }
}
