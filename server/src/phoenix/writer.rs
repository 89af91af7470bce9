//! The writer of one socket: drains the socket's queue into the WebSocket.
//!
//! Owns the write half of the connection: batching frames into one flush,
//! the close frame that ends a socket (asked for by the session, by the hub
//! for a slow consumer, or by a shutdown), and the bounds on how long a
//! client that does not read can hold a closing socket. Must not read from
//! the client or decide what is sent: the session and the hub queue it.

use std::time::Duration;

use futures::SinkExt;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use tokio_tungstenite::tungstenite::protocol::CloseFrame;
use tokio_tungstenite::tungstenite::{self, Message};
use tokio_util::sync::CancellationToken;

use crate::hub::{Outbound, QueueRx, WriterGuard};
use crate::metrics::METRICS;
use crate::phoenix::close;
use crate::phoenix::session::WebSocket;

/// Frames written before one flush: amortizes the syscall without delaying
/// the first frame of a burst.
const WRITE_BATCH: usize = 256;

/// How long a shutdown lets a writer send what is queued for its socket.
const SHUTDOWN_DRAIN: Duration = Duration::from_secs(5);

/// How long a writer that is closing its socket waits for the client to take
/// the close frame. A client that stopped reading never does: past this its
/// connection is dropped, and with it the frames queued for it.
const CLOSE_GRACE: Duration = Duration::from_secs(5);

/// The write half of a socket.
pub(super) type Sink = futures::stream::SplitSink<WebSocket, Message>;

/// How a writer's draining of its queue ended.
enum Ending {
    /// The session or the hub asked for this close frame.
    Close(Message),
    /// Every sender is gone: the session ended.
    QueueEnded,
    /// The connection failed.
    Broken,
}

/// Writes what is queued for the socket until the queue ends or a close is
/// asked for, then closes the WebSocket (bounded in time).
pub(super) async fn write_loop(
    mut sink: Sink,
    mut rx: QueueRx,
    cancel: CancellationToken,
    shutdown: CancellationToken,
    _guard: WriterGuard,
) {
    // On shutdown the hub queues a 1001 close behind the frames already
    // queued, so they go out first; a writer still stuck after SHUTDOWN_DRAIN
    // (a client that does not read) is closed anyway.
    let stuck = async {
        shutdown.cancelled().await;
        tokio::time::sleep(SHUTDOWN_DRAIN).await;
    };
    // The hub's cancel interrupts a write that is blocked on a client that
    // does not read, so a slow consumer is closed at once.
    let ending = tokio::select! {
        biased;
        _ = cancel.cancelled() => Ending::Close(
            if shutdown.is_cancelled() {
                close_message(close::GOING_AWAY, close::SHUTTING_DOWN)
            } else {
                close_message(close::SLOW_CONSUMER, close::QUEUE_FULL)
            },
        ),
        _ = stuck => Ending::Close(close_message(close::GOING_AWAY, close::SHUTTING_DOWN)),
        ending = drain(&mut sink, &mut rx) => ending,
    };
    let finished = match ending {
        Ending::Close(close) => tokio::time::timeout(CLOSE_GRACE, sink.send(close)).await,
        Ending::QueueEnded => tokio::time::timeout(CLOSE_GRACE, sink.close()).await,
        Ending::Broken => return,
    };
    if finished.is_err() {
        tracing::info!(
            "dropped a connection whose client did not take its close frame within {CLOSE_GRACE:?}"
        );
    }
}

/// Writes queued frames, batching up to [`WRITE_BATCH`] per flush, until a
/// close is queued or the queue ends.
async fn drain(sink: &mut Sink, rx: &mut QueueRx) -> Ending {
    loop {
        let Some(mut item) = rx.recv().await else {
            return Ending::QueueEnded;
        };
        let mut n = 0;
        loop {
            match item {
                Outbound::Frame(frame) => {
                    if !feed(sink, Message::Text(frame)).await {
                        return Ending::Broken;
                    }
                }
                Outbound::Binary(bytes) => {
                    if !feed(sink, Message::Binary(bytes)).await {
                        return Ending::Broken;
                    }
                }
                Outbound::Frames(frames) => {
                    n += frames.len().saturating_sub(1);
                    for frame in frames {
                        if !feed(sink, Message::Text(frame)).await {
                            return Ending::Broken;
                        }
                    }
                }
                Outbound::Run(run) => {
                    n += run.frames().len().saturating_sub(1);
                    for frame in run.frames() {
                        if !feed(sink, Message::Text(frame.clone())).await {
                            return Ending::Broken;
                        }
                    }
                }
                Outbound::Close(code, reason) => {
                    return Ending::Close(close_message(code, reason));
                }
            }
            n += 1;
            if n >= WRITE_BATCH {
                break;
            }
            match rx.try_recv() {
                Ok(next) => item = next,
                Err(_) => break,
            }
        }
        if sink.flush().await.is_err() {
            return Ending::Broken;
        }
    }
}

/// Queues one frame on the sink and counts it; false when the socket is
/// gone.
async fn feed(sink: &mut Sink, message: Message) -> bool {
    let len = message.len() as u64;
    if sink.feed(message).await.is_err() {
        return false;
    }
    METRICS.messages_sent.inc();
    METRICS.bytes_sent.inc_by(len);
    true
}

fn close_message(code: u16, reason: impl Into<tungstenite::Utf8Bytes>) -> Message {
    Message::Close(Some(CloseFrame {
        code: CloseCode::from(code),
        reason: reason.into(),
    }))
}
