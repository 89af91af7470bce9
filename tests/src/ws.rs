//! A Phoenix Channels client over a real WebSocket, for the Rust tests.
//!
//! Speaks both serializers and hands back every frame as a [`Msg`], so a test
//! asserts on exactly what a client receives.

use std::time::Duration;

use futures::{SinkExt, StreamExt};
use serde_json::{json, Value};
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream};

/// One frame from the server, in either serializer's form.
#[derive(Debug, Clone, PartialEq)]
pub struct Msg {
    pub join_ref: Value,
    pub msg_ref: Value,
    pub topic: String,
    pub event: String,
    pub payload: Value,
}

pub struct PhxClient {
    ws: WebSocketStream<MaybeTlsStream<TcpStream>>,
    v2: bool,
    next_ref: u64,
}

/// What ended a wait for a frame.
#[derive(Debug)]
pub enum WsEnd {
    Timeout,
    Closed(Option<(u16, String)>),
    Error(String),
}

impl PhxClient {
    /// Connects to `url` (which carries `vsn`).
    pub async fn connect(url: &str) -> Result<PhxClient, tokio_tungstenite::tungstenite::Error> {
        let (ws, _) = tokio_tungstenite::connect_async(url).await?;
        Ok(PhxClient {
            ws,
            v2: url.contains("vsn=2"),
            next_ref: 0,
        })
    }

    /// Connects to `url` over a TCP connection the caller made (e.g. with a
    /// small receive buffer, for a client that stops reading).
    pub async fn connect_over(
        url: &str,
        stream: TcpStream,
    ) -> Result<PhxClient, tokio_tungstenite::tungstenite::Error> {
        let (ws, _) = tokio_tungstenite::client_async(url, MaybeTlsStream::Plain(stream)).await?;
        Ok(PhxClient {
            ws,
            v2: url.contains("vsn=2"),
            next_ref: 0,
        })
    }

    /// Sends a message and returns its ref.
    pub async fn push(
        &mut self,
        topic: &str,
        event: &str,
        payload: Value,
        join_ref: Option<&str>,
    ) -> String {
        self.next_ref += 1;
        let r = self.next_ref.to_string();
        let text = if self.v2 {
            json!([join_ref, r, topic, event, payload]).to_string()
        } else {
            json!({"topic": topic, "event": event, "payload": payload, "ref": r}).to_string()
        };
        self.send_text(&text).await;
        r
    }

    pub async fn send_text(&mut self, text: &str) {
        self.ws
            .send(Message::text(text.to_string()))
            .await
            .expect("send frame");
    }

    pub async fn send_raw(&mut self, msg: Message) {
        self.ws.send(msg).await.expect("send frame");
    }

    /// Sends `event` on `topic` and returns its reply.
    pub async fn request(&mut self, topic: &str, event: &str, payload: Value) -> Msg {
        let r = self.push(topic, event, payload, None).await;
        self.expect_reply(&r).await
    }

    /// Joins `topic` and returns the reply.
    pub async fn join(&mut self, topic: &str, payload: Value) -> Msg {
        let r = self.push(topic, "phx_join", payload, None).await;
        self.expect_reply(&r).await
    }

    /// Waits for the `phx_reply` to `r`, skipping other frames.
    pub async fn expect_reply(&mut self, r: &str) -> Msg {
        loop {
            let m = self.next().await.expect("a reply");
            if m.event == "phx_reply" && m.msg_ref == Value::String(r.to_string()) {
                return m;
            }
        }
    }

    /// The next frame, within 10 s.
    pub async fn next(&mut self) -> Result<Msg, WsEnd> {
        self.next_within(Duration::from_secs(10)).await
    }

    pub async fn next_within(&mut self, timeout: Duration) -> Result<Msg, WsEnd> {
        loop {
            let frame = match tokio::time::timeout(timeout, self.ws.next()).await {
                Err(_) => return Err(WsEnd::Timeout),
                Ok(None) => return Err(WsEnd::Closed(None)),
                Ok(Some(Err(e))) => return Err(WsEnd::Error(e.to_string())),
                Ok(Some(Ok(f))) => f,
            };
            match frame {
                Message::Text(t) => return Ok(self.parse(t.as_str())),
                Message::Close(c) => {
                    return Err(WsEnd::Closed(
                        c.map(|c| (u16::from(c.code), c.reason.to_string())),
                    ))
                }
                _ => continue,
            }
        }
    }

    /// The next text frame as sent, within `timeout` (for tests that read
    /// millions of frames and need not parse them all).
    pub async fn next_text(&mut self, timeout: Duration) -> Result<String, WsEnd> {
        loop {
            match tokio::time::timeout(timeout, self.ws.next()).await {
                Err(_) => return Err(WsEnd::Timeout),
                Ok(None) => return Err(WsEnd::Closed(None)),
                Ok(Some(Err(e))) => return Err(WsEnd::Error(e.to_string())),
                Ok(Some(Ok(Message::Text(t)))) => return Ok(t.as_str().to_string()),
                Ok(Some(Ok(Message::Close(c)))) => {
                    return Err(WsEnd::Closed(
                        c.map(|c| (u16::from(c.code), c.reason.to_string())),
                    ))
                }
                Ok(Some(Ok(_))) => continue,
            }
        }
    }

    /// The next data frame as it came, text or binary, within `timeout`
    /// (binary frames are what [`PhxClient::next`] skips).
    pub async fn next_data(&mut self, timeout: Duration) -> Result<Message, WsEnd> {
        loop {
            match tokio::time::timeout(timeout, self.ws.next()).await {
                Err(_) => return Err(WsEnd::Timeout),
                Ok(None) => return Err(WsEnd::Closed(None)),
                Ok(Some(Err(e))) => return Err(WsEnd::Error(e.to_string())),
                Ok(Some(Ok(m @ (Message::Text(_) | Message::Binary(_))))) => return Ok(m),
                Ok(Some(Ok(Message::Close(c)))) => {
                    return Err(WsEnd::Closed(
                        c.map(|c| (u16::from(c.code), c.reason.to_string())),
                    ))
                }
                Ok(Some(Ok(_))) => continue,
            }
        }
    }

    /// A text frame of this client's serializer, parsed.
    pub fn parse_text(&self, text: &str) -> Msg {
        self.parse(text)
    }

    /// The next frame whose event is not a reply or system message.
    pub async fn next_event(&mut self) -> Msg {
        loop {
            let m = self.next().await.expect("an event");
            if m.event != "phx_reply" && m.event != "system" {
                return m;
            }
        }
    }

    /// The next frame with event `event`, skipping others (`presence_state`,
    /// replies).
    pub async fn next_named(&mut self, event: &str) -> Msg {
        loop {
            let m = self
                .next()
                .await
                .unwrap_or_else(|e| panic!("waiting for {event}: {e:?}"));
            if m.event == event {
                return m;
            }
        }
    }

    /// Asserts that nothing arrives within `d`.
    pub async fn expect_silence(&mut self, d: Duration) {
        match self.next_within(d).await {
            Err(WsEnd::Timeout) => {}
            other => panic!("expected no frame, got {other:?}"),
        }
    }

    fn parse(&self, text: &str) -> Msg {
        let v: Value = serde_json::from_str(text)
            .unwrap_or_else(|e| panic!("server sent non-JSON {text:?}: {e}"));
        if self.v2 {
            let a = v
                .as_array()
                .unwrap_or_else(|| panic!("v2 frame not an array: {text}"));
            assert_eq!(a.len(), 5, "v2 frame has 5 elements: {text}");
            Msg {
                join_ref: a[0].clone(),
                msg_ref: a[1].clone(),
                topic: a[2].as_str().unwrap().to_string(),
                event: a[3].as_str().unwrap().to_string(),
                payload: a[4].clone(),
            }
        } else {
            let o = v
                .as_object()
                .unwrap_or_else(|| panic!("v1 frame not an object: {text}"));
            Msg {
                join_ref: Value::Null,
                msg_ref: o.get("ref").cloned().unwrap_or(Value::Null),
                topic: o["topic"].as_str().unwrap().to_string(),
                event: o["event"].as_str().unwrap().to_string(),
                payload: o["payload"].clone(),
            }
        }
    }
}
