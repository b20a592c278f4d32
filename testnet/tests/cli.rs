//! The real binaries as a user drives them: `testnet`-style process network,
//! the `uplink` CLI, and `kill -9` of storage nodes.
//!
//! Needs the binaries built (`cargo build --release --workspace --bins`,
//! which `scripts/test` does first).

mod support;

use std::process::Command;

use loam_testnet::process::{NetworkOptions, ProcessNetwork, binary};
use rand::{RngCore, SeedableRng};
use support::{fails, ok, run, uplink};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn uplink_cli_against_process_network() -> anyhow::Result<()> {
    let tmp = tempfile::tempdir()?;
    let net = ProcessNetwork::start(
        &tmp.path().join("net"),
        &NetworkOptions {
            nodes: 5,
            redundancy: "2/3/4/5".parse()?,
            ..Default::default()
        },
    )
    .await?;
    let access = net.dir.join("access");

    // network.json names every process with what the checks rely on.
    let doc: serde_json::Value =
        serde_json::from_slice(&std::fs::read(net.dir.join("network.json"))?)?;
    let procs = doc["processes"].as_array().expect("processes");
    assert_eq!(procs.len(), 6);
    for p in procs {
        for field in [
            "role",
            "node_id",
            "address",
            "pid",
            "data_dir",
            "metrics_url",
        ] {
            assert!(!p[field].is_null(), "{field} missing in {p}");
        }
    }

    let mut data = vec![0u8; 3_000_000];
    rand::rngs::StdRng::seed_from_u64(11).fill_bytes(&mut data);
    let file = tmp.path().join("in.bin");
    std::fs::write(&file, &data)?;
    let file = file.to_str().expect("utf-8 path");
    let out_path = tmp.path().join("out.bin");
    let out = out_path.to_str().expect("utf-8 path");

    ok(uplink(&access, &["mb", "loam://clitest"]));
    ok(uplink(&access, &["cp", file, "loam://clitest/dir/in.bin"]));
    let listing = ok(uplink(&access, &["ls", "loam://clitest"]));
    assert!(listing.starts_with("KIND"), "{listing}");
    assert!(
        listing.contains("PRE") && listing.contains("dir/"),
        "{listing}"
    );
    // JSON: one object per line.
    let lines = ok(uplink(
        &access,
        &["ls", "loam://clitest/dir/", "-o", "json"],
    ));
    let json = support::json_lines(&lines)?;
    assert_eq!(json.len(), 1, "{lines}");
    assert_eq!(json[0]["key"], "dir/in.bin");
    assert_eq!(json[0]["size"], 3_000_000);

    ok(uplink(&access, &["cp", "loam://clitest/dir/in.bin", out]));
    assert_eq!(std::fs::read(&out_path)?, data);
    let stdout = uplink(&access, &["cp", "loam://clitest/dir/in.bin", "-"]);
    assert!(stdout.status.success());
    assert_eq!(stdout.stdout, data);

    // Clear one-line errors.
    assert!(fails(uplink(&access, &["ls", "loam://nosuchbucket"])).contains("not found"));
    assert!(fails(uplink(&access, &["cp", "loam://clitest/missing", out])).contains("not found"));
    assert!(fails(uplink(&access, &["rb", "loam://clitest"])).contains("not empty"));
    assert!(fails(uplink(&access, &["mb", "loam://Bad_Name"])).contains("invalid bucket name"));

    // kill -9 of 2 of 5 nodes: at least `success` = 4 pieces were stored,
    // so at least k = 2 remain.
    for p in net.storage_nodes().take(2) {
        nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(p.pid as i32),
            nix::sys::signal::Signal::SIGKILL,
        )?;
    }
    std::fs::remove_file(&out_path)?;
    ok(uplink(&access, &["cp", "loam://clitest/dir/in.bin", out]));
    assert_eq!(std::fs::read(&out_path)?, data);

    // Operator-made access, and the same API key with another passphrase.
    let created = Command::new(binary("satellite")?)
        .args([
            "api-key",
            "create",
            "--project",
            "cli",
            "--passphrase",
            "first",
        ])
        .arg("--dir")
        .arg(net.dir.join("satellite"))
        .output()?;
    assert!(
        created.status.success(),
        "{}",
        String::from_utf8_lossy(&created.stderr)
    );
    let first = tmp.path().join("first");
    std::fs::write(&first, &created.stdout)?;
    let stderr = String::from_utf8_lossy(&created.stderr);
    let api_key = stderr
        .split_whitespace()
        .skip_while(|w| *w != "key")
        .nth(1)
        .expect("API key printed")
        .to_string();
    let satellite = net.access.satellite.to_string();
    let second = Command::new(binary("uplink")?)
        .args([
            "access",
            "create",
            "--satellite",
            &satellite,
            "--api-key",
            &api_key,
            "--passphrase",
            "second",
        ])
        .output()?;
    let second_path = tmp.path().join("second");
    std::fs::write(&second_path, ok(second).trim())?;
    ok(uplink(&first, &["mb", "loam://shared"]));
    assert!(
        fails(uplink(&second_path, &["ls", "loam://shared"]))
            .contains("wrong encryption passphrase")
    );
    assert!(
        fails(uplink(&access, &["ls", "loam://shared"])).contains("not found"),
        "other project"
    );

    ok(uplink(&access, &["rm", "loam://clitest/dir/in.bin"]));
    assert!(!ok(uplink(&access, &["ls", "loam://clitest", "--recursive"])).contains("in.bin"));
    ok(uplink(&access, &["rb", "loam://clitest"]));
    net.stop().await;
    Ok(())
}

/// `uplink dataset put`, `train --wait` and `model eval` as a user runs
/// them, with `kill -9` of a storage node holding data in the middle of
/// the job: the job finishes, the lost pieces are rebuilt elsewhere, and
/// the digits accuracy target still holds.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn training_survives_kill_9_of_a_holder() -> anyhow::Result<()> {
    use std::io::{BufRead, BufReader};

    let tmp = tempfile::tempdir()?;
    let net = ProcessNetwork::start(&tmp.path().join("net"), &NetworkOptions::default()).await?;
    let access = net.dir.join("access");
    let digits =
        std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/../data/digits.csv"))?;
    let mut lines = digits.lines();
    let header = lines.next().expect("header");
    let (mut train, mut test) = (format!("{header}\n"), format!("{header}\n"));
    for (i, l) in lines.enumerate() {
        let dst = if i % 5 == 0 { &mut test } else { &mut train };
        dst.push_str(l);
        dst.push('\n');
    }
    let (train_path, test_path) = (tmp.path().join("train.csv"), tmp.path().join("test.csv"));
    std::fs::write(&train_path, &train)?;
    std::fs::write(&test_path, &test)?;

    ok(uplink(&access, &["mb", "loam://mlab"]));
    let put = ok(uplink(
        &access,
        &[
            "dataset",
            "put",
            train_path.to_str().expect("path"),
            "loam://mlab/digits",
            "--label",
            "label",
            "--segment-size",
            "65536",
        ],
    ));
    assert!(put.contains("1437 records (shuffled)"), "{put}");
    // Stored shuffled, the records come back in the file's order.
    let back = train_path.with_extension("back");
    ok(uplink(
        &access,
        &["cp", "loam://mlab/digits", back.to_str().expect("path")],
    ));
    assert_eq!(std::fs::read(&back)?, std::fs::read(&train_path)?);
    let info = ok(uplink(&access, &["dataset", "info", "loam://mlab/digits"]));
    assert!(info.contains("records shuffled"), "{info}");

    let mut child = Command::new(binary("uplink")?)
        .arg("--access-file")
        .arg(&access)
        .args([
            "train",
            "loam://mlab/digits",
            "--model",
            "mlp",
            "--hidden",
            "64",
            "--rounds",
            "60",
            "--out",
            "loam://mlab/models/m",
            "--wait",
        ])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()?;
    let mut stdout = BufReader::new(child.stdout.take().expect("stdout"));
    let mut seen = String::new();
    let mut job_id = String::new();
    loop {
        let mut line = String::new();
        anyhow::ensure!(
            stdout.read_line(&mut line)? > 0,
            "train ended early: {seen}"
        );
        if let Some(rest) = line.strip_prefix("Job ") {
            job_id = rest
                .split_whitespace()
                .next()
                .unwrap_or_default()
                .to_string();
        }
        seen.push_str(&line);
        if line.starts_with("round 2/") {
            break;
        }
    }
    // A node that ran tasks so far holds data (only holders run tasks while
    // every holder is up).
    let sat_dir = &net
        .processes
        .iter()
        .find(|p| p.role == "satellite")
        .expect("satellite")
        .data_dir;
    let out = Command::new(binary("satellite")?)
        .args(["nodes", "ls", "--dir"])
        .arg(sat_dir)
        .args(["-o", "json"])
        .output()?;
    let nodes: serde_json::Value = serde_json::from_slice(&out.stdout)?;
    let holder = nodes
        .as_array()
        .expect("nodes")
        .iter()
        .find(|n| n["compute"]["tasks_accepted"].as_u64().unwrap_or(0) > 0)
        .and_then(|n| n["node_id"].as_str())
        .expect("a node has trained")
        .to_string();
    let index = net
        .storage_nodes()
        .position(|p| p.node_id.to_string() == holder)
        .expect("holder is a storage node");
    net.kill_storage_node(index)?;

    let rest: Vec<String> = stdout.lines().collect::<Result<_, _>>()?;
    let status = child.wait()?;
    let mut err = String::new();
    std::io::Read::read_to_string(&mut child.stderr.take().expect("stderr"), &mut err)?;
    assert!(status.success(), "train failed: {err}");
    assert!(
        rest.iter().any(|l| l.starts_with("round 60/60")),
        "{rest:?}"
    );
    assert!(
        rest.iter()
            .any(|l| l.starts_with("Model stored at loam://mlab/models/m")),
        "{rest:?}"
    );

    // A job is named by a unique prefix of its id, as git names commits.
    let status: serde_json::Value = serde_json::from_str(&ok(uplink(
        &access,
        &["job", "status", &job_id[..8], "-o", "json"],
    )))?;
    assert_eq!(status["id"].as_str(), Some(job_id.as_str()));
    assert_eq!(status["state"], "done");
    // The killed node's task failed once and ran elsewhere: every task of
    // every round was done. Elsewhere is a node that rebuilt the piece from
    // k others (or that already had it rebuilt for a verification), or,
    // once the repairer restored the piece, its new holder.
    assert!(
        status["tasks_failed"].as_u64().unwrap_or(0) >= 1,
        "{status}"
    );
    assert_eq!(
        status["tasks_done"].as_u64(),
        Some(60 * status["tasks_total"].as_u64().unwrap_or(0)),
        "{status}"
    );
    let eval = ok(uplink(
        &access,
        &[
            "model",
            "eval",
            "loam://mlab/models/m",
            "--data",
            test_path.to_str().expect("path"),
            "--label",
            "label",
        ],
    ));
    let acc: f64 = eval
        .lines()
        .find_map(|l| l.strip_prefix("accuracy "))
        .and_then(|v| v.trim().parse().ok())
        .expect("accuracy line");
    assert!(acc >= 0.95, "accuracy {acc} after the kill:\n{eval}");

    // The same model from a local file, and a one-line error for bad input.
    let model_path = tmp.path().join("m.loam");
    ok(uplink(
        &access,
        &[
            "cp",
            "loam://mlab/models/m",
            model_path.to_str().expect("path"),
        ],
    ));
    let local = ok(Command::new(binary("uplink")?)
        .args(["model", "eval"])
        .arg(&model_path)
        .arg("--data")
        .arg(&test_path)
        .output()?);
    assert!(local.contains(&format!("accuracy {acc:.4}")), "{local}");
    let predictions = ok(Command::new(binary("uplink")?)
        .args(["model", "predict"])
        .arg(&model_path)
        .arg("--data")
        .arg(&test_path)
        .output()?);
    let lines: Vec<&str> = predictions.lines().collect();
    assert_eq!(lines[0], "row,predicted_label");
    assert_eq!(lines.len(), 1 + 360, "one prediction per test row");
    let e = fails(uplink(
        &access,
        &[
            "train",
            "loam://mlab/digits",
            "--model",
            "resnet",
            "--out",
            "loam://mlab/models/x",
        ],
    ));
    assert!(e.contains("unknown model"), "{e}");
    net.stop().await;
    Ok(())
}

/// Settlement, limits and payouts through the real daemons and CLIs: the
/// nodes' settlement chores report egress without being asked, the
/// satellite refuses uploads beyond a project's limit with one line, and
/// a period's paystubs, export and ledgers agree.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn settlement_limits_and_payouts_through_the_clis() -> anyhow::Result<()> {
    let tmp = tempfile::tempdir()?;
    let net = ProcessNetwork::start(
        &tmp.path().join("net"),
        &NetworkOptions {
            nodes: 5,
            redundancy: "2/3/4/5".parse()?,
            chore_interval_secs: 0.5,
            ..Default::default()
        },
    )
    .await?;
    let access = net.dir.join("access");
    let sat_dir = net.dir.join("satellite");
    let sat = sat_dir.to_str().expect("utf-8");
    let mut data = vec![0u8; 3_000_000];
    rand::rngs::StdRng::seed_from_u64(9).fill_bytes(&mut data);
    let file = tmp.path().join("data");
    std::fs::write(&file, &data)?;
    let f = file.to_str().expect("utf-8");
    ok(uplink(&access, &["mb", "loam://pay"]));
    ok(uplink(&access, &["cp", f, "loam://pay/a"]));
    let back = tmp.path().join("back");
    let used_at = loam_common::orders::now_ms();
    for _ in 0..3 {
        ok(uplink(
            &access,
            &["cp", "loam://pay/a", back.to_str().expect("utf-8")],
        ));
    }

    // Once the downloads' order window has closed, one settlement round
    // on every node reports their egress to the satellite.
    net.settle_orders().await?;
    let usage: serde_json::Value =
        serde_json::from_str(&ok(uplink(&access, &["usage", "-o", "json"])))?;
    assert!(
        usage["buckets"][0]["egress_bytes"].as_u64().unwrap_or(0) >= 9_000_000,
        "egress not settled: {usage}"
    );
    // Billed on what the nodes signed for: the encrypted pieces' size
    // times k, a little over the 3 MB of plaintext.
    let stored = usage["stored_bytes"].as_u64().unwrap_or(0);
    assert!((3_000_000..3_010_000).contains(&stored), "{usage}");

    // A storage limit below what is stored: the next upload fails, in one line.
    let limits = run(
        "satellite",
        &[
            "project",
            "limits",
            "--dir",
            sat,
            "--project",
            "testnet",
            "--storage",
            "4MB",
        ],
    );
    assert!(
        limits.status.success(),
        "{}",
        String::from_utf8_lossy(&limits.stderr)
    );
    let err = fails(uplink(&access, &["cp", f, "loam://pay/b"]));
    assert!(err.contains("storage limit"), "{err}");
    let mut small = tmp
        .path()
        .join("small")
        .to_str()
        .expect("utf-8")
        .to_string();
    std::fs::write(&small, vec![1u8; 500_000])?;
    ok(uplink(&access, &["cp", &small, "loam://pay/c"]));
    small.clear();

    // Payouts for the period of the downloads, once it is ready: then it
    // is the last one.
    let ready = net.payout_period_ready(used_at).await;
    let out = run(
        "satellite",
        &["payouts", "compute", "--dir", sat, "--period", "last"],
    );
    let computed = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        out.status.success() && !computed.contains(": 0 paystubs"),
        "no paystubs: {computed}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let period = computed
        .split_whitespace()
        .nth(1)
        .and_then(|p| p.strip_suffix(':'))
        .expect("period name")
        .to_string();
    assert_eq!(period, ready.name);
    let total: u64 = computed
        .lines()
        .find_map(|l| l.strip_prefix("total to pay: "))
        .and_then(|l| l.split_whitespace().next())
        .and_then(|n| n.parse().ok())
        .expect("total");
    let export = run(
        "satellite",
        &[
            "payouts", "export", "--dir", sat, "--period", &period, "--format", "json",
        ],
    );
    let export: serde_json::Value = serde_json::from_slice(&export.stdout)?;
    let sum: u64 = export["payments"]
        .as_array()
        .expect("payments")
        .iter()
        .map(|p| {
            p["amount"]
                .as_str()
                .and_then(|a| a.parse::<u64>().ok())
                .expect("amount")
        })
        .sum();
    assert_eq!(sum, total, "the export sums to the paystubs");
    assert_eq!(export["total"].as_str(), Some(total.to_string().as_str()));
    let paid = run(
        "satellite",
        &[
            "payouts",
            "paid",
            "--dir",
            sat,
            "--period",
            &period,
            "--reference",
            "0xabc",
        ],
    );
    assert!(paid.status.success());

    // Every node's ledger fetches and verifies.
    let mut paid_rows = 0;
    for p in net.storage_nodes() {
        let dir = p.data_dir.to_str().expect("utf-8");
        let show = run("storagenode", &["payouts", "--dir", dir]);
        assert!(
            show.status.success(),
            "{}",
            String::from_utf8_lossy(&show.stderr)
        );
        // The same history as JSON lines: the paid period with what was
        // sent for it.
        let json = run("storagenode", &["payouts", "--dir", dir, "-o", "json"]);
        assert!(
            json.status.success(),
            "{}",
            String::from_utf8_lossy(&json.stderr)
        );
        let rows = support::json_lines(&String::from_utf8_lossy(&json.stdout))?;
        for row in rows.iter().filter(|r| r["period"] == period.as_str()) {
            assert_eq!(row["sent"], row["paid"], "{row}");
            paid_rows += 1;
        }
        let verify = run("storagenode", &["payouts", "verify", "--dir", dir]);
        assert!(
            verify.status.success(),
            "{}",
            String::from_utf8_lossy(&verify.stdout)
        );
    }
    assert!(paid_rows > 0, "no node shows the paid period as JSON");
    net.stop().await;
    Ok(())
}
