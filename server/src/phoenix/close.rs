//! Every WebSocket close code the server sends, and the close reasons that
//! more than one module writes, in one place.
//!
//! Owns the numbers (RFC 6455, section 7.4.1) and the rule that a reason
//! fits a close frame. Must not decide when a socket is closed: the session,
//! the writer and the hub do, and name the code from here.

/// 1000, normal closure: the client sent nothing, not even a heartbeat, for
/// the idle timeout.
pub const NORMAL: u16 = 1000;

/// 1001, going away: the server is shutting down.
pub const GOING_AWAY: u16 = 1001;

/// 1002, protocol error: a frame that breaks RFC 6455 (e.g. a reserved bit
/// set).
pub const PROTOCOL_ERROR: u16 = 1002;

/// 1003, unsupported data: a binary frame the server cannot read (any on
/// vsn 1.0.0, an unknown kind, one cut short).
pub const UNSUPPORTED_DATA: u16 = 1003;

/// 1007, invalid payload data: a text frame that is not UTF-8, not JSON, or
/// not a Phoenix message.
pub const INVALID_PAYLOAD: u16 = 1007;

/// 1009, message too big: a frame over `MAX_FRAME_BYTES`.
pub const MESSAGE_TOO_BIG: u16 = 1009;

/// 1013, try again later: the socket's send queue overflowed (a slow
/// consumer); the client reconnects.
pub const SLOW_CONSUMER: u16 = 1013;

/// The reason sent with [`GOING_AWAY`].
pub const SHUTTING_DOWN: &str = "server shutting down";

/// The reason sent with [`SLOW_CONSUMER`].
pub const QUEUE_FULL: &str = "slow consumer: the send queue is full; reconnect";

/// The longest reason a close frame carries: a control frame holds 125
/// bytes, two of them the code.
pub const MAX_REASON_BYTES: usize = 123;

/// `reason` cut to [`MAX_REASON_BYTES`] on a character boundary.
pub fn truncate_reason(reason: &str) -> String {
    let mut end = reason.len().min(MAX_REASON_BYTES);
    while !reason.is_char_boundary(end) {
        end -= 1;
    }
    reason[..end].to_string()
}

/// The longest part of a client's input an error reply echoes.
pub const MAX_ECHO_BYTES: usize = 100;

/// `input` quoted as a Rust string literal, cut to [`MAX_ECHO_BYTES`] on a
/// character boundary with `…` and its length when longer: an error reply
/// names what was wrong without sending a megabyte back.
pub fn quoted(input: &str) -> String {
    if input.len() <= MAX_ECHO_BYTES {
        return format!("{input:?}");
    }
    let mut end = MAX_ECHO_BYTES;
    while !input.is_char_boundary(end) {
        end -= 1;
    }
    format!("{:?}… ({} bytes)", &input[..end], input.len())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_echoed_input_is_quoted_and_cut() {
        assert_eq!(quoted("ev"), "\"ev\"");
        let long = "x".repeat(5000);
        let q = quoted(&long);
        assert_eq!(q, format!("{:?}… (5000 bytes)", "x".repeat(100)));
    }

    #[test]
    fn a_reason_is_cut_to_a_control_frame_on_a_character_boundary() {
        assert_eq!(truncate_reason("short"), "short");
        let long = "é".repeat(100); // 200 bytes
        let cut = truncate_reason(&long);
        assert_eq!(cut.len(), 122, "61 two-byte characters, not half of one");
        assert!(long.starts_with(&cut));
    }
}
