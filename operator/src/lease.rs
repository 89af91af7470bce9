//! Leader election on a `coordination.k8s.io/v1` Lease, so that two operator
//! replicas are safe: only the holder runs the controller. Every change to the
//! Lease is a replace with the resourceVersion read, so two candidates never
//! both win; the holder renews every third of the lease duration and steps down
//! ([`Leadership::lost`] completes) before the lease can expire for others. A
//! holder that stops (SIGTERM) releases the lease: the next candidate need not
//! wait for it to expire.

use std::future::Future;
use std::sync::Arc;
use std::time::{Duration, Instant};

use k8s_openapi::api::coordination::v1::{Lease, LeaseSpec};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{MicroTime, ObjectMeta};
use k8s_openapi::jiff::Timestamp;
use kube::api::PostParams;
use kube::{Api, Client};

#[derive(Debug, Clone)]
pub struct LeaseSettings {
    pub namespace: String,
    pub name: String,
    /// This candidate's name (the pod name in a cluster).
    pub identity: String,
    /// How long a lease is valid without renewal.
    pub duration: Duration,
    /// How often a candidate tries to take the lease.
    pub retry: Duration,
}

impl LeaseSettings {
    pub fn new(namespace: &str, identity: &str) -> LeaseSettings {
        LeaseSettings {
            namespace: namespace.into(),
            name: "realtime-operator".into(),
            identity: identity.into(),
            duration: Duration::from_secs(15),
            retry: Duration::from_secs(2),
        }
    }
}

pub struct LeaderElector {
    api: Api<Lease>,
    s: LeaseSettings,
}

fn conflict(e: &kube::Error) -> bool {
    matches!(e, kube::Error::Api(s) if s.code == 409)
}

impl LeaderElector {
    pub fn new(client: Client, s: LeaseSettings) -> LeaderElector {
        LeaderElector {
            api: Api::namespaced(client, &s.namespace),
            s,
        }
    }

    pub fn identity(&self) -> &str {
        &self.s.identity
    }

    /// One attempt to take or renew the lease: true when this candidate holds it.
    pub async fn try_acquire_or_renew(&self) -> Result<bool, kube::Error> {
        let now = MicroTime(Timestamp::now());
        let secs = self.s.duration.as_secs().max(1) as i32;
        let Some(mut lease) = self.api.get_opt(&self.s.name).await? else {
            let lease = Lease {
                metadata: ObjectMeta {
                    name: Some(self.s.name.clone()),
                    ..Default::default()
                },
                spec: Some(LeaseSpec {
                    holder_identity: Some(self.s.identity.clone()),
                    lease_duration_seconds: Some(secs),
                    acquire_time: Some(now.clone()),
                    renew_time: Some(now),
                    lease_transitions: Some(0),
                    ..Default::default()
                }),
            };
            return match self.api.create(&PostParams::default(), &lease).await {
                Ok(_) => Ok(true),
                Err(e) if conflict(&e) => Ok(false),
                Err(e) => Err(e),
            };
        };
        let mut spec = lease.spec.clone().unwrap_or_default();
        let mine = spec.holder_identity.as_deref() == Some(self.s.identity.as_str());
        if !mine {
            let valid_for =
                Duration::from_secs(spec.lease_duration_seconds.unwrap_or(secs).max(0) as u64);
            let expired = match (&spec.holder_identity, &spec.renew_time) {
                (Some(h), Some(t)) if !h.is_empty() => {
                    Timestamp::now().duration_since(t.0).unsigned_abs() > valid_for
                        && Timestamp::now() > t.0
                }
                _ => true,
            };
            if !expired {
                return Ok(false);
            }
            spec.holder_identity = Some(self.s.identity.clone());
            spec.acquire_time = Some(now.clone());
            spec.lease_transitions = Some(spec.lease_transitions.unwrap_or(0) + 1);
        }
        spec.lease_duration_seconds = Some(secs);
        spec.renew_time = Some(now);
        lease.spec = Some(spec);
        self.replace(&lease).await
    }

    /// Replaces the Lease with `lease`, which carries the resourceVersion it
    /// was read at: false when someone changed it in between.
    async fn replace(&self, lease: &Lease) -> Result<bool, kube::Error> {
        match self
            .api
            .replace(&self.s.name, &PostParams::default(), lease)
            .await
        {
            Ok(_) => Ok(true),
            Err(e) if conflict(&e) => Ok(false),
            Err(e) => Err(e),
        }
    }

    /// Gives the lease up if this candidate holds it: clears the holder, so
    /// that another candidate takes it at once instead of waiting for it to
    /// expire. True when it was released by this call.
    pub async fn release(&self) -> Result<bool, kube::Error> {
        let Some(mut lease) = self.api.get_opt(&self.s.name).await? else {
            return Ok(false);
        };
        let mut spec = lease.spec.clone().unwrap_or_default();
        if spec.holder_identity.as_deref() != Some(self.s.identity.as_str()) {
            return Ok(false);
        }
        spec.holder_identity = None;
        spec.lease_duration_seconds = Some(1);
        spec.renew_time = Some(MicroTime(Timestamp::now()));
        lease.spec = Some(spec);
        // A conflict: changed in between, no longer this candidate's to release.
        self.replace(&lease).await
    }

    /// Waits until this candidate holds the lease, then keeps renewing it
    /// until leadership is lost (or could not be renewed for two thirds of
    /// the lease duration) or [`Leadership::release`] gives it up.
    pub async fn acquire(self) -> Result<Leadership, kube::Error> {
        loop {
            match self.try_acquire_or_renew().await {
                Ok(true) => break,
                Ok(false) => {}
                Err(e) => tracing::warn!(error = %e, "leader election: reading the Lease failed"),
            }
            tokio::time::sleep(self.s.retry).await;
        }
        let elector = Arc::new(self);
        let (lost_tx, lost) = tokio::sync::watch::channel(false);
        let renewer = elector.clone();
        let renewing = tokio::spawn(async move {
            let mut renewed = Instant::now();
            let period = renewer.s.duration / 3;
            let give_up = renewer.s.duration * 2 / 3;
            loop {
                tokio::time::sleep(period).await;
                match renewer.try_acquire_or_renew().await {
                    Ok(true) => renewed = Instant::now(),
                    Ok(false) => {
                        tracing::warn!("leader election: another candidate holds the Lease");
                        break;
                    }
                    Err(e) => tracing::warn!(error = %e, "leader election: renewing failed"),
                }
                if renewed.elapsed() > give_up {
                    tracing::warn!("leader election: could not renew in time");
                    break;
                }
            }
            let _ = lost_tx.send(true);
        });
        Ok(Leadership {
            elector,
            lost,
            renewing,
        })
    }
}

/// Holding the lease: renewed by a task until lost or released.
pub struct Leadership {
    elector: Arc<LeaderElector>,
    lost: tokio::sync::watch::Receiver<bool>,
    renewing: tokio::task::JoinHandle<()>,
}

impl Leadership {
    /// Completes when leadership is lost.
    pub fn lost(&self) -> impl Future<Output = ()> + Send + Sync + 'static {
        let mut lost = self.lost.clone();
        async move {
            // An error: the renewing task is gone, and the lease with it.
            let _ = lost.wait_for(|lost| *lost).await;
        }
    }

    /// Whether leadership was lost.
    pub fn is_lost(&self) -> bool {
        *self.lost.borrow()
    }

    /// Stops renewing and gives the lease up, so that another candidate
    /// leads at once.
    pub async fn release(self) -> Result<bool, kube::Error> {
        self.renewing.abort();
        let _ = self.renewing.await;
        self.elector.release().await
    }
}
