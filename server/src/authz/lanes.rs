//! Changes that wait for row level security checks, one ordered lane per
//! table.
//!
//! Owns running the checks without blocking anyone: the replication reader
//! hands a change with the checks it needs to its table's lane and goes on;
//! the lane's task takes the changes waiting (up to [`BATCH`]), runs one
//! statement per group for all of their images (groups in parallel, bounded
//! by the connection pool), and hands each change back to its `deliver`
//! callback in the order the changes came. Other tables' lanes go on
//! meanwhile. A check that fails withholds the images it covered from that
//! group only: a statement over several images that raises is retried image
//! by image, so one bad row withholds one change; a timeout withholds the
//! batch for that group. Each failure is logged with the table, the
//! policies and the role, and counted. Also owns the set of changes still in
//! a lane ([`Inflight`]), which the replication stream consults before it
//! confirms a position.

use std::collections::{BTreeSet, HashMap, VecDeque};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::Notify;

use super::db::{Db, DbError, Principal};
use super::plan::PolicyPlan;
use crate::metrics::METRICS;

/// Changes checked together (per group, one statement for all their images).
pub const BATCH: usize = 64;

/// A lane holding more than this many changes withholds new ones from the
/// groups that need a check, at once, rather than growing: the database is
/// not keeping up. Counted and logged like a timeout.
pub const MAX_QUEUED: usize = 20_000;

/// What one group needs checked for one change.
pub struct GroupCheck {
    pub principal: Arc<Principal>,
    pub plan: Arc<PolicyPlan>,
    /// JSON images (see `image::json`).
    pub images: Vec<String>,
}

/// One change in a lane.
pub struct Item {
    /// The change's position in the stream (see [`Inflight`]).
    pub seq: u64,
    pub checks: Vec<GroupCheck>,
    /// Called once, in order, with one result per image of each check
    /// (`true`: the group may see it).
    pub deliver: Box<dyn FnOnce(Vec<Vec<bool>>) + Send>,
}

/// Counters of the checks (exported at `/metrics`).
#[derive(Debug, Default)]
pub struct CheckStats {
    /// Statements run.
    pub statements: AtomicU64,
    /// Images checked.
    pub images: AtomicU64,
    /// Images withheld because their check raised an error.
    pub errors: AtomicU64,
    /// Images withheld because their check timed out, or the lane was full.
    pub timeouts: AtomicU64,
}

/// The changes handed to lanes and not yet delivered, by position.
#[derive(Debug, Default)]
pub struct Inflight {
    seqs: Mutex<BTreeSet<u64>>,
    /// Woken when a change leaves.
    pub drained: Notify,
}

impl Inflight {
    fn add(&self, seq: u64) {
        self.seqs
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(seq);
    }

    fn remove(&self, seq: u64) {
        self.seqs
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(&seq);
        self.drained.notify_waiters();
    }

    /// The earliest position still waiting in a lane.
    pub fn earliest(&self) -> Option<u64> {
        self.seqs
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .first()
            .copied()
    }

    pub fn is_empty(&self) -> bool {
        self.earliest().is_none()
    }
}

#[derive(Default)]
struct Lane {
    queue: VecDeque<Item>,
    running: bool,
}

/// Every table's lane.
pub struct Lanes {
    db: Arc<Db>,
    timeout: Duration,
    lanes: Mutex<HashMap<u32, Lane>>,
    pub inflight: Arc<Inflight>,
    pub stats: Arc<CheckStats>,
}

impl Lanes {
    pub fn new(db: Arc<Db>, timeout: Duration) -> Arc<Lanes> {
        Arc::new(Lanes {
            db,
            timeout,
            lanes: Mutex::new(HashMap::new()),
            inflight: Arc::new(Inflight::default()),
            stats: Arc::new(CheckStats::default()),
        })
    }

    /// Whether `table`'s lane holds changes (a change of that table must
    /// then queue behind them).
    pub fn busy(&self, table: u32) -> bool {
        self.lock()
            .get(&table)
            .is_some_and(|l| !l.queue.is_empty() || l.running)
    }

    /// Queues `item` behind `table`'s other changes. Never waits.
    pub fn submit(self: &Arc<Self>, table: u32, mut item: Item) {
        self.inflight.add(item.seq);
        let mut lanes = self.lock();
        let lane = lanes.entry(table).or_default();
        if lane.queue.len() >= MAX_QUEUED && !item.checks.is_empty() {
            let images: usize = item.checks.iter().map(|c| c.images.len()).sum();
            self.stats
                .timeouts
                .fetch_add(images as u64, Ordering::Relaxed);
            tracing::error!(
                table = %item.checks[0].plan.table,
                queued = lane.queue.len(),
                "row level security checks are not keeping up: a change is withheld from the \
                 groups that need a check"
            );
            let results = item
                .checks
                .iter()
                .map(|c| vec![false; c.images.len()])
                .collect();
            let deliver = std::mem::replace(&mut item.deliver, Box::new(|_| {}));
            item.checks.clear();
            item.deliver = Box::new(move |_| deliver(results));
        }
        lane.queue.push_back(item);
        if !lane.running {
            lane.running = true;
            let me = self.clone();
            tokio::spawn(async move { me.run(table).await });
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<u32, Lane>> {
        self.lanes.lock().unwrap_or_else(|e| e.into_inner())
    }

    async fn run(self: Arc<Self>, table: u32) {
        loop {
            let batch: Vec<Item> = {
                let mut lanes = self.lock();
                let Some(lane) = lanes.get_mut(&table) else {
                    return;
                };
                if lane.queue.is_empty() {
                    lane.running = false;
                    lanes.remove(&table);
                    return;
                }
                let n = lane.queue.len().min(BATCH);
                lane.queue.drain(..n).collect()
            };
            // The callbacks stay out of the awaited future (they need not be Sync).
            let (deliveries, checks): (Vec<_>, Vec<_>) = batch
                .into_iter()
                .map(|item| ((item.seq, item.deliver), item.checks))
                .unzip();
            let results = self.check(&checks).await;
            for ((seq, deliver), results) in deliveries.into_iter().zip(results) {
                deliver(results);
                self.inflight.remove(seq);
            }
        }
    }

    /// Runs the batch's checks: one statement per (group, plan), all at
    /// once. Returns, per item, per check, per image: may the group see it.
    async fn check(&self, batch: &[Vec<GroupCheck>]) -> Vec<Vec<Vec<bool>>> {
        let mut results: Vec<Vec<Vec<bool>>> = batch
            .iter()
            .map(|checks| checks.iter().map(|c| vec![false; c.images.len()]).collect())
            .collect();
        // (principal, statement) -> where its images go.
        type Slots = Vec<(usize, usize, usize)>;
        let mut groups: HashMap<(Arc<Principal>, usize), (Arc<PolicyPlan>, Slots)> = HashMap::new();
        for (i, checks) in batch.iter().enumerate() {
            for (c, check) in checks.iter().enumerate() {
                let entry = groups
                    .entry((check.principal.clone(), Arc::as_ptr(&check.plan) as usize))
                    .or_insert_with(|| (check.plan.clone(), Vec::new()));
                for k in 0..check.images.len() {
                    entry.1.push((i, c, k));
                }
            }
        }
        let runs = groups.into_iter().map(|((principal, _), (plan, slots))| {
            let images: Vec<String> = slots
                .iter()
                .map(|&(i, c, k)| batch[i][c].images[k].clone())
                .collect();
            async move {
                let passed = self.check_group(&principal, &plan, &images).await;
                (slots, passed)
            }
        });
        for (slots, passed) in futures::future::join_all(runs).await {
            for (n, (i, c, k)) in slots.into_iter().enumerate() {
                results[i][c][k] = passed[n];
            }
        }
        results
    }

    /// One group's images against one plan: which pass.
    async fn check_group(
        &self,
        principal: &Principal,
        plan: &PolicyPlan,
        images: &[String],
    ) -> Vec<bool> {
        let Some(sql) = &plan.check_sql else {
            return vec![false; images.len()];
        };
        self.stats.statements.fetch_add(1, Ordering::Relaxed);
        self.stats
            .images
            .fetch_add(images.len() as u64, Ordering::Relaxed);
        METRICS.rls_check_statements.inc();
        METRICS.rls_images_checked.inc_by(images.len() as u64);
        match self.run_check(principal, sql, images).await {
            Ok(passed) => passed,
            Err(e) if e.is_timeout() || images.len() == 1 => {
                self.failed(plan, principal, &e, images.len());
                vec![false; images.len()]
            }
            // One image may be the one that raises: each on its own.
            Err(_) => {
                let mut out = Vec::with_capacity(images.len());
                for image in images {
                    self.stats.statements.fetch_add(1, Ordering::Relaxed);
                    METRICS.rls_check_statements.inc();
                    match self
                        .run_check(principal, sql, std::slice::from_ref(image))
                        .await
                    {
                        Ok(passed) => out.push(passed[0]),
                        Err(e) => {
                            self.failed(plan, principal, &e, 1);
                            out.push(false);
                        }
                    }
                }
                out
            }
        }
    }

    async fn run_check(
        &self,
        principal: &Principal,
        sql: &str,
        images: &[String],
    ) -> Result<Vec<bool>, DbError> {
        let images_param: Vec<&str> = images.iter().map(String::as_str).collect();
        let rows = self
            .db
            .as_group(principal, sql, &[&images_param], self.timeout)
            .await?;
        let mut passed = vec![false; images.len()];
        for row in rows {
            let i: i32 = row.get(0);
            if let Some(p) = usize::try_from(i - 1).ok().and_then(|i| passed.get_mut(i)) {
                *p = true;
            }
        }
        Ok(passed)
    }

    fn failed(&self, plan: &PolicyPlan, principal: &Principal, e: &DbError, images: usize) {
        let counter = if e.is_timeout() {
            METRICS.rls_check_timeouts.inc_by(images as u64);
            &self.stats.timeouts
        } else {
            METRICS.rls_check_errors.inc_by(images as u64);
            &self.stats.errors
        };
        counter.fetch_add(images as u64, Ordering::Relaxed);
        tracing::error!(
            table = %plan.table,
            policies = ?plan.names,
            role = %principal.role,
            changes = images,
            error = %e,
            "checking row level security failed: withheld from this group of subscribers \
             (others go on)"
        );
    }
}
