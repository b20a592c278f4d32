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

/// Four nodes (any two rebuild a segment) and a gateway; segments of at
/// most `max_segment_size` bytes when given.
async fn network_with_gateway(dir: &Path, max_segment_size: Option<u64>) -> ProcessNetwork {
    ProcessNetwork::start(
        dir,
        &NetworkOptions {
            nodes: 4,
            redundancy: "2/3/4/4".parse().expect("scheme"),
            gateway: true,
            max_segment_size,
            ..Default::default()
        },
    )
    .await
    .expect("network")
}

#[tokio::test(flavor = "multi_thread")]
async fn boto3_suite_passes_against_the_gateway() {
    let dir = tempfile::tempdir().expect("tempdir");
    // Segments of 2 MiB: a part of 5 MiB or more spans several.
    let net = network_with_gateway(dir.path(), Some(2 << 20)).await;
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
    // The gateway counted what the suite did, by operation and status.
    let metrics_url = written.metrics_url.clone().expect("metrics url");
    let exposition = loam_testnet::http_get(&metrics_url).await;
    let health = loam_testnet::http_get(&metrics_url.replace("/metrics", "/health")).await;
    net.stop().await;
    assert!(out.status.success(), "boto3 suite failed:\n{text}");
    assert!(text.contains(" passed"), "{text}");
    let exposition = exposition.expect("gateway metrics");
    for series in [
        r#"loam_gateway_requests_total{operation="PutObject",status="200"}"#,
        r#"loam_gateway_requests_total{operation="CompleteMultipartUpload",status="200"}"#,
        r#"loam_gateway_requests_total{operation="GetObject",status="404"}"#,
        r#"loam_gateway_requests_total{operation="PutObject",status="403"}"#,
        "loam_gateway_received_bytes_total ",
        "loam_gateway_request_duration_seconds_bucket{operation=\"UploadPart\"",
    ] {
        assert!(
            exposition.contains(series),
            "{series} not in:\n{exposition}"
        );
    }
    assert_eq!(health.expect("health").trim(), "ok");
}

/// Runs a command line tool with `envs` (and none of the caller's own AWS
/// or rclone settings, such as a CA bundle), returning its stdout; panics
/// with its output when it fails.
fn tool(program: &str, args: &[&str], envs: &[(&str, String)]) -> String {
    // The Debian package scripts/install-deps installed, before whatever
    // else the path holds (another AWS CLI, say).
    let debian = Path::new("/usr/bin").join(program);
    let mut cmd = if debian.exists() {
        Command::new(debian)
    } else {
        Command::new(program)
    };
    for (k, _) in std::env::vars() {
        if k.starts_with("AWS_") || k.starts_with("RCLONE_") {
            cmd.env_remove(k);
        }
    }
    let out = cmd
        .args(args)
        .envs(envs.iter().map(|(k, v)| (*k, v.as_str())))
        .output()
        .unwrap_or_else(|e| {
            panic!("{program} not runnable ({e}); run scripts/install-deps --test")
        });
    assert!(
        out.status.success(),
        "{program} {args:?} failed:\n{}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// A tree of files: nested directories, names with spaces and non-ASCII,
/// sizes from empty to 1.5 MiB.
fn make_tree(root: &Path) -> Vec<String> {
    let mut names = Vec::new();
    for (i, name) in [
        "a.txt",
        "empty",
        "docs/readme.md",
        "docs/guide/intro.md",
        "images/photo 1.jpg",
        "images/ünïcode.png",
        "deep/1/2/3/4/leaf.bin",
        "big.bin",
    ]
    .iter()
    .enumerate()
    {
        let path = root.join(name);
        std::fs::create_dir_all(path.parent().expect("parent")).expect("mkdir");
        let len = match *name {
            "empty" => 0,
            "big.bin" => 1536 * 1024,
            _ => 1000 * (i + 1) + 7,
        };
        let body: Vec<u8> = (0..len).map(|j| (j * 13 + i * 101) as u8).collect();
        std::fs::write(&path, body).expect("write");
        names.push(name.to_string());
    }
    names.sort();
    names
}

/// Every file under `root`, relative, with its bytes.
fn read_tree(root: &Path) -> std::collections::BTreeMap<String, Vec<u8>> {
    fn walk(root: &Path, dir: &Path, out: &mut std::collections::BTreeMap<String, Vec<u8>>) {
        for e in std::fs::read_dir(dir).expect("read_dir") {
            let p = e.expect("entry").path();
            if p.is_dir() {
                walk(root, &p, out);
            } else {
                let rel = p.strip_prefix(root).expect("under root");
                out.insert(
                    rel.to_string_lossy().into_owned(),
                    std::fs::read(&p).expect("read"),
                );
            }
        }
    }
    let mut out = std::collections::BTreeMap::new();
    walk(root, root, &mut out);
    out
}

#[tokio::test(flavor = "multi_thread")]
async fn aws_cli_rclone_and_s3cmd_work_unchanged() {
    let dir = tempfile::tempdir().expect("tempdir");
    let net = network_with_gateway(&dir.path().join("net"), None).await;
    let s3 = net.s3.clone().expect("gateway");
    let tree = dir.path().join("tree");
    let names = make_tree(&tree);
    let want = read_tree(&tree);

    // The AWS CLI, told nothing but the endpoint and the credential.
    let aws_env = [
        ("AWS_ACCESS_KEY_ID", s3.access_key_id.clone()),
        ("AWS_SECRET_ACCESS_KEY", s3.secret_access_key.clone()),
        ("AWS_DEFAULT_REGION", s3.region.clone()),
        (
            "AWS_CONFIG_FILE",
            dir.path().join("aws-config").display().to_string(),
        ),
        (
            "AWS_SHARED_CREDENTIALS_FILE",
            dir.path().join("aws-credentials").display().to_string(),
        ),
        // No retries: a response the CLI cannot read fails the test
        // instead of costing a read timeout and passing on the retry.
        ("AWS_MAX_ATTEMPTS", "1".to_string()),
    ];
    let aws = |args: &[&str]| {
        let mut all = vec![
            "--cli-read-timeout",
            "30",
            "--endpoint-url",
            s3.endpoint.as_str(),
        ];
        all.extend_from_slice(args);
        tool("aws", &all, &aws_env)
    };
    aws(&["s3", "mb", "s3://cli"]);
    aws(&["s3", "sync", tree.to_str().expect("utf-8"), "s3://cli/tree"]);
    let listed = aws(&["s3", "ls", "--recursive", "s3://cli/tree/"]);
    for name in &names {
        assert!(
            listed.contains(&format!("tree/{name}")),
            "{name} not in:\n{listed}"
        );
    }
    let top = aws(&["s3", "ls", "s3://cli/tree/"]);
    assert!(
        top.contains("PRE docs/") && top.contains("PRE images/"),
        "{top}"
    );
    // A second sync has nothing to do.
    let again = aws(&["s3", "sync", tree.to_str().expect("utf-8"), "s3://cli/tree"]);
    assert!(!again.contains("upload:"), "{again}");
    let back = dir.path().join("aws-back");
    aws(&["s3", "sync", "s3://cli/tree", back.to_str().expect("utf-8")]);
    assert_eq!(read_tree(&back), want);
    let range = dir.path().join("range.out");
    aws(&[
        "s3api",
        "get-object",
        "--bucket",
        "cli",
        "--key",
        "tree/big.bin",
        "--range",
        "bytes=1000-1999",
        range.to_str().expect("utf-8"),
    ]);
    assert_eq!(
        std::fs::read(&range).expect("range"),
        want["big.bin"][1000..2000]
    );
    aws(&[
        "s3api",
        "copy-object",
        "--bucket",
        "cli",
        "--key",
        "copied.bin",
        "--copy-source",
        "cli/tree/big.bin",
    ]);
    let copied = dir.path().join("copied.bin");
    aws(&[
        "s3",
        "cp",
        "s3://cli/copied.bin",
        copied.to_str().expect("utf-8"),
    ]);
    assert_eq!(std::fs::read(&copied).expect("copy"), want["big.bin"]);

    // 300 MiB both ways: the CLI uploads it in 8 MiB parts (multipart) and
    // reads it back in ranged GETs.
    let large = dir.path().join("large.bin");
    {
        use std::io::Write;
        let mut f = std::io::BufWriter::new(std::fs::File::create(&large).expect("create"));
        let mut block = vec![0u8; 1 << 20];
        for i in 0..300u32 {
            for (j, b) in block.iter_mut().enumerate() {
                *b = (j as u32)
                    .wrapping_mul(31)
                    .wrapping_add(i.wrapping_mul(977)) as u8;
            }
            block[..4].copy_from_slice(&i.to_be_bytes());
            f.write_all(&block).expect("write");
        }
    }
    let large_path = large.to_str().expect("utf-8");
    aws(&["s3", "cp", large_path, "s3://cli/large.bin"]);
    let head = aws(&[
        "s3api",
        "head-object",
        "--bucket",
        "cli",
        "--key",
        "large.bin",
    ]);
    assert!(
        head.contains("-38\\\"") && head.contains("314572800"),
        "300 MiB in 38 parts of 8 MiB:\n{head}"
    );
    let large_back = dir.path().join("large.back");
    aws(&[
        "s3",
        "cp",
        "s3://cli/large.bin",
        large_back.to_str().expect("utf-8"),
    ]);
    assert!(
        std::fs::read(&large).expect("read") == std::fs::read(&large_back).expect("read back"),
        "300 MiB came back different"
    );
    std::fs::remove_file(&large).expect("rm");
    std::fs::remove_file(&large_back).expect("rm");

    // rclone, configured through its environment.
    let rclone_env = [
        (
            "RCLONE_CONFIG",
            dir.path().join("rclone.conf").display().to_string(),
        ),
        ("RCLONE_CONFIG_LOAM_TYPE", "s3".to_string()),
        ("RCLONE_CONFIG_LOAM_PROVIDER", "Other".to_string()),
        ("RCLONE_CONFIG_LOAM_ACCESS_KEY_ID", s3.access_key_id.clone()),
        (
            "RCLONE_CONFIG_LOAM_SECRET_ACCESS_KEY",
            s3.secret_access_key.clone(),
        ),
        ("RCLONE_CONFIG_LOAM_ENDPOINT", s3.endpoint.clone()),
        ("RCLONE_CONFIG_LOAM_REGION", s3.region.clone()),
    ];
    let src = tree.to_str().expect("utf-8");
    tool("rclone", &["mkdir", "loam:rclone"], &rclone_env);
    tool("rclone", &["copy", src, "loam:rclone/tree"], &rclone_env);
    let lsf = tool(
        "rclone",
        &["lsf", "-R", "--files-only", "loam:rclone/tree"],
        &rclone_env,
    );
    let mut got: Vec<&str> = lsf.lines().collect();
    got.sort();
    assert_eq!(got, names.iter().map(String::as_str).collect::<Vec<_>>());
    // check compares sizes and MD5s (the gateway's ETags).
    tool("rclone", &["check", src, "loam:rclone/tree"], &rclone_env);
    std::fs::remove_file(tree.join("a.txt")).expect("rm");
    tool("rclone", &["sync", src, "loam:rclone/tree"], &rclone_env);
    let lsf = tool(
        "rclone",
        &["lsf", "-R", "--files-only", "loam:rclone/tree"],
        &rclone_env,
    );
    assert!(!lsf.lines().any(|l| l == "a.txt"), "{lsf}");
    tool("rclone", &["check", src, "loam:rclone/tree"], &rclone_env);

    // s3cmd, from a config file of its own.
    let host = s3.endpoint.trim_start_matches("http://").to_string();
    let cfg = dir.path().join("s3cfg");
    std::fs::write(
        &cfg,
        format!(
            "[default]\naccess_key = {}\nsecret_key = {}\nhost_base = {host}\nhost_bucket = {host}\nuse_https = False\nbucket_location = {}\n",
            s3.access_key_id, s3.secret_access_key, s3.region
        ),
    )
    .expect("s3cfg");
    let s3cmd = |args: &[&str]| {
        let mut all = vec!["-c", cfg.to_str().expect("utf-8")];
        all.extend_from_slice(args);
        tool("s3cmd", &all, &[])
    };
    s3cmd(&["mb", "s3://s3cmd"]);
    let file = tree.join("big.bin");
    s3cmd(&["put", file.to_str().expect("utf-8"), "s3://s3cmd/big.bin"]);
    let ls = s3cmd(&["ls", "s3://s3cmd"]);
    assert!(ls.contains("s3://s3cmd/big.bin"), "{ls}");
    let got = dir.path().join("s3cmd.out");
    s3cmd(&["get", "s3://s3cmd/big.bin", got.to_str().expect("utf-8")]);
    assert_eq!(std::fs::read(&got).expect("get"), want["big.bin"]);
    s3cmd(&["del", "s3://s3cmd/big.bin"]);
    s3cmd(&["rb", "s3://s3cmd"]);
    net.stop().await;
}
