//! Publishing Events (`events.k8s.io/v1`) about a resource so that each
//! distinct fact stays readable in `kubectl describe`.
//!
//! kube-rs's `Recorder` merges every Event with the same type, reason and
//! action on one object into a series that keeps the first note: after slots
//! `_0` and `_1` were created, `describe` showed "SlotCreated (x2) ... _0 for
//! replica 0" and the second fact was lost. Here the note is part of what
//! makes two Events the same (as client-go's event correlator does): the same
//! fact told again within [`SERIES_WINDOW`] becomes a series (`(x2)`), a
//! different fact a new Event. Owns nothing but its cache of recent Events;
//! what to tell, and when, is the reconcile's business.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use k8s_openapi::api::core::v1::ObjectReference;
use k8s_openapi::api::events::v1::Event;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::MicroTime;
use kube::api::{ObjectMeta, Patch, PatchParams, PostParams};
use kube::runtime::events::EventType;
use kube::{Api, Client};
use serde_json::json;
use tokio::sync::Mutex;

/// How long a told fact can be told again as part of the same series.
pub const SERIES_WINDOW: Duration = Duration::from_secs(10 * 60);
/// Most Events remembered (the oldest go first): bounded memory however many
/// resources and facts there are.
const CACHE_LIMIT: usize = 4096;

/// What makes two Events the same fact.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
struct Key {
    namespace: Option<String>,
    name: Option<String>,
    uid: Option<String>,
    warning: bool,
    reason: String,
    action: String,
    note: String,
}

/// An Event already published: its name, how often it was told, when last.
struct Told {
    name: String,
    count: i32,
    last: Instant,
}

/// Publishes Events as one controller (`reportingController`).
pub struct Recorder {
    client: Client,
    controller: String,
    instance: String,
    told: Mutex<HashMap<Key, Told>>,
}

/// One Event to publish.
pub struct Fact<'a> {
    pub type_: EventType,
    pub reason: &'a str,
    pub action: &'a str,
    pub note: &'a str,
}

impl Recorder {
    pub fn new(client: Client, controller: &str, instance: Option<String>) -> Recorder {
        Recorder {
            client,
            controller: controller.into(),
            instance: instance.unwrap_or_else(|| controller.into()),
            told: Mutex::new(HashMap::new()),
        }
    }

    /// Publishes `fact` about `regarding`: a new Event, or the next count of
    /// the series of the same fact told within [`SERIES_WINDOW`].
    pub async fn publish(
        &self,
        fact: &Fact<'_>,
        regarding: &ObjectReference,
    ) -> Result<(), kube::Error> {
        let key = Key {
            namespace: regarding.namespace.clone(),
            name: regarding.name.clone(),
            uid: regarding.uid.clone(),
            warning: fact.type_ == EventType::Warning,
            reason: fact.reason.into(),
            action: fact.action.into(),
            note: fact.note.into(),
        };
        let ns = regarding.namespace.as_deref().unwrap_or("default");
        let api: Api<Event> = Api::namespaced(self.client.clone(), ns);
        let now = k8s_openapi::jiff::Timestamp::now();
        // Held across the request: two reconciles telling the same fact at
        // once must not both create an Event.
        let mut told = self.told.lock().await;
        told.retain(|_, t| t.last.elapsed() < SERIES_WINDOW);
        if let Some(t) = told.get_mut(&key) {
            let count = t.count + 1;
            let series = json!({
                "series": {"count": count, "lastObservedTime": MicroTime(now)},
            });
            match api
                .patch(&t.name, &PatchParams::default(), &Patch::Merge(&series))
                .await
            {
                Ok(_) => {
                    t.count = count;
                    t.last = Instant::now();
                    return Ok(());
                }
                // Expired by the API server's event TTL: a new one.
                Err(kube::Error::Api(s)) if s.code == 404 => {}
                Err(e) => return Err(e),
            }
        }
        let name = format!(
            "{}.{:x}",
            regarding.name.as_deref().unwrap_or(&self.controller),
            now.as_nanosecond()
        );
        let event = Event {
            metadata: ObjectMeta {
                name: Some(name.clone()),
                namespace: Some(ns.into()),
                ..Default::default()
            },
            event_time: Some(MicroTime(now)),
            type_: Some(
                match fact.type_ {
                    EventType::Normal => "Normal",
                    EventType::Warning => "Warning",
                }
                .into(),
            ),
            reason: Some(fact.reason.into()),
            action: Some(fact.action.into()),
            note: Some(fact.note.into()),
            regarding: Some(regarding.clone()),
            reporting_controller: Some(self.controller.clone()),
            reporting_instance: Some(self.instance.clone()),
            ..Default::default()
        };
        api.create(&PostParams::default(), &event).await?;
        if told.len() >= CACHE_LIMIT {
            if let Some(oldest) = told
                .iter()
                .min_by_key(|(_, t)| t.last)
                .map(|(k, _)| k.clone())
            {
                told.remove(&oldest);
            }
        }
        told.insert(
            key,
            Told {
                name,
                count: 1,
                last: Instant::now(),
            },
        );
        Ok(())
    }
}
