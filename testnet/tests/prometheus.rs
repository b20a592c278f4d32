//! A real Prometheus server (Debian's `prometheus`, installed by
//! `scripts/install-deps`) scrapes every daemon of a process testnet; the
//! upload counters it records move when data is uploaded.

mod support;

use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::Duration;

use tokio::io::{AsyncBufReadExt, AsyncWriteExt};
use tokio::sync::watch;

use support::{encode, ok, system_program, uplink};

/// Stops the server whatever happens to the test.
struct Server(Child);

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// The value of a scalar-valued instant query (0 when it has no result).
async fn query(base: &str, q: &str) -> anyhow::Result<f64> {
    let body = loam_testnet::http_get(&format!("{base}/api/v1/query?query={}", encode(q))).await?;
    let v: serde_json::Value = serde_json::from_str(&body)?;
    anyhow::ensure!(v["status"] == "success", "query {q} failed: {body}");
    Ok(v["data"]["result"][0]["value"][1]
        .as_str()
        .and_then(|s| s.parse().ok())
        .unwrap_or(0.0))
}

/// Stands between Prometheus and one daemon's `/metrics`, counting the
/// scrapes that begin, so the test waits for scrapes instead of polling.
/// Prometheus stores a scrape's samples before it begins the next scrape
/// of the same target: once a scrape that began after an event has been
/// followed by another, the event is queryable.
struct Relay {
    addr: String,
    scrapes: watch::Receiver<u64>,
}

impl Relay {
    async fn start(target: String) -> anyhow::Result<Self> {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
        let addr = listener.local_addr()?.to_string();
        let (tx, scrapes) = watch::channel(0u64);
        let tx = Arc::new(tx);
        tokio::spawn(async move {
            while let Ok((conn, _)) = listener.accept().await {
                tokio::spawn(relay_scrapes(conn, target.clone(), tx.clone()));
            }
        });
        Ok(Self { addr, scrapes })
    }

    /// Waits until two scrapes have begun since this call (bounded).
    async fn scraped_twice(&mut self) -> anyhow::Result<()> {
        let want = *self.scrapes.borrow() + 2;
        tokio::time::timeout(
            Duration::from_secs(90),
            self.scrapes.wait_for(|&n| n >= want),
        )
        .await
        .map_err(|_| anyhow::anyhow!("{} was not scraped", self.addr))??;
        Ok(())
    }
}

/// Answers the scrapes on one connection with the daemon's metrics (503
/// when they cannot be read).
async fn relay_scrapes(
    conn: tokio::net::TcpStream,
    target: String,
    scrapes: Arc<watch::Sender<u64>>,
) {
    let mut conn = tokio::io::BufReader::new(conn);
    let mut line = String::new();
    loop {
        // A request is its header lines, up to the empty one.
        loop {
            line.clear();
            match conn.read_line(&mut line).await {
                Ok(0) | Err(_) => return,
                Ok(_) if line.trim_end().is_empty() => break,
                Ok(_) => {}
            }
        }
        scrapes.send_modify(|n| *n += 1);
        let (status, body) = match loam_testnet::http_get(&target).await {
            Ok(body) => ("200 OK", body),
            Err(e) => ("503 Service Unavailable", e.to_string()),
        };
        let head = format!(
            "HTTP/1.1 {status}\r\nContent-Type: text/plain; version=0.0.4\r\nContent-Length: {}\r\n\r\n",
            body.len()
        );
        let out = conn.get_mut();
        if out.write_all(head.as_bytes()).await.is_err()
            || out.write_all(body.as_bytes()).await.is_err()
        {
            return;
        }
    }
}

/// Waits until every daemon has been scraped, and stored, since this call.
async fn all_scraped(relays: &mut [Relay]) -> anyhow::Result<()> {
    futures::future::try_join_all(relays.iter_mut().map(Relay::scraped_twice)).await?;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn prometheus_scrapes_every_daemon_and_sees_uploads() -> anyhow::Result<()> {
    let tmp = tempfile::tempdir()?;
    let net = support::four_nodes(tmp.path()).await?;
    let mut relays = Vec::new();
    for p in &net.processes {
        relays.push(Relay::start(p.metrics_url.clone()).await?);
    }
    let targets: Vec<&str> = relays.iter().map(|r| r.addr.as_str()).collect();
    let config = tmp.path().join("prometheus.yml");
    std::fs::write(
        &config,
        format!(
            "global:\n  scrape_interval: 1s\n  evaluation_interval: 1s\n\
             scrape_configs:\n  - job_name: loam\n    static_configs:\n      - targets: {targets:?}\n"
        ),
    )?;
    let port = std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port();
    let base = format!("http://127.0.0.1:{port}");
    let _server = Server(
        Command::new(system_program(&["prometheus"]))
            .arg(format!("--config.file={}", config.display()))
            .arg(format!(
                "--storage.tsdb.path={}",
                tmp.path().join("tsdb").display()
            ))
            .arg(format!("--web.listen-address=127.0.0.1:{port}"))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()?,
    );

    // Every daemon is scraped and up.
    all_scraped(&mut relays).await?;
    assert_eq!(query(&base, "sum(up)").await?, relays.len() as f64);
    let q = "sum(loam_storagenode_uploads_total{result=\"ok\"}) or vector(0)";
    let before = query(&base, q).await?;

    let access = net.dir.join("access");
    let file = tmp.path().join("data");
    std::fs::write(&file, vec![5u8; 1_500_000])?;
    ok(uplink(&access, &["mb", "loam://prom"]));
    ok(uplink(
        &access,
        &["cp", file.to_str().expect("utf-8"), "loam://prom/a"],
    ));

    // Three pieces or more per segment were stored: the counters move.
    all_scraped(&mut relays).await?;
    let after = query(&base, q).await?;
    assert!(
        after >= before + 3.0,
        "uploads counted: {before} then {after}"
    );
    let committed = "sum(loam_satellite_segments_committed_total) or vector(0)";
    assert!(query(&base, committed).await? >= 1.0);
    net.stop().await;
    Ok(())
}
