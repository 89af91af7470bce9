//! Loopback ports and a one-shot HTTP probe, for harnesses that start servers
//! on this machine and wait on them (`/readyz`, `/metrics`, `/healthz`).
//!
//! Owns: choosing ports that are free on 127.0.0.1, waiting until a port is
//! released, and a blocking HTTP/1.1 GET. Nothing here retries a start: a
//! port is free when chosen, and a caller whose server finds it taken picks
//! another (see [`crate::TempPostgres::start`]).

use std::io::{self, Read, Write};
use std::net::{Ipv4Addr, TcpListener, TcpStream};
use std::time::{Duration, Instant};

/// How long [`http_get`] waits for an answer.
const HTTP_TIMEOUT: Duration = Duration::from_secs(5);

/// A port that was free on 127.0.0.1 a moment ago. Another process may take
/// it before it is bound.
pub fn free_port() -> io::Result<u16> {
    let [port] = free_ports::<1>()?;
    Ok(port)
}

/// `N` distinct ports that were free on 127.0.0.1 a moment ago (bound all at
/// once, so no two are the same).
pub fn free_ports<const N: usize>() -> io::Result<[u16; N]> {
    let listeners = (0..N)
        .map(|_| {
            TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).map_err(|e| {
                io::Error::new(
                    e.kind(),
                    format!("binding 127.0.0.1:0 to find a free port: {e}"),
                )
            })
        })
        .collect::<io::Result<Vec<_>>>()?;
    let mut ports = [0u16; N];
    for (port, listener) in ports.iter_mut().zip(&listeners) {
        *port = listener
            .local_addr()
            .map_err(|e| io::Error::new(e.kind(), format!("reading a bound port: {e}")))?
            .port();
    }
    Ok(ports)
}

/// Waits until `port` on 127.0.0.1 can be bound again, up to `timeout`.
/// Tests use it to prove a stopped server released its port.
pub fn port_is_free(port: u16, timeout: Duration) -> bool {
    let deadline = Instant::now() + timeout;
    loop {
        if TcpListener::bind((Ipv4Addr::LOCALHOST, port)).is_ok() {
            return true;
        }
        if Instant::now() >= deadline {
            return false;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// GET `path` on `127.0.0.1:port`: the status and the body, or `None` when
/// nothing answered within 5 s.
pub fn http_get(port: u16, path: &str) -> Option<(u16, String)> {
    let mut s = TcpStream::connect((Ipv4Addr::LOCALHOST, port)).ok()?;
    s.set_read_timeout(Some(HTTP_TIMEOUT)).ok()?;
    write!(
        s,
        "GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n"
    )
    .ok()?;
    let mut buf = String::new();
    s.read_to_string(&mut buf).ok()?;
    let status = buf.split_whitespace().nth(1)?.parse().ok()?;
    let body = buf.split_once("\r\n\r\n").map(|(_, b)| b.to_string())?;
    Some((status, body))
}

/// POST the JSON `body` to `path` on `127.0.0.1:port` with the extra
/// `headers` (`Name: value` each): the status and the body, or `None` when
/// nothing answered within 5 s.
pub fn http_post(port: u16, path: &str, headers: &[&str], body: &str) -> Option<(u16, String)> {
    let mut s = TcpStream::connect((Ipv4Addr::LOCALHOST, port)).ok()?;
    s.set_read_timeout(Some(HTTP_TIMEOUT)).ok()?;
    let mut head = String::new();
    for h in headers {
        head.push_str(h);
        head.push_str("\r\n");
    }
    write!(
        s,
        "POST {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n\
         Content-Length: {}\r\n{head}Connection: close\r\n\r\n{body}",
        body.len()
    )
    .ok()?;
    let mut buf = String::new();
    s.read_to_string(&mut buf).ok()?;
    let status = buf.split_whitespace().nth(1)?.parse().ok()?;
    let body = buf.split_once("\r\n\r\n").map(|(_, b)| b.to_string())?;
    Some((status, body))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn free_ports_are_distinct_and_bindable() {
        let ports = free_ports::<3>().unwrap();
        assert!(ports[0] != ports[1] && ports[1] != ports[2] && ports[0] != ports[2]);
        for port in ports {
            assert!(port_is_free(port, Duration::ZERO), "{port} is free");
        }
    }

    #[test]
    fn a_held_port_is_not_free_and_nothing_answers_http_on_it() {
        let listener = TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).unwrap();
        let port = listener.local_addr().unwrap().port();
        assert!(!port_is_free(port, Duration::from_millis(100)));
        drop(listener);
        assert!(port_is_free(port, Duration::from_secs(1)));
        assert_eq!(http_get(port, "/"), None);
    }
}
