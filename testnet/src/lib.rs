//! Loam test networks: a whole network on one machine, for development,
//! demos, benchmarks and integration tests.
//!
//! - [`process::ProcessNetwork`]: the satellite and storage nodes as
//!   separate OS processes of the real binaries (`testnet run`, `demo`,
//!   `bench`), so a test can `kill -9` one.
//! - [`planet::Planet`]: the same network in-process, for Rust integration
//!   tests, built from counts plus reconfigure hooks.

pub mod bench;
pub mod bench_compute;
pub mod planet;
pub mod process;

/// The digits data set shipped in `data/` (see `data/README.md`).
pub const DIGITS: &[u8] = include_bytes!("../../data/digits.csv");

/// The digits split every demo, test and check uses: rows whose zero-based
/// index is divisible by 5 are the test set. Returns (train, test) CSV
/// texts, each with the header.
pub fn digits_split() -> (String, String) {
    let text = String::from_utf8_lossy(DIGITS);
    let mut lines = text.lines();
    let header = lines.next().unwrap_or_default();
    let (mut train, mut test) = (format!("{header}\n"), format!("{header}\n"));
    for (i, l) in lines.enumerate() {
        let dst = if i % 5 == 0 { &mut test } else { &mut train };
        dst.push_str(l);
        dst.push('\n');
    }
    (train, test)
}

/// Fetches `url` (plain HTTP on loopback) and returns the body.
pub async fn http_get(url: &str) -> anyhow::Result<String> {
    use anyhow::Context;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let rest = url.strip_prefix("http://").context("only http:// URLs")?;
    let (host, path) = rest
        .split_once('/')
        .map_or((rest, "/".to_string()), |(h, p)| (h, format!("/{p}")));
    let mut stream = tokio::net::TcpStream::connect(host).await?;
    stream
        .write_all(
            format!("GET {path} HTTP/1.0\r\nHost: {host}\r\nConnection: close\r\n\r\n").as_bytes(),
        )
        .await?;
    let mut body = String::new();
    stream.read_to_string(&mut body).await?;
    let (head, body) = body
        .split_once("\r\n\r\n")
        .context("malformed HTTP response")?;
    if !head.starts_with("HTTP/1.1 200") && !head.starts_with("HTTP/1.0 200") {
        anyhow::bail!("GET {url}: {}", head.lines().next().unwrap_or(""));
    }
    Ok(body.to_string())
}

/// Sum of the samples of one Prometheus metric in an exposition text.
pub fn metric_value(text: &str, name: &str) -> f64 {
    text.lines()
        .filter(|l| !l.starts_with('#'))
        .filter(|l| l.split([' ', '{']).next() == Some(name))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}
