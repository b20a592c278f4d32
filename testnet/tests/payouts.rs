//! Settlement, accounting and payouts on the in-process network: after a
//! mixed workload every node's settled bandwidth equals what it actually
//! transferred, paystubs follow from it, and each node's ledger verifies
//! offline and catches tampering.

use loam_common::orders::{PieceAction, now_ms};
use loam_testnet::planet::{Planet, PlanetConfig};
use rand::{RngCore, SeedableRng};

/// Bytes node `i` counted as transferred for `action` (yesterday to
/// tomorrow, to be safe around midnight).
fn served(planet: &Planet, i: usize, action: PieceAction) -> u64 {
    let today = now_ms().div_euclid(86_400_000);
    planet.nodes[i]
        .piecestore
        .as_ref()
        .expect("running")
        .db()
        .bandwidth(&planet.satellite_url.id, action, today - 1, today + 2)
        .expect("bandwidth")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn settled_egress_matches_served_bytes_and_paystubs_follow() -> anyhow::Result<()> {
    // The testnet's shape: ten nodes, 4/6/8/10.
    let mut config = PlanetConfig::new(10);
    config.redundancy = "4/6/8/10".parse()?;
    config.reconfigure_satellite = Some(Box::new(|c| {
        c.max_segment_size = 512 * 1024;
        c.orders.window_secs = 1.0;
        // One period spans the whole test.
        c.payouts.period_secs = 365.0 * 86_400.0;
    }));
    let planet = Planet::start(config).await?;
    let project = planet.project()?;
    project.create_bucket("pay").await?;
    let mut rng = rand::rngs::StdRng::seed_from_u64(3);
    let mut objects = Vec::new();
    for i in 0..5 {
        let mut data = vec![0u8; 150_000 + 200_000 * i];
        rng.fill_bytes(&mut data);
        project
            .upload(
                "pay",
                &format!("o{i}"),
                std::io::Cursor::new(data.clone()),
                None,
            )
            .await?;
        objects.push(data);
    }
    // Downloads: every object once, one of them eight more times.
    let mut out = Vec::new();
    for (i, data) in objects.iter().enumerate() {
        let times = if i == 2 { 9 } else { 1 };
        for _ in 0..times {
            out.clear();
            project
                .download("pay", &format!("o{i}"), &mut out, None)
                .await?;
            assert_eq!(&out, data);
        }
    }
    // Settle everything: as if every window had closed.
    let later = now_ms() + 10_000;
    for n in &planet.nodes {
        let stats = n
            .settler
            .as_ref()
            .expect("running")
            .settle_all_at(later)
            .await;
        assert_eq!(stats.windows_failed, 0);
        assert_eq!(stats.orders_rejected, 0);
    }
    let orders = planet.satellite.orders();
    let mut total_get = 0;
    for (i, n) in planet.nodes.iter().enumerate() {
        let settled = orders.node_bandwidth(&n.id, 0, i64::MAX)?;
        // Pieces are smaller than the uplink's order step, so orders are
        // exact: settled equals transferred, byte for byte.
        assert_eq!(
            settled.get,
            served(&planet, i, PieceAction::Get),
            "node {i} GET"
        );
        assert_eq!(
            settled.put,
            served(&planet, i, PieceAction::Put),
            "node {i} PUT"
        );
        total_get += settled.get;
        // Nothing left to settle; a second round sends nothing.
        let again = n
            .settler
            .as_ref()
            .expect("running")
            .settle_all_at(later)
            .await;
        assert_eq!(again.orders_sent, 0);
    }
    assert!(total_get > 0);
    let usage = project.usage().await?;
    let bucket = usage
        .buckets
        .iter()
        .find(|b| b.name == "pay")
        .expect("bucket");
    assert_eq!(bucket.objects, 5);
    assert_eq!(
        bucket.egress_bytes, total_get,
        "bucket egress from billing metadata"
    );

    // Storage: two tallies an hour apart (the clock is passed in).
    let t0 = now_ms();
    planet.accounting.tally(t0)?;
    planet.accounting.tally(t0 + 3_600_000)?;

    // One node is disqualified: its paystub pays nothing.
    let dq = planet.nodes[5].id;
    planet.satellite_overlay.disqualify(&dq, now_ms())?;
    let payouts = &planet.payouts;
    let period = payouts.config().period_at(now_ms());
    // Not before its last orders have had time to settle.
    assert!(payouts.compute(&period, period.end).is_err());
    let ready = period.end + (payouts.config().settle_delay_secs * 1000.0) as i64;
    let stubs = payouts.compute(&period, ready)?;
    assert!(!stubs.is_empty());
    let rates = payouts.config().clone();
    for (node, stub) in &stubs {
        let settled = orders.node_bandwidth(node, 0, i64::MAX)?;
        assert_eq!(stub.egress_bytes, settled.get);
        assert_eq!(stub.ingress_bytes, settled.put + settled.put_repair);
        assert!(stub.ingress_bytes > 0);
        assert_eq!(
            stub.ingress_amount, 0,
            "ingress is paid at the ingress rate: free"
        );
        assert_eq!(
            stub.egress_amount,
            (u128::from(stub.egress_bytes) * u128::from(rates.egress_per_tb) / 1_000_000_000_000)
                as u64
        );
        assert!(stub.storage_byte_hours > 0, "tallied an hour of storage");
        assert_eq!(stub.age_periods, 1);
        assert_eq!(stub.held_percent, 75);
        if *node == dq {
            assert!(stub.disqualified);
            assert_eq!(stub.paid, 0);
            assert_eq!(stub.held_forfeited, stub.held);
        } else {
            assert_eq!(stub.paid, stub.gross - stub.held);
            assert_eq!(
                stub.wallet,
                loam_testnet::test_wallet(
                    planet
                        .nodes
                        .iter()
                        .position(|n| n.id == *node)
                        .expect("node")
                )
            );
        }
    }
    // Computing again changes nothing.
    assert_eq!(payouts.compute(&period, ready)?, stubs);
    assert_eq!(
        payouts.record_payment(&period, "batch-1")?,
        stubs.iter().filter(|(_, s)| s.paid > 0).count() as u32
    );
    assert!(
        payouts.record_payment(&period, "batch-1").is_err(),
        "paid twice"
    );

    // Node 0 fetches its ledger, verifies it, and catches tampering.
    let node = &planet.nodes[0];
    let endpoint = loam_common::transport::Endpoint::bind(
        node.identity.clone(),
        "127.0.0.1:0".parse()?,
        Default::default(),
    )?;
    let sat_url = planet.satellite_url.clone();
    let file = loam_storagenode::payouts::fetch(&node.dir, &endpoint, &node.id, &sat_url).await?;
    let entries = file.verify(&node.id)?;
    assert_eq!(entries.len(), 2, "a paystub and a payment");
    let path = loam_storagenode::payouts::ledger_path(&node.dir, &sat_url.id);
    let text = std::fs::read_to_string(&path)?;
    let verify = || {
        loam_storagenode::payouts::verify_all(&node.dir, &node.id, std::slice::from_ref(&sat_url))
            .remove(0)
            .1
    };
    assert!(verify().is_ok());
    // Alter one character inside the first entry's line.
    let line_start = text.match_indices("\nentry ").next().expect("entry").0 + 10;
    let mut bad = text.clone().into_bytes();
    bad[line_start] = if bad[line_start] == b'A' { b'B' } else { b'A' };
    std::fs::write(&path, &bad)?;
    let err = verify().expect_err("tampered");
    assert!(err.starts_with("entry 0"), "{err}");
    // A fetch refuses to build on a tampered copy.
    assert!(
        loam_storagenode::payouts::fetch(&node.dir, &endpoint, &node.id, &sat_url)
            .await
            .is_err()
    );
    std::fs::write(&path, &text)?;
    assert!(verify().is_ok());
    endpoint.close();
    planet.shutdown().await;
    Ok(())
}
