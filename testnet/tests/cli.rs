//! The real binaries as a user drives them: `testnet`-style process network,
//! the `uplink` CLI, and `kill -9` of storage nodes.
//!
//! Needs the binaries built (`cargo build --release --workspace --bins`,
//! which `scripts/test` does first).

use std::path::Path;
use std::process::{Command, Output};

use loam_testnet::process::{NetworkOptions, ProcessNetwork, binary};
use rand::{RngCore, SeedableRng};

fn uplink(access: &Path, args: &[&str]) -> Output {
    Command::new(binary("uplink").expect("uplink binary"))
        .arg("--access-file")
        .arg(access)
        .args(args)
        .output()
        .expect("run uplink")
}

fn ok(out: Output) -> String {
    assert!(
        out.status.success(),
        "uplink failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn fails(out: Output) -> String {
    assert!(!out.status.success(), "expected a failure");
    let err = String::from_utf8_lossy(&out.stderr).trim().to_string();
    assert_eq!(
        err.lines().count(),
        1,
        "one-line error expected, got {err:?}"
    );
    err
}

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
    let json: serde_json::Value = serde_json::from_str(&ok(uplink(
        &access,
        &["ls", "loam://clitest/dir/", "-o", "json"],
    )))?;
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
