//! A socket's send queue, bounded in frames (`SOCKET_QUEUE_DEPTH`) and in
//! bytes (`SOCKET_QUEUE_BYTES`), and the count of bytes queued over every
//! socket, which the server-wide memory budget is checked against. A batch
//! of frames ([`Outbound::Frames`]) is one item of the queue and counts as
//! its frames and bytes.
//!
//! A frame shared by many sockets (a change or a broadcast, encoded once)
//! counts its full length in each queue that holds it: the bound is on
//! what a queue could hold alone, so it stays true whichever sockets drain.
//! Must not decide what happens to a socket whose queue is full: the hub
//! closes it as a slow consumer.

use std::cell::Cell;
use std::sync::atomic::{AtomicIsize, AtomicUsize, Ordering};
use std::sync::Arc;

use tokio::sync::mpsc;
use tokio::sync::mpsc::error::{TryRecvError, TrySendError};

use super::Outbound;

/// Bytes queued to every socket of the process, counted once per queue,
/// give or take what each thread has not published yet ([`account`]).
/// Read it with [`queued_bytes`].
static QUEUED_BYTES: AtomicIsize = AtomicIsize::new(0);

/// How far a thread's own count may drift before it is added to
/// [`QUEUED_BYTES`]: one shared counter written for every frame of every
/// socket is a cache line that every core fights over (the dispatcher
/// adds, each writer subtracts); published per 64 KiB, it is written a few
/// times per change instead of once per socket.
const PUBLISH_EVERY: isize = 64 << 10;

thread_local! {
    static UNPUBLISHED: Cell<isize> = const { Cell::new(0) };
}

fn account(delta: isize) {
    UNPUBLISHED.with(|c| {
        let v = c.get() + delta;
        if v.abs() >= PUBLISH_EVERY {
            QUEUED_BYTES.fetch_add(v, Ordering::Relaxed);
            c.set(0);
        } else {
            c.set(v);
        }
    });
}

/// Bytes queued over every socket, to within 64 KiB per thread.
pub fn queued_bytes() -> usize {
    // A thread may publish its frames' removal before another publishes
    // their addition: the sum is never below zero, a snapshot may be.
    QUEUED_BYTES.load(Ordering::Relaxed).max(0) as usize
}

/// Bytes and frames an item holds in a queue: a frame's length; a close is
/// free (it must always get in).
fn size(item: &Outbound) -> (usize, usize) {
    match item {
        Outbound::Frame(frame) => (frame.len(), 1),
        Outbound::Binary(bytes) => (bytes.len(), 1),
        Outbound::Frames(frames) => (frames.iter().map(|f| f.len()).sum(), frames.len()),
        Outbound::Run(run) => (run.bytes(), run.frames().len()),
        Outbound::Close(..) => (0, 0),
    }
}

/// A queue of at most `depth` frames and `max_bytes` bytes; a single item
/// larger than `max_bytes` (or a batch of more than `depth` frames) is taken
/// when the queue is empty, so the bound is `max_bytes` plus one item.
pub fn channel(depth: usize, max_bytes: usize) -> (QueueTx, QueueRx) {
    let (tx, rx) = mpsc::channel(depth);
    let held = Arc::new(Held::default());
    (
        QueueTx {
            tx,
            held: held.clone(),
            max_bytes,
            max_frames: depth,
        },
        QueueRx { rx, held },
    )
}

/// What a queue holds.
#[derive(Debug, Default)]
struct Held {
    bytes: AtomicUsize,
    frames: AtomicUsize,
}

/// The sending side, shared by the hub and the socket's session.
#[derive(Debug, Clone)]
pub struct QueueTx {
    tx: mpsc::Sender<Outbound>,
    held: Arc<Held>,
    max_bytes: usize,
    max_frames: usize,
}

impl QueueTx {
    /// Queues `item` without waiting; `Full` when the queue is at its depth
    /// or the item would take it past its bytes or frames.
    pub fn try_send(&self, item: Outbound) -> Result<(), TrySendError<Outbound>> {
        let (n, frames) = size(&item);
        if n > 0 {
            let before = self.held.bytes.fetch_add(n, Ordering::AcqRel);
            if before > 0 && before + n > self.max_bytes {
                self.held.bytes.fetch_sub(n, Ordering::AcqRel);
                return Err(TrySendError::Full(item));
            }
        }
        if frames > 1 {
            // Single frames are bounded by the channel's slots, batches by
            // their frames: together, at most the depth (each batch counted
            // once more as its slot, which errs on the safe side).
            let items = self.max_frames - self.tx.capacity();
            let before = self.held.frames.fetch_add(frames, Ordering::AcqRel) + items;
            if before > 0 && before + frames > self.max_frames {
                self.held.frames.fetch_sub(frames, Ordering::AcqRel);
                self.held.bytes.fetch_sub(n, Ordering::AcqRel);
                return Err(TrySendError::Full(item));
            }
        }
        match self.tx.try_send(item) {
            Ok(()) => {
                account(n as isize);
                Ok(())
            }
            Err(e) => {
                self.held.bytes.fetch_sub(n, Ordering::AcqRel);
                if frames > 1 {
                    self.held.frames.fetch_sub(frames, Ordering::AcqRel);
                }
                Err(e)
            }
        }
    }
}

/// The receiving side: the socket's writer.
#[derive(Debug)]
pub struct QueueRx {
    rx: mpsc::Receiver<Outbound>,
    held: Arc<Held>,
}

impl QueueRx {
    pub async fn recv(&mut self) -> Option<Outbound> {
        let item = self.rx.recv().await?;
        self.taken(&item);
        Some(item)
    }

    pub fn try_recv(&mut self) -> Result<Outbound, TryRecvError> {
        let item = self.rx.try_recv()?;
        self.taken(&item);
        Ok(item)
    }

    fn taken(&self, item: &Outbound) {
        let (n, frames) = size(item);
        self.held.bytes.fetch_sub(n, Ordering::AcqRel);
        if frames > 1 {
            self.held.frames.fetch_sub(frames, Ordering::AcqRel);
        }
        account(-(n as isize));
    }
}

impl Drop for QueueRx {
    /// What is left in the queue when the writer goes is freed with it.
    fn drop(&mut self) {
        self.rx.close();
        while let Ok(item) = self.rx.try_recv() {
            self.taken(&item);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::phoenix::frame::Frame;

    fn frame(n: usize) -> Outbound {
        Outbound::Frame(Frame::from("x".repeat(n)))
    }

    #[test]
    fn a_queue_is_bounded_in_bytes_and_frees_what_is_taken() {
        let (tx, mut rx) = channel(100, 1000);
        assert!(tx.try_send(frame(600)).is_ok());
        assert!(tx.try_send(frame(400)).is_ok());
        assert!(matches!(tx.try_send(frame(1)), Err(TrySendError::Full(_))));
        // A close always gets in.
        assert!(tx.try_send(Outbound::Close(1000, "bye".into())).is_ok());
        assert!(rx.try_recv().is_ok());
        assert!(tx.try_send(frame(600)).is_ok());
        assert!(matches!(tx.try_send(frame(1)), Err(TrySendError::Full(_))));
    }

    #[test]
    fn the_total_is_published_per_64_kib_and_never_read_below_zero() {
        // Other tests on other threads publish too: this thread's own
        // 1 MiB shows, give or take their 64 KiB each.
        let (tx, mut rx) = channel(100, 4 << 20);
        let before = queued_bytes();
        assert!(tx.try_send(frame(1 << 20)).is_ok());
        assert!(queued_bytes() >= before + (1 << 20) - (1 << 19));
        assert!(rx.try_recv().is_ok());
        assert!(queued_bytes() < before + (1 << 19));
        // A removal published before its addition reads as zero.
        account(-(1 << 30));
        assert_eq!(queued_bytes(), 0);
        account(1 << 30);
    }

    fn batch(n: usize, len: usize) -> Outbound {
        Outbound::Frames((0..n).map(|_| Frame::from("x".repeat(len))).collect())
    }

    #[test]
    fn a_batch_counts_as_its_frames_and_bytes() {
        let (tx, mut rx) = channel(10, 1000);
        assert!(tx.try_send(batch(6, 10)).is_ok());
        assert!(tx.try_send(frame(10)).is_ok());
        // 6 + 1 queued: a batch of 4 would make 11 frames.
        assert!(matches!(
            tx.try_send(batch(4, 10)),
            Err(TrySendError::Full(_))
        ));
        assert!(tx.try_send(batch(2, 10)).is_ok());
        assert!(matches!(
            tx.try_send(batch(2, 10)),
            Err(TrySendError::Full(_))
        ));
        // Bytes too: 900 more bytes would pass 1000.
        while rx.try_recv().is_ok() {}
        assert!(tx.try_send(batch(2, 100)).is_ok());
        assert!(matches!(
            tx.try_send(batch(2, 450)),
            Err(TrySendError::Full(_))
        ));
        // An empty queue takes a batch larger than its depth, once.
        while rx.try_recv().is_ok() {}
        assert!(tx.try_send(batch(20, 1)).is_ok());
        assert!(matches!(
            tx.try_send(batch(2, 1)),
            Err(TrySendError::Full(_))
        ));
        assert!(rx.try_recv().is_ok());
        assert!(tx.try_send(batch(10, 1)).is_ok());
    }

    #[test]
    fn one_frame_over_the_bytes_gets_into_an_empty_queue() {
        let (tx, mut rx) = channel(100, 1000);
        assert!(tx.try_send(frame(5000)).is_ok());
        assert!(matches!(tx.try_send(frame(1)), Err(TrySendError::Full(_))));
        assert!(rx.try_recv().is_ok());
        assert!(tx.try_send(frame(10)).is_ok());
    }
}
