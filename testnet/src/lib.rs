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
pub mod bench_gateway;
pub mod bench_keys;
pub mod bench_learning;
pub mod bench_metadata;
pub mod bench_repair;
pub mod bench_settle;
pub mod fuzz;
pub mod planet;
pub mod process;

/// The digits data set shipped in `data/` (see `data/README.md`).
pub const DIGITS: &[u8] = include_bytes!("../../data/digits.csv");

/// The digits split every demo, test and check uses: rows whose zero-based
/// index is divisible by 5 are the test set. Returns (train, test) CSV
/// texts, each with the header.
pub fn digits_split() -> (String, String) {
    split_every_fifth(&String::from_utf8_lossy(DIGITS))
}

/// The fixed split of every shipped data set: records whose zero-based
/// index is divisible by 5 are the test set. Returns (train, test) CSV
/// texts, each with the header.
pub fn split_every_fifth(text: &str) -> (String, String) {
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

/// The satellite database tests and test networks use unless told:
/// `LOAM_TEST_DATABASE=postgres` runs the whole suite with the satellite on
/// a throwaway PostgreSQL server (`None`: RocksDB).
pub fn test_database() -> Option<String> {
    std::env::var("LOAM_TEST_DATABASE")
        .ok()
        .filter(|v| !v.is_empty() && v != "rocksdb")
}

/// A payout address for test node `i`: deterministic, EIP-55 checksummed.
pub fn test_wallet(i: usize) -> String {
    let hash = blake3::hash(format!("loam testnet wallet {i}").as_bytes());
    let mut bytes = [0u8; 20];
    bytes.copy_from_slice(&hash.as_bytes()[..20]);
    format!("0x{}", hex::encode(bytes))
        .parse::<loam_common::wallet::Wallet>()
        .expect("40 hex digits")
        .to_checksummed()
}

/// Fetches `url` (plain HTTP on loopback) and returns the body; any status
/// but 200 is an error.
pub async fn http_get(url: &str) -> anyhow::Result<String> {
    let (status, body) = http_request(url).await?;
    if status != 200 {
        anyhow::bail!("GET {url}: status {status}: {}", body.trim());
    }
    Ok(body)
}

/// Sends an empty `POST` to `url` (plain HTTP on loopback); the body of a
/// 200 answer.
pub async fn http_post(url: &str) -> anyhow::Result<String> {
    let (status, body) = http_send("POST", url).await?;
    if status != 200 {
        anyhow::bail!("POST {url}: status {status}: {}", body.trim());
    }
    Ok(body)
}

/// Fetches `url` (plain HTTP on loopback): the status code and the body.
pub async fn http_request(url: &str) -> anyhow::Result<(u16, String)> {
    http_send("GET", url).await
}

async fn http_send(method: &str, url: &str) -> anyhow::Result<(u16, String)> {
    use anyhow::Context;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let rest = url.strip_prefix("http://").context("only http:// URLs")?;
    let (host, path) = rest
        .split_once('/')
        .map_or((rest, "/".to_string()), |(h, p)| (h, format!("/{p}")));
    let mut stream = tokio::net::TcpStream::connect(host).await?;
    stream
        .write_all(
            format!(
                "{method} {path} HTTP/1.0\r\nHost: {host}\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
            )
            .as_bytes(),
        )
        .await?;
    let mut body = String::new();
    stream.read_to_string(&mut body).await?;
    let (head, body) = body
        .split_once("\r\n\r\n")
        .context("malformed HTTP response")?;
    let status = head
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .context("malformed HTTP status line")?;
    Ok((status, body.to_string()))
}

/// Sum of the samples of one Prometheus metric in an exposition text.
pub fn metric_value(text: &str, name: &str) -> f64 {
    text.lines()
        .filter(|l| !l.starts_with('#'))
        .filter(|l| l.split([' ', '{']).next() == Some(name))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

/// The `q` quantile (0..1) of a Prometheus histogram in an exposition text,
/// interpolated linearly within its bucket as Prometheus'
/// `histogram_quantile` does; `None` without observations.
pub fn histogram_quantile(text: &str, name: &str, q: f64) -> Option<f64> {
    let prefix = format!("{name}_bucket{{");
    let mut buckets: Vec<(f64, f64)> = text
        .lines()
        .filter(|l| l.starts_with(&prefix))
        .filter_map(|l| {
            let le = l.split("le=\"").nth(1)?.split('"').next()?;
            let le = if le == "+Inf" {
                f64::INFINITY
            } else {
                le.parse().ok()?
            };
            Some((le, l.rsplit(' ').next()?.parse().ok()?))
        })
        .collect();
    buckets.sort_by(|a, b| a.0.total_cmp(&b.0));
    let total = buckets.last()?.1;
    if total <= 0.0 {
        return None;
    }
    let rank = q.clamp(0.0, 1.0) * total;
    let (mut lower, mut below) = (0.0, 0.0);
    for (le, count) in buckets {
        if count >= rank {
            if le.is_infinite() {
                return Some(lower);
            }
            let within = count - below;
            let f = if within > 0.0 {
                (rank - below) / within
            } else {
                1.0
            };
            return Some(lower + (le - lower) * f);
        }
        (lower, below) = (le, count);
    }
    None
}

/// Every file under `dir`, recursively (none if it cannot be read).
pub fn files_under(dir: &std::path::Path) -> Vec<std::path::PathBuf> {
    let mut out = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for entry in std::fs::read_dir(&d).into_iter().flatten().flatten() {
            let path = entry.path();
            if path.is_dir() {
                stack.push(path);
            } else {
                out.push(path);
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    #[test]
    fn histogram_quantiles_interpolate_within_buckets() {
        let text = "# TYPE t histogram\n\
            t_bucket{le=\"0.1\"} 0\n\
            t_bucket{le=\"0.2\"} 50\n\
            t_bucket{le=\"0.4\"} 100\n\
            t_bucket{le=\"+Inf\"} 100\n\
            t_sum 20\nt_count 100\n";
        let q = |q| super::histogram_quantile(text, "t", q).expect("observations");
        assert!((q(0.5) - 0.2).abs() < 1e-9);
        assert!((q(0.25) - 0.15).abs() < 1e-9);
        assert!((q(0.99) - 0.396).abs() < 1e-9);
        assert_eq!(super::histogram_quantile("", "t", 0.5), None);
    }
}
