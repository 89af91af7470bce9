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

/// Every text frame queued for `r`, in order, and the kind of each queue
/// item that carried them (`frame`, `frames`: routed socket by socket;
/// `run`: shared).
fn received(r: &mut Registration) -> (Vec<String>, Vec<&'static str>) {
    let mut frames = Vec::new();
    let mut items = Vec::new();
    while let Ok(item) = r.rx.try_recv() {
        match item {
            Outbound::Frame(f) => {
                items.push("frame");
                frames.push(f.to_string())
            }
            Outbound::Frames(fs) => {
                items.push("frames");
                frames.extend(fs.iter().map(|f| f.to_string()))
            }
            Outbound::Run(run) => {
                items.push("run");
                frames.extend(run.frames().iter().map(|f| f.to_string()))
            }
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
    assert_eq!((items1, items2), (vec!["run"], vec!["run"]));
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

fn binding(r: &Registration, topic: &str, id: u32, event: Option<ChangeKind>) -> Binding {
    Binding {
        socket: r.id,
        topic: topic.into(),
        vsn: Vsn::V2,
        id,
        schema: "public".into(),
        table: Some("a".into()),
        event,
        filter: None,
        select: None,
        subscriber: None,
    }
}

/// The `ids` and row id of each postgres_changes frame, as `[ids]:id`.
fn changes(frames: &[String]) -> Vec<String> {
    frames
        .iter()
        .map(|f| {
            let ids = f.split("\"ids\":").nth(1).unwrap().split(']').next();
            let id = f.split("\"id\":\"").nth(1).unwrap().split('"').next();
            format!("{}]:{}", ids.unwrap(), id.unwrap())
        })
        .collect()
}

#[test]
fn channels_with_one_alike_binding_share_a_run_and_the_others_get_their_own_ids() {
    let hub = Arc::new(Hub::new(1024));
    let a = table(1, "a");
    let mut plain: Vec<Registration> = (0..3).map(|_| hub.register()).collect();
    for r in &plain {
        hub.add_bindings(vec![binding(r, "realtime:room", 1, None)]);
    }
    {
        let mut routing = hub.routing();
        routing.dispatch(&insert(&a, "1"));
        routing.dispatch(&insert(&a, "2"));
    }
    for r in &mut plain {
        let (frames, items) = received(r);
        assert_eq!(changes(&frames), ["[1]:1", "[1]:2"]);
        assert_eq!(items, ["run"], "one shared queue item per socket");
        assert!(
            frames[0].contains("\"realtime:room\",\"postgres_changes\""),
            "{}",
            frames[0]
        );
    }

    // A channel whose two bindings both match gets both ids in one frame,
    // and that change is routed socket by socket: the others are unaffected.
    let mut two = hub.register();
    hub.add_bindings(vec![
        binding(&two, "realtime:room", 1, Some(ChangeKind::Insert)),
        binding(&two, "realtime:room", 2, None),
    ]);
    // Another topic name: frames differ.
    let mut other = hub.register();
    hub.add_bindings(vec![binding(&other, "realtime:other", 1, None)]);
    {
        let mut routing = hub.routing();
        routing.dispatch(&insert(&a, "3"));
    }
    for r in &mut plain {
        assert_eq!(changes(&received(r).0), ["[1]:3"]);
    }
    assert_eq!(changes(&received(&mut two).0), ["[1,2]:3"]);
    let frames = received(&mut other).0;
    assert_eq!(changes(&frames), ["[1]:3"]);
    assert!(frames[0].contains("realtime:other"), "{}", frames[0]);

    // The two-binding channel leaves: the rest share again, and a socket
    // that joined meanwhile is in the run.
    hub.leave_channel(
        two.id,
        &crate::cluster::TopicKey::new("realtime:room", false),
    );
    hub.leave_channel(
        other.id,
        &crate::cluster::TopicKey::new("realtime:other", false),
    );
    let mut late = hub.register();
    hub.add_bindings(vec![binding(&late, "realtime:room", 1, None)]);
    {
        let mut routing = hub.routing();
        routing.dispatch(&insert(&a, "4"));
        routing.dispatch(&insert(&a, "5"));
    }
    for r in plain.iter_mut().chain([&mut late]) {
        let (frames, items) = received(r);
        assert_eq!(changes(&frames), ["[1]:4", "[1]:5"]);
        assert_eq!(items, ["run"]);
    }
    assert!(received(&mut two).0.is_empty());
}

#[test]
fn a_run_of_channels_holds_only_changes_that_reach_the_same_sockets() {
    let hub = Arc::new(Hub::new(1024));
    let a = table(1, "a");
    let mut inserts = hub.register();
    hub.add_bindings(vec![binding(
        &inserts,
        "realtime:room",
        1,
        Some(ChangeKind::Insert),
    )]);
    let mut all = hub.register();
    hub.add_bindings(vec![binding(&all, "realtime:room", 1, None)]);
    let mut update = insert(&a, "2");
    update.kind = ChangeKind::Update;
    {
        let mut routing = hub.routing();
        routing.dispatch(&insert(&a, "1"));
        routing.dispatch(&update);
        routing.dispatch(&insert(&a, "3"));
    }
    assert_eq!(changes(&received(&mut inserts).0), ["[1]:1", "[1]:3"]);
    assert_eq!(changes(&received(&mut all).0), ["[1]:1", "[1]:2", "[1]:3"]);
}

#[test]
fn a_shared_frame_is_byte_for_byte_the_frame_routed_socket_by_socket() {
    let hub = Arc::new(Hub::new(1024));
    let a = table(1, "a");
    let two = |hub: &Arc<Hub>| {
        let mut routing = hub.routing();
        routing.dispatch(&insert(&a, "1"));
        routing.dispatch(&insert(&a, "2"));
    };
    let mut v2 = hub.register();
    hub.add_bindings(vec![binding(&v2, "realtime:room", 1, None)]);
    two(&hub);
    let (shared_v2, how) = received(&mut v2);
    assert_eq!(how, ["run"]);
    // A 1.x topic too: both match, so the changes go socket by socket.
    let topic = "realtime:public:a";
    let mut v1 = join(&hub, Vsn::V1, topic);
    two(&hub);
    let (routed_v1, how) = received(&mut v1);
    assert_eq!(how, ["frames"]);
    let (routed_v2, how) = received(&mut v2);
    assert_eq!(how, ["frames"]);
    hub.leave_channel(
        v2.id,
        &crate::cluster::TopicKey::new("realtime:room", false),
    );
    two(&hub);
    let (shared_v1, how) = received(&mut v1);
    assert_eq!(how, ["run"]);
    assert_eq!(shared_v1.len(), 2);
    assert_eq!(shared_v1, routed_v1);
    assert_eq!(shared_v2.len(), 2);
    assert_eq!(shared_v2, routed_v2);
}

#[test]
fn a_run_of_filtered_channels_takes_a_change_only_for_the_sockets_its_row_reaches() {
    let hub = Arc::new(Hub::new(1024));
    let a = table(1, "a");
    let filtered = |r: &Registration, filter: &str| Binding {
        filter: Some(
            crate::filter::Filter::parse(filter, |_| Some(crate::filter::Comparison::Text))
                .unwrap(),
        ),
        ..binding(r, "realtime:room", 1, None)
    };
    let mut one = hub.register();
    hub.add_bindings(vec![filtered(&one, "id=eq.1")]);
    let mut two = hub.register();
    hub.add_bindings(vec![filtered(&two, "id=eq.2")]);
    {
        let mut routing = hub.routing();
        routing.dispatch(&insert(&a, "1"));
        routing.dispatch(&insert(&a, "1"));
        routing.dispatch(&insert(&a, "2"));
    }
    assert_eq!(changes(&received(&mut one).0), ["[1]:1", "[1]:1"]);
    assert_eq!(changes(&received(&mut two).0), ["[1]:2"]);
}

#[test]
fn a_socket_that_refused_the_run_gets_no_later_change_of_the_batch() {
    let hub = Arc::new(Hub::new(4));
    let (a, b) = (table(1, "a"), table(2, "b"));
    let mut both = join(&hub, Vsn::V1, "realtime:public:a");
    subscribe(&hub, &both, Vsn::V1, "realtime:public:b");
    let mut fast = join(&hub, Vsn::V1, "realtime:public:a");
    {
        let mut routing = hub.routing();
        routing.dispatch(&insert(&a, "1"));
        routing.dispatch(&insert(&a, "2"));
    }
    assert_eq!(received(&mut fast).0.len(), 2);
    // `both` holds 2 of 4 frames: the run of 3 does not fit; the change of
    // `b` after it (socket by socket) would.
    {
        let mut routing = hub.routing();
        for i in 3..=5 {
            routing.dispatch(&insert(&a, &i.to_string()));
        }
        routing.dispatch(&insert(&b, "6"));
    }
    assert!(both.cancel.is_cancelled(), "closed as a slow consumer");
    assert_eq!(rows(&received(&mut both).0), ["a:1", "a:2"]);
    assert_eq!(rows(&received(&mut fast).0), ["a:3", "a:4", "a:5"]);
}
