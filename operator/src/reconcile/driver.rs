//! The apply side of the reconcile: [`apply`] runs the steps in order, and
//! [`fail`] is the one place where a step that stopped turns into what the
//! user sees (conditions, an Event) and when the resource is looked at again.
//! Each step lives in its own module and returns its own error, which says
//! under which [`Reason`] it is told.

use std::sync::Arc;
use std::time::Duration;

use kube::runtime::controller::Action;
use kube::ResourceExt;

use super::apply::StatusWrite;
use super::conditions::{self, Wanted, AVAILABLE, DATABASE_READY, PUBLICATION_READY, SLOTS_READY};
use super::reason::Reason;
use super::status::{old_condition, Report};
use super::validate::{self, validate};
use super::{build, connect, publication, rollout, secrets, slots, Context, Error, RESYNC};
use crate::crd::RealtimeServer;

/// How soon to look again while slots wait for their pods to go.
const SLOT_WAIT: Duration = Duration::from_secs(10);
/// How soon to look again after a reconcile that worked from a stale copy
/// (its status write was refused): the newer version's watch event usually
/// triggers one sooner.
const STALE_RETRY: Duration = Duration::from_secs(1);
/// How soon to look again while `wal_level` is not `logical`.
const WAL_LEVEL_WAIT: Duration = Duration::from_secs(60);

/// Why a step stopped the reconcile.
#[derive(Debug)]
pub enum Failure {
    /// Told in status under `reason`. With an `error` behind it, the
    /// reconcile is retried with backoff; without, it waits for the user.
    Told {
        reason: Reason,
        message: String,
        error: Option<Error>,
    },
    /// The API server or a query failed before the step could tell anything:
    /// status stays as it was, and the reconcile is retried with backoff.
    Untold(Error),
}

impl Failure {
    /// A failure the user must resolve.
    pub fn told(reason: Reason, message: impl Into<String>) -> Failure {
        Failure::Told {
            reason,
            message: message.into(),
            error: None,
        }
    }

    /// The same, retried with backoff because of `error`.
    pub fn retried(self, error: Error) -> Failure {
        match self {
            Failure::Told {
                reason, message, ..
            } => Failure::Told {
                reason,
                message,
                error: Some(error),
            },
            Failure::Untold(_) => Failure::Untold(error),
        }
    }
}

impl From<Error> for Failure {
    fn from(e: Error) -> Failure {
        Failure::Untold(e)
    }
}

/// Reconciles `obj` towards its spec and writes what it found to its status.
pub async fn apply(obj: Arc<RealtimeServer>, ctx: Arc<Context>) -> Result<Action, Error> {
    let mut report = Report::new(&obj);
    match steps(&obj, &ctx, &mut report).await {
        Ok(next) => match report.write(&ctx, &obj).await? {
            StatusWrite::Stale => Ok(Action::requeue(STALE_RETRY)),
            _ => Ok(next),
        },
        Err(failure) => fail(&obj, &ctx, report, failure).await,
    }
}

/// The steps, in order; the first that fails stops the others.
async fn steps(
    obj: &RealtimeServer,
    ctx: &Context,
    report: &mut Report,
) -> Result<Action, Failure> {
    let ns = obj.namespace().unwrap_or_else(|| "default".into());
    let v = validate(
        &ns,
        &obj.name_any(),
        &obj.spec,
        ctx.settings.default_image.as_deref(),
    )?;
    validate::unchanged_identity(obj.status.as_ref(), &obj.spec, &v)?;
    report.status.publication = Some(v.publication.clone());

    let secrets = secrets::read(&ctx.client, &ns, &obj.spec).await?;

    let mut db = connect::connect(obj, ctx, secrets.db_password.clone()).await?;
    report.set(db.condition());
    report.status.database = Some(validate::database_identity(&obj.spec));

    let published = publication::ensure(obj, ctx, &mut db.client, &v).await?;
    report.status.publication_owned = true;
    report.set(published.condition());

    let slots = slots::ensure(obj, ctx, &db.client, &db.target, &v).await?;
    report.slots(&slots);

    let children = build::children(obj, &v, &secrets.values);

    let ready = rollout::rollout(obj, ctx, &children).await?.min(v.replicas);
    report.ready(ready, v.replicas);
    ctx.metrics
        .replicas(&ns, &obj.name_any(), ready, v.replicas);
    report.set(rollout::available(&obj.name_any(), ready, v.replicas));

    Ok(Action::requeue(if slots.waiting.is_empty() {
        RESYNC
    } else {
        SLOT_WAIT
    }))
}

/// What a failed step means for the user and for the retry: its reason's
/// condition turns False with the message (every condition for an invalid
/// spec) and the conditions after it are Blocked; an invalid spec gets a
/// Warning Event (once per message); then the status is written. A failure
/// with an error behind it returns the error (retried with backoff by
/// `error_policy`, counted in metrics); one that waits for the user is looked
/// at again when the resource or its Secrets change, and after a delay.
async fn fail(
    obj: &RealtimeServer,
    ctx: &Context,
    mut report: Report,
    failure: Failure,
) -> Result<Action, Error> {
    let (reason, message, error) = match failure {
        Failure::Told {
            reason,
            message,
            error,
        } => (reason, message, error),
        Failure::Untold(e) => return Err(e),
    };
    use Reason::*;
    // The condition that failed, and what the later ones wait for.
    let (failed, blocker): (&[&'static str], Option<&str>) = match reason {
        InvalidSpec => (&conditions::ALL, None),
        SecretNotFound => (&[DATABASE_READY], Some("the Secret")),
        AuthenticationFailed | DatabaseNotFound | ConnectionFailed => {
            (&[DATABASE_READY], Some("the database connection"))
        }
        WalLevelNotLogical => (&[DATABASE_READY], Some("wal_level")),
        PublicationError
        | PublicationConflict
        | PublicationNotOwned
        | ReplicaIdentityError
        | TableNotFound
        | AuthorizationSetupError => (&[PUBLICATION_READY], Some("the publication")),
        SlotError => (&[SLOTS_READY], Some("the slots")),
        RolloutFailed => (&[AVAILABLE], None),
        // Not reasons of a failure: nothing more is checked.
        Blocked
        | Connected
        | Ready
        | WaitingForPods
        | ScaledToZero
        | AllReplicasReady
        | ReplicasNotReady
        | UnlimitedWalRetention
        | PublicationCreated
        | PublicationAdopted
        | PublicationUpdated
        | ReplicaIdentitySet
        | SlotCreated
        | SlotLost
        | SlotDropped
        | PodDisruptionBudgetSkipped
        | CleanupSkipped
        | SlotsLeftBehind
        | PublicationDropped => (&[], Some("an earlier step")),
    };
    if reason.event().is_some() {
        let told = failed
            .first()
            .and_then(|t| old_condition(obj, t))
            .is_some_and(|c| c.reason == reason.as_str() && c.message == message);
        if !told {
            ctx.event(obj, reason, message.clone()).await;
        }
    }
    match reason {
        PublicationConflict | PublicationNotOwned => report.status.publication_owned = false,
        // The publication was made this resource's before a table was missing.
        TableNotFound => report.status.publication_owned = true,
        _ => {}
    }
    for t in failed {
        report.set(Wanted::not(t, reason, message.clone()));
    }
    if let Some(blocker) = blocker {
        report.blocked(blocker);
    }
    if report.write(ctx, obj).await? == StatusWrite::Stale {
        // What failed is found again, and told, from the newer version.
        return Ok(Action::requeue(STALE_RETRY));
    }
    match (error, reason) {
        (Some(e), _) => Err(e),
        (None, InvalidSpec) => Ok(Action::await_change()),
        (None, WalLevelNotLogical) => Ok(Action::requeue(WAL_LEVEL_WAIT)),
        (None, _) => Ok(Action::requeue(RESYNC)),
    }
}
