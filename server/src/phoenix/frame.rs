//! Phoenix Channels frames and their two serializers.
//!
//! Owns the wire form of one message: `vsn=1.0.0` sends a JSON object
//! `{"topic","event","payload","ref"}`, `vsn=2.0.0` a JSON array
//! `[join_ref, ref, topic, event, payload]`. Refs are echoed exactly as the
//! client sent them (phoenix.js sends strings). Knows nothing of channels.

use std::sync::Arc;

use serde_json::value::RawValue;
use serde_json::Value;

use crate::change::push_json_str;

/// The serializer a socket chose with its `vsn` query parameter.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Vsn {
    V1,
    V2,
}

impl Vsn {
    /// `vsn` from the socket URL: absent or `1.0.0` is V1, `2.0.0` is V2.
    pub fn from_param(vsn: Option<&str>) -> Result<Vsn, String> {
        match vsn {
            None | Some("1.0.0") | Some("1.0") | Some("1") => Ok(Vsn::V1),
            Some("2.0.0") | Some("2.0") | Some("2") => Ok(Vsn::V2),
            Some(other) => Err(format!(
                "unsupported serializer vsn={other:?}: use 1.0.0 or 2.0.0"
            )),
        }
    }
}

/// A message from a client.
#[derive(Debug, Clone)]
pub struct Inbound {
    /// The raw JSON of `join_ref` (v2, or v1 when sent), `None` for null.
    pub join_ref: Option<Box<RawValue>>,
    /// The raw JSON of `ref`, `None` for null.
    pub msg_ref: Option<Box<RawValue>>,
    pub topic: String,
    pub event: String,
    pub payload: Value,
}

/// Why a text frame is not a Phoenix message.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("malformed frame: {0}")]
pub struct FrameError(pub String);

#[derive(serde::Deserialize)]
#[serde(expecting = "an object {topic, event, payload, ref}")]
struct V1Frame {
    topic: Option<String>,
    event: Option<String>,
    #[serde(default)]
    payload: Value,
    #[serde(rename = "ref", default)]
    msg_ref: Option<Box<RawValue>>,
    #[serde(default)]
    join_ref: Option<Box<RawValue>>,
}

#[derive(serde::Deserialize)]
#[serde(expecting = "an array [join_ref, ref, topic, event, payload]")]
struct V2Frame(
    Option<Box<RawValue>>,
    Option<Box<RawValue>>,
    Option<String>,
    Option<String>,
    Value,
);

/// The reason a client reads in the close frame (at most 123 bytes with the
/// `malformed frame: ` prefix): text that is not JSON, or JSON that is not a
/// frame of the socket's serializer, with serde's position.
fn json_error(e: serde_json::Error) -> FrameError {
    if e.is_syntax() || e.is_eof() {
        FrameError(format!("not JSON: {e}"))
    } else {
        FrameError(e.to_string())
    }
}

fn non_null(raw: Option<Box<RawValue>>) -> Option<Box<RawValue>> {
    raw.filter(|r| r.get() != "null")
}

impl Inbound {
    pub fn decode(vsn: Vsn, text: &str) -> Result<Inbound, FrameError> {
        let (join_ref, msg_ref, topic, event, payload) = match vsn {
            Vsn::V1 => {
                let f: V1Frame = serde_json::from_str(text).map_err(json_error)?;
                (f.join_ref, f.msg_ref, f.topic, f.event, f.payload)
            }
            Vsn::V2 => {
                let V2Frame(join_ref, msg_ref, topic, event, payload) =
                    serde_json::from_str(text).map_err(json_error)?;
                (join_ref, msg_ref, topic, event, payload)
            }
        };
        let topic = topic
            .filter(|t| !t.is_empty())
            .ok_or_else(|| FrameError("no topic".into()))?;
        let event = event
            .filter(|e| !e.is_empty())
            .ok_or_else(|| FrameError(format!("no event (topic {topic:?})")))?;
        Ok(Inbound {
            join_ref: non_null(join_ref),
            msg_ref: non_null(msg_ref),
            topic,
            event,
            payload,
        })
    }
}

fn raw(r: Option<&RawValue>) -> &str {
    r.map(RawValue::get).unwrap_or("null")
}

/// The binary frame kind of realtime-js 2.x's "user broadcast push": the
/// newest clients send `broadcast` pushes on vsn 2.0.0 this way.
const USER_BROADCAST_PUSH: u8 = 3;
const JSON_ENCODING: u8 = 1;

impl Inbound {
    /// Decodes a binary frame (vsn 2.0.0 only): a user broadcast push, laid
    /// out as kind, the byte lengths of join_ref, ref, topic, event and
    /// metadata, the payload encoding, those fields, then the payload. It
    /// becomes the `broadcast` message the JSON form would have been.
    pub fn decode_binary(vsn: Vsn, bytes: &[u8]) -> Result<Inbound, FrameError> {
        let bad = |why: &str| FrameError(format!("binary frame: {why}"));
        if vsn != Vsn::V2 {
            return Err(bad("binary frames need vsn=2.0.0"));
        }
        let header = bytes
            .get(..7)
            .ok_or_else(|| bad("shorter than its header"))?;
        if header[0] != USER_BROADCAST_PUSH {
            return Err(bad(&format!(
                "kind {} is not supported (only 3, a user broadcast push)",
                header[0]
            )));
        }
        let mut rest = &bytes[7..];
        let mut field = |len: u8, name: &str| -> Result<String, FrameError> {
            let len = len as usize;
            if rest.len() < len {
                return Err(bad(&format!("{name} is cut short")));
            }
            let (f, r) = rest.split_at(len);
            rest = r;
            String::from_utf8(f.to_vec()).map_err(|_| bad(&format!("{name} is not UTF-8")))
        };
        let join_ref = field(header[1], "join_ref")?;
        let msg_ref = field(header[2], "ref")?;
        let topic = field(header[3], "topic")?;
        let event = field(header[4], "event")?;
        let _metadata = field(header[5], "metadata")?;
        if header[6] != JSON_ENCODING {
            return Err(bad("only JSON payloads are supported (encoding 1)"));
        }
        let user_payload: Value = serde_json::from_slice(rest)
            .map_err(|e| bad(&format!("the payload is not JSON: {e}")))?;
        let raw = |s: String| -> Option<Box<RawValue>> {
            (!s.is_empty()).then(|| {
                RawValue::from_string(serde_json::to_string(&s).expect("a string serializes"))
                    .expect("a JSON string is valid JSON")
            })
        };
        if topic.is_empty() {
            return Err(bad("no topic"));
        }
        Ok(Inbound {
            join_ref: raw(join_ref),
            msg_ref: raw(msg_ref),
            topic,
            event: "broadcast".into(),
            payload: serde_json::json!({"type": "broadcast", "event": event, "payload": user_payload}),
        })
    }
}

/// Encodes one outgoing message. `payload` is JSON text; refs are raw JSON
/// (`None` for null).
pub fn encode(
    vsn: Vsn,
    join_ref: Option<&RawValue>,
    msg_ref: Option<&RawValue>,
    topic: &str,
    event: &str,
    payload: &str,
) -> Arc<str> {
    let mut out = String::with_capacity(payload.len() + topic.len() + event.len() + 48);
    match vsn {
        Vsn::V1 => {
            out.push_str("{\"topic\":");
            push_json_str(&mut out, topic);
            out.push_str(",\"event\":");
            push_json_str(&mut out, event);
            out.push_str(",\"payload\":");
            out.push_str(payload);
            out.push_str(",\"ref\":");
            out.push_str(raw(msg_ref));
            out.push('}');
        }
        Vsn::V2 => {
            out.push('[');
            out.push_str(raw(join_ref));
            out.push(',');
            out.push_str(raw(msg_ref));
            out.push(',');
            push_json_str(&mut out, topic);
            out.push(',');
            push_json_str(&mut out, event);
            out.push(',');
            out.push_str(payload);
            out.push(']');
        }
    }
    out.into()
}

/// The payload of a `phx_reply`: `{"status":..., "response":...}`.
pub fn reply_payload(ok: bool, response: &str) -> String {
    format!(
        "{{\"status\":\"{}\",\"response\":{}}}",
        if ok { "ok" } else { "error" },
        response
    )
}

/// `{"reason": reason}` as JSON text.
pub fn reason(reason: &str) -> String {
    let mut out = String::from("{\"reason\":");
    push_json_str(&mut out, reason);
    out.push('}');
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn decodes_v1_objects() {
        let m = Inbound::decode(
            Vsn::V1,
            r#"{"topic":"realtime:*","event":"phx_join","payload":{},"ref":"1"}"#,
        )
        .unwrap();
        assert_eq!(m.topic, "realtime:*");
        assert_eq!(m.event, "phx_join");
        assert_eq!(m.msg_ref.unwrap().get(), "\"1\"");
        assert!(m.join_ref.is_none());
    }

    #[test]
    fn decodes_v2_arrays() {
        let m = Inbound::decode(Vsn::V2, r#"["3","4","phoenix","heartbeat",{}]"#).unwrap();
        assert_eq!(m.join_ref.unwrap().get(), "\"3\"");
        assert_eq!(m.msg_ref.unwrap().get(), "\"4\"");
        let m = Inbound::decode(Vsn::V2, r#"[null,"5","phoenix","heartbeat",{}]"#).unwrap();
        assert!(m.join_ref.is_none());
    }

    #[test]
    fn rejects_what_is_not_a_message() {
        assert!(Inbound::decode(Vsn::V1, "not json").is_err());
        assert!(Inbound::decode(Vsn::V1, r#"{"event":"phx_join"}"#)
            .unwrap_err()
            .0
            .contains("no topic"));
        assert!(Inbound::decode(Vsn::V2, r#"{"topic":"x"}"#).is_err());
        assert!(Inbound::decode(Vsn::V2, r#"[null,null,"t"]"#).is_err());
    }

    #[test]
    fn decodes_a_user_broadcast_push() {
        let mut b = vec![3, 1, 1, 4, 4, 0, 1];
        b.extend_from_slice(b"67room");
        b.extend_from_slice(b"ping");
        b.extend_from_slice(br#"{"n":1}"#);
        let m = Inbound::decode_binary(Vsn::V2, &b).unwrap();
        assert_eq!(m.join_ref.unwrap().get(), "\"6\"");
        assert_eq!(m.msg_ref.unwrap().get(), "\"7\"");
        assert_eq!(m.topic, "room");
        assert_eq!(m.event, "broadcast");
        assert_eq!(
            m.payload,
            serde_json::json!({"type": "broadcast", "event": "ping", "payload": {"n": 1}})
        );
        assert!(Inbound::decode_binary(Vsn::V1, &b).is_err());
        assert!(Inbound::decode_binary(Vsn::V2, &b[..9]).is_err());
        let mut other = b.clone();
        other[0] = 9;
        assert!(Inbound::decode_binary(Vsn::V2, &other).is_err());
    }

    #[test]
    fn encodes_both_forms() {
        let r = RawValue::from_string("\"7\"".into()).unwrap();
        assert_eq!(
            &*encode(Vsn::V1, None, Some(&r), "phoenix", "phx_reply", "{}"),
            r#"{"topic":"phoenix","event":"phx_reply","payload":{},"ref":"7"}"#
        );
        assert_eq!(
            &*encode(Vsn::V2, Some(&r), None, "realtime:*", "INSERT", "{}"),
            r#"["7",null,"realtime:*","INSERT",{}]"#
        );
    }
}
