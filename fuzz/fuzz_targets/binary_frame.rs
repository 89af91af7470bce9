//! Binary frames as any client may send them, through the server's decoder
//! (`Inbound::decode_binary`): realtime-js 2.x sends its `broadcast` pushes
//! this way (a user broadcast push: kind 3, five field lengths, the payload
//! encoding (0 bytes, 1 JSON), the fields, the metadata, the payload).
//!
//! Beyond "no panic": vsn 1.0.0 refuses every binary frame; a decoded frame
//! is the `broadcast` message its JSON form would have been, with a payload
//! `{"type":"broadcast","event":E,"payload":P}` (without P, and the bytes
//! beside it, for a binary payload); metadata is a JSON object; the same
//! frame built again from that message decodes to the same message; and a
//! JSON payload's message sent as a vsn 2.0.0 text frame decodes to the
//! same message too.
#![no_main]

use libfuzzer_sys::fuzz_target;
use realtime_server::phoenix::frame::{encode, Inbound, Vsn};
use serde_json::value::RawValue;

/// `{"type":"broadcast","event":E,"payload":P}`, P kept as its text.
#[derive(serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct BroadcastPayload {
    #[serde(rename = "type")]
    kind: String,
    event: String,
    /// Absent for bytes; a JSON `null` is a payload too (hence not an
    /// `Option`, which would read `null` as absent).
    #[serde(default, deserialize_with = "present")]
    payload: Option<Box<RawValue>>,
}

fn present<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Option<Box<RawValue>>, D::Error> {
    <Box<RawValue> as serde::Deserialize>::deserialize(d).map(Some)
}

fuzz_target!(|data: &[u8]| {
    assert!(
        Inbound::decode_binary(Vsn::V1, data).is_err(),
        "vsn 1.0.0 decoded the binary frame {data:?}"
    );
    let Ok(m) = Inbound::decode_binary(Vsn::V2, data) else {
        return;
    };
    assert!(!m.topic.is_empty(), "{data:?}: empty topic");
    assert_eq!(m.event, "broadcast", "{data:?}");

    // The payload the JSON form carries, with the user's payload as sent.
    let payload: BroadcastPayload = serde_json::from_str(m.payload.get()).unwrap_or_else(|e| {
        panic!(
            "{data:?}: the payload {} is not a broadcast: {e}",
            m.payload
        )
    });
    assert_eq!(payload.kind, "broadcast", "{data:?}");
    let user_event = payload.event.as_str();
    // JSON payloads are in the message; bytes beside it, under the same
    // event name.
    let (encoding, user_payload): (u8, &[u8]) = match (&payload.payload, &m.binary) {
        (Some(p), None) => (1, p.get().as_bytes()),
        (None, Some(b)) => {
            assert_eq!(b.event, user_event, "{data:?}");
            (0, &b.data)
        }
        (p, b) => panic!("{data:?}: payload {p:?} and binary payload {b:?}"),
    };
    let meta = m.meta.as_ref().map_or("", |m| m.get());
    if let Some(meta) = &m.meta {
        assert!(
            serde_json::from_str::<std::collections::BTreeMap<String, Box<RawValue>>>(meta.get())
                .is_ok(),
            "{data:?}: metadata {meta} is not a JSON object"
        );
    }

    // The same push, as realtime-js would encode it again: it decodes to the
    // same message.
    let join_ref = unquote(&m.join_ref);
    let msg_ref = unquote(&m.msg_ref);
    let mut again = vec![
        3,
        len(&join_ref),
        len(&msg_ref),
        len(&m.topic),
        len(user_event),
        len(meta),
        encoding,
    ];
    for field in [&join_ref, &msg_ref, &m.topic, user_event, meta] {
        again.extend_from_slice(field.as_bytes());
    }
    again.extend_from_slice(user_payload);
    let back = Inbound::decode_binary(Vsn::V2, &again)
        .unwrap_or_else(|e| panic!("{data:?} rebuilt as {again:?} is refused: {e}"));
    assert_same(&m, &back, &format!("{data:?} rebuilt as {again:?}"));
    assert_eq!(raw(&m.meta), raw(&back.meta), "{data:?} rebuilt as {again:?}");

    // Its JSON form, as a text frame of vsn 2.0.0 (bytes have none).
    if m.binary.is_some() {
        return;
    }
    let text = encode(
        Vsn::V2,
        m.join_ref.as_deref(),
        m.msg_ref.as_deref(),
        &m.topic,
        &m.event,
        m.payload.get(),
    );
    let json = Inbound::decode(Vsn::V2, &text)
        .unwrap_or_else(|e| panic!("{data:?} as the text frame {text:?} is refused: {e}"));
    assert_same(&m, &json, &format!("{data:?} as the text frame {text:?}"));
});

/// A ref as the client sent it: the decoder turns it into a JSON string.
fn unquote(r: &Option<Box<RawValue>>) -> String {
    r.as_ref().map_or_else(String::new, |r| {
        serde_json::from_str(r.get()).unwrap_or_else(|e| panic!("the ref {r} is not a string: {e}"))
    })
}

fn len(field: &str) -> u8 {
    u8::try_from(field.len()).expect("a field read with a one-byte length fits one")
}

fn raw(r: &Option<Box<RawValue>>) -> Option<String> {
    r.as_ref().map(|r| r.get().to_string())
}

fn assert_same(a: &Inbound, b: &Inbound, context: &str) {
    assert_eq!(a.topic, b.topic, "{context}");
    assert_eq!(a.event, b.event, "{context}");
    assert_eq!(raw(&a.join_ref), raw(&b.join_ref), "{context}");
    assert_eq!(raw(&a.msg_ref), raw(&b.msg_ref), "{context}");
    assert_eq!(a.payload.get(), b.payload.get(), "{context}");
    assert_eq!(a.binary, b.binary, "{context}");
}
