//! `testnet bench-repair`: repair on a process network. Uploads objects,
//! kills storage nodes with SIGKILL, waits for the satellite to notice and
//! restore redundancy, reports repair time per segment and bytes moved per
//! segment byte from the satellite's own metrics, then kills more of the
//! original nodes and checks that every object still downloads intact.

use std::time::{Duration, Instant};

use anyhow::Context;
use loam_uplink::Project;
use rand::seq::SliceRandom;
use rand::{RngCore, SeedableRng};

use crate::process::{NetworkOptions, ProcessNetwork};
use crate::{histogram_quantile, http_get, metric_value};

/// What one run measured.
pub struct RepairReport {
    pub objects: usize,
    pub killed_first: usize,
    pub killed_after: usize,
    /// From the first kill until a checker run found nothing to repair.
    pub detect_and_repair: Duration,
    pub segments_repaired: u64,
    pub p50: Option<f64>,
    pub p99: Option<f64>,
    pub bytes_per_segment_byte: f64,
}

impl RepairReport {
    pub fn print(&self) {
        let ms = |v: Option<f64>| v.map_or("-".into(), |s| format!("{:.0} ms", s * 1000.0));
        println!(
            "killed {} of the nodes; segments repaired: {}",
            self.killed_first, self.segments_repaired
        );
        println!(
            "kill to redundancy restored (offline window + checker interval + repair): {:.1} s",
            self.detect_and_repair.as_secs_f64()
        );
        println!(
            "repair time per segment: p50 {}  p99 {}",
            ms(self.p50),
            ms(self.p99)
        );
        println!(
            "repair bytes moved per segment byte: {:.2}",
            self.bytes_per_segment_byte
        );
        println!(
            "then killed {} more original nodes: all {} objects downloaded byte-identical",
            self.killed_after, self.objects
        );
    }
}

/// Runs the scenario on a fresh network in `dir`: objects of `sizes_mib`,
/// kill `first` nodes, repair, kill `after` more, download everything.
pub async fn run(
    dir: &std::path::Path,
    nodes: usize,
    sizes_mib: &[usize],
    first: usize,
    after: usize,
) -> anyhow::Result<RepairReport> {
    anyhow::ensure!(first + after < nodes, "cannot kill every node");
    let net = ProcessNetwork::start(
        dir,
        &NetworkOptions {
            nodes,
            ..Default::default()
        },
    )
    .await?;
    let result = scenario(&net, sizes_mib, first, after).await;
    net.stop().await;
    result
}

async fn scenario(
    net: &ProcessNetwork,
    sizes_mib: &[usize],
    first: usize,
    after: usize,
) -> anyhow::Result<RepairReport> {
    let metrics_url = net
        .processes
        .iter()
        .find(|p| p.role == "satellite")
        .context("no satellite")?
        .metrics_url
        .clone();
    let project = Project::open(net.access.clone())?;
    project.create_bucket("repair").await?;
    let mut rng = rand::rngs::StdRng::seed_from_u64(7);
    let mut objects = Vec::new();
    for (i, mib) in sizes_mib.iter().enumerate() {
        let mut data = vec![0u8; mib << 20];
        rng.fill_bytes(&mut data);
        project
            .upload(
                "repair",
                &format!("o{i}"),
                std::io::Cursor::new(data.clone()),
                None,
            )
            .await?;
        objects.push(data);
    }
    let mut order: Vec<usize> = (0..net.storage_nodes().count()).collect();
    order.shuffle(&mut rng);

    let runs_before = metric_value(
        &http_get(&metrics_url).await?,
        "loam_satellite_repair_runs_total",
    );
    let killed_at = Instant::now();
    for &i in &order[..first] {
        net.kill_storage_node(i)?;
    }
    // Done when a checker run that started after the satellite saw the
    // nodes offline found nothing left at or below the repair threshold.
    let admin = loam_satellite::admin::AdminClient::connect(&net.dir.join("satellite")).await?;
    let deadline = Instant::now() + Duration::from_secs(300);
    let mut seen_offline_at_run = None;
    let text = loop {
        anyhow::ensure!(
            Instant::now() < deadline,
            "redundancy not restored within 300 s"
        );
        tokio::time::sleep(Duration::from_millis(250)).await;
        let text = http_get(&metrics_url).await?;
        let runs = metric_value(&text, "loam_satellite_repair_runs_total");
        match seen_offline_at_run {
            None => {
                let online = admin
                    .list_nodes()
                    .await?
                    .iter()
                    .filter(|n| n.online)
                    .count();
                if online <= net.storage_nodes().count() - first {
                    seen_offline_at_run = Some(runs);
                }
            }
            Some(r) => {
                let below = metric_value(&text, "loam_satellite_segments_below_repair_threshold");
                if runs >= r + 2.0 && below == 0.0 {
                    break text;
                }
            }
        }
    };
    let detect_and_repair = killed_at.elapsed();
    anyhow::ensure!(
        metric_value(&text, "loam_satellite_repair_runs_total") > runs_before,
        "the repair chore did not run"
    );
    let repaired = metric_value(&text, "loam_satellite_repaired_segment_bytes_total");
    let moved = metric_value(&text, "loam_satellite_repair_bytes_total");
    let name = "loam_satellite_repair_duration_seconds";
    let report = RepairReport {
        objects: objects.len(),
        killed_first: first,
        killed_after: after,
        detect_and_repair,
        segments_repaired: metric_value(&text, &format!("{name}_count")) as u64,
        p50: histogram_quantile(&text, name, 0.5),
        p99: histogram_quantile(&text, name, 0.99),
        bytes_per_segment_byte: if repaired > 0.0 {
            moved / repaired
        } else {
            0.0
        },
    };

    for &i in &order[first..first + after] {
        net.kill_storage_node(i)?;
    }
    let mut out = Vec::new();
    for (i, data) in objects.iter().enumerate() {
        out.clear();
        project
            .download("repair", &format!("o{i}"), &mut out, None)
            .await
            .with_context(|| format!("object o{i} after {} kills", first + after))?;
        anyhow::ensure!(out == *data, "object o{i} differs after repair");
    }
    project.close().await;
    Ok(report)
}
