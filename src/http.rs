//! `/healthz` and `/readyz` for the kubelet: a deliberately tiny HTTP/1.1
//! responder, so probes add no web framework to the operator.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tokio::net::TcpListener;

/// Whether the operator is ready: set once the controller can read its
/// resources.
#[derive(Clone, Default)]
pub struct Readiness(Arc<AtomicBool>);

impl Readiness {
    pub fn set_ready(&self) {
        self.0.store(true, Ordering::Release);
    }

    pub fn is_ready(&self) -> bool {
        self.0.load(Ordering::Acquire)
    }
}

/// Binds the probe listener; fails at start-up rather than silently.
pub async fn bind(address: SocketAddr) -> std::io::Result<TcpListener> {
    TcpListener::bind(address).await
}

/// Answers probes until the task is dropped.
pub async fn serve(listener: TcpListener, readiness: Readiness) {
    loop {
        let Ok((mut stream, _)) = listener.accept().await else {
            continue;
        };
        let readiness = readiness.clone();
        tokio::spawn(async move {
            let mut request = [0u8; 1024];
            let read =
                tokio::time::timeout(Duration::from_secs(5), stream.read(&mut request)).await;
            let Ok(Ok(length)) = read else { return };
            let (status, body) = respond(&request[..length], readiness.is_ready());
            let response = format!(
                "HTTP/1.1 {status}\r\ncontent-type: text/plain\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
                body.len()
            );
            let _ = stream.write_all(response.as_bytes()).await;
        });
    }
}

fn respond(request: &[u8], ready: bool) -> (&'static str, &'static str) {
    let line = request.split(|b| *b == b'\n').next().unwrap_or_default();
    let mut parts = line.split(|b| *b == b' ');
    let method = parts.next().unwrap_or_default();
    let path = parts.next().unwrap_or_default();
    match (method, path) {
        (b"GET", b"/healthz") => ("200 OK", "ok\n"),
        (b"GET", b"/readyz") if ready => ("200 OK", "ready\n"),
        (b"GET", b"/readyz") => ("503 Service Unavailable", "not ready\n"),
        _ => ("404 Not Found", "not found\n"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn probes() {
        assert_eq!(respond(b"GET /healthz HTTP/1.1\r\n", false).0, "200 OK");
        assert_eq!(
            respond(b"GET /readyz HTTP/1.1\r\n", false).0,
            "503 Service Unavailable"
        );
        assert_eq!(respond(b"GET /readyz HTTP/1.1\r\n", true).0, "200 OK");
        assert_eq!(
            respond(b"GET /secrets HTTP/1.1\r\n", true).0,
            "404 Not Found"
        );
        assert_eq!(respond(b"", true).0, "404 Not Found");
    }
}
