//! `docs/metrics.md` lists every metric the daemons export: checked
//! against the names in the source (both ways) and against what a running
//! network actually serves at `/metrics`.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

use loam_testnet::planet::{Planet, PlanetConfig};

fn workspace() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("the testnet crate sits in the workspace")
        .to_path_buf()
}

/// Every backquoted `loam_…` name in the reference.
fn documented() -> BTreeSet<String> {
    let text =
        std::fs::read_to_string(workspace().join("docs/metrics.md")).expect("docs/metrics.md");
    text.split('`')
        .skip(1)
        .step_by(2)
        .filter(|s| {
            (s.starts_with("loam_satellite_")
                || s.starts_with("loam_storagenode_")
                || s.starts_with("loam_gateway_")
                || *s == "loam_build_info")
                && s.chars()
                    .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_')
        })
        .map(str::to_string)
        .collect()
}

/// Every quoted `"loam_satellite_…"` / `"loam_storagenode_…"` string in the
/// daemons' sources: metric names are literals, wherever they are used.
fn in_source() -> BTreeSet<String> {
    let mut names = BTreeSet::new();
    let mut stack: Vec<PathBuf> = [
        "common/src",
        "satellite/src",
        "storagenode/src",
        "gateway/src",
    ]
    .iter()
    .map(|d| workspace().join(d))
    .collect();
    while let Some(dir) = stack.pop() {
        for entry in std::fs::read_dir(&dir).expect("source dir").flatten() {
            let path = entry.path();
            if path.is_dir() {
                stack.push(path);
                continue;
            }
            if path.extension().is_none_or(|e| e != "rs") {
                continue;
            }
            let text = std::fs::read_to_string(&path).expect("source file");
            for prefix in [
                "\"loam_satellite_",
                "\"loam_storagenode_",
                "\"loam_gateway_",
                "\"loam_build_info",
            ] {
                for (at, _) in text.match_indices(prefix) {
                    let rest = &text[at + 1..];
                    if let Some(end) = rest.find('"') {
                        names.insert(rest[..end].to_string());
                    }
                }
            }
        }
    }
    names
}

#[test]
fn every_metric_in_the_code_is_documented_and_nothing_else() {
    let (docs, code) = (documented(), in_source());
    let undocumented: Vec<_> = code.difference(&docs).collect();
    assert!(
        undocumented.is_empty(),
        "exported but missing from docs/metrics.md: {undocumented:?}"
    );
    let stale: Vec<_> = docs.difference(&code).collect();
    assert!(
        stale.is_empty(),
        "listed in docs/metrics.md but not exported: {stale:?}"
    );
    assert!(
        docs.len() > 40,
        "the reference lists {} metrics",
        docs.len()
    );
}

/// Metric families in a Prometheus text exposition.
fn families(exposition: &str) -> BTreeSet<String> {
    exposition
        .lines()
        .filter(|l| !l.starts_with('#') && !l.trim().is_empty())
        .filter_map(|l| l.split(['{', ' ']).next())
        .map(|name| {
            ["_bucket", "_sum", "_count"]
                .iter()
                .find_map(|s| name.strip_suffix(s))
                .unwrap_or(name)
                .to_string()
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_running_network_exports_only_documented_metrics() -> anyhow::Result<()> {
    let planet = Planet::start(PlanetConfig::new(5)).await?;
    let project = planet.project()?;
    project.create_bucket("metrics").await?;
    project
        .upload(
            "metrics",
            "o",
            std::io::Cursor::new(vec![7u8; 300_000]),
            None,
        )
        .await?;
    let mut back = Vec::new();
    project.download("metrics", "o", &mut back, None).await?;
    assert_eq!(back.len(), 300_000);
    let addr = planet.nodes[0].http_addr.expect("running");
    let exposition = loam_testnet::http_get(&format!("http://{addr}/metrics")).await?;
    let docs = documented();
    let exported: BTreeSet<String> = families(&exposition)
        .into_iter()
        .filter(|n| n.starts_with("loam_"))
        .collect();
    // The in-process network shares one recorder: node and satellite
    // metrics both show.
    assert!(
        exported.contains("loam_storagenode_uploads_total"),
        "{exported:?}"
    );
    assert!(
        exported.contains("loam_satellite_segments_committed_total"),
        "{exported:?}"
    );
    let missing: Vec<_> = exported.difference(&docs).collect();
    assert!(missing.is_empty(), "served but not documented: {missing:?}");
    planet.shutdown().await;
    Ok(())
}
