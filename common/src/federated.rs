//! Settling a federated round, without I/O: the task results go in, the
//! next global weights and each result's verdict come out.
//!
//! A round is settled in four steps:
//!
//! 1. **Screen.** A result of the wrong size or with a non-finite weight is
//!    refused. Of the rest, an update (its weights minus the round's
//!    global weights) whose norm is more than `screen_factor` times the
//!    round's median norm is refused too: it counts against its node.
//! 2. **Clip.** With `clip` set, an update longer than `clip` times the
//!    median norm is scaled down to that length (kept, not refused).
//! 3. **Combine** the updates by the job's [`Rule`]: the sample-weighted
//!    mean, the coordinate-wise median, the trimmed mean, or multi-Krum
//!    (which keeps the updates closest to their neighbours).
//! 4. **Step.** The combined update is one (pseudo-)gradient for the
//!    server's [`Algorithm`]: applied as is (FedAvg), with momentum
//!    (FedAvgM), or through Adam (FedAdam). Their state lives in
//!    [`ServerState`], which the caller keeps with the job.
//!
//! Everything runs in `f64` over the updates in the order given; the caller
//! sorts them (by task) so that the same job settles to the same bits.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

/// An update shorter than this share of the global weights' norm passes
/// the screen whatever the round's median.
pub const SCREEN_FLOOR: f64 = 0.01;

/// How the server turns the round's combined update into new weights.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
pub enum Algorithm {
    /// New weights = old + combined update (McMahan et al. 2017).
    FedAvg,
    /// Server momentum over the combined updates (Hsu et al. 2019).
    FedAvgM,
    /// Adam over the combined updates (Reddi et al. 2021).
    FedAdam,
    /// FedAvg's server step; each task's loss gains a proximal term
    /// `mu/2 · |w - w_global|²` ([`FEDPROX_MU`]) that holds it near the
    /// global weights (Li et al. 2020).
    FedProx,
    /// Control variates correct each task's drift (Karimireddy et al.
    /// 2020): every local gradient gets `c - c_i`, the satellite's
    /// estimate of the mean gradient minus the task's own ([`Drift`]);
    /// the server steps with momentum 0.5. The closest to centralized
    /// training when pieces hold one class or a few, and the default
    /// (docs/compute.md has the table).
    #[default]
    Scaffold,
}

/// FedProx's proximal weight.
pub const FEDPROX_MU: f64 = 0.01;

/// The server step an algorithm takes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Step {
    Plain,
    Momentum,
    Adam,
}

impl Algorithm {
    pub const ALL: [Algorithm; 5] = [
        Algorithm::FedAvg,
        Algorithm::FedAvgM,
        Algorithm::FedAdam,
        Algorithm::FedProx,
        Algorithm::Scaffold,
    ];

    pub fn name(self) -> &'static str {
        match self {
            Algorithm::FedAvg => "fedavg",
            Algorithm::FedAvgM => "fedavgm",
            Algorithm::FedAdam => "fedadam",
            Algorithm::FedProx => "fedprox",
            Algorithm::Scaffold => "scaffold",
        }
    }

    pub fn wire(self) -> u32 {
        match self {
            Algorithm::FedAvg => 1,
            Algorithm::FedAvgM => 2,
            Algorithm::FedAdam => 3,
            Algorithm::FedProx => 4,
            Algorithm::Scaffold => 5,
        }
    }

    /// The wire value; 0 (a job from before algorithms) is plain FedAvg.
    pub fn from_wire(v: u32) -> Option<Self> {
        match v {
            0 | 1 => Some(Algorithm::FedAvg),
            2 => Some(Algorithm::FedAvgM),
            3 => Some(Algorithm::FedAdam),
            4 => Some(Algorithm::FedProx),
            5 => Some(Algorithm::Scaffold),
            _ => None,
        }
    }

    /// Whether tasks get a drift correction ([`Drift`]).
    pub fn corrects_drift(self) -> bool {
        self == Algorithm::Scaffold
    }

    /// Whether tasks may train with `optimizer` under this algorithm: a
    /// drift correction is each task's mean gradient, estimated from its
    /// weight change over its SGD steps; an Adam step is not a gradient
    /// step, and the estimates swamp the gradients. The error says what
    /// to use instead.
    pub fn check_optimizer(self, optimizer: crate::compute::Optimizer) -> Result<(), String> {
        if self.corrects_drift() && optimizer == crate::compute::Optimizer::Adam {
            return Err(format!(
                "--algorithm {self} corrects each task by its mean gradient, estimated from \
                 SGD steps, and cannot train with adam; use --algorithm fedavgm"
            ));
        }
        Ok(())
    }

    /// The proximal weight tasks train with.
    pub fn proximal(self) -> f64 {
        if self == Algorithm::FedProx {
            FEDPROX_MU
        } else {
            0.0
        }
    }

    fn step(self) -> Step {
        match self {
            Algorithm::FedAvg | Algorithm::FedProx => Step::Plain,
            Algorithm::FedAvgM | Algorithm::Scaffold => Step::Momentum,
            Algorithm::FedAdam => Step::Adam,
        }
    }
}

impl fmt::Display for Algorithm {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

impl FromStr for Algorithm {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        Self::ALL
            .into_iter()
            .find(|a| a.name() == s)
            .ok_or_else(|| {
                format!("unknown algorithm {s:?} (fedavg, fedavgm, fedadam, fedprox or scaffold)")
            })
    }
}

/// How the round's updates are combined into one.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
pub enum Rule {
    /// Mean weighted by each task's samples.
    #[default]
    Mean,
    /// Coordinate-wise median (unweighted).
    Median,
    /// Coordinate-wise mean of what is left after dropping the largest and
    /// the smallest quarter of the values.
    TrimmedMean,
    /// Multi-Krum (Blanchard et al. 2017): assuming up to a quarter of the
    /// updates are Byzantine, keeps the updates whose nearest neighbours
    /// are closest and averages them by samples; the others are refused.
    Krum,
}

impl Rule {
    pub const ALL: [Rule; 4] = [Rule::Mean, Rule::Median, Rule::TrimmedMean, Rule::Krum];

    pub fn name(self) -> &'static str {
        match self {
            Rule::Mean => "mean",
            Rule::Median => "median",
            Rule::TrimmedMean => "trimmed-mean",
            Rule::Krum => "krum",
        }
    }

    pub fn wire(self) -> u32 {
        match self {
            Rule::Mean => 1,
            Rule::Median => 2,
            Rule::TrimmedMean => 3,
            Rule::Krum => 4,
        }
    }

    pub fn from_wire(v: u32) -> Option<Self> {
        match v {
            0 | 1 => Some(Rule::Mean),
            2 => Some(Rule::Median),
            3 => Some(Rule::TrimmedMean),
            4 => Some(Rule::Krum),
            _ => None,
        }
    }
}

impl fmt::Display for Rule {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

impl FromStr for Rule {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        Self::ALL
            .into_iter()
            .find(|a| a.name() == s)
            .ok_or_else(|| {
                format!("unknown aggregation {s:?} (mean, median, trimmed-mean or krum)")
            })
    }
}

/// What a job's owner chooses of the settlement.
#[derive(Debug, Clone, Copy, PartialEq, Default, Serialize, Deserialize)]
pub struct Choice {
    pub algorithm: Algorithm,
    pub rule: Rule,
    /// Clip updates longer than this many times the round's median.
    pub clip: Option<f64>,
}

impl Choice {
    /// The full settings, with the satellite's screening factor.
    pub fn settings(&self, screen_factor: f64) -> Settings {
        Settings {
            screen_factor,
            clip: self.clip,
            ..Settings::new(self.algorithm, self.rule)
        }
    }
}

impl From<&Choice> for crate::pb::Aggregation {
    fn from(c: &Choice) -> Self {
        Self {
            algorithm: c.algorithm.wire(),
            rule: c.rule.wire(),
            clip: c.clip.unwrap_or(0.0),
        }
    }
}

impl TryFrom<&crate::pb::Aggregation> for Choice {
    type Error = String;
    fn try_from(a: &crate::pb::Aggregation) -> Result<Self, String> {
        let algorithm = Algorithm::from_wire(a.algorithm)
            .ok_or_else(|| format!("unknown aggregation algorithm {}", a.algorithm))?;
        let rule = Rule::from_wire(a.rule)
            .ok_or_else(|| format!("unknown aggregation rule {}", a.rule))?;
        let clip = if a.clip == 0.0 {
            None
        } else if a.clip.is_finite() && a.clip >= 1.0 && a.clip <= 1000.0 {
            Some(a.clip)
        } else {
            return Err(format!("clip factor {} is not in [1, 1000]", a.clip));
        };
        Ok(Self {
            algorithm,
            rule,
            clip,
        })
    }
}

/// How a job's rounds are settled.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct Settings {
    pub algorithm: Algorithm,
    pub rule: Rule,
    /// Updates longer than this many times the median are refused (a node
    /// that sends one is counted as misreporting).
    pub screen_factor: f64,
    /// Updates longer than this many times the median are shortened to it;
    /// `None` clips nothing.
    pub clip: Option<f64>,
    /// Server step size (1 = the combined update as is).
    pub server_lr: f64,
    /// FedAvgM momentum, FedAdam's first-moment decay.
    pub beta1: f64,
    /// FedAdam's second-moment decay.
    pub beta2: f64,
    /// FedAdam's adaptivity (added to the root of the second moment).
    pub tau: f64,
}

impl Settings {
    /// The defaults for `algorithm`: the step sizes the measurements in
    /// docs/compute.md chose.
    pub fn new(algorithm: Algorithm, rule: Rule) -> Self {
        let (server_lr, beta1) = match algorithm {
            Algorithm::FedAvg | Algorithm::FedProx => (1.0, 0.0),
            Algorithm::FedAvgM => (1.0, 0.7),
            Algorithm::Scaffold => (1.0, 0.5),
            Algorithm::FedAdam => (0.01, 0.9),
        };
        Self {
            algorithm,
            rule,
            screen_factor: 5.0,
            clip: None,
            server_lr,
            beta1,
            beta2: 0.99,
            tau: 1e-3,
        }
    }

    pub fn validate(&self) -> Result<(), String> {
        let positive = |v: f64| v.is_finite() && v > 0.0;
        if !positive(self.screen_factor) {
            return Err(format!(
                "screen factor {} is not positive",
                self.screen_factor
            ));
        }
        if let Some(c) = self.clip
            && !positive(c)
        {
            return Err(format!("clip factor {c} is not positive"));
        }
        if !(positive(self.server_lr) && self.server_lr <= 10.0) {
            return Err(format!(
                "server learning rate {} is not in (0, 10]",
                self.server_lr
            ));
        }
        for (name, b) in [("beta1", self.beta1), ("beta2", self.beta2)] {
            if !(b.is_finite() && (0.0..1.0).contains(&b)) {
                return Err(format!("{name} {b} is not in [0, 1)"));
            }
        }
        if !positive(self.tau) {
            return Err(format!("tau {} is not positive", self.tau));
        }
        Ok(())
    }
}

impl Default for Settings {
    fn default() -> Self {
        Self::new(Algorithm::default(), Rule::default())
    }
}

/// What the server optimizer carries from round to round.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct ServerState {
    /// Momentum (FedAvgM) or first moment (FedAdam).
    pub m: Vec<f32>,
    /// FedAdam's second moment.
    pub v: Vec<f32>,
    /// Rounds settled.
    pub steps: u32,
}

impl ServerState {
    /// `steps`, then `m` and `v` each as a length (u32) and little-endian
    /// floats.
    pub fn to_bytes(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(12 + 4 * (self.m.len() + self.v.len()));
        out.extend_from_slice(&self.steps.to_le_bytes());
        for part in [&self.m, &self.v] {
            out.extend_from_slice(&(part.len() as u32).to_le_bytes());
            out.extend(part.iter().flat_map(|x| x.to_le_bytes()));
        }
        out
    }

    pub fn from_bytes(b: &[u8]) -> Option<Self> {
        let (steps, mut rest) = b.split_first_chunk::<4>()?;
        let mut part = || -> Option<Vec<f32>> {
            let (len, r) = rest.split_first_chunk::<4>()?;
            let len = u32::from_le_bytes(*len) as usize;
            let bytes = r.get(..len.checked_mul(4)?)?;
            rest = &r[bytes.len()..];
            Some(
                bytes
                    .chunks_exact(4)
                    .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
                    .collect(),
            )
        };
        let m = part()?;
        let v = part()?;
        rest.is_empty().then_some(Self {
            m,
            v,
            steps: u32::from_le_bytes(*steps),
        })
    }
}

/// One task's result as the round sees it.
#[derive(Debug, Clone, Copy)]
pub struct Update<'a> {
    pub weights: &'a [f32],
    pub samples: u64,
}

/// What became of one update.
#[derive(Debug, Clone, PartialEq)]
pub enum Verdict {
    /// Combined as sent.
    Used,
    /// Combined after being shortened to the clip length.
    Clipped,
    /// Left out by the combining rule (multi-Krum), not held against the
    /// node: an honest update can be the odd one out.
    Outvoted,
    /// Left out by the norm screen, as far longer than the round's others.
    /// Not held against the node: honest updates spike too (a task whose
    /// drift correction overshot, say); re-execution, not a statistic, is
    /// what proves a node wrong.
    Screened(String),
    /// Refused as malformed (wrong length, not finite, no samples): held
    /// against the node.
    Refused(String),
}

impl Verdict {
    /// Whether the update went into the new weights.
    pub fn counted(&self) -> bool {
        matches!(self, Verdict::Used | Verdict::Clipped)
    }
}

/// The outcome of [`settle`].
#[derive(Debug, Clone, PartialEq)]
pub struct Settlement {
    pub weights: Vec<f32>,
    /// One per update, in the order given.
    pub verdicts: Vec<Verdict>,
}

#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum SettleError {
    #[error("no task produced an accepted update")]
    NothingAccepted,
    #[error("the global weights hold a non-finite value")]
    BadGlobal,
    #[error("the server state does not fit the model")]
    BadState,
}

/// Settles one round: `old` are the round's global weights, `updates` the
/// accepted task results in a fixed order, `state` the server optimizer's
/// state (updated in place).
pub fn settle(
    old: &[f32],
    updates: &[Update<'_>],
    settings: &Settings,
    state: &mut ServerState,
) -> Result<Settlement, SettleError> {
    if old.iter().any(|x| !x.is_finite()) {
        return Err(SettleError::BadGlobal);
    }
    let mut verdicts: Vec<Verdict> = vec![Verdict::Used; updates.len()];
    let mut deltas: Vec<Option<Vec<f64>>> = updates
        .iter()
        .zip(&mut verdicts)
        .map(|(u, verdict)| {
            if u.weights.len() != old.len() {
                *verdict = Verdict::Refused(format!(
                    "{} weights, the model has {}",
                    u.weights.len(),
                    old.len()
                ));
                None
            } else if u.weights.iter().any(|x| !x.is_finite()) {
                *verdict = Verdict::Refused("a weight is not finite".into());
                None
            } else if u.samples == 0 {
                *verdict = Verdict::Refused("no samples".into());
                None
            } else {
                Some(
                    u.weights
                        .iter()
                        .zip(old)
                        .map(|(&w, &o)| f64::from(w) - f64::from(o))
                        .collect(),
                )
            }
        })
        .collect();

    // Screen and clip against the median norm of the well-formed updates.
    let norms: Vec<Option<f64>> = deltas.iter().map(|d| d.as_deref().map(norm)).collect();
    let mut sorted: Vec<f64> = norms.iter().flatten().copied().collect();
    sorted.sort_by(f64::total_cmp);
    // Below three updates a median says little: nothing is screened.
    if sorted.len() >= 3 {
        let median = sorted[sorted.len() / 2].max(1e-12);
        // Near convergence the median update is tiny and honest updates
        // differ from it by large factors: an update that moves the
        // weights by under SCREEN_FLOOR of their length is never refused.
        let floor = SCREEN_FLOOR
            * old
                .iter()
                .map(|&x| f64::from(x).powi(2))
                .sum::<f64>()
                .sqrt();
        let bound = (settings.screen_factor * median).max(floor);
        for ((d, n), verdict) in deltas.iter_mut().zip(&norms).zip(&mut verdicts) {
            let (Some(delta), Some(n)) = (d.as_mut(), *n) else {
                continue;
            };
            if n > bound {
                *verdict = Verdict::Screened(format!(
                    "update norm {n:.3} is over {} times the round's median {median:.3} \
                     and over {SCREEN_FLOOR} of the weights' norm",
                    settings.screen_factor
                ));
                *d = None;
            } else if let Some(c) = settings.clip
                && n > c * median
            {
                let scale = c * median / n;
                delta.iter_mut().for_each(|x| *x *= scale);
                *verdict = Verdict::Clipped;
            }
        }
    }

    let live: Vec<usize> = (0..deltas.len()).filter(|&i| deltas[i].is_some()).collect();
    if live.is_empty() {
        return Err(SettleError::NothingAccepted);
    }
    let get = |i: usize| deltas[i].as_deref().expect("live");
    let (combined, outvoted) = combine(settings.rule, &live, old.len(), &get, |i| {
        updates[i].samples as f64
    });
    for i in outvoted {
        verdicts[i] = Verdict::Outvoted;
    }
    let weights = step(old, &combined, settings, state)?;
    Ok(Settlement { weights, verdicts })
}

fn norm(d: &[f64]) -> f64 {
    d.iter().map(|x| x * x).sum::<f64>().sqrt()
}

/// The vectors `get(i)` of `live` combined by `rule` (means weighted by
/// `weight`), and those multi-Krum outvoted.
fn combine<'a>(
    rule: Rule,
    live: &[usize],
    len: usize,
    get: &impl Fn(usize) -> &'a [f64],
    weight: impl Fn(usize) -> f64,
) -> (Vec<f64>, Vec<usize>) {
    let mean = |chosen: &[usize]| weighted_mean(chosen.iter().map(|&i| (get(i), weight(i))));
    match rule {
        Rule::Mean => (mean(live), Vec::new()),
        Rule::Median => {
            let median = coordinate_wise(live, len, get, |v| {
                let n = v.len();
                if n % 2 == 1 {
                    v[n / 2]
                } else {
                    (v[n / 2 - 1] + v[n / 2]) / 2.0
                }
            });
            (median, Vec::new())
        }
        Rule::TrimmedMean => {
            let trimmed = coordinate_wise(live, len, get, |v| {
                let cut = v.len() / 4;
                let kept = &v[cut..v.len() - cut];
                kept.iter().sum::<f64>() / kept.len() as f64
            });
            (trimmed, Vec::new())
        }
        Rule::Krum => {
            let chosen = multi_krum(live, get);
            let outvoted = live
                .iter()
                .copied()
                .filter(|i| !chosen.contains(i))
                .collect();
            (mean(&chosen), outvoted)
        }
    }
}

fn weighted_mean<'a>(items: impl Iterator<Item = (&'a [f64], f64)>) -> Vec<f64> {
    let mut sum: Vec<f64> = Vec::new();
    let mut total = 0f64;
    for (d, w) in items {
        if sum.is_empty() {
            sum = vec![0.0; d.len()];
        }
        for (acc, x) in sum.iter_mut().zip(d) {
            *acc += x * w;
        }
        total += w;
    }
    if total > 0.0 {
        sum.iter_mut().for_each(|x| *x /= total);
    }
    sum
}

fn coordinate_wise<'a>(
    live: &[usize],
    len: usize,
    get: &impl Fn(usize) -> &'a [f64],
    pick: impl Fn(&[f64]) -> f64,
) -> Vec<f64> {
    let mut column = Vec::with_capacity(live.len());
    (0..len)
        .map(|j| {
            column.clear();
            column.extend(live.iter().map(|&i| get(i)[j]));
            column.sort_by(f64::total_cmp);
            pick(&column)
        })
        .collect()
}

/// Multi-Krum with f = a quarter of the updates (rounded down): scores each
/// update by the summed squared distances to its n - f - 2 nearest others
/// and keeps the n - f best. Below four updates it keeps them all.
fn multi_krum<'a>(live: &[usize], get: &impl Fn(usize) -> &'a [f64]) -> Vec<usize> {
    let n = live.len();
    let f = n / 4;
    if n < 4 || f == 0 {
        return live.to_vec();
    }
    let near = n - f - 2;
    let mut dist = vec![vec![0f64; n]; n];
    for a in 0..n {
        for b in a + 1..n {
            let d: f64 = get(live[a])
                .iter()
                .zip(get(live[b]))
                .map(|(x, y)| (x - y) * (x - y))
                .sum();
            dist[a][b] = d;
            dist[b][a] = d;
        }
    }
    let mut scores: Vec<(f64, usize)> = (0..n)
        .map(|a| {
            let mut others: Vec<f64> = (0..n).filter(|&b| b != a).map(|b| dist[a][b]).collect();
            others.sort_by(f64::total_cmp);
            (others[..near].iter().sum(), a)
        })
        .collect();
    scores.sort_by(|x, y| x.0.total_cmp(&y.0).then(x.1.cmp(&y.1)));
    let mut chosen: Vec<usize> = scores[..n - f].iter().map(|s| live[s.1]).collect();
    chosen.sort_unstable();
    chosen
}

/// The server optimizer's step along the combined update.
fn step(
    old: &[f32],
    delta: &[f64],
    s: &Settings,
    state: &mut ServerState,
) -> Result<Vec<f32>, SettleError> {
    let n = old.len();
    let fresh = |v: &mut Vec<f32>| -> Result<(), SettleError> {
        if v.is_empty() {
            *v = vec![0.0; n];
        }
        if v.len() == n {
            Ok(())
        } else {
            Err(SettleError::BadState)
        }
    };
    state.steps = state.steps.saturating_add(1);
    let out = match s.algorithm.step() {
        Step::Plain => old
            .iter()
            .zip(delta)
            .map(|(&o, d)| (f64::from(o) + s.server_lr * d) as f32)
            .collect(),
        Step::Momentum => {
            fresh(&mut state.m)?;
            old.iter()
                .zip(delta)
                .zip(state.m.iter_mut())
                .map(|((&o, d), m)| {
                    let mv = s.beta1 * f64::from(*m) + d;
                    *m = mv as f32;
                    (f64::from(o) + s.server_lr * mv) as f32
                })
                .collect()
        }
        Step::Adam => {
            fresh(&mut state.m)?;
            fresh(&mut state.v)?;
            old.iter()
                .zip(delta)
                .zip(state.m.iter_mut().zip(state.v.iter_mut()))
                .map(|((&o, d), (m, v))| {
                    let mv = s.beta1 * f64::from(*m) + (1.0 - s.beta1) * d;
                    let vv = s.beta2 * f64::from(*v) + (1.0 - s.beta2) * d * d;
                    *m = mv as f32;
                    *v = vv as f32;
                    (f64::from(o) + s.server_lr * mv / (vv.sqrt() + s.tau)) as f32
                })
                .collect()
        }
    };
    Ok(out)
}

/// SCAFFOLD's control variates: `c`, the estimate of the mean gradient,
/// and per task `c_i`, the estimate of its own. A task trains with
/// `c - c_i` added to every gradient; after it returns weights `y_i` from
/// global weights `x` in `K` steps of learning rate `lr`, its variate
/// becomes `c_i - c + (x - y_i) / (K · lr)` ("option II" of the paper,
/// computed by the satellite from what it sent and got back, so a node
/// reports nothing), and `c` moves by the changes combined with the job's
/// [`Rule`] (a Byzantine task must not steer everyone's correction),
/// scaled by the share of the job's records that took part.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Drift {
    pub c: Vec<f32>,
    pub tasks: std::collections::BTreeMap<u64, Vec<f32>>,
}

/// One task's share of a round for [`Drift::update`].
#[derive(Debug, Clone, Copy)]
pub struct DriftResult<'a> {
    /// The task's identity (any stable number).
    pub task: u64,
    pub weights: &'a [f32],
    /// Optimizer steps it took.
    pub steps: u64,
    /// Its share of the job's records.
    pub share: f64,
}

impl Drift {
    /// What task `task` adds to its gradients: `c - c_i`; `None` while
    /// both are zero (the first round).
    pub fn correction(&self, task: u64) -> Option<Vec<f32>> {
        if self.c.is_empty() {
            return None;
        }
        Some(match self.tasks.get(&task) {
            Some(ci) => self.c.iter().zip(ci).map(|(c, ci)| c - ci).collect(),
            None => self.c.clone(),
        })
    }

    /// Moves the variates after a round settled from `old` weights by
    /// `rule`; only the results the round used should be given (multi-Krum's
    /// chosen ones, whose changes are then averaged).
    pub fn update(&mut self, old: &[f32], results: &[DriftResult<'_>], lr: f64, rule: Rule) {
        let n = old.len();
        if !lr.is_finite() || lr <= 0.0 {
            return;
        }
        if self.c.len() != n {
            self.c = vec![0.0; n];
            self.tasks.clear();
        }
        let mut changes: Vec<(Vec<f64>, f64)> = Vec::with_capacity(results.len());
        for r in results {
            if r.steps == 0 || r.weights.len() != n || !(r.share.is_finite() && r.share > 0.0) {
                continue;
            }
            let scale = 1.0 / (r.steps as f64 * lr);
            let ci = self.tasks.entry(r.task).or_insert_with(|| vec![0.0; n]);
            let mut change = vec![0f64; n];
            for j in 0..n {
                let new = f64::from(ci[j]) - f64::from(self.c[j])
                    + (f64::from(old[j]) - f64::from(r.weights[j])) * scale;
                change[j] = new - f64::from(ci[j]);
                ci[j] = new as f32;
            }
            changes.push((change, r.share));
        }
        if changes.is_empty() {
            return;
        }
        let live: Vec<usize> = (0..changes.len()).collect();
        let rule = if rule == Rule::Krum { Rule::Mean } else { rule };
        let (combined, _) = combine(rule, &live, n, &|i| &changes[i].0, |i| changes[i].1);
        let took_part: f64 = changes.iter().map(|c| c.1).sum::<f64>().min(1.0);
        for (c, d) in self.c.iter_mut().zip(combined) {
            *c = (f64::from(*c) + d * took_part) as f32;
        }
    }

    /// What the variates of `tasks` tasks of a model of `params` weights
    /// take (in memory and stored), at most.
    pub fn bytes_for(tasks: usize, params: usize) -> u64 {
        (tasks as u64)
            .saturating_add(1)
            .saturating_mul((params as u64).saturating_mul(4).saturating_add(8))
    }

    /// `c`, then each task (id, variate), as little-endian u32 lengths,
    /// u64 ids and f32s.
    pub fn to_bytes(&self) -> Vec<u8> {
        let n = self.c.len();
        let mut out = Vec::with_capacity(8 + 4 * n * (1 + self.tasks.len()) + 8 * self.tasks.len());
        out.extend_from_slice(&(n as u32).to_le_bytes());
        out.extend_from_slice(&(self.tasks.len() as u32).to_le_bytes());
        out.extend(self.c.iter().flat_map(|x| x.to_le_bytes()));
        for (id, ci) in &self.tasks {
            out.extend_from_slice(&id.to_le_bytes());
            out.extend(ci.iter().flat_map(|x| x.to_le_bytes()));
        }
        out
    }

    pub fn from_bytes(b: &[u8]) -> Option<Self> {
        let (n, rest) = b.split_first_chunk::<4>()?;
        let (t, mut rest) = rest.split_first_chunk::<4>()?;
        let (n, t) = (
            u32::from_le_bytes(*n) as usize,
            u32::from_le_bytes(*t) as usize,
        );
        let floats = |rest: &mut &[u8]| -> Option<Vec<f32>> {
            let bytes = rest.get(..n.checked_mul(4)?)?;
            *rest = &rest[bytes.len()..];
            Some(
                bytes
                    .chunks_exact(4)
                    .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
                    .collect(),
            )
        };
        let c = floats(&mut rest)?;
        let mut tasks = std::collections::BTreeMap::new();
        for _ in 0..t {
            let (id, r) = rest.split_first_chunk::<8>()?;
            rest = r;
            tasks.insert(u64::from_le_bytes(*id), floats(&mut rest)?);
        }
        rest.is_empty().then_some(Self { c, tasks })
    }
}

/// The validation of one round's starting weights, summed over its tasks.
#[derive(Debug, Clone, Copy, PartialEq, Default)]
pub struct ValidationSum {
    loss_sum: f64,
    pub correct: u64,
    pub records: u64,
}

impl ValidationSum {
    /// Adds one task's figures (mean loss over `records` held-out records).
    pub fn add(&mut self, loss: f32, correct: u64, records: u64) {
        self.loss_sum += f64::from(loss) * records as f64;
        self.correct = self.correct.saturating_add(correct);
        self.records = self.records.saturating_add(records);
    }

    /// Mean cross-entropy over every held-out record; `None` without any.
    pub fn loss(&self) -> Option<f64> {
        (self.records > 0).then(|| self.loss_sum / self.records as f64)
    }

    pub fn accuracy(&self) -> Option<f64> {
        (self.records > 0).then(|| self.correct as f64 / self.records as f64)
    }
}

/// Where early stopping stands.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct EarlyStop {
    /// Rounds trained into the best weights so far, with their loss.
    pub best: Option<(u32, f64)>,
    /// Whether the job should stop now and keep the best weights.
    pub stop: bool,
}

/// Early stopping over a job's validation losses: `losses[r]` is the loss
/// of the weights after `r` rounds (`None` where no task held records
/// out). The best loss is the lowest one that beats the previous best by
/// more than 0.1%; the job stops once `patience` rounds have passed
/// without one. `patience` 0 never stops.
pub fn early_stop(losses: &[Option<f64>], patience: u32) -> EarlyStop {
    let mut best: Option<(u32, f64)> = None;
    for (r, loss) in losses.iter().enumerate() {
        let Some(l) = loss.filter(|l| l.is_finite()) else {
            continue;
        };
        if best.is_none_or(|(_, b)| l < b - 1e-3 * b.abs()) {
            best = Some((r as u32, l));
        }
    }
    let stop = patience > 0
        && best.is_some_and(|(r, _)| losses.len() as u64 > u64::from(r) + u64::from(patience));
    EarlyStop { best, stop }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn settle_all(
        old: &[f32],
        ws: &[Vec<f32>],
        settings: &Settings,
    ) -> Result<Settlement, SettleError> {
        let updates: Vec<Update<'_>> = ws
            .iter()
            .map(|w| Update {
                weights: w,
                samples: 10,
            })
            .collect();
        settle(old, &updates, settings, &mut ServerState::default())
    }

    #[test]
    fn fedavg_with_the_mean_is_the_sample_weighted_average() {
        let old = [0.0f32, 0.0];
        let a = [1.0f32, 2.0];
        let b = [4.0f32, -1.0];
        let updates = [
            Update {
                weights: &a,
                samples: 1,
            },
            Update {
                weights: &b,
                samples: 3,
            },
        ];
        let s = Settings::new(Algorithm::FedAvg, Rule::Mean);
        let out = settle(&old, &updates, &s, &mut ServerState::default()).expect("settle");
        assert_eq!(out.weights, [3.25, -0.25]);
        assert_eq!(out.verdicts, [Verdict::Used, Verdict::Used]);
    }

    #[test]
    fn malformed_and_far_out_updates_are_refused_not_averaged() {
        let old = vec![0.0f32; 3];
        let ws = vec![
            vec![0.1, 0.0, 0.0],
            vec![0.0, 0.12, 0.0],
            vec![0.0, 0.0, 0.09],
            vec![50.0, 0.0, 0.0],
            vec![f32::NAN, 0.0, 0.0],
            vec![0.1, 0.1],
        ];
        let out =
            settle_all(&old, &ws, &Settings::new(Algorithm::FedAvg, Rule::Mean)).expect("settle");
        let counted: Vec<bool> = out.verdicts.iter().map(Verdict::counted).collect();
        assert_eq!(counted, [true, true, true, false, false, false]);
        assert!(matches!(out.verdicts[3], Verdict::Screened(_)));
        assert!(matches!(out.verdicts[4], Verdict::Refused(_)));
        assert!(matches!(out.verdicts[5], Verdict::Refused(_)));
        assert!(
            out.weights.iter().all(|w| w.abs() < 0.05),
            "{:?}",
            out.weights
        );
        let none = settle_all(&old, &ws[3..], &Settings::default());
        assert!(none.is_ok(), "two well-formed updates are not screened");
        assert_eq!(
            settle_all(&old, &ws[4..], &Settings::default()),
            Err(SettleError::NothingAccepted)
        );
    }

    #[test]
    fn robust_rules_resist_a_byzantine_minority_and_the_mean_does_not() {
        // Three honest updates near +1 per coordinate, one sign-flipped
        // and scaled to pass the norm screen.
        let old = vec![0.0f32; 4];
        let honest = [
            vec![1.0f32, 0.9, 1.1, 1.0],
            vec![1.1, 1.0, 0.9, 1.0],
            vec![0.9, 1.1, 1.0, 1.1],
        ];
        let mut ws = honest.to_vec();
        ws.push(vec![-4.0, -4.0, -4.0, -4.0]);
        let err = |rule| {
            let out =
                settle_all(&old, &ws, &Settings::new(Algorithm::FedAvg, rule)).expect("settle");
            out.weights
                .iter()
                .map(|w| (w - 1.0).abs())
                .fold(0f32, f32::max)
        };
        assert!(
            err(Rule::Mean) > 1.0,
            "the mean is pulled off: {}",
            err(Rule::Mean)
        );
        for rule in [Rule::Median, Rule::TrimmedMean, Rule::Krum] {
            assert!(err(rule) < 0.2, "{rule}: {}", err(rule));
        }
        let krum =
            settle_all(&old, &ws, &Settings::new(Algorithm::FedAvg, Rule::Krum)).expect("krum");
        assert_eq!(krum.verdicts[3], Verdict::Outvoted);
        assert!(krum.verdicts[..3].iter().all(Verdict::counted));
    }

    #[test]
    fn near_convergence_small_updates_are_not_refused() {
        // Weights of norm 10; the round's updates are tiny, one is 20 times
        // the median but moves the weights by under 1 %.
        let old = vec![10.0f32, 0.0];
        let ws = vec![
            vec![10.001f32, 0.0],
            vec![10.0, 0.001],
            vec![10.001, 0.0],
            vec![10.0, 0.02],
            vec![10.5, 0.0],
        ];
        let out =
            settle_all(&old, &ws, &Settings::new(Algorithm::FedAvg, Rule::Mean)).expect("settle");
        let counted: Vec<bool> = out.verdicts.iter().map(Verdict::counted).collect();
        assert_eq!(counted, [true, true, true, true, false]);
    }

    #[test]
    fn clipping_shortens_long_updates_to_the_bound() {
        let old = vec![0.0f32; 2];
        let ws = vec![
            vec![1.0f32, 0.0],
            vec![0.0, 1.0],
            vec![1.0, 0.0],
            vec![3.0, 0.0],
        ];
        let mut s = Settings::new(Algorithm::FedAvg, Rule::Mean);
        s.clip = Some(1.5);
        let out = settle_all(&old, &ws, &s).expect("settle");
        assert_eq!(out.verdicts[3], Verdict::Clipped);
        // (1 + 0 + 1 + 1.5) / 4 and (0 + 1 + 0 + 0) / 4.
        assert_eq!(out.weights, [0.875, 0.25]);
    }

    #[test]
    fn server_momentum_and_adam_carry_state_between_rounds() {
        let old = vec![0.0f32; 2];
        let w = [vec![1.0f32, -1.0]];
        let mut s = Settings::new(Algorithm::FedAvgM, Rule::Mean);
        s.beta1 = 0.5; // the arithmetic below assumes half
        let mut st = ServerState::default();
        let u = [Update {
            weights: &w[0],
            samples: 1,
        }];
        let r1 = settle(&old, &u, &s, &mut st).expect("round 1");
        assert_eq!(r1.weights, [1.0, -1.0]);
        // The same update again from the new weights: momentum adds half
        // of the last step.
        let w2 = [2.0f32, -2.0];
        let u2 = [Update {
            weights: &w2,
            samples: 1,
        }];
        let r2 = settle(&r1.weights, &u2, &s, &mut st).expect("round 2");
        assert_eq!(r2.weights, [2.5, -2.5]);
        assert_eq!(st.steps, 2);
        let back = ServerState::from_bytes(&st.to_bytes()).expect("state bytes");
        assert_eq!(back, st);
        assert_eq!(ServerState::from_bytes(&st.to_bytes()[1..]), None);

        // Adam's first step moves every coordinate by about the server
        // learning rate, whatever the update's scale.
        let s = Settings::new(Algorithm::FedAdam, Rule::Mean);
        let mut st = ServerState::default();
        let big = [100.0f32, -0.001];
        let u = [Update {
            weights: &big,
            samples: 1,
        }];
        let r = settle(&old, &u, &s, &mut st).expect("adam");
        assert!(r.weights[0] > 0.0 && r.weights[1] < 0.0);
        let ratio = r.weights[0] / -r.weights[1];
        assert!(ratio < 20.0, "adaptive: {:?}", r.weights);
        // A state for another model is refused, not misused.
        let mut wrong = ServerState {
            m: vec![0.0; 5],
            ..Default::default()
        };
        assert_eq!(settle(&old, &u, &s, &mut wrong), Err(SettleError::BadState));
    }

    #[test]
    fn names_and_wire_values_round_trip() {
        for a in Algorithm::ALL {
            assert_eq!(a.name().parse::<Algorithm>(), Ok(a));
            assert_eq!(Algorithm::from_wire(a.wire()), Some(a));
        }
        for r in Rule::ALL {
            assert_eq!(r.name().parse::<Rule>(), Ok(r));
            assert_eq!(Rule::from_wire(r.wire()), Some(r));
        }
        assert_eq!(Algorithm::from_wire(0), Some(Algorithm::FedAvg));
        assert!("fedsgd".parse::<Algorithm>().is_err());
        let c = Choice {
            algorithm: Algorithm::FedAdam,
            rule: Rule::Krum,
            clip: Some(2.0),
        };
        assert_eq!(Choice::try_from(&crate::pb::Aggregation::from(&c)), Ok(c));
        // A job stored before the choice existed settles as it always did.
        let old = Choice::try_from(&crate::pb::Aggregation::default()).expect("old job");
        assert_eq!(
            (old.algorithm, old.rule, old.clip),
            (Algorithm::FedAvg, Rule::Mean, None)
        );
        for bad in [
            crate::pb::Aggregation {
                algorithm: 9,
                ..Default::default()
            },
            crate::pb::Aggregation {
                rule: 9,
                ..Default::default()
            },
            crate::pb::Aggregation {
                clip: f64::NAN,
                ..Default::default()
            },
            crate::pb::Aggregation {
                clip: 0.5,
                ..Default::default()
            },
        ] {
            assert!(Choice::try_from(&bad).is_err(), "{bad:?}");
        }
        assert!(Settings::default().validate().is_ok());
        let s = Settings {
            beta1: 1.0,
            ..Default::default()
        };
        assert!(s.validate().is_err());
    }

    #[test]
    fn early_stopping_waits_for_patience_and_keeps_the_best() {
        let l = |v: &[f64]| v.iter().map(|&x| Some(x)).collect::<Vec<_>>();
        // Improving: never stops.
        let e = early_stop(&l(&[2.0, 1.5, 1.0, 0.8]), 2);
        assert_eq!(
            e,
            EarlyStop {
                best: Some((3, 0.8)),
                stop: false
            }
        );
        // Best after 1 round, then two rounds no better: stops with patience 2.
        let e = early_stop(&l(&[2.0, 1.0, 1.2, 1.1]), 2);
        assert_eq!(
            e,
            EarlyStop {
                best: Some((1, 1.0)),
                stop: true
            }
        );
        assert!(!early_stop(&l(&[2.0, 1.0, 1.2, 1.1]), 3).stop);
        assert!(!early_stop(&l(&[2.0, 1.0, 1.2, 1.1]), 0).stop);
        // A gain under 0.1% is no improvement.
        let e = early_stop(&l(&[1.0, 0.9999, 0.9998]), 2);
        assert_eq!(
            e,
            EarlyStop {
                best: Some((0, 1.0)),
                stop: true
            }
        );
        // Rounds without validation neither improve nor count as best.
        let e = early_stop(&[None, Some(1.0), None, Some(f64::NAN)], 5);
        assert_eq!(e.best, Some((1, 1.0)));
        assert_eq!(
            early_stop(&[None, None], 1),
            EarlyStop {
                best: None,
                stop: false
            }
        );
        let mut v = ValidationSum::default();
        assert_eq!(v.loss(), None);
        v.add(1.0, 3, 4);
        v.add(2.0, 0, 1);
        assert_eq!(v.loss(), Some(6.0 / 5.0));
        assert_eq!(v.accuracy(), Some(0.6));
    }

    #[test]
    fn control_variates_follow_the_tasks_mean_drift() {
        let mut d = Drift::default();
        assert_eq!(d.correction(1), None);
        let old = [0.0f32, 0.0];
        // Task 1 moved by (-1, 0) in 2 steps of lr 0.5: its gradient
        // estimate is (1, 0); task 2's is (0, 1); equal shares.
        let (y1, y2) = ([-1.0f32, 0.0], [0.0f32, -1.0]);
        let r = |task, weights| DriftResult {
            task,
            weights,
            steps: 2,
            share: 0.5,
        };
        d.update(&old, &[r(1, &y1), r(2, &y2)], 0.5, Rule::Mean);
        assert_eq!(d.c, [0.5, 0.5]);
        assert_eq!(d.tasks[&1], [1.0, 0.0]);
        assert_eq!(d.correction(1), Some(vec![-0.5, 0.5]));
        assert_eq!(d.correction(2), Some(vec![0.5, -0.5]));
        // A task never seen gets c.
        assert_eq!(d.correction(3), Some(vec![0.5, 0.5]));
        let back = Drift::from_bytes(&d.to_bytes()).expect("bytes");
        assert_eq!(back, d);
        assert_eq!(Drift::from_bytes(&d.to_bytes()[1..]), None);
        assert_eq!(Drift::from_bytes(&[]), None);
    }

    #[test]
    fn a_byzantine_task_cannot_steer_the_control_variate_under_a_robust_rule() {
        // Three tasks estimate the gradient (1, 0); a fourth returns weights
        // that claim (-1000, 1000).
        let old = [0.0f32, 0.0];
        let honest = [-1.0f32, 0.0];
        let liar = [1000.0f32, -1000.0];
        let r = |task, weights| DriftResult {
            task,
            weights,
            steps: 1,
            share: 0.25,
        };
        let results = [r(1, &honest), r(2, &honest), r(3, &honest), r(4, &liar)];
        let mut mean = Drift::default();
        mean.update(&old, &results, 1.0, Rule::Mean);
        assert!(mean.c[0] < -100.0, "{:?}", mean.c);
        for rule in [Rule::Median, Rule::TrimmedMean] {
            let mut d = Drift::default();
            d.update(&old, &results, 1.0, rule);
            assert_eq!(d.c, [1.0, 0.0], "{rule}");
            // The liar's own variate is its business: only its correction
            // is off.
            assert_eq!(d.correction(1), Some(vec![0.0, 0.0]));
        }
        // Half the job's records took part: c moves half as far.
        let mut half = Drift::default();
        half.update(&old, &results[..2], 1.0, Rule::Median);
        assert_eq!(half.c, [0.5, 0.0]);
    }
}
