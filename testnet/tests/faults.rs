//! Faults on the real binaries: the satellite killed with SIGKILL in the
//! middle of a stream of commits; four of ten nodes cut off by a network
//! partition while uploads run.
//!
//! Needs the binaries built (`cargo build --release --workspace --bins`,
//! which `scripts/test` does first).

use std::collections::BTreeSet;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use std::time::{Duration, Instant};

use futures::StreamExt;
use loam_satellite::db::{Kv, RocksKv, Table};
use loam_testnet::process::{NetworkOptions, ProcessNetwork};
use loam_uplink::Project;
use prost::Message;

/// The bytes of object `i`: small enough to be stored inline, so every
/// upload is a commit on the satellite and nothing else.
fn body(i: usize) -> Vec<u8> {
    format!("object {i:04} ").repeat(1 + i % 40).into_bytes()
}

fn key(i: usize) -> String {
    format!("commits/{i:04}")
}

/// Uploads object `i`; the error if the satellite did not acknowledge it.
async fn commit(project: &Project, i: usize) -> Result<(), String> {
    let reader = std::io::Cursor::new(body(i));
    project
        .upload("crash", &key(i), reader, None)
        .await
        .map(drop)
        .map_err(|e| e.to_string())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_satellite_killed_during_1000_commits_loses_none_it_acknowledged() -> anyhow::Result<()> {
    const OBJECTS: usize = 1000;
    const KILL_AFTER: usize = 300;
    let tmp = tempfile::tempdir()?;
    let mut net = ProcessNetwork::start(
        &tmp.path().join("net"),
        &NetworkOptions {
            nodes: 4,
            redundancy: "2/3/4/4".parse()?,
            // The satellite fsyncs its metadata, as in production.
            sync_writes: true,
            ..Default::default()
        },
    )
    .await?;
    let project = Project::open(net.access.clone())?;
    project.create_bucket("crash").await?;

    // Sixteen commits in flight at a time; once KILL_AFTER are
    // acknowledged the satellite is killed with commits still in flight,
    // and started again on its data while they fail.
    let acked = Arc::new(std::sync::Mutex::new(BTreeSet::new()));
    let errors = Arc::new(std::sync::Mutex::new(Vec::new()));
    let count = Arc::new(AtomicUsize::new(0));
    let killed = tokio::sync::Notify::new();
    let uploads = futures::stream::iter(0..OBJECTS)
        .map(|i| {
            let (project, acked, errors) = (&project, &acked, &errors);
            let (count, killed) = (&count, &killed);
            async move {
                match commit(project, i).await {
                    Ok(()) => {
                        acked.lock().expect("lock").insert(i);
                        if count.fetch_add(1, Ordering::SeqCst) + 1 == KILL_AFTER {
                            killed.notify_one();
                        }
                    }
                    Err(e) => errors.lock().expect("lock").push(e),
                }
            }
        })
        .buffer_unordered(16)
        .collect::<Vec<()>>();
    let crash = async {
        killed.notified().await;
        net.kill_satellite()?;
        let before = acked.lock().expect("lock").clone();
        net.restart_satellite().await?;
        anyhow::Ok(before)
    };
    let (_, acked_before_kill) = tokio::join!(uploads, crash);
    let acked_before_kill = acked_before_kill?;
    let acked = acked.lock().expect("lock").clone();
    assert!(acked_before_kill.len() >= KILL_AFTER);
    let errors = errors.lock().expect("lock").clone();
    let failed = OBJECTS - acked.len();
    assert_eq!(errors.len(), failed);
    // The kill came mid-run. Commits in flight then either failed or
    // went through on the uplink's one retry on a fresh connection.
    assert!(
        acked_before_kill.len() < OBJECTS,
        "the kill came after the last commit"
    );
    // The restarted satellite ended its predecessor's connections with a
    // stateless reset: the uplink learnt at once, not at its deadline.
    for e in &errors {
        assert!(!e.contains("no answer within"), "{e}");
    }

    // Every commit acknowledged before the kill, and every one after the
    // restart, is there and reads back whole.
    let listed: BTreeSet<String> = project
        .list("crash", "commits/", true)
        .await?
        .into_iter()
        .map(|item| item.key)
        .collect();
    for &i in &acked {
        assert!(listed.contains(&key(i)), "acknowledged {} was lost", key(i));
        let mut out = Vec::new();
        project.download("crash", &key(i), &mut out, None).await?;
        assert_eq!(out, body(i), "{} reads back changed", key(i));
    }

    // The network goes on: the failed commits succeed when tried again.
    for i in (0..OBJECTS).filter(|i| !acked.contains(i)) {
        if let Err(e) = commit(&project, i).await {
            panic!("{} failed after the restart: {e}", key(i));
        }
    }
    let listed = project.list("crash", "commits/", true).await?;
    assert_eq!(listed.len(), OBJECTS);
    eprintln!(
        "{} commits acknowledged before the kill, {} in the first pass, {failed} failed ({}) and were retried; 0 lost",
        acked_before_kill.len(),
        acked.len(),
        errors.first().map_or("none", String::as_str)
    );
    net.stop().await;
    Ok(())
}

/// Set in the copy of a test that runs inside namespaces of its own.
const INSIDE: &str = "LOAM_TEST_IN_NAMESPACE";

/// Runs test `name` again, alone, as root of a new user namespace with a
/// network namespace of its own (`unshare`), where it may create links and
/// further namespaces and sees nothing of the host's network. Returns
/// `false` when already inside (the caller then does the test's work).
fn rerun_in_own_namespace(name: &str) -> bool {
    if std::env::var_os(INSIDE).is_some() {
        return false;
    }
    let exe = std::env::current_exe().expect("test binary");
    let out = std::process::Command::new("unshare")
        .args(["--user", "--map-root-user", "--net", "--mount", "--"])
        .args(["sh", "-c", "ip link set lo up && exec \"$0\" \"$@\""])
        .arg(exe)
        .args([name, "--exact", "--nocapture", "--test-threads=1"])
        .env(INSIDE, "1")
        .output()
        .expect("run unshare (util-linux; scripts/install-deps installs it)");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    eprintln!("{stdout}{stderr}");
    assert!(
        out.status.success(),
        "{name} failed in its own namespaces (creating user and network namespaces must be allowed)"
    );
    assert!(stdout.contains("1 passed"), "{name} did not run");
    true
}

/// The bytes of remote object `i`: one segment of a few hundred KiB.
fn remote_body(i: usize) -> Vec<u8> {
    let mut out = Vec::with_capacity(300_000);
    let mut x = blake3::hash(&i.to_le_bytes());
    while out.len() < 300_000 {
        out.extend_from_slice(x.as_bytes());
        x = blake3::hash(x.as_bytes());
    }
    out
}

/// One upload while the partition test runs.
struct Attempt {
    i: usize,
    /// When it started, from the start of the uploads.
    started: Duration,
    took: Duration,
    ok: bool,
}

#[test]
fn four_of_ten_nodes_partitioned_for_60s_commit_nothing_short_and_uploads_go_on() {
    const NAME: &str =
        "four_of_ten_nodes_partitioned_for_60s_commit_nothing_short_and_uploads_go_on";
    if rerun_in_own_namespace(NAME) {
        return;
    }
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(4)
        .enable_all()
        .build()
        .expect("runtime")
        .block_on(partition_of_four_nodes())
        .expect("partition test");
}

async fn partition_of_four_nodes() -> anyhow::Result<()> {
    // Nodes 6..10 live in namespaces of their own behind veth links.
    const CUT: std::ops::Range<usize> = 6..10;
    const BEFORE: Duration = Duration::from_secs(5);
    const PARTITION: Duration = Duration::from_secs(60);
    const AFTER: Duration = Duration::from_secs(10);
    // By then the satellite has seen the cut nodes miss their check-ins
    // (every 2 s; offline after 10 s without one) and places pieces only
    // on the six it can reach.
    const NOTICED: Duration = Duration::from_secs(20);
    let tmp = tempfile::tempdir()?;
    // 3/4/6/8: six reachable nodes are enough to store a segment, and
    // eight picked out of ten always include at least two cut ones.
    let scheme: loam_common::erasure::RedundancyScheme = "3/4/6/8".parse()?;
    let net = ProcessNetwork::start(
        &tmp.path().join("net"),
        &NetworkOptions {
            nodes: 10,
            redundancy: scheme,
            isolated: CUT.collect(),
            // No repair or audits while it runs: what is stored is what
            // the uploads committed.
            chore_interval_secs: 3600.0,
            // RocksDB whatever LOAM_TEST_DATABASE says: the segments are
            // read from it afterwards, and inside the test's own user
            // namespace there is no `postgres` user to run a server as.
            database: None,
            ..Default::default()
        },
    )
    .await?;
    let project = Project::open(net.access.clone())?;
    project.create_bucket("cut").await?;

    let start = Instant::now();
    let end = BEFORE + PARTITION + AFTER;
    let attempts = std::sync::Mutex::new(Vec::new());
    let next = AtomicUsize::new(0);
    let uploader = || async {
        // Each uploader starts one upload every 200 ms, or as soon as the
        // last one is over if it took longer.
        let mut pace = tokio::time::interval(Duration::from_millis(200));
        pace.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        while start.elapsed() < end {
            pace.tick().await;
            let i = next.fetch_add(1, Ordering::SeqCst);
            let started = start.elapsed();
            let reader = std::io::Cursor::new(remote_body(i));
            let ok = project
                .upload("cut", &format!("o/{i:05}"), reader, None)
                .await
                .is_ok();
            let took = start.elapsed() - started;
            attempts.lock().expect("lock").push(Attempt {
                i,
                started,
                took,
                ok,
            });
        }
    };
    let faults = async {
        tokio::time::sleep_until((start + BEFORE).into()).await;
        for i in CUT {
            net.partition(i, true)?;
        }
        tokio::time::sleep_until((start + BEFORE + PARTITION).into()).await;
        for i in CUT {
            net.partition(i, false)?;
        }
        anyhow::Ok(())
    };
    let ((), (), cut) = tokio::join!(uploader(), uploader(), faults);
    cut?;
    let attempts = attempts.into_inner().expect("lock");

    let in_phase = |from: Duration, to: Duration| {
        attempts
            .iter()
            .filter(move |a| a.started >= from && a.started < to)
    };
    let before = in_phase(Duration::ZERO, BEFORE).filter(|a| a.ok).count();
    let noticing: Vec<&Attempt> = in_phase(BEFORE, BEFORE + NOTICED).collect();
    let noticing_ok = noticing.iter().filter(|a| a.ok).count();
    let during: Vec<&Attempt> = in_phase(BEFORE + NOTICED, BEFORE + PARTITION).collect();
    let after = in_phase(BEFORE + PARTITION + Duration::from_secs(5), end)
        .filter(|a| a.ok)
        .count();
    let longest_failure = attempts
        .iter()
        .filter(|a| !a.ok)
        .map(|a| a.took)
        .max()
        .unwrap_or_default();
    eprintln!(
        "uploads: {before} before the partition; {noticing_ok} of {} while the satellite noticed \
         (longest failure {longest_failure:?}); {} of {} once it had; {after} after the partition healed",
        noticing.len(),
        during.iter().filter(|a| a.ok).count(),
        during.len(),
    );
    assert!(before > 0, "uploads ran before the partition");
    // Uploads continue: once the satellite has noticed the cut nodes,
    // every upload is stored on the six it can reach.
    assert!(!during.is_empty());
    for a in &during {
        assert!(a.ok, "upload {} during the partition failed", a.i);
    }
    assert!(after > 0, "uploads ran after the partition healed");

    // Every acknowledged upload reads back whole, and no failed one left
    // an object behind.
    let listed: BTreeSet<String> = project
        .list("cut", "o/", true)
        .await?
        .into_iter()
        .map(|item| item.key)
        .collect();
    for a in &attempts {
        let key = format!("o/{:05}", a.i);
        assert_eq!(
            listed.contains(&key),
            a.ok,
            "{key}: listed iff acknowledged"
        );
        if a.ok {
            let mut out = Vec::new();
            project.download("cut", &key, &mut out, None).await?;
            assert!(out == remote_body(a.i), "{key} reads back changed");
        }
    }
    eprintln!(
        "{} objects read back in {:?}",
        listed.len(),
        start.elapsed() - end
    );
    project.close().await;
    let sat_dir = net.processes[0].data_dir.clone();
    net.stop().await;

    // Nothing was committed below the success threshold: every segment
    // the satellite holds has at least `success` pieces, on distinct nodes.
    let kv = RocksKv::open(&sat_dir.join("db"))?;
    let segments = kv.scan(Table::Segments, b"", b"", usize::MAX)?;
    assert_eq!(segments.len(), listed.len());
    for (_, value) in segments {
        let record = loam_common::pb::SegmentRecord::decode(value.as_slice())?;
        let nodes: BTreeSet<&[u8]> = record.pieces.iter().map(|p| p.node_id.as_ref()).collect();
        assert!(
            nodes.len() >= scheme.success(),
            "a segment was committed with {} pieces",
            nodes.len()
        );
    }
    Ok(())
}
