//! Compute jobs: training where the data lives.
//!
//! A job trains one registry model on one dataset with federated averaging.
//! Planning ([`Compute::plan`]) tells the uplink which nodes may run each
//! task, so that it can seal each piece's key to them; submission
//! ([`Compute::submit`]) stores the job and starts its driver. The driver
//! runs round after round: the [`scheduler::Round`] core places one task
//! per data piece on the node that holds it, the driver sends the global
//! weights there ([`pb::TrainRequest`]), collects the trained weights and
//! settles the round with the job's aggregation
//! ([`loam_common::federated::settle`]). The satellite sees weights, never
//! data or keys.
//!
//! Accounting hooks for later subsystems: every node's accepted work units
//! and failed verifications are kept by [`JobStore`].

pub mod scheduler;

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use futures::stream::{FuturesUnordered, StreamExt};
use loam_common::compute::{self as cc, ModelSpec, TrainParams, work_micro_units};
use loam_common::federated::{
    self, Choice, Drift, DriftResult, ServerState, Settings, Update, ValidationSum, Verdict,
    early_stop,
};
use loam_common::orders::{PieceAction, PieceId, now_ms};
use loam_common::transport::Endpoint as QuicEndpoint;
use loam_common::wire::{Frame, FrameReader, FrameWriter, MAX_DATA_FRAME_LEN};
use loam_common::{NodeId, pb};
use rand::seq::SliceRandom;
use rand::{Rng, SeedableRng};
use serde::{Deserialize, Serialize};
use tokio_util::sync::CancellationToken;

use crate::db::{DbError, Kv};
use crate::metainfo::{Metainfo, MetainfoError, ProjectId};
use crate::overlay::{Node, Overlay};
use scheduler::{Assignment, NodeView, Output, Round, TaskPlan};

/// Compute settings, the `[compute]` table of the satellite's config.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct ComputeConfig {
    /// Share of tasks re-executed by a second node each round, when the
    /// job does not say. Default 0.1.
    pub verify_fraction: f64,
    /// Largest relative weight difference two runs of one task may have
    /// and still agree. Default 1e-5.
    pub tolerance: f64,
    /// The same for GPU jobs (`--device gpu`): GPU kernels sum in an
    /// order of their own, so two GPUs (or two runs on one) differ in the
    /// last bits and more after many steps. Default 1e-3.
    pub gpu_tolerance: f64,
    /// An update whose norm is more than this many times the round's
    /// median is rejected. Default 10.
    pub norm_factor: f64,
    /// Nodes a task's key is sealed to (the holder and the nodes that may
    /// rebuild). Default 6.
    pub candidates: usize,
    /// Seconds one task may run before it is given up. Default 600.
    pub task_timeout_secs: f64,
    /// Most rounds a job may ask for. Default 1000.
    pub max_rounds: u32,
    /// Nodes a listing's keys are sealed to per task at publish: more than
    /// for a job, since they must last while the owner is away. Default 10.
    pub listing_candidates: usize,
    /// Most MiB of SCAFFOLD control variates a job may keep (one per task
    /// and one for the job, each as large as the model). Default 512.
    pub max_drift_mib: u64,
}

impl Default for ComputeConfig {
    fn default() -> Self {
        Self {
            verify_fraction: 0.1,
            tolerance: 1e-5,
            gpu_tolerance: 1e-3,
            norm_factor: 10.0,
            candidates: 6,
            task_timeout_secs: 600.0,
            max_rounds: 1000,
            listing_candidates: 10,
            max_drift_mib: 512,
        }
    }
}

#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ComputeError {
    #[error(transparent)]
    Metainfo(#[from] MetainfoError),
    #[error(transparent)]
    Db(#[from] DbError),
    #[error("the dataset is not opted in to compute; run `uplink dataset compute on` on it first")]
    NotOptedIn,
    #[error("no node can run task (segment {segment}, row {row}): {why}")]
    NoNode { segment: u32, row: u32, why: String },
    #[error("bad job: {0}")]
    BadJob(String),
    #[error(
        "no online node offers a GPU (--device gpu); train on the CPU (--device cpu) or wait for GPU nodes"
    )]
    NoGpu,
    #[error("job not found")]
    JobNotFound,
    /// A listing's terms or state refuse the job (one line, naming it).
    #[error("{0}")]
    Refused(String),
    #[error("{0}")]
    SpendLimit(String),
}

impl ComputeError {
    pub fn code(&self) -> pb::ErrorCode {
        use pb::ErrorCode as C;
        match self {
            Self::Metainfo(e) => e.code(),
            Self::Db(_) => C::Internal,
            Self::NotOptedIn => C::FailedPrecondition,
            Self::NoNode { .. } | Self::NoGpu => C::Unavailable,
            Self::BadJob(_) => C::InvalidArgument,
            Self::JobNotFound => C::NotFound,
            Self::Refused(_) => C::FailedPrecondition,
            Self::SpendLimit(_) => C::ResourceExhausted,
        }
    }
}

impl From<cc::SpecError> for ComputeError {
    fn from(e: cc::SpecError) -> Self {
        Self::BadJob(e.to_string())
    }
}

use crate::satellitedb::jobs::{FinishedRound, JobId, JobStore, NodeCredit, is_running};

/// A data row of a dataset: (segment, row), with the records it holds.
pub type DataRow = ((u32, u32), u64);

/// The non-empty data rows of a dataset with their committed record
/// counts: the tasks every job on it must have.
pub fn data_rows(
    metainfo: &Metainfo,
    obj: &pb::ObjectRecord,
) -> Result<Vec<DataRow>, ComputeError> {
    let mut out = Vec::new();
    for s in 0..obj.segment_count {
        let meta = metainfo.segment(obj, s)?.meta.unwrap_or_default();
        if meta.row_records.len() != meta.row_sizes.len() {
            return Err(ComputeError::BadJob(
                "the dataset has no record counts (uploaded by an older uplink); upload it again"
                    .into(),
            ));
        }
        for (row, &size) in meta.row_sizes.iter().enumerate() {
            if size > 0 {
                out.push(((s, row as u32), meta.row_records[row]));
            }
        }
    }
    Ok(out)
}

/// The sum of record counts, checked.
fn record_count(counts: impl IntoIterator<Item = u64>) -> Result<u64, ComputeError> {
    counts
        .into_iter()
        .try_fold(0u64, u64::checked_add)
        .ok_or_else(|| DbError::Overflow("a dataset's record count").into())
}

/// Checks that `tasks` are exactly the dataset's `rows`, each with keys
/// for valid node ids.
pub fn check_task_keys(rows: &[DataRow], tasks: &[pb::TaskKeys]) -> Result<(), ComputeError> {
    let want: HashSet<(u32, u32)> = rows.iter().map(|r| r.0).collect();
    let mut got = HashSet::new();
    for t in tasks {
        if t.keys.is_empty()
            || t.keys
                .iter()
                .any(|k| NodeId::try_from(k.node_id.as_ref()).is_err())
        {
            return Err(ComputeError::BadJob(format!(
                "task (segment {}, row {}) has no usable keys",
                t.segment, t.row
            )));
        }
        got.insert((t.segment, t.row));
    }
    if got != want || got.len() != tasks.len() {
        return Err(ComputeError::BadJob(
            "the tasks do not match the dataset's rows; plan the job again".into(),
        ));
    }
    Ok(())
}

/// How long connecting to a node for a task may take.
const DIAL_TIMEOUT: Duration = Duration::from_secs(5);

/// A running job: how to stop it and its latest state.
struct Live {
    cancel: CancellationToken,
    /// Fired when this process lost the job's lease (another process
    /// drives it now): the driver stops without ending the job.
    lost: CancellationToken,
    info: pb::JobInfo,
    /// The job's record as this driver last wrote (or read) it: a round
    /// commits only if the database still holds exactly that, so a driver
    /// that lost its lease without noticing cannot commit (or charge) a
    /// round over its successor's.
    written: Vec<u8>,
}

/// Pauses before a round in which no task got through is tried again
/// (then it fails the job).
const ROUND_RETRY_PAUSES: [Duration; 3] = [
    Duration::from_secs(5),
    Duration::from_secs(10),
    Duration::from_secs(20),
];

/// How long a job driver's lease lasts; the driver renews it at a third of
/// that, and a job whose driver died is resumed elsewhere once it lapses.
pub const JOB_LEASE: Duration = Duration::from_secs(15);

fn job_lease(job_id: &JobId) -> String {
    format!("job:{}", hex::encode(job_id))
}

pub struct Compute {
    /// Jobs, their weights and round state, compute nodes' counters.
    jobs: JobStore,
    /// What projects are charged (written with each round).
    charges: crate::satellitedb::charges::ChargeStore,
    metainfo: Arc<Metainfo>,
    overlay: Arc<Overlay>,
    endpoint: QuicEndpoint,
    config: ComputeConfig,
    /// Tasks in flight per node, over all jobs.
    busy: Mutex<HashMap<NodeId, usize>>,
    /// Nodes whose last run failed, with their last check-in before it:
    /// they get no task until they check in again.
    failed: Mutex<HashMap<NodeId, i64>>,
    live: Mutex<HashMap<JobId, Live>>,
    /// Bumped whenever a job finishes a round or ends.
    changes: tokio::sync::watch::Sender<u64>,
    shutdown: CancellationToken,
    /// Failed verifications count as failed audits.
    reputation: std::sync::OnceLock<Arc<crate::audit::Reputation>>,
    /// What projects are charged for compute and egress.
    rates: std::sync::OnceLock<Rates>,
    /// Job driver leases: one process drives a job at a time.
    leases: crate::lease::Leases,
}

/// Charge rates, from the satellite's payout rates: a project pays for the
/// compute and egress of its jobs what the nodes are paid for them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Rates {
    /// Base units per work unit.
    pub per_work_unit: u64,
    /// Base units per TB of piece bytes fetched.
    pub egress_per_tb: u64,
}

impl From<&crate::payouts::PayoutConfig> for Rates {
    fn from(c: &crate::payouts::PayoutConfig) -> Self {
        Self {
            per_work_unit: c.per_work_unit,
            egress_per_tb: c.egress_per_tb,
        }
    }
}

impl Compute {
    pub fn new(
        kv: Arc<dyn Kv>,
        metainfo: Arc<Metainfo>,
        overlay: Arc<Overlay>,
        endpoint: QuicEndpoint,
        config: ComputeConfig,
        shutdown: CancellationToken,
    ) -> Self {
        Self {
            jobs: JobStore::new(kv.clone()),
            charges: crate::satellitedb::charges::ChargeStore::new(kv.clone()),
            metainfo,
            overlay,
            endpoint,
            config,
            busy: Mutex::default(),
            failed: Mutex::default(),
            live: Mutex::default(),
            changes: tokio::sync::watch::channel(0).0,
            shutdown,
            reputation: std::sync::OnceLock::new(),
            rates: std::sync::OnceLock::new(),
            leases: crate::lease::Leases::new(kv),
        }
    }

    /// Sets the rates jobs are charged at (the payout rates).
    pub fn set_rates(&self, rates: Rates) {
        let _ = self.rates.set(rates);
    }

    fn rates(&self) -> Rates {
        self.rates
            .get()
            .copied()
            .unwrap_or_else(|| Rates::from(&crate::payouts::PayoutConfig::default()))
    }

    /// Lets failed verifications count against nodes' reputation.
    pub fn set_reputation(&self, reputation: Arc<crate::audit::Reputation>) {
        let _ = self.reputation.set(reputation);
    }

    /// Online nodes in good standing (not suspended) that offer compute,
    /// and a GPU for a GPU job.
    fn compute_nodes(&self, now: i64, device: pb::Device) -> Vec<Node> {
        self.overlay
            .list()
            .into_iter()
            .filter(|n| {
                self.overlay.is_selectable(n, now)
                    && n.capabilities.compute_enabled
                    && n.capabilities.max_tasks > 0
                    && (device == pb::Device::Cpu || n.capabilities.adapter.is_some())
            })
            .collect()
    }

    fn dataset(
        &self,
        project: &ProjectId,
        bucket: &str,
        encrypted_key: &[u8],
    ) -> Result<pb::ObjectRecord, ComputeError> {
        let obj = self
            .metainfo
            .object_record(project, bucket, encrypted_key)?;
        if !obj.dataset {
            return Err(MetainfoError::NotADataset.into());
        }
        if !obj.compute_enabled {
            return Err(ComputeError::NotOptedIn);
        }
        Ok(obj)
    }

    /// Which nodes may run each task of a job on the dataset.
    pub fn plan(
        &self,
        project: &ProjectId,
        req: &pb::PlanJobRequest,
    ) -> Result<pb::PlanJobResponse, ComputeError> {
        let obj = self.dataset(project, &req.bucket, &req.encrypted_key)?;
        let device = device_of(req.device)?;
        let nodes = self.compute_nodes(now_ms(), device);
        if nodes.is_empty() && device == pb::Device::Gpu {
            return Err(ComputeError::NoGpu);
        }
        let want = if req.listing {
            self.config.listing_candidates
        } else {
            self.config.candidates
        };
        let mut resp = pb::PlanJobResponse::default();
        for s in 0..obj.segment_count {
            let seg = self.metainfo.segment(&obj, s)?;
            let meta = seg.meta.clone().unwrap_or_default();
            for (row, &size) in meta.row_sizes.iter().enumerate() {
                if size <= 0 {
                    continue;
                }
                let row = row as u32;
                let candidates = self.candidates(&seg, row, &nodes, want);
                if candidates.is_empty() {
                    return Err(ComputeError::NoNode {
                        segment: s,
                        row,
                        why: if nodes.is_empty() {
                            "no node online offers compute".into()
                        } else {
                            "no node that offers compute can reach the piece".into()
                        },
                    });
                }
                resp.tasks.push(pb::TaskPlan {
                    segment: s,
                    row,
                    candidates: candidates
                        .iter()
                        .map(|n| pb::Candidate {
                            node_id: n.id.as_bytes().to_vec().into(),
                            public_key: n.public_key.as_bytes().to_vec().into(),
                        })
                        .collect(),
                });
            }
            resp.segments.push(meta);
        }
        if resp.tasks.is_empty() {
            return Err(ComputeError::BadJob("the dataset has no records".into()));
        }
        Ok(resp)
    }

    /// The fewest nodes online and offering compute that hold a key to one
    /// task of `tasks` (0 when a task can run nowhere without the owner).
    pub fn key_holders_online(&self, tasks: &[pb::TaskKeys], device: pb::Device) -> u32 {
        let online: HashSet<NodeId> = self
            .compute_nodes(now_ms(), device)
            .iter()
            .map(|n| n.id)
            .collect();
        tasks
            .iter()
            .map(|t| {
                t.keys
                    .iter()
                    .filter(|k| {
                        NodeId::try_from(k.node_id.as_ref()).is_ok_and(|id| online.contains(&id))
                    })
                    .count() as u32
            })
            .min()
            .unwrap_or(0)
    }

    /// The holder of data row `row` if it computes, then other compute
    /// nodes: those holding other pieces of the segment first.
    fn candidates(
        &self,
        seg: &pb::SegmentRecord,
        row: u32,
        nodes: &[Node],
        want: usize,
    ) -> Vec<Node> {
        let holder = holder_of(seg, row);
        let holds: HashSet<NodeId> = seg
            .pieces
            .iter()
            .filter_map(|p| NodeId::try_from(p.node_id.as_ref()).ok())
            .collect();
        let mut out: Vec<Node> = Vec::new();
        if let Some(h) = holder.and_then(|h| nodes.iter().find(|n| n.id == h)) {
            out.push(h.clone());
        }
        let mut rest: Vec<&Node> = nodes.iter().filter(|n| Some(n.id) != holder).collect();
        // In an order no node can predict or buy: shuffled with the
        // satellite's own randomness, then nodes already holding a piece of
        // the segment first (the sort is stable). Claimed cores or GPUs do
        // not rank a node: a Sybil claiming huge numbers would otherwise be
        // chosen to rebuild and verify, and be handed the row keys.
        rest.shuffle(&mut rand::thread_rng());
        rest.sort_by_key(|n| !holds.contains(&n.id));
        out.extend(
            rest.into_iter()
                .take(want.saturating_sub(out.len()))
                .cloned(),
        );
        out
    }

    /// Stores a job and starts it: on the submitter's own dataset, or on
    /// listings (`req.listings`) under each listing's terms.
    pub fn submit(
        self: &Arc<Self>,
        project: &ProjectId,
        req: &pb::SubmitJobRequest,
    ) -> Result<pb::JobInfo, ComputeError> {
        // A job that stops by validation asks for its most rounds: the
        // satellite's limit (and a listing's terms, below) lower it
        // instead of refusing it.
        let mut req = req.clone();
        if req.patience > 0 {
            req.rounds = req.rounds.min(self.config.max_rounds);
        }
        let req = &mut req;
        let spec = ModelSpec::try_from(
            req.spec
                .as_ref()
                .ok_or_else(|| ComputeError::BadJob("no model".into()))?,
        )?;
        let params = TrainParams::try_from(
            req.params
                .as_ref()
                .ok_or_else(|| ComputeError::BadJob("no hyperparameters".into()))?,
        )?;
        if !(1..=self.config.max_rounds).contains(&req.rounds) {
            return Err(ComputeError::BadJob(format!(
                "rounds must be 1..={}",
                self.config.max_rounds
            )));
        }
        if req.patience > MAX_PATIENCE {
            return Err(ComputeError::BadJob(format!(
                "patience must be 0..={MAX_PATIENCE} rounds"
            )));
        }
        if req.patience > 0 && params.validation == 0 {
            return Err(ComputeError::BadJob(
                "a job that stops by validation must hold records out for it".into(),
            ));
        }
        if !(req.verify_fraction < 0.0 || req.verify_fraction <= 1.0) {
            return Err(ComputeError::BadJob(
                "verify fraction must be in 0..=1".into(),
            ));
        }
        let aggregation = match &req.aggregation {
            Some(a) => Choice::try_from(a).map_err(ComputeError::BadJob)?,
            None => Choice::default(),
        };
        let device = device_of(req.device)?;
        // Per dataset, the records the satellite counted: what the job can
        // cost at most.
        let (mut record, records) = if req.listings.is_empty() {
            let obj = self.dataset(project, &req.bucket, &req.encrypted_key)?;
            let rows = data_rows(&self.metainfo, &obj)?;
            check_task_keys(&rows, &req.tasks)?;
            let record = pb::JobRecord {
                version: 1,
                // Provisional: where job_datasets finds the bucket.
                info: Some(pb::JobInfo {
                    bucket: req.bucket.clone(),
                    ..Default::default()
                }),
                project_id: project.to_vec().into(),
                encrypted_key: req.encrypted_key.clone(),
                tasks: req.tasks.clone(),
                verify_fraction: if req.verify_fraction < 0.0 {
                    self.config.verify_fraction
                } else {
                    req.verify_fraction
                },
                ..Default::default()
            };
            (record, vec![record_count(rows.iter().map(|r| r.1))?])
        } else {
            let (record, records) = self.market_job(req, &spec)?;
            let record = pb::JobRecord {
                project_id: project.to_vec().into(),
                ..record
            };
            (record, records)
        };
        let datasets = job_datasets(&record);
        if device == pb::Device::Gpu {
            if self.compute_nodes(now_ms(), device).is_empty() {
                return Err(ComputeError::NoGpu);
            }
            let tasks: Vec<pb::TaskKeys> = datasets.iter().flat_map(|d| d.tasks.clone()).collect();
            if self.key_holders_online(&tasks, device) == 0 {
                return Err(ComputeError::BadJob(
                    "a task's keys are sealed to no online node that offers a GPU".into(),
                ));
            }
        }
        aggregation
            .algorithm
            .check_optimizer(params.optimizer)
            .map_err(ComputeError::BadJob)?;
        if aggregation.algorithm.corrects_drift() {
            let tasks: usize = datasets.iter().map(|d| d.tasks.len()).sum();
            let bytes = Drift::bytes_for(tasks, spec.params());
            if bytes > self.config.max_drift_mib << 20 {
                return Err(ComputeError::BadJob(format!(
                    "scaffold keeps a correction as large as the model for each of the job's \
                     {tasks} tasks: {} MiB, over this satellite's {} MiB; use --algorithm \
                     fedavgm, a smaller model, or larger segments",
                    bytes >> 20,
                    self.config.max_drift_mib
                )));
            }
        }
        self.check_spend(project, &datasets, &records, &spec, &params, req.rounds)?;
        let job_id: JobId = rand::random();
        let info = pb::JobInfo {
            job_id: job_id.to_vec().into(),
            state: pb::JobState::JobRunning as i32,
            spec: Some((&spec).into()),
            params: Some((&params).into()),
            rounds: req.rounds,
            patience: req.patience,
            device: device as i32,
            tasks_total: datasets.iter().map(|d| d.tasks.len() as u32).sum(),
            created_unix_ms: now_ms(),
            owner_note: req.owner_note.clone(),
            bucket: req.bucket.clone(),
            listings: req.listings.clone(),
            aggregation: Some((&aggregation).into()),
            ..Default::default()
        };
        record.info = Some(info.clone());
        let written = self.jobs.create(
            &job_id,
            &record,
            cc::weights_to_bytes(&spec.init_weights(params.seed)),
        )?;
        // A new id: nobody else holds its lease.
        self.leases.hold(&job_lease(&job_id), JOB_LEASE, now_ms())?;
        for id in &req.listings {
            if let Err(e) = self.metainfo.market().record_job(id, info.created_unix_ms) {
                tracing::warn!(listing = hex::encode(id), error = %e, "cannot count a listing's job");
            }
        }
        metrics::counter!("loam_satellite_jobs_submitted_total").increment(1);
        self.start(job_id, record, written);
        Ok(info)
    }

    /// The record of a job on listings, every listing's terms checked:
    /// each refusal is one line naming the listing.
    fn market_job(
        &self,
        req: &mut pb::SubmitJobRequest,
        spec: &ModelSpec,
    ) -> Result<(pb::JobRecord, Vec<u64>), ComputeError> {
        const MAX_LISTINGS: usize = 64;
        if !req.bucket.is_empty() || !req.encrypted_key.is_empty() || !req.tasks.is_empty() {
            return Err(ComputeError::BadJob(
                "a job on listings names no dataset and carries no keys of its own".into(),
            ));
        }
        let mut seen = HashSet::new();
        if req.listings.len() > MAX_LISTINGS || !req.listings.iter().all(|l| seen.insert(l)) {
            return Err(ComputeError::BadJob(format!(
                "a job names 1 to {MAX_LISTINGS} different listings"
            )));
        }
        let now = now_ms();
        let refuse = |id: &[u8], why: String| {
            ComputeError::Refused(format!("listing market:{}: {why}", hex::encode(id)))
        };
        let mut datasets = Vec::new();
        let mut records = Vec::new();
        let mut first: Option<pb::Listing> = None;
        let mut required_verify = 0.0f64;
        for id in &req.listings {
            let rec = self.metainfo.market().record(id).map_err(|e| match e {
                crate::market::MarketError::NotFound(_) => {
                    refuse(id, "no such listing (see `uplink market ls`)".into())
                }
                e => ComputeError::BadJob(e.to_string()),
            })?;
            let l = rec.listing.clone().unwrap_or_default();
            if l.kind != "dataset" {
                return Err(refuse(
                    id,
                    "a model listing: evaluate it with `uplink model eval`, train on datasets"
                        .into(),
                ));
            }
            let terms = l.terms.clone().unwrap_or_default();
            if l.unpublished_unix_ms != 0 {
                return Err(refuse(
                    id,
                    format!(
                        "unpublished by its owner at {}; it takes no new jobs",
                        loam_common::time::format_instant(l.unpublished_unix_ms)
                    ),
                ));
            }
            if terms.expires_unix_ms != 0 && terms.expires_unix_ms <= now {
                return Err(refuse(
                    id,
                    format!(
                        "expired at {}; it takes no new jobs",
                        loam_common::time::format_instant(terms.expires_unix_ms)
                    ),
                ));
            }
            let arch = spec.architecture.to_string();
            if !terms.allowed_models.is_empty() && !terms.allowed_models.contains(&arch) {
                return Err(refuse(
                    id,
                    format!(
                        "its terms allow only {} models, not {arch}",
                        terms.allowed_models.join(",")
                    ),
                ));
            }
            if terms.max_rounds != 0 && req.patience > 0 {
                req.rounds = req.rounds.min(terms.max_rounds);
            }
            if terms.max_rounds != 0 && req.rounds > terms.max_rounds {
                return Err(refuse(
                    id,
                    format!(
                        "its terms allow at most {} rounds; this job asks for {}",
                        terms.max_rounds, req.rounds
                    ),
                ));
            }
            if terms.min_records_per_task != 0
                && let Some(fewest) = rec.row_records.iter().copied().min()
                && fewest < terms.min_records_per_task
            {
                return Err(refuse(
                    id,
                    format!(
                        "its terms ask for at least {} records per task, and one of its data \
                         pieces holds {fewest}",
                        terms.min_records_per_task
                    ),
                ));
            }
            if req.verify_fraction >= 0.0 && req.verify_fraction < terms.require_verification {
                return Err(refuse(
                    id,
                    format!(
                        "its terms ask for at least {} of tasks re-executed for verification; \
                         this job asks for {}",
                        terms.require_verification, req.verify_fraction
                    ),
                ));
            }
            required_verify = required_verify.max(terms.require_verification);
            if let Some(f) = &first {
                if l.columns_digest != f.columns_digest || l.label != f.label {
                    return Err(refuse(
                        id,
                        format!(
                            "its feature columns or label differ from market:{}'s; a job \
                             across listings needs the same columns",
                            hex::encode(&f.id)
                        ),
                    ));
                }
                if l.classes != f.classes {
                    return Err(refuse(
                        id,
                        format!(
                            "its classes ({}) differ from market:{}'s ({})",
                            l.classes.join(","),
                            hex::encode(&f.id),
                            f.classes.join(",")
                        ),
                    ));
                }
            }
            if spec.inputs != l.features as usize || spec.classes != l.classes.len() {
                return Err(refuse(
                    id,
                    format!(
                        "the model takes {} features and {} classes; the listing has {} and {}",
                        spec.inputs,
                        spec.classes,
                        l.features,
                        l.classes.len()
                    ),
                ));
            }
            let project = ProjectId::try_from(rec.project_id.as_ref())
                .map_err(|_| DbError::Corrupt("listing's project"))?;
            self.dataset(&project, &rec.bucket, &rec.encrypted_key)
                .map_err(|e| refuse(id, format!("its dataset cannot be used: {e}")))?;
            if rec.tasks.is_empty() {
                return Err(refuse(
                    id,
                    "its owner sealed no keys to computing nodes; the owner must run `uplink \
                     dataset reseal` on it"
                        .into(),
                ));
            }
            records.push(record_count(rec.row_records.iter().copied())?);
            datasets.push(pb::JobDataset {
                listing_id: id.clone(),
                project_id: rec.project_id.clone(),
                bucket: rec.bucket.clone(),
                encrypted_key: rec.encrypted_key.clone(),
                tasks: rec.tasks.clone(),
                key_tag: rec.key_tag.clone(),
                price_per_1000: l.price_per_1000,
                terms: Some(terms),
                ..Default::default()
            });
            first.get_or_insert(l);
        }
        let features = spec.inputs;
        let scaling_ok = req.scaling_mean.len() == features
            && req.scaling_std.len() == features
            && req.scaling_mean.iter().all(|m| m.is_finite())
            && req.scaling_std.iter().all(|s| s.is_finite() && *s > 0.0);
        if !scaling_ok {
            return Err(ComputeError::BadJob(format!(
                "a job on listings carries the feature scaling: {features} means and {features} \
                 positive standard deviations"
            )));
        }
        let record = pb::JobRecord {
            version: 1,
            verify_fraction: if req.verify_fraction < 0.0 {
                self.config.verify_fraction.max(required_verify)
            } else {
                req.verify_fraction
            },
            datasets,
            scaling_mean: req.scaling_mean.clone(),
            scaling_std: req.scaling_std.clone(),
            ..Default::default()
        };
        Ok((record, records))
    }

    /// The most a job can cost its project: every task accepted in every
    /// round (data fees and compute; egress only happens when pieces are
    /// rebuilt, and is checked round by round).
    fn max_cost(
        &self,
        datasets: &[pb::JobDataset],
        records: &[u64],
        spec: &ModelSpec,
        params: &TrainParams,
        rounds: u32,
    ) -> u64 {
        let rates = self.rates();
        let mut total = 0u128;
        for (d, &records) in datasets.iter().zip(records) {
            let se = u128::from(records) * params.local_epochs as u128 * u128::from(rounds);
            let micro = work_micro_units(
                spec.work_per_record(),
                u64::try_from(se).unwrap_or(u64::MAX),
            )
            .map_or(u128::MAX, u128::from);
            total = total
                .saturating_add((se * u128::from(d.price_per_1000)).div_ceil(1000))
                .saturating_add(
                    (micro.saturating_mul(u128::from(rates.per_work_unit))).div_ceil(1_000_000),
                );
        }
        u64::try_from(total).unwrap_or(u64::MAX)
    }

    /// Refuses a job that could take the project past its monthly spending
    /// limit.
    fn check_spend(
        &self,
        project: &ProjectId,
        datasets: &[pb::JobDataset],
        records: &[u64],
        spec: &ModelSpec,
        params: &TrainParams,
        rounds: u32,
    ) -> Result<(), ComputeError> {
        let limit = self.metainfo.project_record(project)?.spend_limit;
        if limit == 0 {
            return Ok(());
        }
        let used = self.month_charges(project)?;
        let cost = self.max_cost(datasets, records, spec, params, rounds);
        if used.saturating_add(cost) > limit {
            return Err(ComputeError::SpendLimit(format!(
                "this job may cost up to {cost} base units and the project has {} of its \
                 monthly spending limit of {limit} left; use fewer rounds or ask the satellite \
                 operator to raise the limit",
                limit.saturating_sub(used)
            )));
        }
        Ok(())
    }

    /// What the project was charged this month.
    pub fn month_charges(&self, project: &ProjectId) -> Result<u64, ComputeError> {
        let month = crate::metainfo::month_of(now_ms());
        let (from, _) = crate::metainfo::month_range(&month).unwrap_or((0, i64::MAX));
        Ok(self.charges.project_total(project, from)?)
    }

    /// Starts driving, from its last finished round, every running job that
    /// no process drives: those running when the satellite stopped, and
    /// those whose driver (another satellite process on the same database)
    /// died and let its lease lapse. Called at start and every third of
    /// [`JOB_LEASE`].
    pub fn resume_jobs(self: &Arc<Self>) -> Result<usize, ComputeError> {
        let mut n = 0;
        for id in self.jobs.running()? {
            if self.live.lock().expect("jobs lock").contains_key(&id) {
                continue;
            }
            if !self.leases.hold(&job_lease(&id), JOB_LEASE, now_ms())? {
                continue;
            }
            let rec = match self.jobs.job(&id)? {
                Some(rec) if is_running(&rec) => rec,
                ended => {
                    // Ended between the index and the record.
                    match self.jobs.forget_running(&id, ended.as_ref()) {
                        Ok(()) | Err(DbError::Conflict) => {}
                        Err(e) => return Err(e.into()),
                    }
                    self.leases.release(&job_lease(&id))?;
                    continue;
                }
            };
            let raw = rec.raw().to_vec();
            self.start(id, rec.into_inner(), raw);
            n += 1;
        }
        Ok(n)
    }

    /// Drives a job this process holds the lease of.
    fn start(self: &Arc<Self>, job_id: JobId, record: pb::JobRecord, written: Vec<u8>) {
        let cancel = self.shutdown.child_token();
        let lost = CancellationToken::new();
        self.live.lock().expect("jobs lock").insert(
            job_id,
            Live {
                cancel: cancel.clone(),
                lost: lost.clone(),
                info: record.info.clone().unwrap_or_default(),
                written,
            },
        );
        // Renews the lease while the job runs, and hears of a cancellation
        // asked for at another process.
        let keeper = {
            let (this, cancel, lost) = (self.clone(), cancel.clone(), lost.clone());
            tokio::spawn(async move {
                loop {
                    tokio::select! {
                        _ = cancel.cancelled() => return,
                        _ = tokio::time::sleep(JOB_LEASE / 3) => {}
                    }
                    match this.leases.hold(&job_lease(&job_id), JOB_LEASE, now_ms()) {
                        Ok(true) => {}
                        Ok(false) => {
                            tracing::warn!(
                                job = hex::encode(job_id),
                                "another satellite process took this job over"
                            );
                            lost.cancel();
                            cancel.cancel();
                            return;
                        }
                        Err(e) => {
                            tracing::warn!(job = hex::encode(job_id), error = %e, "cannot renew the job's lease")
                        }
                    }
                    if let Ok(true) = this.jobs.cancel_asked(&job_id) {
                        cancel.cancel();
                        return;
                    }
                }
            })
        };
        let this = self.clone();
        tokio::spawn(async move {
            this.drive(job_id, record, cancel, lost).await;
            keeper.abort();
        });
    }

    fn record(&self, job_id: &[u8]) -> Result<pb::JobRecord, ComputeError> {
        Ok(self
            .jobs
            .job(job_id)?
            .ok_or(ComputeError::JobNotFound)?
            .into_inner())
    }

    /// The dataset a job of `project` trains on in the project: (bucket,
    /// encrypted key); `None` for a job on listings, which touches no path
    /// of the project.
    pub fn job_path(
        &self,
        project: &ProjectId,
        job_id: &[u8],
    ) -> Result<Option<(String, Vec<u8>)>, ComputeError> {
        let rec = self.record(job_id)?;
        if rec.project_id.as_ref() != project {
            return Err(ComputeError::JobNotFound);
        }
        if !rec.datasets.is_empty() {
            return Ok(None);
        }
        let bucket = rec.info.map(|i| i.bucket).unwrap_or_default();
        Ok(Some((bucket, rec.encrypted_key.to_vec())))
    }

    /// A job of `project`, live state first.
    pub fn job(&self, project: &ProjectId, job_id: &[u8]) -> Result<pb::JobInfo, ComputeError> {
        let rec = self.record(job_id)?;
        if rec.project_id.as_ref() != project {
            return Err(ComputeError::JobNotFound);
        }
        if let Ok(id) = JobId::try_from(job_id)
            && let Some(l) = self.live.lock().expect("jobs lock").get(&id)
        {
            return Ok(l.info.clone());
        }
        Ok(rec.info.unwrap_or_default())
    }

    /// Jobs running now, and jobs ever submitted (counted a page of index
    /// keys at a time, never loading the jobs).
    pub fn job_counts(&self) -> Result<(u64, u64), ComputeError> {
        let total = self.jobs.count()?;
        let running = self.live.lock().expect("jobs lock").len() as u64;
        Ok((running, total))
    }

    /// A project's jobs, oldest first, through the project's job index.
    pub fn list(&self, project: &ProjectId) -> Result<Vec<pb::JobInfo>, ComputeError> {
        let mut out = self
            .jobs
            .of_project(project)?
            .iter()
            .map(|id| self.job(project, id))
            .collect::<Result<Vec<_>, _>>()?;
        out.sort_by_key(|j| j.created_unix_ms);
        Ok(out)
    }

    pub fn cancel(&self, project: &ProjectId, job_id: &[u8]) -> Result<pb::JobInfo, ComputeError> {
        let info = self.job(project, job_id)?;
        if info.state == pb::JobState::JobRunning as i32 {
            // Heard by the driver wherever it runs.
            self.jobs.ask_cancel(job_id)?;
        }
        if let Ok(id) = JobId::try_from(job_id)
            && let Some(l) = self.live.lock().expect("jobs lock").get(&id)
        {
            l.cancel.cancel();
        }
        Ok(info)
    }

    /// Up to 512 KiB of a job's current weights from `offset` (bytes).
    pub fn weights(
        &self,
        project: &ProjectId,
        req: &pb::JobWeightsRequest,
    ) -> Result<pb::JobWeightsResponse, ComputeError> {
        self.job(project, &req.job_id)?;
        let w = self
            .jobs
            .weights(&req.job_id)?
            .ok_or(ComputeError::JobNotFound)?;
        let start = (req.offset as usize).min(w.len());
        let end = (start + (512 << 10)).min(w.len());
        Ok(pb::JobWeightsResponse {
            weights: w[start..end].to_vec().into(),
            total: w.len() as u64,
        })
    }

    /// Compute accounting of every node that ran tasks.
    pub fn node_stats(&self) -> Result<HashMap<NodeId, pb::ComputeStats>, ComputeError> {
        Ok(self.jobs.node_stats()?)
    }

    fn publish(&self, job_id: &JobId, info: &pb::JobInfo) {
        if let Some(l) = self.live.lock().expect("jobs lock").get_mut(job_id) {
            l.info = info.clone();
        }
        self.changes.send_modify(|n| *n += 1);
    }

    /// Resolves with the job's state once `done` holds for it (checked at
    /// every finished round and at the job's end).
    pub async fn wait_job(
        &self,
        job_id: &[u8],
        done: impl Fn(&pb::JobInfo) -> bool,
    ) -> pb::JobInfo {
        let mut rx = self.changes.subscribe();
        loop {
            let current = self.record(job_id).ok().and_then(|rec| {
                let live = JobId::try_from(job_id).ok().and_then(|id| {
                    self.live
                        .lock()
                        .expect("jobs lock")
                        .get(&id)
                        .map(|l| l.info.clone())
                });
                live.or(rec.info)
            });
            if let Some(info) = current.filter(|i| done(i)) {
                return info;
            }
            if rx.changed().await.is_err() {
                return current_or_default(self.record(job_id).ok());
            }
        }
    }

    async fn drive(
        self: Arc<Self>,
        job_id: JobId,
        mut record: pb::JobRecord,
        cancel: CancellationToken,
        lost: CancellationToken,
    ) {
        let result = self.run_job(&job_id, &mut record, &cancel).await;
        let info = record.info.get_or_insert_with(Default::default);
        info.tasks_running = 0;
        match result {
            Ok(()) => info.state = pb::JobState::JobDone as i32,
            Err(_) if self.shutdown.is_cancelled() || lost.is_cancelled() => {
                // Left running in the database: resumed at the next start,
                // or driven on by the process that holds its lease now.
                self.live.lock().expect("jobs lock").remove(&job_id);
                if !lost.is_cancelled() {
                    let _ = self.leases.release(&job_lease(&job_id));
                }
                return;
            }
            Err(e) if cancel.is_cancelled() => {
                info.state = pb::JobState::JobCancelled as i32;
                info.error = e;
            }
            Err(e) => {
                tracing::warn!(job = hex::encode(job_id), error = %e, "job failed");
                info.state = pb::JobState::JobFailed as i32;
                info.error = e;
            }
        }
        info.finished_unix_ms = now_ms();
        let state = info.state;
        // The round-to-round state (server optimizer, best weights, control
        // variates) goes with the job's end; the weights stay.
        let last = self
            .live
            .lock()
            .expect("jobs lock")
            .get(&job_id)
            .map(|l| l.written.clone());
        match self.jobs.finish(&job_id, last.as_deref(), &record) {
            Ok(()) => {}
            Err(DbError::Conflict) => tracing::warn!(
                job = hex::encode(job_id),
                "the job's end was not stored: another satellite process drives it now"
            ),
            Err(e) => tracing::error!(error = %e, "cannot store the job's end"),
        }
        if let Err(e) = self.leases.release(&job_lease(&job_id)) {
            tracing::warn!(error = %e, "cannot release the job's lease");
        }
        metrics::counter!("loam_satellite_jobs_finished_total", "state" => pb::JobState::try_from(state).map_or("unknown", |s| s.as_str_name())).increment(1);
        self.live.lock().expect("jobs lock").remove(&job_id);
        self.changes.send_modify(|n| *n += 1);
    }

    async fn run_job(
        &self,
        job_id: &JobId,
        record: &mut pb::JobRecord,
        cancel: &CancellationToken,
    ) -> Result<(), String> {
        let info = record.info.clone().unwrap_or_default();
        let spec = info
            .spec
            .as_ref()
            .and_then(|s| ModelSpec::try_from(s).ok())
            .ok_or("stored job has a bad model")?;
        let params = info
            .params
            .as_ref()
            .and_then(|p| TrainParams::try_from(p).ok())
            .ok_or("stored job has bad hyperparameters")?;
        let project = ProjectId::try_from(record.project_id.as_ref())
            .map_err(|_| "stored job has a bad project")?;
        let mut weights = self
            .jobs
            .weights(job_id)
            .map_err(|e| e.to_string())?
            .and_then(|b| cc::weights_from_bytes(&b))
            .filter(|w| w.len() == spec.params())
            .ok_or("stored job has no weights")?;
        // A job stored before there was a choice has none: plain FedAvg.
        let settings = Choice::try_from(&info.aggregation.unwrap_or_default())?
            .settings(self.config.norm_factor);
        let stored = self.jobs.round_state(job_id).map_err(|e| e.to_string())?;
        let mut state = match stored.server_state {
            Some(b) => ServerState::from_bytes(&b).ok_or("stored job has a bad server state")?,
            None => ServerState::default(),
        };
        // SCAFFOLD's control variates, kept beside the weights.
        let mut drift = if settings.algorithm.corrects_drift() {
            match stored.drift {
                Some(b) => {
                    Some(Drift::from_bytes(&b).ok_or("stored job has bad control variates")?)
                }
                None => Some(Drift::default()),
            }
        } else {
            None
        };
        let datasets = job_datasets(record);
        for round in info.round..info.rounds {
            let mut objs = Vec::with_capacity(datasets.len());
            for d in &datasets {
                let owner = ProjectId::try_from(d.project_id.as_ref())
                    .map_err(|_| "stored job has a bad dataset project")?;
                let whose = if d.listing_id.is_empty() {
                    "the dataset".to_string()
                } else {
                    format!(
                        "the dataset of listing market:{}",
                        hex::encode(&d.listing_id)
                    )
                };
                let obj = self
                    .metainfo
                    .object_record(&owner, &d.bucket, &d.encrypted_key)
                    .map_err(|e| format!("{whose} is gone: {e}"))?;
                if !obj.compute_enabled {
                    return Err(format!("{whose} was opted out of compute"));
                }
                objs.push(obj);
            }
            self.check_round_spend(&project)?;
            let t0 = Instant::now();
            let ctx = RoundCtx {
                job_id: *job_id,
                round,
                spec: &spec,
                params: &params,
                weights: &weights,
                drift: drift.as_ref(),
                objs: &objs,
                datasets: &datasets,
                record,
            };
            let (mut outcome, mut sent_bytes, mut max_train_ms) =
                self.run_round(&ctx, cancel).await?;
            // A round in which no task got through (every holder briefly
            // offline, a satellite process failing over) is tried again a
            // few times, after a pause, before it fails the job.
            for pause in ROUND_RETRY_PAUSES {
                if !outcome.accepted.is_empty() {
                    break;
                }
                tracing::info!(
                    job = hex::encode(job_id),
                    round = round + 1,
                    "no task of the round got through; trying the round again in {pause:?}"
                );
                tokio::select! {
                    _ = cancel.cancelled() => return Err("cancelled".into()),
                    _ = tokio::time::sleep(pause) => {}
                }
                (outcome, sent_bytes, max_train_ms) = self.run_round(&ctx, cancel).await?;
            }
            let stop;
            (weights, stop) = self.settle_round(
                job_id,
                record,
                &spec,
                (
                    &weights,
                    &settings,
                    &mut state,
                    drift.as_mut().map(|d| (d, &params)),
                ),
                outcome,
                round,
                t0,
                sent_bytes,
                max_train_ms,
            )?;
            if stop {
                break;
            }
        }
        Ok(())
    }

    /// Stops a job whose project has reached its monthly spending limit.
    fn check_round_spend(&self, project: &ProjectId) -> Result<(), String> {
        let limit = self
            .metainfo
            .project_record(project)
            .map_err(|e| e.to_string())?
            .spend_limit;
        if limit == 0 {
            return Ok(());
        }
        let used = self.month_charges(project).map_err(|e| e.to_string())?;
        if used >= limit {
            return Err(format!(
                "the project reached its monthly spending limit ({used} of {limit} base units)"
            ));
        }
        Ok(())
    }

    /// Settles one round (see [`loam_common::federated::settle`]) and
    /// accounts it; returns the new weights, and whether the job stops
    /// early (its weights are then the best by validation). The server
    /// optimizer's state is written with the weights.
    #[allow(clippy::too_many_arguments)]
    fn settle_round(
        &self,
        job_id: &JobId,
        record: &mut pb::JobRecord,
        spec: &ModelSpec,
        (old, settings, state, drift): (
            &[f32],
            &Settings,
            &mut ServerState,
            Option<(&mut Drift, &TrainParams)>,
        ),
        mut outcome: scheduler::RoundOutcome,
        round: u32,
        t0: Instant,
        sent_bytes: u64,
        max_train_ms: i64,
    ) -> Result<(Vec<f32>, bool), String> {
        let db = |e: DbError| e.to_string();
        // In task order, whatever order the results came in: the same job
        // settles to the same bits.
        outcome.accepted.sort_by_key(|a| a.0);
        let updates: Vec<Update<'_>> = outcome
            .accepted
            .iter()
            .map(|a| Update {
                weights: &a.2.weights,
                samples: a.2.samples,
            })
            .collect();
        let settled = federated::settle(old, &updates, settings, state)
            .map_err(|e| format!("round {}: {e}", round + 1))?;
        let new = settled.weights;
        // Refused (malformed) updates count against their node and are not
        // paid; updates a robust rule outvoted or the norm screen left out
        // are paid (an honest update can be the odd one out, or spike) but
        // not averaged: re-execution is what proves a node wrong.
        let mut rejected = 0u32;
        let mut kept = Vec::new();
        let mut counted = Vec::new();
        let mut drift_bytes = None;
        for (verdict, (task, node, out)) in
            settled.verdicts.into_iter().zip(outcome.accepted.drain(..))
        {
            match verdict {
                Verdict::Refused(why) => {
                    rejected += 1;
                    tracing::warn!(job = hex::encode(job_id), node = %node.short(), ?task, %why, "update refused");
                    outcome.verification_failures.push(node);
                    outcome.credited.retain(|c| c.0 != node);
                }
                Verdict::Outvoted => {
                    tracing::info!(job = hex::encode(job_id), node = %node.short(), ?task, "update outvoted by the aggregation rule");
                    kept.push((task, node, out));
                    counted.push(false);
                }
                Verdict::Screened(why) => {
                    tracing::info!(job = hex::encode(job_id), node = %node.short(), ?task, %why, "update left out by the norm screen");
                    kept.push((task, node, out));
                    counted.push(false);
                }
                Verdict::Used | Verdict::Clipped => {
                    kept.push((task, node, out));
                    counted.push(true);
                }
            }
        }
        let samples = kept
            .iter()
            .try_fold(0u64, |acc, k| acc.checked_add(k.2.samples))
            .ok_or("sample counts overflow")?;
        if let Some((drift, params)) = drift {
            // The variates of the tasks whose updates went into the new
            // weights move; `c` by their share of the job (a round some
            // tasks missed moves it less).
            let tasks_total = record
                .info
                .as_ref()
                .map_or(0, |i| i.tasks_total)
                .max(kept.len() as u32);
            let used: Vec<DriftResult<'_>> = kept
                .iter()
                .zip(&counted)
                .filter(|(_, c)| **c)
                .map(|((task, _, out), _)| DriftResult {
                    task: drift_task(*task),
                    weights: &out.weights,
                    steps: cc::local_steps(out.samples, params),
                    share: out.samples as f64 / samples.max(1) as f64 * kept.len() as f64
                        / f64::from(tasks_total.max(1)),
                })
                .collect();
            drift.update(old, &used, params.learning_rate, settings.rule);
            drift_bytes = Some(drift.to_bytes());
        }
        let mean = |f: fn(&Output) -> f32| {
            (kept
                .iter()
                .map(|k| f64::from(f(&k.2)) * k.2.samples as f64)
                .sum::<f64>()
                / samples.max(1) as f64) as f32
        };
        let charge = self.charge_round(job_id, record, spec, &kept, round)?;
        // Credited with the round's commit (none if this driver is stale).
        let mut credits: BTreeMap<NodeId, NodeCredit> = BTreeMap::new();
        let mut units = 0.0;
        for (node, s) in &outcome.credited {
            let micro =
                work_micro_units(spec.work_per_record(), *s).ok_or("work units overflow")?;
            units += micro as f64 / 1e6;
            let c = credits.entry(*node).or_default();
            c.micro_units = c
                .micro_units
                .checked_add(micro)
                .ok_or("work units overflow")?;
            c.tasks_accepted += 1;
        }
        for node in &outcome.verification_failures {
            metrics::counter!("loam_satellite_compute_verification_failures_total").increment(1);
            credits.entry(*node).or_default().verification_failures += 1;
            if let Some(r) = self.reputation.get() {
                r.record(node, crate::audit::Outcome::Failure).map_err(db)?;
            }
        }
        for node in &outcome.failed_runs {
            credits.entry(*node).or_default().tasks_failed += 1;
        }
        // The weights this round started from, as the tasks' held-out
        // records judge them (every task that trained, outvoted or not:
        // they all measured the same weights).
        let mut val = ValidationSum::default();
        for (_, _, o) in &kept {
            val.add(o.val_loss, o.val_correct, o.val_records);
        }
        let duration_ms = t0.elapsed().as_millis() as i64;
        let info = record.info.get_or_insert_with(Default::default);
        info.history.push(pb::RoundInfo {
            val_loss: val.loss().unwrap_or(0.0) as f32,
            val_accuracy: val.accuracy().unwrap_or(0.0) as f32,
            val_records: val.records,
            round: round + 1,
            loss: mean(|o| o.loss),
            accuracy: mean(|o| o.accuracy),
            samples,
            tasks_accepted: kept.len() as u32,
            tasks_rejected: rejected + outcome.failed_tasks as u32,
            weight_bytes: sent_bytes,
            duration_ms,
            coordination_ms: (duration_ms - max_train_ms).max(0),
            train_ms: kept.iter().map(|k| k.2.train_ms).sum(),
        });
        info.round = round + 1;
        info.tasks_done += kept.len() as u64;
        info.tasks_failed += (outcome.failed_runs.len() + outcome.failed_tasks) as u64;
        info.work_units += units;
        info.samples = info.samples.saturating_add(samples);
        info.dataset_bytes_fetched += outcome.bytes_fetched_train;
        info.verify_bytes_fetched += outcome.bytes_fetched_verify;
        info.weight_bytes += sent_bytes;
        info.verification_failures += outcome.verification_failures.len() as u64;
        info.tasks_verified += outcome.verified_tasks as u64;
        info.tasks_running = 0;
        let data_fees: u64 = charge.data.iter().map(|d| d.amount).sum();
        info.data_fees = info.data_fees.saturating_add(data_fees);
        info.compute_charged = info.compute_charged.saturating_add(charge.compute_amount);
        info.egress_charged = info.egress_charged.saturating_add(charge.egress_amount);
        // Early stopping on the validation curve: the weights after
        // `history[r].round - 1` rounds were judged in entry `r`.
        let losses: Vec<Option<f64>> = info
            .history
            .iter()
            .map(|h| (h.val_records > 0).then_some(f64::from(h.val_loss)))
            .collect();
        let early = early_stop(&losses, info.patience);
        let mut best_weights = None;
        if let Some((best, _)) = early.best {
            if best == round && info.patience > 0 {
                best_weights = Some(cc::weights_to_bytes(old));
            }
            info.best_round = best;
        }
        let mut new = new;
        if early.stop {
            let best = early.best.map_or(0, |b| b.0);
            new = if best == round {
                old.to_vec()
            } else {
                self.jobs
                    .best_weights(job_id)
                    .map_err(db)?
                    .and_then(|b| cc::weights_from_bytes(&b))
                    .filter(|w| w.len() == old.len())
                    .ok_or("the job's best weights are missing")?
            };
            info.stopped_early = format!(
                "validation loss did not improve for {} rounds; kept the weights after round {best}",
                info.patience
            );
        }
        let last = self
            .live
            .lock()
            .expect("jobs lock")
            .get(job_id)
            .map(|l| l.written.clone());
        let round_left = FinishedRound {
            weights: cc::weights_to_bytes(&new),
            server_state: state.to_bytes(),
            drift: drift_bytes,
            best: best_weights,
            charge: Some(&charge),
            credits,
            at_ms: now_ms(),
        };
        let written = match self
            .jobs
            .commit_round(job_id, last.as_deref(), record, round_left)
        {
            Ok(written) => written,
            Err(DbError::Conflict) => {
                // Someone else committed a round of this job: this driver
                // is stale. It stops; the job goes on where it is driven.
                if let Some(l) = self.live.lock().expect("jobs lock").get(job_id) {
                    l.lost.cancel();
                    l.cancel.cancel();
                }
                return Err("another satellite process drives this job now".into());
            }
            Err(e) => return Err(db(e)),
        };
        if let Some(l) = self.live.lock().expect("jobs lock").get_mut(job_id) {
            l.written = written;
        }
        self.publish(job_id, record.info.as_ref().expect("set above"));
        metrics::counter!("loam_satellite_compute_rounds_total").increment(1);
        Ok((new, early.stop))
    }

    /// What one round costs the job's project: per listing, the data fee
    /// of its accepted tasks' sample-epochs; the compute of the accepted
    /// runs; the piece bytes they fetched. Verification runs and rejected
    /// tasks are not charged. Updates the job's carried remainders and
    /// returns the charge with the writes that record it.
    fn charge_round(
        &self,
        job_id: &JobId,
        record: &mut pb::JobRecord,
        spec: &ModelSpec,
        kept: &[(scheduler::TaskId, NodeId, Output)],
        round: u32,
    ) -> Result<pb::ChargeRecord, String> {
        let db = |e: DbError| e.to_string();
        let rates = self.rates();
        let mut micro = 0u64;
        let mut fetched = 0u64;
        for (_, _, out) in kept {
            micro = work_micro_units(spec.work_per_record(), out.samples)
                .and_then(|m| micro.checked_add(m))
                .ok_or("work units overflow")?;
            fetched = fetched.saturating_add(out.bytes_fetched);
        }
        let (compute_amount, carry) =
            crate::charges::carried(record.compute_carry, micro, rates.per_work_unit, 1_000_000)
                .map_err(db)?;
        record.compute_carry = carry;
        let (egress_amount, carry) = crate::charges::carried(
            record.egress_carry,
            fetched,
            rates.egress_per_tb,
            1_000_000_000_000,
        )
        .map_err(db)?;
        record.egress_carry = carry;
        let mut charge = pb::ChargeRecord {
            job_id: job_id.to_vec().into(),
            round: round + 1,
            unix_ms: now_ms(),
            work_micro_units: micro,
            compute_amount,
            egress_bytes: fetched,
            egress_amount,
            ..Default::default()
        };
        for (d, ds) in record.datasets.iter_mut().enumerate() {
            let se = kept
                .iter()
                .filter(|k| k.0.0 == d as u32)
                .try_fold(0u64, |acc, k| acc.checked_add(k.2.samples))
                .ok_or("sample-epochs overflow")?;
            if se == 0 || ds.listing_id.is_empty() {
                continue;
            }
            let (fee, carry) =
                crate::charges::carried(ds.fee_carry, se, ds.price_per_1000, 1000).map_err(db)?;
            ds.fee_carry = carry;
            ds.sample_epochs = ds
                .sample_epochs
                .checked_add(se)
                .ok_or("sample-epochs overflow")?;
            ds.fees = ds.fees.checked_add(fee).ok_or("fees overflow")?;
            charge.data.push(pb::DataFee {
                listing_id: ds.listing_id.clone(),
                owner_project: ds.project_id.clone(),
                sample_epochs: se,
                amount: fee,
                downloads: 0,
            });
        }
        charge.total = charge
            .data
            .iter()
            .map(|d| d.amount)
            .chain([compute_amount, egress_amount])
            .try_fold(0u64, u64::checked_add)
            .ok_or("charges overflow")?;
        Ok(charge)
    }

    fn node_view(&self, now: i64, device: pb::Device) -> NodeView {
        let busy = self.busy.lock().expect("busy lock");
        let mut failed = self.failed.lock().expect("failed lock");
        let mut view = NodeView::default();
        for n in self.compute_nodes(now, device) {
            match failed.get(&n.id) {
                Some(&seen) if n.last_seen_ms <= seen => continue,
                Some(_) => {
                    failed.remove(&n.id);
                }
                None => {}
            }
            let used = busy.get(&n.id).copied().unwrap_or(0);
            view.free_slots.insert(
                n.id,
                (n.capabilities.max_tasks as usize).saturating_sub(used),
            );
            view.online.insert(n.id);
        }
        view
    }

    /// A node claimed something about its task that the satellite knows to
    /// be false: a failed verification, with what that costs.
    fn record_misreport(&self, node: NodeId) {
        metrics::counter!("loam_satellite_compute_verification_failures_total").increment(1);
        if let Err(e) = self.jobs.account(&node, |st| st.verification_failures += 1) {
            tracing::error!(error = %e, "cannot account a verification failure");
        }
        if let Some(r) = self.reputation.get()
            && let Err(e) = r.record(&node, crate::audit::Outcome::Failure)
        {
            tracing::error!(error = %e, "cannot record a verification failure");
        }
    }

    fn mark_failed(&self, node: NodeId) {
        let seen = self.overlay.get(&node).map_or(0, |n| n.last_seen_ms);
        self.failed.lock().expect("failed lock").insert(node, seen);
    }

    fn set_busy(&self, node: NodeId, delta: isize) {
        let mut busy = self.busy.lock().expect("busy lock");
        let e = busy.entry(node).or_insert(0);
        *e = e.saturating_add_signed(delta);
    }

    /// Runs one round to completion; returns its outcome, the weight bytes
    /// moved and the busiest node's training time.
    async fn run_round(
        &self,
        ctx: &RoundCtx<'_>,
        cancel: &CancellationToken,
    ) -> Result<(scheduler::RoundOutcome, u64, i64), String> {
        let mut plans = Vec::new();
        // What each task is worth, from the records the dataset's segments
        // hold: a node's own count is only checked against it.
        let mut expected: HashMap<scheduler::TaskId, (u64, u64)> = HashMap::new();
        for (d, (ds, obj)) in ctx.datasets.iter().zip(ctx.objs).enumerate() {
            let d = d as u32;
            for t in &ds.tasks {
                let seg = self
                    .metainfo
                    .segment(obj, t.segment)
                    .map_err(|e| e.to_string())?;
                expected.insert(
                    (d, t.segment, t.row),
                    task_samples(&seg, t.segment, t.row, ctx.params)
                        .map_err(|e| format!("segment {}: {e}", t.segment))?,
                );
                plans.push(TaskPlan {
                    id: (d, t.segment, t.row),
                    holder: holder_of(&seg, t.row),
                    candidates: t
                        .keys
                        .iter()
                        .filter_map(|k| NodeId::try_from(k.node_id.as_ref()).ok())
                        .collect(),
                });
            }
        }
        let task_count = plans.len();
        // Which tasks are re-executed, and by whom, is drawn from the
        // satellite's own randomness: the job's seed is sent to every node,
        // so anything derived from it would tell a node whether its task
        // will be checked.
        let mut rng = rand::rngs::StdRng::from_entropy();
        let verify: Vec<bool> = plans
            .iter()
            .map(|_| rng.gen_bool(ctx.record.verify_fraction.clamp(0.0, 1.0)))
            .collect();
        let device = job_device(ctx.record);
        let tolerance = match device {
            pb::Device::Cpu => self.config.tolerance,
            pb::Device::Gpu => self.config.gpu_tolerance,
        };
        let mut round = Round::new(plans, &verify, tolerance as f32).with_seed(rng.r#gen());
        let weight_bytes = cc::weights_to_bytes(ctx.weights);
        // Each task's drift correction (none in a SCAFFOLD job's first
        // round); a verifying run gets the same as the run it checks.
        let corrections: HashMap<scheduler::TaskId, Vec<u8>> = match ctx.drift {
            Some(drift) => expected
                .keys()
                .filter_map(|&t| Some((t, cc::weights_to_bytes(&drift.correction(drift_task(t))?))))
                .collect(),
            None => HashMap::new(),
        };
        let mut sent = 0u64;
        // Training time per node this round: the busiest node's total is
        // the round's critical path; the rest of the round is coordination.
        let mut node_train: HashMap<NodeId, i64> = HashMap::new();
        // Declared before the runs so that it is dropped after them: every
        // way out of this function (the end of the round, a cancel, an
        // error) gives the slots this round took back.
        let mut slots = Slots {
            compute: self,
            held: HashMap::new(),
        };
        let mut inflight = FuturesUnordered::new();
        let mut tick = tokio::time::interval(Duration::from_millis(250));
        loop {
            let now = now_ms();
            let mut view = self.node_view(now, device);
            let free_before: usize = view.free_slots.values().sum();
            let online = view.online.len();
            for a in round.assign(&mut view) {
                slots.take(a.node);
                let correction = corrections.get(&a.task).map(Vec::as_slice);
                sent += 2 * weight_bytes.len() as u64 + correction.map_or(0, |c| c.len() as u64);
                let wb = &weight_bytes;
                inflight.push(async move {
                    let r = tokio::time::timeout(
                        Duration::from_secs_f64(self.config.task_timeout_secs.max(1.0)),
                        self.run_task(ctx, &a, wb, correction),
                    )
                    .await
                    .unwrap_or_else(|_| Err("task timed out".into()));
                    (a, r)
                });
            }
            if round.is_complete() {
                let _ = self.publish_progress(ctx, &round, String::new());
                break;
            }
            let waiting = if round.running() == 0 {
                format!(
                    "{} of {} tasks wait for a node: none that holds or may rebuild their data \
                     has a free compute slot ({} compute nodes online, {} free slots)",
                    round.open(),
                    task_count,
                    online,
                    free_before
                )
            } else {
                String::new()
            };
            if self.publish_progress(ctx, &round, waiting.clone()) && !waiting.is_empty() {
                tracing::info!(job = hex::encode(ctx.job_id), "{waiting}");
            }
            tokio::select! {
                Some((a, r)) = inflight.next() => {
                    slots.release(a.node);
                    let (want, want_val) = expected.get(&a.task).copied().unwrap_or((0, 0));
                    let r = match r {
                        Ok(o) if o.samples != want => {
                            tracing::warn!(node = %a.node.short(), task = ?a.task, reported = o.samples, expected = want, "node misreported the samples of a task");
                            self.record_misreport(a.node);
                            Err(format!("reported {} samples, the task has {want}", o.samples))
                        }
                        Ok(o) if o.val_records != want_val
                            || o.val_correct > o.val_records
                            || !(o.val_loss.is_finite() && o.val_loss >= 0.0) => {
                            tracing::warn!(node = %a.node.short(), task = ?a.task, records = o.val_records, correct = o.val_correct, loss = o.val_loss, expected = want_val, "node misreported the validation of a task");
                            self.record_misreport(a.node);
                            Err(format!(
                                "reported {} of {} held-out records right (loss {}), the task holds out {want_val}",
                                o.val_correct, o.val_records, o.val_loss
                            ))
                        }
                        r => r,
                    };
                    if let Err(e) = &r {
                        tracing::info!(node = %a.node.short(), task = ?a.task, purpose = ?a.purpose, error = %e, "task failed");
                        self.mark_failed(a.node);
                    }
                    if let Ok(o) = &r {
                        *node_train.entry(a.node).or_insert(0) += o.train_ms;
                    }
                    round.on_result(a.task, a.node, a.purpose, r);
                }
                _ = tick.tick() => {
                    // Nodes that stopped checking in lose their tasks.
                    let view = self.node_view(now_ms(), device);
                    let gone: Vec<NodeId> = self
                        .busy
                        .lock()
                        .expect("busy lock")
                        .keys()
                        .filter(|n| !view.online.contains(n) && round.running_on(n) > 0)
                        .copied()
                        .collect();
                    for n in gone {
                        tracing::info!(node = %n.short(), "node went offline during a task");
                        self.mark_failed(n);
                        round.on_node_lost(n);
                    }
                }
                _ = cancel.cancelled() => {
                    return Err("cancelled".into());
                }
            }
        }
        // Runs the round no longer waits for (their node was declared
        // gone) are dropped, which resets their streams; free their slots.
        drop(inflight);
        drop(slots);
        let busiest = node_train.values().copied().max().unwrap_or(0);
        Ok((round.finish(), sent, busiest))
    }

    /// Publishes the running count and why the job waits; returns whether
    /// the reason changed.
    fn publish_progress(&self, ctx: &RoundCtx<'_>, round: &Round, waiting: String) -> bool {
        let changed = match self.live.lock().expect("jobs lock").get_mut(&ctx.job_id) {
            Some(l) => {
                let changed = l.info.waiting != waiting;
                l.info.tasks_running = round.running() as u32;
                l.info.waiting = waiting;
                changed
            }
            None => false,
        };
        if changed {
            self.changes.send_modify(|n| *n += 1);
        }
        changed
    }

    /// Busy compute slots of every node, over all jobs.
    pub fn busy_slots(&self) -> HashMap<NodeId, usize> {
        self.busy
            .lock()
            .expect("busy lock")
            .iter()
            .filter(|(_, n)| **n > 0)
            .map(|(id, n)| (*id, *n))
            .collect()
    }

    /// Sends one task to its node and reads the trained weights back.
    async fn run_task(
        &self,
        ctx: &RoundCtx<'_>,
        a: &Assignment,
        weights: &[u8],
        correction: Option<&[u8]>,
    ) -> Result<Output, String> {
        let node = self.overlay.get(&a.node).ok_or("node unknown")?;
        let (d, segment, row) = a.task;
        let ds = ctx.datasets.get(d as usize).ok_or("task unknown")?;
        let obj = ctx.objs.get(d as usize).ok_or("task unknown")?;
        let keys = ds
            .tasks
            .iter()
            .find(|t| (t.segment, t.row) == (segment, row))
            .ok_or("task unknown")?;
        let sealed = keys
            .keys
            .iter()
            .find(|k| k.node_id.as_ref() == a.node.as_bytes())
            .ok_or("no key sealed to the node")?
            .sealed
            .clone();
        let seg = self
            .metainfo
            .segment(obj, segment)
            .map_err(|e| e.to_string())?;
        let meta = seg.meta.clone().unwrap_or_default();
        let mut req = pb::TrainRequest {
            job_id: ctx.job_id.to_vec().into(),
            round: ctx.round,
            segment,
            row,
            key_tag: ds.key_tag.clone(),
            scaling_mean: ctx.record.scaling_mean.clone(),
            scaling_std: ctx.record.scaling_std.clone(),
            spec: Some(ctx.spec.into()),
            params: Some(ctx.params.into()),
            weights_len: weights.len() as u64,
            correction_len: correction.map_or(0, |c| c.len() as u64),
            sealed_key: sealed,
            redundancy: seg.redundancy,
            piece_size: meta.piece_size,
            purpose: a.purpose.wire(),
            device: job_device(ctx.record) as i32,
            ..Default::default()
        };
        if a.rebuild {
            let limits = self
                .metainfo
                .segment_limits(&seg, PieceAction::GetRepair, a.exclude);
            req.rebuild_limits = limits
                .limits
                .into_iter()
                .filter(|l| l.node_id.as_ref() != a.node.as_bytes())
                .collect();
            req.piece_private_key = limits.piece_private_key;
        } else {
            let root = PieceId::try_from(seg.root_piece_id.as_ref()).map_err(|_| "bad segment")?;
            req.piece_id = PieceId::derive(&root, &a.node, row)
                .as_bytes()
                .to_vec()
                .into();
        }
        let addr = node
            .address
            .parse()
            .map_err(|_| format!("bad node address {}", node.address))?;
        let conn = tokio::time::timeout(DIAL_TIMEOUT, self.endpoint.dial(a.node, addr))
            .await
            .map_err(|_| "connecting timed out".to_string())?
            .map_err(|e| e.to_string())?;
        let result = exchange(&conn, &req, weights, correction.unwrap_or_default()).await;
        if result.is_err() {
            self.endpoint.forget(&a.node);
        }
        result
    }
}

/// The compute slots one round holds; given back when it is dropped.
struct Slots<'a> {
    compute: &'a Compute,
    held: HashMap<NodeId, usize>,
}

impl Slots<'_> {
    fn take(&mut self, node: NodeId) {
        self.compute.set_busy(node, 1);
        *self.held.entry(node).or_insert(0) += 1;
    }

    fn release(&mut self, node: NodeId) {
        if let Some(n) = self.held.get_mut(&node)
            && *n > 0
        {
            *n -= 1;
            self.compute.set_busy(node, -1);
        }
    }
}

impl Drop for Slots<'_> {
    fn drop(&mut self) {
        for (node, n) in self.held.drain() {
            self.compute.set_busy(node, -(n as isize));
        }
    }
}

/// Where a job's server optimizer state is kept, beside its weights.
/// Most rounds a job may wait for a better validation loss.
pub const MAX_PATIENCE: u32 = 100;

/// A task's key among a job's control variates: dataset, segment and row
/// side by side (rows are fewer than 2^16, datasets of a job too).
fn drift_task((d, segment, row): scheduler::TaskId) -> u64 {
    (u64::from(d) << 48) | (u64::from(segment) << 16) | u64::from(row & 0xffff)
}

fn current_or_default(rec: Option<pb::JobRecord>) -> pb::JobInfo {
    rec.and_then(|r| r.info).unwrap_or_default()
}

/// What a round needs to know about its job.
struct RoundCtx<'a> {
    job_id: JobId,
    round: u32,
    spec: &'a ModelSpec,
    params: &'a TrainParams,
    weights: &'a [f32],
    /// A SCAFFOLD job's control variates.
    drift: Option<&'a Drift>,
    /// Per dataset of the job, its object as of this round.
    objs: &'a [pb::ObjectRecord],
    datasets: &'a [pb::JobDataset],
    record: &'a pb::JobRecord,
}

/// A device as the wire names it.
fn device_of(wire: i32) -> Result<pb::Device, ComputeError> {
    pb::Device::try_from(wire).map_err(|_| ComputeError::BadJob(format!("unknown device {wire}")))
}

/// Where a job's tasks train (CPU for jobs from before there was a choice).
fn job_device(rec: &pb::JobRecord) -> pb::Device {
    rec.info
        .as_ref()
        .and_then(|i| pb::Device::try_from(i.device).ok())
        .unwrap_or(pb::Device::Cpu)
}

/// The datasets a job trains on: its listings, or the submitter's own
/// dataset (kept in the record's own fields by jobs of any version).
fn job_datasets(rec: &pb::JobRecord) -> Vec<pb::JobDataset> {
    if !rec.datasets.is_empty() {
        return rec.datasets.clone();
    }
    vec![pb::JobDataset {
        project_id: rec.project_id.clone(),
        bucket: rec
            .info
            .as_ref()
            .map(|i| i.bucket.clone())
            .unwrap_or_default(),
        encrypted_key: rec.encrypted_key.clone(),
        tasks: rec.tasks.clone(),
        ..Default::default()
    }]
}

/// Samples a task on data row `row` of `seg` trains on, and the records
/// it holds out for validation: from the row's records (as committed with
/// the segment), the job's validation share and seed, and the local
/// epochs.
fn task_samples(
    seg: &pb::SegmentRecord,
    segment: u32,
    row: u32,
    params: &TrainParams,
) -> Result<(u64, u64), String> {
    let meta = seg.meta.as_ref().ok_or("no segment metadata")?;
    let records =
        meta.row_records.get(row as usize).copied().ok_or(
            "the dataset has no record counts (uploaded by an older uplink); upload it again",
        )?;
    let n = usize::try_from(records).map_err(|_| "record count overflows")?;
    let held = cc::validation_count(
        n,
        params.validation,
        params.seed,
        cc::task_stream(segment, row),
    ) as u64;
    let samples = (records - held)
        .checked_mul(params.local_epochs as u64)
        .ok_or("sample count overflows")?;
    Ok((samples, held))
}

/// The node holding data piece `row` of a segment.
fn holder_of(seg: &pb::SegmentRecord, row: u32) -> Option<NodeId> {
    seg.pieces
        .iter()
        .find(|p| p.piece_num == row)
        .and_then(|p| NodeId::try_from(p.node_id.as_ref()).ok())
}

/// One TrainRequest / TrainResponse exchange on a fresh stream.
async fn exchange(
    conn: &quinn::Connection,
    req: &pb::TrainRequest,
    weights: &[u8],
    correction: &[u8],
) -> Result<Output, String> {
    let s = |e: &dyn std::fmt::Display| e.to_string();
    let (send, recv) = conn.open_bi().await.map_err(|e| s(&e))?;
    let mut writer = FrameWriter::new(send);
    writer
        .message(&pb::PieceRequest {
            request: Some(pb::piece_request::Request::Train(req.clone())),
        })
        .await
        .map_err(|e| s(&e))?;
    for chunk in weights
        .chunks(MAX_DATA_FRAME_LEN)
        .chain(correction.chunks(MAX_DATA_FRAME_LEN))
    {
        writer
            .data(bytes::Bytes::copy_from_slice(chunk))
            .await
            .map_err(|e| s(&e))?;
    }
    writer.finish().map_err(|e| s(&e))?;
    let mut reader = FrameReader::new(recv);
    let resp: pb::TrainResponse = reader.message().await.map_err(|e| s(&e))?;
    let ok = match resp.result {
        Some(pb::train_response::Result::Ok(ok)) => ok,
        Some(pb::train_response::Result::Error(e)) => {
            return Err(format!("node refused: {}", e.message));
        }
        None => return Err("empty answer".into()),
    };
    if ok.weights_len != weights.len() as u64 {
        return Err(format!(
            "node returned {} bytes of weights, expected {}",
            ok.weights_len,
            weights.len()
        ));
    }
    let mut buf = Vec::with_capacity(weights.len());
    while buf.len() < weights.len() {
        match reader.next().await.map_err(|e| s(&e))? {
            Some(Frame::Data(d)) if buf.len() + d.len() <= weights.len() => {
                buf.extend_from_slice(&d)
            }
            _ => return Err("weights cut short".into()),
        }
    }
    Ok(Output {
        weights: cc::weights_from_bytes(&buf).ok_or("bad weights")?,
        samples: ok.samples,
        loss: ok.loss,
        accuracy: ok.accuracy,
        val_loss: ok.val_loss,
        val_correct: ok.val_correct,
        val_records: ok.val_records,
        bytes_fetched: ok.piece_bytes_fetched,
        train_ms: ok.train_ms,
    })
}
