//! Real S3 clients against the gateway of a process network: the boto3
//! suite in `tests/s3/test_boto3.py` (every operation the gateway serves,
//! error codes, presigned URLs, a read-only and a prefix-scoped credential).
//!
//! Needs the binaries built and boto3 + pytest for the system's Python
//! (`scripts/install-deps --test` installs Debian's python3-boto3 and
//! python3-pytest).

mod support;

use std::path::{Path, PathBuf};
use std::process::Command;

use loam_common::access::{Access, Restriction};
use loam_testnet::process::{NetworkOptions, ProcessNetwork, S3Endpoint};

/// A Python that has boto3 and pytest: Debian's (what install-deps puts
/// them in), else the first `python3` on the path.
fn python() -> PathBuf {
    let has = |p: &Path| {
        Command::new(p)
            .args(["-c", "import boto3, pytest"])
            .output()
            .is_ok_and(|o| o.status.success())
    };
    for p in ["/usr/bin/python3", "python3"] {
        if has(Path::new(p)) {
            return PathBuf::from(p);
        }
    }
    panic!("no python3 with boto3 and pytest; run scripts/install-deps --test");
}

/// Makes a gateway credential for `access` (the running gateway reads it
/// on first use) and writes it, with the endpoint, as an s3.json at `out`.
fn credential(net: &ProcessNetwork, access: &Access, out: &Path) {
    let made = Command::new(loam_testnet::process::binary("gateway").expect("gateway binary"))
        .arg("--config-dir")
        .arg(net.dir.join("gateway"))
        .args(["setup", "--json"])
        .env("LOAM_ACCESS", access.serialize())
        .output()
        .expect("run gateway setup");
    assert!(
        made.status.success(),
        "{}",
        String::from_utf8_lossy(&made.stderr)
    );
    let made: serde_json::Value = serde_json::from_slice(&made.stdout).expect("json");
    let s3 = net.s3.as_ref().expect("gateway started");
    let endpoint = S3Endpoint {
        access_key_id: made["access_key_id"].as_str().expect("id").to_string(),
        secret_access_key: made["secret_access_key"]
            .as_str()
            .expect("secret")
            .to_string(),
        ..s3.clone()
    };
    std::fs::write(out, serde_json::to_vec(&endpoint).expect("json")).expect("write");
}

#[tokio::test(flavor = "multi_thread")]
async fn boto3_suite_passes_against_the_gateway() {
    let dir = tempfile::tempdir().expect("tempdir");
    let net = ProcessNetwork::start(
        dir.path(),
        &NetworkOptions {
            nodes: 4,
            redundancy: "2/3/4/4".parse().expect("scheme"),
            gateway: true,
            ..Default::default()
        },
    )
    .await
    .expect("network");
    let s3_json = net.dir.join("s3.json");
    let written: S3Endpoint =
        serde_json::from_slice(&std::fs::read(&s3_json).expect("s3.json")).expect("s3.json");
    assert!(written.endpoint.starts_with("http://127.0.0.1:"));
    assert_eq!(written.region, "us-east-1");

    let read_only = net
        .access
        .restrict(&Restriction {
            disallow_writes: true,
            disallow_deletes: true,
            ..Default::default()
        })
        .expect("restrict");
    let ro_json = net.dir.join("s3-readonly.json");
    credential(&net, &read_only, &ro_json);
    // The bucket the prefix-scoped grant names is made by the suite.
    let scoped = net
        .access
        .restrict(&Restriction {
            paths: vec![("scoped".into(), "mine/".into())],
            ..Default::default()
        })
        .expect("restrict");
    let prefix_json = net.dir.join("s3-prefix.json");
    credential(&net, &scoped, &prefix_json);

    let suite = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/s3/test_boto3.py");
    let out = tokio::process::Command::new(python())
        .args(["-m", "pytest", "-q", "-p", "no:cacheprovider"])
        .arg(&suite)
        .env("LOAM_S3_JSON", &s3_json)
        .env("LOAM_S3_READONLY_JSON", &ro_json)
        .env("LOAM_S3_PREFIX_JSON", &prefix_json)
        .output()
        .await
        .expect("run pytest");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    println!("{text}");
    net.stop().await;
    assert!(out.status.success(), "boto3 suite failed:\n{text}");
    assert!(text.contains(" passed"), "{text}");
}
