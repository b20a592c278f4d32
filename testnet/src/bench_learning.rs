//! `testnet bench-learning`: how close federated training comes to
//! centralized training on skewed data. In one run, for a CSV file (the
//! shipped digits by default) split into train and test rows: the test
//! accuracy of federated training over pieces dealt in file order, sorted
//! by label and with Dirichlet label skew, for every server algorithm;
//! the same model trained centrally with burn on the same rows; a
//! centralized scikit-learn MLP (in a venv the script makes); and, with a
//! quarter of the tasks Byzantine, each aggregation rule against the clean
//! run.
//!
//! Federated rounds run in process on the same training code the nodes
//! run and the same settlement core the satellite runs
//! ([`loam_common::federated::settle`]); what the network adds (placement,
//! transport, verification) does not change the numbers.

use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{Context, bail};
use loam_common::compute::{Architecture, ModelSpec, Rounds, TrainParams};
use loam_common::federated::{Algorithm, Rule, Settings};
use loam_compute::Records;
use loam_compute::dataset::{parse_records, scan};
use loam_compute::federate::{Attack, Federation, Skew, deal, subset};
use rand::SeedableRng;
use rand::seq::SliceRandom;

/// What to measure.
#[derive(Debug, Clone)]
pub struct LearningBench {
    pub data: PathBuf,
    pub label: String,
    /// Share of the rows held out for testing.
    pub test_share: f64,
    /// Data pieces (tasks per round).
    pub pieces: usize,
    pub hidden: Vec<usize>,
    pub rounds: Rounds,
    pub params: TrainParams,
    pub skews: Vec<Skew>,
    /// Skip the scikit-learn baseline (no Python venv).
    pub no_sklearn: bool,
    /// Overrides of the algorithms' server learning rate and momentum.
    pub server_lr: Option<f64>,
    pub momentum: Option<f64>,
}

/// One line of the report.
#[derive(Debug, Clone)]
pub struct Row {
    pub what: String,
    pub accuracy: f64,
}

pub fn run(b: &LearningBench) -> anyhow::Result<String> {
    let text = std::fs::read(&b.data).with_context(|| format!("reading {}", b.data.display()))?;
    let schema = scan(&text, &b.label)?;
    let all = parse_records(&text, &schema, true)?;
    if all.len() < 20 {
        bail!("{} has too few records for a benchmark", b.data.display());
    }
    // A seeded, stratified-enough split: shuffle, then cut.
    let mut idx: Vec<usize> = (0..all.len()).collect();
    idx.shuffle(&mut rand::rngs::StdRng::seed_from_u64(b.params.seed));
    let n_test = ((all.len() as f64 * b.test_share).round() as usize).clamp(1, all.len() - 1);
    let (test_idx, train_idx) = idx.split_at(n_test);
    // The train rows keep their file order, as a user's upload would.
    let mut train_idx = train_idx.to_vec();
    train_idx.sort_unstable();
    let train = subset(&all, &train_idx);
    let test = subset(&all, test_idx);
    let spec = ModelSpec::new(
        Architecture::Mlp,
        b.hidden.clone(),
        schema.features(),
        schema.classes.len(),
    )?;

    let mut out = String::new();
    let _ = writeln!(
        out,
        "bench-learning: {} ({} train / {} test records, {} features, {} classes), \
         mlp hidden {:?}, {} pieces, rounds {} × {} local epochs, {} lr {}, batch {}, \
         {}% of each task held out for validation",
        b.data.display(),
        train.len(),
        test.len(),
        schema.features(),
        schema.classes.len(),
        b.hidden,
        b.pieces,
        b.rounds,
        b.params.local_epochs,
        b.params.optimizer,
        b.params.learning_rate,
        b.params.batch,
        b.params.validation,
    );

    // Centralized baselines on the same train rows: burn as one task
    // holding every row, epoch by epoch, stopped by the same validation
    // rule (or after as many epochs as the federated tasks train).
    let (cap, patience) = b.rounds.cap_and_patience();
    let one_piece = vec![(0..train.len()).collect::<Vec<_>>()];
    let central_run = Federation {
        params: TrainParams {
            local_epochs: 1,
            ..b.params
        },
        settings: Settings::new(Algorithm::FedAvg, Rule::Mean),
        rounds: cap.saturating_mul(b.params.local_epochs as u32),
        patience,
        ..federation(&spec, b, Settings::default())
    }
    .run(&train, &one_piece, &test)?;
    let central = central_run.final_accuracy;
    let sklearn = if b.no_sklearn {
        None
    } else {
        Some(sklearn_baseline(&train, &test, &b.hidden, b.params.seed)?)
    };
    let _ = writeln!(
        out,
        "\ncentralized burn ({} epochs, best after {})  {central:.4}",
        central_run.rounds_run, central_run.final_round
    );
    if let Some(s) = sklearn {
        let _ = writeln!(out, "centralized scikit-learn MLP             {s:.4}");
    }

    // Every algorithm on every skew.
    let _ = writeln!(
        out,
        "\nfederated test accuracy, rounds run (gap to centralized burn{}):",
        if sklearn.is_some() {
            " / scikit-learn"
        } else {
            ""
        }
    );
    let _ = write!(out, "{:<16}", "skew");
    for a in Algorithm::ALL {
        let mark = if a == Algorithm::default() { "*" } else { "" };
        let _ = write!(out, "{:>30}", format!("{a}{mark}"));
    }
    let _ = writeln!(out);
    let mut worst_default_gap = f64::NEG_INFINITY;
    for &skew in &b.skews {
        let pieces = deal(&train.labels, b.pieces, skew, b.params.seed);
        let _ = write!(out, "{:<16}", skew.to_string());
        for a in Algorithm::ALL {
            let fed = federation(&spec, b, Settings::new(a, Rule::Mean));
            let run = fed.run(&train, &pieces, &test)?;
            let acc = run.final_accuracy;
            let gap_b = (central - acc) * 100.0;
            let cell = match sklearn {
                Some(s) => format!(
                    "{acc:.4} r{} ({gap_b:+.1}/{:+.1})",
                    run.rounds_run,
                    (s - acc) * 100.0
                ),
                None => format!("{acc:.4} r{} ({gap_b:+.1})", run.rounds_run),
            };
            if a == Algorithm::default() {
                worst_default_gap = worst_default_gap.max(gap_b);
                if let Some(s) = sklearn {
                    worst_default_gap = worst_default_gap.max((s - acc) * 100.0);
                }
            }
            let _ = write!(out, "{cell:>30}");
        }
        let _ = writeln!(out);
    }
    let _ = writeln!(
        out,
        "largest gap of the default ({}) to a centralized figure: {worst_default_gap:.1} points",
        Algorithm::default()
    );

    // Byzantine tasks: a quarter of the pieces, on the first skew.
    let byz_pieces = 4usize.max(b.pieces / 4 * 4);
    let skew = b.skews.first().copied().unwrap_or(Skew::FileOrder);
    let pieces = deal(&train.labels, byz_pieces, skew, b.params.seed);
    let _ = writeln!(
        out,
        "\nByzantine: {} of {byz_pieces} tasks per round corrupt their update ({skew}, default algorithm)",
        byz_pieces / 4
    );
    let _ = write!(out, "{:<14}{:>10}", "rule", "clean");
    let attacks = [
        ("sign-flip ×4", Attack::SignFlip, 4.0),
        ("scale ×4", Attack::Scale, 4.0),
        ("random", Attack::Random, 1.0),
    ];
    for (name, _, _) in attacks {
        let _ = write!(out, "{name:>16}");
    }
    let _ = writeln!(out);
    for rule in Rule::ALL {
        let mut fed = federation(&spec, b, Settings::new(Algorithm::default(), rule));
        let clean = fed.run(&train, &pieces, &test)?.final_accuracy;
        let _ = write!(out, "{:<14}{clean:>10.4}", rule.to_string());
        for (_, attack, factor) in attacks {
            fed.byzantine = byz_pieces / 4;
            fed.attack = attack;
            fed.attack_factor = factor;
            let acc = fed.run(&train, &pieces, &test)?.final_accuracy;
            let _ = write!(
                out,
                "{:>16}",
                format!("{acc:.4} ({:+.1})", (acc - clean) * 100.0)
            );
        }
        let _ = writeln!(out);
    }
    Ok(out)
}

fn federation(spec: &ModelSpec, b: &LearningBench, mut settings: Settings) -> Federation {
    if let Some(lr) = b.server_lr {
        settings.server_lr = lr;
    }
    if let Some(m) = b.momentum {
        settings.beta1 = m;
    }
    let (rounds, patience) = b.rounds.cap_and_patience();
    Federation {
        spec: spec.clone(),
        params: b.params,
        settings,
        rounds,
        patience,
        byzantine: 0,
        attack: Attack::SignFlip,
        attack_factor: 1.0,
    }
}

/// Test accuracy of scikit-learn's MLPClassifier with the same hidden
/// layers on the same (scaled) rows, in a venv under target/.
fn sklearn_baseline(
    train: &Records,
    test: &Records,
    hidden: &[usize],
    seed: u64,
) -> anyhow::Result<f64> {
    let venv = Path::new("target/bench-venv");
    let python = venv.join("bin/python");
    if !python.exists() {
        eprintln!(
            "making a Python venv with scikit-learn in {} ...",
            venv.display()
        );
        let ok = Command::new("python3")
            .args(["-m", "venv"])
            .arg(venv)
            .status()
            .context("python3 -m venv")?
            .success()
            && Command::new(&python)
                .args(["-m", "pip", "install", "--quiet", "scikit-learn"])
                .status()
                .context("pip install scikit-learn")?
                .success();
        if !ok {
            let _ = std::fs::remove_dir_all(venv);
            bail!("could not make the scikit-learn venv (use --no-sklearn to skip it)");
        }
    }
    let dir = tempfile::tempdir()?;
    let write = |name: &str, r: &Records| -> anyhow::Result<PathBuf> {
        let mut s = String::with_capacity(r.features.len() * 8);
        for i in 0..r.len() {
            for x in r.row(i) {
                let _ = write!(s, "{x},");
            }
            let _ = writeln!(s, "{}", r.labels[i]);
        }
        let p = dir.path().join(name);
        std::fs::write(&p, s)?;
        Ok(p)
    };
    let tr = write("train.csv", train)?;
    let te = write("test.csv", test)?;
    let hidden = hidden
        .iter()
        .map(|h| h.to_string())
        .collect::<Vec<_>>()
        .join(",");
    let script = format!(
        "import numpy as np\n\
         from sklearn.neural_network import MLPClassifier\n\
         tr = np.loadtxt('{}', delimiter=',', ndmin=2)\n\
         te = np.loadtxt('{}', delimiter=',', ndmin=2)\n\
         m = MLPClassifier(hidden_layer_sizes=({hidden},), max_iter=500, random_state={})\n\
         m.fit(tr[:, :-1], tr[:, -1])\n\
         print(m.score(te[:, :-1], te[:, -1]))\n",
        tr.display(),
        te.display(),
        seed % (1 << 31),
    );
    let out = Command::new(&python)
        .args(["-c", &script])
        .output()
        .context("running scikit-learn")?;
    if !out.status.success() {
        bail!(
            "scikit-learn failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    String::from_utf8_lossy(&out.stdout)
        .trim()
        .parse::<f64>()
        .context("scikit-learn printed no accuracy")
}
