//! The data marketplace end to end on the in-process test network: three
//! owners publish their records and go offline, a fourth project trains one
//! model across their listings without ever receiving a record, a piece or
//! a key, and every unit of money reconciles.

use std::collections::HashMap;

use loam_common::NodeId;
use loam_common::access::Access;
use loam_common::compute::{TrainParams, work_micro_units};
use loam_common::pb;
use loam_common::pb::satellite_request::Request as Req;
use loam_testnet::planet::{Planet, PlanetConfig};
use loam_uplink::dataset::{DatasetOptions, JobRequest};
use loam_uplink::market::ListingOptions;
use loam_uplink::{Project, UplinkError};
use prost::Message;
use rand::SeedableRng;
use rand::seq::SliceRandom;

/// A project of its own on the planet's satellite.
fn project(planet: &Planet, name: &str) -> Project {
    let (key, _, salt) = planet.satellite.create_api_key(name).expect("api key");
    Project::open(
        Access::derive(
            planet.satellite_url.clone(),
            key,
            &format!("{name}'s passphrase"),
            &salt,
        )
        .expect("grant"),
    )
    .expect("open")
}

/// The shipped digits training split dealt at random into `n` files (each
/// with the header), and the held-out rows.
fn digits_dealt(n: usize) -> (Vec<String>, String) {
    let (train, test) = loam_testnet::digits_split();
    let mut lines = train.lines();
    let header = lines.next().expect("header").to_string();
    let mut rows: Vec<&str> = lines.collect();
    rows.shuffle(&mut rand::rngs::StdRng::seed_from_u64(19));
    let mut parts = vec![format!("{header}\n"); n];
    for (i, r) in rows.iter().enumerate() {
        parts[i % n].push_str(r);
        parts[i % n].push('\n');
    }
    (parts, test)
}

fn dataset_options() -> DatasetOptions {
    DatasetOptions {
        image: None,
        label: "label".into(),
        task: Default::default(),
        segment_size: Some(32 << 10),
        compute: true,
        shuffle: None,
    }
}

fn terms() -> pb::ListingTerms {
    pb::ListingTerms {
        allowed_models: vec!["mlp".into(), "logistic".into()],
        max_rounds: 50,
        min_records_per_task: 20,
        require_verification: 0.2,
        expires_unix_ms: 0,
    }
}

fn listing(title: &str, price: u64) -> ListingOptions {
    ListingOptions {
        title: title.into(),
        description: "8x8 handwritten digits".into(),
        license: "CC-BY-4.0".into(),
        tags: vec!["digits".into()],
        price_per_1000: price,
        hide_columns: false,
        terms: terms(),
    }
}

fn job(rounds: u32) -> JobRequest {
    JobRequest {
        image: None,
        conv: Vec::new(),
        architecture: "mlp".into(),
        hidden: vec![64],
        rounds,
        patience: 0,
        // Every record trained on: the fees below are records × epochs.
        params: TrainParams {
            validation: 0,
            ..TrainParams::default()
        },
        verify_fraction: None,
        out: ("lab".into(), "models/digits".into()),
        label: Some("label".into()),
        aggregation: Default::default(),
        device: Default::default(),
    }
}

/// An owner: a project holding `csv` as the dataset `NAME/digits`,
/// published at `price`; returns the listing id.
async fn publish(planet: &Planet, name: &str, csv: &str, price: u64) -> (Project, Vec<u8>) {
    let owner = project(planet, name);
    owner.create_bucket(name).await.expect("bucket");
    owner
        .upload_dataset(
            name,
            "digits",
            csv.as_bytes().to_vec(),
            &dataset_options(),
            None,
        )
        .await
        .expect("dataset put");
    owner
        .set_payout_address(&format!("0x{name}"))
        .await
        .expect("payout address");
    let l = owner
        .publish_dataset(
            name,
            "digits",
            &listing(&format!("Digits of {name}"), price),
        )
        .await
        .expect("publish");
    (owner, l.id.to_vec())
}

async fn wait_done(planet: &Planet, id: &[u8]) -> pb::JobInfo {
    planet
        .compute
        .wait_job(id, |j| j.state != pb::JobState::JobRunning as i32)
        .await
}

fn contains(haystack: &[u8], needle: &[u8]) -> bool {
    !needle.is_empty() && haystack.windows(needle.len()).any(|w| w == needle)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_owners_offline_one_consumer_and_the_money_reconciles() {
    let mut config = PlanetConfig::new(10);
    // A work unit at 1 000 000 base units, so that compute shows in the
    // figures next to the data fees (a job here is under one work unit).
    config.reconfigure_satellite = Some(Box::new(|c| c.payouts.per_work_unit = 1_000_000));
    let planet = Planet::start(config).await.expect("planet");
    let (parts, test) = digits_dealt(3);
    let prices = [1000, 1250, 3000];
    let mut owners = Vec::new();
    let mut ids = Vec::new();
    for (i, name) in ["clinic-a", "clinic-b", "clinic-c"].iter().enumerate() {
        let (owner, id) = publish(&planet, name, &parts[i], prices[i]).await;
        owners.push((name.to_string(), owner));
        ids.push(id);
    }
    // The owners' uplinks are off from here on.
    for (_, o) in owners.drain(..) {
        o.close().await;
    }

    let consumer = project(&planet, "lab");
    consumer.create_bucket("lab").await.expect("bucket");
    let request = job(20);
    let info = consumer
        .submit_market_job(&ids, &request)
        .await
        .expect("submit");
    assert_eq!(info.listings.len(), 3);
    let done = wait_done(&planet, &info.job_id).await;
    assert_eq!(done.state, pb::JobState::JobDone as i32, "{}", done.error);
    assert_eq!(
        done.tasks_done,
        20 * u64::from(done.tasks_total),
        "every task accepted every round"
    );
    assert!(done.tasks_verified > 0, "the listings ask for verification");

    // The consumer gets the final model only, and it is good.
    let model = consumer.job_model(&done).await.expect("model");
    let records = loam_compute::dataset::parse_records(test.as_bytes(), &model.header.schema, true)
        .expect("test rows");
    let acc = loam_compute::train::evaluate(&model.header.spec, &model.weights, &records)
        .expect("eval")
        .accuracy;
    eprintln!("accuracy across three listings: {acc:.4}");
    assert!(acc >= 0.95, "accuracy {acc}");
    consumer
        .save_model(&done, "lab", "models/digits")
        .await
        .expect("model stored in the consumer's bucket");

    // Nothing the consumer received holds a record or a row key. What it
    // received: the listings, the job, its weights, its charges.
    let mut received = Vec::new();
    for l in consumer.listings("", "", true).await.expect("ls") {
        received.extend(l.encode_to_vec());
    }
    for id in &ids {
        received.extend(consumer.listing(id).await.expect("show").encode_to_vec());
    }
    received.extend(
        consumer
            .job(&done.job_id)
            .await
            .expect("job")
            .encode_to_vec(),
    );
    for j in consumer.jobs().await.expect("jobs") {
        received.extend(j.encode_to_vec());
    }
    received.extend(loam_common::compute::weights_to_bytes(
        &consumer.job_weights(&done.job_id).await.expect("weights"),
    ));
    received.extend(consumer.charges().await.expect("charges").encode_to_vec());
    received.extend(model.to_bytes().expect("model bytes"));
    let mut row_keys = Vec::new();
    for id in &ids {
        let rec = planet.satellite.market().record(id).expect("listing");
        for t in &rec.tasks {
            for k in &t.keys {
                assert!(
                    !contains(&received, &k.sealed),
                    "a sealed key reached the consumer"
                );
                let node = planet
                    .nodes
                    .iter()
                    .find(|n| n.id.as_bytes() == k.node_id.as_ref())
                    .expect("a planet node");
                let secret = loam_common::sealed::open(node.identity.key(), &k.sealed)
                    .expect("sealed to that node");
                let secret = pb::TaskSecret::decode(secret.as_slice()).expect("task secret");
                row_keys.push(secret.row_key.to_vec());
            }
        }
    }
    assert!(!row_keys.is_empty());
    for key in &row_keys {
        assert!(!contains(&received, key), "a row key reached the consumer");
    }
    for part in &parts {
        for line in part.lines().skip(1) {
            assert!(
                !contains(&received, line.as_bytes()),
                "a record reached the consumer: {line}"
            );
        }
    }

    // The consumer cannot read, list or fetch the owners' data: its project
    // does not hold those buckets, and the satellite does not hand out the
    // owners' objects or orders for them to another project.
    for (name, id) in ["clinic-a", "clinic-b", "clinic-c"].iter().zip(&ids) {
        let e = consumer
            .read_all(name, "digits")
            .await
            .expect_err("not the consumer's");
        assert!(
            matches!(
                e,
                UplinkError::BucketNotFound(_) | UplinkError::ObjectNotFound(_)
            ),
            "{e}"
        );
        assert!(consumer.list(name, "", true).await.is_err());
        let rec = planet.satellite.market().record(id).expect("listing");
        let (_endpoint, conn) = planet.satellite_connection().await.expect("connect");
        let r = loam_common::rpc::satellite(
            &conn,
            &consumer.access().api_key,
            Req::DownloadSegment(pb::DownloadSegmentRequest {
                bucket: rec.bucket.clone(),
                encrypted_key: rec.encrypted_key.clone(),
                index: 0,
            }),
        )
        .await;
        match r {
            Err(loam_common::rpc::CallError::Remote(e)) => {
                assert_eq!(e.code, pb::ErrorCode::NotFound, "{}", e.message)
            }
            other => panic!("the consumer got a segment of an owner's dataset: {other:?}"),
        }
    }

    // The money. Per listing: sample-epochs of accepted tasks and the fee.
    let charges = consumer.charges().await.expect("charges");
    let mut se: HashMap<Vec<u8>, u64> = HashMap::new();
    let mut fees: HashMap<Vec<u8>, u64> = HashMap::new();
    let (mut micro, mut compute, mut egress, mut egress_bytes) = (0u64, 0u64, 0u64, 0u64);
    for c in &charges.charges {
        for d in &c.data {
            *se.entry(d.listing_id.to_vec()).or_default() += d.sample_epochs;
            *fees.entry(d.listing_id.to_vec()).or_default() += d.amount;
        }
        micro += c.work_micro_units;
        compute += c.compute_amount;
        egress += c.egress_amount;
        egress_bytes += c.egress_bytes;
        assert_eq!(
            c.total,
            c.data.iter().map(|d| d.amount).sum::<u64>() + c.compute_amount + c.egress_amount
        );
    }
    let params =
        loam_common::compute::ModelSpec::new("mlp".parse().expect("mlp"), vec![64], 64, 10)
            .expect("spec")
            .params();
    let rates = planet.payouts.config().clone();
    let mut data_total = 0;
    let mut earnings_by_owner = HashMap::new();
    for (i, id) in ids.iter().enumerate() {
        let rec = planet.satellite.market().record(id).expect("listing");
        let records: u64 = rec.row_records.iter().sum();
        let expected_se = records * request.params.local_epochs as u64 * 20;
        assert_eq!(se[id], expected_se, "listing {i}: sample-epochs");
        assert_eq!(
            fees[id],
            expected_se * prices[i] / 1000,
            "listing {i}: fee = sample-epochs × price / 1000"
        );
        data_total += fees[id];
        earnings_by_owner.insert(rec.project_id.to_vec(), fees[id]);
        let listing = consumer.listing(id).await.expect("show");
        assert_eq!(listing.jobs, 1);
        assert!(listing.last_used_unix_ms > 0);
    }
    // Compute: the accepted first runs only, at the nodes' rate.
    let task_micro: u64 = ids
        .iter()
        .flat_map(|id| {
            planet
                .satellite
                .market()
                .record(id)
                .expect("listing")
                .row_records
        })
        .map(|r| {
            work_micro_units(params, r * request.params.local_epochs as u64).expect("fits") * 20
        })
        .sum();
    assert_eq!(micro, task_micro, "verification runs are not charged");
    assert_eq!(
        compute,
        (u128::from(micro) * u128::from(rates.per_work_unit) / 1_000_000) as u64
    );
    assert_eq!(
        egress,
        (u128::from(egress_bytes) * u128::from(rates.egress_per_tb) / 1_000_000_000_000) as u64
    );
    assert!(compute > 0);
    assert_eq!(charges.total, data_total + compute + egress);
    // The worked example of docs/marketplace.md.
    assert_eq!(
        ids.iter().map(|id| (se[id], fees[id])).collect::<Vec<_>>(),
        vec![(19_160, 19_160), (19_160, 23_950), (19_160, 57_480)]
    );
    assert_eq!(
        (data_total, micro, compute, egress),
        (100_590, 829_200, 829_200, 0)
    );
    assert_eq!(charges.total, 929_790);
    eprintln!(
        "charged: data fees {data_total} ({:?}), compute {compute} ({micro} micro work units), \
         egress {egress} ({egress_bytes} bytes), total {}",
        ids.iter().map(|id| fees[id]).collect::<Vec<_>>(),
        charges.total
    );
    assert_eq!(
        (done.data_fees, done.compute_charged, done.egress_charged),
        (data_total, compute, egress)
    );
    // The nodes were credited more work than the consumer paid for: the
    // verification runs, which the satellite pays.
    let node_micro: f64 = planet
        .compute
        .node_stats()
        .expect("stats")
        .values()
        .map(|s| s.work_units * 1e6)
        .sum();
    assert!(node_micro > micro as f64 + 1.0, "{node_micro} vs {micro}");

    // Each owner sees its earnings and usage, then its paystub: a signed,
    // hash-chained ledger entry it verifies offline, and a line of the
    // payout export.
    let period = planet
        .payouts
        .config()
        .period_at(loam_common::orders::now_ms());
    let ready = period.end + (planet.payouts.config().settle_delay_secs * 1000.0) as i64;
    let stubs = planet.payouts.compute(&period, ready).expect("payouts");
    for (i, name) in ["clinic-a", "clinic-b", "clinic-c"].iter().enumerate() {
        let owner = project(&planet, name);
        let usage = owner.listing_usage(&ids[i]).await.expect("usage");
        assert_eq!(usage.sample_epochs, se[&ids[i]]);
        assert_eq!(usage.earned, fees[&ids[i]]);
        assert_eq!(usage.jobs, 1);
        let e = owner.earnings().await.expect("earnings");
        assert_eq!(e.payout_address, format!("0x{name}"));
        assert_eq!(e.unpaid, 0, "all on the paystub now");
        let ledger = e.ledger.clone().expect("ledger");
        let public =
            loam_common::PublicKey::try_from(ledger.satellite_public_key.as_ref()).expect("key");
        let file = loam_common::ledger::LedgerFile {
            satellite: public.node_id(),
            public_key: public,
            entries: ledger.entries,
            head: ledger.head,
        };
        let payee = loam_common::NodeId::try_from(e.payee_id.as_ref()).expect("payee");
        let entries = file
            .verify(&payee)
            .expect("the owner's ledger verifies offline");
        let stub = match &entries[0].body {
            Some(pb::ledger_entry::Body::Paystub(p)) => p.clone(),
            other => panic!("{other:?}"),
        };
        assert_eq!(stub.data_amount, fees[&ids[i]]);
        assert_eq!(stub.data_sample_epochs, se[&ids[i]]);
        assert_eq!(
            (stub.gross, stub.held, stub.paid),
            (stub.data_amount, 0, stub.data_amount)
        );
        assert_eq!(stub.payee_kind, "owner");
        assert_eq!(stub.wallet, format!("0x{name}"));
        // Tampering shows.
        let mut bad = file.clone();
        let mut entry = pb::LedgerEntry::decode(bad.entries[0].entry.as_ref()).expect("entry");
        if let Some(pb::ledger_entry::Body::Paystub(p)) = &mut entry.body {
            p.data_amount += 1;
        }
        bad.entries[0].entry = entry.encode_to_vec().into();
        assert!(bad.verify(&payee).is_err());
        assert!(
            stubs
                .iter()
                .any(|(id, s)| *id == payee && s.paid == fees[&ids[i]]),
            "the period's payouts list owner {name}"
        );
        owner.close().await;
    }
    let owner_paid: u64 = stubs
        .iter()
        .filter(|(_, s)| s.payee_kind == "owner")
        .map(|(_, s)| s.paid)
        .sum();
    assert_eq!(
        owner_paid, data_total,
        "owners are paid what the consumer was charged for data"
    );
    assert!(
        stubs
            .iter()
            .any(|(_, s)| s.payee_kind == "node" && s.compute_amount > 0)
    );
    consumer.close().await;
    planet.shutdown().await;
}

/// The line a refused submission printed, checked to be one line naming
/// `what`.
fn refused(r: Result<pb::JobInfo, UplinkError>, what: &str) -> String {
    let e = r.expect_err(what).to_string();
    assert!(!e.contains('\n'), "one line: {e}");
    assert!(e.contains(what), "expected {what:?} in {e:?}");
    e
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn jobs_that_break_a_listings_terms_are_refused_at_submission() {
    let planet = Planet::start(PlanetConfig::new(6)).await.expect("planet");
    let (parts, _) = digits_dealt(2);
    let (owner, open) = publish(&planet, "clinic", &parts[0], 1000).await;
    // The same data with one column renamed: same shape, other columns.
    assert!(
        parts[1].starts_with("p0,"),
        "the digits header starts with p0"
    );
    let renamed = parts[1].replacen("p0,", "q0,", 1);
    let (other, odd) = publish(&planet, "hospital", &renamed, 1000).await;
    owner
        .upload_dataset(
            "clinic",
            "copy",
            parts[0].as_bytes().to_vec(),
            &dataset_options(),
            None,
        )
        .await
        .expect("copy");
    let strict = owner
        .publish_dataset(
            "clinic",
            "copy",
            &ListingOptions {
                terms: pb::ListingTerms {
                    min_records_per_task: 100_000,
                    ..terms()
                },
                ..listing("strict", 1)
            },
        )
        .await
        .expect("publish strict")
        .id
        .to_vec();
    owner
        .upload_dataset(
            "clinic",
            "soon",
            parts[0].as_bytes().to_vec(),
            &dataset_options(),
            None,
        )
        .await
        .expect("soon");
    let expires = loam_common::orders::now_ms() + 3_600_000;
    let soon = owner
        .publish_dataset(
            "clinic",
            "soon",
            &ListingOptions {
                terms: pb::ListingTerms {
                    expires_unix_ms: expires,
                    ..terms()
                },
                ..listing("soon over", 1)
            },
        )
        .await
        .expect("publish soon")
        .id
        .to_vec();
    owner
        .upload_dataset(
            "clinic",
            "gone",
            parts[0].as_bytes().to_vec(),
            &dataset_options(),
            None,
        )
        .await
        .expect("gone");
    let gone = owner
        .publish_dataset("clinic", "gone", &listing("taken down", 1))
        .await
        .expect("publish")
        .id
        .to_vec();
    owner.unpublish(&gone).await.expect("unpublish");

    let consumer = project(&planet, "lab");
    let id = |l: &[u8]| format!("market:{}", hex::encode(l));
    let mut logistic = job(5);
    logistic.architecture = "logistic".into();
    // A disallowed model: the terms allow mlp and logistic; a listing that
    // allows only logistic refuses mlp.
    owner
        .upload_dataset(
            "clinic",
            "linear-only",
            parts[0].as_bytes().to_vec(),
            &dataset_options(),
            None,
        )
        .await
        .expect("linear-only");
    let linear_only = owner
        .publish_dataset(
            "clinic",
            "linear-only",
            &ListingOptions {
                terms: pb::ListingTerms {
                    allowed_models: vec!["logistic".into()],
                    ..terms()
                },
                ..listing("linear models only", 1)
            },
        )
        .await
        .expect("publish")
        .id
        .to_vec();
    let e = refused(
        consumer
            .submit_market_job(std::slice::from_ref(&linear_only), &job(5))
            .await,
        "allow only logistic models, not mlp",
    );
    assert!(e.contains(&id(&linear_only)), "{e}");
    consumer
        .submit_market_job(std::slice::from_ref(&linear_only), &logistic)
        .await
        .expect("an allowed model runs");
    // Too many rounds.
    refused(
        consumer
            .submit_market_job(std::slice::from_ref(&open), &job(51))
            .await,
        "at most 50 rounds",
    );
    // Too few records per task.
    refused(
        consumer
            .submit_market_job(std::slice::from_ref(&strict), &job(5))
            .await,
        "at least 100000 records per task",
    );
    // Less verification than the terms ask.
    let mut unchecked = job(5);
    unchecked.verify_fraction = Some(0.05);
    refused(
        consumer
            .submit_market_job(std::slice::from_ref(&open), &unchecked)
            .await,
        "at least 0.2 of tasks re-executed",
    );
    // Unpublished.
    refused(
        consumer
            .submit_market_job(std::slice::from_ref(&gone), &job(5))
            .await,
        "unpublished",
    );
    // Expired: the hour is moved into the past in the satellite's own
    // record of the listing, as if it had gone by.
    {
        let market = planet.satellite.market();
        let rec = market.record(&soon).expect("listing");
        let terms = rec.listing.as_ref().and_then(|l| l.terms.as_ref());
        assert_eq!(terms.expect("terms").expires_unix_ms, expires);
        market
            .listings()
            .update(&soon, |rec| {
                let listing = rec.listing.as_mut().expect("listing facts");
                listing.terms.as_mut().expect("terms").expires_unix_ms =
                    loam_common::orders::now_ms() - 1;
                Ok::<_, loam_satellite::db::DbError>(())
            })
            .expect("record")
            .expect("listed");
    }
    refused(
        consumer
            .submit_market_job(std::slice::from_ref(&soon), &job(5))
            .await,
        "expired at",
    );
    // Columns that differ across listings.
    let e = refused(
        consumer
            .submit_market_job(&[open.clone(), odd.clone()], &job(5))
            .await,
        "feature columns or label differ",
    );
    assert!(e.contains(&id(&odd)), "{e}");
    // A consumer over its monthly spending limit.
    planet
        .satellite
        .set_project_limits(
            "lab",
            &pb::SetProjectLimitsRequest {
                spend_limit: Some(10),
                ..Default::default()
            },
        )
        .expect("limit");
    refused(
        consumer
            .submit_market_job(std::slice::from_ref(&open), &job(5))
            .await,
        "monthly spending limit of 10",
    );
    // An unknown listing.
    refused(
        consumer.submit_market_job(&[vec![0xab; 8]], &job(5)).await,
        "no listing market:abababababababab",
    );
    consumer.close().await;
    other.close().await;
    owner.close().await;
    planet.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn market_jobs_finish_with_the_owner_offline_after_a_node_dies_or_a_piece_moves() {
    let mut config = PlanetConfig::new(10);
    config.reconfigure_satellite = Some(Box::new(|c| c.online_window_secs = 1.5));
    config.reconfigure_node = Some(Box::new(|_, c| c.checkin_interval_secs = 0.3));
    let mut planet = Planet::start(config).await.expect("planet");
    let (parts, _) = digits_dealt(1);
    let (owner, id) = publish(&planet, "clinic", &parts[0], 1000).await;
    owner.close().await;
    let consumer = project(&planet, "lab");

    // A node holding a data piece dies mid-job.
    let mut long = job(30);
    long.params.local_epochs = 3;
    let info = consumer
        .submit_market_job(std::slice::from_ref(&id), &long)
        .await
        .expect("submit");
    planet
        .compute
        .wait_job(&info.job_id, |j| j.round >= 2)
        .await;
    let holder = planet.holder_of_row(0).expect("a holder of data row 0");
    planet.stop_node(holder).await;
    assert!(consumer.job(&info.job_id).await.expect("job").round < 30);
    let done = wait_done(&planet, &info.job_id).await;
    assert_eq!(done.state, pb::JobState::JobDone as i32, "{}", done.error);
    assert!(
        done.dataset_bytes_fetched > 0,
        "the dead holder's rows were rebuilt by nodes holding the listing's keys"
    );
    // The consumer pays for the piece bytes its rebuilds fetched.
    let charged_bytes: u64 = consumer
        .charges()
        .await
        .expect("charges")
        .charges
        .iter()
        .map(|c| c.egress_bytes)
        .sum();
    assert!(charged_bytes > 0 && charged_bytes <= done.dataset_bytes_fetched);

    // Pieces repaired to other nodes, then a new job: still no owner. The
    // dead holder's pieces are repaired before another holder dies, as the
    // repair checker would, so that no segment loses more pieces than its
    // scheme tolerates.
    planet
        .satellite_overlay
        .wait_offline(&planet.nodes[holder].id)
        .await;
    let mut repaired = planet.repair.run_once().await.repaired;
    let mut dead = vec![holder];
    while repaired == 0 && dead.len() < 4 {
        // Another node holding a piece of the first segment dies.
        let segments = planet.satellite.segments().expect("segments");
        let next = segments[0]
            .1
            .pieces
            .iter()
            .filter_map(|p| {
                let id = NodeId::try_from(p.node_id.as_ref()).ok()?;
                planet.nodes.iter().position(|n| n.id == id)
            })
            .find(|i| !dead.contains(i))
            .expect("a live holder");
        planet.stop_node(next).await;
        planet
            .satellite_overlay
            .wait_offline(&planet.nodes[next].id)
            .await;
        dead.push(next);
        repaired += planet.repair.run_once().await.repaired;
    }
    assert!(repaired > 0, "pieces of the dead holders were repaired");
    let info = consumer
        .submit_market_job(std::slice::from_ref(&id), &job(5))
        .await
        .expect("submit after repair");
    let done = wait_done(&planet, &info.job_id).await;
    assert_eq!(done.state, pb::JobState::JobDone as i32, "{}", done.error);
    consumer.close().await;
    planet.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_published_model_is_bought_per_download_and_its_publisher_earns() {
    let planet = Planet::start(PlanetConfig::new(6)).await.expect("planet");
    let (parts, test) = digits_dealt(1);
    let publisher = project(&planet, "studio");
    publisher.create_bucket("studio").await.expect("bucket");
    publisher
        .upload_dataset(
            "studio",
            "digits",
            parts[0].as_bytes().to_vec(),
            &dataset_options(),
            None,
        )
        .await
        .expect("dataset");
    let mut own = job(8);
    own.out = ("studio".into(), "models/digits".into());
    own.verify_fraction = Some(0.0);
    let info = publisher
        .submit_job("studio", "digits", &own)
        .await
        .expect("train");
    let done = wait_done(&planet, &info.job_id).await;
    assert_eq!(done.state, pb::JobState::JobDone as i32, "{}", done.error);
    publisher
        .save_model(&done, "studio", "models/digits")
        .await
        .expect("model");
    let listed = publisher
        .publish_model(
            "studio",
            "models/digits",
            &listing("Digits classifier", 0),
            700,
        )
        .await
        .expect("publish model");
    assert_eq!(listed.kind, "model");
    assert_eq!(listed.model, "mlp");
    assert_eq!(listed.price_per_download, 700);
    publisher.close().await;

    let buyer = project(&planet, "shop");
    let (bytes, charged) = buyer.fetch_model(&listed.id).await.expect("buy");
    assert_eq!(charged, 700);
    let model = loam_compute::ModelFile::from_bytes(&bytes).expect("a model");
    let records = loam_compute::dataset::parse_records(test.as_bytes(), &model.header.schema, true)
        .expect("test rows");
    let acc = loam_compute::train::evaluate(&model.header.spec, &model.weights, &records)
        .expect("eval")
        .accuracy;
    assert!(acc >= 0.9, "the bought model evaluates: {acc}");
    buyer
        .fetch_model(&listed.id)
        .await
        .expect("a second download");
    // The buyer's charges and the publisher's earnings move by the price
    // per download.
    let charges = buyer.charges().await.expect("charges");
    assert_eq!(charges.total, 1400);
    let publisher = project(&planet, "studio");
    let usage = publisher.listing_usage(&listed.id).await.expect("usage");
    assert_eq!(
        (usage.earned, usage.listing.as_ref().map(|l| l.downloads)),
        (1400, Some(2))
    );
    assert_eq!(publisher.earnings().await.expect("earnings").unpaid, 1400);
    // A model listing is not a dataset to train on.
    let e = buyer
        .submit_market_job(std::slice::from_ref(&listed.id.to_vec()), &job(2))
        .await
        .expect_err("not a dataset");
    assert!(e.to_string().contains("model listing"), "{e}");
    // Over the buyer's spending limit, and after unpublishing: refused.
    planet
        .satellite
        .set_project_limits(
            "shop",
            &pb::SetProjectLimitsRequest {
                spend_limit: Some(2000),
                ..Default::default()
            },
        )
        .expect("limit");
    let e = buyer
        .fetch_model(&listed.id)
        .await
        .expect_err("over the limit");
    assert!(e.to_string().contains("spending limit"), "{e}");
    publisher.unpublish(&listed.id).await.expect("unpublish");
    let e = buyer
        .fetch_model(&listed.id)
        .await
        .expect_err("unpublished");
    assert!(e.to_string().contains("unpublished"), "{e}");
    assert_eq!(
        buyer.charges().await.expect("charges").total,
        1400,
        "refusals are free"
    );
    publisher.close().await;
    buyer.close().await;
    planet.shutdown().await;
}
