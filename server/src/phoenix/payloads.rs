//! The payloads clients send on a channel, as types: each is parsed once,
//! where its feature receives the message, instead of read field by field.
//!
//! Owns the shapes and how lenient they are, which is as lenient as the
//! clients need and no more: unknown fields are accepted (clients send more
//! than the server reads), `null` means absent, a boolean may also be the
//! string `"true"` or `"false"` (as Supabase Realtime accepts), a presence
//! key may be a string, a number or a boolean. Anything else is refused with
//! a [`PayloadError`] naming the field and what it should be.
//!
//! `broadcast` payloads have no type here: the server reads none of their
//! fields and relays them as sent.
//!
//! Must not act on a payload (the channel features do) nor know the wire
//! form of a frame (`frame` does).

use std::fmt;
use std::marker::PhantomData;

use serde::de::value::MapAccessDeserializer;
use serde::de::{DeserializeOwned, Deserializer, Error as _, MapAccess, Visitor};
use serde::Deserialize;
use serde_json::value::RawValue;
use serde_json::{Map, Value};

/// A payload that is not of the shape its event needs: which event, which
/// field, and why. Its text is the reason of the client's error reply.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid {event} payload: {detail}")]
pub struct PayloadError {
    event: &'static str,
    detail: String,
}

/// Parses the payload of `event` (a name for the error) into `T`. A `null`
/// payload (or none) is `T::default()`.
pub fn parse<T: DeserializeOwned + Default>(
    event: &'static str,
    payload: &RawValue,
) -> Result<T, PayloadError> {
    let mut json = serde_json::Deserializer::from_str(payload.get());
    serde_path_to_error::deserialize::<_, Option<MapOnly<T>>>(&mut json)
        .map(|p| p.map(|p| p.0).unwrap_or_default())
        .map_err(|e| {
            let reason = without_position(e.inner());
            let detail = match e.path().to_string().as_str() {
                "." => reason,
                path => format!("{path}: {reason}"),
            };
            PayloadError { event, detail }
        })
}

/// serde_json's message without its " at line L column C": the field path
/// says where, and a payload is one line of a frame.
fn without_position(e: &serde_json::Error) -> String {
    let text = e.to_string();
    let position = format!(" at line {} column {}", e.line(), e.column());
    match text.strip_suffix(&position) {
        Some(message) => message.to_string(),
        None => text,
    }
}

/// `phx_join`: `{"config": {...}, "access_token": JWT}`. realtime-js 1.x
/// sends no `config` (the topic says what it subscribes to) and may send
/// `user_token`.
#[derive(Debug, Default, Deserialize)]
#[serde(default, expecting = "a map")]
pub struct JoinPayload {
    /// A realtime-js 2.x channel; `None` (absent or null) for a 1.x topic.
    #[serde(deserialize_with = "optional_map")]
    pub config: Option<JoinConfig>,
    pub access_token: Option<String>,
    /// The name older clients give the token.
    pub user_token: Option<String>,
}

impl JoinPayload {
    /// The token the client presents, if any.
    pub fn token(&self) -> Option<&str> {
        token(&self.access_token, &self.user_token)
    }
}

/// `config` of a 2.x join.
#[derive(Debug, Default, Deserialize)]
#[serde(default, expecting = "a map")]
pub struct JoinConfig {
    #[serde(deserialize_with = "map_or_null")]
    pub broadcast: BroadcastConfig,
    #[serde(deserialize_with = "map_or_null")]
    pub presence: PresenceConfig,
    /// A private channel (authorized by RLS on `realtime.messages`):
    /// checked for its type, not yet acted on.
    #[serde(deserialize_with = "flexible_bool")]
    pub private: bool,
    #[serde(deserialize_with = "null_as_default")]
    pub postgres_changes: Vec<BindingRequest>,
    /// How the join waits for its `postgres_changes` bindings (the newest
    /// realtime-js's `postgres_changes_options`).
    #[serde(deserialize_with = "map_or_null")]
    pub postgres_changes_options: PostgresChangesOptions,
}

/// `config.postgres_changes_options`.
#[derive(Debug, Default, Deserialize)]
#[serde(default, expecting = "a map")]
pub struct PostgresChangesOptions {
    /// Hold the join's reply until the bindings are live (and refuse the
    /// join when they cannot be).
    #[serde(deserialize_with = "flexible_bool")]
    pub wait: bool,
    /// How long to hold it, in milliseconds (clamped to the server's
    /// `POSTGRES_CHANGES_WAIT_MAX_MS`); `None`: the client's default.
    #[serde(deserialize_with = "milliseconds")]
    pub timeout: Option<u64>,
}

/// `config.broadcast`.
#[derive(Debug, Default, Deserialize)]
#[serde(default, expecting = "a map")]
pub struct BroadcastConfig {
    /// The sender gets a `phx_reply` ok for each broadcast.
    #[serde(deserialize_with = "flexible_bool")]
    pub ack: bool,
    /// The sender receives its own broadcasts.
    #[serde(rename = "self", deserialize_with = "flexible_bool")]
    pub self_broadcast: bool,
    /// A `system` push once the replication stream is live (and an error,
    /// closing the channel, when it is not in time).
    #[serde(deserialize_with = "flexible_bool")]
    pub replication_ready: bool,
    /// Broadcasts stored before the join to replay (private channels).
    #[serde(deserialize_with = "optional_map")]
    pub replay: Option<ReplayConfig>,
}

/// `config.broadcast.replay`: `{"since": ms since the epoch, "limit": n}`.
#[derive(Debug, Default, Deserialize)]
#[serde(default, expecting = "a map")]
pub struct ReplayConfig {
    #[serde(deserialize_with = "milliseconds")]
    pub since: Option<u64>,
    #[serde(deserialize_with = "milliseconds")]
    pub limit: Option<u64>,
}

/// `config.presence`.
#[derive(Debug, Default, Deserialize)]
#[serde(default, expecting = "a map")]
pub struct PresenceConfig {
    /// The key the socket's presence is tracked under; `None` or empty: the
    /// server makes one up.
    #[serde(deserialize_with = "presence_key")]
    pub key: Option<String>,
    /// Whether this member receives presence (`presence_state` at join,
    /// `presence_diff` after): the newest clients send false unless the
    /// app listens to presence. Absent (older clients): true.
    #[serde(deserialize_with = "optional_bool")]
    pub enabled: Option<bool>,
}

impl PresenceConfig {
    /// Whether the member receives presence.
    pub fn receives(&self) -> bool {
        self.enabled.unwrap_or(true)
    }
}

/// One entry of `config.postgres_changes`:
/// `{"event", "schema", "table", "filter"}`, each a string or absent.
/// Whether they name a real table and a valid filter is decided at the
/// join, against the catalog.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct BindingRequest {
    pub event: Option<String>,
    pub schema: Option<String>,
    pub table: Option<String>,
    pub filter: Option<String>,
    /// The entry as sent, unknown fields included: the join reply echoes it
    /// with its id.
    pub echo: Map<String, Value>,
}

impl<'de> Deserialize<'de> for BindingRequest {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let echo = Map::<String, Value>::deserialize(d)?;
        let text = |name: &str| match echo.get(name) {
            None | Some(Value::Null) => Ok(None),
            Some(Value::String(s)) => Ok(Some(s.clone())),
            Some(other) => Err(D::Error::custom(format!(
                "{name}: expected a string, got {}",
                Shown(other)
            ))),
        };
        Ok(BindingRequest {
            event: text("event")?,
            schema: text("schema")?,
            table: text("table")?,
            filter: text("filter")?,
            echo,
        })
    }
}

/// `presence` push: `{"type": "presence", "event": "track", "payload": META}`
/// or `"event": "untrack"`.
#[derive(Debug, Default, Deserialize)]
#[serde(default, expecting = "a map")]
pub struct PresencePush {
    pub event: Option<String>,
    /// The metadata tracked with the presence.
    #[serde(deserialize_with = "null_as_default")]
    pub payload: Map<String, Value>,
}

/// `access_token` push: `{"access_token": JWT}`; null keeps the token that
/// stands (realtime-js 1.7 sends null after every heartbeat).
#[derive(Debug, Default, Deserialize)]
#[serde(default, expecting = "a map")]
pub struct AccessTokenPayload {
    pub access_token: Option<String>,
    /// The name older clients give the token.
    pub user_token: Option<String>,
}

impl AccessTokenPayload {
    /// The new token, if the push carries one.
    pub fn token(&self) -> Option<&str> {
        token(&self.access_token, &self.user_token)
    }
}

fn token<'a>(access_token: &'a Option<String>, user_token: &'a Option<String>) -> Option<&'a str> {
    access_token.as_deref().or(user_token.as_deref())
}

/// A `T` read from a JSON object only: serde's derived structs would also
/// read an array, field by field.
struct MapOnly<T>(T);

impl<'de, T: Deserialize<'de>> Deserialize<'de> for MapOnly<T> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct MapVisitor<T>(PhantomData<T>);
        impl<'de, T: Deserialize<'de>> Visitor<'de> for MapVisitor<T> {
            type Value = T;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a map")
            }
            fn visit_map<A: MapAccess<'de>>(self, map: A) -> Result<T, A::Error> {
                T::deserialize(MapAccessDeserializer::new(map))
            }
        }
        d.deserialize_map(MapVisitor(PhantomData)).map(MapOnly)
    }
}

/// A map, or null (none).
fn optional_map<'de, D, T>(d: D) -> Result<Option<T>, D::Error>
where
    D: Deserializer<'de>,
    T: Deserialize<'de>,
{
    Option::<MapOnly<T>>::deserialize(d).map(|m| m.map(|m| m.0))
}

/// A map, or null (the default, as an absent field is).
fn map_or_null<'de, D, T>(d: D) -> Result<T, D::Error>
where
    D: Deserializer<'de>,
    T: Deserialize<'de> + Default,
{
    optional_map(d).map(Option::unwrap_or_default)
}

/// `null` is the default, as an absent field is.
fn null_as_default<'de, D, T>(d: D) -> Result<T, D::Error>
where
    D: Deserializer<'de>,
    T: Deserialize<'de> + Default,
{
    Option::<T>::deserialize(d).map(Option::unwrap_or_default)
}

/// `true`, `false`, their strings in any case, or null (false).
fn flexible_bool<'de, D: Deserializer<'de>>(d: D) -> Result<bool, D::Error> {
    match Option::<Value>::deserialize(d)? {
        None => Ok(false),
        Some(Value::Bool(b)) => Ok(b),
        Some(Value::String(s)) if s.eq_ignore_ascii_case("true") => Ok(true),
        Some(Value::String(s)) if s.eq_ignore_ascii_case("false") => Ok(false),
        Some(other) => Err(D::Error::custom(format!(
            "expected true or false, got {}",
            Shown(&other)
        ))),
    }
}

/// [`flexible_bool`], with absent or null as none.
fn optional_bool<'de, D: Deserializer<'de>>(d: D) -> Result<Option<bool>, D::Error> {
    match Option::<Value>::deserialize(d)? {
        None => Ok(None),
        Some(v) => flexible_bool(v).map(Some).map_err(D::Error::custom),
    }
}

/// A whole number that is not negative (a duration in milliseconds, a
/// count), or null (none). A number given as a float with no fraction is
/// taken.
fn milliseconds<'de, D: Deserializer<'de>>(d: D) -> Result<Option<u64>, D::Error> {
    match Option::<Value>::deserialize(d)? {
        None => Ok(None),
        Some(Value::Number(n)) if n.as_u64().is_some() => Ok(n.as_u64()),
        Some(Value::Number(n))
            if n.as_f64()
                .is_some_and(|f| f >= 0.0 && f.fract() == 0.0 && f < 1e18) =>
        {
            Ok(n.as_f64().map(|f| f as u64))
        }
        Some(other) => Err(D::Error::custom(format!(
            "expected a whole number that is not negative, got {}",
            Shown(&other)
        ))),
    }
}

/// A string, a number or a boolean, as text; null is none.
fn presence_key<'de, D: Deserializer<'de>>(d: D) -> Result<Option<String>, D::Error> {
    match Option::<Value>::deserialize(d)? {
        None => Ok(None),
        Some(Value::String(s)) => Ok(Some(s)),
        Some(v @ (Value::Number(_) | Value::Bool(_))) => Ok(Some(v.to_string())),
        Some(other) => Err(D::Error::custom(format!(
            "expected a string, got {}",
            Shown(&other)
        ))),
    }
}

/// A refused value in an error message: scalars as JSON (long strings
/// cut), containers by their kind.
struct Shown<'a>(&'a Value);

impl fmt::Display for Shown<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        const LONGEST: usize = 40;
        match self.0 {
            Value::Array(_) => f.write_str("an array"),
            Value::Object(_) => f.write_str("a map"),
            Value::String(s) if s.chars().count() > LONGEST => {
                let cut: String = s.chars().take(LONGEST).collect();
                write!(f, "{}…", Value::String(cut))
            }
            scalar => write!(f, "{scalar}"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn raw(text: &str) -> Box<RawValue> {
        RawValue::from_string(text.to_string()).expect("valid JSON")
    }

    fn join(text: &str) -> Result<JoinPayload, String> {
        parse("join", &raw(text)).map_err(|e| e.to_string())
    }

    #[test]
    fn reads_what_realtime_js_2_sends_and_ignores_what_it_does_not_know() {
        let p = join(
            r#"{"config": {"broadcast": {"ack": true, "self": false, "replay": {"since": 1}},
                "presence": {"key": "alice", "enabled": true}, "private": false,
                "postgres_changes": [{"event": "INSERT", "schema": "public", "table": "m",
                                      "filter": "id=eq.1", "extra": [1]}]},
               "access_token": "jwt", "version": "2.11.0"}"#,
        )
        .unwrap();
        assert_eq!(p.token(), Some("jwt"));
        let c = p.config.unwrap();
        assert!(c.broadcast.ack && !c.broadcast.self_broadcast);
        assert_eq!(c.presence.key.as_deref(), Some("alice"));
        assert!(c.presence.receives() && !c.private);
        let b = &c.postgres_changes[0];
        assert_eq!(
            (b.event.as_deref(), b.schema.as_deref(), b.table.as_deref()),
            (Some("INSERT"), Some("public"), Some("m"))
        );
        assert_eq!(b.filter.as_deref(), Some("id=eq.1"));
        assert_eq!(b.echo["extra"], serde_json::json!([1]), "echoed as sent");
    }

    /// What realtime-js 2.119.1's `subscribe()` sends, options included.
    #[test]
    fn reads_the_join_config_flags_of_the_newest_client() {
        let c = join(
            r#"{"config": {"broadcast": {"ack": false, "self": false, "replication_ready": true,
                "replay": {"since": 1700000000000, "limit": 10}},
                "presence": {"key": "", "enabled": false},
                "postgres_changes": [{"event": "*", "schema": "public", "table": "m"}],
                "private": true,
                "postgres_changes_options": {"wait": true, "timeout": 5000}},
               "access_token": "jwt"}"#,
        )
        .unwrap()
        .config
        .unwrap();
        assert!(c.broadcast.replication_ready);
        let replay = c.broadcast.replay.unwrap();
        assert_eq!(
            (replay.since, replay.limit),
            (Some(1_700_000_000_000), Some(10))
        );
        assert_eq!(c.presence.enabled, Some(false));
        assert!(!c.presence.receives());
        assert!(c.postgres_changes_options.wait);
        assert_eq!(c.postgres_changes_options.timeout, Some(5000));

        // What older clients send: presence without `enabled` receives it;
        // no options, no replay.
        let c = join(r#"{"config": {"presence": {"key": ""}, "broadcast": {"self": true}}}"#)
            .unwrap()
            .config
            .unwrap();
        assert!(c.presence.receives() && c.presence.enabled.is_none());
        assert!(!c.broadcast.replication_ready && c.broadcast.replay.is_none());
        assert!(!c.postgres_changes_options.wait);
        assert_eq!(c.postgres_changes_options.timeout, None);
        let c = join(r#"{"config": {"presence": {"enabled": "TRUE"}}}"#)
            .unwrap()
            .config
            .unwrap();
        assert_eq!(c.presence.enabled, Some(true));
    }

    #[test]
    fn a_join_without_config_is_a_legacy_join_and_nulls_are_absent() {
        for text in [
            "null",
            "{}",
            r#"{"config": null}"#,
            r#"{"user_token": "t"}"#,
        ] {
            assert!(join(text).unwrap().config.is_none(), "{text}");
        }
        assert_eq!(join(r#"{"user_token": "t"}"#).unwrap().token(), Some("t"));
        let c = join(
            r#"{"config": {"broadcast": null, "presence": {"key": null},
                "postgres_changes": null, "private": null}}"#,
        )
        .unwrap()
        .config
        .unwrap();
        assert!(!c.broadcast.self_broadcast && c.presence.key.is_none());
        assert!(c.postgres_changes.is_empty());
    }

    #[test]
    fn booleans_may_be_strings_and_presence_keys_numbers() {
        let c = join(
            r#"{"config": {"broadcast": {"self": "TRUE", "ack": "false"},
                "presence": {"key": 42}}}"#,
        )
        .unwrap()
        .config
        .unwrap();
        assert!(c.broadcast.self_broadcast && !c.broadcast.ack);
        assert_eq!(c.presence.key.as_deref(), Some("42"));
    }

    #[test]
    fn a_malformed_payload_is_refused_naming_the_field() {
        let cases = [
            ("5", "invalid join payload: invalid type: integer `5`, expected a map"),
            (
                r#"{"config": "yes"}"#,
                "invalid join payload: config: invalid type: string \"yes\", expected a map",
            ),
            ("[]", "invalid join payload: invalid type: sequence, expected a map"),
            (
                r#"{"config": [true]}"#,
                "invalid join payload: config: invalid type: sequence, expected a map",
            ),
            (
                r#"{"config": {"broadcast": [true, true]}}"#,
                "invalid join payload: config.broadcast: invalid type: sequence, expected a map",
            ),
            (
                r#"{"config": {"broadcast": {"self": "yes"}}}"#,
                "invalid join payload: config.broadcast.self: expected true or false, got \"yes\"",
            ),
            (
                r#"{"config": {"presence": {"key": {"id": 1}}}}"#,
                "invalid join payload: config.presence.key: expected a string, got a map",
            ),
            (
                r#"{"config": {"postgres_changes": {"event": "*"}}}"#,
                "invalid join payload: config.postgres_changes: invalid type: map, expected a sequence",
            ),
            (
                r#"{"config": {"postgres_changes": [{"event": "*"}, 7]}}"#,
                "invalid join payload: config.postgres_changes[1]: invalid type: integer `7`, expected a map",
            ),
            (
                r#"{"config": {"postgres_changes": [{"event": "*", "table": 5}]}}"#,
                "invalid join payload: config.postgres_changes[0]: table: expected a string, got 5",
            ),
            (
                r#"{"config": {"presence": {"enabled": 1}}}"#,
                "invalid join payload: config.presence.enabled: expected true or false, got 1",
            ),
            (
                r#"{"config": {"postgres_changes_options": {"timeout": -5}}}"#,
                "invalid join payload: config.postgres_changes_options.timeout: expected a whole number that is not negative, got -5",
            ),
            (
                r#"{"config": {"postgres_changes_options": {"wait": "soon"}}}"#,
                "invalid join payload: config.postgres_changes_options.wait: expected true or false, got \"soon\"",
            ),
            (
                r#"{"config": {"broadcast": {"replay": {"since": "yesterday"}}}}"#,
                "invalid join payload: config.broadcast.replay.since: expected a whole number that is not negative, got \"yesterday\"",
            ),
            (
                r#"{"config": {"broadcast": {"replication_ready": []}}}"#,
                "invalid join payload: config.broadcast.replication_ready: expected true or false, got an array",
            ),
            (
                r#"{"access_token": 12}"#,
                "invalid join payload: access_token: invalid type: integer `12`, expected a string",
            ),
        ];
        let mut wrong = Vec::new();
        for (text, want) in cases {
            match join(text) {
                Err(got) if got == want => {}
                other => wrong.push(format!("{text}: got {other:?}, want {want:?}")),
            }
        }
        assert!(wrong.is_empty(), "{}", wrong.join("\n"));
    }

    #[test]
    fn a_long_refused_string_is_cut_in_the_reason() {
        let long = "x".repeat(500);
        let e = join(&format!(r#"{{"config": {{"private": "{long}"}}}}"#)).unwrap_err();
        assert!(e.len() < 120, "{e}");
        assert!(e.ends_with("…"), "{e}");
    }

    #[test]
    fn presence_and_access_token_pushes() {
        let p: PresencePush = parse(
            "presence",
            &raw(r#"{"type": "presence", "event": "track", "payload": {"status": "online"}}"#),
        )
        .unwrap();
        assert_eq!(p.event.as_deref(), Some("track"));
        assert_eq!(p.payload["status"], "online");
        let p: PresencePush = parse("presence", &raw(r#"{"event": "untrack"}"#)).unwrap();
        assert!(p.payload.is_empty());
        let e = parse::<PresencePush>("presence", &raw(r#"{"event": "track", "payload": [1]}"#))
            .unwrap_err();
        assert_eq!(
            e.to_string(),
            "invalid presence payload: payload: invalid type: sequence, expected a map"
        );

        let t: AccessTokenPayload =
            parse("access_token", &raw(r#"{"access_token": null}"#)).unwrap();
        assert_eq!(t.token(), None);
        let t: AccessTokenPayload = parse("access_token", &raw(r#"{"user_token": "u"}"#)).unwrap();
        assert_eq!(t.token(), Some("u"));
    }
}
