//! The Phoenix Channels protocol, one file per job:
//!
//! - `frame`: the wire form of a message (serializers 1.0.0 and 2.0.0);
//! - `payloads`: what clients send in a message, as types;
//! - `session`: one socket's read loop, idle timeout and token expiry;
//! - `writer`: one socket's write loop, batching and closing;
//! - `close`: every close code the server sends;
//! - `channel/`: each channel feature (join, postgres_changes, broadcast,
//!   presence, access_token) in its own file; `channel/mod.rs` routes a
//!   message to its feature.

mod channel;
pub mod close;
pub mod frame;
pub mod payloads;
pub mod session;
mod writer;

/// Why a broadcast asking to be stored (realtime-js's `persist`, on a socket
/// or over HTTP) is refused: nothing is stored, so nothing could be
/// replayed.
pub const NO_PERSIST: &str = "persist is not supported: this server stores no broadcast \
     (nothing to replay later); send it without persist";
