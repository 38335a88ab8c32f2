//! `lhama health`: asks a server's /health and exits 0 only on 200, so a
//! container's HEALTHCHECK needs no shell tools (no curl in the image).

use std::io::{Read, Write};
use std::net::{TcpStream, ToSocketAddrs};
use std::time::Duration;

use anyhow::{Context, bail};

/// `http://host:port/path` → (host:port, path). Only plain HTTP: the check
/// runs beside the server.
fn split_url(url: &str) -> anyhow::Result<(String, String)> {
    let Some(rest) = url.strip_prefix("http://") else {
        bail!("--url {url:?}: only http:// URLs are supported");
    };
    let (authority, path) = match rest.find('/') {
        Some(i) => (&rest[..i], &rest[i..]),
        None => (rest, "/health"),
    };
    if authority.is_empty() {
        bail!("--url {url:?}: no host");
    }
    let authority = if authority.contains(':') {
        authority.to_string()
    } else {
        format!("{authority}:80")
    };
    Ok((authority, path.to_string()))
}

/// The server's own port on loopback: what a container's health check asks.
pub fn default_url() -> String {
    let port = std::env::var("LHAMA_PORT").unwrap_or_else(|_| "8000".into());
    format!("http://127.0.0.1:{port}/health")
}

pub fn run(url: &str, timeout: Duration) -> anyhow::Result<()> {
    let (authority, path) = split_url(url)?;
    let addr = authority
        .to_socket_addrs()
        .with_context(|| format!("resolving {authority}"))?
        .next()
        .with_context(|| format!("{authority} resolves to no address"))?;
    let mut stream = TcpStream::connect_timeout(&addr, timeout)
        .with_context(|| format!("connecting to {authority}"))?;
    stream.set_read_timeout(Some(timeout))?;
    stream.set_write_timeout(Some(timeout))?;
    let host = authority
        .rsplit_once(':')
        .map_or(authority.as_str(), |(h, _)| h);
    write!(
        stream,
        "GET {path} HTTP/1.1\r\nhost: {host}\r\nconnection: close\r\nuser-agent: lhama-health\r\n\r\n"
    )?;
    let mut answer = Vec::new();
    stream
        .take(64 * 1024)
        .read_to_end(&mut answer)
        .with_context(|| format!("reading the answer of {url}"))?;
    let text = String::from_utf8_lossy(&answer);
    let status = text
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse::<u16>().ok())
        .with_context(|| format!("{url} did not answer HTTP"))?;
    let body = text.split_once("\r\n\r\n").map_or("", |(_, b)| b.trim());
    if status != 200 {
        bail!("{url}: {status} {body}");
    }
    println!("{body}");
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls_are_split_and_others_refused() {
        assert_eq!(
            split_url("http://127.0.0.1:8000/health").unwrap(),
            ("127.0.0.1:8000".into(), "/health".into())
        );
        assert_eq!(
            split_url("http://localhost").unwrap(),
            ("localhost:80".into(), "/health".into())
        );
        assert!(split_url("https://x/health").is_err());
        assert!(split_url("http:///health").is_err());
    }
}
