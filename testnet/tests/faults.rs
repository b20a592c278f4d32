//! Faults on the real binaries: the satellite killed with SIGKILL in the
//! middle of a stream of commits.
//!
//! Needs the binaries built (`cargo build --release --workspace --bins`,
//! which `scripts/test` does first).

use std::collections::BTreeSet;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use futures::StreamExt;
use loam_testnet::process::{NetworkOptions, ProcessNetwork};
use loam_uplink::Project;

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
    assert!(
        failed > 0,
        "the kill came while commits were in flight, so some failed"
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
        errors[0]
    );
    net.stop().await;
    Ok(())
}
