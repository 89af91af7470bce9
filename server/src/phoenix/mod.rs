//! The Phoenix Channels protocol: frames and their serializers, and the
//! per-socket channel state machine.

pub mod frame;
pub mod socket;
