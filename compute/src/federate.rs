//! Federated training without a network: skewed splits of a dataset over
//! pieces, rounds of local training settled by the same core the satellite
//! uses ([`loam_common::federated`]), Byzantine tasks; with one piece, the centralized
//! baseline. The learning benchmark and the tests that choose the defaults
//! run on it.

use std::fmt;
use std::str::FromStr;

use loam_common::compute::local_steps;
use loam_common::federated::{
    self, Drift, DriftResult, ServerState, Settings, Update, ValidationSum, early_stop,
};
use rand::seq::SliceRandom;
use rand::{Rng, SeedableRng};
use rand_distr::{Distribution, Gamma};

use crate::ComputeError;
use crate::dataset::Records;
use crate::model::ModelSpec;
use crate::train::{TrainParams, evaluate, train_corrected};

/// How records are spread over the pieces of a dataset.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Skew {
    /// In the order given, cut into equal runs (what `dataset put` does
    /// with `--shuffle-records false`; shuffled, any file is dealt so).
    FileOrder,
    /// Sorted by label, then cut: each piece holds one to a few classes
    /// (a sorted file put with `--shuffle-records false`).
    Sorted,
    /// Each class's records shared among the pieces in proportions drawn
    /// from a symmetric Dirichlet(alpha) (Hsu et al. 2019): small alpha,
    /// strong skew.
    Dirichlet(f64),
    /// Every piece holds records of one class only (classes shared out
    /// round-robin when there are more pieces than classes).
    OneClass,
}

impl fmt::Display for Skew {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Skew::FileOrder => f.write_str("file-order"),
            Skew::Sorted => f.write_str("sorted"),
            Skew::Dirichlet(a) => write!(f, "dirichlet:{a}"),
            Skew::OneClass => f.write_str("one-class"),
        }
    }
}

impl FromStr for Skew {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "file-order" => Ok(Skew::FileOrder),
            "sorted" => Ok(Skew::Sorted),
            "one-class" => Ok(Skew::OneClass),
            _ => {
                let alpha = s
                    .strip_prefix("dirichlet:")
                    .and_then(|a| a.parse::<f64>().ok())
                    .filter(|a| a.is_finite() && *a > 0.0)
                    .ok_or_else(|| {
                        format!(
                            "unknown skew {s:?} (file-order, sorted, one-class or dirichlet:ALPHA)"
                        )
                    })?;
                Ok(Skew::Dirichlet(alpha))
            }
        }
    }
}

/// The records of each of `pieces` pieces (indices into `labels`), as
/// `skew` spreads them; every piece gets at least one record when there
/// are enough.
pub fn deal(labels: &[u32], pieces: usize, skew: Skew, seed: u64) -> Vec<Vec<usize>> {
    let pieces = pieces.clamp(1, labels.len().max(1));
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
    let cut = |order: Vec<usize>| -> Vec<Vec<usize>> {
        let n = order.len();
        (0..pieces)
            .map(|p| order[p * n / pieces..(p + 1) * n / pieces].to_vec())
            .collect()
    };
    let classes = labels.iter().map(|&l| l as usize + 1).max().unwrap_or(0);
    let by_class = || {
        let mut c: Vec<Vec<usize>> = vec![Vec::new(); classes];
        for (i, &l) in labels.iter().enumerate() {
            c[l as usize].push(i);
        }
        c
    };
    match skew {
        Skew::FileOrder => cut((0..labels.len()).collect()),
        Skew::Sorted => cut(by_class().concat()),
        Skew::OneClass => {
            let mut out = vec![Vec::new(); pieces];
            let present: Vec<Vec<usize>> =
                by_class().into_iter().filter(|c| !c.is_empty()).collect();
            if pieces <= present.len() {
                for (c, rows) in present.into_iter().enumerate() {
                    out[c % pieces].extend(rows);
                }
            } else {
                // More pieces than classes: each class over its own pieces.
                for (c, rows) in present.iter().enumerate() {
                    let mine: Vec<usize> = (c..pieces).step_by(present.len()).collect();
                    for (j, &p) in mine.iter().enumerate() {
                        let n = rows.len();
                        out[p]
                            .extend_from_slice(&rows[j * n / mine.len()..(j + 1) * n / mine.len()]);
                    }
                }
            }
            out
        }
        Skew::Dirichlet(alpha) => {
            let gamma = Gamma::new(alpha.max(1e-3), 1.0).expect("positive shape");
            let mut out = vec![Vec::new(); pieces];
            for mut rows in by_class() {
                rows.shuffle(&mut rng);
                let w: Vec<f64> = (0..pieces).map(|_| gamma.sample(&mut rng)).collect();
                let total: f64 = w.iter().sum::<f64>().max(f64::MIN_POSITIVE);
                let n = rows.len();
                let mut start = 0usize;
                let mut acc = 0f64;
                for (p, wp) in w.iter().enumerate() {
                    acc += wp / total;
                    let end = if p + 1 == pieces {
                        n
                    } else {
                        ((acc * n as f64).round() as usize).clamp(start, n)
                    };
                    out[p].extend_from_slice(&rows[start..end]);
                    start = end;
                }
            }
            // A piece left empty takes a record from the largest one.
            for p in 0..pieces {
                if out[p].is_empty() {
                    let big = (0..pieces)
                        .max_by_key(|&q| out[q].len())
                        .expect("pieces > 0");
                    if out[big].len() > 1 {
                        let r = out[big].pop().expect("non-empty");
                        out[p].push(r);
                    }
                }
            }
            for piece in &mut out {
                piece.sort_unstable();
            }
            out
        }
    }
}

/// The rows of `records` at `idx`, in that order.
pub fn subset(records: &Records, idx: &[usize]) -> Records {
    let mut out = Records {
        width: records.width,
        features: Vec::with_capacity(idx.len() * records.width),
        labels: Vec::with_capacity(if records.labels.is_empty() {
            0
        } else {
            idx.len()
        }),
        targets: Vec::with_capacity(if records.targets.is_empty() {
            0
        } else {
            idx.len()
        }),
    };
    for &i in idx {
        out.features.extend_from_slice(records.row(i));
        if let Some(&l) = records.labels.get(i) {
            out.labels.push(l);
        }
        if let Some(&t) = records.targets.get(i) {
            out.targets.push(t);
        }
    }
    out
}

/// How a Byzantine task corrupts its update.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Attack {
    /// Sends old - k·(update - old): the update reversed and amplified.
    SignFlip,
    /// Sends old + k·(update - old).
    Scale,
    /// Sends old plus Gaussian noise as long as the honest update.
    Random,
}

impl FromStr for Attack {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "sign-flip" => Ok(Attack::SignFlip),
            "scale" => Ok(Attack::Scale),
            "random" => Ok(Attack::Random),
            _ => Err(format!("unknown attack {s:?} (sign-flip, scale or random)")),
        }
    }
}

/// A federated run.
#[derive(Debug, Clone)]
pub struct Federation {
    pub spec: ModelSpec,
    pub params: TrainParams,
    pub settings: Settings,
    /// Rounds, or the most rounds when `patience` is set.
    pub rounds: u32,
    /// Stop after this many rounds without a better validation loss and
    /// keep the best weights, as the satellite does; 0 runs every round.
    pub patience: u32,
    /// The first `byzantine` pieces corrupt their updates every round.
    pub byzantine: usize,
    pub attack: Attack,
    /// Amplification of sign-flip and scale attacks.
    pub attack_factor: f32,
}

/// What a federated run produced.
#[derive(Debug, Clone)]
pub struct FederatedRun {
    /// The final weights: the best by validation when the run stopped
    /// early, else the last.
    pub weights: Vec<f32>,
    /// Test accuracy of the final weights.
    pub final_accuracy: f64,
    /// Test accuracy after each round.
    pub accuracy: Vec<f64>,
    /// Validation loss of the weights after `r` rounds, at `r`.
    pub validation: Vec<Option<f64>>,
    /// Rounds run, and rounds trained into the final weights.
    pub rounds_run: u32,
    pub final_round: u32,
    /// Updates the settlement refused or outvoted, over all rounds.
    pub left_out: usize,
}

impl Federation {
    /// Trains from the spec's seeded initial weights over `pieces` of
    /// `train_rows`, settling each round as the satellite does, and
    /// evaluates on `test` after each round.
    pub fn run(
        &self,
        train_rows: &Records,
        pieces: &[Vec<usize>],
        test: &Records,
    ) -> Result<FederatedRun, ComputeError> {
        let parts: Vec<Records> = pieces.iter().map(|p| subset(train_rows, p)).collect();
        let mut weights = self.spec.init_weights(self.params.seed);
        let mut state = ServerState::default();
        let mut accuracy = Vec::with_capacity(self.rounds as usize);
        let mut validation = Vec::with_capacity(self.rounds as usize);
        let mut best_weights = weights.clone();
        let mut stopped = None;
        let mut left_out = 0;
        let mut rng = rand::rngs::StdRng::seed_from_u64(self.params.seed ^ 0x5eed);
        let mut drift = Drift::default();
        let scaffold = self.settings.algorithm.corrects_drift();
        let params = TrainParams {
            proximal: self.settings.algorithm.proximal(),
            ..self.params
        };
        let total: usize = parts.iter().map(Records::len).sum();
        for round in 0..self.rounds {
            let mut outs = Vec::with_capacity(parts.len());
            let mut ids = Vec::with_capacity(parts.len());
            for (i, part) in parts.iter().enumerate() {
                if part.is_empty() {
                    continue;
                }
                let corr = if scaffold {
                    drift.correction(i as u64)
                } else {
                    None
                };
                let mut o = train_corrected(
                    &self.spec,
                    &weights,
                    part,
                    &params,
                    round,
                    i as u64,
                    crate::Backend::Cpu,
                    corr.as_deref(),
                )?;
                if i < self.byzantine {
                    self.corrupt(&weights, &mut o.weights, &mut rng);
                }
                outs.push(o);
                ids.push(i);
            }
            let mut val = ValidationSum::default();
            for o in &outs {
                let v = o.validation;
                val.add(v.loss, v.correct, v.records);
            }
            validation.push(val.loss());
            let stop = early_stop(&validation, self.patience);
            if stop.best.is_some_and(|(r, _)| r == round) {
                best_weights.clone_from(&weights);
            }
            if stop.stop {
                stopped = stop.best.map(|(r, _)| r);
                break;
            }
            let updates: Vec<Update<'_>> = outs
                .iter()
                .map(|o| Update {
                    weights: &o.weights,
                    samples: o.samples,
                })
                .collect();
            let s = federated::settle(&weights, &updates, &self.settings, &mut state)
                .map_err(|e| ComputeError::BadModel(format!("round {}: {e}", round + 1)))?;
            left_out += s.verdicts.iter().filter(|v| !v.counted()).count();
            if scaffold {
                let used: Vec<DriftResult<'_>> = outs
                    .iter()
                    .zip(&ids)
                    .zip(&s.verdicts)
                    .filter(|(_, v)| v.counted())
                    .map(|((o, &i), _)| DriftResult {
                        task: i as u64,
                        weights: &o.weights,
                        steps: local_steps(o.samples, &params),
                        share: parts[i].len() as f64 / total as f64,
                    })
                    .collect();
                drift.update(&weights, &used, params.learning_rate, self.settings.rule);
            }
            weights = s.weights;
            accuracy.push(evaluate(&self.spec, &weights, test)?.accuracy);
        }
        let rounds_run = accuracy.len() as u32;
        let (weights, final_round) = match stopped {
            Some(r) => (best_weights, r),
            None => (weights, rounds_run),
        };
        let final_accuracy = evaluate(&self.spec, &weights, test)?.accuracy;
        Ok(FederatedRun {
            weights,
            final_accuracy,
            accuracy,
            validation,
            rounds_run,
            final_round,
            left_out,
        })
    }

    fn corrupt(&self, old: &[f32], w: &mut [f32], rng: &mut impl Rng) {
        let k = self.attack_factor;
        match self.attack {
            Attack::SignFlip => w
                .iter_mut()
                .zip(old)
                .for_each(|(x, &o)| *x = o - k * (*x - o)),
            Attack::Scale => w
                .iter_mut()
                .zip(old)
                .for_each(|(x, &o)| *x = o + k * (*x - o)),
            Attack::Random => {
                let len = loam_common::compute::update_norm(old, w) as f32;
                let per = len / (w.len() as f32).sqrt();
                let normal = rand_distr::Normal::new(0.0f32, per.max(1e-6)).expect("finite");
                w.iter_mut()
                    .zip(old)
                    .for_each(|(x, &o)| *x = o + normal.sample(rng));
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn labels() -> Vec<u32> {
        (0..300).map(|i| (i % 10) as u32).collect()
    }

    fn classes_in(labels: &[u32], piece: &[usize]) -> usize {
        let mut seen: Vec<u32> = piece.iter().map(|&i| labels[i]).collect();
        seen.sort_unstable();
        seen.dedup();
        seen.len()
    }

    #[test]
    fn every_deal_covers_each_record_once() {
        let l = labels();
        for skew in [
            Skew::FileOrder,
            Skew::Sorted,
            Skew::Dirichlet(0.1),
            Skew::Dirichlet(100.0),
            Skew::OneClass,
        ] {
            for pieces in [1, 4, 10, 16] {
                let d = deal(&l, pieces, skew, 7);
                assert_eq!(d.len(), pieces, "{skew} {pieces}");
                let mut all: Vec<usize> = d.concat();
                all.sort_unstable();
                assert_eq!(all, (0..l.len()).collect::<Vec<_>>(), "{skew} {pieces}");
                assert!(d.iter().all(|p| !p.is_empty()), "{skew} {pieces}");
            }
        }
    }

    #[test]
    fn skews_are_as_strong_as_named() {
        let l = labels();
        let most = |skew| {
            deal(&l, 10, skew, 3)
                .iter()
                .map(|p| classes_in(&l, p))
                .max()
                .unwrap_or(0)
        };
        assert_eq!(most(Skew::FileOrder), 10);
        assert_eq!(most(Skew::Sorted), 1);
        assert_eq!(most(Skew::OneClass), 1);
        let mean = |skew| {
            let d = deal(&l, 10, skew, 3);
            d.iter().map(|p| classes_in(&l, p)).sum::<usize>() as f64 / d.len() as f64
        };
        assert!(
            mean(Skew::Dirichlet(0.1)) < 4.0,
            "{}",
            mean(Skew::Dirichlet(0.1))
        );
        assert!(mean(Skew::Dirichlet(100.0)) > 9.0);
        assert_eq!(
            deal(&l, 10, Skew::Dirichlet(0.1), 3),
            deal(&l, 10, Skew::Dirichlet(0.1), 3)
        );
        for s in ["file-order", "sorted", "one-class", "dirichlet:0.1"] {
            assert_eq!(s.parse::<Skew>().expect(s).to_string(), s);
        }
        assert!("dirichlet:-1".parse::<Skew>().is_err());
    }
}
