//! A minimal HTTP/1.1 GET for the telemetry endpoints: one request per connection
//! (`Connection: close`), the status and the body back. Shared with the faults binary.

use std::net::SocketAddr;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// `GET path` on `addr`: (status, body), or why it failed (the server is not listening).
pub async fn get(addr: SocketAddr, path: &str) -> Result<(u16, String), String> {
    let exchange = async {
        let mut stream = TcpStream::connect(addr).await.map_err(|e| e.to_string())?;
        let request = format!("GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n");
        stream
            .write_all(request.as_bytes())
            .await
            .map_err(|e| e.to_string())?;
        let mut response = Vec::new();
        stream
            .read_to_end(&mut response)
            .await
            .map_err(|e| e.to_string())?;
        let text = String::from_utf8(response).map_err(|e| e.to_string())?;
        let (head, body) = text
            .split_once("\r\n\r\n")
            .ok_or_else(|| format!("no end of headers in {text:?}"))?;
        let status = head
            .split(' ')
            .nth(1)
            .and_then(|s| s.parse().ok())
            .ok_or_else(|| format!("no status in {head:?}"))?;
        Ok((status, body.to_string()))
    };
    tokio::time::timeout(Duration::from_secs(10), exchange)
        .await
        .map_err(|_| format!("GET {path} took longer than 10 s"))?
}

/// Scrapes `/metrics` until `done` holds for its text, for at most `within`; the last
/// text either way (counters are updated just after the reply is sent).
pub async fn scrape_until(
    addr: SocketAddr,
    within: Duration,
    done: impl Fn(&str) -> bool,
) -> String {
    let end = tokio::time::Instant::now() + within;
    loop {
        let (status, text) = get(addr, "/metrics").await.expect("/metrics answers");
        assert_eq!(status, 200, "{text}");
        if done(&text) || tokio::time::Instant::now() >= end {
            return text;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// The value of the series `name{labels}` (exact match of everything before the value).
pub fn value(text: &str, series: &str) -> Option<f64> {
    text.lines()
        .find_map(|l| l.strip_prefix(series)?.strip_prefix(' ')?.parse().ok())
}
