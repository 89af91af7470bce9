//! The apply side of the reconcile: runs the pipeline steps in order and turns
//! what each found into the status. A step that cannot go on (invalid spec,
//! missing Secret, database not ready) still writes status saying why.

use std::sync::Arc;
use std::time::Duration;

use k8s_openapi::api::core::v1::Pod;
use k8s_openapi::api::policy::v1::PodDisruptionBudget;
use kube::api::{DeleteParams, ListParams};
use kube::runtime::controller::Action;
use kube::runtime::events::EventType;
use kube::{Api, ResourceExt};
use tokio_postgres::error::SqlState;

use super::conditions::{self, Wanted, AVAILABLE, DATABASE_READY, PUBLICATION_READY, SLOTS_READY};
use super::database::{self as db, ConnParams};
use super::validate::{validate, PublicationTarget, Validated};
use super::{apply, build, secrets, Context, Error};
use crate::crd::{RealtimeServer, RealtimeServerStatus, SlotStatus};
use crate::names;

/// How soon to look again while slots wait for their pods to go.
const SLOT_WAIT: Duration = Duration::from_secs(10);
/// How soon to look again while `wal_level` is not `logical`.
const WAL_LEVEL_WAIT: Duration = Duration::from_secs(60);

/// The status being assembled.
struct Report {
    wanted: Vec<Wanted>,
    status: RealtimeServerStatus,
}

impl Report {
    fn new(obj: &RealtimeServer) -> Report {
        let old = obj.status.clone().unwrap_or_default();
        Report {
            wanted: Vec::new(),
            status: RealtimeServerStatus {
                observed_generation: obj.metadata.generation,
                replicas: obj.spec.replicas,
                ready_replicas: old.ready_replicas,
                replicas_summary: Some(format!("{}/{}", old.ready_replicas, obj.spec.replicas)),
                endpoint: Some(build::endpoint(obj)),
                publication: old.publication.clone(),
                publication_owned: old.publication_owned,
                lag: old.lag.clone(),
                slots: old.slots.clone(),
                conditions: Vec::new(),
            },
        }
    }

    /// Marks every condition not yet set as False, blocked by `blocker`.
    fn blocked(&mut self, blocker: &str) {
        for t in [DATABASE_READY, PUBLICATION_READY, SLOTS_READY, AVAILABLE] {
            if !self.wanted.iter().any(|w| w.type_ == t) {
                self.wanted.push(Wanted::not(
                    t,
                    "Blocked",
                    format!("not checked until {blocker} is resolved"),
                ));
            }
        }
    }

    async fn write(mut self, ctx: &Context, obj: &RealtimeServer) -> Result<(), Error> {
        let old = obj.status.clone().unwrap_or_default();
        let now = k8s_openapi::jiff::Timestamp::now().to_string();
        self.status.conditions =
            conditions::merge(&old.conditions, &self.wanted, obj.metadata.generation, &now);
        apply::status(&ctx.client, obj, self.status).await
    }
}

fn old_condition<'a>(obj: &'a RealtimeServer, t: &str) -> Option<&'a crate::crd::Condition> {
    obj.status
        .as_ref()
        .and_then(|s| s.conditions.iter().find(|c| c.type_ == t))
}

/// Human-readable bytes.
pub fn human_bytes(b: i64) -> String {
    const MB: i64 = 1024 * 1024;
    if b >= 1024 * MB {
        format!("{:.1}GiB", b as f64 / (1024 * MB) as f64)
    } else if b >= MB {
        format!("{:.1}MiB", b as f64 / MB as f64)
    } else if b >= 1024 {
        format!("{}KiB", b / 1024)
    } else {
        format!("{b}B")
    }
}

/// The reason for a failed connection, from its SQLSTATE.
fn connect_reason(e: &tokio_postgres::Error) -> &'static str {
    match e.code() {
        Some(c) if *c == SqlState::INVALID_PASSWORD => "AuthenticationFailed",
        Some(c) if *c == SqlState::INVALID_AUTHORIZATION_SPECIFICATION => "AuthenticationFailed",
        Some(c) if *c == SqlState::INVALID_CATALOG_NAME => "DatabaseNotFound",
        _ => "ConnectionFailed",
    }
}

/// The text of a database error, with PostgreSQL's message when there is one.
pub fn db_message(e: &tokio_postgres::Error) -> String {
    match e.as_db_error() {
        Some(d) => d.message().to_string(),
        None => {
            let mut s = e.to_string();
            let mut src = std::error::Error::source(e);
            while let Some(inner) = src {
                s.push_str(": ");
                s.push_str(&inner.to_string());
                src = inner.source();
            }
            s
        }
    }
}

pub async fn apply(obj: Arc<RealtimeServer>, ctx: Arc<Context>) -> Result<Action, Error> {
    let ns = obj.namespace().unwrap_or_else(|| "default".into());
    let name = obj.name_any();
    let mut report = Report::new(&obj);

    // Validate (pure). An invalid spec waits for a change: no retry loop.
    let v = match validate(&ns, &name, &obj.spec, ctx.settings.default_image.as_deref()) {
        Ok(v) => v,
        Err(errors) => {
            let message = format!("invalid spec: {}", errors.join("; "));
            let told = old_condition(&obj, DATABASE_READY)
                .is_some_and(|c| c.reason == "InvalidSpec" && c.message == message);
            if !told {
                ctx.event(
                    &obj,
                    EventType::Warning,
                    "InvalidSpec",
                    "Validate",
                    message.clone(),
                )
                .await;
            }
            for t in [DATABASE_READY, PUBLICATION_READY, SLOTS_READY, AVAILABLE] {
                report
                    .wanted
                    .push(Wanted::not(t, "InvalidSpec", message.clone()));
            }
            report.write(&ctx, &obj).await?;
            return Ok(Action::await_change());
        }
    };
    report.status.publication = Some(v.publication.clone());

    // Read the Secrets (watched: a change triggers a reconcile).
    let resolved = match secrets::read(&ctx.client, &ns, &obj.spec).await {
        Ok(r) => r,
        Err(secrets::Problem::Api(e)) => return Err(e.into()),
        Err(secrets::Problem::Missing(message)) => {
            report
                .wanted
                .push(Wanted::not(DATABASE_READY, "SecretNotFound", message));
            report.blocked("the Secret");
            report.write(&ctx, &obj).await?;
            return Ok(Action::requeue(super::RESYNC));
        }
    };

    // The database.
    let params = ConnParams::from_spec(&obj.spec.database, resolved.db_password.clone());
    let where_ = format!(
        "{}@{}:{}/{}",
        params.user, params.host, params.port, params.dbname
    );
    let mut client = match db::connect(&params).await {
        Ok(c) => c,
        Err(e) => {
            let reason = connect_reason(&e);
            let pw = &obj.spec.database.password_secret_ref;
            let hint = match reason {
                "AuthenticationFailed" => format!(
                    "check the password in Secret {ns}/{} key {:?}",
                    pw.name, pw.key
                ),
                "DatabaseNotFound" => "check spec.database.name".to_string(),
                _ => "check spec.database.host and port, and that the database accepts \
                      connections from the operator"
                    .to_string(),
            };
            let message = format!("cannot connect to {where_}: {}; {hint}", db_message(&e));
            report
                .wanted
                .push(Wanted::not(DATABASE_READY, reason, message));
            report.blocked("the database connection");
            report.write(&ctx, &obj).await?;
            return Err(Error::db(format!("connecting to {where_}"))(e));
        }
    };
    let wal_level = db::wal_level(&client)
        .await
        .map_err(Error::db("SHOW wal_level"))?;
    if wal_level != "logical" {
        report.wanted.push(Wanted::not(
            DATABASE_READY,
            "WalLevelNotLogical",
            format!(
                "{where_} has wal_level={wal_level}; logical replication needs wal_level=logical: \
                 run ALTER SYSTEM SET wal_level = logical; as a superuser, then restart PostgreSQL"
            ),
        ));
        report.blocked("wal_level");
        report.write(&ctx, &obj).await?;
        return Ok(Action::requeue(WAL_LEVEL_WAIT));
    }
    let was_ready = old_condition(&obj, DATABASE_READY).is_some_and(|c| c.status == "True");
    if !was_ready {
        let keep = db::max_slot_wal_keep_size(&client)
            .await
            .map_err(Error::db("reading max_slot_wal_keep_size"))?;
        if keep.is_none() {
            ctx.event(
                &obj,
                EventType::Warning,
                "UnlimitedWalRetention",
                "CheckDatabase",
                format!(
                    "max_slot_wal_keep_size is unlimited on {where_}: a replication slot whose \
                     server is down retains WAL until the disk fills; set it (e.g. ALTER SYSTEM \
                     SET max_slot_wal_keep_size = '10GB') and reload"
                ),
            )
            .await;
        }
    }
    report.wanted.push(Wanted::ok(
        DATABASE_READY,
        "Connected",
        format!("connected to {where_}; wal_level=logical"),
    ));

    // The publication and replica identity.
    match publication(&obj, &ctx, &mut client, &v).await {
        Ok(message) => {
            report.status.publication_owned = true;
            report
                .wanted
                .push(Wanted::ok(PUBLICATION_READY, "Ready", message));
        }
        Err(Step::Stop(reason, message, owned)) => {
            report.status.publication_owned = owned;
            report
                .wanted
                .push(Wanted::not(PUBLICATION_READY, reason, message));
            report.blocked("the publication");
            report.write(&ctx, &obj).await?;
            return Ok(Action::requeue(super::RESYNC));
        }
        Err(Step::Failed(reason, message, e)) => {
            report
                .wanted
                .push(Wanted::not(PUBLICATION_READY, reason, message));
            report.blocked("the publication");
            report.write(&ctx, &obj).await?;
            return Err(e);
        }
    }

    // The slots: one per replica; those of replicas that are gone are dropped.
    let waiting = match slots(&obj, &ctx, &client, &v).await {
        Ok((slots, waiting)) => {
            let lag = slots.iter().filter_map(|s| s.retained_wal_bytes).max();
            report.status.lag = lag.map(human_bytes);
            report.status.slots = slots;
            if waiting.is_empty() {
                let names: Vec<&str> = report
                    .status
                    .slots
                    .iter()
                    .map(|s| s.name.as_str())
                    .collect();
                report.wanted.push(Wanted::ok(
                    SLOTS_READY,
                    "Ready",
                    format!(
                        "{} slot(s), one per replica: {}",
                        names.len(),
                        names.join(", ")
                    ),
                ));
            } else {
                report.wanted.push(Wanted::not(
                    SLOTS_READY,
                    "WaitingForPods",
                    format!(
                        "slot(s) {} of removed replicas are dropped once their pods are gone",
                        waiting.join(", ")
                    ),
                ));
            }
            waiting
        }
        Err(e) => {
            report.wanted.push(Wanted::not(
                SLOTS_READY,
                "SlotError",
                format!("managing replication slots on {where_} failed: {e}"),
            ));
            report.blocked("the slots");
            report.write(&ctx, &obj).await?;
            return Err(e);
        }
    };

    // Children.
    let env = build::server_env(&obj, &v);
    let hash = build::config_hash(&env, &resolved.values);
    let selector = format!("{}={}", names::INSTANCE_LABEL, name);
    let rollout = async {
        apply::apply(&ctx.client, &build::statefulset(&obj, &v, &hash)).await?;
        apply::apply(&ctx.client, &build::service(&obj)).await?;
        pdb(&obj, &ctx, &v).await?;
        // Pods: the API server's view of readiness (the kubelet reports it).
        let pods: Api<Pod> = Api::namespaced(ctx.client.clone(), &ns);
        let ready = pods
            .list(&ListParams::default().labels(&selector))
            .await?
            .items
            .iter()
            .filter(|p| p.metadata.deletion_timestamp.is_none() && pod_ready(p))
            .count() as i32;
        Ok::<i32, Error>(ready)
    };
    let ready = match rollout.await {
        Ok(ready) => ready,
        Err(e) => {
            // The database work is done: the status still records it.
            report.wanted.push(Wanted::not(
                AVAILABLE,
                "RolloutFailed",
                format!("applying the StatefulSet, Service or PodDisruptionBudget failed: {e}"),
            ));
            report.write(&ctx, &obj).await?;
            return Err(e);
        }
    };
    let ready = ready.min(v.replicas);
    report.status.ready_replicas = ready;
    report.status.replicas_summary = Some(format!("{ready}/{}", v.replicas));
    if v.replicas == 0 {
        report
            .wanted
            .push(Wanted::not(AVAILABLE, "ScaledToZero", "spec.replicas is 0"));
    } else if ready == v.replicas {
        report.wanted.push(Wanted::ok(
            AVAILABLE,
            "AllReplicasReady",
            format!("{ready}/{} pods ready", v.replicas),
        ));
    } else {
        report.wanted.push(Wanted::not(
            AVAILABLE,
            "ReplicasNotReady",
            format!(
                "{ready}/{} pods ready; see kubectl describe pods -l {selector}",
                v.replicas
            ),
        ));
    }
    report.write(&ctx, &obj).await?;
    Ok(Action::requeue(if waiting.is_empty() {
        super::RESYNC
    } else {
        SLOT_WAIT
    }))
}

fn pod_ready(p: &Pod) -> bool {
    p.status
        .as_ref()
        .and_then(|s| s.conditions.as_ref())
        .is_some_and(|cs| cs.iter().any(|c| c.type_ == "Ready" && c.status == "True"))
}

/// How a step that could not finish ends.
enum Step {
    /// A state the user must change; retried slowly. (reason, message, owned)
    Stop(&'static str, String, bool),
    /// A failure; retried with backoff. (reason, message, error)
    Failed(&'static str, String, Error),
}

fn failed(reason: &'static str, what: String) -> impl FnOnce(tokio_postgres::Error) -> Step {
    move |e| {
        Step::Failed(
            reason,
            format!("{what}: {}", db_message(&e)),
            Error::db(what)(e),
        )
    }
}

/// Creates, adopts or updates the publication, and sets replica identities.
async fn publication(
    obj: &RealtimeServer,
    ctx: &Context,
    client: &mut tokio_postgres::Client,
    v: &Validated,
) -> Result<String, Step> {
    let ns = obj.namespace().unwrap_or_default();
    let mark = names::ownership_mark(&ns, &obj.name_any());
    let name = &v.publication;
    let existing = db::publication(client, name).await.map_err(failed(
        "PublicationError",
        format!("reading publication {name}"),
    ))?;
    match existing {
        None => {
            db::create_publication(client, name, &v.target, &mark)
                .await
                .map_err(failed(
                    "PublicationError",
                    format!("creating publication {name}"),
                ))?;
            ctx.event(
                obj,
                EventType::Normal,
                "PublicationCreated",
                "CreatePublication",
                format!("created publication {name} ({})", describe(&v.target)),
            )
            .await;
        }
        Some(p) => {
            match p.comment.as_deref() {
                Some(c) if c == mark => {}
                Some(c) if c.starts_with("managed by realtime-operator") => {
                    return Err(Step::Stop(
                        "PublicationConflict",
                        format!(
                            "publication {name} is managed by another resource ({c}); choose \
                             another spec.publication.name"
                        ),
                        false,
                    ));
                }
                _ if obj.spec.publication.adopt => {
                    db::mark_publication(client, name, &mark)
                        .await
                        .map_err(failed(
                            "PublicationError",
                            format!("adopting publication {name}"),
                        ))?;
                    ctx.event(
                        obj,
                        EventType::Normal,
                        "PublicationAdopted",
                        "AdoptPublication",
                        format!("adopted the existing publication {name}"),
                    )
                    .await;
                }
                _ => {
                    return Err(Step::Stop(
                        "PublicationNotOwned",
                        format!(
                            "publication {name} already exists and was not created by this \
                             resource; set spec.publication.adopt: true to let the operator \
                             manage it, or choose another spec.publication.name"
                        ),
                        false,
                    ));
                }
            }
            let current = p.target();
            if current != v.target {
                db::set_publication_target(client, name, &current, &v.target, &mark)
                    .await
                    .map_err(failed(
                        "PublicationError",
                        format!("updating publication {name}"),
                    ))?;
                ctx.event(
                    obj,
                    EventType::Normal,
                    "PublicationUpdated",
                    "UpdatePublication",
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
        let ident = db::replica_identity(client, t).await.map_err(failed(
            "ReplicaIdentityError",
            format!("reading replica identity of {t}"),
        ))?;
        match ident {
            None => {
                return Err(Step::Stop(
                    "TableNotFound",
                    format!("table {t} of spec.publication.replicaIdentityFull does not exist"),
                    true,
                ))
            }
            Some('f') => {}
            Some(_) => {
                db::set_replica_identity_full(client, t)
                    .await
                    .map_err(failed(
                        "ReplicaIdentityError",
                        format!("setting REPLICA IDENTITY FULL on {t}"),
                    ))?;
                ctx.event(
                    obj,
                    EventType::Normal,
                    "ReplicaIdentitySet",
                    "AlterTable",
                    format!("set REPLICA IDENTITY FULL on {t}"),
                )
                .await;
            }
        }
    }
    Ok(format!(
        "publication {name} publishes {}",
        describe(&v.target)
    ))
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

/// Creates the missing slots, drops those of replicas that are gone; returns
/// this resource's slots and the ones still waiting for their pod to go.
async fn slots(
    obj: &RealtimeServer,
    ctx: &Context,
    client: &tokio_postgres::Client,
    v: &Validated,
) -> Result<(Vec<SlotStatus>, Vec<String>), Error> {
    let ns = obj.namespace().unwrap_or_default();
    let pods: Api<Pod> = Api::namespaced(ctx.client.clone(), &ns);
    let existing = db::slots(client)
        .await
        .map_err(Error::db("listing slots"))?;
    let mine: Vec<_> = existing
        .iter()
        .filter_map(|s| names::slot_ordinal(&v.slot_prefix, &s.name).map(|o| (o, s)))
        .collect();
    let mut waiting = Vec::new();
    for ordinal in 0..v.replicas as u32 {
        if !mine.iter().any(|(o, _)| *o == ordinal) {
            let slot = names::slot_name(&v.slot_prefix, ordinal);
            db::create_slot(client, &slot)
                .await
                .map_err(Error::db(format!("creating slot {slot}")))?;
            ctx.event(
                obj,
                EventType::Normal,
                "SlotCreated",
                "CreateSlot",
                format!("created replication slot {slot} for replica {ordinal}"),
            )
            .await;
        }
    }
    for (ordinal, slot) in &mine {
        if *ordinal < v.replicas as u32 {
            continue;
        }
        let pod = format!("{}-{ordinal}", obj.name_any());
        if slot.active || pods.get_opt(&pod).await?.is_some() {
            waiting.push(slot.name.clone());
            continue;
        }
        match db::drop_slot(client, &slot.name).await {
            Ok(()) => {
                ctx.event(
                    obj,
                    EventType::Normal,
                    "SlotDropped",
                    "DropSlot",
                    format!(
                        "dropped replication slot {} of removed replica {ordinal}",
                        slot.name
                    ),
                )
                .await
            }
            // Became active in between: try again later.
            Err(e) if e.code() == Some(&SqlState::OBJECT_IN_USE) => waiting.push(slot.name.clone()),
            Err(e) => return Err(Error::db(format!("dropping slot {}", slot.name))(e)),
        }
    }
    let now = db::slots(client)
        .await
        .map_err(Error::db("listing slots"))?;
    let status = now
        .into_iter()
        .filter(|s| names::slot_ordinal(&v.slot_prefix, &s.name).is_some())
        .map(|s| SlotStatus {
            name: s.name,
            active: s.active,
            retained_wal_bytes: s.retained_wal_bytes,
            confirmed_flush_lsn: s.confirmed_flush_lsn,
        })
        .collect();
    Ok((status, waiting))
}

/// Applies the PodDisruptionBudget when it is wanted and the cluster serves
/// `policy/v1`; otherwise says once, in an Event, why there is none.
async fn pdb(obj: &RealtimeServer, ctx: &Context, v: &Validated) -> Result<(), Error> {
    let served = ctx.serves_pdb_v1().await;
    if v.replicas > 1 {
        if served {
            apply::apply(&ctx.client, &build::pod_disruption_budget(obj)).await?;
        } else if ctx.first_pdb_skip(obj) {
            ctx.event(
                obj,
                EventType::Normal,
                "PodDisruptionBudgetSkipped",
                "ApplyPodDisruptionBudget",
                "no PodDisruptionBudget: this cluster does not serve policy/v1 \
                 (Kubernetes 1.21 or later does)"
                    .into(),
            )
            .await;
        }
    } else if served {
        let api: Api<PodDisruptionBudget> =
            Api::namespaced(ctx.client.clone(), &obj.namespace().unwrap_or_default());
        match api.delete(&obj.name_any(), &DeleteParams::default()).await {
            Ok(_) => {}
            Err(kube::Error::Api(s)) if s.code == 404 => {}
            Err(e) => return Err(e.into()),
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bytes_read_like_a_person_would_write_them() {
        assert_eq!(human_bytes(512), "512B");
        assert_eq!(human_bytes(3 * 1024 * 1024 / 2), "1.5MiB");
    }
}
