//! Nodes that lie about themselves, on the in-process test network: each
//! lie is caught, not paid, and counted against the liar. (Lies about
//! training — weights and sample counts — are in `compute.rs`.)

use loam_common::pb;
use loam_storagenode::adversary::Lies;
use loam_testnet::planet::{Planet, PlanetConfig};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_answering_audits_with_errors_fails_them_and_is_disqualified() -> anyhow::Result<()>
{
    // Node 0 lost its data and answers every audit "internal error", which
    // once only suspended it while it kept being paid for storage.
    let mut config = PlanetConfig::new(6).liar(
        0,
        Lies {
            audit_error: Some(pb::ErrorCode::Internal),
            ..Lies::default()
        },
    );
    config.reconfigure_satellite = Some(Box::new(|c| {
        c.max_segment_size = 64 * 1024;
        c.audit.max_reverifies = 2;
    }));
    let planet = Planet::start(config).await?;
    let project = planet.project()?;
    project.create_bucket("bk").await?;
    for i in 0..6 {
        project
            .upload(
                "bk",
                &format!("o{i}"),
                std::io::Cursor::new(vec![i as u8; 100_000]),
                None,
            )
            .await?;
    }
    let liar = planet.nodes[0].id;
    let mut cycles = 0;
    while planet.reputation.get(&liar)?.disqualified_unix_ms == 0 {
        planet.auditor.run_once().await;
        cycles += 1;
        assert!(cycles < 1000, "never disqualified");
    }
    let r = planet.reputation.get(&liar)?;
    assert!(r.audits_failed > 0, "{r:?}");
    assert!(
        planet
            .satellite_overlay
            .get(&liar)
            .expect("known")
            .disqualified_ms
            .is_some()
    );
    for n in &planet.nodes[1..] {
        let r = planet.reputation.get(&n.id)?;
        assert_eq!(r.audits_failed, 0, "honest node failed an audit: {r:?}");
        assert_eq!(r.disqualified_unix_ms, 0);
    }
    eprintln!("an erroring node was disqualified after {cycles} audit cycles");
    planet.shutdown().await;
    Ok(())
}
