//! Local training on one piece's records, and evaluation.
//!
//! Training is deterministic for given weights, records, hyperparameters
//! and task stream on the CPU backend: batches are shuffled by a seeded
//! generator, nothing else is random, and burn runs single-threaded
//! kernels on ndarray. That is what lets the satellite have a task re-run
//! elsewhere and compare the weights.

use burn::nn::loss::CrossEntropyLossConfig;
use burn::optim::{AdamConfig, GradientsParams, SgdConfig};
use burn::tensor::{Device, Int, Tensor, TensorData};
use rand::SeedableRng;
use rand::seq::SliceRandom;

use crate::ComputeError;
use crate::dataset::Records;
use crate::model::{ModelSpec, build};
pub use loam_common::compute::TrainParams;
use loam_common::compute::{Optimizer, mix64, validation_rows};

/// What one local training run returns.
#[derive(Debug, Clone, PartialEq)]
pub struct TrainOutput {
    pub weights: Vec<f32>,
    /// Records processed (records × epochs).
    pub samples: u64,
    /// Mean cross-entropy and accuracy over the last epoch.
    pub loss: f32,
    pub accuracy: f32,
    /// The weights the task started from on its held-out records.
    pub validation: Validation,
}

/// How given weights do on a task's held-out records.
#[derive(Debug, Clone, Copy, PartialEq, Default)]
pub struct Validation {
    /// Mean cross-entropy (0 when nothing is held out).
    pub loss: f32,
    /// Records predicted right.
    pub correct: u64,
    /// Records held out.
    pub records: u64,
}

/// Mixes the job seed with the round and the task's identity into the seed
/// of its batch order.
pub fn stream_seed(seed: u64, round: u32, stream: u64) -> u64 {
    let mut h = mix64(seed);
    h = mix64(h ^ u64::from(round).rotate_left(32));
    mix64(h ^ stream)
}

/// What a batch's outputs are compared with.
enum Target {
    /// Class indices `[batch]` (cross-entropy).
    Classes(Tensor<1, Int>),
    /// Standardized label values `[batch, 1]` (squared error).
    Values(Tensor<2>),
}

fn batch_tensors(records: &Records, idx: &[usize], device: &Device) -> (Tensor<2>, Target) {
    let d = records.width;
    let mut xs = Vec::with_capacity(idx.len() * d);
    for &i in idx {
        xs.extend_from_slice(records.row(i));
    }
    let x = Tensor::<2>::from_data(TensorData::new(xs, [idx.len(), d]), device);
    let y = if records.targets.is_empty() {
        let ys: Vec<i64> = idx.iter().map(|&i| i64::from(records.labels[i])).collect();
        Target::Classes(Tensor::from_data(TensorData::new(ys, [idx.len()]), device))
    } else {
        let ys: Vec<f32> = idx.iter().map(|&i| records.targets[i]).collect();
        Target::Values(Tensor::from_data(
            TensorData::new(ys, [idx.len(), 1]),
            device,
        ))
    };
    (x, y)
}

/// The loss of `out` against `y` (mean over the batch) and, for classes,
/// the records predicted right.
fn loss_of(
    out: Tensor<2>,
    y: Target,
    rows: usize,
    count_hits: bool,
    device: &Device,
) -> (Tensor<1>, u64) {
    match y {
        Target::Classes(y) => {
            let hit = if count_hits {
                hits(out.clone().detach(), &y, rows)
            } else {
                0
            };
            let loss = CrossEntropyLossConfig::new().init(device).forward(out, y);
            (loss, hit)
        }
        Target::Values(y) => ((out - y).square().mean(), 0),
    }
}

/// Trains `spec` from `weights` on `records` for `params.local_epochs`
/// epochs of the chosen optimizer, after measuring `weights` on the
/// records held out for validation ([`validation_rows`]), which it does
/// not train on. `round` and `stream` (the task's identity) seed the batch
/// order; `stream` also chooses the held-out records.
pub fn train(
    spec: &ModelSpec,
    weights: &[f32],
    records: &Records,
    params: &TrainParams,
    round: u32,
    stream: u64,
    backend: crate::Backend,
) -> Result<TrainOutput, ComputeError> {
    train_corrected(spec, weights, records, params, round, stream, backend, None)
}

/// [`train`], with `correction` added to every gradient (SCAFFOLD).
#[allow(clippy::too_many_arguments)]
pub fn train_corrected(
    spec: &ModelSpec,
    weights: &[f32],
    records: &Records,
    params: &TrainParams,
    round: u32,
    stream: u64,
    backend: crate::Backend,
    correction: Option<&[f32]>,
) -> Result<TrainOutput, ComputeError> {
    params.validate()?;
    if records.width != spec.inputs {
        return Err(ComputeError::BadModel(format!(
            "records have {} features, the model {}",
            records.width, spec.inputs
        )));
    }
    check_records(spec, records)?;
    let device = backend.device().autodiff();
    let mut net = build(spec, weights, &device)?;
    let held = validation_rows(records.len(), params.validation, params.seed, stream);
    let pick =
        |want: bool| -> Vec<usize> { (0..records.len()).filter(|&i| held[i] == want).collect() };
    let (train_idx, val_idx) = (pick(false), pick(true));
    let validation = validate(&net, records, &val_idx, &device);
    if train_idx.is_empty() {
        return Ok(TrainOutput {
            weights: weights.to_vec(),
            samples: 0,
            loss: 0.0,
            accuracy: 0.0,
            validation,
        });
    }
    let mut optim = match params.optimizer {
        Optimizer::Adam => AdamConfig::new().init(),
        Optimizer::Sgd => SgdConfig::new().init(),
    };
    let mu = params.proximal as f32;
    let anchor = (mu > 0.0)
        .then(|| build(spec, weights, &device))
        .transpose()?;
    let correction = correction.map(|c| build(spec, c, &device)).transpose()?;
    let mut rng = rand::rngs::StdRng::seed_from_u64(stream_seed(params.seed, round, stream));
    let mut order = train_idx;
    let (mut loss_sum, mut correct) = (0f64, 0u64);
    for epoch in 0..params.local_epochs {
        order.shuffle(&mut rng);
        let last = epoch + 1 == params.local_epochs;
        for idx in order.chunks(params.batch) {
            let (x, y) = batch_tensors(records, idx, &device);
            let (mut loss, hit) = loss_of(net.forward(x), y, idx.len(), last, &device);
            correct += hit;
            if last {
                loss_sum +=
                    f64::from(loss.clone().detach().into_scalar::<f32>()) * idx.len() as f64;
            }
            if let Some(a) = &anchor {
                loss = loss + net.half_distance(a) * mu;
            }
            if let Some(c) = &correction {
                loss = loss + net.dot(c);
            }
            let grads = GradientsParams::from_grads(loss.backward(), &net);
            net = optim.step(params.learning_rate, net, grads);
        }
    }
    let n = order.len() as f64;
    Ok(TrainOutput {
        weights: net.flatten(),
        samples: (order.len() * params.local_epochs) as u64,
        loss: (loss_sum / n) as f32,
        accuracy: (correct as f64 / n) as f32,
        validation,
    })
}

/// Refuses records that do not fit `spec`: the other task, or a class
/// beyond its outputs.
fn check_records(spec: &ModelSpec, records: &Records) -> Result<(), ComputeError> {
    let regression = !records.targets.is_empty();
    if regression != spec.task.is_regression() && !records.is_empty() {
        return Err(ComputeError::BadModel(format!(
            "a {} model cannot learn records of the other task",
            spec.task
        )));
    }
    if let Some(&bad) = records.labels.iter().find(|&&l| l as usize >= spec.classes) {
        return Err(ComputeError::BadModel(format!(
            "class {bad} is beyond the model's {} classes",
            spec.classes
        )));
    }
    Ok(())
}

/// Rows of `logits` whose largest entry is at the label in `y`.
fn hits(logits: Tensor<2>, y: &Tensor<1, Int>, rows: usize) -> u64 {
    let n = logits
        .argmax(1)
        .reshape([rows])
        .equal(y.clone())
        .int()
        .sum()
        .into_scalar::<i64>();
    n.max(0) as u64
}

/// Mean loss (cross-entropy, or squared error of the standardized label)
/// and hits (classification) of `net` on the records at `idx`.
fn validate(
    net: &crate::model::Net,
    records: &Records,
    idx: &[usize],
    device: &Device,
) -> Validation {
    let (mut loss_sum, mut correct) = (0f64, 0u64);
    for chunk in idx.chunks(1024) {
        let (x, y) = batch_tensors(records, chunk, device);
        let (loss, hit) = loss_of(net.forward(x).detach(), y, chunk.len(), true, device);
        correct += hit;
        loss_sum += f64::from(loss.into_scalar::<f32>()) * chunk.len() as f64;
    }
    Validation {
        loss: if idx.is_empty() {
            0.0
        } else {
            (loss_sum / idx.len() as f64) as f32
        },
        correct,
        records: idx.len() as u64,
    }
}

/// The class probabilities (softmax of the logits) of every record,
/// row-major: `classes` values per record.
pub fn probabilities(
    spec: &ModelSpec,
    weights: &[f32],
    records: &Records,
) -> Result<Vec<f32>, ComputeError> {
    if spec.task.is_regression() {
        return Err(ComputeError::BadModel(
            "a regression model predicts values, not class probabilities".into(),
        ));
    }
    outputs(spec, weights, records, true)
}

/// The model's outputs for every record, row-major, through softmax when
/// `softmax`.
fn outputs(
    spec: &ModelSpec,
    weights: &[f32],
    records: &Records,
    softmax: bool,
) -> Result<Vec<f32>, ComputeError> {
    if records.width != spec.inputs {
        return Err(ComputeError::BadModel(format!(
            "records have {} features, the model {}",
            records.width, spec.inputs
        )));
    }
    let device = crate::Backend::Cpu.device();
    let net = build(spec, weights, &device)?;
    let mut out = Vec::with_capacity(records.len() * spec.classes);
    for first in (0..records.len()).step_by(4096) {
        let rows = 4096.min(records.len() - first);
        let mut xs = Vec::with_capacity(rows * records.width);
        for i in first..first + rows {
            xs.extend_from_slice(records.row(i));
        }
        let x = Tensor::<2>::from_data(TensorData::new(xs, [rows, records.width]), &device);
        let mut y = net.forward(x);
        if softmax {
            y = burn::tensor::activation::softmax(y, 1);
        }
        let data = y.into_data();
        let values = data
            .as_slice::<f32>()
            .map_err(|e| ComputeError::BadModel(format!("outputs: {e:?}")))?;
        out.extend_from_slice(values);
    }
    Ok(out)
}

/// A regression model's prediction for every record, in the label's
/// units.
pub fn predict_values(
    spec: &ModelSpec,
    weights: &[f32],
    records: &Records,
    schema: &crate::Schema,
) -> Result<Vec<f64>, ComputeError> {
    if !spec.task.is_regression() {
        return Err(ComputeError::BadModel(
            "a classifier predicts classes, not values".into(),
        ));
    }
    let out = outputs(spec, weights, records, false)?;
    Ok(out.into_iter().map(|v| schema.unscale_target(v)).collect())
}

/// How a regression model does on labelled records, in the label's units
/// (as scikit-learn's `mean_absolute_error`, `root_mean_squared_error`
/// and `r2_score`).
#[derive(Debug, Clone, Copy, PartialEq, serde::Serialize)]
pub struct RegressionEvaluation {
    pub records: usize,
    pub mae: f64,
    pub rmse: f64,
    /// 1 − residual sum of squares / total sum of squares about the
    /// records' own mean. For a constant label: 1 when predicted exactly,
    /// else 0 (as scikit-learn reports it).
    pub r2: f64,
}

/// [`RegressionEvaluation`] of `predicted` against `truth`.
pub fn regression_metrics(predicted: &[f64], truth: &[f64]) -> RegressionEvaluation {
    let n = truth.len().min(predicted.len());
    let nf = n.max(1) as f64;
    let mean = truth[..n].iter().sum::<f64>() / nf;
    let (mut abs, mut sq, mut tot) = (0f64, 0f64, 0f64);
    for (p, t) in predicted.iter().zip(truth) {
        abs += (p - t).abs();
        sq += (p - t) * (p - t);
        tot += (t - mean) * (t - mean);
    }
    let r2 = if tot > 0.0 {
        1.0 - sq / tot
    } else if sq == 0.0 {
        1.0
    } else {
        0.0
    };
    RegressionEvaluation {
        records: n,
        mae: abs / nf,
        rmse: (sq / nf).sqrt(),
        r2,
    }
}

/// [`regression_metrics`] of a regression model on labelled records.
pub fn evaluate_regression(
    spec: &ModelSpec,
    weights: &[f32],
    records: &Records,
    schema: &crate::Schema,
) -> Result<RegressionEvaluation, ComputeError> {
    check_records(spec, records)?;
    let predicted = predict_values(spec, weights, records, schema)?;
    let truth: Vec<f64> = records
        .targets
        .iter()
        .map(|&t| schema.unscale_target(t))
        .collect();
    Ok(regression_metrics(&predicted, &truth))
}

/// Predicted class of every record: the most probable, the first of
/// equals.
pub fn predict(
    spec: &ModelSpec,
    weights: &[f32],
    records: &Records,
) -> Result<Vec<u32>, ComputeError> {
    let probs = probabilities(spec, weights, records)?;
    Ok(probs
        .chunks_exact(spec.classes)
        .map(|row| most_probable(row) as u32)
        .collect())
}

fn most_probable(row: &[f32]) -> usize {
    row.iter()
        .enumerate()
        .max_by(|a, b| a.1.total_cmp(b.1).then(b.0.cmp(&a.0)))
        .map_or(0, |(c, _)| c)
}

/// Precision, recall and F1 of one class.
#[derive(Debug, Clone, Copy, PartialEq, serde::Serialize)]
pub struct ClassMetrics {
    pub precision: f64,
    pub recall: f64,
    pub f1: f64,
    /// Records of this class.
    pub support: u64,
}

/// How a model does on labelled records.
#[derive(Debug, Clone, PartialEq)]
pub struct Evaluation {
    pub accuracy: f64,
    /// `matrix[true][predicted]`.
    pub matrix: Vec<Vec<u64>>,
    pub records: usize,
    /// Per class, in class order. A class never predicted has precision 0,
    /// one with no records recall 0 (as scikit-learn reports them).
    pub per_class: Vec<ClassMetrics>,
    /// Unweighted mean of the classes' F1 (classes with records only).
    pub macro_f1: f64,
    /// Mean cross-entropy of the true class, probabilities clipped to
    /// [1e-15, 1] (as scikit-learn's log_loss).
    pub log_loss: f64,
}

pub fn evaluate(
    spec: &ModelSpec,
    weights: &[f32],
    records: &Records,
) -> Result<Evaluation, ComputeError> {
    check_records(spec, records)?;
    let probs = probabilities(spec, weights, records)?;
    let mut matrix = vec![vec![0u64; spec.classes]; spec.classes];
    let (mut hits, mut loss) = (0u64, 0f64);
    for (row, &t) in probs.chunks_exact(spec.classes).zip(&records.labels) {
        let t = t as usize;
        let p = most_probable(row);
        if let Some(cell) = matrix.get_mut(t).and_then(|r| r.get_mut(p)) {
            *cell += 1;
        }
        hits += u64::from(p == t);
        let pt = row.get(t).copied().unwrap_or(0.0);
        loss -= f64::from(pt).clamp(1e-15, 1.0).ln();
    }
    let n = records.len().max(1) as f64;
    let per_class: Vec<ClassMetrics> = (0..spec.classes)
        .map(|c| {
            let tp = matrix[c][c] as f64;
            let support: u64 = matrix[c].iter().sum();
            let predicted: u64 = matrix.iter().map(|r| r[c]).sum();
            let ratio = |a: f64, b: u64| if b == 0 { 0.0 } else { a / b as f64 };
            let (precision, recall) = (ratio(tp, predicted), ratio(tp, support));
            let f1 = if precision + recall == 0.0 {
                0.0
            } else {
                2.0 * precision * recall / (precision + recall)
            };
            ClassMetrics {
                precision,
                recall,
                f1,
                support,
            }
        })
        .collect();
    let present: Vec<&ClassMetrics> = per_class.iter().filter(|m| m.support > 0).collect();
    let macro_f1 = present.iter().map(|m| m.f1).sum::<f64>() / present.len().max(1) as f64;
    Ok(Evaluation {
        accuracy: hits as f64 / n,
        matrix,
        records: records.len(),
        per_class,
        macro_f1,
        log_loss: loss / n,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::Architecture;

    #[test]
    fn evaluation_reports_what_scikit_learn_would() {
        // Logistic regression on one feature: logits (x, -x).
        let spec = ModelSpec::new(Architecture::Logistic, vec![], 1, 2).expect("spec");
        let weights = [1.0f32, -1.0, 0.0, 0.0];
        let records = Records {
            features: vec![1.0, 1.0, -1.0, -1.0],
            labels: vec![0, 1, 1, 1],
            width: 1,
            targets: vec![],
        };
        let e = evaluate(&spec, &weights, &records).expect("eval");
        assert_eq!(e.matrix, [[1, 0], [1, 2]]);
        assert_eq!(e.accuracy, 0.75);
        let close = |a: f64, b: f64| (a - b).abs() < 1e-4;
        assert!(close(e.per_class[0].precision, 0.5) && close(e.per_class[0].recall, 1.0));
        assert!(close(e.per_class[1].precision, 1.0) && close(e.per_class[1].recall, 2.0 / 3.0));
        assert!(close(e.per_class[0].f1, 2.0 / 3.0) && close(e.per_class[1].f1, 0.8));
        assert_eq!((e.per_class[0].support, e.per_class[1].support), (1, 3));
        assert!(close(e.macro_f1, (2.0 / 3.0 + 0.8) / 2.0), "{}", e.macro_f1);
        // -ln softmax: three rows at 0.1269, one at 2.1269.
        assert!(
            close(e.log_loss, (3.0 * 0.126_928 + 2.126_928) / 4.0),
            "{}",
            e.log_loss
        );
    }

    #[test]
    fn regression_metrics_are_scikit_learns() {
        // sklearn: mean_absolute_error 0.5, root_mean_squared_error
        // 0.6124, r2_score 0.9486 for these.
        let truth = [3.0, -0.5, 2.0, 7.0];
        let predicted = [2.5, 0.0, 2.0, 8.0];
        let e = regression_metrics(&predicted, &truth);
        assert_eq!(e.records, 4);
        assert!((e.mae - 0.5).abs() < 1e-12);
        assert!((e.rmse - 0.375f64.sqrt()).abs() < 1e-12);
        assert!((e.r2 - 0.948_608_137).abs() < 1e-6, "{}", e.r2);
        // A constant label: 1 when predicted exactly, else 0.
        assert_eq!(regression_metrics(&[2.0, 2.0], &[2.0, 2.0]).r2, 1.0);
        assert_eq!(regression_metrics(&[2.0, 3.0], &[2.0, 2.0]).r2, 0.0);
    }

    #[test]
    fn regression_trains_on_squared_error_and_refuses_the_other_task() {
        use crate::dataset::{parse_records, scan_for};
        use loam_common::compute::Task;
        // y = 3a - 2b + 5, exactly.
        let mut text = String::from("a,b,y\n");
        for i in 0..200u64 {
            let a = (i % 17) as f64 / 4.0;
            let b = (i % 7) as f64 - 3.0;
            text.push_str(&format!("{a},{b},{}\n", 3.0 * a - 2.0 * b + 5.0));
        }
        let schema = scan_for(text.as_bytes(), "y", Task::Regression).expect("scan");
        let records = parse_records(text.as_bytes(), &schema, true).expect("records");
        let spec = ModelSpec::for_task(Architecture::Logistic, vec![], 2, 1, Task::Regression)
            .expect("spec");
        let params = TrainParams {
            learning_rate: 0.05,
            local_epochs: 60,
            validation: 0,
            ..TrainParams::default()
        };
        let out = train(
            &spec,
            &spec.init_weights(1),
            &records,
            &params,
            0,
            0,
            crate::Backend::Cpu,
        )
        .expect("train");
        assert!(out.loss < 1e-3, "{}", out.loss);
        let e = evaluate_regression(&spec, &out.weights, &records, &schema).expect("eval");
        assert!(e.r2 > 0.999, "{e:?}");
        // The held-out loss is squared error, with no hits.
        let params = TrainParams {
            validation: 20,
            ..params
        };
        let v = train(
            &spec,
            &out.weights,
            &records,
            &params,
            0,
            0,
            crate::Backend::Cpu,
        )
        .expect("train")
        .validation;
        assert!(v.records > 0 && v.correct == 0 && v.loss < 1e-3, "{v:?}");
        // A classifier cannot take these records, nor a regression model
        // a classifier's, nor a classifier's calls.
        let classifier = ModelSpec::new(Architecture::Logistic, vec![], 2, 2).expect("spec");
        let run = |s: &ModelSpec, r: &Records| {
            train(s, &s.init_weights(1), r, &params, 0, 0, crate::Backend::Cpu)
        };
        assert!(run(&classifier, &records).is_err());
        let classes = Records {
            features: records.features.clone(),
            labels: vec![0; records.len()],
            width: 2,
            targets: vec![],
        };
        assert!(run(&spec, &classes).is_err());
        assert!(probabilities(&spec, &out.weights, &records).is_err());
        assert!(
            predict_values(&classifier, &classifier.init_weights(1), &records, &schema).is_err()
        );
    }

    #[test]
    fn corrected_training_is_bit_identical_across_threads() {
        use loam_common::compute::mix64;
        let spec = ModelSpec::new(Architecture::Mlp, vec![64], 64, 10).expect("spec");
        let n = 180;
        let records = Records {
            features: (0..n * 64)
                .map(|i| (mix64(i as u64) % 17) as f32 / 4.0 - 2.0)
                .collect(),
            labels: (0..n).map(|i| (mix64(i as u64 ^ 99) % 10) as u32).collect(),
            width: 64,
            targets: vec![],
        };
        let params = TrainParams::default();
        let weights = spec.init_weights(7);
        let correction: Vec<f32> = (0..weights.len())
            .map(|i| ((mix64(i as u64 ^ 5) % 1000) as f32 - 500.0) * 1e-4)
            .collect();
        let run = || {
            train_corrected(
                &spec,
                &weights,
                &records,
                &params,
                3,
                11,
                crate::Backend::Cpu,
                Some(&correction),
            )
            .expect("train")
            .weights
        };
        let first = run();
        for _ in 0..20 {
            let (a, b) = std::thread::scope(|s| {
                let a = s.spawn(run);
                let b = s.spawn(run);
                (a.join().expect("a"), b.join().expect("b"))
            });
            assert!(a == first && b == first);
        }
    }
}
