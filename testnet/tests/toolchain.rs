//! The workspace's declared `rust-version` is a real minimum: no
//! dependency the Linux build resolves asks for a newer toolchain.

use std::process::Command;

fn version(s: &str) -> (u64, u64, u64) {
    let mut parts = s.split('.').map(|p| p.parse::<u64>().unwrap_or(0));
    (
        parts.next().unwrap_or(0),
        parts.next().unwrap_or(0),
        parts.next().unwrap_or(0),
    )
}

#[test]
fn declared_rust_version_covers_every_dependency() {
    let out = Command::new(std::env::var("CARGO").unwrap_or_else(|_| "cargo".into()))
        .args([
            "metadata",
            "--format-version",
            "1",
            "--offline",
            "--filter-platform",
            "x86_64-unknown-linux-gnu",
        ])
        .current_dir(concat!(env!("CARGO_MANIFEST_DIR"), "/.."))
        .output()
        .expect("run cargo metadata");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let meta: serde_json::Value = serde_json::from_slice(&out.stdout).expect("metadata json");
    let used: std::collections::HashSet<&str> = meta["resolve"]["nodes"]
        .as_array()
        .expect("resolve")
        .iter()
        .filter_map(|n| n["id"].as_str())
        .collect();
    let packages = meta["packages"].as_array().expect("packages");
    let members: Vec<&str> = meta["workspace_members"]
        .as_array()
        .expect("members")
        .iter()
        .filter_map(|m| m.as_str())
        .collect();
    let declared: Vec<(&str, Option<&str>)> = packages
        .iter()
        .filter(|p| p["id"].as_str().is_some_and(|id| members.contains(&id)))
        .map(|p| {
            (
                p["name"].as_str().unwrap_or("?"),
                p["rust_version"].as_str(),
            )
        })
        .collect();
    assert_eq!(declared.len(), members.len());
    let missing: Vec<&str> = declared
        .iter()
        .filter(|(_, v)| v.is_none())
        .map(|(n, _)| *n)
        .collect();
    assert!(
        missing.is_empty(),
        "crates without a rust-version: {missing:?}"
    );
    let ours = declared
        .iter()
        .filter_map(|(_, v)| *v)
        .min_by_key(|v| version(v))
        .expect("the workspace declares a rust-version");
    let newest = packages
        .iter()
        .filter(|p| p["id"].as_str().is_some_and(|id| used.contains(id)))
        .filter_map(|p| Some((version(p["rust_version"].as_str()?), p["name"].as_str()?)))
        .max()
        .expect("dependencies declare versions");
    assert!(
        version(ours) >= newest.0,
        "rust-version {ours} is older than what {} needs ({:?})",
        newest.1,
        newest.0
    );
    // The code's own language features: let chains are 1.88.
    assert!(version(ours) >= (1, 88, 0));
}
