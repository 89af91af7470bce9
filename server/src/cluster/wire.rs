//! The cluster's messages as they travel on the bus: one PostgreSQL
//! `NOTIFY` payload each, or several for a message over the payload limit.
//!
//! A payload is a one-line header and a body:
//!
//! ```text
//! rt1 <kind> <node> <seq> <chunk> <chunks>\n<body>
//! ```
//!
//! `node` is the sender's id (16 hex digits), `seq` counts every message the
//! sender published (a receiver that sees a gap knows it missed some),
//! `chunk`/`chunks` number the pieces of a body too large for one `NOTIFY`
//! (PostgreSQL refuses payloads of 8000 bytes or more). All pieces of a
//! message are notified in one transaction, which PostgreSQL delivers
//! together and in order; the receiver joins them. The body is JSON whose
//! shape depends on the kind (see [`super::Cluster`]). Owns only the text
//! form: knows nothing of the connection or of presence.

use std::collections::HashMap;
use std::fmt;

/// Largest `NOTIFY` payload this module produces, header included, in bytes
/// (PostgreSQL's limit is 7999, "shorter than 8000 bytes"; a margin keeps us
/// clear of any encoding difference).
pub const MAX_PAYLOAD: usize = 7900;

/// The header's first word: the version of this format.
const MAGIC: &str = "rt1";

/// A node (server process) of the cluster: random for each process.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct NodeId(pub u64);

impl NodeId {
    /// A fresh random id (the standard library's per-process random hash
    /// keys, mixed with the process id and the clock).
    pub fn random() -> NodeId {
        use std::hash::{BuildHasher, Hasher};
        let mut h = std::collections::hash_map::RandomState::new().build_hasher();
        h.write_u32(std::process::id());
        h.write_u128(
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map(|d| d.as_nanos())
                .unwrap_or(0),
        );
        NodeId(h.finish())
    }

    fn parse(s: &str) -> Option<NodeId> {
        if s.len() != 16 {
            return None;
        }
        u64::from_str_radix(s, 16).ok().map(NodeId)
    }
}

impl fmt::Display for NodeId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:016x}", self.0)
    }
}

impl fmt::Debug for NodeId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(self, f)
    }
}

/// What a message is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// An event for the members of a topic (a broadcast).
    Relay,
    /// Presence joins and leaves of the sender's own sockets on one topic.
    Delta,
    /// "I am alive"; carries nothing but the sequence number.
    Heartbeat,
    /// "Send me your full presence state" (to everyone, or to one node).
    SyncRequest,
    /// The sender's full presence state.
    State,
    /// The sender is shutting down: its presences leave now.
    Bye,
}

impl Kind {
    fn as_str(self) -> &'static str {
        match self {
            Kind::Relay => "r",
            Kind::Delta => "d",
            Kind::Heartbeat => "hb",
            Kind::SyncRequest => "sr",
            Kind::State => "st",
            Kind::Bye => "bye",
        }
    }

    fn parse(s: &str) -> Option<Kind> {
        Some(match s {
            "r" => Kind::Relay,
            "d" => Kind::Delta,
            "hb" => Kind::Heartbeat,
            "sr" => Kind::SyncRequest,
            "st" => Kind::State,
            "bye" => Kind::Bye,
            _ => return None,
        })
    }
}

/// One whole message, as sent or as joined again from its pieces.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Envelope {
    pub kind: Kind,
    pub node: NodeId,
    pub seq: u64,
    pub body: String,
}

impl Envelope {
    /// The `NOTIFY` payloads of this message, each under [`MAX_PAYLOAD`]
    /// bytes, cut at character boundaries.
    pub fn payloads(&self) -> Vec<String> {
        // The longest header: the counts are at most 20 digits each.
        let room = MAX_PAYLOAD - (MAGIC.len() + 4 + 16 + 3 * 21 + 2);
        let mut pieces: Vec<&str> = Vec::new();
        let mut rest = self.body.as_str();
        loop {
            if rest.len() <= room {
                pieces.push(rest);
                break;
            }
            let mut cut = room;
            while !rest.is_char_boundary(cut) {
                cut -= 1;
            }
            pieces.push(&rest[..cut]);
            rest = &rest[cut..];
        }
        let n = pieces.len();
        pieces
            .into_iter()
            .enumerate()
            .map(|(i, piece)| {
                format!(
                    "{MAGIC} {} {} {} {i} {n}\n{piece}",
                    self.kind.as_str(),
                    self.node,
                    self.seq
                )
            })
            .collect()
    }
}

/// Why a payload could not be read.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum WireError {
    #[error("not a cluster message (no `rt1` header): {0:.60}")]
    NotOurs(String),
    #[error("bad cluster message header {0:?}")]
    BadHeader(String),
    #[error("message {seq} of node {node}: piece {got} arrived where piece {expected} was expected; the message is dropped")]
    MissingPiece {
        node: NodeId,
        seq: u64,
        expected: usize,
        got: usize,
    },
}

/// A message still missing pieces.
struct Partial {
    kind: Kind,
    seq: u64,
    count: usize,
    body: String,
    next: usize,
}

/// Joins the pieces of messages as they arrive. Pieces of one message come
/// in order and together (one transaction), so at most one message per
/// node is ever partial.
#[derive(Default)]
pub struct Reassembler {
    partial: HashMap<NodeId, Partial>,
}

impl Reassembler {
    /// Reads one payload: a whole message when this was its last piece.
    pub fn push(&mut self, payload: &str) -> Result<Option<Envelope>, WireError> {
        let (header, body) = payload
            .split_once('\n')
            .ok_or_else(|| WireError::NotOurs(payload.to_string()))?;
        let mut words = header.split(' ');
        if words.next() != Some(MAGIC) {
            return Err(WireError::NotOurs(payload.to_string()));
        }
        let bad = || WireError::BadHeader(header.to_string());
        let kind = words.next().and_then(Kind::parse).ok_or_else(bad)?;
        let node = words.next().and_then(NodeId::parse).ok_or_else(bad)?;
        let seq: u64 = words.next().and_then(|w| w.parse().ok()).ok_or_else(bad)?;
        let index: usize = words.next().and_then(|w| w.parse().ok()).ok_or_else(bad)?;
        let count: usize = words.next().and_then(|w| w.parse().ok()).ok_or_else(bad)?;
        if count == 0 || index >= count || words.next().is_some() {
            return Err(bad());
        }
        if count == 1 {
            self.partial.remove(&node);
            return Ok(Some(Envelope {
                kind,
                node,
                seq,
                body: body.to_string(),
            }));
        }
        let expected = match self.partial.get(&node) {
            Some(p) if p.seq == seq => p.next,
            _ => 0,
        };
        if index != expected {
            self.partial.remove(&node);
            return Err(WireError::MissingPiece {
                node,
                seq,
                expected,
                got: index,
            });
        }
        if index == 0 {
            self.partial.insert(
                node,
                Partial {
                    kind,
                    seq,
                    count,
                    body: String::with_capacity(count * MAX_PAYLOAD),
                    next: 0,
                },
            );
        }
        let p = self.partial.get_mut(&node).expect("inserted above");
        p.body.push_str(body);
        p.next += 1;
        if p.next < p.count {
            return Ok(None);
        }
        let p = self.partial.remove(&node).expect("present");
        Ok(Some(Envelope {
            kind: p.kind,
            node,
            seq: p.seq,
            body: p.body,
        }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn envelope(body: String) -> Envelope {
        Envelope {
            kind: Kind::Relay,
            node: NodeId(0xabc),
            seq: 7,
            body,
        }
    }

    #[test]
    fn a_small_message_is_one_payload_and_reads_back() {
        let e = envelope(r#"{"t":"room","e":"broadcast"}"#.into());
        let payloads = e.payloads();
        assert_eq!(payloads.len(), 1);
        assert!(payloads[0].starts_with("rt1 r 0000000000000abc 7 0 1\n"));
        let mut r = Reassembler::default();
        assert_eq!(r.push(&payloads[0]).unwrap(), Some(e));
    }

    #[test]
    fn a_large_message_is_cut_under_the_notify_limit_at_char_boundaries_and_joined() {
        // Multi-byte characters everywhere, so a byte cut would split one.
        let body: String = "é€😀".repeat(5000);
        let e = envelope(body);
        let payloads = e.payloads();
        assert!(payloads.len() > 1, "{} pieces", payloads.len());
        for p in &payloads {
            assert!(p.len() <= MAX_PAYLOAD, "{} bytes", p.len());
        }
        let mut r = Reassembler::default();
        let mut out = None;
        for p in &payloads {
            assert!(out.is_none(), "complete before the last piece");
            out = r.push(p).unwrap();
        }
        assert_eq!(out, Some(e));
    }

    #[test]
    fn a_missing_piece_drops_the_message_with_a_reason() {
        let e = envelope("x".repeat(3 * MAX_PAYLOAD));
        let payloads = e.payloads();
        let mut r = Reassembler::default();
        assert_eq!(r.push(&payloads[0]).unwrap(), None);
        let err = r.push(&payloads[2]).unwrap_err();
        assert!(matches!(
            err,
            WireError::MissingPiece {
                expected: 1,
                got: 2,
                ..
            }
        ));
        // The next whole message still reads.
        let next = envelope("y".into());
        assert_eq!(r.push(&next.payloads()[0]).unwrap(), Some(next));
    }

    #[test]
    fn foreign_and_malformed_payloads_are_refused() {
        let mut r = Reassembler::default();
        assert!(matches!(r.push("hello"), Err(WireError::NotOurs(_))));
        assert!(matches!(
            r.push("rt1 zz 0000000000000abc 1 0 1\n{}"),
            Err(WireError::BadHeader(_))
        ));
        assert!(matches!(
            r.push("rt1 r 0000000000000abc 1 1 1\n{}"),
            Err(WireError::BadHeader(_))
        ));
    }
}
