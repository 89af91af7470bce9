//! Step 4, publication: creates, adopts or updates the resource's
//! publication, marked as its own with a comment (never taking over one that
//! another resource manages, nor, without `publication.adopt`, one that no
//! resource created), sets `REPLICA IDENTITY FULL` where asked, and applies
//! the server's authorization setup when `spec.auth.setupAuthorization`
//! asks. Sets `PublicationReady`.

use kube::ResourceExt;

use super::conditions::{Wanted, PUBLICATION_READY};
use super::database::{self as db, db_message};
use super::driver::Failure;
use super::reason::Reason;
use super::validate::{PublicationTarget, Validated};
use super::{Context, Error};
use crate::crd::RealtimeServer;
use crate::names;

/// The publication publishes what the spec says.
pub struct Published {
    name: String,
    target: PublicationTarget,
}

impl Published {
    /// `PublicationReady` True.
    pub fn condition(&self) -> Wanted {
        Wanted::ok(
            PUBLICATION_READY,
            Reason::Ready,
            format!(
                "publication {} publishes {}",
                self.name,
                describe(&self.target)
            ),
        )
    }
}

/// Why the publication is not as the spec says.
#[derive(Debug, thiserror::Error)]
pub enum PublicationError {
    #[error(
        "publication {name} is managed by another resource ({mark}); choose another \
         spec.publication.name"
    )]
    Conflict { name: String, mark: String },
    #[error(
        "publication {name} already exists and was not created by this resource; set \
         spec.publication.adopt: true to let the operator manage it, or choose another \
         spec.publication.name"
    )]
    NotOwned { name: String },
    /// The publication is this resource's; a table to alter is missing.
    #[error("table {table} of spec.publication.replicaIdentityFull does not exist")]
    TableNotFound { table: String },
    /// A statement failed: `what` says which.
    #[error("{what}: {}", db_message(.source))]
    Sql {
        reason: Reason,
        what: String,
        #[source]
        source: tokio_postgres::Error,
    },
}

/// A publication someone else owns, or a table to create, waits for the user
/// (looked at again at the resync); a failed statement is retried with backoff.
impl From<PublicationError> for Failure {
    fn from(e: PublicationError) -> Failure {
        let message = e.to_string();
        match e {
            PublicationError::Conflict { .. } => {
                Failure::told(Reason::PublicationConflict, message)
            }
            PublicationError::NotOwned { .. } => {
                Failure::told(Reason::PublicationNotOwned, message)
            }
            PublicationError::TableNotFound { .. } => Failure::told(Reason::TableNotFound, message),
            PublicationError::Sql {
                reason,
                what,
                source,
            } => Failure::told(reason, message).retried(Error::db(what)(source)),
        }
    }
}

fn sql(reason: Reason, what: String) -> impl FnOnce(tokio_postgres::Error) -> PublicationError {
    move |source| PublicationError::Sql {
        reason,
        what,
        source,
    }
}

/// Creates, adopts or updates the publication, and sets replica identities.
pub async fn ensure(
    obj: &RealtimeServer,
    ctx: &Context,
    client: &mut tokio_postgres::Client,
    v: &Validated,
) -> Result<Published, PublicationError> {
    let ns = obj.namespace().unwrap_or_default();
    let mark = names::ownership_mark(&ns, &obj.name_any());
    let name = &v.publication;
    let failed = |what: &str| {
        sql(
            Reason::PublicationError,
            format!("{what} publication {name}"),
        )
    };
    let existing = db::publication(client, name)
        .await
        .map_err(failed("reading"))?;
    match existing {
        None => {
            db::create_publication(client, name, &v.target, &mark)
                .await
                .map_err(failed("creating"))?;
            ctx.event(
                obj,
                Reason::PublicationCreated,
                format!("created publication {name} ({})", describe(&v.target)),
            )
            .await;
        }
        Some(p) => {
            match p.comment.as_deref() {
                Some(c) if c == mark => {}
                Some(c) if c.starts_with("managed by realtime-operator") => {
                    return Err(PublicationError::Conflict {
                        name: name.clone(),
                        mark: c.to_string(),
                    });
                }
                _ if obj.spec.publication.adopt => {
                    db::mark_publication(client, name, &mark)
                        .await
                        .map_err(failed("adopting"))?;
                    ctx.event(
                        obj,
                        Reason::PublicationAdopted,
                        format!("adopted the existing publication {name}"),
                    )
                    .await;
                }
                _ => return Err(PublicationError::NotOwned { name: name.clone() }),
            }
            let current = p.target();
            if current != v.target {
                db::set_publication_target(client, name, &current, &v.target, &mark)
                    .await
                    .map_err(failed("updating"))?;
                ctx.event(
                    obj,
                    Reason::PublicationUpdated,
                    format!(
                        "publication {name} now publishes {} (was {})",
                        describe(&v.target),
                        describe(&current)
                    ),
                )
                .await;
            }
        }
    }
    for t in &v.replica_identity_full {
        let identity = db::replica_identity(client, t).await.map_err(sql(
            Reason::ReplicaIdentityError,
            format!("reading replica identity of {t}"),
        ))?;
        match identity {
            None => {
                return Err(PublicationError::TableNotFound {
                    table: t.to_string(),
                })
            }
            Some('f') => {}
            Some(_) => {
                db::set_replica_identity_full(client, t).await.map_err(sql(
                    Reason::ReplicaIdentityError,
                    format!("setting REPLICA IDENTITY FULL on {t}"),
                ))?;
                ctx.event(
                    obj,
                    Reason::ReplicaIdentitySet,
                    format!("set REPLICA IDENTITY FULL on {t}"),
                )
                .await;
            }
        }
    }
    if obj.spec.auth.setup_authorization {
        db::setup_authorization(client, &obj.spec.database.user)
            .await
            .map_err(sql(
                Reason::AuthorizationSetupError,
                "applying the authorization setup (spec.auth.setupAuthorization)".into(),
            ))?;
    }
    Ok(Published {
        name: name.clone(),
        target: v.target.clone(),
    })
}

fn describe(t: &PublicationTarget) -> String {
    match t {
        PublicationTarget::AllTables => "all tables".into(),
        PublicationTarget::Tables(ts) => ts
            .iter()
            .map(|t| t.to_string())
            .collect::<Vec<_>>()
            .join(", "),
    }
}
