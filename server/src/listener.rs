//! The accept loop: every TCP connection from the moment it is accepted
//! until it is either closed or upgraded to a WebSocket.
//!
//! Owns what a peer can do before it is a socket: a connection holds one of
//! `MAX_PENDING_CONNECTIONS` slots from accept (half-open handshakes count),
//! a connection beyond them gets a plain 503 and is closed at once; a
//! request head must arrive within `HEADER_READ_TIMEOUT_MS` (slowloris), a
//! request within [`REQUEST_TIMEOUT`] (a body sent a byte at a time);
//! accept errors (`EMFILE` at the open-file limit) back off without
//! flooding the log. HTTP/1.1 only: cleartext HTTP/2 is not spoken on this
//! port. Must not decide what a request gets: the routes (`http`) do, and
//! the upgrade reserves its socket slot there.

use std::convert::Infallible;
use std::future::Future;
use std::io;
use std::sync::Arc;
use std::time::Duration;

use hyper::body::Incoming;
use hyper::server::conn::http1;
use hyper::service::Service;
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::net::{TcpListener, TcpStream};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use warp::http::{Request, StatusCode};
use warp::Reply;

use crate::config::var;
use crate::limits::{Slot, Slots};
use crate::metrics::METRICS;

/// How long a whole request (head and body) may take once its head has
/// arrived: a 1 MiB body on a slow mobile link takes a few seconds; a peer
/// sending it a byte at a time holds a connection slot for nothing.
pub const REQUEST_TIMEOUT: Duration = Duration::from_secs(30);

/// The largest request head (request line and headers) read: a handshake
/// with a JWT in its query string is about 2 KiB.
const MAX_HEAD_BYTES: usize = 64 * 1024;

/// Accept errors other than a connection reset before it was accepted
/// (`EMFILE`, `ENFILE`, `ENOBUFS`...) back off from the first to the last
/// delay, doubling; the log says so at most once per [`ACCEPT_LOG_EVERY`].
const ACCEPT_BACKOFF_MIN: Duration = Duration::from_millis(5);
const ACCEPT_BACKOFF_MAX: Duration = Duration::from_secs(1);
const ACCEPT_LOG_EVERY: Duration = Duration::from_secs(10);

/// How long shutdown waits for requests in flight (not sockets) to finish.
const SHUTDOWN_GRACE: Duration = Duration::from_secs(5);

/// What the accept loop needs of the configuration.
#[derive(Debug, Clone)]
pub struct ListenerConfig {
    pub max_pending_connections: usize,
    pub header_read_timeout: Duration,
}

/// Serves HTTP/1.1 on `listener` with `service` until `shutdown` resolves;
/// then stops accepting, lets requests in flight finish (a bounded time)
/// and returns. Upgraded connections are not waited for: they belong to
/// their sockets.
pub async fn serve<S>(
    listener: TcpListener,
    service: S,
    config: ListenerConfig,
    shutdown: impl Future<Output = ()> + Send + 'static,
) where
    S: Service<Request<Incoming>, Response = warp::reply::Response, Error = Infallible>
        + Clone
        + Send
        + Sync
        + 'static,
    S::Future: Send + 'static,
{
    let pending = Slots::new(config.max_pending_connections);
    let stop = CancellationToken::new();
    let mut builder = http1::Builder::new();
    builder
        .timer(TokioTimer::new())
        .header_read_timeout(config.header_read_timeout)
        .max_buf_size(MAX_HEAD_BYTES);
    let mut backoff = AcceptBackoff::default();
    let mut shutdown = std::pin::pin!(shutdown);
    loop {
        let accepted = tokio::select! {
            accepted = listener.accept() => accepted,
            () = &mut shutdown => break,
        };
        let stream = match accepted {
            Ok((stream, _)) => {
                backoff.succeeded();
                stream
            }
            Err(e) if is_connection_error(&e) => continue,
            Err(e) => {
                let delay = backoff.failed(&e);
                tokio::select! {
                    () = tokio::time::sleep(delay) => continue,
                    () = &mut shutdown => break,
                }
            }
        };
        let Some(slot) = pending.try_acquire() else {
            refuse(stream, pending.max());
            continue;
        };
        let _ = stream.set_nodelay(true);
        let service = service.clone();
        let builder = builder.clone();
        let stop = stop.clone();
        tokio::spawn(serve_connection(stream, slot, service, builder, stop));
    }
    drop(listener);
    stop.cancel();
    let deadline = Instant::now() + SHUTDOWN_GRACE;
    while pending.held() > 0 && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// One connection, holding its pending slot until it is closed or upgraded
/// (the upgraded socket is then counted by its own slot).
async fn serve_connection<S>(
    stream: TcpStream,
    slot: Slot,
    service: S,
    builder: http1::Builder,
    stop: CancellationToken,
) where
    S: Service<Request<Incoming>, Response = warp::reply::Response, Error = Infallible>
        + Send
        + Sync
        + 'static,
    S::Future: Send + 'static,
{
    let service = Arc::new(service);
    let timed = hyper::service::service_fn(move |req: Request<Incoming>| {
        let call = service.call(req);
        async move {
            match tokio::time::timeout(REQUEST_TIMEOUT, call).await {
                Ok(response) => response,
                Err(_) => Ok(warp::reply::with_status(
                    format!(
                        "request timeout: the request took more than {} s",
                        REQUEST_TIMEOUT.as_secs()
                    ),
                    StatusCode::REQUEST_TIMEOUT,
                )
                .into_response()),
            }
        }
    });
    let conn = builder
        .serve_connection(TokioIo::new(stream), timed)
        .with_upgrades();
    let mut conn = std::pin::pin!(conn);
    let result = tokio::select! {
        result = conn.as_mut() => result,
        () = stop.cancelled() => {
            conn.as_mut().graceful_shutdown();
            conn.await
        }
    };
    if let Err(e) = result {
        // A peer that went away, sent a bad head or took too long: its
        // business, at debug level (a flood of them must not flood the log).
        tracing::debug!(error = %e, "an HTTP connection ended with an error");
    }
    drop(slot);
}

/// Past `MAX_PENDING_CONNECTIONS`: a 503 written if the socket takes it at
/// once (never waiting on the peer), then the connection is closed.
fn refuse(stream: TcpStream, limit: usize) {
    METRICS.limit_reached(var::MAX_PENDING_CONNECTIONS);
    let body = format!(
        "too many connections in progress (MAX_PENDING_CONNECTIONS={limit}): try again later\n"
    );
    let answer = format!(
        "HTTP/1.1 503 Service Unavailable\r\ncontent-type: text/plain; charset=utf-8\r\n\
         content-length: {}\r\nconnection: close\r\nretry-after: 1\r\n\r\n{body}",
        body.len()
    );
    let _ = stream.try_write(answer.as_bytes());
}

/// Errors about one connection that was reset before it was accepted: the
/// next accept is unaffected.
fn is_connection_error(e: &io::Error) -> bool {
    matches!(
        e.kind(),
        io::ErrorKind::ConnectionRefused
            | io::ErrorKind::ConnectionAborted
            | io::ErrorKind::ConnectionReset
    )
}

/// The accept loop's back-off and its log, which says once per
/// [`ACCEPT_LOG_EVERY`] how many failures there were since the last line.
#[derive(Debug, Default)]
struct AcceptBackoff {
    delay: Option<Duration>,
    unlogged: u64,
    last_log: Option<Instant>,
}

impl AcceptBackoff {
    fn failed(&mut self, e: &io::Error) -> Duration {
        METRICS.accept_errors.inc();
        let delay = self
            .delay
            .map_or(ACCEPT_BACKOFF_MIN, |d| (d * 2).min(ACCEPT_BACKOFF_MAX));
        self.delay = Some(delay);
        self.unlogged += 1;
        if self
            .last_log
            .is_none_or(|t| t.elapsed() >= ACCEPT_LOG_EVERY)
        {
            tracing::warn!(
                error = %e,
                failures = self.unlogged,
                retry_in_ms = delay.as_millis() as u64,
                "cannot accept connections (at the open-file limit?): backing off"
            );
            self.unlogged = 0;
            self.last_log = Some(Instant::now());
        }
        delay
    }

    fn succeeded(&mut self) {
        if self.delay.take().is_some() && self.unlogged > 0 {
            tracing::warn!(
                failures = self.unlogged,
                "accepting connections again after accept errors"
            );
            self.unlogged = 0;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accept_backoff_doubles_to_its_cap_and_resets() {
        let mut b = AcceptBackoff::default();
        let e = io::Error::other("too many open files");
        let delays: Vec<_> = (0..12).map(|_| b.failed(&e)).collect();
        assert_eq!(delays[0], ACCEPT_BACKOFF_MIN);
        assert_eq!(delays[1], ACCEPT_BACKOFF_MIN * 2);
        assert_eq!(*delays.last().unwrap(), ACCEPT_BACKOFF_MAX);
        b.succeeded();
        assert_eq!(b.failed(&e), ACCEPT_BACKOFF_MIN);
    }
}
