//! Helpers shared by the tests that drive the real binaries.

#![allow(dead_code)] // each test file uses its own subset

use std::path::Path;
use std::process::{Command, Output};

use loam_testnet::process::{NetworkOptions, ProcessNetwork, binary};

/// Runs `uplink --access-file ACCESS ARGS...`.
pub fn uplink(access: &Path, args: &[&str]) -> Output {
    Command::new(binary("uplink").expect("uplink binary"))
        .arg("--access-file")
        .arg(access)
        .args(args)
        .output()
        .expect("run uplink")
}

/// Runs one of the project's binaries.
pub fn run(bin: &str, args: &[&str]) -> Output {
    Command::new(binary(bin).expect("binary"))
        .args(args)
        .output()
        .expect("run")
}

/// Its standard output, after asserting it succeeded.
pub fn ok(out: Output) -> String {
    assert!(
        out.status.success(),
        "command failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// Its one-line error, after asserting it failed with exactly one line.
pub fn fails(out: Output) -> String {
    assert!(
        !out.status.success(),
        "expected a failure, got: {}",
        String::from_utf8_lossy(&out.stdout)
    );
    let err = String::from_utf8_lossy(&out.stderr).trim().to_string();
    assert_eq!(
        err.lines().count(),
        1,
        "one-line error expected, got {err:?}"
    );
    err
}

/// Percent-encodes a URL query value.
pub fn encode(s: &str) -> String {
    s.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => {
                (b as char).to_string()
            }
            _ => format!("%{b:02X}"),
        })
        .collect()
}

/// A program the project's scripts install (`scripts/install-deps`), or
/// a clear failure naming the script.
pub fn system_program(names: &[&str]) -> std::path::PathBuf {
    for name in names {
        for dir in std::env::var_os("PATH")
            .iter()
            .flat_map(std::env::split_paths)
        {
            let p = dir.join(name);
            if p.is_file() {
                return p;
            }
        }
    }
    panic!("none of {names:?} is installed; run scripts/install-deps (scripts/test does)");
}

/// A process network of four nodes (`2/3/4/4`) under `dir/net`.
pub async fn four_nodes(dir: &Path) -> anyhow::Result<ProcessNetwork> {
    ProcessNetwork::start(
        &dir.join("net"),
        &NetworkOptions {
            nodes: 4,
            redundancy: "2/3/4/4".parse()?,
            ..Default::default()
        },
    )
    .await
}

/// One JSON value per line (the `-o json` form of listings).
pub fn json_lines(text: &str) -> serde_json::Result<Vec<serde_json::Value>> {
    text.lines().map(serde_json::from_str).collect()
}
