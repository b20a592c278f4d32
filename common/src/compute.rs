//! Compute jobs as plain data: the model registry's architectures and
//! sizes, training hyperparameters, and the arithmetic of federated
//! averaging. Shared by the uplink (which submits jobs), the satellite
//! (which schedules them and averages weights without any ML library) and
//! the storage node (which trains, in `loam-compute`).

use rand::{Rng, SeedableRng};
use serde::{Deserialize, Serialize};

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[non_exhaustive]
pub enum SpecError {
    #[error("unknown model {0:?} (the registry has: logistic, mlp)")]
    UnknownModel(String),
    #[error("bad model: {0}")]
    BadModel(String),
    #[error("bad hyperparameters: {0}")]
    BadParams(String),
}

/// Most parameters a registry model may have (64 Mi, 256 MiB of weights).
pub const MAX_PARAMS: usize = 64 << 20;
/// Most hidden layers, and the widest one.
pub const MAX_LAYERS: usize = 8;
pub const MAX_WIDTH: usize = 1 << 14;

/// The architectures in the registry.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Architecture {
    /// Multinomial logistic regression: one linear layer and softmax.
    Logistic,
    /// Fully connected layers with ReLU between them.
    Mlp,
}

impl std::str::FromStr for Architecture {
    type Err = SpecError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "logistic" | "logreg" | "linear" => Ok(Self::Logistic),
            "mlp" => Ok(Self::Mlp),
            other => Err(SpecError::UnknownModel(other.to_string())),
        }
    }
}

impl std::fmt::Display for Architecture {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Self::Logistic => "logistic",
            Self::Mlp => "mlp",
        })
    }
}

/// What a model predicts.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Task {
    /// One of the label's classes (softmax output, cross-entropy loss).
    #[default]
    Classification,
    /// A number (one output, squared-error loss on the standardized
    /// label).
    Regression,
}

impl Task {
    pub fn is_regression(self) -> bool {
        self == Self::Regression
    }

    /// For serde's `skip_serializing_if`.
    pub fn is_classification(&self) -> bool {
        *self == Self::Classification
    }
}

impl std::str::FromStr for Task {
    type Err = SpecError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "classification" | "" => Ok(Self::Classification),
            "regression" => Ok(Self::Regression),
            other => Err(SpecError::BadModel(format!(
                "unknown task {other:?} (classification or regression)"
            ))),
        }
    }
}

impl std::fmt::Display for Task {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Self::Classification => "classification",
            Self::Regression => "regression",
        })
    }
}

/// One model of the registry with its sizes.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ModelSpec {
    pub architecture: Architecture,
    /// Widths of the hidden layers (empty for logistic regression).
    pub hidden: Vec<usize>,
    pub inputs: usize,
    /// Outputs: the classes of a classifier, 1 for regression.
    pub classes: usize,
    #[serde(default, skip_serializing_if = "Task::is_classification")]
    pub task: Task,
}

impl ModelSpec {
    /// A classifier; checks sizes; `hidden` is ignored for logistic
    /// regression.
    pub fn new(
        architecture: Architecture,
        hidden: Vec<usize>,
        inputs: usize,
        classes: usize,
    ) -> Result<Self, SpecError> {
        Self::for_task(architecture, hidden, inputs, classes, Task::Classification)
    }

    /// A model of `task`: `outputs` is the number of classes of a
    /// classifier and must be 1 for regression (`logistic` is then
    /// linear regression).
    pub fn for_task(
        architecture: Architecture,
        hidden: Vec<usize>,
        inputs: usize,
        outputs: usize,
        task: Task,
    ) -> Result<Self, SpecError> {
        let classes = outputs;
        let hidden = match architecture {
            Architecture::Logistic => Vec::new(),
            Architecture::Mlp if hidden.is_empty() => {
                return Err(SpecError::BadModel(
                    "an MLP needs at least one hidden layer (--hidden 64)".into(),
                ));
            }
            Architecture::Mlp => hidden,
        };
        if hidden.len() > MAX_LAYERS || hidden.iter().any(|&w| w == 0 || w > MAX_WIDTH) {
            return Err(SpecError::BadModel(format!(
                "hidden layers must be 1..={MAX_LAYERS} layers of 1..={MAX_WIDTH} units"
            )));
        }
        match task {
            Task::Classification if inputs == 0 || classes < 2 => {
                return Err(SpecError::BadModel(format!(
                    "a classifier needs at least one feature and two classes (got {inputs} features, {classes} classes)"
                )));
            }
            Task::Regression if inputs == 0 || classes != 1 => {
                return Err(SpecError::BadModel(format!(
                    "a regression model needs at least one feature and one output (got {inputs} features, {classes} outputs)"
                )));
            }
            _ => {}
        }
        let spec = Self {
            architecture,
            hidden,
            inputs,
            classes,
            task,
        };
        if spec.params() > MAX_PARAMS {
            return Err(SpecError::BadModel(format!(
                "{} parameters is more than the limit of {MAX_PARAMS}",
                spec.params()
            )));
        }
        Ok(spec)
    }

    pub fn widths(&self) -> Vec<usize> {
        let mut w = vec![self.inputs];
        w.extend(&self.hidden);
        w.push(self.classes);
        w
    }

    /// Number of parameters (the length of the flat weight vector).
    pub fn params(&self) -> usize {
        self.widths().windows(2).map(|p| p[0] * p[1] + p[1]).sum()
    }

    /// Multiply-adds of one forward pass of one record.
    pub fn flops_per_record(&self) -> u64 {
        self.widths().windows(2).map(|p| (p[0] * p[1]) as u64).sum()
    }

    /// Initial weights: uniform in ±1/√fan_in (the usual Kaiming-uniform
    /// bound for ReLU layers), from `seed` alone, so that every party can
    /// rebuild them.
    pub fn init_weights(&self, seed: u64) -> Vec<f32> {
        let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
        let mut out = Vec::with_capacity(self.params());
        for p in self.widths().windows(2) {
            let bound = 1.0 / (p[0] as f32).sqrt();
            for _ in 0..p[0] * p[1] + p[1] {
                out.push(rng.gen_range(-bound..bound));
            }
        }
        out
    }
}

/// Rounds of a job when the user gives a fixed count but no number.
pub const DEFAULT_ROUNDS: u32 = 10;
/// Most rounds of a job whose rounds are chosen by validation (`--rounds
/// auto`, the default).
pub const AUTO_MAX_ROUNDS: u32 = 100;
/// Rounds without a better validation loss after which an automatic job
/// stops (and keeps the best weights).
pub const DEFAULT_PATIENCE: u32 = 8;

/// How many rounds a job runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Rounds {
    /// Until the validation loss has not improved for
    /// [`DEFAULT_PATIENCE`] rounds, at most [`AUTO_MAX_ROUNDS`]; the job
    /// keeps the best weights.
    #[default]
    Auto,
    /// Exactly this many.
    Fixed(u32),
}

impl Rounds {
    /// The most rounds, and the patience (0: none) a job is submitted with.
    pub fn cap_and_patience(self) -> (u32, u32) {
        match self {
            Rounds::Auto => (AUTO_MAX_ROUNDS, DEFAULT_PATIENCE),
            Rounds::Fixed(n) => (n, 0),
        }
    }
}

impl std::str::FromStr for Rounds {
    type Err = SpecError;
    fn from_str(s: &str) -> Result<Self, SpecError> {
        if s == "auto" {
            return Ok(Rounds::Auto);
        }
        match s.parse::<u32>() {
            Ok(n) if n > 0 => Ok(Rounds::Fixed(n)),
            _ => Err(SpecError::BadParams(format!(
                "rounds {s:?} is neither \"auto\" nor a positive count"
            ))),
        }
    }
}

impl std::fmt::Display for Rounds {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Rounds::Auto => f.write_str("auto"),
            Rounds::Fixed(n) => write!(f, "{n}"),
        }
    }
}

/// The optimizer of local training.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum Optimizer {
    /// Plain stochastic gradient descent. The default: a task's steps stay
    /// proportional to its gradients, so tasks that see only a few classes
    /// pull the model apart far less than with Adam (see docs/compute.md).
    #[default]
    Sgd,
    /// Adam, restarted every round (jobs stored before there was a
    /// choice train with it).
    Adam,
}

impl Optimizer {
    /// The local learning rate when the user gives none.
    pub fn default_learning_rate(self) -> f64 {
        self.default_learning_rate_for(Task::Classification)
    }

    /// [`Self::default_learning_rate`] for `task`: squared-error gradients
    /// grow with the residual (cross-entropy's are bounded), so plain SGD
    /// takes smaller steps on regression.
    pub fn default_learning_rate_for(self, task: Task) -> f64 {
        match (self, task) {
            (Optimizer::Sgd, Task::Classification) => 0.1,
            (Optimizer::Sgd, Task::Regression) => 0.01,
            (Optimizer::Adam, _) => 0.005,
        }
    }
}

impl std::str::FromStr for Optimizer {
    type Err = SpecError;
    fn from_str(s: &str) -> Result<Self, SpecError> {
        match s {
            "sgd" => Ok(Optimizer::Sgd),
            "adam" => Ok(Optimizer::Adam),
            _ => Err(SpecError::BadParams(format!(
                "unknown optimizer {s:?} (sgd or adam)"
            ))),
        }
    }
}

impl std::fmt::Display for Optimizer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Optimizer::Sgd => "sgd",
            Optimizer::Adam => "adam",
        })
    }
}

/// Hyperparameters of local training.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct TrainParams {
    pub learning_rate: f64,
    pub batch: usize,
    pub local_epochs: usize,
    pub seed: u64,
    pub optimizer: Optimizer,
    /// Percent of each task's records held out on the node for validation
    /// (never trained on, never sent anywhere); 0 keeps none.
    pub validation: u32,
    /// FedProx's proximal weight `mu`: the loss gains `mu/2 · |w - w0|²`
    /// for the weights `w0` the task started from; 0 adds nothing.
    pub proximal: f64,
}

impl Default for TrainParams {
    fn default() -> Self {
        Self {
            learning_rate: Optimizer::default().default_learning_rate(),
            batch: 32,
            local_epochs: 2,
            seed: 1,
            optimizer: Optimizer::default(),
            validation: 10,
            proximal: 0.0,
        }
    }
}

/// Most records a task holds out for validation, in percent.
pub const MAX_VALIDATION: u32 = 50;

/// SplitMix64's finaliser: a cheap, well-mixed 64-bit hash.
pub fn mix64(mut z: u64) -> u64 {
    z = z.wrapping_add(0x9e37_79b9_7f4a_7c15);
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

/// Which of a task's `n` records are held out for validation: record `i`
/// when a hash of the job's seed, the task's stream and `i` falls in the
/// first `percent` of a hundred buckets. The same for every round of the
/// job and for every party (the satellite counts them without seeing the
/// records). Nothing is held out when that would leave no record to
/// train on.
pub fn validation_rows(n: usize, percent: u32, seed: u64, stream: u64) -> Vec<bool> {
    let percent = u64::from(percent.min(MAX_VALIDATION));
    let key = mix64(mix64(seed ^ 0x7661_6c69_6461_7465) ^ stream);
    let held: Vec<bool> = (0..n as u64)
        .map(|i| mix64(key ^ i) % 100 < percent)
        .collect();
    if held.iter().all(|&h| h) {
        vec![false; n]
    } else {
        held
    }
}

/// How many of a task's `n` records [`validation_rows`] holds out.
pub fn validation_count(n: usize, percent: u32, seed: u64, stream: u64) -> usize {
    validation_rows(n, percent, seed, stream)
        .iter()
        .filter(|&&h| h)
        .count()
}

/// Optimizer steps of a task that trained `samples` sample-epochs (whole
/// batches and a last, shorter one, every local epoch).
pub fn local_steps(samples: u64, params: &TrainParams) -> u64 {
    let epochs = params.local_epochs.max(1) as u64;
    (samples / epochs).div_ceil(params.batch.max(1) as u64) * epochs
}

/// The stream (identity) of the task on data row `row` of `segment`: it
/// seeds the task's batch order and validation split.
pub fn task_stream(segment: u32, row: u32) -> u64 {
    (u64::from(segment) << 32) | u64::from(row)
}

impl TrainParams {
    pub fn validate(&self) -> Result<(), SpecError> {
        if !(self.learning_rate.is_finite()
            && self.learning_rate > 0.0
            && self.learning_rate < 10.0)
        {
            return Err(SpecError::BadParams(format!(
                "learning rate {} is not in (0, 10)",
                self.learning_rate
            )));
        }
        if !(1..=1 << 16).contains(&self.batch) {
            return Err(SpecError::BadParams(format!(
                "batch size {} is not in 1..=65536",
                self.batch
            )));
        }
        if !(self.proximal.is_finite() && (0.0..=10.0).contains(&self.proximal)) {
            return Err(SpecError::BadParams(format!(
                "proximal weight {} is not in [0, 10]",
                self.proximal
            )));
        }
        if self.validation > MAX_VALIDATION {
            return Err(SpecError::BadParams(format!(
                "validation share {}% is more than {MAX_VALIDATION}%",
                self.validation
            )));
        }
        if !(1..=1000).contains(&self.local_epochs) {
            return Err(SpecError::BadParams(format!(
                "local epochs {} is not in 1..=1000",
                self.local_epochs
            )));
        }
        Ok(())
    }
}

/// Work units of a training task: one unit is 10^9 multiply-adds, counting
/// a training step as three forward passes (forward, and the two products
/// of the backward pass). Paid per unit, not per second, so a slow node
/// earns no more than a fast one.
pub fn work_units(params: usize, samples: u64) -> f64 {
    3.0 * params as f64 * samples as f64 / 1e9
}

/// Work of a training task in micro-units (units × 10⁶), in exact integer
/// arithmetic: what pays a node. `None` if it does not fit a `u64`.
pub fn work_micro_units(params: usize, samples: u64) -> Option<u64> {
    let micro = 3u128
        .checked_mul(params as u128)?
        .checked_mul(u128::from(samples))?
        / 1000;
    u64::try_from(micro).ok()
}

/// Federated averaging: the mean of `updates`, each weighted by its sample
/// count. `None` when there is nothing to average, the lengths differ or
/// the sample counts overflow.
pub fn federated_average<'a>(
    updates: impl IntoIterator<Item = (&'a [f32], u64)>,
) -> Option<Vec<f32>> {
    let mut sum: Vec<f64> = Vec::new();
    let mut total = 0u64;
    for (w, samples) in updates {
        if samples == 0 {
            continue;
        }
        if sum.is_empty() {
            sum = vec![0.0; w.len()];
        } else if sum.len() != w.len() {
            return None;
        }
        let s = samples as f64;
        for (acc, &x) in sum.iter_mut().zip(w) {
            *acc += f64::from(x) * s;
        }
        total = total.checked_add(samples)?;
    }
    (total > 0).then(|| sum.iter().map(|&x| (x / total as f64) as f32).collect())
}

/// Euclidean norm of `new - old`.
pub fn update_norm(old: &[f32], new: &[f32]) -> f64 {
    old.iter()
        .zip(new)
        .map(|(&a, &b)| {
            let d = f64::from(b) - f64::from(a);
            d * d
        })
        .sum::<f64>()
        .sqrt()
}

/// Whether two runs of the same task agree: the largest difference of a
/// weight is within `tolerance` of the weight's scale. Deterministic CPU
/// training gives identical weights; the tolerance only absorbs
/// floating-point differences between CPU models.
pub fn weights_match(a: &[f32], b: &[f32], tolerance: f32) -> bool {
    a.len() == b.len()
        && a.iter().zip(b).all(|(&x, &y)| {
            x.is_finite()
                && y.is_finite()
                && (x - y).abs() <= tolerance * (1.0 + x.abs().max(y.abs()))
        })
}

/// Weights as little-endian bytes, for the wire.
pub fn weights_to_bytes(w: &[f32]) -> Vec<u8> {
    w.iter().flat_map(|x| x.to_le_bytes()).collect()
}

/// The inverse of [`weights_to_bytes`]; `None` if the length is not a
/// multiple of four.
pub fn weights_from_bytes(b: &[u8]) -> Option<Vec<f32>> {
    b.len().is_multiple_of(4).then(|| {
        b.chunks_exact(4)
            .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
            .collect()
    })
}

impl From<&ModelSpec> for crate::pb::ModelSpec {
    fn from(s: &ModelSpec) -> Self {
        Self {
            architecture: s.architecture.to_string(),
            hidden: s.hidden.iter().map(|&h| h as u32).collect(),
            inputs: s.inputs as u32,
            classes: s.classes as u32,
            task: match s.task {
                Task::Classification => String::new(),
                task => task.to_string(),
            },
        }
    }
}

impl TryFrom<&crate::pb::ModelSpec> for ModelSpec {
    type Error = SpecError;

    fn try_from(p: &crate::pb::ModelSpec) -> Result<Self, Self::Error> {
        ModelSpec::for_task(
            p.architecture.parse()?,
            p.hidden.iter().map(|&h| h as usize).collect(),
            p.inputs as usize,
            p.classes as usize,
            p.task.parse()?,
        )
    }
}

impl From<&TrainParams> for crate::pb::TrainParams {
    fn from(p: &TrainParams) -> Self {
        Self {
            learning_rate: p.learning_rate,
            batch: p.batch as u32,
            local_epochs: p.local_epochs as u32,
            seed: p.seed,
            optimizer: match p.optimizer {
                Optimizer::Adam => 0,
                Optimizer::Sgd => 1,
            },
            validation_percent: p.validation,
            proximal: p.proximal,
        }
    }
}

impl TryFrom<&crate::pb::TrainParams> for TrainParams {
    type Error = SpecError;

    fn try_from(p: &crate::pb::TrainParams) -> Result<Self, Self::Error> {
        let params = TrainParams {
            learning_rate: p.learning_rate,
            batch: p.batch as usize,
            local_epochs: p.local_epochs as usize,
            seed: p.seed,
            // 0: a job from before there was a choice, trained with Adam.
            optimizer: match p.optimizer {
                0 => Optimizer::Adam,
                1 => Optimizer::Sgd,
                other => {
                    return Err(SpecError::BadParams(format!("unknown optimizer {other}")));
                }
            },
            validation: p.validation_percent,
            proximal: p.proximal,
        };
        params.validate()?;
        Ok(params)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn spec_counts_parameters_and_refuses_bad_sizes() {
        let s = ModelSpec::new(Architecture::Mlp, vec![64], 64, 10).expect("spec");
        assert_eq!(s.params(), 64 * 64 + 64 + 64 * 10 + 10);
        assert_eq!(s.init_weights(7), s.init_weights(7));
        assert_ne!(s.init_weights(7), s.init_weights(8));
        assert_eq!(s.init_weights(7).len(), s.params());
        let l = ModelSpec::new(Architecture::Logistic, vec![64], 5, 3).expect("spec");
        assert!(l.hidden.is_empty());
        assert!(ModelSpec::new(Architecture::Mlp, vec![], 5, 3).is_err());
        assert!(ModelSpec::new(Architecture::Mlp, vec![8], 5, 1).is_err());
        assert!(ModelSpec::new(Architecture::Mlp, vec![1 << 14; 8], 1 << 14, 3).is_err());
        assert_eq!(
            "cnn9".parse::<Architecture>(),
            Err(SpecError::UnknownModel("cnn9".into()))
        );
    }

    #[test]
    fn average_is_weighted_by_samples() {
        let a = [1.0f32, 2.0];
        let b = [4.0f32, 8.0];
        let avg = federated_average([(&a[..], 1), (&b[..], 2)]).expect("avg");
        assert_eq!(avg, vec![3.0, 6.0]);
        assert_eq!(federated_average([(&a[..], 0)]), None);
        assert_eq!(federated_average([(&a[..], 1), (&[1.0f32][..], 1)]), None);
    }

    #[test]
    fn weights_match_within_tolerance_and_travel_as_bytes() {
        // The screen of outliers and NaN is tested with the settlement
        // (federated::tests::malformed_and_far_out_updates_are_refused_not_averaged).
        let ok1 = [0.1f32, 0.0, 0.0];
        let ok2 = [0.0f32, 0.12, 0.0];
        assert!(weights_match(&ok1, &ok1, 0.0));
        assert!(!weights_match(&ok1, &ok2, 1e-4));
        let bytes = weights_to_bytes(&ok2);
        assert_eq!(weights_from_bytes(&bytes).expect("bytes"), ok2);
        assert_eq!(weights_from_bytes(&bytes[1..]), None);
    }
}
