//! The members of 2.x channels on this server: who receives a topic's
//! broadcasts and presence diffs, and the hand-off of one event to all of
//! them.
//!
//! A topic is a [`TopicKey`] (its name and whether it is private): a
//! private and a public channel of one name share no member. This is the
//! cluster's [`Deliver`]: what arrives from the other servers, and the
//! presence diffs of this server's own tracks, reach the local members
//! here. Owns nothing but the membership; must not decide what is sent
//! (the cluster and the channel features do) nor touch the WebSocket.

use std::collections::HashMap;
use std::sync::RwLock;

use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use super::{Outbound, SocketId};
use crate::authz::authorizer::ChannelRights;
use crate::cluster::{Deliver, TopicKey};
use crate::metrics::METRICS;
use crate::phoenix::frame::{self, Frame, Vsn};

/// One socket's membership of one topic.
pub(super) struct Member {
    pub vsn: Vsn,
    /// Whether it receives its own broadcasts (`broadcast.self`).
    pub self_broadcast: bool,
    pub tx: super::QueueTx,
    /// Cancelled to close the socket as a slow consumer.
    pub cancel: CancellationToken,
    /// What it may receive: everything on a public channel; on a private
    /// channel what its token's role may read of `realtime.messages`
    /// (decided at join, and again on a new token).
    pub reads: ChannelRights,
}

#[derive(Default)]
pub struct Members {
    topics: RwLock<HashMap<TopicKey, HashMap<SocketId, Member>>>,
    /// The socket queue depth, for the slow-consumer log line.
    queue_depth: usize,
}

impl Members {
    pub(super) fn new(queue_depth: usize) -> Members {
        Members {
            topics: RwLock::default(),
            queue_depth,
        }
    }

    pub(super) fn insert(&self, topic: &TopicKey, socket: SocketId, member: Member) {
        self.write()
            .entry(topic.clone())
            .or_default()
            .insert(socket, member);
    }

    pub(super) fn remove(&self, topic: &TopicKey, socket: SocketId) {
        let mut topics = self.write();
        if let Some(m) = topics.get_mut(topic) {
            m.remove(&socket);
            if m.is_empty() {
                topics.remove(topic);
            }
        }
    }

    /// Sends `event` with `payload` to the members of `topic` that may read
    /// it (a private channel's member its broadcasts or its presence, as its
    /// rights say), except `from` unless it asked for its own broadcasts;
    /// each serializer's frame is encoded once. Returns how many sockets it
    /// reached.
    pub fn relay(
        &self,
        topic: &TopicKey,
        from: Option<SocketId>,
        event: &str,
        payload: &str,
    ) -> usize {
        let mut reached = 0;
        let topics = self.read();
        let Some(members) = topics.get(topic) else {
            return 0;
        };
        let mut frames: [Option<Frame>; 2] = [None, None];
        for (&id, m) in members {
            if Some(id) == from && !m.self_broadcast {
                continue;
            }
            if !m.reads.allows(event) {
                continue;
            }
            let frame = frames[m.vsn as usize]
                .get_or_insert_with(|| {
                    frame::encode(m.vsn, None, None, &topic.topic, event, payload)
                })
                .clone();
            self.send(id, m, Outbound::Frame(frame), &mut reached);
        }
        reached
    }

    /// Sends a broadcast whose payload is bytes (`event` is the user's) to
    /// the members of `topic` that may read broadcasts, as
    /// [`Members::relay`] does, as one kind 4 frame encoded once. Members on
    /// vsn 1.0.0 cannot read a binary frame: they are skipped (as Supabase
    /// Realtime skips them) and counted. Returns how many sockets it
    /// reached.
    pub fn relay_binary(
        &self,
        topic: &TopicKey,
        from: Option<SocketId>,
        event: &str,
        data: &[u8],
    ) -> usize {
        let mut reached = 0;
        let topics = self.read();
        let Some(members) = topics.get(topic) else {
            return 0;
        };
        let mut frame: Option<Option<bytes::Bytes>> = None;
        for (&id, m) in members {
            if Some(id) == from && !m.self_broadcast {
                continue;
            }
            if !m.reads.allows("broadcast") {
                continue;
            }
            if m.vsn != Vsn::V2 {
                METRICS.binary_broadcasts_skipped.inc();
                continue;
            }
            let Some(frame) = frame
                .get_or_insert_with(|| frame::encode_user_broadcast(&topic.topic, event, data))
                .clone()
            else {
                // A topic or event over 255 bytes: no member can get it.
                METRICS.binary_broadcasts_skipped.inc();
                continue;
            };
            self.send(id, m, Outbound::Binary(frame), &mut reached);
        }
        reached
    }

    /// Queues `item` for member `id`; a full queue closes it as a slow
    /// consumer.
    fn send(&self, id: SocketId, m: &Member, item: Outbound, reached: &mut usize) {
        match m.tx.try_send(item) {
            Ok(()) => *reached += 1,
            Err(mpsc::error::TrySendError::Full(_)) => {
                if !m.cancel.is_cancelled() {
                    METRICS.slow_consumer_closes.inc();
                    tracing::warn!(
                        socket = id,
                        queue_depth = self.queue_depth,
                        "closing a slow consumer: its send queue is full"
                    );
                    m.cancel.cancel();
                }
            }
            // The socket is going away and leaves its channels itself.
            Err(mpsc::error::TrySendError::Closed(_)) => {}
        }
    }

    fn read(&self) -> std::sync::RwLockReadGuard<'_, HashMap<TopicKey, HashMap<SocketId, Member>>> {
        self.topics.read().unwrap_or_else(|e| e.into_inner())
    }

    fn write(
        &self,
    ) -> std::sync::RwLockWriteGuard<'_, HashMap<TopicKey, HashMap<SocketId, Member>>> {
        self.topics.write().unwrap_or_else(|e| e.into_inner())
    }
}

impl Deliver for Members {
    fn relay(&self, topic: &TopicKey, event: &str, payload: &str) {
        Members::relay(self, topic, None, event, payload);
    }

    fn relay_binary(&self, topic: &TopicKey, event: &str, data: &[u8]) {
        Members::relay_binary(self, topic, None, event, data);
    }
}
