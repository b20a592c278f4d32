//! `testnet bench-metadata`: the satellite's metadata under load, on
//! RocksDB and on PostgreSQL with one and two satellite processes.
//!
//! For each configuration: commits of small (inline) objects through the
//! uplink library against the real satellite processes (each process gets
//! its share of the clients), the satellite's resident memory as objects
//! grow, `ls` of 1 000-key prefixes, and one checker pass over as many
//! segments as objects (segment records written straight into the
//! database, with their pieces on the network's nodes), timed by the
//! satellite itself, with the process's peak memory.

use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context;
use futures::StreamExt;
use loam_common::pb;
use loam_satellite::db::Kv;
use loam_satellite::satellitedb::metabase::{Batch, Metabase, SegmentPosition};
use loam_uplink::Project;

use crate::process::{NetworkOptions, ProcessNetwork};

/// One configuration's figures.
#[derive(Debug, Clone, Default)]
pub struct Figures {
    pub name: String,
    pub objects: usize,
    pub commits_per_sec: f64,
    /// (objects committed, satellite RSS and peak RSS in MiB, summed over
    /// the processes) at each checkpoint.
    pub rss: Vec<(usize, f64, f64)>,
    pub ls_p50_ms: f64,
    pub ls_p99_ms: f64,
    /// Segments, seconds and the checking process's peak RSS in MiB.
    pub checker: Option<(u64, f64, f64)>,
    /// Database statements per commit (PostgreSQL only), by table and kind,
    /// most first.
    pub statements: Vec<(String, f64)>,
}

/// `loam_satellite_db_statements_total` summed over the satellite
/// processes, by its labels.
async fn statements(
    net: &ProcessNetwork,
) -> anyhow::Result<std::collections::BTreeMap<String, f64>> {
    const NAME: &str = "loam_satellite_db_statements_total{";
    let mut all = std::collections::BTreeMap::new();
    for p in net.processes.iter().filter(|p| p.role == "satellite") {
        let text = crate::http_get(&p.metrics_url).await?;
        for line in text.lines() {
            let Some(rest) = line.strip_prefix(NAME) else {
                continue;
            };
            let Some((labels, value)) = rest.rsplit_once("} ") else {
                continue;
            };
            if let Ok(v) = value.trim().parse::<f64>() {
                *all.entry(labels.to_string()).or_default() += v;
            }
        }
    }
    Ok(all)
}

/// Keys per listed prefix.
const GROUP: usize = 1000;

fn key(i: usize) -> String {
    format!("g{:05}/o{:04}", i / GROUP, i % GROUP)
}

/// (VmRSS, VmHWM) of a process in MiB.
fn memory(pid: u32) -> (f64, f64) {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    let field = |name: &str| {
        status
            .lines()
            .find_map(|l| l.strip_prefix(name))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<f64>().ok())
            .map_or(0.0, |kb| kb / 1024.0)
    };
    (field("VmRSS:"), field("VmHWM:"))
}

fn satellite_pids(net: &ProcessNetwork) -> Vec<u32> {
    net.processes
        .iter()
        .filter(|p| p.role == "satellite")
        .map(|p| p.pid)
        .collect()
}

/// Runs one configuration: `database` as `NetworkOptions::database`.
pub async fn run_one(
    dir: &Path,
    name: &str,
    database: Option<String>,
    satellites: usize,
    objects: usize,
    concurrency: usize,
    ls_samples: usize,
) -> anyhow::Result<Figures> {
    let mut net = ProcessNetwork::start(
        &dir.join(name),
        &NetworkOptions {
            nodes: 4,
            redundancy: "2/3/4/4".parse()?,
            // Chores run once at start, then not while this measures.
            chore_interval_secs: 3600.0,
            database,
            satellites,
            ..Default::default()
        },
    )
    .await?;
    let mut fig = Figures {
        name: name.to_string(),
        objects,
        ..Default::default()
    };
    // One client per satellite process, each told only that process's
    // address, so that every process takes its share of the commits.
    let mut projects = Vec::new();
    for address in net.access.satellite.addresses() {
        let mut access = net.access.clone();
        access.satellite.address = address.to_string();
        projects.push(Project::open(access)?);
    }
    projects[0].create_bucket("meta").await?;

    let checkpoint = (objects / 10).max(1);
    let before = statements(&net).await?;
    let started = Instant::now();
    let mut done = 0usize;
    let mut commits = futures::stream::iter(0..objects)
        .map(|i| {
            let project = &projects[i % projects.len()];
            async move {
                let body = format!("object {i}");
                project
                    .upload(
                        "meta",
                        &key(i),
                        std::io::Cursor::new(body.into_bytes()),
                        None,
                    )
                    .await
                    .with_context(|| format!("commit {i}"))
            }
        })
        .buffer_unordered(concurrency);
    while let Some(r) = commits.next().await {
        r?;
        done += 1;
        if done.is_multiple_of(checkpoint) || done == objects {
            let (rss, peak) = satellite_pids(&net)
                .into_iter()
                .map(memory)
                .fold((0.0, 0.0), |a, m| (a.0 + m.0, a.1 + m.1));
            fig.rss.push((done, rss, peak));
            let mut database = String::new();
            if let Some(p) = net.processes.iter().find(|p| p.role == "satellite") {
                let text = crate::http_get(&p.metrics_url).await.unwrap_or_default();
                for line in text.lines() {
                    if let Some(rest) =
                        line.strip_prefix("loam_satellite_database_memory_bytes{kind=\"")
                        && let Some((kind, value)) = rest.split_once("\"} ")
                        && let Ok(v) = value.trim().parse::<f64>()
                    {
                        database.push_str(&format!(", {kind} {:.0} MiB", v / 1048576.0));
                    }
                }
            }
            eprintln!(
                "{name}: {done} objects, {:.0} commits/s so far, satellite RSS {rss:.0} MiB (peak {peak:.0}){database}",
                done as f64 / started.elapsed().as_secs_f64()
            );
        }
    }
    drop(commits);
    fig.commits_per_sec = objects as f64 / started.elapsed().as_secs_f64();
    let after = statements(&net).await?;
    fig.statements = after
        .into_iter()
        .map(|(labels, n)| {
            let per = (n - before.get(&labels).copied().unwrap_or(0.0)) / objects as f64;
            (labels, per)
        })
        // What a commit costs, not the background's odd statement.
        .filter(|(_, per)| *per >= 0.005)
        .collect();
    fig.statements.sort_by(|a, b| b.1.total_cmp(&a.1));
    if !fig.statements.is_empty() {
        let total: f64 = fig.statements.iter().map(|s| s.1).sum();
        eprintln!("{name}: {total:.1} database statements per commit:");
        for (labels, per) in &fig.statements {
            eprintln!("  {per:6.2}  {labels}");
        }
    }

    // ls of whole 1 000-key prefixes, spread over the key space.
    let groups = objects.div_ceil(GROUP).max(1);
    let mut times = Vec::with_capacity(ls_samples);
    for s in 0..ls_samples {
        let g = (s * 7919) % groups;
        let t = Instant::now();
        let items = projects[s % projects.len()]
            .list("meta", &format!("g{g:05}/"), true)
            .await?;
        times.push(t.elapsed().as_secs_f64() * 1000.0);
        anyhow::ensure!(
            items.len() == GROUP.min(objects - g * GROUP),
            "ls of g{g:05}/ listed {} keys",
            items.len()
        );
    }
    times.sort_by(f64::total_cmp);
    let pct = |q: f64| times[((times.len() - 1) as f64 * q).round() as usize];
    fig.ls_p50_ms = pct(0.5);
    fig.ls_p99_ms = pct(0.99);
    for p in projects {
        p.close().await;
    }

    // The checker: with one process, seed segments and restart it, so that
    // its first chore run (at start) is a pass over all of them.
    if satellites == 1 {
        let nodes: Vec<Vec<u8>> = net
            .storage_nodes()
            .map(|p| p.node_id.as_bytes().to_vec())
            .collect();
        let scheme: loam_common::erasure::RedundancyScheme = "2/3/4/4".parse()?;
        let url = net.satellite_config.database.clone();
        let sat_dir = net.processes[0].data_dir.clone();
        net.kill_satellite()?;
        let kv: Arc<dyn Kv> = if url.is_empty() {
            // The killed process's lock on the database goes with it.
            let mut tries = 0;
            loop {
                match loam_satellite::db::RocksKv::open_with(&sat_dir.join("db"), false) {
                    Ok(kv) => break Arc::new(kv),
                    Err(_) if tries < 50 => {
                        tries += 1;
                        tokio::time::sleep(Duration::from_millis(100)).await;
                    }
                    Err(e) => return Err(e.into()),
                }
            }
        } else {
            Arc::new(loam_satellite::pg::PgKv::connect(&url)?)
        };
        let seeded = tokio::task::spawn_blocking(move || {
            seed_segments(Metabase::new(kv), &nodes, scheme, objects)
        })
        .await??;
        net.restart_satellite().await?;
        let metrics_url = net.processes[0].metrics_url.clone();
        let deadline = Instant::now() + Duration::from_secs(3600);
        let seconds = loop {
            let text = crate::http_get(&metrics_url).await?;
            if crate::metric_value(&text, "loam_satellite_checker_segments") >= seeded as f64 {
                break crate::metric_value(&text, "loam_satellite_checker_pass_seconds");
            }
            anyhow::ensure!(Instant::now() < deadline, "no checker pass within an hour");
            tokio::time::sleep(Duration::from_millis(200)).await;
        };
        let (_, peak) = memory(net.processes[0].pid);
        fig.checker = Some((seeded, seconds, peak));
    }
    net.stop().await;
    Ok(fig)
}

/// Writes `count` one-segment streams whose four pieces are on `nodes`.
fn seed_segments(
    metabase: Metabase,
    nodes: &[Vec<u8>],
    scheme: loam_common::erasure::RedundancyScheme,
    count: usize,
) -> anyhow::Result<u64> {
    let now = loam_common::orders::now_ms();
    let mut written = 0u64;
    for chunk in (0..count).collect::<Vec<_>>().chunks(1000) {
        let mut batch = Batch::new();
        for _ in chunk {
            let stream: [u8; 16] = rand::random();
            let root: [u8; 32] = rand::random();
            let record = pb::SegmentRecord {
                version: 1,
                meta: Some(pb::SegmentMeta {
                    plain_size: 1 << 20,
                    piece_size: 1 << 19,
                    ..Default::default()
                }),
                root_piece_id: root.to_vec().into(),
                pieces: nodes
                    .iter()
                    .take(scheme.total())
                    .enumerate()
                    .map(|(n, id)| pb::StoredPieceRef {
                        piece_num: n as u32,
                        node_id: id.clone().into(),
                        hash: vec![0; 32].into(),
                    })
                    .collect(),
                redundancy: Some(scheme.into()),
                created_unix_ms: now,
            };
            batch.put_segment(&SegmentPosition::new(&stream, 0), &record);
        }
        metabase.write(batch)?;
        written += chunk.len() as u64;
    }
    Ok(written)
}

/// The figures as a table.
pub fn report(all: &[Figures]) -> String {
    let mut out = String::new();
    out.push_str(
        "configuration      objects   commits/s  statements/commit  ls 1000 keys p50 / p99 ms   RSS MiB at each tenth (peak)   checker pass: segments, s, peak RSS MiB\n",
    );
    for f in all {
        let rss: Vec<String> = f
            .rss
            .iter()
            .map(|(n, rss, peak)| format!("{}k {rss:.0} ({peak:.0})", n / 1000))
            .collect();
        let checker = f.checker.map_or(
            "runs in one process (see postgres)".to_string(),
            |(n, s, p)| format!("{n} segments, {s:.2} s, {p:.0} MiB"),
        );
        let statements = if f.statements.is_empty() {
            "-".to_string()
        } else {
            format!("{:.1}", f.statements.iter().map(|s| s.1).sum::<f64>())
        };
        out.push_str(&format!(
            "{:<18} {:>8} {:>10.0}  {:>17}  {:>10.1} / {:<10.1}   {}   {}\n",
            f.name,
            f.objects,
            f.commits_per_sec,
            statements,
            f.ls_p50_ms,
            f.ls_p99_ms,
            rss.join(", "),
            checker
        ));
    }
    out
}
