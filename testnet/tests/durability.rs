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
    let before = used_bytes(&planet);
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
