//! The node dashboard in a real browser: headless Chromium (Debian's
//! `chromium`, installed by `scripts/install-deps`) renders the page of a
//! node that stored and served data; every figure the page shows equals
//! the JSON API's; the headline, the daily bandwidth and disk charts and
//! the satellite selector are on the rendered page; and a screenshot is
//! saved to `target/test-artifacts/dashboard.png`.

mod support;

use std::collections::BTreeMap;
use std::path::Path;
use std::process::Command;

use rand::{RngCore, SeedableRng};
use support::{ok, system_program, uplink};

/// `data-field="a.b.0.c" data-value="v"` pairs of the rendered page.
fn shown_figures(dom: &str) -> BTreeMap<String, String> {
    let mut out = BTreeMap::new();
    for part in dom.split("data-field=\"").skip(1) {
        let Some((field, rest)) = part.split_once('"') else {
            continue;
        };
        let Some(value) = rest
            .trim_start()
            .strip_prefix("data-value=\"")
            .and_then(|v| v.split_once('"'))
            .map(|(v, _)| v)
        else {
            continue;
        };
        out.insert(field.to_string(), value.to_string());
    }
    out
}

/// The JSON value at a dotted path (numeric parts index arrays).
fn at<'a>(json: &'a serde_json::Value, path: &str) -> Option<&'a serde_json::Value> {
    path.split('.')
        .try_fold(json, |v, p| match p.parse::<usize>() {
            Ok(i) => v.get(i),
            Err(_) => v.get(p),
        })
}

/// Whether a figure shown on the page is the API's value. The file
/// system's free space moves with everything else on the machine: it only
/// has to agree to 1 %.
fn same(field: &str, shown: &str, api: &serde_json::Value) -> bool {
    match (shown.parse::<f64>(), api.as_f64()) {
        (Ok(a), Some(b)) if field == "disk.filesystem_free_bytes" => (a - b).abs() <= b * 0.01,
        (Ok(a), Some(b)) => a == b,
        _ => api.as_str() == Some(shown),
    }
}

fn chromium(args: &[&str], profile: &Path) -> std::process::Output {
    Command::new(system_program(&["chromium", "chromium-browser"]))
        .args([
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-dev-shm-usage",
            "--no-first-run",
            "--hide-scrollbars",
        ])
        .arg(format!("--user-data-dir={}", profile.display()))
        .args(args)
        .output()
        .expect("run chromium")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dashboard_in_chromium_shows_the_api_figures() -> anyhow::Result<()> {
    let tmp = tempfile::tempdir()?;
    let net = support::four_nodes(tmp.path()).await?;
    let access = net.dir.join("access");
    let mut data = vec![0u8; 2_000_000];
    rand::rngs::StdRng::seed_from_u64(3).fill_bytes(&mut data);
    let file = tmp.path().join("data");
    std::fs::write(&file, &data)?;
    let f = file.to_str().expect("utf-8");
    ok(uplink(&access, &["mb", "loam://dash"]));
    ok(uplink(&access, &["cp", f, "loam://dash/a"]));
    let back = tmp.path().join("back");
    ok(uplink(
        &access,
        &["cp", "loam://dash/a", back.to_str().expect("utf-8")],
    ));

    // A node that stored and served data, once it has its satellite's view
    // (which a check-in brings): each round runs the check-in chore on
    // every node and waits for it.
    let base = |url: &str| url.trim_end_matches("/metrics").to_string();
    let mut rounds = 0;
    let page = 'found: loop {
        net.run_node_chore("check-in").await?;
        rounds += 1;
        for p in net.storage_nodes() {
            let url = base(&p.metrics_url);
            let api: serde_json::Value =
                serde_json::from_str(&loam_testnet::http_get(&format!("{url}/api/sno")).await?)?;
            if api["disk"]["used_bytes"].as_u64().unwrap_or(0) > 0
                && api["bandwidth"]["egress_bytes"].as_u64().unwrap_or(0) > 0
                && api["satellites"][0]["audit_score"].is_number()
            {
                break 'found url;
            }
        }
        assert!(rounds < 5, "no node served data after {rounds} check-ins");
    };

    // Figures move while chores run: a page counts as right when each of
    // its figures equals the API just before or just after it rendered.
    let profile = tmp.path().join("chromium");
    let mut attempts = 0;
    let figures = loop {
        attempts += 1;
        let before: serde_json::Value =
            serde_json::from_str(&loam_testnet::http_get(&format!("{page}/api/sno")).await?)?;
        let out = chromium(&["--dump-dom", &format!("{page}/")], &profile);
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        let after: serde_json::Value =
            serde_json::from_str(&loam_testnet::http_get(&format!("{page}/api/sno")).await?)?;
        let dom = String::from_utf8_lossy(&out.stdout).into_owned();
        assert!(
            dom.contains("Loam storage node"),
            "not the dashboard: {dom:.300}"
        );
        let figures = shown_figures(&dom);
        let wrong: Vec<_> = figures
            .iter()
            .filter(|(field, shown)| {
                ![&before, &after]
                    .iter()
                    .any(|api| at(api, field).is_some_and(|v| same(field, shown, v)))
            })
            .collect();
        if wrong.is_empty() {
            break figures;
        }
        assert!(attempts < 5, "page figures differ from /api/sno: {wrong:?}");
    };
    for field in [
        "disk.used_bytes",
        "disk.free_bytes",
        "disk.trash_bytes",
        "disk.allocated_bytes",
        "bandwidth.egress_bytes",
        "bandwidth.ingress_bytes",
        "satellites.0.audit_score",
        "satellites.0.online_score",
        "satellites.0.suspension_score",
        "earnings.estimate_base_units",
        "compute.work_units",
    ] {
        assert!(
            figures.contains_key(field),
            "the page does not show {field}"
        );
    }

    // The headline, the daily charts (today's bars drawn), the satellite
    // selector and money with its sign, as the browser rendered them.
    let dom = |url: &str| {
        let out = chromium(&["--dump-dom", url], &profile);
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    };
    let all = dom(&format!("{page}/"));
    assert!(
        all.contains("Online and reachable"),
        "headline: {all:.2000}"
    );
    let today = loam_common::time::format_instant(loam_common::orders::now_ms());
    let today = &today[..10];
    for chart in ["bandwidth-chart", "disk-chart"] {
        let at = all.find(&format!("id=\"{chart}\"")).expect(chart);
        let end = all[at..].find("</figure>").expect("figure end") + at;
        assert!(
            all[at..end].contains(&format!("<title>{today}: ")),
            "{chart} has no bar for {today}: {}",
            &all[at..end]
        );
    }
    assert!(all.contains("(storage $"), "money with its sign");
    let api: serde_json::Value =
        serde_json::from_str(&loam_testnet::http_get(&format!("{page}/api/sno")).await?)?;
    let sat = api["satellites"][0]["id"]
        .as_str()
        .expect("satellite id")
        .to_string();
    assert!(all.contains(&format!("?satellite={sat}")), "selector links");
    let one = dom(&format!("{page}/?satellite={sat}"));
    assert!(
        one.contains(&format!("Bandwidth per day, satellite {}", &sat[..12])),
        "{one:.3000}"
    );
    let selected: serde_json::Value = serde_json::from_str(
        &loam_testnet::http_get(&format!("{page}/api/sno?satellite={sat}")).await?,
    )?;
    assert_eq!(selected["selected_satellite"], sat.as_str());
    assert!(selected["daily"].as_array().is_some_and(|d| !d.is_empty()));

    let shots = Path::new(env!("CARGO_MANIFEST_DIR")).join("../target/test-artifacts");
    std::fs::create_dir_all(&shots)?;
    let shot = shots.join("dashboard.png");
    let _ = std::fs::remove_file(&shot);
    let out = chromium(
        &[
            &format!("--screenshot={}", shot.display()),
            "--window-size=1200,2200",
            &format!("{page}/"),
        ],
        &profile,
    );
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let png = std::fs::read(&shot)?;
    assert!(
        png.starts_with(b"\x89PNG") && png.len() > 10_000,
        "screenshot"
    );
    net.stop().await;
    Ok(())
}
