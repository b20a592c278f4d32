//! Local training on one piece's records, and evaluation.
//!
//! Training is deterministic for given weights, records, hyperparameters
//! and task stream on the CPU backend: batches are shuffled by a seeded
//! generator, nothing else is random, and burn runs single-threaded
//! kernels on ndarray. That is what lets the satellite have a task re-run
//! elsewhere and compare the weights.

use burn::nn::loss::CrossEntropyLossConfig;
use burn::optim::{AdamConfig, GradientsParams};
use burn::tensor::{Device, Int, Tensor, TensorData};
use rand::SeedableRng;
use rand::seq::SliceRandom;

use crate::ComputeError;
use crate::dataset::Records;
use crate::model::{ModelSpec, build};
pub use loam_common::compute::TrainParams;

/// What one local training run returns.
#[derive(Debug, Clone, PartialEq)]
pub struct TrainOutput {
    pub weights: Vec<f32>,
    /// Records processed (records × epochs).
    pub samples: u64,
    /// Mean cross-entropy and accuracy over the last epoch.
    pub loss: f32,
    pub accuracy: f32,
}

/// Mixes the job seed with the round and the task's identity into the seed
/// of its batch order.
pub fn stream_seed(seed: u64, round: u32, stream: u64) -> u64 {
    let mut h = blake3_like(seed);
    h = blake3_like(h ^ u64::from(round).rotate_left(32));
    blake3_like(h ^ stream)
}

/// SplitMix64 finaliser: a cheap, well-mixed 64-bit hash.
fn blake3_like(mut z: u64) -> u64 {
    z = z.wrapping_add(0x9e37_79b9_7f4a_7c15);
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

fn batch_tensors(records: &Records, idx: &[usize], device: &Device) -> (Tensor<2>, Tensor<1, Int>) {
    let d = records.width;
    let mut xs = Vec::with_capacity(idx.len() * d);
    let mut ys = Vec::with_capacity(idx.len());
    for &i in idx {
        xs.extend_from_slice(records.row(i));
        ys.push(i64::from(records.labels[i]));
    }
    let x = Tensor::<2>::from_data(TensorData::new(xs, [idx.len(), d]), device);
    let y = Tensor::<1, Int>::from_data(TensorData::new(ys, [idx.len()]), device);
    (x, y)
}

/// Trains `spec` from `weights` on `records` for `params.local_epochs`
/// epochs of Adam. `round` and `stream` (the task's identity) seed the
/// batch order.
pub fn train(
    spec: &ModelSpec,
    weights: &[f32],
    records: &Records,
    params: &TrainParams,
    round: u32,
    stream: u64,
    backend: crate::Backend,
) -> Result<TrainOutput, ComputeError> {
    params.validate()?;
    if records.width != spec.inputs {
        return Err(ComputeError::BadModel(format!(
            "records have {} features, the model {}",
            records.width, spec.inputs
        )));
    }
    if let Some(&bad) = records.labels.iter().find(|&&l| l as usize >= spec.classes) {
        return Err(ComputeError::BadModel(format!(
            "class {bad} is beyond the model's {} classes",
            spec.classes
        )));
    }
    let device = backend.device().autodiff();
    let mut net = build(spec, weights, &device)?;
    if records.is_empty() {
        return Ok(TrainOutput {
            weights: weights.to_vec(),
            samples: 0,
            loss: 0.0,
            accuracy: 0.0,
        });
    }
    let mut optim = AdamConfig::new().init();
    let loss_fn = CrossEntropyLossConfig::new().init(&device);
    let mut rng = rand::rngs::StdRng::seed_from_u64(stream_seed(params.seed, round, stream));
    let mut order: Vec<usize> = (0..records.len()).collect();
    let (mut loss_sum, mut correct) = (0f64, 0u64);
    for epoch in 0..params.local_epochs {
        order.shuffle(&mut rng);
        let last = epoch + 1 == params.local_epochs;
        for idx in order.chunks(params.batch) {
            let (x, y) = batch_tensors(records, idx, &device);
            let logits = net.forward(x);
            if last {
                let hits = logits
                    .clone()
                    .detach()
                    .argmax(1)
                    .reshape([idx.len()])
                    .equal(y.clone())
                    .int()
                    .sum()
                    .into_scalar::<i64>();
                correct += hits.max(0) as u64;
            }
            let loss = loss_fn.forward(logits, y);
            if last {
                loss_sum +=
                    f64::from(loss.clone().detach().into_scalar::<f32>()) * idx.len() as f64;
            }
            let grads = GradientsParams::from_grads(loss.backward(), &net);
            net = optim.step(params.learning_rate, net, grads);
        }
    }
    let n = records.len() as f64;
    Ok(TrainOutput {
        weights: net.flatten(),
        samples: (records.len() * params.local_epochs) as u64,
        loss: (loss_sum / n) as f32,
        accuracy: (correct as f64 / n) as f32,
    })
}

/// Predicted class of every record.
pub fn predict(
    spec: &ModelSpec,
    weights: &[f32],
    records: &Records,
) -> Result<Vec<u32>, ComputeError> {
    let device = crate::Backend::Cpu.device();
    let net = build(spec, weights, &device)?;
    let mut out = Vec::with_capacity(records.len());
    let all: Vec<usize> = (0..records.len()).collect();
    for idx in all.chunks(4096) {
        let (x, _) = batch_tensors(records, idx, &device);
        let pred = net.forward(x).argmax(1).reshape([idx.len()]).into_data();
        out.extend(pred.iter::<i64>().map(|c| c.max(0) as u32));
    }
    Ok(out)
}

/// Accuracy and confusion matrix (`matrix[true][predicted]`).
#[derive(Debug, Clone, PartialEq)]
pub struct Evaluation {
    pub accuracy: f64,
    pub matrix: Vec<Vec<u64>>,
    pub records: usize,
}

pub fn evaluate(
    spec: &ModelSpec,
    weights: &[f32],
    records: &Records,
) -> Result<Evaluation, ComputeError> {
    let pred = predict(spec, weights, records)?;
    let mut matrix = vec![vec![0u64; spec.classes]; spec.classes];
    let mut hits = 0;
    for (&p, &t) in pred.iter().zip(&records.labels) {
        if let Some(cell) = matrix
            .get_mut(t as usize)
            .and_then(|r| r.get_mut(p as usize))
        {
            *cell += 1;
        }
        hits += u64::from(p == t);
    }
    Ok(Evaluation {
        accuracy: hits as f64 / records.len().max(1) as f64,
        matrix,
        records: records.len(),
    })
}
