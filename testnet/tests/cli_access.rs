//! Sharing through the real binaries: `uplink share` read-only and
//! write-only grants, revocation of a shared grant and what was narrowed
//! from it, saved grants, and API keys made by the owner and the operator.
//!
//! Needs the binaries built (`cargo build --release --workspace --bins`,
//! which `scripts/test` does first).

mod support;

use std::path::Path;
use std::process::{Command, Output};
use std::time::{Duration, Instant};

use loam_testnet::process::binary;
use support::{fails, four_nodes, json_lines, ok, run, uplink};

/// Exit code of refusals (docs/cli.md).
const PERMISSION: i32 = 4;

/// Asserts a refusal: exit code 4 and one clear line; returns the line.
fn refused(out: Output) -> String {
    let code = out.status.code();
    let line = fails(out);
    assert_eq!(code, Some(PERMISSION), "{line}");
    assert!(line.len() < 300, "{line}");
    line
}

fn path(p: &Path) -> &str {
    p.to_str().expect("UTF-8 path")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn read_only_and_write_only_grants_do_what_they_say() -> anyhow::Result<()> {
    let tmp = tempfile::tempdir()?;
    let net = four_nodes(tmp.path()).await?;
    let root = net.dir.join("access");
    let up = |args: &[&str]| uplink(&root, args);
    let f = tmp.path().join("f");
    std::fs::write(&f, vec![42u8; 50_000])?;
    ok(up(&["mb", "loam://shr"]));
    ok(up(&["cp", path(&f), "loam://shr/team/x"]));
    ok(up(&["cp", path(&f), "loam://shr/other/y"]));

    // Read-only, for team/.
    let g = tmp.path().join("g");
    let out = up(&[
        "share",
        "loam://shr/team/",
        "--readonly",
        "--export-to",
        path(&g),
    ]);
    let summary = String::from_utf8_lossy(&out.stderr).into_owned();
    ok(out);
    assert!(summary.contains("read-only"), "{summary}");
    assert!(summary.contains("only loam://shr/team/"), "{summary}");
    let ro = |args: &[&str]| uplink(&g, args);
    assert!(ok(ro(&["ls", "loam://shr/team/"])).contains("team/x"));
    let back = tmp.path().join("back");
    ok(ro(&["cp", "loam://shr/team/x", path(&back)]));
    assert_eq!(std::fs::read(&back)?, std::fs::read(&f)?);
    // The bucket's top shows the way down, and only that.
    let top = ok(ro(&["ls", "loam://shr/"]));
    assert!(top.contains("team/") && !top.contains("other"), "{top}");
    let e = refused(ro(&["ls", "loam://shr/other/"]));
    assert!(e.contains("only holds keys for loam://shr/team/"), "{e}");
    refused(ro(&["cp", "loam://shr/other/y", path(&back)]));
    let e = refused(ro(&["cp", path(&f), "loam://shr/team/new"]));
    assert!(e.ends_with("this grant is read-only"), "{e}");
    let e = refused(ro(&["rm", "loam://shr/team/x"]));
    assert!(e.ends_with("this grant is read-only"), "{e}");
    refused(ro(&["mb", "loam://shr2"]));
    refused(ro(&["rm", "loam://shr/other/y"]));

    // Write-only, for drop/: uploads, and nothing else.
    let w = tmp.path().join("w");
    ok(up(&[
        "share",
        "loam://shr/drop/",
        "--writeonly",
        "--export-to",
        path(&w),
    ]));
    let wo = |args: &[&str]| uplink(&w, args);
    ok(wo(&["cp", path(&f), "loam://shr/drop/z"]));
    let e = refused(wo(&["ls", "loam://shr/drop/"]));
    assert!(e.ends_with("this grant is write-only"), "{e}");
    refused(wo(&["cp", "loam://shr/drop/z", path(&back)]));
    refused(wo(&["rm", "loam://shr/drop/z"]));
    refused(wo(&["cp", path(&f), "loam://shr/team/z"]));
    // The owner sees the upload.
    assert!(ok(up(&["ls", "loam://shr/drop/"])).contains("drop/z"));
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn revoking_a_shared_grant_kills_it_and_its_children_only() -> anyhow::Result<()> {
    let tmp = tempfile::tempdir()?;
    let net = four_nodes(tmp.path()).await?;
    let root = net.dir.join("access");
    let up = |args: &[&str]| uplink(&root, args);
    let f = tmp.path().join("f");
    std::fs::write(&f, b"shared")?;
    ok(up(&["mb", "loam://rev"]));
    ok(up(&["cp", path(&f), "loam://rev/team/x"]));

    let shared = tmp.path().join("shared");
    let sibling = tmp.path().join("sibling");
    let child = tmp.path().join("child");
    for g in [&shared, &sibling] {
        ok(up(&[
            "share",
            "loam://rev/team/",
            "--readonly",
            "--export-to",
            path(g),
        ]));
    }
    ok(uplink(
        &shared,
        &[
            "access",
            "restrict",
            "--not-after",
            "+1d",
            "--disallow-lists",
            "--export-to",
            path(&child),
        ],
    ));
    let inspected = ok(uplink(&child, &["access", "inspect", "-o", "json"]));
    let v: serde_json::Value = serde_json::from_str(&inspected)?;
    assert_eq!(v["caveats"].as_array().map(Vec::len), Some(2), "{v}");
    assert_eq!(v["encryption"][0], "loam://rev/team/", "{v}");
    assert_eq!(v["project"], "testnet", "{v}");
    for g in [&shared, &sibling, &child] {
        ok(uplink(g, &["cp", "loam://rev/team/x", "-"]));
    }

    // Only the parent may revoke: a sibling cannot.
    refused(uplink(&sibling, &["access", "revoke", path(&shared)]));
    let grant = std::fs::read_to_string(&shared)?;
    let revoked_at = Instant::now();
    ok(up(&["access", "revoke", grant.trim()]));
    // Within 5 s, both stop working (they already have: the satellite
    // checks every request against the revocations it holds in memory).
    for g in [&shared, &child] {
        loop {
            let out = uplink(g, &["cp", "loam://rev/team/x", "-"]);
            if !out.status.success() {
                let e = refused(out);
                assert!(e.contains("revoked"), "{e}");
                break;
            }
            assert!(
                revoked_at.elapsed() < Duration::from_secs(5),
                "a revoked grant still works after 5 s"
            );
        }
    }
    ok(uplink(&sibling, &["cp", "loam://rev/team/x", "-"]));
    assert!(ok(up(&["ls", "loam://rev/team/"])).contains("team/x"));
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn saved_grants_and_api_keys() -> anyhow::Result<()> {
    let tmp = tempfile::tempdir()?;
    let net = four_nodes(tmp.path()).await?;
    let root = net.dir.join("access");
    let config = tmp.path().join("config");
    let saved = |args: &[&str]| -> Output {
        Command::new(binary("uplink").expect("uplink binary"))
            .env("UPLINK_CONFIG_DIR", &config)
            .env_remove("UPLINK_ACCESS")
            .args(args)
            .output()
            .expect("run uplink")
    };
    // No grant anywhere: a clear line.
    let e = fails(saved(&["ls"]));
    assert!(e.contains("uplink access import"), "{e}");
    ok(saved(&["access", "import", "main", path(&root)]));
    let e = fails(saved(&["access", "import", "main", path(&root)]));
    assert!(e.contains("--force"), "{e}");
    ok(saved(&["mb", "loam://named"]));
    let ro = tmp.path().join("ro");
    ok(saved(&[
        "share",
        "loam://named/",
        "--readonly",
        "--export-to",
        path(&ro),
    ]));
    ok(saved(&["access", "import", "reader", path(&ro)]));
    let listed = json_lines(&ok(saved(&["access", "list", "-o", "json"])))?;
    assert_eq!(listed.len(), 2);
    assert_eq!(listed[0]["name"], "main");
    assert_eq!(listed[0]["current"], true);
    // --access NAME picks one; use NAME changes the default.
    refused(saved(&["--access", "reader", "mb", "loam://other"]));
    ok(saved(&["access", "use", "reader"]));
    refused(saved(&["cp", "-", "loam://named/x"]));
    ok(saved(&["--access", "main", "ls", "loam://named/"]));
    ok(saved(&["access", "remove", "reader"]));
    let e = fails(saved(&["access", "use", "reader"]));
    assert!(e.contains("no saved grant named"), "{e}");
    let store = config.join("access.toml");
    assert_eq!(
        std::os::unix::fs::PermissionsExt::mode(&std::fs::metadata(&store)?.permissions()) & 0o777,
        0o600
    );

    // API keys: the owner makes another, lists and revokes it.
    let ci = tmp.path().join("ci");
    ok(uplink(
        &root,
        &[
            "api-key",
            "create",
            "--name",
            "ci",
            "--export-to",
            path(&ci),
        ],
    ));
    ok(uplink(&ci, &["ls"]));
    let keys = json_lines(&ok(uplink(&root, &["api-key", "list", "-o", "json"])))?;
    let ci_key = keys
        .iter()
        .find(|k| k["name"] == "ci")
        .expect("the new key is listed");
    let id = ci_key["id"].as_str().expect("id").to_string();
    // A narrowed grant may not manage keys.
    refused(uplink(&ro, &["api-key", "list"]));
    ok(uplink(&root, &["api-key", "revoke", &id]));
    refused(uplink(&ci, &["ls"]));
    ok(uplink(&root, &["ls"]));
    // The operator's view of the same keys.
    let sat_dir = net.dir.join("satellite");
    let listed = json_lines(&ok(run(
        "satellite",
        &[
            "api-key",
            "list",
            "--dir",
            path(&sat_dir),
            "--project",
            "testnet",
            "-o",
            "json",
        ],
    )))?;
    let ci_row = listed
        .iter()
        .find(|k| k["id"] == id.as_str())
        .expect("listed");
    assert!(ci_row["revoked"].is_string(), "{ci_row}");
    Ok(())
}
