//! Training where the data lives, on the in-process test network: locality,
//! a holder lost mid-job, a dishonest node, and jobs refused at submission.

use std::sync::Arc;

use loam_common::compute::TrainParams;
use loam_common::federated::{Algorithm, Choice, Rule};
use loam_common::pb;
use loam_compute::ModelFile;
use loam_storagenode::adversary::Lies;
use loam_testnet::planet::{Planet, PlanetConfig};
use loam_uplink::dataset::{DatasetOptions, JobRequest};
use loam_uplink::{Project, UplinkError};

fn digits() -> (Vec<u8>, Vec<u8>) {
    let (train, test) = loam_testnet::digits_split();
    (train.into_bytes(), test.into_bytes())
}

fn options() -> DatasetOptions {
    DatasetOptions {
        image: None,
        label: "label".into(),
        task: Default::default(),
        // Several segments: 8 tasks with 2 data rows per segment.
        segment_size: Some(56 << 10),
        compute: true,
        shuffle: None,
    }
}

fn job(rounds: u32, verify: f64) -> JobRequest {
    JobRequest {
        image: None,
        conv: Vec::new(),
        architecture: "mlp".into(),
        hidden: vec![64],
        rounds,
        patience: 0,
        params: TrainParams::default(),
        verify_fraction: Some(verify),
        out: ("digits".into(), "models/m".into()),
        label: None,
        aggregation: Default::default(),
        device: Default::default(),
    }
}

/// What the satellite holds of one node's compute record (zeros if none).
fn stats_of(planet: &Planet, id: &loam_common::NodeId) -> pb::ComputeStats {
    planet
        .compute
        .node_stats()
        .expect("stats")
        .get(id)
        .cloned()
        .unwrap_or_default()
}

async fn wait_done(planet: &Planet, id: &[u8]) -> pb::JobInfo {
    planet
        .compute
        .wait_job(id, |j| j.state != pb::JobState::JobRunning as i32)
        .await
}

async fn accuracy(project: &Project, job: &pb::JobInfo, test: &[u8]) -> f64 {
    let model = project.job_model(job).await.expect("model");
    let records =
        loam_compute::dataset::parse_records(test, &model.header.schema, true).expect("test set");
    loam_compute::train::evaluate(&model.header.spec, &model.weights, &records)
        .expect("eval")
        .accuracy
}

async fn setup(config: PlanetConfig) -> (Planet, Project, Vec<u8>) {
    let planet = Planet::start(config).await.expect("planet");
    let project = planet.project().expect("project");
    project.create_bucket("digits").await.expect("bucket");
    let (train, test) = digits();
    let info = project
        .upload_dataset("digits", "train", train.clone(), &options(), None)
        .await
        .expect("dataset put");
    assert_eq!(info.records, 1437);
    assert!(info.tasks >= 6, "{} tasks", info.tasks);
    // Still a normal object: the original bytes come back.
    assert_eq!(
        project.read_all("digits", "train").await.expect("cp"),
        train
    );
    (planet, project, test)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn training_runs_on_the_holders_and_only_weights_travel() {
    let (planet, project, test) = setup(PlanetConfig::new(6)).await;
    let info = project
        .submit_job("digits", "train", &job(10, 0.0))
        .await
        .expect("submit");
    let done = wait_done(&planet, &info.job_id).await;
    assert_eq!(done.state, pb::JobState::JobDone as i32, "{}", done.error);
    assert_eq!(done.round, 10);
    assert_eq!(done.tasks_done, 10 * u64::from(done.tasks_total));
    assert_eq!(done.dataset_bytes_fetched, 0, "no piece moved for training");
    // Each task receives and returns the weights once per round, and
    // receives its drift correction (as long as the weights) from the
    // second round on.
    let params = 64 * 64 + 64 + 64 * 10 + 10;
    assert_eq!(
        done.weight_bytes,
        (10 * 2 + 9) * u64::from(done.tasks_total) * 4 * params
    );
    assert!(done.work_units > 0.0);
    let acc = accuracy(&project, &done, &test).await;
    assert!(acc >= 0.93, "federated accuracy {acc}");

    // The model stored at --out evaluates the same.
    project
        .save_model(&done, "digits", "models/m")
        .await
        .expect("save");
    let bytes = project.read_all("digits", "models/m").await.expect("model");
    let file = ModelFile::from_bytes(&bytes).expect("model file");
    assert_eq!(
        file.weights,
        project.job_weights(&done.job_id).await.expect("w")
    );

    // The work is credited to the nodes that did it.
    let stats = planet.compute.node_stats().expect("stats");
    let credited: f64 = stats.values().map(|s| s.work_units).sum();
    assert!((credited - done.work_units).abs() < 1e-6);
    assert!(stats.values().all(|s| s.verification_failures == 0));
    planet.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_holder_lost_mid_job_is_rebuilt_elsewhere() {
    let (mut planet, project, test) = setup(PlanetConfig::new(6)).await;
    let mut request = job(40, 0.0);
    request.params.local_epochs = 4;
    let info = project
        .submit_job("digits", "train", &request)
        .await
        .expect("submit");
    // Wait until the job is under way, then stop a node holding data (with
    // every holder up, only holders have run tasks).
    planet
        .compute
        .wait_job(&info.job_id, |j| j.round >= 2)
        .await;
    let stats = planet.compute.node_stats().expect("stats");
    let holder = planet
        .nodes
        .iter()
        .position(|n| stats.get(&n.id).is_some_and(|s| s.tasks_accepted > 0))
        .expect("some node holds data");
    planet.stop_node(holder).await;
    let at_stop = project.job(&info.job_id).await.expect("job").round;
    assert!(
        at_stop < 40,
        "the job must still be running when the node stops"
    );
    let done = wait_done(&planet, &info.job_id).await;
    assert_eq!(done.state, pb::JobState::JobDone as i32, "{}", done.error);
    assert_eq!(done.round, 40);
    assert!(
        done.dataset_bytes_fetched > 0,
        "the lost holder's pieces were rebuilt by other nodes"
    );
    let acc = accuracy(&project, &done, &test).await;
    assert!(acc >= 0.93, "accuracy {acc}");
    planet.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wrong_weights_are_caught_and_not_paid() {
    // A node holding data nudges every weight: small enough to pass the
    // norm check, large enough to differ from an honest re-execution.
    let hook: loam_storagenode::compute::WeightsHook = Arc::new(|w: &mut [f32]| {
        for x in w.iter_mut() {
            *x += 1e-3;
        }
    });
    let (mut planet, project, test) = setup(PlanetConfig::new(6)).await;
    let liar = planet.holder_of_row(0).expect("a node holds data row 0");
    planet
        .restart_node_lying(
            liar,
            Lies {
                weights: Some(hook),
                ..Lies::default()
            },
        )
        .await
        .expect("restart");
    let liar_id = planet.nodes[liar].id;
    let info = project
        .submit_job("digits", "train", &job(4, 1.0))
        .await
        .expect("submit");
    let done = wait_done(&planet, &info.job_id).await;
    assert_eq!(done.state, pb::JobState::JobDone as i32, "{}", done.error);
    assert!(done.verification_failures > 0);
    let stats = planet.compute.node_stats().expect("stats");
    let bad = stats.get(&liar_id).cloned().unwrap_or_default();
    assert!(bad.verification_failures > 0, "{bad:?}");
    assert_eq!(bad.work_units, 0.0, "a wrong result earns nothing");
    for n in planet.nodes.iter().filter(|n| n.id != liar_id) {
        let s = stats.get(&n.id).cloned().unwrap_or_default();
        assert_eq!(s.verification_failures, 0, "honest node blamed");
    }
    // Three rounds of local SGD: a sanity floor, not the benchmark.
    let acc = accuracy(&project, &done, &test).await;
    assert!(acc >= 0.8, "accuracy {acc}");
    planet.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn malformed_jobs_fail_at_submission() {
    let mut config = PlanetConfig::new(5);
    config.reconfigure_node = Some(Box::new(|_, c| c.compute.enabled = false));
    let (planet, project, _) = setup(config).await;
    let err = |r: Result<pb::JobInfo, UplinkError>| r.expect_err("must fail").to_string();

    let mut bad = job(2, 0.0);
    bad.architecture = "transformer".into();
    let e = err(project.submit_job("digits", "train", &bad).await);
    assert!(e.contains("unknown model"), "{e}");

    let mut bad = job(2, 0.0);
    bad.label = Some("species".into());
    let e = err(project.submit_job("digits", "train", &bad).await);
    assert!(
        e.contains("species") && e.contains("not in the dataset"),
        "{e}"
    );

    let mut bad = job(2, 0.0);
    bad.aggregation.clip = Some(0.5);
    let e = err(project.submit_job("digits", "train", &bad).await);
    assert!(e.contains("clip factor"), "{e}");

    let mut bad = job(2, 0.0);
    bad.params.learning_rate = -1.0;
    let e = err(project.submit_job("digits", "train", &bad).await);
    assert!(e.contains("learning rate"), "{e}");

    let e = project
        .upload_dataset(
            "digits",
            "broken",
            b"a,b,label\n1,2,x\n3,oops,y\n".to_vec(),
            &options(),
            None,
        )
        .await
        .expect_err("non-numeric cell")
        .to_string();
    assert!(e.contains("line 3") && e.contains("oops"), "{e}");
    let e = project
        .upload_dataset(
            "digits",
            "nolabel",
            b"a,b\n1,2\n".to_vec(),
            &options(),
            None,
        )
        .await
        .expect_err("no label")
        .to_string();
    assert!(e.contains("label column"), "{e}");

    project
        .set_dataset_compute("digits", "train", false)
        .await
        .expect("opt out");
    let e = err(project.submit_job("digits", "train", &job(2, 0.0)).await);
    assert!(e.contains("not opted in"), "{e}");
    project
        .set_dataset_compute("digits", "train", true)
        .await
        .expect("opt in");

    project
        .upload(
            "digits",
            "plain.csv",
            std::io::Cursor::new(vec![b'x'; 10_000]),
            None,
        )
        .await
        .expect("plain object");
    let e = err(project
        .submit_job("digits", "plain.csv", &job(2, 0.0))
        .await);
    assert!(e.contains("not a dataset"), "{e}");

    // No node offers compute: nobody can run it.
    let e = err(project.submit_job("digits", "train", &job(2, 0.0)).await);
    assert!(e.contains("no node online offers compute"), "{e}");
    planet.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_job_after_cancelling_a_running_one_finishes() {
    let (planet, project, test) = setup(PlanetConfig::new(6)).await;
    let long = project
        .submit_job("digits", "train", &job(500, 0.0))
        .await
        .expect("submit");
    // Cancel while the second round's tasks are in flight.
    planet
        .compute
        .wait_job(&long.job_id, |j| j.round >= 1)
        .await;
    project.cancel_job(&long.job_id).await.expect("cancel");
    let cancelled = wait_done(&planet, &long.job_id).await;
    assert_eq!(cancelled.state, pb::JobState::JobCancelled as i32);
    assert!(cancelled.round < 500);
    assert!(
        planet.compute.busy_slots().is_empty(),
        "the cancelled job still holds slots: {:?}",
        planet.compute.busy_slots()
    );
    let next = project
        .submit_job("digits", "train", &job(3, 0.0))
        .await
        .expect("submit after cancel");
    let done = tokio::time::timeout(
        std::time::Duration::from_secs(300),
        wait_done(&planet, &next.job_id),
    )
    .await
    .expect("the job after a cancel must not stall");
    assert_eq!(done.state, pb::JobState::JobDone as i32, "{}", done.error);
    assert_eq!(done.round, 3);
    assert!(done.waiting.is_empty());
    assert!(accuracy(&project, &done, &test).await > 0.5);
    planet.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn inflated_sample_counts_are_caught_and_not_paid() {
    // A node holding data trains honestly but claims a huge sample count:
    // before, that set its pay and the weight of its update (and
    // overflowed the sums).
    let (mut planet, project, test) = setup(PlanetConfig::new(6)).await;
    let liar = planet.holder_of_row(0).expect("a node holds data row 0");
    planet
        .restart_node_lying(
            liar,
            Lies {
                samples: Some(u64::MAX / 2),
                ..Lies::default()
            },
        )
        .await
        .expect("restart");
    let liar_id = planet.nodes[liar].id;
    let info = project
        .submit_job("digits", "train", &job(3, 0.0))
        .await
        .expect("submit");
    let done = wait_done(&planet, &info.job_id).await;
    assert_eq!(done.state, pb::JobState::JobDone as i32, "{}", done.error);
    // Every accepted task was weighed by the records the satellite knows:
    // 1 437 records less those held out for validation (counted by the
    // satellite from the same seeded split), two local epochs, three rounds.
    let epochs = TrainParams::default().local_epochs as u64;
    let held = done.history[0].val_records;
    assert!((100..200).contains(&held), "{held} records held out");
    assert!(
        done.history.iter().all(|r| r.val_records == held),
        "{:?} {}",
        done.history
            .iter()
            .map(|r| (r.val_records, r.tasks_accepted, r.tasks_rejected))
            .collect::<Vec<_>>(),
        done.verification_failures
    );
    assert_eq!(done.samples, 3 * (1437 - held) * epochs);
    let stats = planet.compute.node_stats().expect("stats");
    let lied = stats_of(&planet, &liar_id);
    assert!(
        lied.tasks_accepted == 0 && lied.work_units == 0.0,
        "{lied:?}"
    );
    assert!(lied.verification_failures > 0, "the lie counts against it");
    let rep = planet.reputation.get(&liar_id).expect("rep");
    assert!(rep.audits_failed > 0, "{rep:?}");
    let paid: f64 = stats.values().map(|s| s.work_units).sum();
    assert!((paid - done.work_units).abs() < 1e-6);
    for n in planet.nodes.iter().filter(|n| n.id != liar_id) {
        let s = stats.get(&n.id).cloned().unwrap_or_default();
        assert_eq!(s.verification_failures, 0, "honest node blamed");
    }
    // Three rounds of local SGD without the liar's tasks: a sanity floor.
    let acc = accuracy(&project, &done, &test).await;
    assert!(acc > 0.7, "accuracy {acc}");
    planet.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_chosen_aggregation_is_kept_and_the_same_job_gives_the_same_weights() {
    let (planet, project, test) = setup(PlanetConfig::new(6)).await;
    // The default: SCAFFOLD over the records-weighted mean.
    let info = project
        .submit_job("digits", "train", &job(1, 0.0))
        .await
        .expect("submit");
    let chosen =
        |i: &pb::JobInfo| Choice::try_from(&i.aggregation.expect("an aggregation")).expect("valid");
    assert_eq!(chosen(&info).algorithm, Algorithm::Scaffold);
    assert_eq!(chosen(&info).rule, Rule::Mean);
    let done = wait_done(&planet, &info.job_id).await;
    assert_eq!(done.state, pb::JobState::JobDone as i32, "{}", done.error);

    // Adam on the server, multi-Krum with clipping: kept as asked, and
    // two runs of the same job settle to the same bits.
    let mut robust = job(4, 0.0);
    robust.aggregation = Choice {
        algorithm: Algorithm::FedAdam,
        rule: Rule::Krum,
        clip: Some(3.0),
    };
    let mut weights = Vec::new();
    for _ in 0..2 {
        let info = project
            .submit_job("digits", "train", &robust)
            .await
            .expect("submit");
        assert_eq!(chosen(&info), robust.aggregation);
        let done = wait_done(&planet, &info.job_id).await;
        assert_eq!(done.state, pb::JobState::JobDone as i32, "{}", done.error);
        assert_eq!(done.history.len(), 4);
        let model = project.job_model(&done).await.expect("model");
        weights.push(model.weights);
    }
    assert!(
        weights[0] == weights[1],
        "the same job and seed give bit-identical weights"
    );
    let model = ModelFile {
        header: project.job_model(&done).await.expect("model").header,
        weights: weights.pop().expect("weights"),
    };
    let records =
        loam_compute::dataset::parse_records(&test, &model.header.schema, true).expect("test set");
    let acc = loam_compute::train::evaluate(&model.header.spec, &model.weights, &records)
        .expect("eval")
        .accuracy;
    assert!(acc > 0.5, "fedadam with krum learns: {acc}");
    planet.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rounds_auto_stops_by_validation_and_keeps_the_best_weights() {
    let (planet, project, test) = setup(PlanetConfig::new(6)).await;
    // What a job refuses: stopping by validation with nothing held out.
    let mut bad = job(40, 0.0);
    bad.patience = 2;
    bad.params.validation = 0;
    let e = project
        .submit_job("digits", "train", &bad)
        .await
        .expect_err("no validation");
    assert!(e.to_string().contains("hold records out"), "{e}");

    let mut req = job(40, 0.2);
    req.patience = 2;
    let info = project
        .submit_job("digits", "train", &req)
        .await
        .expect("submit");
    assert_eq!((info.rounds, info.patience), (40, 2));
    let done = wait_done(&planet, &info.job_id).await;
    assert_eq!(done.state, pb::JobState::JobDone as i32, "{}", done.error);
    // Every round reports the validation of the weights it started from,
    // on the same held-out records.
    let held = done.history[0].val_records;
    assert!((100..200).contains(&held), "{held} records held out");
    assert!(
        done.history.iter().all(|r| r.val_records == held),
        "{:?} {}",
        done.history
            .iter()
            .map(|r| (r.val_records, r.tasks_accepted, r.tasks_rejected))
            .collect::<Vec<_>>(),
        done.verification_failures
    );
    // It stopped two rounds after its best validation loss, by the rule
    // in the settlement core, before the cap.
    let losses: Vec<Option<f64>> = done
        .history
        .iter()
        .map(|r| Some(f64::from(r.val_loss)))
        .collect();
    let stop = loam_common::federated::early_stop(&losses, 2);
    assert!(stop.stop, "{losses:?}");
    assert!(done.round < 40, "ran {} rounds", done.round);
    assert_eq!(stop.best.map(|b| b.0), Some(done.best_round));
    assert_eq!(done.round, done.best_round + 3);
    assert!(
        done.stopped_early.contains("did not improve"),
        "{}",
        done.stopped_early
    );
    // The job's weights are the best ones: evaluated on the test rows they
    // do as well as a model that good should.
    let acc = accuracy(&project, &done, &test).await;
    assert!(acc >= 0.9, "accuracy {acc}");
    planet.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lies_about_validation_are_caught_and_not_believed() {
    // Validation decides when a job stops and which weights it keeps: a
    // node must not steer it. One claims more held-out records than its
    // task has (caught by the satellite's own count); another claims every
    // held-out record right with the true count (caught by re-execution).
    let (mut planet, project, _test) = setup(PlanetConfig::new(6)).await;
    let inflate = planet.holder_of_row(0).expect("holder of row 0");
    planet
        .restart_node_lying(
            inflate,
            Lies {
                result: Some(Arc::new(|r: &mut pb::TrainResult| {
                    r.val_records += 1000;
                    r.val_correct = r.val_records;
                })),
                ..Lies::default()
            },
        )
        .await
        .expect("restart");
    let inflate_id = planet.nodes[inflate].id;
    let info = project
        .submit_job("digits", "train", &job(2, 0.0))
        .await
        .expect("submit");
    let done = wait_done(&planet, &info.job_id).await;
    assert_eq!(done.state, pb::JobState::JobDone as i32, "{}", done.error);
    let held = done.history[0].val_records;
    assert!((100..200).contains(&held), "{held}: the lie never counted");
    let s = stats_of(&planet, &inflate_id);
    assert!(
        s.tasks_accepted == 0 && s.verification_failures > 0,
        "{s:?}"
    );

    // The flatterer: re-executed tasks disagree with it, and it loses.
    let flatter = (0..planet.nodes.len())
        .find(|&i| i != inflate)
        .expect("another node");
    planet
        .restart_node_lying(
            flatter,
            Lies {
                result: Some(Arc::new(|r: &mut pb::TrainResult| {
                    r.val_correct = r.val_records;
                    r.val_loss = 0.0;
                })),
                ..Lies::default()
            },
        )
        .await
        .expect("restart");
    let flatter_id = planet.nodes[flatter].id;
    let before = stats_of(&planet, &flatter_id);
    let info = project
        .submit_job("digits", "train", &job(2, 1.0))
        .await
        .expect("submit");
    let done = wait_done(&planet, &info.job_id).await;
    assert_eq!(done.state, pb::JobState::JobDone as i32, "{}", done.error);
    assert!(done.history.iter().all(|r| r.val_accuracy < 1.0));
    let after = stats_of(&planet, &flatter_id);
    assert_eq!(
        after.tasks_accepted, before.tasks_accepted,
        "a flattering result is never accepted"
    );
    planet.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_sorted_file_stored_shuffled_trains_well_and_downloads_unchanged() {
    // Digits sorted by label, as many exports arrive: in file order each
    // data piece holds a class or two; shuffled at upload, every piece holds
    // them all, and the owner still gets the file back byte for byte.
    let planet = Planet::start(PlanetConfig::new(6)).await.expect("planet");
    let project = planet.project().expect("project");
    project.create_bucket("digits").await.expect("bucket");
    let (sorted, test) = sorted_digits();
    let mut accuracies = Vec::new();
    for (key, shuffle) in [("in-order", None), ("shuffled", Some(7))] {
        let opts = DatasetOptions {
            image: None,
            shuffle,
            ..options()
        };
        project
            .upload_dataset("digits", key, sorted.clone(), &opts, None)
            .await
            .expect("dataset put");
        assert_eq!(project.read_all("digits", key).await.expect("cp"), sorted);
        let (meta, _) = project.dataset("digits", key).await.expect("info");
        assert_eq!(meta.shuffle.is_some(), shuffle.is_some());
        // Plain FedAvg, which has no answer of its own to skewed pieces.
        let mut job = job(10, 0.0);
        job.out = ("digits".into(), format!("models/{key}"));
        job.aggregation.algorithm = Algorithm::FedAvg;
        let info = project
            .submit_job("digits", key, &job)
            .await
            .expect("submit");
        let done = wait_done(&planet, &info.job_id).await;
        assert_eq!(done.state, pb::JobState::JobDone as i32, "{}", done.error);
        accuracies.push(accuracy(&project, &done, &test).await);
    }
    // Ranges and file downloads of the shuffled dataset see the original
    // bytes too.
    let mut part = Vec::new();
    project
        .download_range("digits", "shuffled", 1000, Some(40_999), &mut part, None)
        .await
        .expect("range");
    assert_eq!(part, sorted[1000..41_000]);
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("digits.csv");
    let file = std::fs::File::create(&path).expect("create");
    project
        .download_to_file("digits", "shuffled", file, None)
        .await
        .expect("download");
    assert_eq!(std::fs::read(&path).expect("read"), sorted);

    let [in_order, shuffled] = accuracies[..] else {
        unreachable!()
    };
    eprintln!("sorted by label: {in_order:.4} in file order, {shuffled:.4} shuffled");
    assert!(shuffled >= 0.9, "shuffled {shuffled}");
    assert!(shuffled > in_order + 0.03, "{in_order} -> {shuffled}");
    planet.shutdown().await;
}

/// The shipped digits sorted by label (the header first).
fn sorted_digits() -> (Vec<u8>, Vec<u8>) {
    let (train, test) = digits();
    let text = String::from_utf8(train).expect("utf-8");
    let mut lines: Vec<&str> = text.lines().collect();
    let label = |l: &str| l.rsplit(',').next().unwrap_or_default().to_string();
    lines[1..].sort_by_key(|l| label(l));
    (format!("{}\n", lines.join("\n")).into_bytes(), test)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn scaffold_corrects_drift_on_skewed_pieces_and_stays_verifiable() {
    // Pieces of a label-sorted file kept in order hold a class or two
    // each. SCAFFOLD sends every task a drift correction with the weights;
    // a re-executed task gets the same one, so verification still holds.
    let planet = Planet::start(PlanetConfig::new(6)).await.expect("planet");
    let project = planet.project().expect("project");
    project.create_bucket("digits").await.expect("bucket");
    let (sorted, test) = sorted_digits();
    project
        .upload_dataset("digits", "sorted", sorted, &options(), None)
        .await
        .expect("dataset put");
    let mut accuracies = Vec::new();
    for algorithm in [Algorithm::FedAvg, Algorithm::Scaffold] {
        let mut req = job(10, 1.0);
        req.aggregation.algorithm = algorithm;
        let info = project
            .submit_job("digits", "sorted", &req)
            .await
            .expect("submit");
        let done = wait_done(&planet, &info.job_id).await;
        assert_eq!(done.state, pb::JobState::JobDone as i32, "{}", done.error);
        assert_eq!(done.verification_failures, 0, "{algorithm:?}");
        assert!(done.tasks_verified > 0);
        accuracies.push(accuracy(&project, &done, &test).await);
        if algorithm == Algorithm::Scaffold {
            // The corrections travel with the weights: more bytes out.
            let params = (64 * 64 + 64 + 64 * 10 + 10) as u64;
            assert_eq!(
                done.weight_bytes,
                (10 * 2 + 9) * 2 * u64::from(done.tasks_total) * 4 * params
            );
        }
    }
    let [fedavg, scaffold] = accuracies[..] else {
        unreachable!()
    };
    eprintln!("label-sorted pieces: fedavg {fedavg:.4}, scaffold {scaffold:.4}");
    assert!(scaffold >= 0.9, "scaffold {scaffold}");
    assert!(
        scaffold > fedavg + 0.02,
        "fedavg {fedavg}, scaffold {scaffold}"
    );
    planet.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn scaffold_is_refused_when_its_variates_would_not_fit() {
    let mut config = PlanetConfig::new(6);
    config.reconfigure_satellite = Some(Box::new(|c| c.compute.max_drift_mib = 0));
    let (planet, project, _test) = setup(config).await;
    let e = project
        .submit_job("digits", "train", &job(2, 0.0))
        .await
        .expect_err("too large for scaffold");
    assert!(e.to_string().contains("--algorithm fedavgm"), "{e}");
    // SCAFFOLD's corrections are estimated from SGD steps: with Adam the
    // satellite refuses the job whatever the uplink sent.
    let mut adam = job(2, 0.0);
    adam.params.optimizer = loam_common::compute::Optimizer::Adam;
    let e = project
        .submit_job("digits", "train", &adam)
        .await
        .expect_err("scaffold with adam");
    assert!(
        e.to_string().contains("cannot train with adam") && e.to_string().contains("fedavgm"),
        "{e}"
    );
    let mut other = job(2, 0.0);
    other.aggregation.algorithm = Algorithm::FedAvgM;
    let info = project
        .submit_job("digits", "train", &other)
        .await
        .expect("fedavgm needs no variates");
    let done = wait_done(&planet, &info.job_id).await;
    assert_eq!(done.state, pb::JobState::JobDone as i32, "{}", done.error);
    planet.shutdown().await;
}

/// An adapter as a node with a GPU advertises it.
fn gpu() -> pb::GpuAdapter {
    pb::GpuAdapter {
        name: "Test GPU".into(),
        kind: "discrete".into(),
        api: "Vulkan".into(),
        software: false,
        memory_bytes: 8 << 30,
        max_buffer_bytes: 2 << 30,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn gpu_jobs_run_only_on_nodes_that_offer_a_gpu() {
    let (mut planet, project, test) = setup(PlanetConfig::new(6)).await;
    let gpu_job = JobRequest {
        device: pb::Device::Gpu,
        ..job(3, 1.0)
    };
    // No node offers a GPU: refused at submission, with what to do.
    let e = project
        .submit_job("digits", "train", &gpu_job)
        .await
        .expect_err("no GPU online");
    assert!(e.to_string().contains("no online node offers a GPU"), "{e}");
    // Three nodes (data holders or not) offer one.
    let offering: Vec<loam_common::NodeId> = (0..3).map(|i| planet.nodes[i].id).collect();
    for i in 0..3 {
        planet
            .restart_node_lying(
                i,
                Lies {
                    adapter: Some(gpu()),
                    ..Lies::default()
                },
            )
            .await
            .expect("restart");
    }
    let info = project
        .submit_job("digits", "train", &gpu_job)
        .await
        .expect("submit");
    assert_eq!(info.device, pb::Device::Gpu as i32);
    let done = wait_done(&planet, &info.job_id).await;
    assert_eq!(done.state, pb::JobState::JobDone as i32, "{}", done.error);
    assert_eq!(done.tasks_done, 3 * u64::from(done.tasks_total));
    // Every task, and every re-execution, ran on a node offering a GPU
    // (rebuilding the piece where it does not hold it).
    assert!(done.tasks_verified > 0);
    assert_eq!(done.verification_failures, 0);
    assert!(done.dataset_bytes_fetched > 0, "pieces moved to GPU nodes");
    for n in &planet.nodes {
        let s = stats_of(&planet, &n.id);
        if offering.contains(&n.id) {
            continue;
        }
        assert_eq!(
            (s.tasks_accepted, s.tasks_failed, s.work_units),
            (0, 0, 0.0),
            "a node without a GPU got GPU tasks"
        );
    }
    let busy: u64 = offering
        .iter()
        .map(|id| stats_of(&planet, id).tasks_accepted)
        .sum();
    assert!(
        busy >= 3 * u64::from(done.tasks_total),
        "{busy} tasks credited"
    );
    // Three rounds: it learned (chance is 0.1), not the benchmark.
    let acc = accuracy(&project, &done, &test).await;
    assert!(acc >= 0.5, "accuracy {acc}");

    // A CPU job still runs everywhere it can, GPU nodes included.
    let info = project
        .submit_job("digits", "train", &job(1, 0.0))
        .await
        .expect("submit");
    let done = wait_done(&planet, &info.job_id).await;
    assert_eq!(done.state, pb::JobState::JobDone as i32, "{}", done.error);
    assert_eq!(
        done.dataset_bytes_fetched, 0,
        "CPU tasks run on the holders"
    );
    planet.shutdown().await;
}
