//! Leader election on a `coordination.k8s.io/v1` Lease, so that two operator
//! replicas are safe: only the holder runs the controller. Every change to the
//! Lease is a replace with the resourceVersion read, so two candidates never
//! both win; the holder renews every third of the lease duration and steps down
//! (the returned future completes) before the lease can expire for others.

use std::future::Future;
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
        match self
            .api
            .replace(&self.s.name, &PostParams::default(), &lease)
            .await
        {
            Ok(_) => Ok(true),
            Err(e) if conflict(&e) => Ok(false),
            Err(e) => Err(e),
        }
    }

    /// Waits until this candidate holds the lease, then keeps renewing it; the
    /// returned future completes when leadership is lost (or could not be
    /// renewed for two thirds of the lease duration).
    pub async fn acquire(
        self,
    ) -> Result<impl Future<Output = ()> + Send + Sync + 'static, kube::Error> {
        loop {
            match self.try_acquire_or_renew().await {
                Ok(true) => break,
                Ok(false) => {}
                Err(e) => tracing::warn!(error = %e, "leader election: reading the Lease failed"),
            }
            tokio::time::sleep(self.s.retry).await;
        }
        let (tx, rx) = tokio::sync::oneshot::channel::<()>();
        tokio::spawn(async move {
            let mut renewed = Instant::now();
            let period = self.s.duration / 3;
            let give_up = self.s.duration * 2 / 3;
            loop {
                tokio::time::sleep(period).await;
                match self.try_acquire_or_renew().await {
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
            drop(tx);
        });
        Ok(async move {
            let _ = rx.await;
        })
    }
}
