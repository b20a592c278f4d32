//! `testnet bench-compute`: in one run, single-process burn training of a
//! model on a generated dataset, and the same training as a job on a
//! process network whose nodes hold the dataset's pieces; samples per
//! second of both, their ratio, and the per-round coordination overhead.

use std::fmt::Write as _;
use std::time::{Duration, Instant};

use loam_common::compute::{Architecture, ModelSpec, TrainParams, federated_average};
use loam_common::pb;
use loam_compute::Backend;
use loam_uplink::Project;
use loam_uplink::dataset::{DatasetOptions, JobRequest};
use rand::{Rng, SeedableRng};

use crate::process::{NetworkOptions, ProcessNetwork};

/// What to measure.
#[derive(Debug, Clone)]
pub struct ComputeBench {
    pub rows: usize,
    pub features: usize,
    pub classes: usize,
    pub hidden: usize,
    pub rounds: u32,
    pub local_epochs: usize,
    pub nodes: usize,
    pub segment_size: u64,
}

/// A classification problem with some structure: each class is a Gaussian
/// blob around its own centre, with noise, so the model has something to
/// learn. Deterministic.
pub fn generate(rows: usize, features: usize, classes: usize) -> Vec<u8> {
    let mut rng = rand::rngs::StdRng::seed_from_u64(42);
    let centres: Vec<Vec<f32>> = (0..classes)
        .map(|_| (0..features).map(|_| rng.gen_range(-2.0..2.0)).collect())
        .collect();
    let mut out = String::with_capacity(rows * features * 7);
    for f in 0..features {
        let _ = write!(out, "x{f},");
    }
    out.push_str("label\n");
    for _ in 0..rows {
        let c = rng.gen_range(0..classes);
        for x in &centres[c] {
            let noise: f32 = rng.gen_range(-1.5..1.5) + rng.gen_range(-1.5..1.5);
            let _ = write!(out, "{:.3},", x + noise);
        }
        let _ = writeln!(out, "c{c}");
    }
    out.into_bytes()
}

/// CPU seconds this process has used.
fn cpu_seconds() -> f64 {
    process_cpu_seconds("self")
}

/// CPU seconds process `pid` has used (utime + stime from /proc/PID/stat,
/// in clock ticks of 1/100 s).
fn process_cpu_seconds(pid: &str) -> f64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    let after = stat.rsplit_once(')').map_or("", |(_, r)| r);
    let f: Vec<&str> = after.split_whitespace().collect();
    let ticks = |i: usize| f.get(i).and_then(|v| v.parse::<f64>().ok()).unwrap_or(0.0);
    (ticks(11) + ticks(12)) / 100.0
}

pub struct ComputeReport {
    pub rows: usize,
    pub tasks: u32,
    pub local_samples_per_sec: f64,
    pub local_cpu_per_wall: f64,
    pub net_samples_per_sec: f64,
    pub net_steady_samples_per_sec: f64,
    /// Samples per CPU-second: single process, and every network process.
    pub local_samples_per_cpu: f64,
    pub net_samples_per_cpu: f64,
    pub rounds: Vec<pb::RoundInfo>,
    pub weight_bytes_per_round: u64,
    pub dataset_bytes_fetched: u64,
    pub local_accuracy: f64,
    pub net_accuracy: f64,
}

impl ComputeReport {
    pub fn print(&self) {
        println!(
            "compute benchmark: {} rows, {} tasks per round",
            self.rows, self.tasks
        );
        println!(
            "  single process (burn ndarray): {:>10.0} samples/s  (cpu/wall {:.2})",
            self.local_samples_per_sec, self.local_cpu_per_wall
        );
        println!(
            "  testnet job, all rounds:       {:>10.0} samples/s  ratio {:.2}",
            self.net_samples_per_sec,
            self.net_samples_per_sec / self.local_samples_per_sec.max(1e-9)
        );
        println!(
            "  testnet job, rounds 2..:       {:>10.0} samples/s  ratio {:.2}  (round 1 also decrypts and parses the pieces)",
            self.net_steady_samples_per_sec,
            self.net_steady_samples_per_sec / self.local_samples_per_sec.max(1e-9)
        );
        println!(
            "  samples per CPU-second:        single process {:.0}, network (all node and satellite processes) {:.0}, ratio {:.2}",
            self.local_samples_per_cpu,
            self.net_samples_per_cpu,
            self.net_samples_per_cpu / self.local_samples_per_cpu.max(1e-9)
        );
        for r in &self.rounds {
            println!(
                "  round {:>2}: {:>6.2} s, coordination {:>5.3} s ({:>4.1} % of the round beyond the busiest node's training), train time summed over tasks {:>6.2} s, loss {:.4}",
                r.round,
                r.duration_ms as f64 / 1e3,
                r.coordination_ms as f64 / 1e3,
                100.0 * r.coordination_ms as f64 / r.duration_ms.max(1) as f64,
                r.train_ms as f64 / 1e3,
                r.loss
            );
        }
        println!(
            "  weights moved per round: {} bytes; dataset bytes moved for training: {}",
            self.weight_bytes_per_round, self.dataset_bytes_fetched
        );
        println!(
            "  held-out accuracy: single process {:.4}, testnet {:.4}",
            self.local_accuracy, self.net_accuracy
        );
    }
}

pub async fn run(b: &ComputeBench, dir: &std::path::Path) -> anyhow::Result<ComputeReport> {
    println!("generating {} rows ...", b.rows);
    let text = generate(b.rows + b.rows / 10, b.features, b.classes);
    // The last tenth is held out for accuracy.
    let cut = text
        .split_inclusive(|&c| c == b'\n')
        .take(b.rows + 1)
        .map(<[u8]>::len)
        .sum::<usize>();
    let (train, held) = text.split_at(cut);
    let train = train.to_vec();
    let header_len = train.iter().position(|&c| c == b'\n').map_or(0, |p| p + 1);
    let mut test = train[..header_len].to_vec();
    test.extend_from_slice(held);

    let params = TrainParams {
        local_epochs: b.local_epochs,
        ..TrainParams::default()
    };
    let schema = loam_compute::dataset::scan(&train, "label")?;
    let spec = ModelSpec::new(
        Architecture::Mlp,
        vec![b.hidden],
        schema.features(),
        b.classes,
    )?;
    let records = loam_compute::dataset::parse_records(&train, &schema, true)?;
    let test_records = loam_compute::dataset::parse_records(&test, &schema, true)?;

    // Single process: the same epochs over the same rows, round after
    // round (what the job does, without the network).
    println!("single-process training ...");
    let mut w = spec.init_weights(params.seed);
    let (cpu0, t0) = (cpu_seconds(), Instant::now());
    let mut samples = 0u64;
    for round in 0..b.rounds {
        let out = tokio::task::block_in_place(|| {
            loam_compute::train::train(&spec, &w, &records, &params, round, 0, Backend::Cpu)
        })?;
        samples += out.samples;
        w = federated_average([(&out.weights[..], out.samples)]).unwrap_or(out.weights);
    }
    let local_wall = t0.elapsed();
    let local_cpu = cpu_seconds() - cpu0;
    let local_accuracy = loam_compute::train::evaluate(&spec, &w, &test_records)?.accuracy;
    let local_rate = samples as f64 / local_wall.as_secs_f64();

    println!("starting a {}-node network ...", b.nodes);
    let net = ProcessNetwork::start(
        dir,
        &NetworkOptions {
            nodes: b.nodes,
            ..Default::default()
        },
    )
    .await?;
    let result = async {
        let project = Project::open(net.access.clone())?;
        project.create_bucket("bench").await?;
        println!("uploading the dataset ...");
        project
            .upload_dataset(
                "bench",
                "data.csv",
                train.clone(),
                &DatasetOptions {
                    image: None,
                    label: "label".into(),
                    task: Default::default(),
                    segment_size: Some(b.segment_size),
                    compute: true,
                    shuffle: None,
                },
                None,
            )
            .await?;
        println!("training on the network ...");
        let pids: Vec<String> = net.processes.iter().map(|p| p.pid.to_string()).collect();
        let cpu_before: f64 = pids.iter().map(|p| process_cpu_seconds(p)).sum();
        let info = project
            .submit_job(
                "bench",
                "data.csv",
                &JobRequest {
                    image: None,
                    conv: Vec::new(),
                    architecture: "mlp".into(),
                    hidden: vec![b.hidden],
                    rounds: b.rounds,
                    patience: 0,
                    params,
                    verify_fraction: Some(0.0),
                    out: ("bench".into(), "model".into()),
                    label: None,
                    aggregation: Default::default(),
                    device: Default::default(),
                },
            )
            .await?;
        let done = loop {
            let j = project.job(&info.job_id).await?;
            if j.state != pb::JobState::JobRunning as i32 {
                break j;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        };
        anyhow::ensure!(
            done.state == pb::JobState::JobDone as i32,
            "job ended: {}",
            done.error
        );
        let net_cpu = pids.iter().map(|p| process_cpu_seconds(p)).sum::<f64>() - cpu_before;
        let model = project.job_model(&done).await?;
        let net_accuracy =
            loam_compute::train::evaluate(&model.header.spec, &model.weights, &test_records)?
                .accuracy;
        project.close().await;
        anyhow::Ok((done, net_accuracy, net_cpu))
    }
    .await;
    net.stop().await;
    let (done, net_accuracy, net_cpu) = result?;
    let total_ms: i64 = done.history.iter().map(|r| r.duration_ms).sum();
    let steady: Vec<&pb::RoundInfo> = done.history.iter().skip(1).collect();
    let steady_ms: i64 = steady.iter().map(|r| r.duration_ms).sum();
    let steady_samples: u64 = steady.iter().map(|r| r.samples).sum();
    Ok(ComputeReport {
        rows: b.rows,
        tasks: done.tasks_total,
        local_samples_per_sec: local_rate,
        local_cpu_per_wall: local_cpu / local_wall.as_secs_f64(),
        local_samples_per_cpu: samples as f64 / local_cpu.max(1e-9),
        net_samples_per_cpu: done.samples as f64 / net_cpu.max(1e-9),
        net_samples_per_sec: done.samples as f64 / (total_ms as f64 / 1e3).max(1e-9),
        net_steady_samples_per_sec: steady_samples as f64 / (steady_ms as f64 / 1e3).max(1e-9),
        weight_bytes_per_round: done.weight_bytes / u64::from(done.round.max(1)),
        dataset_bytes_fetched: done.dataset_bytes_fetched,
        rounds: done.history,
        local_accuracy,
        net_accuracy,
    })
}
