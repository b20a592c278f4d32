//! `testnet`: run a whole Loam network on this machine.

use std::path::PathBuf;
use std::time::Instant;

use anyhow::Context;
use clap::{Parser, Subcommand};
use loam_common::erasure::RedundancyScheme;
use loam_testnet::process::{NetworkOptions, ProcessNetwork};
use loam_uplink::Project;

#[derive(Parser)]
#[command(
    name = "testnet",
    version,
    about = "A whole Loam network on this machine"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Start a satellite and N storage nodes; print `ready`; stop on Ctrl-C/SIGTERM.
    Run {
        /// Directory of the network (created; kept after it stops).
        #[arg(long)]
        dir: PathBuf,
        /// Storage nodes to start.
        #[arg(long, default_value_t = 10)]
        nodes: usize,
        /// Redundancy k/repair/success/total.
        #[arg(long, default_value = "4/6/8/10")]
        redundancy: RedundancyScheme,
        /// Seconds between node check-ins.
        #[arg(long, default_value_t = 2.0)]
        checkin_interval: f64,
        /// Make nodes fsync every piece before acknowledging it, as
        /// production nodes do (off by default: all testnet nodes share
        /// one disk).
        #[arg(long)]
        sync_writes: bool,
        /// The satellite's database: `postgres` starts a throwaway
        /// PostgreSQL server (Debian's postgresql package) for this
        /// network, a postgres://user@host:port/db address uses that one;
        /// default RocksDB in the satellite's directory.
        #[arg(long, env = "LOAM_TESTNET_DATABASE")]
        database: Option<String>,
        /// Satellite processes, sharing the database (needs --database)
        /// and the satellite's identity; clients get every address.
        #[arg(long, default_value_t = 1, env = "LOAM_TESTNET_SATELLITES")]
        satellites: usize,
    },
    /// Start a fresh network, store and fetch a file, show what happened, stop.
    Demo {
        /// Where the network lives (default: a temporary directory).
        #[arg(long)]
        dir: Option<PathBuf>,
        /// Storage nodes to start.
        #[arg(long, default_value_t = 10)]
        nodes: usize,
        /// Size of the generated object, in MiB.
        #[arg(long, default_value_t = 64)]
        size_mib: usize,
    },
    /// Measure training on the network against single-process training.
    BenchCompute {
        /// Training rows generated.
        #[arg(long, default_value_t = 200_000)]
        rows: usize,
        /// Features per record.
        #[arg(long, default_value_t = 32)]
        features: usize,
        /// Label classes.
        #[arg(long, default_value_t = 10)]
        classes: usize,
        /// Width of the hidden layer.
        #[arg(long, default_value_t = 64)]
        hidden: usize,
        /// Federated averaging rounds.
        #[arg(long, default_value_t = 4)]
        rounds: u32,
        /// Epochs each task trains locally per round.
        #[arg(long, default_value_t = 4)]
        local_epochs: usize,
        /// Storage nodes to start.
        #[arg(long, default_value_t = 10)]
        nodes: usize,
        /// Segment size of the dataset (each data row is one task).
        #[arg(long, default_value_t = 8 << 20)]
        segment_size: u64,
    },
    /// Federated against centralized training on skewed splits of a CSV
    /// file, every server algorithm, and aggregation rules against
    /// Byzantine tasks.
    BenchLearning {
        /// The CSV file (with a header line).
        #[arg(long, default_value = "data/digits.csv")]
        data: std::path::PathBuf,
        /// The label column.
        #[arg(long, default_value = "label")]
        label: String,
        /// Share of the records held out for testing.
        #[arg(long, default_value_t = 0.2)]
        test_share: f64,
        /// Data pieces (tasks per round).
        #[arg(long, default_value_t = 8)]
        pieces: usize,
        /// Widths of the hidden layers.
        #[arg(long, value_delimiter = ',', default_value = "64")]
        hidden: Vec<usize>,
        /// Federated rounds: "auto" (stop when validation stops improving,
        /// as jobs do by default) or a count.
        #[arg(long, default_value_t = loam_common::compute::Rounds::Auto)]
        rounds: loam_common::compute::Rounds,
        /// Epochs each task trains locally per round.
        #[arg(long, default_value_t = loam_common::compute::TrainParams::default().local_epochs)]
        local_epochs: usize,
        /// Local optimizer: sgd or adam.
        #[arg(long, default_value_t = loam_common::compute::Optimizer::default())]
        optimizer: loam_common::compute::Optimizer,
        /// Local learning rate (default: the optimizer's).
        #[arg(long)]
        lr: Option<f64>,
        /// Local batch size.
        #[arg(long, default_value_t = loam_common::compute::TrainParams::default().batch)]
        batch: usize,
        /// Skews to measure: file-order, sorted, one-class, dirichlet:ALPHA.
        #[arg(
            long,
            value_delimiter = ',',
            default_value = "file-order,sorted,dirichlet:0.1"
        )]
        skews: Vec<loam_compute::federate::Skew>,
        /// Leave out the scikit-learn baseline (it needs a Python venv).
        #[arg(long)]
        no_sklearn: bool,
        /// Server learning rate for every algorithm (default: each one's own).
        #[arg(long)]
        server_lr: Option<f64>,
        /// Server momentum (FedAvgM) or first-moment decay (FedAdam).
        #[arg(long)]
        momentum: Option<f64>,
    },
    /// Measure the client pipeline, bare QUIC, upload and download.
    Bench {
        /// Object size in MiB.
        #[arg(long, default_value_t = 256)]
        size_mib: usize,
        /// Storage nodes to start.
        #[arg(long, default_value_t = 10)]
        nodes: usize,
        /// Make nodes fsync every piece before acknowledging it, as
        /// production nodes do (shows what that costs on a shared disk).
        #[arg(long)]
        sync_writes: bool,
        /// Rounds of each measurement; medians are reported.
        #[arg(long, default_value_t = 3)]
        rounds: usize,
    },
    /// Run a command and print its peak resident memory (`peak_rss_kib N`)
    /// when it ends; `testnet bench` measures `uplink cp` with it.
    #[command(hide = true)]
    PeakRss {
        /// The command and its arguments.
        #[arg(trailing_var_arg = true, allow_hyphen_values = true, required = true)]
        command: Vec<std::ffi::OsString>,
    },
    /// What checking a caveated API key costs: verifications per second
    /// with 10 caveats, with and without 10 000 revoked keys, against one
    /// request measured in the same run.
    BenchKeys {
        /// Key verifications to time.
        #[arg(long, default_value_t = 200_000)]
        verifications: usize,
        /// Object lookups to time.
        #[arg(long, default_value_t = 2_000)]
        requests: usize,
    },
    /// Settle a million orders through the satellite's verification path
    /// and compare with the single-core Ed25519 floor.
    BenchSettle {
        /// Orders to sign and settle.
        #[arg(long, default_value_t = 1_000_000)]
        orders: usize,
        /// Orders per settlement window (one node's window per call).
        #[arg(long, default_value_t = 10_000)]
        per_window: usize,
    },
    /// The satellite's metadata under load: commits/s, ls of 1 000-key
    /// prefixes, one checker pass, satellite memory as objects grow; on
    /// RocksDB and on PostgreSQL with one and two satellite processes.
    BenchMetadata {
        /// Objects committed per configuration (and segments the checker
        /// passes over).
        #[arg(long, default_value_t = 1_000_000)]
        objects: usize,
        /// Commits in flight at once.
        #[arg(long, default_value_t = 64)]
        concurrency: usize,
        /// Prefix listings timed.
        #[arg(long, default_value_t = 200)]
        ls_samples: usize,
        /// Configurations: rocksdb, postgres (one process), postgres-2 (two
        /// processes on one database).
        #[arg(
            long,
            value_delimiter = ',',
            default_value = "rocksdb,postgres,postgres-2"
        )]
        configs: Vec<String>,
    },
    /// One object up and down through the S3 gateway with the AWS CLI and
    /// boto3, against `uplink cp` of it in the same run, with the gateway's
    /// peak memory (needs the clients scripts/install-deps --test installs).
    BenchGateway {
        /// Object size in MiB.
        #[arg(long, default_value_t = 256)]
        size_mib: u64,
        /// Storage nodes to start.
        #[arg(long, default_value_t = 10)]
        nodes: usize,
        /// Rounds of each transfer; medians are reported.
        #[arg(long, default_value_t = 3)]
        rounds: usize,
        /// Clients to measure (uplink is the baseline the ratios need).
        #[arg(
            long,
            value_enum,
            value_delimiter = ',',
            default_value = "uplink,aws,boto3"
        )]
        clients: Vec<loam_testnet::bench_gateway::Client>,
        /// The satellite's largest segment in MiB (64 when not given).
        #[arg(long)]
        segment_mib: Option<u64>,
        /// Where the source file, downloads and network go (a temporary
        /// directory when not given; a 5 GiB run needs about 4x the size).
        #[arg(long)]
        dir: Option<PathBuf>,
    },
    /// Kill nodes, measure repair (time per segment, bytes moved), kill
    /// more, check every object.
    BenchRepair {
        /// Storage nodes to start.
        #[arg(long, default_value_t = 10)]
        nodes: usize,
        /// Object sizes in MiB (64 MiB segments).
        #[arg(long, value_delimiter = ',', default_value = "40,40,40,150")]
        sizes_mib: Vec<usize>,
        /// Nodes killed before the repair.
        #[arg(long, default_value_t = 3)]
        kill: usize,
        /// Original nodes killed after the repair.
        #[arg(long, default_value_t = 3)]
        kill_after: usize,
    },
    /// Fuzz every decoder that reads network or disk bytes: prints each
    /// target's executions, panics and over-allocations; exits non-zero on
    /// any finding (saved under --findings).
    Fuzz {
        /// Seconds per target.
        #[arg(long, default_value_t = 60)]
        seconds: u64,
        /// Only this target (default: all; see --list).
        #[arg(long)]
        target: Option<String>,
        /// List the targets and stop.
        #[arg(long)]
        list: bool,
        /// RNG seed of the mutations (default: from the clock).
        #[arg(long)]
        seed: Option<u64>,
        /// Where inputs that found something are written.
        #[arg(long, default_value = "fuzz-findings")]
        findings: PathBuf,
        /// Write the built-in seeds as corpus files into this folder.
        #[arg(long)]
        write_corpus: Option<PathBuf>,
    },
}

/// Sees the largest allocation of each fuzzing input.
#[global_allocator]
static ALLOC: loam_testnet::fuzz::CountingAlloc = loam_testnet::fuzz::CountingAlloc;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    loam_common::telemetry::init_logging_with_default("warn");
    match Cli::parse().command {
        Command::Fuzz {
            seconds,
            target,
            list,
            seed,
            findings,
            write_corpus,
        } => {
            use loam_testnet::fuzz;
            if let Some(dir) = write_corpus {
                let n = fuzz::write_corpus(&dir)?;
                println!("{n} seed files written under {}", dir.display());
                return Ok(());
            }
            let targets = fuzz::targets();
            if list {
                for t in &targets {
                    println!("{}", t.name);
                }
                return Ok(());
            }
            if let Some(name) = &target
                && !targets.iter().any(|t| t.name == name)
            {
                anyhow::bail!("no fuzz target {name:?}; `testnet fuzz --list` names them");
            }
            let seed = seed.unwrap_or_else(|| loam_common::orders::now_ms() as u64);
            let keys = fuzz::Keys::new();
            let corpus = fuzz::corpus_dir();
            println!("seed {seed}, {seconds} s per target");
            println!(
                "{:<20} {:>12} {:>10} {:>8} {:>18}",
                "TARGET", "EXECUTIONS", "EXEC/S", "PANICS", "OVER-ALLOCATIONS"
            );
            let mut found = 0u64;
            for t in targets
                .iter()
                .filter(|t| target.as_deref().is_none_or(|n| n == t.name))
            {
                let started = std::time::Instant::now();
                let r = tokio::task::block_in_place(|| {
                    fuzz::run(
                        t,
                        &keys,
                        Some(&corpus),
                        fuzz::Budget::Time(std::time::Duration::from_secs(seconds)),
                        seed,
                    )
                });
                let rate = r.executions as f64 / started.elapsed().as_secs_f64().max(1e-9);
                println!(
                    "{:<20} {:>12} {:>10.0} {:>8} {:>18}",
                    r.target, r.executions, rate, r.panics, r.over_allocations
                );
                if let Some(input) = &r.first_finding {
                    std::fs::create_dir_all(&findings)?;
                    let path = findings.join(format!("{}-{seed}", r.target));
                    std::fs::write(&path, input)?;
                    println!("  finding saved to {}", path.display());
                }
                found += r.panics + r.over_allocations;
            }
            if found > 0 {
                anyhow::bail!("{found} findings");
            }
        }
        Command::Run {
            dir,
            nodes,
            redundancy,
            checkin_interval,
            sync_writes,
            database,
            satellites,
        } => {
            let opts = NetworkOptions {
                nodes,
                redundancy,
                sync_writes,
                checkin_interval_secs: checkin_interval,
                online_window_secs: (checkin_interval * 5.0).max(5.0),
                database,
                satellites,
                gateway: true,
                ..Default::default()
            };
            let net = ProcessNetwork::start(&dir, &opts).await?;
            let db = match net.satellite_config.database.as_str() {
                "" => "RocksDB".to_string(),
                url => format!("PostgreSQL at {url}"),
            };
            println!(
                "ready: satellite {} ({satellites} process{}, {db}) and {nodes} storage nodes",
                net.access.satellite,
                if satellites == 1 { "" } else { "es" }
            );
            println!("access grant in {}", net.dir.join("access").display());
            println!("processes in {}", net.dir.join("network.json").display());
            if let Some(s3) = &net.s3 {
                println!(
                    "S3 gateway at {} (credentials in {})",
                    s3.endpoint,
                    net.dir.join("s3.json").display()
                );
            }
            println!(
                "try: uplink --access-file {} mb loam://demo",
                net.dir.join("access").display()
            );
            loam_common::telemetry::shutdown_signal().await;
            net.stop().await;
            println!("stopped");
        }
        Command::Demo {
            dir,
            nodes,
            size_mib,
        } => demo(dir, nodes, size_mib).await?,
        Command::BenchKeys {
            verifications,
            requests,
        } => {
            loam_testnet::bench_keys::run(verifications.max(1), requests.max(1))
                .await?
                .print();
        }
        Command::BenchSettle { orders, per_window } => {
            let dir = tempfile::tempdir()?;
            let report = tokio::task::spawn_blocking(move || {
                loam_testnet::bench_settle::run(orders, per_window.max(1), dir.path())
            })
            .await??;
            report.print();
        }
        Command::BenchMetadata {
            objects,
            concurrency,
            ls_samples,
            configs,
        } => {
            let dir = tempfile::tempdir()?;
            let mut all = Vec::new();
            for c in &configs {
                let (database, satellites) = match c.as_str() {
                    "rocksdb" => (None, 1),
                    "postgres" => (Some("postgres".to_string()), 1),
                    "postgres-2" => (Some("postgres".to_string()), 2),
                    other => anyhow::bail!(
                        "unknown configuration {other:?}: rocksdb, postgres or postgres-2"
                    ),
                };
                all.push(
                    loam_testnet::bench_metadata::run_one(
                        dir.path(),
                        c,
                        database,
                        satellites,
                        objects,
                        concurrency,
                        ls_samples,
                    )
                    .await?,
                );
            }
            print!("{}", loam_testnet::bench_metadata::report(&all));
        }
        Command::BenchGateway {
            size_mib,
            nodes,
            rounds,
            clients,
            segment_mib,
            dir,
        } => {
            let tmp = tempfile::tempdir_in(dir.as_deref().unwrap_or(&std::env::temp_dir()))?;
            let report = loam_testnet::bench_gateway::run(
                &loam_testnet::bench_gateway::GatewayBench {
                    size: size_mib
                        .checked_mul(1 << 20)
                        .context("--size-mib is too large")?,
                    nodes,
                    rounds,
                    clients,
                    max_segment_size: segment_mib
                        .map(|m| m.checked_mul(1 << 20).context("--segment-mib is too large"))
                        .transpose()?,
                },
                tmp.path(),
            )
            .await?;
            report.print();
        }
        Command::BenchRepair {
            nodes,
            sizes_mib,
            kill,
            kill_after,
        } => {
            let dir = tempfile::tempdir()?;
            let report =
                loam_testnet::bench_repair::run(dir.path(), nodes, &sizes_mib, kill, kill_after)
                    .await?;
            report.print();
        }
        Command::BenchLearning {
            data,
            label,
            test_share,
            pieces,
            hidden,
            rounds,
            local_epochs,
            optimizer,
            lr,
            batch,
            skews,
            no_sklearn,
            server_lr,
            momentum,
        } => {
            let report =
                loam_testnet::bench_learning::run(&loam_testnet::bench_learning::LearningBench {
                    data,
                    label,
                    test_share,
                    pieces,
                    hidden,
                    rounds,
                    params: loam_common::compute::TrainParams {
                        learning_rate: lr.unwrap_or(optimizer.default_learning_rate()),
                        batch,
                        local_epochs,
                        optimizer,
                        ..Default::default()
                    },
                    skews,
                    no_sklearn,
                    server_lr,
                    momentum,
                })?;
            print!("{report}");
        }
        Command::BenchCompute {
            rows,
            features,
            classes,
            hidden,
            rounds,
            local_epochs,
            nodes,
            segment_size,
        } => {
            let dir = tempfile::tempdir()?;
            let report = loam_testnet::bench_compute::run(
                &loam_testnet::bench_compute::ComputeBench {
                    rows,
                    features,
                    classes,
                    hidden,
                    rounds,
                    local_epochs,
                    nodes,
                    segment_size,
                },
                dir.path(),
            )
            .await?;
            report.print();
        }
        Command::PeakRss { command } => {
            println!(
                "peak_rss_kib {}",
                loam_testnet::bench::peak_rss_kib(&command)?
            );
        }
        Command::Bench {
            size_mib,
            nodes,
            sync_writes,
            rounds,
        } => {
            let dir = tempfile::tempdir()?;
            let report =
                loam_testnet::bench::run(size_mib << 20, nodes, sync_writes, rounds, dir.path())
                    .await?;
            report.print();
        }
    }
    Ok(())
}

use loam_testnet::DIGITS;

async fn demo(dir: Option<PathBuf>, nodes: usize, size_mib: usize) -> anyhow::Result<()> {
    let tmp = tempfile::tempdir()?;
    let dir = dir.unwrap_or_else(|| tmp.path().join("net"));
    println!(
        "starting a satellite and {nodes} storage nodes in {} ...",
        dir.display()
    );
    let started = Instant::now();
    let net = ProcessNetwork::start(
        &dir,
        &NetworkOptions {
            nodes,
            ..Default::default()
        },
    )
    .await?;
    println!(
        "network ready in {:.1} s (redundancy 4/6/8/10: any 4 of 10 pieces rebuild a segment)",
        started.elapsed().as_secs_f64()
    );
    let result = run_demo(&net, size_mib).await;
    net.stop().await;
    result?;
    println!("network stopped");
    Ok(())
}

async fn run_demo(net: &ProcessNetwork, size_mib: usize) -> anyhow::Result<()> {
    let project = Project::open(net.access.clone())?;
    project.create_bucket("demo").await?;

    let before = node_bytes(net).await;
    let t = Instant::now();
    project
        .upload(
            "demo",
            "datasets/digits.csv",
            std::io::Cursor::new(DIGITS.to_vec()),
            None,
        )
        .await?;
    println!(
        "uploaded datasets/digits.csv ({} bytes, shipped in data/) in {:.0} ms",
        DIGITS.len(),
        t.elapsed().as_secs_f64() * 1e3
    );
    let size = size_mib << 20;
    let blob: Vec<u8> = {
        use rand::{RngCore, SeedableRng};
        let mut v = vec![0u8; size];
        rand::rngs::StdRng::seed_from_u64(1).fill_bytes(&mut v);
        v
    };
    let t = Instant::now();
    project
        .upload(
            "demo",
            "random.bin",
            std::io::Cursor::new(blob.clone()),
            None,
        )
        .await?;
    let up = t.elapsed();
    let t = Instant::now();
    let mut out = Vec::with_capacity(size);
    project
        .download("demo", "random.bin", &mut out, None)
        .await?;
    let down = t.elapsed();
    anyhow::ensure!(
        out == blob,
        "downloaded random.bin differs from what was uploaded"
    );
    let mut csv = Vec::new();
    project
        .download("demo", "datasets/digits.csv", &mut csv, None)
        .await?;
    anyhow::ensure!(csv == DIGITS, "downloaded digits.csv differs");
    println!(
        "random.bin: {size_mib} MiB up in {:.2} s ({:.0} MB/s), down in {:.2} s ({:.0} MB/s), byte-identical",
        up.as_secs_f64(),
        size as f64 / 1e6 / up.as_secs_f64(),
        down.as_secs_f64(),
        size as f64 / 1e6 / down.as_secs_f64()
    );
    let after = node_bytes(net).await;
    println!("pieces received per storage node (encrypted, erasure-coded):");
    for (p, (b, a)) in net.storage_nodes().zip(before.iter().zip(&after)) {
        println!("  {}  {:>10} bytes", p.node_id.short(), a - b);
    }
    let stored: f64 = after.iter().sum::<f64>() - before.iter().sum::<f64>();
    println!(
        "stored {:.0} bytes for {} bytes of data (expansion {:.2}x)",
        stored,
        size + DIGITS.len(),
        stored / (size + DIGITS.len()) as f64
    );
    for item in project.list("demo", "", true).await? {
        println!("  loam://demo/{}  {} bytes", item.key, item.size);
    }
    train_digits(&project).await?;
    let killed: Vec<String> = (0..4)
        .map(|i| net.kill_storage_node(i).map(|id| id.short()))
        .collect::<anyhow::Result<_>>()?;
    println!("kill -9 of 4 storage nodes ({}) ...", killed.join(", "));
    let t = Instant::now();
    out.clear();
    project
        .download("demo", "random.bin", &mut out, None)
        .await?;
    anyhow::ensure!(out == blob, "download after the kills differs");
    println!(
        "random.bin still downloads byte-identical from the 6 left, in {:.2} s",
        t.elapsed().as_secs_f64()
    );
    project.delete("demo", "random.bin").await?;
    project.delete("demo", "datasets/digits.csv").await?;
    project.delete_bucket("demo").await?;
    project.close().await;
    Ok(())
}

/// Trains an MLP on the digits dataset where its pieces are stored and
/// evaluates it on the held-out rows (every fifth row).
async fn train_digits(project: &Project) -> anyhow::Result<()> {
    use loam_common::pb::JobState;
    use loam_uplink::dataset::{DatasetOptions, JobRequest};

    let (train, test) = loam_testnet::digits_split();
    let train_text = train.clone();
    let info = project
        .upload_dataset(
            "demo",
            "datasets/digits-train",
            train.into_bytes(),
            &DatasetOptions {
                image: None,
                label: "label".into(),
                task: Default::default(),
                segment_size: None,
                compute: true,
                shuffle: Some(0x6c6f_616d),
            },
            None,
        )
        .await?;
    println!(
        "dataset loam://demo/datasets/digits-train: {} records, {} features, {} classes, {} training tasks (one per data piece)",
        info.records,
        info.features,
        info.classes.len(),
        info.tasks
    );
    let t = Instant::now();
    let job = project
        .submit_job(
            "demo",
            "datasets/digits-train",
            &JobRequest {
                image: None,
                conv: Vec::new(),
                architecture: "mlp".into(),
                hidden: vec![64],
                rounds: loam_common::compute::DEFAULT_ROUNDS,
                patience: 0,
                params: Default::default(),
                verify_fraction: None,
                out: ("demo".into(), "models/digits-mlp".into()),
                label: None,
                aggregation: Default::default(),
                device: Default::default(),
            },
        )
        .await?;
    let done = loop {
        let j = project.job(&job.job_id).await?;
        if j.state != JobState::JobRunning as i32 {
            break j;
        }
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    };
    anyhow::ensure!(
        done.state == JobState::JobDone as i32,
        "training failed: {}",
        done.error
    );
    for r in &done.history {
        println!(
            "  round {:>2}/{}: loss {:.4}, training accuracy {:.4}, {} tasks",
            r.round, done.rounds, r.loss, r.accuracy, r.tasks_accepted
        );
    }
    project
        .save_model(&done, "demo", "models/digits-mlp")
        .await?;
    let model =
        loam_compute::ModelFile::from_bytes(&project.read_all("demo", "models/digits-mlp").await?)?;
    let records =
        loam_compute::dataset::parse_records(test.as_bytes(), &model.header.schema, true)?;
    let eval = loam_compute::train::evaluate(&model.header.spec, &model.weights, &records)?;
    println!(
        "trained on the network in {:.1} s: test accuracy {:.4} on {} held-out rows (model at loam://demo/models/digits-mlp)",
        t.elapsed().as_secs_f64(),
        eval.accuracy,
        eval.records
    );
    // The same model and epochs trained centrally, in this process.
    let train_records =
        loam_compute::dataset::parse_records(train_text.as_bytes(), &model.header.schema, true)?;
    let params = loam_common::compute::TrainParams::default();
    let mut w = model.header.spec.init_weights(params.seed);
    for round in 0..done.round {
        w = loam_compute::train::train(
            &model.header.spec,
            &w,
            &train_records,
            &params,
            round,
            0,
            loam_compute::Backend::Cpu,
        )?
        .weights;
    }
    let central = loam_compute::train::evaluate(&model.header.spec, &w, &records)?.accuracy;
    println!(
        "  the same model trained centrally with burn on the same split: {central:.4} (gap {:+.4})",
        eval.accuracy - central
    );
    println!(
        "  dataset bytes moved for training: {}; weights moved: {} bytes per round; {} tasks re-executed to verify, {} failed; {:.3} work units credited",
        done.dataset_bytes_fetched,
        done.weight_bytes / u64::from(done.round.max(1)),
        done.tasks_verified,
        done.verification_failures,
        done.work_units
    );
    project.delete("demo", "models/digits-mlp").await?;
    project.delete("demo", "datasets/digits-train").await?;
    Ok(())
}

async fn node_bytes(net: &ProcessNetwork) -> Vec<f64> {
    let mut out = Vec::new();
    for p in net.storage_nodes() {
        let text = loam_testnet::http_get(&p.metrics_url)
            .await
            .unwrap_or_default();
        out.push(loam_testnet::metric_value(
            &text,
            "loam_storagenode_piece_bytes_received_total",
        ));
    }
    out
}

#[cfg(test)]
mod help_tests {
    use super::*;

    /// Every argument of every command, described in `--help`.
    #[test]
    fn every_argument_is_described() {
        use clap::CommandFactory;
        let missing = loam_common::cli::undescribed_args(&Cli::command());
        assert!(missing.is_empty(), "arguments without help: {missing:?}");
    }
}
