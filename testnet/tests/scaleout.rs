//! A satellite run as two processes on one PostgreSQL database (a throwaway
//! server the network starts): one is killed with SIGKILL in the middle of
//! uploads and a training job, and the other carries on — no acknowledged
//! upload lost, the job finished, chores (repair) still running.
//!
//! Needs the binaries built (`cargo build --release --workspace --bins`) and
//! PostgreSQL's server installed (`scripts/install-deps --test`); both are
//! what `scripts/test` does first.

mod support;

use std::collections::BTreeMap;

use futures::StreamExt;
use loam_testnet::process::{NetworkOptions, ProcessNetwork};
use loam_uplink::Project;
use support::{ok, uplink};

/// Object `i`'s bytes: every third small enough to be stored inline on the
/// satellite, the others erasure-coded onto the nodes.
fn body(i: usize) -> Vec<u8> {
    let len = if i.is_multiple_of(3) {
        600 + i
    } else {
        20_000 + (i * 7919) % 40_000
    };
    (0..len).map(|j| (j * 31 + i * 17) as u8).collect()
}

/// A counter's value summed over its label sets, from a Prometheus text
/// page, when its labels contain `labels`.
fn counter(page: &str, name: &str, labels: &str) -> f64 {
    page.lines()
        .filter(|l| l.starts_with(name) && l.contains(labels))
        .filter_map(|l| l.rsplit_once(' ')?.1.parse::<f64>().ok())
        .sum()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn two_satellite_processes_on_postgres_survive_kill_9_of_one() -> anyhow::Result<()> {
    const UPLOADS: usize = 500;
    const KILL_AFTER: usize = 150;
    let tmp = tempfile::tempdir()?;
    let options = NetworkOptions {
        nodes: 8,
        redundancy: "2/3/4/4".parse()?,
        chore_interval_secs: 2.0,
        database: Some("postgres".into()),
        satellites: 2,
        ..Default::default()
    };
    let net = ProcessNetwork::start(&tmp.path().join("net"), &options).await?;
    let satellites: Vec<_> = net
        .processes
        .iter()
        .filter(|p| p.role == "satellite")
        .cloned()
        .collect();
    assert_eq!(satellites.len(), 2);
    assert_eq!(net.access.satellite.addresses().count(), 2);
    let access = net.dir.join("access");

    // A training job, running when the kill comes.
    let digits =
        std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/../data/digits.csv"))?;
    let data = tmp.path().join("digits.csv");
    std::fs::write(&data, &digits)?;
    ok(uplink(&access, &["mb", "loam://ml"]));
    ok(uplink(
        &access,
        &[
            "dataset",
            "put",
            data.to_str().expect("utf-8"),
            "loam://ml/digits",
            "--label",
            "label",
            "--segment-size",
            "65536",
        ],
    ));
    let job = ok(uplink(
        &access,
        &[
            "train",
            "loam://ml/digits",
            "--model",
            "mlp",
            "--hidden",
            "32",
            "--rounds",
            "25",
            "--out",
            "loam://ml/model",
        ],
    ));
    let job = job
        .split_whitespace()
        .find(|w| w.len() == 32 && w.bytes().all(|b| b.is_ascii_hexdigit()))
        .unwrap_or_else(|| panic!("train prints the job id: {job}"))
        .to_string();

    // Uploads, eight at a time; satellite process 0 is killed once
    // KILL_AFTER are acknowledged, with uploads in flight.
    let project = Project::open(net.access.clone())?;
    project.create_bucket("ha").await?;
    let acked = std::sync::Mutex::new(BTreeMap::new());
    let failed = std::sync::Mutex::new(Vec::new());
    futures::stream::iter(0..UPLOADS)
        .map(|i| {
            let (project, acked, failed, net) = (&project, &acked, &failed, &net);
            async move {
                let key = format!("o{i:03}");
                let result = project
                    .upload("ha", &key, std::io::Cursor::new(body(i)), None)
                    .await;
                match result {
                    Ok(_) => {
                        let mut acked = acked.lock().expect("lock");
                        acked.insert(key, i);
                        if acked.len() == KILL_AFTER {
                            net.kill_satellite_process(0).expect("kill");
                        }
                    }
                    Err(e) => failed.lock().expect("lock").push(format!("{key}: {e}")),
                }
            }
        })
        .buffer_unordered(8)
        .collect::<Vec<()>>()
        .await;
    let acked = acked.into_inner().expect("lock");
    let failed = failed.into_inner().expect("lock");
    assert!(
        acked.len() >= UPLOADS - 8,
        "with one satellite process alive uploads go on; failed: {failed:?}"
    );

    // Every acknowledged upload is listed and reads back byte-identical.
    let listed: std::collections::BTreeSet<String> = project
        .list("ha", "", true)
        .await?
        .into_iter()
        .map(|o| o.key)
        .collect();
    let mut lost = Vec::new();
    for (key, &i) in &acked {
        let mut out = Vec::new();
        match project.download("ha", key, &mut out, None).await {
            Ok(_) if out == body(i) && listed.contains(key) => {}
            Ok(_) if out == body(i) => lost.push(format!("{key}: not listed")),
            Ok(_) => lost.push(format!("{key}: reads back changed")),
            Err(e) => lost.push(format!("{key}: {e}")),
        }
    }
    assert!(lost.is_empty(), "acknowledged uploads lost: {lost:#?}");

    // The job finishes (driven on by the surviving process if the dead one
    // drove it, once its lease lapsed): `job wait` follows it to its end.
    ok(uplink(&access, &["job", "wait", &job]));
    let status: serde_json::Value =
        serde_json::from_str(&ok(uplink(&access, &["job", "status", &job, "-o", "json"])))?;
    assert_eq!(status["state"], "done", "{status}");

    // Chores run on in the surviving process: a storage node dies, and its
    // pieces are rebuilt elsewhere by the repairer there.
    let survivor = &satellites[1];
    let repaired = || async {
        let page = loam_testnet::http_get(&survivor.metrics_url).await?;
        anyhow::Ok(counter(
            &page,
            "loam_satellite_repairs_total",
            "result=\"ok\"",
        ))
    };
    let repaired_before = repaired().await?;
    let dead = net.kill_storage_node(0)?;
    // The survivor answers once it counts the node offline (one online
    // window after its last check-in).
    let offline = survivor
        .metrics_url
        .replace("/metrics", &format!("/api/nodes/{dead}/offline"));
    loam_testnet::http_get(&offline).await?;
    // One repair pass run now in the survivor: the request waits for the
    // repair lease (the dead process may have held it) and for the pass.
    let run_repair = survivor
        .metrics_url
        .replace("/metrics", "/api/chores/repair");
    loam_testnet::http_post(&run_repair).await?;
    assert!(
        repaired().await? > repaired_before,
        "the surviving satellite process repaired nothing"
    );
    eprintln!(
        "{} of {UPLOADS} uploads acknowledged ({} failed), 0 lost; job {}; repair ran on the survivor",
        acked.len(),
        failed.len(),
        status["state"]
    );
    net.stop().await;
    Ok(())
}
