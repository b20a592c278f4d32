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
    #[error("unknown model {0:?} (the registry has: logistic, mlp, cnn)")]
    UnknownModel(String),
    #[error("bad model: {0}")]
    BadModel(String),
    #[error("bad hyperparameters: {0}")]
    BadParams(String),
}

/// Most parameters a registry model may have (64 Mi, 256 MiB of weights).
pub const MAX_PARAMS: usize = 64 << 20;
/// Most multiply-adds of one record's forward pass (4 Gi).
pub const MAX_WORK_PER_RECORD: usize = 1 << 32;
/// Most hidden layers, and the widest one.
pub const MAX_LAYERS: usize = 8;
pub const MAX_WIDTH: usize = 1 << 14;
/// Most conv-pool blocks of a CNN, and the most channels of one.
pub const MAX_CONV_BLOCKS: usize = 4;
pub const MAX_CHANNELS: usize = 256;
/// Largest side of an image input, and most channels of one.
pub const MAX_IMAGE_SIDE: usize = 1024;
pub const MAX_IMAGE_CHANNELS: usize = 4;
/// Kernel size of a CNN's convolutions (3×3, padded to keep the size).
pub const CONV_KERNEL: usize = 3;

/// The architectures in the registry.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Architecture {
    /// Multinomial logistic regression: one linear layer and softmax.
    Logistic,
    /// Fully connected layers with ReLU between them.
    Mlp,
    /// Conv-pool blocks (3×3 convolution, ReLU, 2×2 max pooling) over an
    /// image input, then fully connected layers as an MLP's.
    Cnn,
}

impl std::str::FromStr for Architecture {
    type Err = SpecError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "logistic" | "logreg" | "linear" => Ok(Self::Logistic),
            "mlp" => Ok(Self::Mlp),
            "cnn" => Ok(Self::Cnn),
            other => Err(SpecError::UnknownModel(other.to_string())),
        }
    }
}

impl std::fmt::Display for Architecture {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Self::Logistic => "logistic",
            Self::Mlp => "mlp",
            Self::Cnn => "cnn",
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

/// The shape of an image input: each record's features are its pixels,
/// channel by channel and row by row within a channel (the `C×H×W` order
/// PyTorch uses).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct ImageShape {
    pub channels: usize,
    pub height: usize,
    pub width: usize,
}

impl ImageShape {
    /// Checks the sides and channels against the limits.
    pub fn new(height: usize, width: usize, channels: usize) -> Result<Self, SpecError> {
        if !(1..=MAX_IMAGE_SIDE).contains(&height)
            || !(1..=MAX_IMAGE_SIDE).contains(&width)
            || !(1..=MAX_IMAGE_CHANNELS).contains(&channels)
        {
            return Err(SpecError::BadModel(format!(
                "image shape {height}x{width}x{channels}: sides must be 1..={MAX_IMAGE_SIDE} and channels 1..={MAX_IMAGE_CHANNELS}"
            )));
        }
        Ok(Self {
            channels,
            height,
            width,
        })
    }

    /// Pixels of one image (features of one record).
    pub fn pixels(&self) -> usize {
        self.channels * self.height * self.width
    }
}

impl std::str::FromStr for ImageShape {
    type Err = SpecError;

    /// `HxW` (one channel) or `HxWxC`.
    fn from_str(s: &str) -> Result<Self, SpecError> {
        let bad = || {
            SpecError::BadModel(format!(
                "image shape {s:?} is not HxW or HxWxC (e.g. 28x28, 32x32x3)"
            ))
        };
        let parts: Vec<usize> = s
            .split(['x', 'X', '×'])
            .map(|p| p.trim().parse::<usize>().map_err(|_| bad()))
            .collect::<Result<_, _>>()?;
        match parts[..] {
            [h, w] => Self::new(h, w, 1),
            [h, w, c] => Self::new(h, w, c),
            _ => Err(bad()),
        }
    }
}

impl std::fmt::Display for ImageShape {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}x{}", self.height, self.width)?;
        if self.channels != 1 {
            write!(f, "x{}", self.channels)?;
        }
        Ok(())
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
    /// A CNN's input image (its pixels are the `inputs` features).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub image: Option<ImageShape>,
    /// Output channels of a CNN's conv-pool blocks, in order.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub conv: Vec<usize>,
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
            Architecture::Cnn => {
                return Err(SpecError::BadModel(
                    "a CNN needs an image input (give the data set's image shape, e.g. --image-shape 28x28)"
                        .into(),
                ));
            }
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
        Self {
            architecture,
            hidden,
            inputs,
            classes,
            task,
            image: None,
            conv: Vec::new(),
        }
        .checked()
    }

    /// A CNN over `image`: conv-pool blocks with `conv` output channels,
    /// then fully connected `hidden` layers (none: the blocks' output goes
    /// straight to the output layer).
    pub fn cnn(
        image: ImageShape,
        conv: Vec<usize>,
        hidden: Vec<usize>,
        outputs: usize,
        task: Task,
    ) -> Result<Self, SpecError> {
        let image = ImageShape::new(image.height, image.width, image.channels)?;
        if conv.is_empty()
            || conv.len() > MAX_CONV_BLOCKS
            || conv.iter().any(|&c| c == 0 || c > MAX_CHANNELS)
        {
            return Err(SpecError::BadModel(format!(
                "a CNN needs 1..={MAX_CONV_BLOCKS} conv-pool blocks of 1..={MAX_CHANNELS} channels (--conv 8,16)"
            )));
        }
        if image.height >> conv.len() == 0 || image.width >> conv.len() == 0 {
            return Err(SpecError::BadModel(format!(
                "a {image} image is too small for {} conv-pool blocks (each halves its sides)",
                conv.len()
            )));
        }
        if hidden.len() > MAX_LAYERS || hidden.iter().any(|&w| w == 0 || w > MAX_WIDTH) {
            return Err(SpecError::BadModel(format!(
                "hidden layers must be 0..={MAX_LAYERS} layers of 1..={MAX_WIDTH} units"
            )));
        }
        let wanted = if task.is_regression() { 1 } else { 2 };
        if (task.is_regression() && outputs != 1) || outputs < wanted {
            return Err(SpecError::BadModel(format!(
                "a {task} CNN cannot have {outputs} outputs"
            )));
        }
        Self {
            architecture: Architecture::Cnn,
            hidden,
            inputs: image.pixels(),
            classes: outputs,
            task,
            image: Some(image),
            conv,
        }
        .checked()
    }

    /// The same spec checked as [`Self::for_task`] or [`Self::cnn`] check
    /// a new one: for a spec that came from elsewhere (a file, the wire).
    pub fn rebuilt(&self) -> Result<Self, SpecError> {
        if self.architecture != Architecture::Cnn {
            if self.image.is_some() || !self.conv.is_empty() {
                return Err(SpecError::BadModel(format!(
                    "a {} model has no image input or conv blocks",
                    self.architecture
                )));
            }
            return Self::for_task(
                self.architecture,
                self.hidden.clone(),
                self.inputs,
                self.classes,
                self.task,
            );
        }
        let image = self.image.ok_or_else(|| {
            SpecError::BadModel("a CNN without the shape of its input image".into())
        })?;
        let spec = Self::cnn(
            image,
            self.conv.clone(),
            self.hidden.clone(),
            self.classes,
            self.task,
        )?;
        if spec.inputs != self.inputs {
            return Err(SpecError::BadModel(format!(
                "{} inputs is not the {} pixels of a {image} image",
                self.inputs, spec.inputs
            )));
        }
        Ok(spec)
    }

    /// `self` if its parameters are within [`MAX_PARAMS`].
    fn checked(self) -> Result<Self, SpecError> {
        let params = self.params();
        if params > MAX_PARAMS {
            return Err(SpecError::BadModel(format!(
                "{params} parameters is more than the limit of {MAX_PARAMS}"
            )));
        }
        let work = self.work_per_record();
        if work > MAX_WORK_PER_RECORD {
            return Err(SpecError::BadModel(format!(
                "{work} multiply-adds per record is more than the limit of {MAX_WORK_PER_RECORD}"
            )));
        }
        Ok(self)
    }

    /// Widths of the fully connected layers, from their input (the
    /// features, or a CNN's last block flattened) to the outputs.
    pub fn widths(&self) -> Vec<usize> {
        let mut w = vec![self.dense_inputs()];
        w.extend(&self.hidden);
        w.push(self.classes);
        w
    }

    /// The conv-pool blocks as (input channels, output channels, height,
    /// width of the convolution's input and output); none for a dense
    /// model.
    pub fn conv_blocks(&self) -> Vec<ConvBlock> {
        let Some(image) = self.image else {
            return Vec::new();
        };
        let (mut c, mut h, mut w) = (image.channels, image.height, image.width);
        let mut blocks = Vec::with_capacity(self.conv.len());
        for &out in &self.conv {
            blocks.push(ConvBlock {
                inputs: c,
                outputs: out,
                height: h,
                width: w,
            });
            (c, h, w) = (out, h / 2, w / 2);
        }
        blocks
    }

    /// Inputs of the first fully connected layer.
    fn dense_inputs(&self) -> usize {
        match (self.image, self.conv_blocks().last()) {
            (Some(_), Some(b)) => b.outputs * (b.height / 2) * (b.width / 2),
            _ => self.inputs,
        }
    }

    /// Number of parameters (the length of the flat weight vector): each
    /// conv block's kernel `[out, in, 3, 3]` and bias, then each dense
    /// layer's weight and bias.
    pub fn params(&self) -> usize {
        self.sum_over_layers(|b| b.kernel_len() + b.outputs)
    }

    /// `conv(block)` summed over the conv blocks, plus the weights and
    /// biases of the dense layers.
    fn sum_over_layers(&self, conv: impl Fn(&ConvBlock) -> usize) -> usize {
        let conv: usize = self.conv_blocks().iter().map(conv).sum();
        conv + self
            .widths()
            .windows(2)
            .map(|p| p[0] * p[1] + p[1])
            .sum::<usize>()
    }

    /// Multiply-adds of one forward pass of one record (a bias counts as
    /// one): what a record costs to train, and so what a node is paid
    /// for. A dense model's equals its parameter count; a convolution's
    /// kernel is applied at every pixel.
    pub fn work_per_record(&self) -> usize {
        self.sum_over_layers(|b| (b.kernel_len() + b.outputs) * b.height * b.width)
    }

    /// Initial weights: uniform in ±1/√fan_in (the usual Kaiming-uniform
    /// bound for ReLU layers), from `seed` alone, so that every party can
    /// rebuild them.
    pub fn init_weights(&self, seed: u64) -> Vec<f32> {
        let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
        let mut out = Vec::with_capacity(self.params());
        let conv = self.conv_blocks().into_iter().map(|b| {
            (
                b.inputs * CONV_KERNEL * CONV_KERNEL,
                b.kernel_len() + b.outputs,
            )
        });
        let dense = self
            .widths()
            .windows(2)
            .map(|p| (p[0], p[0] * p[1] + p[1]))
            .collect::<Vec<_>>();
        for (fan_in, len) in conv.chain(dense) {
            let bound = 1.0 / (fan_in as f32).sqrt();
            for _ in 0..len {
                out.push(rng.gen_range(-bound..bound));
            }
        }
        out
    }
}

/// One conv-pool block of a CNN: a 3×3 convolution (padded, so the output
/// is `height × width` too), ReLU, then 2×2 max pooling (halving the
/// sides, rounding down).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ConvBlock {
    pub inputs: usize,
    pub outputs: usize,
    pub height: usize,
    pub width: usize,
}

impl ConvBlock {
    /// Weights of the kernel, `[outputs, inputs, 3, 3]`.
    pub fn kernel_len(&self) -> usize {
        self.outputs * self.inputs * CONV_KERNEL * CONV_KERNEL
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
/// of the backward pass), of a model doing `work_per_record`
/// ([`ModelSpec::work_per_record`]) per forward pass. Paid per unit, not
/// per second, so a slow node earns no more than a fast one.
pub fn work_units(work_per_record: usize, samples: u64) -> f64 {
    3.0 * work_per_record as f64 * samples as f64 / 1e9
}

/// Work of a training task in micro-units (units × 10⁶), in exact integer
/// arithmetic: what pays a node. `None` if it does not fit a `u64`.
pub fn work_micro_units(work_per_record: usize, samples: u64) -> Option<u64> {
    let micro = 3u128
        .checked_mul(work_per_record as u128)?
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
            image_channels: s.image.map_or(0, |i| i.channels as u32),
            image_height: s.image.map_or(0, |i| i.height as u32),
            image_width: s.image.map_or(0, |i| i.width as u32),
            conv: s.conv.iter().map(|&c| c as u32).collect(),
        }
    }
}

impl TryFrom<&crate::pb::ModelSpec> for ModelSpec {
    type Error = SpecError;

    fn try_from(p: &crate::pb::ModelSpec) -> Result<Self, Self::Error> {
        let image = (p.image_channels, p.image_height, p.image_width) != (0, 0, 0);
        ModelSpec {
            architecture: p.architecture.parse()?,
            hidden: p.hidden.iter().map(|&h| h as usize).collect(),
            inputs: p.inputs as usize,
            classes: p.classes as usize,
            task: p.task.parse()?,
            image: image.then_some(ImageShape {
                channels: p.image_channels as usize,
                height: p.image_height as usize,
                width: p.image_width as usize,
            }),
            conv: p.conv.iter().map(|&c| c as usize).collect(),
        }
        .rebuilt()
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
    fn cnn_specs_count_their_blocks_and_refuse_what_does_not_fit() {
        let image: ImageShape = "28x28".parse().expect("shape");
        assert_eq!(image.pixels(), 784);
        assert_eq!(
            "32x30x3".parse::<ImageShape>().expect("rgb").to_string(),
            "32x30x3"
        );
        for bad in ["28", "28x", "0x28", "28x28x5", "2000x2", "axb", "1x2x3x4"] {
            assert!(bad.parse::<ImageShape>().is_err(), "{bad}");
        }
        let s =
            ModelSpec::cnn(image, vec![8, 16], vec![64], 10, Task::Classification).expect("spec");
        assert_eq!(s.inputs, 784);
        // 1→8 at 28×28, pool to 14×14; 8→16, pool to 7×7; 784 → 64 → 10.
        assert_eq!(s.widths(), vec![16 * 7 * 7, 64, 10]);
        let conv = (8 * 9 + 8) + (16 * 8 * 9 + 16);
        assert_eq!(s.params(), conv + 784 * 64 + 64 + 64 * 10 + 10);
        assert_eq!(
            s.work_per_record(),
            (8 * 9 + 8) * 784 + (16 * 8 * 9 + 16) * 196 + 784 * 64 + 64 + 64 * 10 + 10
        );
        assert_eq!(s.init_weights(3).len(), s.params());
        // A dense model's work is its parameter count, as before CNNs.
        let m = ModelSpec::new(Architecture::Mlp, vec![64], 64, 10).expect("mlp");
        assert_eq!(m.work_per_record(), m.params());
        // Odd sides round down; an image too small for its blocks is refused.
        let odd = ModelSpec::cnn(
            "5x7".parse().expect("shape"),
            vec![2],
            vec![],
            2,
            Task::Classification,
        )
        .expect("odd");
        assert_eq!(odd.widths(), vec![2 * 2 * 3, 2]);
        for (conv, hidden, outputs) in [
            (vec![8; 5], vec![64], 10),
            (vec![], vec![64], 10),
            (vec![0], vec![64], 10),
            (vec![512], vec![64], 10),
            (vec![8, 8, 8, 8], vec![64], 10),
            (vec![8], vec![64], 1),
        ] {
            let small: ImageShape = if conv.len() == 4 {
                "8x8".parse()
            } else {
                image.to_string().parse()
            }
            .expect("shape");
            assert!(
                ModelSpec::cnn(small, conv.clone(), hidden, outputs, Task::Classification).is_err(),
                "{conv:?}"
            );
        }
        assert!(ModelSpec::new(Architecture::Cnn, vec![64], 784, 10).is_err());
        // Through the wire: kept whole, and a spec whose inputs are not the
        // image's pixels, or a dense model with an image, is refused.
        let wire = crate::pb::ModelSpec::from(&s);
        assert_eq!(ModelSpec::try_from(&wire).expect("back"), s);
        let mut lying = wire.clone();
        lying.inputs = 100;
        assert!(ModelSpec::try_from(&lying).is_err());
        let mut dense = crate::pb::ModelSpec::from(&m);
        dense.conv = vec![4];
        assert!(ModelSpec::try_from(&dense).is_err());
        let mut huge = wire;
        (huge.image_height, huge.image_width, huge.conv) = (1024, 1024, vec![256, 256, 256, 256]);
        huge.inputs = 1 << 20;
        assert!(
            ModelSpec::try_from(&huge).is_err(),
            "more work per record than allowed"
        );
        // The JSON of a dense spec is unchanged.
        assert!(!serde_json::to_string(&m).expect("json").contains("conv"));
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
