//! Phoenix Channels frames and their two serializers.
//!
//! Owns the wire form of one message: `vsn=1.0.0` sends a JSON object
//! `{"topic","event","payload","ref"}`, `vsn=2.0.0` a JSON array
//! `[join_ref, ref, topic, event, payload]`, and realtime-js 2.1xx's binary
//! frames on `vsn=2.0.0`: the user broadcast push it sends (kind 3, with a
//! JSON or a binary payload) and the user broadcast it reads (kind 4, for a
//! binary payload). Refs are echoed exactly as the client sent them
//! (phoenix.js sends strings). Knows nothing of channels.

use serde_json::value::RawValue;

use crate::change::push_json_str;

/// One encoded text frame: UTF-8 bytes behind a reference count, the type
/// the WebSocket layer writes. A change's frame is encoded once and every
/// socket that receives it shares these bytes.
pub type Frame = tokio_tungstenite::tungstenite::Utf8Bytes;

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
    /// The payload as sent (checked to be JSON): each event's handler
    /// parses what it reads into its type (`payloads`); a broadcast is
    /// relayed as is. `null` when the frame has none.
    pub payload: Box<RawValue>,
    /// A binary frame's user broadcast whose payload is bytes (encoding 0):
    /// `payload` then names its event and carries no payload.
    pub binary: Option<BinaryPayload>,
    /// A binary frame's metadata, a JSON object (realtime-js sends
    /// `{"persist": ...}` there); `None` for a text frame.
    pub meta: Option<Box<RawValue>>,
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
    payload: Option<Box<RawValue>>,
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
    Option<Box<RawValue>>,
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

/// JSON `null`, for a frame without a payload.
fn null() -> Box<RawValue> {
    RawValue::from_string("null".into()).expect("null is JSON")
}

impl Inbound {
    pub fn decode(vsn: Vsn, text: &str) -> Result<Inbound, FrameError> {
        let (join_ref, msg_ref, topic, event, payload) = match vsn {
            Vsn::V1 => {
                // serde would read an array into the struct field by field.
                if text.trim_start().starts_with('[') {
                    return Err(FrameError(
                        "a JSON array is a vsn=2.0.0 frame; vsn=1.0.0 takes an object \
                         {topic, event, payload, ref}"
                            .into(),
                    ));
                }
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
            payload: payload.unwrap_or_else(null),
            binary: None,
            meta: None,
        })
    }
}

fn raw(r: Option<&RawValue>) -> &str {
    r.map(RawValue::get).unwrap_or("null")
}

/// The binary frame kinds of realtime-js 2.x's serializer (vsn 2.0.0):
/// the newest clients send `broadcast` pushes as kind 3, and read kind 4
/// (a user broadcast) for a broadcast whose payload is binary.
const USER_BROADCAST_PUSH: u8 = 3;
const USER_BROADCAST: u8 = 4;
/// The payload encodings of kinds 3 and 4.
const BINARY_ENCODING: u8 = 0;
const JSON_ENCODING: u8 = 1;

/// The most bytes a binary frame gives a name (topic, event, refs,
/// metadata): its length is one byte.
pub const MAX_BINARY_FIELD_BYTES: usize = u8::MAX as usize;

/// A user broadcast whose payload is bytes, not JSON: relayed as sent, as a
/// kind 4 frame to binary-capable (vsn 2.0.0) members.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BinaryPayload {
    /// The user's event name (at most [`MAX_BINARY_FIELD_BYTES`]).
    pub event: String,
    pub data: bytes::Bytes,
}

impl Inbound {
    /// Decodes a binary frame (vsn 2.0.0 only): a user broadcast push, laid
    /// out as kind, the byte lengths of join_ref, ref, topic, event and
    /// metadata, the payload encoding (0 binary, 1 JSON), those fields, then
    /// the payload. It becomes the `broadcast` message the JSON form would
    /// have been; a binary payload is kept in [`Inbound::binary`], the
    /// metadata (a JSON object, e.g. `{"persist":true}`) in
    /// [`Inbound::meta`].
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
        let metadata = field(header[5], "metadata")?;
        let meta = if metadata.is_empty() {
            None
        } else {
            let value: &RawValue = serde_json::from_str(&metadata)
                .map_err(|e| bad(&format!("the metadata is not JSON: {e}")))?;
            if !value.get().trim_start().starts_with('{') {
                return Err(bad("the metadata is not a JSON object"));
            }
            Some(value.to_owned())
        };
        let raw = |s: String| -> Option<Box<RawValue>> {
            (!s.is_empty()).then(|| {
                RawValue::from_string(serde_json::to_string(&s).expect("a string serializes"))
                    .expect("a JSON string is valid JSON")
            })
        };
        if topic.is_empty() {
            return Err(bad("no topic"));
        }
        let (payload, binary) = match header[6] {
            JSON_ENCODING => {
                let user_payload = std::str::from_utf8(rest)
                    .map_err(|_| bad("the payload is not UTF-8"))
                    .and_then(|text| {
                        serde_json::from_str::<&RawValue>(text)
                            .map_err(|e| bad(&format!("the payload is not JSON: {e}")))
                    })?;
                (broadcast_payload(&event, Some(user_payload)), None)
            }
            BINARY_ENCODING => (
                broadcast_payload(&event, None),
                Some(BinaryPayload {
                    event,
                    data: bytes::Bytes::copy_from_slice(rest),
                }),
            ),
            other => {
                return Err(bad(&format!(
                    "payload encoding {other} is not supported (0 binary, 1 JSON)"
                )))
            }
        };
        Ok(Inbound {
            join_ref: raw(join_ref),
            msg_ref: raw(msg_ref),
            topic,
            event: "broadcast".into(),
            payload,
            binary,
            meta,
        })
    }
}

/// `{"type":"broadcast","event":E,"payload":P}`, the payload of the JSON
/// form of a user broadcast push, with P as sent; without P for a binary
/// payload (which travels beside it).
fn broadcast_payload(event: &str, payload: Option<&RawValue>) -> Box<RawValue> {
    let len = payload.map_or(0, |p| p.get().len());
    let mut out = String::with_capacity(len + event.len() + 48);
    out.push_str("{\"type\":\"broadcast\",\"event\":");
    push_json_str(&mut out, event);
    if let Some(payload) = payload {
        out.push_str(",\"payload\":");
        out.push_str(payload.get());
    }
    out.push('}');
    RawValue::from_string(out).expect("a map of JSON values is JSON")
}

/// The kind 4 frame (a user broadcast) realtime-js 2.x reads for a
/// broadcast with a binary payload: kind, the byte lengths of topic, event
/// and metadata (none), the payload encoding (0, binary), those fields,
/// then the bytes as the sender sent them. `None` when the topic or the
/// event is over [`MAX_BINARY_FIELD_BYTES`], which the frame cannot carry.
pub fn encode_user_broadcast(topic: &str, event: &str, data: &[u8]) -> Option<bytes::Bytes> {
    if topic.len() > MAX_BINARY_FIELD_BYTES || event.len() > MAX_BINARY_FIELD_BYTES {
        return None;
    }
    let mut out = Vec::with_capacity(5 + topic.len() + event.len() + data.len());
    out.extend_from_slice(&[
        USER_BROADCAST,
        topic.len() as u8,
        event.len() as u8,
        0,
        BINARY_ENCODING,
    ]);
    out.extend_from_slice(topic.as_bytes());
    out.extend_from_slice(event.as_bytes());
    out.extend_from_slice(data);
    Some(bytes::Bytes::from(out))
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
) -> Frame {
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
    // The String's buffer becomes the frame without a copy.
    Frame::from(out)
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
        assert!(
            Inbound::decode(Vsn::V1, r#"["realtime:*","phx_join",{},"1"]"#)
                .unwrap_err()
                .0
                .contains("vsn=2.0.0 frame"),
            "v1 takes no arrays, which serde would read field by field"
        );
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
            m.payload.get(),
            r#"{"type":"broadcast","event":"ping","payload":{"n":1}}"#
        );
        assert!(Inbound::decode_binary(Vsn::V1, &b).is_err());
        assert!(Inbound::decode_binary(Vsn::V2, &b[..9]).is_err());
        let mut other = b.clone();
        other[0] = 9;
        assert!(Inbound::decode_binary(Vsn::V2, &other).is_err());
        assert!(m.binary.is_none() && m.meta.is_none());
    }

    /// realtime-js 2.119.1's `send({type: 'broadcast', event: 'blob',
    /// payload: new Uint8Array([0, 255, 1]), persist: true})` on vsn 2.0.0,
    /// byte for byte as its serializer lays it out.
    #[test]
    fn decodes_a_binary_user_broadcast_push_and_its_metadata() {
        let meta = br#"{"persist":true}"#;
        let mut b = vec![3, 1, 2, 13, 4, meta.len() as u8, 0];
        b.extend_from_slice(b"112realtime:room");
        b.extend_from_slice(b"blob");
        b.extend_from_slice(meta);
        b.extend_from_slice(&[0, 255, 1]);
        let m = Inbound::decode_binary(Vsn::V2, &b).unwrap();
        assert_eq!(m.join_ref.unwrap().get(), "\"1\"");
        assert_eq!(m.msg_ref.unwrap().get(), "\"12\"");
        assert_eq!(m.topic, "realtime:room");
        assert_eq!(m.event, "broadcast");
        assert_eq!(m.payload.get(), r#"{"type":"broadcast","event":"blob"}"#);
        let binary = m.binary.unwrap();
        assert_eq!(binary.event, "blob");
        assert_eq!(&binary.data[..], &[0, 255, 1]);
        assert_eq!(m.meta.unwrap().get(), r#"{"persist":true}"#);

        // Metadata is a JSON object or nothing; the encoding 0 or 1.
        let mut bad_meta = vec![3, 0, 0, 1, 1, 3, 0];
        bad_meta.extend_from_slice(b"te[1]");
        let e = Inbound::decode_binary(Vsn::V2, &bad_meta).unwrap_err();
        assert!(e.0.contains("not a JSON object"), "{e}");
        let mut bad_encoding = vec![3, 0, 0, 1, 1, 0, 7];
        bad_encoding.extend_from_slice(b"te");
        let e = Inbound::decode_binary(Vsn::V2, &bad_encoding).unwrap_err();
        assert!(e.0.contains("payload encoding 7"), "{e}");
        // An empty binary payload is a payload.
        let mut empty = vec![3, 0, 0, 1, 1, 0, 0];
        empty.extend_from_slice(b"te");
        let m = Inbound::decode_binary(Vsn::V2, &empty).unwrap();
        assert!(m.binary.unwrap().data.is_empty());
    }

    /// The kind 4 frame realtime-js 2.119.1's `_decodeUserBroadcast` reads:
    /// kind, topic, event and metadata lengths, encoding, then the fields.
    #[test]
    fn encodes_a_binary_user_broadcast() {
        let f = encode_user_broadcast("realtime:room", "blob", &[0, 255, 1]).unwrap();
        let mut want = vec![4, 13, 4, 0, 0];
        want.extend_from_slice(b"realtime:room");
        want.extend_from_slice(b"blob");
        want.extend_from_slice(&[0, 255, 1]);
        assert_eq!(&f[..], &want[..]);
        let long = "x".repeat(256);
        assert!(encode_user_broadcast(&long, "e", b"").is_none());
        assert!(encode_user_broadcast("t", &long, b"").is_none());
        assert!(encode_user_broadcast(&long[..255], &long[..255], b"").is_some());
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

/// Properties of the decoders over arbitrary client input: they never panic,
/// and what the server encodes decodes back to the same message.
#[cfg(test)]
mod properties {
    use super::*;
    use proptest::prelude::*;
    use serde_json::Value;

    /// JSON values without floats (whose text form need not round-trip).
    fn json() -> impl Strategy<Value = Value> {
        let leaf = prop_oneof![
            Just(Value::Null),
            any::<bool>().prop_map(Value::from),
            any::<i64>().prop_map(Value::from),
            any::<String>().prop_map(Value::from),
        ];
        leaf.prop_recursive(3, 24, 4, |inner| {
            prop_oneof![
                prop::collection::vec(inner.clone(), 0..4).prop_map(Value::Array),
                prop::collection::btree_map(any::<String>(), inner, 0..4)
                    .prop_map(|m| Value::Object(m.into_iter().collect())),
            ]
        })
    }

    /// Text made of JSON's punctuation and a few words, to reach deeper into
    /// the decoder than random characters do.
    fn jsonish() -> impl Strategy<Value = String> {
        prop::collection::vec(
            prop_oneof![
                Just("["),
                Just("]"),
                Just("{"),
                Just("}"),
                Just(","),
                Just(":"),
                Just("null"),
                Just("\"topic\""),
                Just("\"event\""),
                Just("\"payload\""),
                Just("\"ref\""),
                Just("\"join_ref\""),
                Just("\"phx_join\""),
                Just("\"realtime:*\""),
                Just("\"\""),
                Just("1"),
                Just("\"\\u0000\""),
                Just("\"\\ud800\""),
            ],
            0..16,
        )
        .prop_map(|parts| parts.concat())
    }

    fn raw_ref(r: &Option<String>) -> Option<Box<RawValue>> {
        r.as_ref()
            .map(|s| RawValue::from_string(serde_json::to_string(s).unwrap()).unwrap())
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(256))]

        #[test]
        fn any_text_decodes_or_is_refused(text in any::<String>()) {
            let _ = Inbound::decode(Vsn::V1, &text);
            let _ = Inbound::decode(Vsn::V2, &text);
        }

        #[test]
        fn json_like_text_decodes_or_is_refused(text in jsonish()) {
            for vsn in [Vsn::V1, Vsn::V2] {
                if let Ok(m) = Inbound::decode(vsn, &text) {
                    prop_assert!(!m.topic.is_empty() && !m.event.is_empty());
                }
            }
        }

        #[test]
        fn any_json_value_decodes_or_is_refused(v in json()) {
            let text = v.to_string();
            for vsn in [Vsn::V1, Vsn::V2] {
                if let Ok(m) = Inbound::decode(vsn, &text) {
                    prop_assert!(!m.topic.is_empty() && !m.event.is_empty());
                }
            }
        }

        #[test]
        fn encoded_frames_decode_to_the_same_message(
            join_ref in proptest::option::of(any::<String>()),
            msg_ref in proptest::option::of(any::<String>()),
            topic in ".+",
            event in ".+",
            payload in json(),
        ) {
            let join = raw_ref(&join_ref);
            let reff = raw_ref(&msg_ref);
            for vsn in [Vsn::V1, Vsn::V2] {
                let text = encode(vsn, join.as_deref(), reff.as_deref(), &topic, &event,
                    &payload.to_string());
                let m = Inbound::decode(vsn, &text).map_err(|e| {
                    TestCaseError::fail(format!("{text}: {e}"))
                })?;
                prop_assert_eq!(&m.topic, &topic);
                prop_assert_eq!(&m.event, &event);
                let got: Value = serde_json::from_str(m.payload.get()).expect("JSON");
                prop_assert_eq!(&got, &payload);
                prop_assert_eq!(m.msg_ref.as_ref().map(|r| r.get()), reff.as_ref().map(|r| r.get()));
                // v1 frames carry no join_ref when the server sends them.
                let want_join = if vsn == Vsn::V2 { join.as_ref().map(|r| r.get()) } else { None };
                prop_assert_eq!(m.join_ref.as_ref().map(|r| r.get()), want_join);
            }
        }

        #[test]
        fn any_bytes_decode_as_binary_or_are_refused(
            bytes in prop::collection::vec(any::<u8>(), 0..64),
            kind_three in any::<bool>(),
        ) {
            let mut bytes = bytes;
            if kind_three && !bytes.is_empty() {
                bytes[0] = USER_BROADCAST_PUSH;
            }
            let _ = Inbound::decode_binary(Vsn::V1, &bytes);
            let _ = Inbound::decode_binary(Vsn::V2, &bytes);
        }

        #[test]
        fn user_broadcast_pushes_decode_to_what_they_carry(
            join_ref in "[0-9]{0,4}",
            msg_ref in "[0-9]{0,4}",
            topic in "\\PC{1,40}",
            event in "\\PC{0,20}",
            persist in proptest::option::of(any::<bool>()),
            payload in json(),
        ) {
            let payload_text = payload.to_string();
            let metadata = persist.map(|p| format!("{{\"persist\":{p}}}")).unwrap_or_default();
            let mut b = vec![
                USER_BROADCAST_PUSH,
                join_ref.len() as u8,
                msg_ref.len() as u8,
                topic.len() as u8,
                event.len() as u8,
                metadata.len() as u8,
                JSON_ENCODING,
            ];
            for f in [&join_ref, &msg_ref, &topic, &event, &metadata, &payload_text] {
                b.extend_from_slice(f.as_bytes());
            }
            let m = Inbound::decode_binary(Vsn::V2, &b)
                .map_err(|e| TestCaseError::fail(e.to_string()))?;
            prop_assert_eq!(&m.topic, &topic);
            prop_assert_eq!(m.event.as_str(), "broadcast");
            let got: Value = serde_json::from_str(m.payload.get()).expect("JSON");
            prop_assert_eq!(
                got,
                serde_json::json!({"type": "broadcast", "event": event, "payload": payload})
            );
            let refs = |r: &Option<Box<RawValue>>| r.as_ref().map(|r| r.get().to_string());
            let want = |s: &str| (!s.is_empty()).then(|| format!("\"{s}\""));
            prop_assert_eq!(refs(&m.join_ref), want(&join_ref));
            prop_assert_eq!(refs(&m.msg_ref), want(&msg_ref));
            prop_assert_eq!(m.meta.as_ref().map(|m| m.get().to_string()), (!metadata.is_empty()).then_some(metadata));
            prop_assert!(m.binary.is_none());
            // Every cut of a valid frame is refused, never mis-read.
            for cut in 0..b.len().saturating_sub(payload_text.len()) {
                prop_assert!(Inbound::decode_binary(Vsn::V2, &b[..cut]).is_err());
            }
        }

        /// A binary payload arrives as sent, and the kind 4 frame that
        /// relays it carries the same topic, event and bytes.
        #[test]
        fn binary_payloads_decode_as_sent_and_relay_as_kind_4(
            topic in "\\PC{1,40}",
            event in "\\PC{0,20}",
            data in prop::collection::vec(any::<u8>(), 0..64),
        ) {
            let mut b = vec![
                USER_BROADCAST_PUSH, 0, 0, topic.len() as u8, event.len() as u8, 0, BINARY_ENCODING,
            ];
            b.extend_from_slice(topic.as_bytes());
            b.extend_from_slice(event.as_bytes());
            b.extend_from_slice(&data);
            let m = Inbound::decode_binary(Vsn::V2, &b)
                .map_err(|e| TestCaseError::fail(e.to_string()))?;
            let binary = m.binary.expect("a binary payload");
            prop_assert_eq!(&binary.event, &event);
            prop_assert_eq!(&binary.data[..], &data[..]);
            let out = encode_user_broadcast(&m.topic, &binary.event, &binary.data).expect("short names");
            let (t, e) = (out[1] as usize, out[2] as usize);
            prop_assert_eq!((out[0], out[3], out[4]), (USER_BROADCAST, 0, BINARY_ENCODING));
            prop_assert_eq!(&out[5..5 + t], topic.as_bytes());
            prop_assert_eq!(&out[5 + t..5 + t + e], event.as_bytes());
            prop_assert_eq!(&out[5 + t + e..], &data[..]);
        }
    }
}
