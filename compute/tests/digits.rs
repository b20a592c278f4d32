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

/// `rounds` epochs of central training on the CPU, checking that the first
/// gives the same weights when run again; the weights and the evaluation
/// on `test_set`.
fn deterministic_central_run(
    spec: &ModelSpec,
    train_set: &Records,
    test_set: &Records,
    rounds: u32,
) -> (Vec<f32>, train::Evaluation) {
    let params = TrainParams {
        local_epochs: 1,
        ..TrainParams::default()
    };
    let initial = spec.init_weights(params.seed);
    let once = |w: &[f32], round| {
        train::train(spec, w, train_set, &params, round, 0, Backend::Cpu)
            .expect("train")
            .weights
    };
    let first = once(&initial, 0);
    assert_eq!(once(&initial, 0), first, "same task, same weights");
    let mut w = first;
    for round in 1..rounds {
        w = once(&w, round);
    }
    let eval = train::evaluate(spec, &w, test_set).expect("eval");
    (w, eval)
}

#[test]
fn central_mlp_learns_digits_and_is_deterministic() {
    let (schema, train_set, test_set) = split();
    assert_eq!(train_set.len() + test_set.len(), 1797);
    let spec = ModelSpec::new(Architecture::Mlp, vec![64], schema.features(), 10).expect("spec");
    let (w, eval) = deterministic_central_run(&spec, &train_set, &test_set, 20);
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

/// The digits as 8×8 one-channel images: a small CNN (one conv-pool
/// block) learns them centrally, deterministically, and its model file and
/// safetensors export keep it whole.
#[test]
fn central_cnn_learns_digits_as_images() {
    use loam_compute::model::ImageShape;
    let (schema, train_set, test_set) = split();
    let image: ImageShape = "8x8".parse().expect("shape");
    let spec = ModelSpec::cnn(image, vec![8], vec![32], 10, Default::default()).expect("spec");
    // 8 kernels of 3×3 and their biases, then 8·4·4 → 32 → 10.
    assert_eq!(spec.params(), 8 * 9 + 8 + 128 * 32 + 32 + 32 * 10 + 10);
    assert_eq!(
        spec.work_per_record(),
        (8 * 9 + 8) * 64 + 128 * 32 + 32 + 32 * 10 + 10
    );
    let (w, eval) = deterministic_central_run(&spec, &train_set, &test_set, 15);
    eprintln!("central CNN accuracy {:.4}", eval.accuracy);
    assert!(eval.accuracy >= 0.95, "accuracy {}", eval.accuracy);

    let file = ModelFile {
        header: ModelHeader {
            spec: spec.clone(),
            schema: schema.clone(),
            trained: serde_json::Value::Null,
        },
        weights: w.clone(),
    };
    let back = ModelFile::from_bytes(&file.to_bytes().expect("bytes")).expect("model file");
    assert_eq!(back, file);
    let exported = loam_compute::export::to_safetensors(&file).expect("export");
    assert_eq!(
        loam_compute::export::from_safetensors(&exported).expect("import"),
        file
    );
    // A model whose image does not match its inputs is refused.
    let mut bad = file.clone();
    bad.header.spec.image = Some("4x4".parse().expect("shape"));
    assert!(ModelFile::from_bytes(&bad.to_bytes().unwrap_or_default()).is_err());
    assert!(
        loam_compute::export::to_safetensors(&bad)
            .and_then(|b| loam_compute::export::from_safetensors(&b))
            .is_err()
    );
}
