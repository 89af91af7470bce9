//! Routing cost of postgres_changes bindings: changes/s through the hub with
//! 1 subscription vs 10,000 subscriptions that cannot match (each filters
//! `id=eq.<its own id>`), measured in the same run and printed as a ratio.
//! The index should make the two of the same order. Then the same 10,000
//! with a second condition each (`id=eq.<id>,body=like.h%`): indexed by the
//! `eq`, so of the same order too.
//!
//!     cargo bench -p realtime-server --bench routing [-- CHANGES]

use std::sync::Arc;
use std::time::Instant;

use bytes::Bytes;
use realtime_server::change::{Cell, Change, ChangeKind, ColumnInfo, TableInfo};
use realtime_server::filter::{Comparison, Filter};
use realtime_server::hub::{Binding, Hub};
use realtime_server::phoenix::frame::Vsn;
use realtime_server::replication::catalog::TypeKind;
use realtime_server::replication::pgoutput::ReplicaIdentity;

fn table() -> Arc<TableInfo> {
    let col = |name: &str, type_name: &str, kind: TypeKind| ColumnInfo {
        name: name.into(),
        type_name: type_name.into(),
        kind,
        type_oid: 0,
        type_modifier: -1,
        is_key: name == "id",
    };
    Arc::new(TableInfo::new(
        1,
        "public".into(),
        "items".into(),
        ReplicaIdentity::Default,
        vec![
            col("id", "int8", TypeKind::Integer),
            col("body", "text", TypeKind::Text),
        ],
    ))
}

/// Changes per second through `hub` for rows whose id matches no binding.
fn route(hub: &Arc<Hub>, table: &Arc<TableInfo>, changes: usize) -> f64 {
    let start = Instant::now();
    for i in 0..changes {
        let change = Change {
            kind: ChangeKind::Insert,
            table: table.clone(),
            commit_timestamp: "2021-01-01T00:00:00.000000Z".into(),
            record: Some(vec![
                Cell::Text(Bytes::from(format!("{}", 1_000_000 + i))),
                Cell::Text(Bytes::from_static(b"hello")),
            ]),
            old_record: None,
            errors: vec![],
            unlimited: None,
        };
        hub.dispatch(&change);
    }
    changes as f64 / start.elapsed().as_secs_f64()
}

fn hub_with(
    subscriptions: usize,
    filter: impl Fn(usize) -> String,
) -> (Arc<Hub>, Vec<realtime_server::hub::Registration>) {
    let hub = Arc::new(Hub::new(16));
    let mut regs = Vec::new();
    for i in 0..subscriptions {
        let reg = hub.register();
        let filter = Filter::parse(&filter(i), |c| match c {
            "id" => Some(Comparison::Number),
            "body" => Some(Comparison::Text),
            _ => None,
        })
        .unwrap();
        hub.add_bindings(vec![Binding {
            socket: reg.id,
            topic: format!("realtime:user-{i}").into(),
            vsn: Vsn::V2,
            id: 1,
            schema: "public".into(),
            table: Some("items".into()),
            event: None,
            filter: Some(filter),
            select: None,
            subscriber: None,
        }]);
        regs.push(reg);
    }
    (hub, regs)
}

fn main() {
    let changes: usize = std::env::args()
        .skip(1)
        .find_map(|a| a.parse().ok())
        .unwrap_or(200_000);
    let table = table();
    let eq = |i: usize| format!("id=eq.{i}");
    let (one, _keep1) = hub_with(1, eq);
    let (many, _keep2) = hub_with(10_000, eq);
    let (two, _keep3) = hub_with(10_000, |i| format!("id=eq.{i},body=like.h%"));
    // Warm up all, then measure one after the other.
    route(&one, &table, changes / 10);
    route(&many, &table, changes / 10);
    route(&two, &table, changes / 10);
    let r1 = route(&one, &table, changes);
    let r10k = route(&many, &table, changes);
    let r2 = route(&two, &table, changes);
    println!("routing {changes} changes that match no subscription:");
    println!("  1 subscription:                       {r1:>12.0} changes/s");
    println!("  10,000 subscriptions:                 {r10k:>12.0} changes/s");
    println!("  10,000 of two conditions each:        {r2:>12.0} changes/s");
    println!(
        "  ratio (10,000 / 1):                   {:>12.2}",
        r10k / r1
    );
    println!("  ratio (10,000 of two / 1):            {:>12.2}", r2 / r1);
}
