//! Reading the guard's /metrics as Prometheus would.

use std::{io::Read, time::Duration};

/// GET /metrics, the body.
pub fn scrape(addr: &str) -> Result<String, String> {
    use std::io::Write as _;
    let mut conn =
        std::net::TcpStream::connect(addr).map_err(|e| format!("connecting to {addr}: {e}"))?;
    conn.set_read_timeout(Some(Duration::from_secs(10)))
        .map_err(|e| e.to_string())?;
    conn.write_all(b"GET /metrics HTTP/1.1\r\nHost: guard\r\nConnection: close\r\n\r\n")
        .map_err(|e| format!("sending the request: {e}"))?;
    let mut text = String::new();
    conn.read_to_string(&mut text)
        .map_err(|e| format!("reading the response: {e}"))?;
    match text.split_once("\r\n\r\n") {
        Some((head, body)) if head.starts_with("HTTP/1.1 200") => Ok(body.to_owned()),
        _ => Err(format!("not a 200 response: {text}")),
    }
}

/// The value of the first sample line starting with `prefix`.
pub fn metric(body: &str, prefix: &str) -> Option<f64> {
    body.lines()
        .find(|l| l.starts_with(prefix))?
        .rsplit(' ')
        .next()?
        .parse()
        .ok()
}
