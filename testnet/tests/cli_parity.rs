//! The uplink verbs people bring from Storj's uplink and the AWS CLI,
//! through the real binaries: `cp -r` both ways, `mv` on the satellite,
//! `rm -r`, `rb --force`, `ls` of an object and sorted listings,
//! `dataset info -o json`.
//!
//! Needs the binaries built (`cargo build --release --workspace --bins`,
//! which `scripts/test` does first).

mod support;

use std::collections::BTreeMap;
use std::path::Path;

use support::{fails, four_nodes, ok, uplink};

/// Every file under `dir` by relative path, with its bytes.
fn tree(dir: &Path) -> BTreeMap<String, Vec<u8>> {
    loam_testnet::files_under(dir)
        .into_iter()
        .map(|path| {
            let rel = path.strip_prefix(dir).expect("under dir");
            let bytes = std::fs::read(&path).expect("read");
            (rel.to_string_lossy().into_owned(), bytes)
        })
        .collect()
}

/// The keys of `uplink ls` text output (the last column), in order.
fn keys(listing: &str) -> Vec<String> {
    listing
        .lines()
        .skip(1)
        .filter_map(|l| l.split_whitespace().last().map(str::to_string))
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn recursive_copies_moves_and_removals() -> anyhow::Result<()> {
    let tmp = tempfile::tempdir()?;
    let net = four_nodes(tmp.path()).await?;
    let access = net.dir.join("access");
    let up = |args: &[&str]| uplink(&access, args);
    ok(up(&["mb", "loam://pp"]));

    // A tree of 60 files in nested folders: empty, inline-sized and remote.
    let src = tmp.path().join("src");
    for i in 0..60usize {
        let dir = src.join(format!("d{}", i % 3)).join(format!("e{}", i % 4));
        std::fs::create_dir_all(&dir)?;
        let len = [0, 100, 3_000, 70_000][i % 4] + i;
        let data: Vec<u8> = (0..len).map(|b| (b * 31 + i) as u8).collect();
        std::fs::write(dir.join(format!("f{i:02}")), data)?;
    }
    std::fs::create_dir_all(src.join("empty-dir"))?;

    // cp without -r says how to copy a tree; --dry-run copies nothing.
    let e = fails(up(&[
        "cp",
        src.to_str().expect("UTF-8 path"),
        "loam://pp/t/",
    ]));
    assert!(e.contains("cp -r"), "{e}");
    let dry = ok(up(&[
        "cp",
        "-r",
        "--dry-run",
        src.to_str().expect("UTF-8 path"),
        "loam://pp/t/",
    ]));
    assert_eq!(
        dry.lines()
            .filter(|l| l.starts_with("would upload"))
            .count(),
        60
    );
    assert!(keys(&ok(up(&["ls", "-r", "loam://pp/"]))).is_empty());

    ok(up(&[
        "cp",
        "-r",
        "--parallelism",
        "3",
        src.to_str().expect("UTF-8 path"),
        "loam://pp/t/",
    ]));
    let listed = keys(&ok(up(&["ls", "-r", "loam://pp/t/"])));
    assert_eq!(listed.len(), 60);
    let mut sorted = listed.clone();
    sorted.sort();
    assert_eq!(listed, sorted, "ls is sorted by key");
    assert!(listed.contains(&"t/d0/e0/f00".to_string()), "{listed:?}");

    // Down again, identical.
    let out = tmp.path().join("out");
    ok(up(&[
        "cp",
        "-r",
        "loam://pp/t/",
        out.to_str().expect("UTF-8 path"),
    ]));
    assert_eq!(tree(&out), tree(&src));

    // ls of an object key shows the object.
    let one = ok(up(&["ls", "loam://pp/t/d1/e1/f01"]));
    assert_eq!(keys(&one), ["t/d1/e1/f01"]);
    assert!(fails(up(&["ls", "loam://pp/t/none"])).contains("nothing at"));

    // mv renames on the satellite: a remote and an inline object, one over
    // an existing object; the data reads back, the source is gone.
    for (from, to) in [
        ("t/d0/e3/f03", "moved/remote"),
        ("t/d1/e1/f01", "moved/inline"),
        ("t/d2/e2/f02", "moved/remote"),
    ] {
        ok(up(&[
            "mv",
            &format!("loam://pp/{from}"),
            &format!("loam://pp/{to}"),
        ]));
        let back = tmp.path().join("back");
        ok(up(&[
            "cp",
            &format!("loam://pp/{to}"),
            back.to_str().expect("UTF-8 path"),
        ]));
        let rel = from.strip_prefix("t/").expect("under t/");
        assert_eq!(
            std::fs::read(&back)?,
            std::fs::read(src.join(rel))?,
            "{from}"
        );
        assert!(fails(up(&["ls", &format!("loam://pp/{from}")])).contains("nothing at"));
    }
    assert_eq!(
        keys(&ok(up(&["ls", "loam://pp/moved/"]))),
        ["moved/inline", "moved/remote"]
    );
    let e = fails(up(&["mv", "loam://pp/t/none", "loam://pp/x"]));
    assert!(e.contains("not found"), "{e}");

    // rm -r: --dry-run removes nothing; then the prefix goes.
    let dry = ok(up(&["rm", "-r", "--dry-run", "loam://pp/t/d0"]));
    assert_eq!(
        dry.lines()
            .filter(|l| l.starts_with("would remove"))
            .count(),
        19
    );
    assert_eq!(keys(&ok(up(&["ls", "-r", "loam://pp/t/"]))).len(), 57);
    ok(up(&["rm", "-r", "loam://pp/t/d0"]));
    assert_eq!(keys(&ok(up(&["ls", "-r", "loam://pp/t/"]))).len(), 38);

    // cp between two loam:// URLs copies on the satellite: the copy
    // outlives its source. cp -r copies a prefix, mv -r moves one, and
    // what arrives reads back identical.
    ok(up(&[
        "cp",
        "loam://pp/moved/remote",
        "loam://pp/copies/one",
    ]));
    ok(up(&["rm", "loam://pp/moved/remote"]));
    let back = tmp.path().join("copy-back");
    ok(up(&[
        "cp",
        "loam://pp/copies/one",
        back.to_str().expect("UTF-8 path"),
    ]));
    assert_eq!(std::fs::read(&back)?, std::fs::read(src.join("d2/e2/f02"))?);
    let d1 = keys(&ok(up(&["ls", "-r", "loam://pp/t/d1/"])));
    assert_eq!(d1.len(), 19);
    ok(up(&["cp", "-r", "loam://pp/t/d1/", "loam://pp/copies/d1/"]));
    let e = fails(up(&[
        "mv",
        "-r",
        "loam://pp/copies/",
        "loam://pp/copies/d1/x/",
    ]));
    assert!(e.contains("lies under"), "{e}");
    let dry = ok(up(&[
        "mv",
        "-r",
        "--dry-run",
        "loam://pp/copies/d1/",
        "loam://pp/renamed/",
    ]));
    assert_eq!(
        dry.lines().filter(|l| l.starts_with("would move")).count(),
        19
    );
    ok(up(&[
        "mv",
        "-r",
        "loam://pp/copies/d1/",
        "loam://pp/renamed/",
    ]));
    assert!(
        keys(&ok(up(&["ls", "-r", "loam://pp/copies/"])))
            .iter()
            .all(|k| !k.starts_with("copies/d1/"))
    );
    assert_eq!(keys(&ok(up(&["ls", "-r", "loam://pp/renamed/"]))).len(), 19);
    let renamed = tmp.path().join("renamed");
    ok(up(&[
        "cp",
        "-r",
        "loam://pp/renamed/",
        renamed.to_str().expect("UTF-8 path"),
    ]));
    let mut expected = tree(&src.join("d1"));
    expected.remove("e1/f01");
    assert_eq!(tree(&renamed), expected);
    // The originals are still there after their copies moved.
    assert_eq!(keys(&ok(up(&["ls", "-r", "loam://pp/t/d1/"]))), d1);

    // One output style: JSON lines, times in UTC marked Z, SI sizes.
    let json = ok(up(&["ls", "-r", "-o", "json", "loam://pp/renamed/"]));
    let objects = support::json_lines(&json)?;
    assert_eq!(objects.len(), 19);
    assert!(
        objects
            .iter()
            .all(|o| o["key"].as_str().is_some_and(|k| k.starts_with("renamed/")))
    );
    let text = ok(up(&["ls", "loam://pp/renamed/e0/"]));
    assert!(text.starts_with("KIND CREATED (UTC)"), "{text}");
    let row = text.lines().nth(1).expect("a row");
    assert!(
        row.split_whitespace()
            .nth(1)
            .is_some_and(|t| t.ends_with('Z')),
        "{row}"
    );
    assert!(row.contains(" kB ") || row.contains(" B "), "{row}");
    let bucket: serde_json::Value =
        serde_json::from_str(&ok(up(&["mb", "-o", "json", "loam://pp2"])))?;
    assert_eq!(bucket["name"], "pp2");

    // A key that would escape the target directory is refused before
    // anything is written.
    ok(up(&[
        "cp",
        src.join("d0/e0/f00").to_str().expect("UTF-8 path"),
        "loam://pp/evil/../x",
    ]));
    let evil = tmp.path().join("evil-out");
    let e = fails(up(&[
        "cp",
        "-r",
        "loam://pp/evil/",
        evil.to_str().expect("UTF-8 path"),
    ]));
    assert!(e.contains("cannot be a file name"), "{e}");
    assert!(!tmp.path().join("x").exists() && !evil.exists());

    // rb of a bucket with objects suggests --force, which empties it.
    let e = fails(up(&["rb", "loam://pp"]));
    assert!(e.contains("rb --force"), "{e}");
    ok(up(&["rb", "--force", "loam://pp"]));
    assert!(!ok(up(&["ls"])).contains(" pp\n"));

    // Exit codes say what kind of failure it was.
    let code = |args: &[&str]| up(args).status.code();
    assert_eq!(code(&["ls", "loam://ds/none"]), Some(3), "not found");
    assert_eq!(code(&["cp", "loam://ds/none", "-"]), Some(3), "not found");
    assert_eq!(code(&["ls", "loam://no-bucket/"]), Some(3), "not found");
    assert_eq!(code(&["cp", "--bogus"]), Some(2), "usage");

    // dataset info as JSON.
    ok(up(&["mb", "loam://ds"]));
    let csv = tmp.path().join("d.csv");
    let mut text = String::from("a,b,label\n");
    for i in 0..50 {
        text.push_str(&format!(
            "{},{},{}\n",
            i % 7,
            i % 5,
            if i % 2 == 0 { "x" } else { "y" }
        ));
    }
    std::fs::write(&csv, text)?;
    ok(up(&[
        "dataset",
        "put",
        csv.to_str().expect("UTF-8 path"),
        "loam://ds/d",
        "--label",
        "label",
    ]));
    let info: serde_json::Value =
        serde_json::from_str(&ok(up(&["dataset", "info", "loam://ds/d", "-o", "json"])))?;
    assert_eq!(info["records"], 50);
    assert_eq!(info["label"], "label");
    assert_eq!(info["classes"], serde_json::json!(["x", "y"]));
    // Datasets are not moved (their compute keys hang on the name).
    let e = fails(up(&["mv", "loam://ds/d", "loam://ds/e"]));
    assert!(e.contains("datasets cannot be moved"), "{e}");

    net.stop().await;
    // With the satellite gone: a network failure.
    assert_eq!(up(&["ls"]).status.code(), Some(5), "network");
    Ok(())
}

/// Help, completion and CSV as users write it, through the binaries.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn help_completion_and_csv_as_people_write_it() -> anyhow::Result<()> {
    use support::run;
    // Global options under their own heading; positional arguments
    // described.
    let help = ok(run("uplink", &["cp", "--help"]));
    assert!(
        help.contains("Global options:") && help.contains("--access-file"),
        "{help}"
    );
    assert!(
        help.contains("<SOURCE>") && help.contains("'-' for standard input"),
        "{help}"
    );
    for shell in ["bash", "zsh", "fish"] {
        let script = ok(run("uplink", &["completion", shell]));
        assert!(
            script.contains("uplink") && script.len() > 1000,
            "{shell}: {script}"
        );
    }
    let help = ok(run("storagenode", &["run", "--help"]));
    assert!(
        help.contains("--log-format") && help.contains("Global options:"),
        "{help}"
    );

    let tmp = tempfile::tempdir()?;
    let net = four_nodes(tmp.path()).await?;
    let access = net.dir.join("access");
    let up = |args: &[&str]| uplink(&access, args);
    ok(up(&["mb", "loam://csv"]));
    // Semicolons and quoted cells, as spreadsheets export them.
    let semi = tmp.path().join("semi.csv");
    let mut text = String::from("\"p0\";\"p1\";\"label\"\r\n");
    for i in 0..60 {
        text.push_str(&format!(
            "{};\"{}\";\"kind {}, {}\"\r\n",
            i % 7,
            i % 5,
            i % 2,
            i % 3 == 0
        ));
    }
    std::fs::write(&semi, &text)?;
    let out = up(&[
        "dataset",
        "put",
        semi.to_str().expect("UTF-8"),
        "loam://csv/semi",
        "--label",
        "label",
    ]);
    let err = String::from_utf8_lossy(&out.stderr).into_owned();
    ok(out);
    assert!(err.contains("';'-separated"), "{err}");
    let info: serde_json::Value = serde_json::from_str(&ok(up(&[
        "dataset",
        "info",
        "loam://csv/semi",
        "-o",
        "json",
    ])))?;
    assert_eq!(info["records"], 60);
    assert_eq!(info["classes"].as_array().map(Vec::len), Some(4), "{info}");
    // An explicit delimiter; a wrong one says what it saw.
    let tabs = tmp.path().join("tabs.tsv");
    std::fs::write(&tabs, text.replace(';', "\t"))?;
    ok(up(&[
        "dataset",
        "put",
        tabs.to_str().expect("UTF-8"),
        "loam://csv/tabs",
        "--label",
        "label",
        "--delimiter",
        "tab",
    ]));
    let e = fails(up(&[
        "dataset",
        "put",
        tabs.to_str().expect("UTF-8"),
        "loam://csv/bad",
        "--label",
        "label",
        "--delimiter",
        ",",
    ]));
    assert!(
        e.contains("label column \"label\" is not in the header"),
        "{e}"
    );
    // A numeric target with many values gets a warning with a hint.
    let target = tmp.path().join("target.csv");
    let mut text = String::from("x,target\n");
    for i in 0..442 {
        text.push_str(&format!("{i},{}\n", 25 + (i * 37) % 299));
    }
    std::fs::write(&target, text)?;
    let out = up(&[
        "dataset",
        "put",
        target.to_str().expect("UTF-8"),
        "loam://csv/target",
        "--label",
        "target",
    ]);
    let err = String::from_utf8_lossy(&out.stderr).into_owned();
    ok(out);
    assert!(
        err.contains("299 distinct numeric values") && err.contains("bin it"),
        "{err}"
    );
    net.stop().await;
    Ok(())
}

/// cp --range, --metadata with meta get, and --expires.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ranges_metadata_and_expiry() -> anyhow::Result<()> {
    let tmp = tempfile::tempdir()?;
    let net = four_nodes(tmp.path()).await?;
    let access = net.dir.join("access");
    let up = |args: &[&str]| uplink(&access, args);
    ok(up(&["mb", "loam://rg"]));
    let data: Vec<u8> = (0..3_000_000u32).map(|i| (i * 13 % 251) as u8).collect();
    let file = tmp.path().join("data");
    std::fs::write(&file, &data)?;
    let f = file.to_str().expect("UTF-8");
    ok(up(&[
        "cp",
        f,
        "loam://rg/big",
        "--metadata",
        r#"{"camera":"x100","iso":"200"}"#,
    ]));

    // Ranges: inclusive START-END, START- to the end, to stdout or a file.
    let range = |r: &str| {
        let out = up(&["cp", "--range", r, "loam://rg/big", "-"]);
        assert!(
            out.status.success(),
            "{r}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        out.stdout
    };
    assert_eq!(range("1000-1999"), &data[1000..2000]);
    assert_eq!(range("2999990-"), &data[2_999_990..]);
    assert_eq!(range("0-0"), &data[..1]);
    let part = tmp.path().join("part");
    ok(up(&[
        "cp",
        "--range",
        "bytes=5-10",
        "loam://rg/big",
        part.to_str().expect("UTF-8"),
    ]));
    assert_eq!(std::fs::read(&part)?, &data[5..11]);
    let e = fails(up(&[
        "cp",
        "--range",
        "3000000-3000001",
        "loam://rg/big",
        "-",
    ]));
    assert!(e.contains("not within the object's 3000000 bytes"), "{e}");
    assert_eq!(
        up(&["cp", "--range", "9-1", "loam://rg/big", "-"])
            .status
            .code(),
        Some(2)
    );

    // Metadata is the owner's, read back whole or by key.
    let meta: serde_json::Value = serde_json::from_str(&ok(up(&["meta", "get", "loam://rg/big"])))?;
    assert_eq!(meta, serde_json::json!({"camera": "x100", "iso": "200"}));
    assert_eq!(
        ok(up(&["meta", "get", "loam://rg/big", "iso"])).trim(),
        "200"
    );
    assert_eq!(
        up(&["meta", "get", "loam://rg/big", "lens"]).status.code(),
        Some(3)
    );
    let out = up(&["cp", f, "loam://rg/x", "--metadata", "[1]"]);
    assert_eq!(out.status.code(), Some(2));
    let e = String::from_utf8_lossy(&out.stderr);
    assert!(e.contains("JSON object of strings"), "{e}");
    // A server-side copy keeps it.
    ok(up(&["cp", "loam://rg/big", "loam://rg/copy"]));
    assert_eq!(
        ok(up(&["meta", "get", "loam://rg/copy", "camera"])).trim(),
        "x100"
    );

    // Expiry: a time in the past is refused; an expired object is gone
    // from listings and reads at once.
    let e = fails(up(&[
        "cp",
        f,
        "loam://rg/old",
        "--expires",
        "2001-01-01T00:00:00Z",
    ]));
    assert!(e.contains("expiry time has passed"), "{e}");
    ok(up(&["cp", f, "loam://rg/later", "--expires", "+1h"]));
    let listed: serde_json::Value =
        serde_json::from_str(ok(up(&["ls", "-o", "json", "loam://rg/later"])).trim())?;
    let in_an_hour = loam_common::orders::now_ms() + 3_600_000;
    assert!(
        (listed["expires_ms"].as_i64().expect("expiry") - in_an_hour).abs() < 60_000,
        "{listed}"
    );

    // An upload cut off before its commit is pending: listed with
    // --pending, abandoned with rm --pending. The uplink says (at debug
    // level) when the satellite has begun the upload; it is killed then,
    // its standard input still open.
    let mut cut = std::process::Command::new(loam_testnet::process::binary("uplink")?)
        .arg("--access-file")
        .arg(&access)
        .args(["cp", "-", "loam://rg/dir/partial"])
        .env("RUST_LOG", "loam_uplink=debug")
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .spawn()?;
    {
        use std::io::BufRead;
        let stderr = cut.stderr.take().expect("piped");
        let begun = std::io::BufReader::new(stderr)
            .lines()
            .map_while(Result::ok)
            .any(|l| l.contains("upload begun"));
        assert!(begun, "the uplink exited before beginning the upload");
        cut.kill()?;
        cut.wait()?;
    }
    let pending = ok(up(&["ls", "--pending", "-o", "json", "loam://rg/"]));
    let pending = support::json_lines(&pending)?;
    assert_eq!(pending.len(), 1, "{pending:?}");
    assert_eq!(pending[0]["key"], "dir/partial");
    assert_eq!(pending[0]["upload_id"].as_str().map(str::len), Some(32));
    assert!(fails(up(&["ls", "loam://rg/dir/partial"])).contains("nothing at"));
    assert_eq!(
        up(&["rm", "--pending", "loam://rg/dir/other"])
            .status
            .code(),
        Some(3)
    );
    let removed = ok(up(&["rm", "--pending", "loam://rg/dir/partial"]));
    assert!(removed.contains("abandoned upload"), "{removed}");
    assert!(!ok(up(&["ls", "--pending", "loam://rg/"])).contains("partial"));
    net.stop().await;
    Ok(())
}

#[test]
fn access_create_without_a_passphrase_or_terminal_says_how_to_give_one() {
    let satellite = format!(
        "{}@127.0.0.1:9",
        loam_common::Identity::generate(0, |_| {}).id()
    );
    // setsid: no controlling terminal, as under cron or CI.
    let out = std::process::Command::new("setsid")
        .arg(loam_testnet::process::binary("uplink").expect("uplink"))
        .args([
            "access",
            "create",
            "--satellite",
            &satellite,
            "--api-key",
            "abc",
        ])
        .env_remove("UPLINK_PASSPHRASE")
        .stdin(std::process::Stdio::null())
        .output()
        .expect("run setsid (util-linux)");
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("no passphrase given") && err.contains("--passphrase"),
        "{err}"
    );
}
