//! The gateway's readiness probe (docs/pipeline.md step 3): `GET /health` over
//! loopback with HTTP/1.0, so the server closes the connection after one
//! answer and no HTTP library or DNS is involved.

use std::io::{Read, Write};
use std::net::{Ipv4Addr, SocketAddr, TcpStream};
use std::time::Duration;

/// Only the status line is needed; a server that sends more is cut off.
const MAX_HEAD: usize = 256;

/// The status code the gateway answers `GET /health` with.
pub fn probe(port: u16, timeout: Duration) -> std::io::Result<u16> {
    let addr = SocketAddr::from((Ipv4Addr::LOCALHOST, port));
    let mut s = TcpStream::connect_timeout(&addr, timeout)?;
    s.set_read_timeout(Some(timeout))?;
    s.set_write_timeout(Some(timeout))?;
    s.write_all(b"GET /health HTTP/1.0\r\nHost: 127.0.0.1\r\n\r\n")?;
    let mut head = Vec::with_capacity(MAX_HEAD);
    s.take(MAX_HEAD as u64)
        .read_to_end(&mut head)
        .or_else(|e| {
            // A server that keeps the connection open after answering still
            // answered; what arrived before the timeout is enough.
            if head.is_empty() {
                Err(e)
            } else {
                Ok(0)
            }
        })?;
    parse_status_line(&head).ok_or_else(|| {
        std::io::Error::new(
            std::io::ErrorKind::InvalidData,
            format!(
                "not an HTTP status line: {:?}",
                String::from_utf8_lossy(&head)
            ),
        )
    })
}

/// The status code of `HTTP/1.x NNN ...`.
pub fn parse_status_line(head: &[u8]) -> Option<u16> {
    let line = head.split(|&b| b == b'\n').next()?;
    let line = std::str::from_utf8(line).ok()?.trim_end_matches('\r');
    let mut parts = line.splitn(3, ' ');
    let version = parts.next()?;
    if !matches!(version, "HTTP/1.0" | "HTTP/1.1") {
        return None;
    }
    let code = parts.next()?;
    if code.len() != 3 || !code.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    code.parse().ok()
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::TcpListener;

    #[test]
    fn ok_status() {
        assert_eq!(
            parse_status_line(b"HTTP/1.0 200 OK\r\nServer: x\r\n\r\n"),
            Some(200)
        );
    }

    #[test]
    fn http11_and_no_reason() {
        assert_eq!(parse_status_line(b"HTTP/1.1 503\r\n"), Some(503));
    }

    #[test]
    fn garbage_is_not_a_status() {
        assert_eq!(parse_status_line(b"SSH-2.0-OpenSSH\r\n"), None);
        assert_eq!(parse_status_line(b""), None);
        assert_eq!(parse_status_line(b"HTTP/1.0 20 OK\r\n"), None);
        assert_eq!(parse_status_line(b"HTTP/1.0 +20 OK\r\n"), None);
        assert_eq!(parse_status_line(b"HTTP/2 200\r\n"), None);
    }

    fn serve_once(answer: &'static [u8]) -> u16 {
        let l = TcpListener::bind("127.0.0.1:0").unwrap();
        let port = l.local_addr().unwrap().port();
        std::thread::spawn(move || {
            let (mut c, _) = l.accept().unwrap();
            let mut buf = [0u8; 512];
            let n = c.read(&mut buf).unwrap();
            assert!(buf[..n].starts_with(b"GET /health HTTP/1.0\r\n"));
            c.write_all(answer).unwrap();
        });
        port
    }

    #[test]
    fn probe_reads_the_status() {
        let port = serve_once(b"HTTP/1.0 200 OK\r\n\r\nok");
        assert_eq!(probe(port, Duration::from_secs(2)).unwrap(), 200);
    }

    #[test]
    fn probe_reports_non_200() {
        let port = serve_once(b"HTTP/1.1 500 Internal\r\n\r\n");
        assert_eq!(probe(port, Duration::from_secs(2)).unwrap(), 500);
    }

    #[test]
    fn probe_without_listener_fails() {
        let port = TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        assert!(probe(port, Duration::from_millis(500)).is_err());
    }
}
