//! Models leave Loam: `uplink model export --format safetensors`, loaded
//! in Python by the documented snippet (docs/examples/predict_safetensors.py)
//! with the `safetensors` and `numpy` packages in a venv this test makes,
//! reproduces `uplink model predict --probabilities` to 1e-5.

mod support;

use std::path::Path;
use std::process::Command;

use loam_compute::dataset;
use loam_compute::model::{Architecture, ModelFile, ModelHeader, ModelSpec};
use loam_compute::train::{self, TrainParams};
use loam_testnet::process::binary;
use support::{fails, ok};

fn repo(path: &str) -> std::path::PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..").join(path)
}

/// A small MLP trained on the shipped digits; or with `cnn`, a small CNN
/// on them as 8×8 images (two conv-pool blocks, so that the flattening
/// order after the blocks matters).
fn digits_model_of(cnn: bool) -> ModelFile {
    let text = std::fs::read(repo("data/digits.csv")).expect("data/digits.csv");
    let image = cnn.then(|| "8x8".parse().expect("shape"));
    let schema = dataset::scan_with(&text, "label", Default::default(), image).expect("scan");
    let records = dataset::parse_records(&text, &schema, true).expect("records");
    let spec = match image {
        Some(image) => ModelSpec::cnn(image, vec![4, 6], vec![16], 10, Default::default()),
        None => ModelSpec::new(Architecture::Mlp, vec![32, 16], schema.features(), 10),
    }
    .expect("spec");
    let params = TrainParams {
        local_epochs: 3,
        ..TrainParams::default()
    };
    let out = train::train(
        &spec,
        &spec.init_weights(params.seed),
        &records,
        &params,
        0,
        0,
        loam_compute::Backend::Cpu,
    )
    .expect("train");
    ModelFile {
        header: ModelHeader {
            spec,
            schema,
            trained: serde_json::json!({"epochs": 3}),
        },
        weights: out.weights,
    }
}

/// Rows of a predictions CSV: the predicted class and the probabilities.
fn parse_predictions(text: &str) -> (Vec<String>, Vec<(String, Vec<f64>)>) {
    let mut lines = text.lines();
    let head: Vec<String> = lines
        .next()
        .expect("header")
        .split(',')
        .map(str::to_string)
        .collect();
    let rows = lines
        .map(|l| {
            let cells: Vec<&str> = l.split(',').collect();
            let probs = cells[2..]
                .iter()
                .map(|c| c.parse().expect("probability"))
                .collect();
            (cells[1].to_string(), probs)
        })
        .collect();
    (head, rows)
}

fn digits_model() -> ModelFile {
    digits_model_of(false)
}

#[test]
fn safetensors_export_reproduces_predictions_in_python() -> anyhow::Result<()> {
    let tmp = tempfile::tempdir()?;
    let model = tmp.path().join("m.loam");
    std::fs::write(&model, digits_model().to_bytes()?)?;
    let cnn = tmp.path().join("cnn.loam");
    std::fs::write(&cnn, digits_model_of(true).to_bytes()?)?;
    let data = repo("data/digits.csv");
    let uplink = || Command::new(binary("uplink").expect("uplink binary"));

    // A venv with the two packages the snippet needs.
    let venv = tmp.path().join("venv");
    ok(Command::new("python3")
        .args(["-m", "venv"])
        .arg(&venv)
        .output()?);
    let python = venv.join("bin/python");
    ok(Command::new(&python)
        .args([
            "-m",
            "pip",
            "install",
            "--quiet",
            "--disable-pip-version-check",
            "safetensors",
            "numpy",
        ])
        .output()?);
    for (model, name) in [(&model, "MLP"), (&cnn, "CNN")] {
        let exported = model.with_extension("safetensors");
        ok(uplink()
            .args(["model", "export"])
            .arg(model)
            .args(["--format", "safetensors", "--out"])
            .arg(&exported)
            .output()?);
        let predict = |m: &Path| {
            ok(uplink()
                .args(["model", "predict"])
                .arg(m)
                .arg("--data")
                .arg(&data)
                .arg("--probabilities")
                .output()
                .expect("run uplink"))
        };
        let ours = predict(model);
        // The exported file is itself a model the uplink takes.
        assert_eq!(predict(&exported), ours);
        let (head, rows) = parse_predictions(&ours);
        assert_eq!(head[..2], ["row", "predicted_label"]);
        assert_eq!(head.len(), 2 + 10);
        assert_eq!(rows.len(), 1797);

        let theirs = ok(Command::new(&python)
            .arg(repo("docs/examples/predict_safetensors.py"))
            .arg(&exported)
            .arg(&data)
            .output()?);
        let (their_head, their_rows) = parse_predictions(&theirs);
        assert_eq!(their_head, head);
        assert_eq!(their_rows.len(), rows.len());
        let mut worst = 0f64;
        let mut disagreements = 0;
        for ((class, p), (their_class, q)) in rows.iter().zip(&their_rows) {
            assert_eq!(p.len(), q.len());
            for (a, b) in p.iter().zip(q) {
                worst = worst.max((a - b).abs());
            }
            disagreements += usize::from(class != their_class);
        }
        eprintln!(
            "{name}: largest probability difference {worst:e}, {disagreements} differing classes"
        );
        assert!(worst <= 1e-5, "probabilities differ by {worst}");
        // Classes differ only where two probabilities tie within rounding.
        assert!(
            disagreements <= 1,
            "{disagreements} rows predicted differently"
        );
    }
    // A regression model: the snippet un-scales the one output.
    let reg_model = tmp.path().join("r.loam");
    std::fs::write(&reg_model, diabetes_model().to_bytes()?)?;
    let reg_exported = tmp.path().join("r.safetensors");
    ok(uplink()
        .args(["model", "export"])
        .arg(&reg_model)
        .args(["--format", "safetensors", "--out"])
        .arg(&reg_exported)
        .output()?);
    let diabetes = repo("data/diabetes.csv");
    let values = |text: &str| -> Vec<f64> {
        text.lines()
            .skip(1)
            .map(|l| l.split(',').nth(1).expect("value").parse().expect("number"))
            .collect()
    };
    let ours = ok(uplink()
        .args(["model", "predict"])
        .arg(&reg_model)
        .arg("--data")
        .arg(&diabetes)
        .output()?);
    assert!(ours.starts_with("row,predicted_progression\n"), "{ours}");
    let theirs = ok(Command::new(&python)
        .arg(repo("docs/examples/predict_safetensors.py"))
        .arg(&reg_exported)
        .arg(&diabetes)
        .output()?);
    let (ours, theirs) = (values(&ours), values(&theirs));
    assert_eq!((ours.len(), theirs.len()), (442, 442));
    let worst = ours
        .iter()
        .zip(&theirs)
        .map(|(a, b)| (a - b).abs() / a.abs().max(1.0))
        .fold(0f64, f64::max);
    eprintln!("largest relative regression difference {worst:e}");
    assert!(worst <= 1e-5, "predictions differ by {worst}");
    Ok(())
}

/// A small regression MLP trained on the shipped diabetes data.
fn diabetes_model() -> ModelFile {
    use loam_common::compute::Task;
    let text = std::fs::read(repo("data/diabetes.csv")).expect("data/diabetes.csv");
    let schema = dataset::scan_for(&text, "progression", Task::Regression).expect("scan");
    let records = dataset::parse_records(&text, &schema, true).expect("records");
    let spec =
        ModelSpec::for_task(Architecture::Mlp, vec![16], 10, 1, Task::Regression).expect("spec");
    let params = TrainParams {
        learning_rate: 0.01,
        local_epochs: 5,
        ..TrainParams::default()
    };
    let out = train::train(
        &spec,
        &spec.init_weights(params.seed),
        &records,
        &params,
        0,
        0,
        loam_compute::Backend::Cpu,
    )
    .expect("train");
    ModelFile {
        header: ModelHeader {
            spec,
            schema,
            trained: serde_json::json!({"epochs": 5}),
        },
        weights: out.weights,
    }
}

#[test]
fn export_errors_are_one_line() -> anyhow::Result<()> {
    let tmp = tempfile::tempdir()?;
    let junk = tmp.path().join("junk.bin");
    std::fs::write(&junk, b"not a model at all")?;
    let out = tmp.path().join("out.safetensors");
    let e = fails(
        Command::new(binary("uplink")?)
            .args(["model", "export"])
            .arg(&junk)
            .arg("--out")
            .arg(&out)
            .output()?,
    );
    assert!(
        e.contains("neither a Loam model nor an exported one"),
        "{e}"
    );
    assert!(!out.exists(), "nothing written for a bad model");
    let bad_format = Command::new(binary("uplink")?)
        .args(["model", "export", "missing.loam", "--format", "onnx"])
        .arg("--out")
        .arg(&out)
        .output()?;
    assert!(!bad_format.status.success());
    let e = String::from_utf8_lossy(&bad_format.stderr);
    assert!(e.contains("possible values: safetensors"), "{e}");
    Ok(())
}
