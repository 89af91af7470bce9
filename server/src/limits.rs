//! Shared helpers for the limits on what clients may make the server hold
//! or do: counted slots that are reserved atomically and released on drop,
//! a per-socket rate (token bucket), a server-wide rate (atomics), and the
//! bytes of state clients made the server keep ([`Held`]), which count in
//! the memory budget beside the queued bytes.
//!
//! Owns the counting, not the decisions: the accept loop, the upgrade and
//! the session say which limit applies and what a refused client gets.

use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, LazyLock};
use std::time::{Duration, Instant};

/// At most `max` holders at once. [`Slots::try_acquire`] reserves a slot in
/// one atomic step, so a burst of callers never admits more than `max`
/// (a check of a count followed by an increment elsewhere would).
#[derive(Debug)]
pub struct Slots {
    held: AtomicUsize,
    max: usize,
}

impl Slots {
    pub fn new(max: usize) -> Arc<Slots> {
        Arc::new(Slots {
            held: AtomicUsize::new(0),
            max,
        })
    }

    /// A slot, held until the returned guard is dropped; `None` when all
    /// `max` are held.
    pub fn try_acquire(self: &Arc<Self>) -> Option<Slot> {
        self.held
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| {
                (n < self.max).then_some(n + 1)
            })
            .ok()?;
        Some(Slot(self.clone()))
    }

    /// Slots held now.
    pub fn held(&self) -> usize {
        self.held.load(Ordering::Acquire)
    }

    pub fn max(&self) -> usize {
        self.max
    }
}

/// One held slot of a [`Slots`]; released on drop.
#[derive(Debug)]
pub struct Slot(Arc<Slots>);

impl Drop for Slot {
    fn drop(&mut self) {
        self.0.held.fetch_sub(1, Ordering::AcqRel);
    }
}

/// At most `rate` events per second for one owner (a socket), with bursts
/// of up to `rate` (one second's worth): a token bucket. Not shared: the
/// socket's own task holds it, so it needs no atomics.
#[derive(Debug, Clone)]
pub struct Rate {
    per_second: f64,
    tokens: f64,
    last: Instant,
}

impl Rate {
    pub fn per_second(rate: u32) -> Rate {
        Rate {
            per_second: f64::from(rate),
            tokens: f64::from(rate),
            last: Instant::now(),
        }
    }

    /// Takes one event; `false` when the rate is exceeded (nothing taken).
    pub fn take(&mut self) -> bool {
        self.take_at(Instant::now())
    }

    fn take_at(&mut self, now: Instant) -> bool {
        let elapsed = now.saturating_duration_since(self.last).as_secs_f64();
        self.last = now;
        self.tokens = (self.tokens + elapsed * self.per_second).min(self.per_second);
        if self.tokens >= 1.0 {
            self.tokens -= 1.0;
            true
        } else {
            false
        }
    }
}

/// The process's clock for [`SharedRate`]: milliseconds since first use.
static EPOCH: LazyLock<Instant> = LazyLock::new(Instant::now);

/// At most `rate` events in each one-second window, over every caller of
/// the process (a fixed window on two atomics: no lock).
#[derive(Debug)]
pub struct SharedRate {
    per_second: u64,
    /// The window's start, in whole seconds since [`EPOCH`].
    window: AtomicU64,
    taken: AtomicU64,
}

impl SharedRate {
    pub fn per_second(rate: u32) -> SharedRate {
        SharedRate {
            per_second: u64::from(rate),
            window: AtomicU64::new(0),
            taken: AtomicU64::new(0),
        }
    }

    /// Takes one event; `false` when this second's budget is spent.
    pub fn take(&self) -> bool {
        self.take_at(EPOCH.elapsed())
    }

    fn take_at(&self, since_epoch: Duration) -> bool {
        let now = since_epoch.as_secs();
        let window = self.window.load(Ordering::Acquire);
        if now != window
            && self
                .window
                .compare_exchange(window, now, Ordering::AcqRel, Ordering::Acquire)
                .is_ok()
        {
            // The caller that moved the window resets the count; a few
            // callers racing it may count in either window.
            self.taken.store(0, Ordering::Release);
        }
        self.taken.fetch_add(1, Ordering::AcqRel) < self.per_second
    }
}

/// Bytes of state clients made the server keep: joined channels, their
/// `postgres_changes` bindings and presences (an estimate from what was
/// sent, see [`Held`]). Counted in the memory budget with the queues.
pub static HELD_BYTES: AtomicUsize = AtomicUsize::new(0);

/// A charge of `n` bytes against [`HELD_BYTES`], given back on drop: the
/// state it stands for lives exactly as long as the charge.
#[derive(Debug, Default)]
pub struct Held(usize);

impl Held {
    pub fn new(n: usize) -> Held {
        HELD_BYTES.fetch_add(n, Ordering::Relaxed);
        Held(n)
    }

    /// Adds `n` bytes to the charge.
    pub fn add(&mut self, n: usize) {
        HELD_BYTES.fetch_add(n, Ordering::Relaxed);
        self.0 += n;
    }

    /// Replaces the charge by `n` bytes.
    pub fn set(&mut self, n: usize) {
        *self = Held::new(n);
    }

    pub fn bytes(&self) -> usize {
        self.0
    }
}

impl Drop for Held {
    fn drop(&mut self) {
        HELD_BYTES.fetch_sub(self.0, Ordering::Relaxed);
    }
}

/// The server-wide memory budget (`MEMORY_BUDGET_MB`): the bytes queued
/// over every socket plus the state clients made the server keep
/// ([`HELD_BYTES`]), past which new sockets, joins, broadcasts and
/// presences are refused.
#[derive(Debug, Clone, Copy)]
pub struct MemoryBudget {
    pub mb: u64,
}

impl MemoryBudget {
    /// `configured` MiB, or half the cgroup's memory limit when there is
    /// one (the queues are the memory clients can grow; the rest is the
    /// process's own), else [`crate::config::DEFAULT_MEMORY_BUDGET_MB`].
    pub fn new(configured: Option<u64>) -> MemoryBudget {
        let mb = configured
            .or_else(|| cgroup_memory_limit().map(|bytes| (bytes / 2) >> 20))
            .filter(|mb| *mb > 0)
            .unwrap_or(crate::config::DEFAULT_MEMORY_BUDGET_MB);
        MemoryBudget { mb }
    }

    /// Whether the queues and the kept state hold more than the budget now.
    pub fn exceeded(&self) -> bool {
        let queued = crate::hub::queued_bytes() as u64;
        let held = HELD_BYTES.load(Ordering::Relaxed) as u64;
        queued + held > self.mb << 20
    }

    /// The reason a refused client gets.
    pub fn reason(&self) -> String {
        format!(
            "the server is at its memory budget (MEMORY_BUDGET_MB={}): try again later",
            self.mb
        )
    }
}

/// The memory limit of the process's cgroup (v2 `memory.max`, or v1
/// `memory.limit_in_bytes`), if it has one.
fn cgroup_memory_limit() -> Option<u64> {
    [
        "/sys/fs/cgroup/memory.max",
        "/sys/fs/cgroup/memory/memory.limit_in_bytes",
    ]
    .iter()
    .filter_map(|p| std::fs::read_to_string(p).ok())
    .filter_map(|s| s.trim().parse::<u64>().ok())
    // cgroup v1 says "no limit" with a number near u64::MAX.
    .find(|&b| b < (1 << 50))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_rate_allows_a_burst_of_one_second_then_refills() {
        let t0 = Instant::now();
        let mut r = Rate::per_second(10);
        r.last = t0;
        assert_eq!((0..20).filter(|_| r.take_at(t0)).count(), 10);
        // 100 ms later: one more.
        let t1 = t0 + Duration::from_millis(100);
        assert!(r.take_at(t1));
        assert!(!r.take_at(t1));
        // Much later: a full burst again, no more.
        let t2 = t1 + Duration::from_secs(60);
        assert_eq!((0..20).filter(|_| r.take_at(t2)).count(), 10);
    }

    #[test]
    fn a_shared_rate_counts_per_second_window() {
        let r = SharedRate::per_second(5);
        let at = Duration::from_millis(1500);
        assert_eq!((0..9).filter(|_| r.take_at(at)).count(), 5);
        let next = Duration::from_millis(2100);
        assert_eq!((0..9).filter(|_| r.take_at(next)).count(), 5);
    }

    #[test]
    fn a_held_charge_is_given_back_when_dropped_or_replaced() {
        // Other tests charge too: compare differences of this test's own.
        let mut h = Held::new(1000);
        h.add(24);
        assert_eq!(h.bytes(), 1024);
        h.set(10);
        assert_eq!(h.bytes(), 10);
        drop(h);
        // A charge far above what any other test holds shows in the total
        // while it lives, and is gone after.
        let a = Held::new(1 << 40);
        assert!(HELD_BYTES.load(Ordering::Relaxed) >= 1 << 40);
        drop(a);
        assert!(HELD_BYTES.load(Ordering::Relaxed) < 1 << 40);
    }

    #[test]
    fn no_more_than_max_are_held_and_a_drop_frees_one() {
        let slots = Slots::new(2);
        let a = slots.try_acquire().expect("first");
        let _b = slots.try_acquire().expect("second");
        assert!(slots.try_acquire().is_none());
        assert_eq!(slots.held(), 2);
        drop(a);
        assert_eq!(slots.held(), 1);
        assert!(slots.try_acquire().is_some());
    }

    #[test]
    fn a_burst_from_many_threads_admits_exactly_max() {
        let slots = Slots::new(200);
        let admitted: Vec<Slot> = std::thread::scope(|s| {
            let handles: Vec<_> = (0..8)
                .map(|_| {
                    s.spawn(|| {
                        (0..100)
                            .filter_map(|_| slots.try_acquire())
                            .collect::<Vec<_>>()
                    })
                })
                .collect();
            handles
                .into_iter()
                .flat_map(|h| h.join().expect("thread"))
                .collect()
        });
        assert_eq!(admitted.len(), 200);
        assert_eq!(slots.held(), 200);
    }
}
