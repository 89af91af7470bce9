//! Routing a batch: the frames each socket gets, in commit order, whether
//! a change takes the shared run of one topic or the per-socket way.

use std::sync::Arc;

use bytes::Bytes;

use super::*;
use crate::change::{Cell, ChangeKind, ColumnInfo, TableInfo};
use crate::replication::catalog::TypeKind;
use crate::replication::pgoutput::ReplicaIdentity;

fn table(id: u32, name: &str) -> Arc<TableInfo> {
    Arc::new(TableInfo::new(
        id,
        "public".into(),
        name.into(),
        ReplicaIdentity::Default,
        vec![ColumnInfo {
            name: "id".into(),
            type_name: "text".into(),
            kind: TypeKind::Text,
            type_oid: 25,
            type_modifier: -1,
            is_key: true,
        }],
    ))
}

fn insert(table: &Arc<TableInfo>, id: &str) -> Change {
    Change {
        kind: ChangeKind::Insert,
        table: table.clone(),
        commit_timestamp: "2026-01-01T00:00:00Z".into(),
        record: Some(vec![Cell::Text(Bytes::copy_from_slice(id.as_bytes()))]),
        old_record: None,
        errors: vec![],
        unlimited: None,
    }
}

fn join(hub: &Hub, vsn: Vsn, topic: &str) -> Registration {
    let r = hub.register();
    subscribe(hub, &r, vsn, topic);
    r
}

fn subscribe(hub: &Hub, r: &Registration, vsn: Vsn, topic: &str) {
    let key = LegacyTopic::parse(topic).unwrap();
    hub.subscribe_legacy(r.id, vsn, &key, topic, None);
}

/// Every text frame queued for `r`, in order, and how many queue items
/// carried them.
fn received(r: &mut Registration) -> (Vec<String>, usize) {
    let mut frames = Vec::new();
    let mut items = 0;
    while let Ok(item) = r.rx.try_recv() {
        items += 1;
        match item {
            Outbound::Frame(f) => frames.push(f.to_string()),
            Outbound::Frames(fs) => frames.extend(fs.iter().map(|f| f.to_string())),
            Outbound::Run(run) => frames.extend(run.frames().iter().map(|f| f.to_string())),
            other => panic!("unexpected {other:?}"),
        }
    }
    (frames, items)
}

/// The table and row id of each frame, as `table:id`.
fn rows(frames: &[String]) -> Vec<String> {
    frames
        .iter()
        .map(|f| {
            let table = f.split("\"table\":\"").nth(1).unwrap().split('"').next();
            let id = f.split("\"id\":\"").nth(1).unwrap().split('"').next();
            format!("{}:{}", table.unwrap(), id.unwrap())
        })
        .collect()
}

#[test]
fn one_topics_changes_reach_every_socket_as_one_shared_item_in_order() {
    let hub = Arc::new(Hub::new(1024));
    let a = table(1, "a");
    let mut v1 = join(&hub, Vsn::V1, "realtime:public:a");
    let mut v2 = join(&hub, Vsn::V2, "realtime:public:a");
    {
        let mut routing = hub.routing();
        for i in 1..=3 {
            routing.dispatch(&insert(&a, &i.to_string()));
        }
    }
    let (frames1, items1) = received(&mut v1);
    let (frames2, items2) = received(&mut v2);
    assert_eq!(rows(&frames1), ["a:1", "a:2", "a:3"]);
    assert_eq!(rows(&frames2), ["a:1", "a:2", "a:3"]);
    assert_eq!((items1, items2), (1, 1), "one queue item per socket");
    // Each socket gets its own serializer's frames.
    assert!(frames1[0].starts_with('{'), "{}", frames1[0]);
    assert!(frames2[0].starts_with('['), "{}", frames2[0]);
}

#[test]
fn a_socket_on_two_topics_gets_their_changes_in_commit_order_within_a_batch() {
    let hub = Arc::new(Hub::new(1024));
    let (a, b) = (table(1, "a"), table(2, "b"));
    let mut both = join(&hub, Vsn::V1, "realtime:public:a");
    subscribe(&hub, &both, Vsn::V1, "realtime:public:b");
    let mut only_a = join(&hub, Vsn::V1, "realtime:public:a");
    let mut only_b = join(&hub, Vsn::V1, "realtime:public:b");
    let mut all = join(&hub, Vsn::V1, "realtime:*");
    {
        let mut routing = hub.routing();
        routing.dispatch(&insert(&a, "1"));
        routing.dispatch(&insert(&a, "2"));
        routing.dispatch(&insert(&b, "3"));
        routing.dispatch(&insert(&a, "4"));
    }
    {
        // `realtime:*` and `realtime:public:a` both match: socket by socket.
        let mut routing = hub.routing();
        routing.dispatch(&insert(&a, "5"));
        routing.dispatch(&insert(&b, "6"));
    }
    assert_eq!(
        rows(&received(&mut both).0),
        ["a:1", "a:2", "b:3", "a:4", "a:5", "b:6"]
    );
    assert_eq!(rows(&received(&mut only_a).0), ["a:1", "a:2", "a:4", "a:5"]);
    assert_eq!(rows(&received(&mut only_b).0), ["b:3", "b:6"]);
    assert_eq!(
        rows(&received(&mut all).0),
        ["a:1", "a:2", "b:3", "a:4", "a:5", "b:6"]
    );
}

#[test]
fn a_socket_whose_queue_cannot_take_the_shared_run_is_closed_alone() {
    let hub = Arc::new(Hub::new(4));
    let a = table(1, "a");
    let mut slow = join(&hub, Vsn::V1, "realtime:public:a");
    let mut fast = join(&hub, Vsn::V1, "realtime:public:a");
    let send = |n: usize| {
        let mut routing = hub.routing();
        for i in 0..n {
            routing.dispatch(&insert(&a, &i.to_string()));
        }
    };
    send(3);
    assert_eq!(received(&mut fast).0.len(), 3);
    // `slow` holds 3 of 4 frames: a run of 3 more does not fit.
    send(3);
    assert!(slow.cancel.is_cancelled(), "the slow consumer is closed");
    assert!(!fast.cancel.is_cancelled());
    assert_eq!(received(&mut fast).0.len(), 3);
    assert_eq!(received(&mut slow).0.len(), 3, "what it had, not the run");
}
