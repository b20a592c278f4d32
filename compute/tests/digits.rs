//! Central (single-process) training on the shipped digits dataset: the
//! baseline the federated runs are compared with, and the determinism the
//! satellite's verification relies on.

use loam_compute::dataset::{self, Records};
use loam_compute::model::{Architecture, ModelFile, ModelHeader, ModelSpec};
use loam_compute::train::{self, TrainParams};
use loam_compute::{Backend, Schema};

/// The acceptance split: rows whose zero-based index is divisible by 5 are
/// the test set.
fn split() -> (Schema, Records, Records) {
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/../data/digits.csv");
    let text = std::fs::read(path).expect("data/digits.csv");
    let mut lines = text.split(|&b| b == b'\n').filter(|l| !l.is_empty());
    let header = lines.next().expect("header").to_vec();
    let (mut tr, mut te) = (header.clone(), header);
    tr.push(b'\n');
    te.push(b'\n');
    for (i, l) in lines.enumerate() {
        let dst = if i % 5 == 0 { &mut te } else { &mut tr };
        dst.extend_from_slice(l);
        dst.push(b'\n');
    }
    let schema = dataset::scan(&tr, "label").expect("scan");
    let train = dataset::parse_records(&tr, &schema, true).expect("train");
    let test = dataset::parse_records(&te, &schema, true).expect("test");
    (schema, train, test)
}

#[test]
fn central_mlp_learns_digits_and_is_deterministic() {
    let (schema, train_set, test_set) = split();
    assert_eq!(train_set.len() + test_set.len(), 1797);
    let spec = ModelSpec::new(Architecture::Mlp, vec![64], schema.features(), 10).expect("spec");
    let params = TrainParams {
        local_epochs: 1,
        ..TrainParams::default()
    };
    let mut w = spec.init_weights(params.seed);
    let mut first_round = None;
    for round in 0..20 {
        let out =
            train::train(&spec, &w, &train_set, &params, round, 0, Backend::Cpu).expect("train");
        if round == 0 {
            first_round = Some(out.weights.clone());
        }
        w = out.weights;
    }
    let again = train::train(
        &spec,
        &spec.init_weights(params.seed),
        &train_set,
        &params,
        0,
        0,
        Backend::Cpu,
    )
    .expect("train");
    assert_eq!(Some(again.weights), first_round, "same task, same weights");
    let eval = train::evaluate(&spec, &w, &test_set).expect("eval");
    eprintln!("central accuracy {:.4}", eval.accuracy);
    assert!(eval.accuracy >= 0.95, "accuracy {}", eval.accuracy);
    assert_eq!(
        eval.matrix.iter().flatten().sum::<u64>(),
        test_set.len() as u64
    );

    // The model file keeps weights, sizes and scaling.
    let file = ModelFile {
        header: ModelHeader {
            spec: spec.clone(),
            schema: schema.clone(),
            trained: serde_json::json!({"rounds": 20}),
        },
        weights: w.clone(),
    };
    let bytes = file.to_bytes().expect("to bytes");
    let back = ModelFile::from_bytes(&bytes).expect("from bytes");
    assert_eq!(back, file);
    assert!(ModelFile::from_bytes(&bytes[..bytes.len() / 2]).is_err());
    assert!(ModelFile::from_bytes(b"not a model").is_err());
}

/// Federated averaging over four contiguous shards (what the four data
/// pieces of the dataset's one segment hold) with the default
/// hyperparameters of `uplink train` stays close to central training.
#[test]
fn federated_average_of_four_shards_learns_digits() {
    let (schema, train_set, test_set) = split();
    let spec = ModelSpec::new(Architecture::Mlp, vec![64], schema.features(), 10).expect("spec");
    let params = TrainParams::default();
    let n = train_set.len();
    let shards: Vec<Records> = (0..4)
        .map(|s| {
            let (a, b) = (s * n / 4, (s + 1) * n / 4);
            Records {
                features: train_set.features[a * train_set.width..b * train_set.width].to_vec(),
                labels: train_set.labels[a..b].to_vec(),
                width: train_set.width,
                targets: vec![],
            }
        })
        .collect();
    let mut w = spec.init_weights(params.seed);
    for round in 0..loam_common::compute::DEFAULT_ROUNDS {
        let outs: Vec<_> = shards
            .iter()
            .enumerate()
            .map(|(i, s)| {
                train::train(&spec, &w, s, &params, round, i as u64, Backend::Cpu).expect("train")
            })
            .collect();
        w = loam_common::compute::federated_average(
            outs.iter().map(|o| (&o.weights[..], o.samples)),
        )
        .expect("average");
    }
    let eval = train::evaluate(&spec, &w, &test_set).expect("eval");
    eprintln!("federated accuracy {:.4}", eval.accuracy);
    assert!(eval.accuracy >= 0.93, "accuracy {}", eval.accuracy);
}

#[cfg(feature = "wgpu")]
/// Accuracy on the test split after `rounds` epochs of central training on
/// `backend`, and the weights after the first.
fn central_run(backend: Backend, rounds: u32) -> (f64, Vec<f32>) {
    let (schema, train_set, test_set) = split();
    let spec = ModelSpec::new(Architecture::Mlp, vec![64], schema.features(), 10).expect("spec");
    let params = TrainParams {
        local_epochs: 1,
        ..TrainParams::default()
    };
    let mut w = spec.init_weights(params.seed);
    let mut first = Vec::new();
    for round in 0..rounds {
        w = train::train(&spec, &w, &train_set, &params, round, 0, backend)
            .expect("train")
            .weights;
        if round == 0 {
            first = w.clone();
        }
    }
    let eval = train::evaluate(&spec, &w, &test_set).expect("eval");
    (eval.accuracy, first)
}

/// The wgpu path trains: on a machine without a GPU, on Mesa's software
/// Vulkan driver (lavapipe), which `scripts/install-deps --test` installs.
/// GPU kernels sum in another order than ndarray's, so the weights are
/// close rather than equal, and the accuracy within one point.
#[cfg(feature = "wgpu")]
#[test]
fn wgpu_training_matches_the_cpu() {
    let adapters = loam_compute::gpu::adapters();
    eprintln!("adapters: {adapters:?}");
    assert!(
        !adapters.is_empty(),
        "no wgpu adapter: install Mesa's Vulkan driver (scripts/install-deps --test)"
    );
    let (cpu, cpu_first) = central_run(Backend::Cpu, 10);
    let (gpu, gpu_first) = central_run(Backend::Gpu, 10);
    let drift = cpu_first
        .iter()
        .zip(&gpu_first)
        .map(|(a, b)| (a - b).abs())
        .fold(0f32, f32::max);
    eprintln!(
        "accuracy cpu {cpu:.4} gpu {gpu:.4}; largest weight difference after one epoch {drift:e}"
    );
    assert!(cpu >= 0.95, "cpu accuracy {cpu}");
    assert!((cpu - gpu).abs() <= 0.01, "cpu {cpu} gpu {gpu}");
    assert!(drift < 1e-3, "weights after one epoch differ by {drift}");
}
