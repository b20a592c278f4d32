//! Suspension on the in-process test network: a node whose disk fails
//! (audits answered with read errors) is suspended, not disqualified; it
//! gets no new pieces and its health endpoint says why; it recovers when
//! the disk does. A node that stops checking in is suspended for downtime
//! by the online tracking and recovers when it is back.

use std::path::{Path, PathBuf};

use loam_common::orders::now_ms;
use loam_testnet::planet::{Planet, PlanetConfig};

/// Every piece file under a node's storage directory.
fn piece_files(node_dir: &Path) -> Vec<PathBuf> {
    loam_testnet::files_under(&node_dir.join("storage").join("pieces"))
}

async fn health(planet: &Planet, i: usize) -> anyhow::Result<(u16, String)> {
    let node = &planet.nodes[i];
    // A check-in brings the satellite's latest view of the node.
    node.contact
        .as_ref()
        .expect("running")
        .cycle
        .trigger_wait()
        .await;
    let addr = node.http_addr.expect("running");
    loam_testnet::http_request(&format!("http://{addr}/health")).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_with_a_failing_disk_is_suspended_then_recovers() -> anyhow::Result<()> {
    let mut config = PlanetConfig::new(6);
    config.reconfigure_satellite = Some(Box::new(|c| {
        c.max_segment_size = 64 * 1024;
        c.audit.per_node = 3;
    }));
    let planet = Planet::start(config).await?;
    let project = planet.project()?;
    project.create_bucket("sus").await?;
    for i in 0..12 {
        let data = vec![i as u8; 100_000];
        project
            .upload("sus", &format!("o{i}"), std::io::Cursor::new(data), None)
            .await?;
    }
    assert_eq!(health(&planet, 0).await?.0, 200);

    // Node 0's disk starts failing: every piece read is an I/O error (a
    // directory where the file was), which is not "piece not found".
    let files = piece_files(&planet.nodes[0].dir);
    assert!(!files.is_empty());
    let hidden: Vec<(PathBuf, PathBuf)> = files
        .iter()
        .map(|f| (f.clone(), f.with_extension("moved")))
        .collect();
    for (f, moved) in &hidden {
        std::fs::rename(f, moved)?;
        std::fs::create_dir(f)?;
    }
    let id = planet.nodes[0].id;
    planet.auditor.run_once().await;
    let r = planet.reputation.get(&id)?;
    assert!(r.audits_unknown > 0, "{r:?}");
    assert!(r.suspended_unix_ms > 0, "suspended: {r:?}");
    assert_eq!(r.disqualified_unix_ms, 0, "not disqualified");
    assert_eq!(r.audits_failed, 0, "an I/O error is not a failed audit");
    let node = planet.satellite_overlay.get(&id).expect("known");
    assert!(node.suspended_ms.is_some());
    assert!(!planet.satellite_overlay.is_selectable(&node, now_ms()));

    let (status, body) = health(&planet, 0).await?;
    assert_eq!(status, 503, "{body}");
    assert!(body.contains("suspended"), "{body}");
    assert_eq!(health(&planet, 1).await?.0, 200);

    // A suspended node gets no new pieces.
    let before = planet.satellite.piece_placements()?;
    let held = |p: &[(loam_common::NodeId, loam_common::orders::PieceId)]| {
        p.iter().filter(|(n, _)| *n == id).count()
    };
    for i in 0..6 {
        let data = vec![0x40 + i as u8; 100_000];
        project
            .upload("sus", &format!("new{i}"), std::io::Cursor::new(data), None)
            .await?;
    }
    let after = planet.satellite.piece_placements()?;
    assert!(after.len() > before.len());
    assert_eq!(held(&after), held(&before));

    // The disk is fixed: good answers lift the suspension.
    for (f, moved) in &hidden {
        std::fs::remove_dir(f)?;
        std::fs::rename(moved, f)?;
    }
    for _ in 0..10 {
        planet.auditor.run_once().await;
        if planet.reputation.get(&id)?.suspended_unix_ms == 0 {
            break;
        }
    }
    let r = planet.reputation.get(&id)?;
    assert_eq!(r.suspended_unix_ms, 0, "suspension lifted: {r:?}");
    assert!(
        planet
            .satellite_overlay
            .get(&id)
            .expect("known")
            .suspended_ms
            .is_none()
    );
    assert_eq!(health(&planet, 0).await?.0, 200);
    planet.shutdown().await;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_that_stops_checking_in_is_suspended_for_downtime() -> anyhow::Result<()> {
    let mut config = PlanetConfig::new(3);
    config.reconfigure_satellite = Some(Box::new(|c| {
        c.online_window_secs = 2.0;
        c.audit.online_lambda = 0.8;
        c.audit.online_min_observations = 5;
    }));
    config.reconfigure_node = Some(Box::new(|_, c| c.checkin_interval_secs = 0.2));
    let mut planet = Planet::start(config).await?;
    let id = planet.nodes[2].id;
    // Observed online a few times, then it goes away.
    for _ in 0..5 {
        planet.reputation.track_online(now_ms())?;
    }
    planet.stop_node(2).await;
    // Tracking cycles after its online window: each finds it offline.
    planet.satellite_overlay.wait_offline(&id).await;
    for _ in 0..5 {
        planet.reputation.track_online(now_ms())?;
    }
    let r = planet.reputation.get(&id)?;
    assert!(r.online_score < 0.6, "{r:?}");
    assert!(r.offline_suspended_unix_ms > 0, "{r:?}");
    assert_eq!(r.disqualified_unix_ms, 0);
    let others = planet.reputation.get(&planet.nodes[0].id)?;
    assert_eq!(others.offline_suspended_unix_ms, 0);
    assert!(
        planet
            .satellite_overlay
            .get(&id)
            .expect("known")
            .suspended_ms
            .is_some()
    );

    // Back online: its score climbs back and the suspension lifts.
    planet.restart_node(2).await?;
    for _ in 0..10 {
        planet.reputation.track_online(now_ms())?;
    }
    let r = planet.reputation.get(&id)?;
    assert!(r.online_score >= 0.6, "{r:?}");
    assert_eq!(r.offline_suspended_unix_ms, 0);
    let (status, body) = health(&planet, 2).await?;
    assert_eq!(status, 200, "{body}");
    planet.shutdown().await;
    Ok(())
}
