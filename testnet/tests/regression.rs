//! Regression as a user runs it: the shipped diabetes data (data/README.md)
//! uploaded with `uplink dataset put --task regression`, trained on the
//! network with default flags, and scored by `uplink model eval`: its R²
//! on the fixed test split is within 0.02 of centralized least squares
//! (what scikit-learn's `LinearRegression` fits; data/README.md has its
//! figure).
//!
//! Needs the binaries built (`cargo build --release --workspace --bins`,
//! which `scripts/test` does first).

mod support;

use loam_testnet::split_every_fifth;

use loam_testnet::process::{NetworkOptions, ProcessNetwork};
use support::{fails, ok, uplink};

const DIABETES: &str = include_str!("../../data/diabetes.csv");

/// Features (with a leading 1 for the intercept) and labels of a CSV whose
/// last column is the label.
fn rows(text: &str) -> (Vec<Vec<f64>>, Vec<f64>) {
    let (mut x, mut y) = (Vec::new(), Vec::new());
    for l in text.lines().skip(1) {
        let v: Vec<f64> = l.split(',').map(|c| c.parse().expect("number")).collect();
        let (label, features) = v.split_last().expect("cells");
        x.push(
            std::iter::once(1.0)
                .chain(features.iter().copied())
                .collect(),
        );
        y.push(*label);
    }
    (x, y)
}

/// Ordinary least squares by the normal equations (Gauss–Jordan with
/// partial pivoting, in f64): the fit of scikit-learn's LinearRegression.
fn least_squares(x: &[Vec<f64>], y: &[f64]) -> Vec<f64> {
    let d = x[0].len();
    let mut a = vec![vec![0f64; d + 1]; d];
    for (r, &t) in x.iter().zip(y) {
        for i in 0..d {
            for j in 0..d {
                a[i][j] += r[i] * r[j];
            }
            a[i][d] += r[i] * t;
        }
    }
    for c in 0..d {
        let p = (c..d)
            .max_by(|&i, &j| a[i][c].abs().total_cmp(&a[j][c].abs()))
            .expect("rows");
        a.swap(c, p);
        let pivot = a[c][c];
        for v in &mut a[c] {
            *v /= pivot;
        }
        for i in 0..d {
            if i != c {
                let f = a[i][c];
                let row = a[c].clone();
                for (v, r) in a[i].iter_mut().zip(row) {
                    *v -= f * r;
                }
            }
        }
    }
    a.iter().map(|r| r[d]).collect()
}

fn r2(predicted: &[f64], truth: &[f64]) -> f64 {
    let mean = truth.iter().sum::<f64>() / truth.len() as f64;
    let res: f64 = predicted
        .iter()
        .zip(truth)
        .map(|(p, t)| (p - t) * (p - t))
        .sum();
    let tot: f64 = truth.iter().map(|t| (t - mean) * (t - mean)).sum();
    1.0 - res / tot
}

#[test]
fn least_squares_matches_scikit_learn() {
    let (train, test) = split_every_fifth(DIABETES);
    let (x, y) = rows(&train);
    let (tx, ty) = rows(&test);
    assert_eq!((x.len(), tx.len()), (353, 89));
    let w = least_squares(&x, &y);
    let pred: Vec<f64> = tx
        .iter()
        .map(|r| r.iter().zip(&w).map(|(a, b)| a * b).sum())
        .collect();
    // scikit-learn 1.9.1's LinearRegression on the same split: 0.5190.
    let r = r2(&pred, &ty);
    assert!((r - 0.5190).abs() < 5e-4, "{r}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn federated_regression_is_within_two_points_of_least_squares() -> anyhow::Result<()> {
    let tmp = tempfile::tempdir()?;
    let (train, test) = split_every_fifth(DIABETES);
    let (train_path, test_path) = (tmp.path().join("train.csv"), tmp.path().join("test.csv"));
    std::fs::write(&train_path, &train)?;
    std::fs::write(&test_path, &test)?;
    let path = |p: &std::path::Path| p.to_str().expect("path").to_string();

    let net = ProcessNetwork::start(&tmp.path().join("net"), &NetworkOptions::default()).await?;
    let access = net.dir.join("access");
    ok(uplink(&access, &["mb", "loam://reg"]));
    // A regression label must be a number in every record.
    let bad = tmp.path().join("bad.csv");
    std::fs::write(&bad, "a,b,y\n1,2,3.5\n3,4,high\n")?;
    let e = fails(uplink(
        &access,
        &[
            "dataset",
            "put",
            &path(&bad),
            "loam://reg/bad",
            "--label",
            "y",
            "--task",
            "regression",
        ],
    ));
    assert!(
        e.contains("line 3") && e.contains("\"high\" is not a number"),
        "{e}"
    );

    let put = ok(uplink(
        &access,
        &[
            "dataset",
            "put",
            &path(&train_path),
            "loam://reg/diabetes",
            "--label",
            "progression",
            "--task",
            "regression",
            // A fixed storage order makes the run deterministic (training
            // is bit-identical on the CPU); docs/compute.md gives the
            // spread over random orders.
            "--shuffle-seed",
            "1",
        ],
    ));
    assert!(
        put.contains("353 records") && put.contains("regression"),
        "{put}"
    );
    let info: serde_json::Value = serde_json::from_str(&ok(uplink(
        &access,
        &["dataset", "info", "loam://reg/diabetes", "-o", "json"],
    )))?;
    assert_eq!(info["task"], "regression");
    let (_, labels) = rows(&train);
    let mean = labels.iter().sum::<f64>() / labels.len() as f64;
    let label_mean = info["label_mean"].as_f64().expect("label mean");
    assert!((label_mean - mean).abs() < 1e-3, "{label_mean} vs {mean}");

    // Default flags: the MLP, rounds until the validation loss stops
    // improving, the default optimizer and aggregation.
    let out = ok(uplink(
        &access,
        &[
            "train",
            "loam://reg/diabetes",
            "--out",
            "loam://reg/models/m",
            "--wait",
        ],
    ));
    println!("{out}");
    assert!(out.contains("R² ≈"), "{out}");
    assert!(!out.contains("accuracy"), "{out}");
    let eval: serde_json::Value = serde_json::from_str(&ok(uplink(
        &access,
        &[
            "model",
            "eval",
            "loam://reg/models/m",
            "--data",
            &path(&test_path),
            "-o",
            "json",
        ],
    )))?;
    let ours = eval["r2"].as_f64().expect("r2");
    let (x, y) = rows(&train);
    let (tx, ty) = rows(&test);
    let w = least_squares(&x, &y);
    let pred: Vec<f64> = tx
        .iter()
        .map(|r| r.iter().zip(&w).map(|(a, b)| a * b).sum())
        .collect();
    let central = r2(&pred, &ty);
    println!(
        "federated R² {ours:.4}, MAE {:.2}, RMSE {:.2}; least squares R² {central:.4}",
        eval["mae"], eval["rmse"]
    );
    assert_eq!(eval["records"], 89);
    assert!((ours - central).abs() <= 0.02, "{ours} vs {central}");
    // MAE and RMSE agree with the predictions `model predict` writes.
    let predicted = ok(uplink(
        &access,
        &[
            "model",
            "predict",
            "loam://reg/models/m",
            "--data",
            &path(&test_path),
        ],
    ));
    let values: Vec<f64> = predicted
        .lines()
        .skip(1)
        .map(|l| l.split(',').nth(1).expect("value").parse().expect("number"))
        .collect();
    assert_eq!(values.len(), 89);
    let mae = values
        .iter()
        .zip(&ty)
        .map(|(p, t)| (p - t).abs())
        .sum::<f64>()
        / 89.0;
    let eval_mae = eval["mae"].as_f64().expect("mae");
    assert!(
        (mae - eval_mae).abs() < 1e-3 * eval_mae,
        "{mae} vs {eval_mae}"
    );
    assert!((r2(&values, &ty) - ours).abs() < 1e-6);
    // A regression model has no class probabilities.
    let e = fails(uplink(
        &access,
        &[
            "model",
            "predict",
            "loam://reg/models/m",
            "--data",
            &path(&test_path),
            "--probabilities",
        ],
    ));
    assert!(e.contains("--probabilities is for classifiers"), "{e}");
    net.stop().await;
    Ok(())
}
