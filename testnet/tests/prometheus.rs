//! A real Prometheus server (Debian's `prometheus`, installed by
//! `scripts/install-deps`) scrapes every daemon of a process testnet; the
//! upload counters it records move when data is uploaded.

mod support;

use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

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

/// Polls `q` until `done` holds for its value (bounded).
async fn wait_for(base: &str, q: &str, done: impl Fn(f64) -> bool) -> anyhow::Result<f64> {
    let deadline = Instant::now() + Duration::from_secs(90);
    loop {
        let v = query(base, q).await.unwrap_or(f64::NAN);
        if done(v) {
            return Ok(v);
        }
        anyhow::ensure!(Instant::now() < deadline, "{q} stayed at {v}");
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn prometheus_scrapes_every_daemon_and_sees_uploads() -> anyhow::Result<()> {
    let tmp = tempfile::tempdir()?;
    let net = support::four_nodes(tmp.path()).await?;
    let targets: Vec<String> = net
        .processes
        .iter()
        .map(|p| {
            p.metrics_url
                .trim_start_matches("http://")
                .trim_end_matches("/metrics")
                .to_string()
        })
        .collect();
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
    let daemons = targets.len() as f64;
    wait_for(&base, "sum(up)", |v| v == daemons).await?;
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
    let after = wait_for(&base, q, |v| v >= before + 3.0).await?;
    assert!(after >= before + 3.0);
    wait_for(
        &base,
        "sum(loam_satellite_segments_committed_total) or vector(0)",
        |v| v >= 1.0,
    )
    .await?;
    net.stop().await;
    Ok(())
}
