//! Running Loam outside `testnet`, as `docs/operators.md` tells an
//! operator: `satellite setup/run`, `storagenode setup/run` for three
//! nodes, an access grant from `satellite api-key create`, and `uplink`
//! using the result. Bad setups fail at setup time with one clear line
//! and write nothing.

mod support;

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};

use loam_testnet::process::binary;
use support::{fails, ok, run};

/// Daemons started for a test, killed when it ends however it ends.
#[derive(Default)]
struct Daemons(Vec<Child>);

impl Daemons {
    /// Starts `BIN run --dir DIR` and returns once its log says `ready`
    /// (the line a daemon logs when it serves); the rest of the log is
    /// drained so the daemon never blocks on it.
    fn start(&mut self, bin: &str, dir: &Path, ready: &str) {
        let mut child = Command::new(binary(bin).expect("binary"))
            .args(["run", "--dir", dir.to_str().expect("utf-8")])
            .env("RUST_LOG", "info")
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("start daemon");
        let mut log = BufReader::new(child.stderr.take().expect("piped stderr")).lines();
        self.0.push(child);
        let seen = log
            .by_ref()
            .map_while(Result::ok)
            .any(|l| l.contains(ready));
        assert!(seen, "{bin} exited before logging {ready:?}");
        std::thread::spawn(move || log.for_each(drop));
    }
}

impl Drop for Daemons {
    fn drop(&mut self) {
        for c in &mut self.0 {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

/// A UDP port free now on loopback.
fn free_udp_port() -> u16 {
    std::net::UdpSocket::bind("127.0.0.1:0")
        .and_then(|s| s.local_addr())
        .expect("bind")
        .port()
}

fn s(p: &Path) -> &str {
    p.to_str().expect("utf-8 path")
}

/// Sets up and starts a satellite for a small network; returns its URL.
fn satellite(daemons: &mut Daemons, dir: &Path) -> String {
    let port = free_udp_port();
    let id = ok(run(
        "satellite",
        &[
            "setup",
            "--dir",
            s(dir),
            "--listen",
            &format!("127.0.0.1:{port}"),
            "--http-listen",
            "127.0.0.1:0",
            "--redundancy",
            "2/2/3/3",
            "--no-subnet-rule",
            "--min-difficulty",
            "8",
        ],
    ));
    daemons.start("satellite", dir, "satellite running");
    format!("{}@127.0.0.1:{port}", id.trim())
}

fn status(dir: &Path, args: &[&str]) -> serde_json::Value {
    let all = [&["status", "--dir", s(dir), "-o", "json"], args].concat();
    serde_json::from_str(&ok(run("satellite", &all))).expect("status json")
}

#[test]
fn a_network_from_nothing_following_the_operator_guide() {
    let tmp = tempfile::tempdir().expect("tmp");
    let mut daemons = Daemons::default();
    let sat_dir = tmp.path().join("sat");
    let url = satellite(&mut daemons, &sat_dir);

    let mut node_dirs: Vec<PathBuf> = Vec::new();
    for i in 0..3 {
        let dir = tmp.path().join(format!("node{i}"));
        let port = free_udp_port();
        let out = run(
            "storagenode",
            &[
                "setup",
                "--dir",
                s(&dir),
                "--satellite",
                &url,
                "--storage",
                "1GB",
                "--address",
                &format!("127.0.0.1:{port}"),
                "--listen",
                &format!("127.0.0.1:{port}"),
                "--http-listen",
                "127.0.0.1:0",
                "--wallet",
                &loam_testnet::test_wallet(i),
                "--email",
                "ops@example.com",
            ],
        );
        let id = ok(out);
        assert!(id.trim().len() > 40, "prints the node id: {id}");
        let config = std::fs::read_to_string(dir.join("config.toml")).expect("config");
        assert!(config.contains("# Default: 1000000000000\nallocated_bytes = 1000000000\n"));
        // Check-ins every second, through the environment as documented.
        node_dirs.push(dir);
    }
    // Logs go to files, as under a service manager: plain text (node 0)
    // or JSON lines (node 1). A misspelled variable is warned about.
    for (i, dir) in node_dirs.iter().enumerate() {
        let log = std::fs::File::create(dir.join("node.log")).expect("log");
        let format = if i == 1 { "json" } else { "text" };
        let child = Command::new(binary("storagenode").expect("binary"))
            .args(["run", "--dir", s(dir), "--log-format", format])
            .env("LOAM_CHECKIN_INTERVAL_SECS", "1")
            .env("LOAM_ALOCATED_BYTES", "2GB")
            .env("RUST_LOG", "warn")
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("start node");
        daemons.0.push(child);
    }
    // The satellite answers once all three have checked in.
    let st = status(&sat_dir, &["--wait-nodes", "3", "--timeout", "60"]);
    assert_eq!(st["nodes"]["online"], 3, "{st}");
    let text = std::fs::read_to_string(node_dirs[0].join("node.log")).expect("log");
    assert!(
        text.contains("LOAM_ALOCATED_BYTES") && text.contains("did you mean LOAM_ALLOCATED_BYTES"),
        "{text}"
    );
    assert!(
        !text.contains('\u{1b}'),
        "no colour codes in a log file: {text:?}"
    );
    let json = std::fs::read_to_string(node_dirs[1].join("node.log")).expect("log");
    let lines: Vec<serde_json::Value> = json
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{e}: {l}")))
        .collect();
    assert!(
        lines.iter().any(|l| l["level"] == "WARN"
            && l["message"]
                .as_str()
                .is_some_and(|m| m.contains("LOAM_ALOCATED_BYTES"))),
        "{json}"
    );
    // /metrics says what runs, and how the process does.
    let run_info: serde_json::Value = serde_json::from_slice(
        &std::fs::read(node_dirs[0].join("run/node.json")).expect("run info"),
    )
    .expect("json");
    let metrics_url = run_info["metrics_url"]
        .as_str()
        .expect("metrics_url")
        .to_string();
    let metrics = tokio::runtime::Runtime::new()
        .expect("runtime")
        .block_on(loam_testnet::http_get(&metrics_url))
        .expect("metrics");
    assert!(
        metrics.contains("loam_build_info{role=\"storagenode\",version=\""),
        "{metrics}"
    );
    for name in [
        "process_resident_memory_bytes",
        "process_cpu_seconds_total",
        "process_open_fds",
    ] {
        assert!(metrics.contains(name), "{name} missing");
    }

    let access = ok(run(
        "satellite",
        &[
            "api-key",
            "create",
            "--dir",
            s(&sat_dir),
            "--project",
            "alice",
            "--passphrase",
            "correct horse",
        ],
    ));
    let uplink = |args: &[&str]| {
        Command::new(binary("uplink").expect("binary"))
            .arg("--access")
            .arg(access.trim())
            .args(args)
            .output()
            .expect("uplink")
    };
    let data: Vec<u8> = (0..3_000_000u32).map(|i| (i * 7 % 251) as u8).collect();
    let file = tmp.path().join("file");
    std::fs::write(&file, &data).expect("write");
    ok(uplink(&["mb", "loam://photos"]));
    ok(uplink(&["cp", s(&file), "loam://photos/a.bin"]));
    let back = tmp.path().join("back");
    ok(uplink(&["cp", "loam://photos/a.bin", s(&back)]));
    assert_eq!(std::fs::read(&back).expect("read"), data);

    let st = status(&sat_dir, &[]);
    assert_eq!(st["storage"]["segments"], 1, "{st}");
    assert_eq!(st["storage"]["stored_bytes"], 3_000_000, "{st}");
    let table = ok(run("satellite", &["status", "--dir", s(&sat_dir)]));
    assert!(table.contains("3 online of 3"), "{table}");

    // An operator runs a satellite chore now, and hears when it is done.
    let sat_info: serde_json::Value = serde_json::from_slice(
        &std::fs::read(sat_dir.join("run/satellite.json")).expect("run info"),
    )
    .expect("json");
    let chores = sat_info["metrics_url"]
        .as_str()
        .expect("metrics_url")
        .replace("/metrics", "/api/chores");
    let rt = tokio::runtime::Runtime::new().expect("runtime");
    let audits = |rt: &tokio::runtime::Runtime| {
        let page = rt
            .block_on(loam_testnet::http_get(&format!(
                "{}/metrics",
                chores.trim_end_matches("/api/chores")
            )))
            .expect("metrics");
        loam_testnet::metric_value(&page, "loam_satellite_audits_total")
    };
    let before = audits(&rt);
    let done = rt
        .block_on(loam_testnet::http_post(&format!("{chores}/audit")))
        .expect("run the audit chore");
    assert_eq!(done.trim(), "done");
    assert!(audits(&rt) > before, "the audit run audited nothing");
    let unknown = rt
        .block_on(loam_testnet::http_post(&format!("{chores}/nothing")))
        .expect_err("no such chore");
    assert!(
        unknown.to_string().contains("404") && unknown.to_string().contains("repair"),
        "{unknown}"
    );
}

#[test]
fn bad_setups_fail_at_setup_with_one_clear_line() {
    let tmp = tempfile::tempdir().expect("tmp");
    let mut daemons = Daemons::default();
    let url = satellite(&mut daemons, &tmp.path().join("sat"));
    let (id, addr) = url.split_once('@').expect("ID@HOST:PORT");
    let wallet = loam_testnet::test_wallet(0);
    let setup = |dir: &Path, satellite: &str, storage: &str, wallet: &str| {
        run(
            "storagenode",
            &[
                "setup",
                "--dir",
                s(dir),
                "--satellite",
                satellite,
                "--storage",
                storage,
                "--wallet",
                wallet,
                "--listen",
                "127.0.0.1:0",
                "--satellite-timeout",
                "2",
            ],
        )
    };

    // A mistyped wallet: one character's case changed breaks EIP-55.
    let dir = tmp.path().join("wallet");
    let mut typo: Vec<char> = wallet.chars().collect();
    let at = typo
        .iter()
        .position(|c| c.is_ascii_alphabetic() && *c != 'x')
        .expect("a letter");
    typo[at] = if typo[at].is_ascii_uppercase() {
        typo[at].to_ascii_lowercase()
    } else {
        typo[at].to_ascii_uppercase()
    };
    let typo: String = typo.into_iter().collect();
    let err = fails(setup(&dir, &url, "1GB", &typo));
    assert!(err.contains("EIP-55 checksum"), "{err}");

    // More space than the disk has.
    let dir = tmp.path().join("big");
    let err = fails(setup(&dir, &url, "100PB", &wallet));
    assert!(
        err.contains("is larger than") && err.contains("free"),
        "{err}"
    );

    // A size without a unit is almost always a forgotten GB.
    let dir = tmp.path().join("bare");
    let out = setup(&dir, &url, "10", &wallet);
    assert_eq!(out.status.code(), Some(2), "a usage error");
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("has no unit") && err.contains("10GB"), "{err}");

    // Nothing listens there.
    let dir = tmp.path().join("unreachable");
    let nowhere = format!("{id}@127.0.0.1:{}", free_udp_port());
    let err = fails(setup(&dir, &nowhere, "1GB", &wallet));
    assert!(err.contains("unreachable"), "{err}");

    // A satellite answers, but it is not the one named.
    let dir = tmp.path().join("wrong-id");
    let other = loam_common::Identity::generate(0, |_| {}).id();
    let err = fails(setup(&dir, &format!("{other}@{addr}"), "1GB", &wallet));
    assert!(err.contains(&format!("has id {id}, not {other}")), "{err}");

    // A malformed address.
    let dir = tmp.path().join("address");
    let out = run(
        "storagenode",
        &[
            "setup",
            "--dir",
            s(&dir),
            "--satellite",
            &url,
            "--storage",
            "1GB",
            "--wallet",
            &wallet,
            "--address",
            "node.example.com",
        ],
    );
    let err = fails(out);
    assert!(err.contains("is not HOST:PORT"), "{err}");

    // None of them left an identity behind.
    for name in [
        "wallet",
        "big",
        "bare",
        "unreachable",
        "wrong-id",
        "address",
    ] {
        assert!(
            !tmp.path().join(name).join("identity.key").exists(),
            "{name} wrote an identity"
        );
    }
}
