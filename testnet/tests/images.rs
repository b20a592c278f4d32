//! Image datasets as a user runs them: the shipped digits (data/README.md)
//! rendered to 28×28 PNG files in class folders, uploaded with `uplink
//! dataset put DIR --images`, trained on the network as a CNN (the default
//! model of an image dataset) and as an MLP with the same flags, and
//! scored by `uplink model eval` on the held-out folder (docs/compute.md
//! has the figures). Also CSV rows of pixels trained as images with
//! `--image-shape`.
//!
//! Needs the binaries built (`cargo build --release --workspace --bins`,
//! which `scripts/test` does first).

mod support;

use std::path::Path;

use image::imageops::FilterType;
use image::{GrayImage, Luma};
use loam_testnet::process::{NetworkOptions, ProcessNetwork};
use loam_testnet::split_every_fifth;
use support::{fails, ok, uplink};

const DIGITS: &str = include_str!("../../data/digits.csv");

/// Writes each record of `csv` (64 pixels of 0..16, then the label) as a
/// 28×28 PNG under `dir/LABEL/`: scaled to 0..255, enlarged to 20×20
/// (bilinear) and placed anywhere within 4 pixels of the centre (by a hash
/// of its index), as digits written in a box rather than cut out and
/// centred. What a digit looks like then depends on where it is, which a
/// CNN's shared kernels and pooling cope with and an MLP must learn for
/// every position.
fn render(csv: &str, dir: &Path, first: usize) -> usize {
    let mut n = 0;
    for (i, line) in csv.lines().skip(1).enumerate() {
        let cells: Vec<&str> = line.split(',').collect();
        let (label, pixels) = cells.split_last().expect("cells");
        let small = GrayImage::from_fn(8, 8, |x, y| {
            let v: u32 = pixels[(y * 8 + x) as usize].parse().expect("pixel");
            Luma([(v * 255 / 16) as u8])
        });
        let big = image::imageops::resize(&small, 20, 20, FilterType::Triangle);
        let h = loam_common::compute::mix64((first + i) as u64);
        let (x, y) = (h % 9, (h >> 8) % 9);
        let mut canvas = GrayImage::new(28, 28);
        image::imageops::overlay(&mut canvas, &big, x as i64, y as i64);
        let class = dir.join(label);
        std::fs::create_dir_all(&class).expect("class folder");
        canvas
            .save(class.join(format!("{i:04}.png")))
            .expect("save png");
        n += 1;
    }
    n
}

fn path(p: &Path) -> String {
    p.to_str().expect("path").to_string()
}

/// `model eval -o json` of `model` on `data`: the accuracy.
fn accuracy(access: &Path, model: &str, data: &Path) -> f64 {
    let eval: serde_json::Value = serde_json::from_str(&ok(uplink(
        access,
        &["model", "eval", model, "--data", &path(data), "-o", "json"],
    )))
    .expect("json");
    assert_eq!(eval["records"], 360, "{eval}");
    eval["accuracy"].as_f64().expect("accuracy")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cnn_and_mlp_train_on_an_image_folder() -> anyhow::Result<()> {
    let tmp = tempfile::tempdir()?;
    let (train, test) = split_every_fifth(DIGITS);
    let (train_dir, test_dir) = (tmp.path().join("train"), tmp.path().join("test"));
    assert_eq!(render(&train, &train_dir, 0), 1437);
    assert_eq!(render(&test, &test_dir, 1437), 360);

    let net = ProcessNetwork::start(&tmp.path().join("net"), &NetworkOptions::default()).await?;
    let access = net.dir.join("access");
    ok(uplink(&access, &["mb", "loam://img"]));
    let put = ok(uplink(
        &access,
        &[
            "dataset",
            "put",
            &path(&train_dir),
            "loam://img/digits",
            "--images",
            // A fixed storage order makes the runs deterministic.
            "--shuffle-seed",
            "1",
        ],
    ));
    assert!(
        put.contains("1437 records") && put.contains("28x28 images") && put.contains("10 classes"),
        "{put}"
    );
    let info: serde_json::Value = serde_json::from_str(&ok(uplink(
        &access,
        &["dataset", "info", "loam://img/digits", "-o", "json"],
    )))?;
    assert_eq!(info["image_shape"], "28x28");
    assert_eq!(info["features"], 784);
    assert_eq!(info["label"], "label");
    // One channel: every pixel shares the channel's mean and std.
    let mean = info["feature_mean"].as_array().expect("means");
    assert!(mean.iter().all(|m| m == &mean[0]), "per-channel scaling");

    let common = ["--rounds", "ROUNDS", "--seed", "3"];
    let train_model = |extra: &[&str], out: &str| {
        let mut args = vec!["train", "loam://img/digits", "--out", out, "--wait"];
        args.extend(
            common
                .iter()
                .map(|a| if *a == "ROUNDS" { CNN_ROUNDS } else { a }),
        );
        args.extend(extra);
        ok(uplink(&access, &args))
    };
    // The image dataset's default model is the CNN.
    let cnn = train_model(&[], "loam://img/models/cnn");
    println!("{cnn}");
    let status: serde_json::Value =
        serde_json::from_str(&ok(uplink(&access, &["job", "ls", "-o", "json"])))?;
    assert_eq!(status["model"], "cnn", "{status}");
    assert_eq!(status["optimizer"], "adam", "{status}");
    assert_eq!(status["learning_rate"], 0.003, "{status}");
    assert_eq!(status["algorithm"], "fedavgm", "{status}");
    // SCAFFOLD's corrections assume SGD steps.
    let e = fails(uplink(
        &access,
        &[
            "train",
            "loam://img/digits",
            "--out",
            "loam://img/models/x",
            "--optimizer",
            "adam",
            "--algorithm",
            "scaffold",
        ],
    ));
    assert!(e.contains("--algorithm fedavgm"), "{e}");
    let mlp = train_model(&["--model", "mlp"], "loam://img/models/mlp");
    println!("{mlp}");
    let cnn_acc = accuracy(&access, "loam://img/models/cnn", &test_dir);
    let mlp_acc = accuracy(&access, "loam://img/models/mlp", &test_dir);
    println!("test accuracy on 360 held-out images: CNN {cnn_acc:.4}, MLP {mlp_acc:.4}");
    // Each with its own defaults (the CNN's Adam and FedAvgM, the MLP's
    // SGD and SCAFFOLD) and the same rounds, the CNN beats the MLP by more
    // than a few images (docs/compute.md has the figures).
    assert!(cnn_acc >= 0.85, "CNN {cnn_acc}");
    assert!(mlp_acc >= 0.75, "MLP {mlp_acc}");
    assert!(
        cnn_acc >= mlp_acc + 0.02,
        "CNN {cnn_acc} against MLP {mlp_acc}"
    );

    // Predictions on a folder come in class, then file name order.
    let predicted = ok(uplink(
        &access,
        &[
            "model",
            "predict",
            "loam://img/models/cnn",
            "--data",
            &path(&test_dir),
        ],
    ));
    assert_eq!(
        predicted.lines().count(),
        361,
        "header and one row per image"
    );
    // The CNN exported to safetensors evaluates the same.
    let exported = tmp.path().join("cnn.safetensors");
    ok(uplink(
        &access,
        &[
            "model",
            "export",
            "loam://img/models/cnn",
            "--format",
            "safetensors",
            "--out",
            &path(&exported),
        ],
    ));
    assert_eq!(
        accuracy(&access, &path(&exported), &test_dir),
        cnn_acc,
        "the export is the same model"
    );

    // A CSV of pixel rows is trained as images with --image-shape.
    let csv = tmp.path().join("digits.csv");
    std::fs::write(&csv, &train)?;
    let e = fails(uplink(
        &access,
        &[
            "dataset",
            "put",
            &path(&csv),
            "loam://img/wrong",
            "--label",
            "label",
            "--image-shape",
            "28x28",
        ],
    ));
    assert!(e.contains("784 pixels") && e.contains("64 features"), "{e}");
    ok(uplink(
        &access,
        &[
            "dataset",
            "put",
            &path(&csv),
            "loam://img/flat",
            "--label",
            "label",
        ],
    ));
    let e = fails(uplink(
        &access,
        &[
            "train",
            "loam://img/flat",
            "--model",
            "cnn",
            "--out",
            "loam://img/models/x",
        ],
    ));
    assert!(e.contains("--image-shape"), "{e}");
    let out = ok(uplink(
        &access,
        &[
            "train",
            "loam://img/flat",
            "--model",
            "cnn",
            "--image-shape",
            "8x8",
            "--conv",
            "8",
            "--rounds",
            "3",
            "--out",
            "loam://img/models/small",
            "--wait",
        ],
    ));
    assert!(
        out.contains("Model stored at loam://img/models/small"),
        "{out}"
    );
    // A folder is no data for a model of CSV rows without an image shape.
    ok(uplink(
        &access,
        &[
            "train",
            "loam://img/flat",
            "--model",
            "mlp",
            "--rounds",
            "1",
            "--out",
            "loam://img/models/flat",
            "--wait",
        ],
    ));
    let e = fails(uplink(
        &access,
        &[
            "model",
            "eval",
            "loam://img/models/flat",
            "--data",
            &path(&test_dir),
        ],
    ));
    assert!(e.contains("does not take images"), "{e}");
    net.stop().await;
    Ok(())
}

/// Rounds of both runs of the comparison.
const CNN_ROUNDS: &str = "16";
