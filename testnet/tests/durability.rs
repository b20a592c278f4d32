//! Durability on the in-process test network: garbage collection.

use std::collections::HashSet;

use loam_testnet::planet::{Planet, PlanetConfig};
use rand::{RngCore, SeedableRng};

fn used_bytes(planet: &Planet) -> u64 {
    planet
        .nodes
        .iter()
        .filter_map(|n| n.piecestore.as_ref())
        .map(|p| p.db().usage().used_bytes)
        .sum()
}

fn trash_bytes(planet: &Planet) -> u64 {
    planet
        .nodes
        .iter()
        .filter_map(|n| n.piecestore.as_ref())
        .map(|p| p.db().usage().trash_bytes)
        .sum()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn gc_frees_deleted_objects_and_never_trashes_a_live_piece() -> anyhow::Result<()> {
    let mut config = PlanetConfig::new(6);
    config.reconfigure_satellite = Some(Box::new(|c| {
        c.gc.margin_secs = 0.0;
        c.max_segment_size = 64 * 1024;
    }));
    let planet = Planet::start(config).await?;
    let project = planet.project()?;
    project.create_bucket("gc").await?;
    let mut rng = rand::rngs::StdRng::seed_from_u64(5);
    let mut objects = Vec::new();
    for i in 0..40 {
        let mut data = vec![0u8; 20_000 + (rng.next_u32() % 150_000) as usize];
        rng.fill_bytes(&mut data);
        project
            .upload(
                "gc",
                &format!("o{i}"),
                std::io::Cursor::new(data.clone()),
                None,
            )
            .await?;
        objects.push(data);
    }
    // Garbage from before any deletion (long-tail pieces) goes first.
    planet.gc.run_once().await;
    let (before, trash_before) = (used_bytes(&planet), trash_bytes(&planet));
    for i in (0..40).step_by(2) {
        project.delete("gc", &format!("o{i}")).await?;
    }
    let stats = planet.gc.run_once().await;
    assert_eq!(stats.failed, 0);
    assert!(stats.trashed > 0);
    let after = used_bytes(&planet);
    assert!(
        after * 100 < before * 60,
        "half the objects deleted: used {before} -> {after}"
    );
    // What left used space waits in the trash, counted byte for byte.
    assert_eq!(trash_bytes(&planet) - trash_before, before - after);

    // Every piece the satellite places is still on its node.
    let live: HashSet<_> = planet.satellite.piece_placements()?.into_iter().collect();
    let sat = planet.satellite_url.id;
    let mut held = HashSet::new();
    for n in &planet.nodes {
        let store = n.piecestore.as_ref().expect("running");
        for (id, _) in store.db().pieces_of(&sat)? {
            held.insert((n.id, id));
        }
    }
    assert!(live.is_subset(&held), "a live piece was trashed");
    // A few false positives may linger; they go in a later cycle.
    assert!(held.len() - live.len() <= live.len() / 5);
    for (i, data) in objects.iter().enumerate().skip(1).step_by(2) {
        let mut out = Vec::new();
        project
            .download("gc", &format!("o{i}"), &mut out, None)
            .await?;
        assert_eq!(&out, data);
    }
    planet.shutdown().await;
    Ok(())
}

/// Waits until the satellite counts nodes `ids` offline.
async fn wait_offline(planet: &Planet, ids: std::ops::Range<usize>) {
    for i in ids {
        planet
            .satellite_overlay
            .wait_offline(&planet.nodes[i].id)
            .await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn repair_restores_redundancy_and_routes_around_a_corrupt_piece() -> anyhow::Result<()> {
    let mut config = PlanetConfig::new(10);
    config.redundancy = "4/6/8/10".parse()?;
    config.reconfigure_satellite = Some(Box::new(|c| {
        c.online_window_secs = 1.5;
        c.max_segment_size = 256 * 1024;
    }));
    config.reconfigure_node = Some(Box::new(|_, c| c.checkin_interval_secs = 0.3));
    let mut planet = Planet::start(config).await?;
    let project = planet.project()?;
    project.create_bucket("rep").await?;
    let mut rng = rand::rngs::StdRng::seed_from_u64(9);
    let mut data = vec![0u8; 900_000]; // 4 segments
    rng.fill_bytes(&mut data);
    project
        .upload("rep", "obj", std::io::Cursor::new(data.clone()), None)
        .await?;

    // Garble every piece file on node 5: the repairer must notice (each
    // piece is checked against its committed hash) and use other pieces.
    let garbled = {
        let mut files = Vec::new();
        let mut stack = vec![planet.nodes[5].dir.join("storage/pieces")];
        while let Some(d) = stack.pop() {
            for e in std::fs::read_dir(&d)? {
                let p = e?.path();
                if p.is_dir() {
                    stack.push(p);
                } else {
                    files.push(p);
                }
            }
        }
        for f in &files {
            let len = std::fs::metadata(f)?.len() as usize;
            std::fs::write(f, vec![0x5a; len])?;
        }
        files.len()
    };
    assert!(garbled > 0, "node 5 holds pieces");

    for i in 0..3 {
        planet.stop_node(i).await;
    }
    wait_offline(&planet, 0..3).await;
    let stats = planet.repair.run_once().await;
    assert!(stats.below_threshold > 0, "{stats:?}");
    assert_eq!(stats.failed, 0, "{stats:?}");
    assert_eq!(stats.repaired, stats.below_threshold);
    let mut secs: Vec<f64> = stats.timings.iter().map(|t| t.0).collect();
    secs.sort_by(f64::total_cmp);
    let moved: u64 = stats.timings.iter().map(|t| t.1).sum();
    let plain: u64 = stats.timings.iter().map(|t| t.2).sum();
    eprintln!(
        "repair: {} segments, p50 {:.3} s, p99 {:.3} s per segment, {:.2} bytes moved per segment byte",
        secs.len(),
        secs[secs.len() / 2],
        secs[(secs.len() * 99 / 100).min(secs.len() - 1)],
        moved as f64 / plain.max(1) as f64
    );
    let again = planet.repair.run_once().await;
    assert_eq!(again.below_threshold, 0, "every segment is healthy again");

    // Three more of the original holders go: still downloadable.
    for i in 3..6 {
        planet.stop_node(i).await;
    }
    wait_offline(&planet, 3..6).await;
    let mut out = Vec::new();
    project.download("rep", "obj", &mut out, None).await?;
    assert_eq!(out, data);
    planet.shutdown().await;
    Ok(())
}

async fn exit_rpc(planet: &Planet, node: usize) -> anyhow::Result<loam_common::pb::ExitResponse> {
    use loam_common::pb::satellite_request::Request;
    use loam_common::pb::satellite_response::Response;
    let endpoint = loam_common::transport::Endpoint::bind(
        planet.nodes[node].identity.clone(),
        "127.0.0.1:0".parse()?,
        Default::default(),
    )?;
    let sat = &planet.satellite_url;
    let conn = endpoint.connect(sat.id, sat.socket_addr()?).await?;
    match loam_common::rpc::satellite(&conn, &[], Request::Exit(Default::default())).await? {
        Response::Exit(e) => Ok(e),
        _ => anyhow::bail!("unexpected answer"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn graceful_exit_moves_every_piece() -> anyhow::Result<()> {
    let mut config = PlanetConfig::new(8);
    config.reconfigure_satellite = Some(Box::new(|c| c.max_segment_size = 64 * 1024));
    let mut planet = Planet::start(config).await?;
    let project = planet.project()?;
    project.create_bucket("exit").await?;
    let mut rng = rand::rngs::StdRng::seed_from_u64(3);
    let mut objects = Vec::new();
    for i in 0..3 {
        let mut data = vec![0u8; 200_000];
        rng.fill_bytes(&mut data);
        project
            .upload(
                "exit",
                &format!("o{i}"),
                std::io::Cursor::new(data.clone()),
                None,
            )
            .await?;
        objects.push(data);
    }
    // The checker counts every node's pieces.
    planet.repair.run_once().await;
    let started = exit_rpc(&planet, 0).await?;
    assert!(started.pieces_counted);
    assert!(started.pieces_left > 0, "node 0 holds pieces");
    assert_eq!(started.finished_unix_ms, 0);
    let stats = planet.repair.run_once().await;
    assert_eq!(stats.failed, 0, "{stats:?}");
    let done = exit_rpc(&planet, 0).await?;
    assert_eq!(done.pieces_left, 0);
    assert!(done.finished_unix_ms > 0);
    // New uploads avoid the exited node; its data lives elsewhere.
    planet.stop_node(0).await;
    for (i, data) in objects.iter().enumerate() {
        let mut out = Vec::new();
        project
            .download("exit", &format!("o{i}"), &mut out, None)
            .await?;
        assert_eq!(&out, data);
    }
    planet.shutdown().await;
    Ok(())
}

/// The satellite's chores stop while paused (a trigger starts nothing) and
/// run on demand once resumed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn satellite_chores_pause_and_run_on_demand() -> anyhow::Result<()> {
    let mut config = PlanetConfig::new(5);
    config.reconfigure_satellite = Some(Box::new(|c| c.gc.margin_secs = 0.0));
    let planet = Planet::start(config).await?;
    let project = planet.project()?;
    project.create_bucket("chore").await?;
    project
        .upload("chore", "o", std::io::Cursor::new(vec![3u8; 200_000]), None)
        .await?;
    planet.gc.run_once().await;
    let gc = &planet.chores.gc;
    gc.pause();
    project.delete("chore", "o").await?;
    let (used, finished) = (used_bytes(&planet), gc.finished());
    assert!(used > 0);
    let waited = tokio::time::timeout(std::time::Duration::from_secs(1), gc.trigger_wait()).await;
    assert!(waited.is_err(), "a paused chore ran");
    assert_eq!(gc.finished(), finished);
    // Nothing was collected. (A piece of the upload's cancelled long tail
    // may still land after the upload returned: that only adds bytes.)
    assert!(used_bytes(&planet) >= used, "a paused chore deleted pieces");
    gc.resume();
    gc.trigger_wait().await;
    assert!(gc.finished() > finished);
    assert_eq!(
        used_bytes(&planet),
        0,
        "the resumed chore collected the object"
    );
    planet.shutdown().await;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_that_lost_data_fails_its_exit_and_forfeits_what_is_held() -> anyhow::Result<()> {
    use loam_storagenode::adversary::Lies;
    // Node 0 lost its pieces (every challenge gets an error back) and
    // tries to leave with its held amount.
    let mut config = PlanetConfig::new(8).liar(
        0,
        Lies {
            audit_error: Some(loam_common::pb::ErrorCode::Internal),
            ..Lies::default()
        },
    );
    config.reconfigure_satellite = Some(Box::new(|c| c.max_segment_size = 64 * 1024));
    let planet = Planet::start(config).await?;
    let project = planet.project()?;
    project.create_bucket("exit").await?;
    for i in 0..3 {
        project
            .upload(
                "exit",
                &format!("o{i}"),
                std::io::Cursor::new(vec![i; 200_000]),
                None,
            )
            .await?;
    }
    let id = planet.nodes[0].id;
    let started = exit_rpc(&planet, 0).await?;
    assert!(started.started_unix_ms > 0);
    planet.repair.run_once().await;
    let after = exit_rpc(&planet, 0).await?;
    assert!(after.disqualified_unix_ms > 0, "{after:?}");
    assert_eq!(after.finished_unix_ms, 0, "a failed exit never finishes");
    let node = planet.satellite_overlay.get(&id).expect("known");
    assert!(node.disqualified_ms.is_some() && node.exit_finished_ms.is_none());
    assert!(planet.reputation.get(&id)?.audits_failed > 0);
    // Its data is still there for the owner, rebuilt from the others.
    for i in 0..3u8 {
        let mut out = Vec::new();
        project
            .download("exit", &format!("o{i}"), &mut out, None)
            .await?;
        assert_eq!(out, vec![i; 200_000]);
    }
    planet.shutdown().await;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn only_a_node_in_good_standing_may_start_an_exit() -> anyhow::Result<()> {
    let planet = Planet::start(PlanetConfig::new(4)).await?;
    let id = planet.nodes[1].id;
    // Contained: it owes the answer to an audit.
    planet.reputation.record_audit(
        &id,
        loam_satellite::audit::Outcome::Stalled,
        Some(loam_common::pb::PendingAudit {
            size: 1024,
            root: vec![0; 32].into(),
            piece_id: vec![1; 32].into(),
            ..Default::default()
        }),
    )?;
    let e = exit_rpc(&planet, 1)
        .await
        .expect_err("contained")
        .to_string();
    assert!(e.contains("owes the answer to an audit"), "{e}");
    // Disqualified.
    planet
        .satellite_overlay
        .disqualify(&planet.nodes[2].id, loam_common::orders::now_ms())?;
    let e = exit_rpc(&planet, 2)
        .await
        .expect_err("disqualified")
        .to_string();
    assert!(e.contains("disqualified"), "{e}");
    // In good standing: allowed.
    assert!(exit_rpc(&planet, 3).await?.started_unix_ms > 0);
    planet.shutdown().await;
    Ok(())
}
