//! Text frames as any client may send them, through the server's decoder of
//! both serializers (`Inbound::decode`, vsn 1.0.0 objects and 2.0.0 arrays),
//! then through the payload parser of the events whose payload the server
//! reads (`phx_join`, `access_token`, `presence`), as the socket does.
//!
//! Beyond "no panic": a decoded message has a topic and an event, and the
//! server's own encoding of it decodes back to the same message, so what a
//! client sent is what the server relays (vsn 1.0.0 carries no join_ref in
//! what the server sends).
#![no_main]

use libfuzzer_sys::fuzz_target;
use realtime_server::phoenix::frame::{encode, Inbound, Vsn};
use realtime_server::phoenix::payloads::{
    self, AccessTokenPayload, JoinPayload, PayloadError, PresencePush,
};
use serde_json::value::RawValue;

fuzz_target!(|data: &[u8]| {
    // A text frame that is not UTF-8 is refused before it is decoded.
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    for vsn in [Vsn::V1, Vsn::V2] {
        let Ok(m) = Inbound::decode(vsn, text) else {
            continue;
        };
        assert!(!m.topic.is_empty(), "{vsn:?} {text:?}: empty topic");
        assert!(!m.event.is_empty(), "{vsn:?} {text:?}: empty event");
        round_trip(vsn, text, &m);
        parse_payload(&m);
    }
});

/// The message encoded by the server decodes to the same message.
fn round_trip(vsn: Vsn, text: &str, m: &Inbound) {
    let encoded = encode(
        vsn,
        m.join_ref.as_deref(),
        m.msg_ref.as_deref(),
        &m.topic,
        &m.event,
        m.payload.get(),
    );
    let back = Inbound::decode(vsn, &encoded)
        .unwrap_or_else(|e| panic!("{vsn:?} {text:?} re-encoded as {encoded:?} is refused: {e}"));
    let context = || format!("{vsn:?} {text:?} re-encoded as {encoded:?}");
    assert_eq!(back.topic, m.topic, "{}", context());
    assert_eq!(back.event, m.event, "{}", context());
    assert_eq!(back.payload.get(), m.payload.get(), "{}", context());
    assert_eq!(raw(&back.msg_ref), raw(&m.msg_ref), "{}", context());
    let join_ref = match vsn {
        Vsn::V1 => None,
        Vsn::V2 => raw(&m.join_ref),
    };
    assert_eq!(raw(&back.join_ref), join_ref, "{}", context());
}

/// What the channel features parse: an error names the event.
fn parse_payload(m: &Inbound) {
    let named = |r: Result<(), PayloadError>, event: &str| {
        if let Err(e) = r {
            let text = e.to_string();
            assert!(
                text.starts_with(&format!("invalid {event} payload")),
                "{text}"
            );
        }
    };
    match m.event.as_str() {
        "phx_join" => named(
            payloads::parse::<JoinPayload>("join", &m.payload).map(|_| ()),
            "join",
        ),
        "access_token" => named(
            payloads::parse::<AccessTokenPayload>("access_token", &m.payload).map(|_| ()),
            "access_token",
        ),
        "presence" => named(
            payloads::parse::<PresencePush>("presence", &m.payload).map(|_| ()),
            "presence",
        ),
        _ => {}
    }
}

fn raw(r: &Option<Box<RawValue>>) -> Option<&str> {
    r.as_deref().map(RawValue::get)
}
