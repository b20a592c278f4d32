//! Training tasks on the node: the satellite sends the global weights and
//! a row key sealed to this node; the node opens the key, reads the data
//! piece it holds (or rebuilds it from `k` other pieces when it holds
//! none), decrypts its records, trains with burn and returns the weights.
//!
//! The node sees the plaintext of the one piece it trains on, never more:
//! that is the compute-to-data trade, and operators and data owners are
//! told so (docs/compute.md). Parsed records stay in a bounded in-memory
//! cache for the job's later rounds.

use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use loam_common::compute::{ModelSpec, TrainParams, weights_from_bytes, weights_to_bytes};
use loam_common::encryption::{self, Key};
use loam_common::erasure::{ErasureCoder, RedundancyScheme};
use loam_common::orders::PieceId;
use loam_common::rpc::RemoteError;
use loam_common::transport::Endpoint;
use loam_common::wire::{Frame, FrameReader, FrameWriter, MAX_DATA_FRAME_LEN};
use loam_common::{Identity, KeyPair, NodeId, pb, sealed};
use loam_compute::{Backend, Records, Schema};
use prost::Message;
use serde::{Deserialize, Serialize};
use tokio::sync::Semaphore;

use crate::piecestore::{Blobs, NodeDb, Trust};

/// The `[compute]` table of the node's config.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct ComputeConfig {
    /// Offer this node's CPU (or GPU) for training tasks. Default true.
    pub enabled: bool,
    /// Training tasks run at once. Default 1.
    pub max_tasks: u32,
    /// Cores announced to satellites; 0 means every core. Default 0.
    pub cores: u32,
    /// GPUs announced to satellites besides the one adapter described
    /// (only when a GPU is offered; 0 announces the one). Default 0.
    pub gpus: u32,
    /// Memory announced to satellites for training, in MiB; 0 means the
    /// machine's physical memory. Default 0.
    pub memory_mib: u64,
    /// `gpu` offers the node's GPU (the adapter a build with the `wgpu`
    /// feature finds; `storagenode setup` sets it where there is a
    /// hardware one) to jobs that ask for one; `cpu` offers none. Jobs
    /// that do not ask for a GPU train on the CPU either way (burn's
    /// ndarray backend, deterministic). Default `cpu`.
    pub backend: Backend,
    /// Memory for parsed records kept between rounds, in MiB. Default 512.
    pub cache_mib: u64,
}

impl Default for ComputeConfig {
    fn default() -> Self {
        Self {
            enabled: true,
            max_tasks: 1,
            cores: 0,
            gpus: 0,
            memory_mib: 0,
            backend: Backend::Cpu,
            cache_mib: 512,
        }
    }
}

impl ComputeConfig {
    pub fn capabilities(&self) -> pb::NodeCapabilities {
        let cores = if self.cores == 0 {
            std::thread::available_parallelism().map_or(1, |n| n.get() as u32)
        } else {
            self.cores
        };
        let memory_bytes = match self.memory_mib {
            0 => loam_compute::gpu::system_memory().unwrap_or(0),
            mib => mib.saturating_mul(1 << 20),
        };
        let adapter = self.offered_gpu().map(adapter_message);
        pb::NodeCapabilities {
            cpu_cores: cores,
            memory_bytes,
            gpus: if adapter.is_some() {
                self.gpus.max(1)
            } else {
                0
            },
            compute_enabled: self.enabled,
            max_tasks: if self.enabled { self.max_tasks } else { 0 },
            adapter,
        }
    }

    /// The GPU this node offers: the best adapter its build finds, when
    /// the operator chose `backend = "gpu"`.
    pub fn offered_gpu(&self) -> Option<&'static loam_compute::gpu::Adapter> {
        if !self.enabled || self.backend != Backend::Gpu {
            return None;
        }
        let found = loam_compute::gpu::detected();
        if found.is_none() {
            tracing::warn!(
                "backend = \"gpu\" but this build finds no GPU adapter{}; offering the CPU only",
                if Backend::Gpu.available() {
                    ""
                } else {
                    " (it was built without the wgpu feature)"
                }
            );
        }
        found
    }
}

/// An adapter as it is advertised at check-in.
pub fn adapter_message(a: &loam_compute::gpu::Adapter) -> pb::GpuAdapter {
    pb::GpuAdapter {
        name: a.name.clone(),
        kind: a.kind.clone(),
        api: a.api.clone(),
        software: a.software,
        memory_bytes: a.memory_bytes.unwrap_or(0),
        max_buffer_bytes: a.max_buffer_bytes,
    }
}

pub use crate::adversary::WeightsHook;

#[derive(Debug, thiserror::Error)]
enum TaskError {
    #[error("{0}")]
    Refused(String),
    #[error("bad request: {0}")]
    Bad(String),
    #[error("the piece is not here")]
    NoPiece,
    #[error("rebuilding the piece failed: {0}")]
    Rebuild(String),
    #[error("training failed: {0}")]
    Train(String),
    #[error("protocol: {0}")]
    Wire(#[from] loam_common::wire::WireError),
}

impl TaskError {
    fn remote(&self) -> RemoteError {
        use pb::ErrorCode as C;
        let code = match self {
            Self::Refused(_) => C::PermissionDenied,
            Self::Bad(_) => C::InvalidArgument,
            Self::NoPiece => C::NotFound,
            Self::Rebuild(_) => C::Unavailable,
            Self::Train(_) | Self::Wire(_) => C::Internal,
        };
        RemoteError::new(code, self.to_string())
    }
}

type CacheKey = (Vec<u8>, u32, u32);

/// Parsed records of recent tasks, bounded by bytes; oldest out first.
#[derive(Default)]
struct Cache {
    entries: HashMap<CacheKey, Arc<Records>>,
    order: VecDeque<CacheKey>,
    bytes: usize,
}

impl Cache {
    fn get(&self, k: &CacheKey) -> Option<Arc<Records>> {
        self.entries.get(k).cloned()
    }

    fn put(&mut self, k: CacheKey, r: Arc<Records>, limit: usize) {
        let size = r.features.len() * 4 + r.labels.len() * 4;
        if size > limit || self.entries.contains_key(&k) {
            return;
        }
        while self.bytes + size > limit {
            let Some(old) = self.order.pop_front() else {
                break;
            };
            if let Some(e) = self.entries.remove(&old) {
                self.bytes -= e.features.len() * 4 + e.labels.len() * 4;
            }
        }
        self.bytes += size;
        self.order.push_back(k.clone());
        self.entries.insert(k, r);
    }
}

/// The node's training service.
pub struct Trainer {
    identity: Identity,
    db: Arc<NodeDb>,
    blobs: Arc<dyn Blobs>,
    trust: Arc<Trust>,
    endpoint: Endpoint,
    config: ComputeConfig,
    slots: Semaphore,
    cache: Mutex<Cache>,
    lies: crate::adversary::Lies,
}

impl Trainer {
    pub(crate) fn new(
        identity: Identity,
        db: Arc<NodeDb>,
        blobs: Arc<dyn Blobs>,
        trust: Arc<Trust>,
        endpoint: Endpoint,
        config: ComputeConfig,
        lies: crate::adversary::Lies,
    ) -> Self {
        let slots = Semaphore::new(config.max_tasks.max(1) as usize);
        Self {
            identity,
            db,
            blobs,
            trust,
            endpoint,
            config,
            slots,
            cache: Mutex::default(),
            lies,
        }
    }

    /// Serves one TrainRequest stream from `peer`.
    pub async fn serve(
        &self,
        peer: NodeId,
        req: pb::TrainRequest,
        mut reader: FrameReader,
        mut writer: FrameWriter,
    ) {
        let started = Instant::now();
        // What the task's work is counted in: the spec the satellite signed
        // (a malformed one fails the task below).
        let work_per_record = req
            .spec
            .as_ref()
            .and_then(|s| loam_common::compute::ModelSpec::try_from(s).ok())
            .map_or(0, |s| s.work_per_record());
        let result = self.run(peer, req, &mut reader).await;
        match result {
            Ok((ok, weights)) => {
                metrics::counter!("loam_storagenode_compute_tasks_total", "result" => "ok")
                    .increment(1);
                metrics::counter!("loam_storagenode_compute_samples_total").increment(ok.samples);
                metrics::counter!("loam_storagenode_compute_piece_bytes_fetched_total")
                    .increment(ok.piece_bytes_fetched);
                metrics::histogram!("loam_storagenode_compute_task_duration_seconds")
                    .record(started.elapsed().as_secs_f64());
                let units = loam_common::compute::work_units(work_per_record, ok.samples);
                if let Err(e) = self.db.record_task(true, units) {
                    tracing::warn!(error = %e, "cannot record the task");
                }
                let _ = writer
                    .message(&pb::TrainResponse {
                        result: Some(pb::train_response::Result::Ok(ok)),
                    })
                    .await;
                for chunk in weights.chunks(MAX_DATA_FRAME_LEN) {
                    if writer
                        .data(bytes::Bytes::copy_from_slice(chunk))
                        .await
                        .is_err()
                    {
                        return;
                    }
                }
                let _ = writer.finish();
            }
            Err(e) => {
                metrics::counter!("loam_storagenode_compute_tasks_total", "result" => "error")
                    .increment(1);
                // Tasks turned away (busy, malformed) were never run.
                if !matches!(e, TaskError::Refused(_) | TaskError::Bad(_))
                    && let Err(e) = self.db.record_task(false, 0.0)
                {
                    tracing::warn!(error = %e, "cannot record the task");
                }
                tracing::info!(error = %e, "training task failed");
                let _ = writer
                    .message(&pb::TrainResponse {
                        result: Some(pb::train_response::Result::Error((&e.remote()).into())),
                    })
                    .await;
                let _ = writer.finish();
                reader.stop(1);
            }
        }
    }

    async fn run(
        &self,
        peer: NodeId,
        req: pb::TrainRequest,
        reader: &mut FrameReader,
    ) -> Result<(pb::TrainResult, Vec<u8>), TaskError> {
        if self.trust.key(&peer).is_none() {
            return Err(TaskError::Refused(
                "training tasks are taken from trusted satellites only".into(),
            ));
        }
        if !self.config.enabled {
            return Err(TaskError::Refused(
                "this node does not offer compute".into(),
            ));
        }
        let spec = req
            .spec
            .as_ref()
            .and_then(|s| ModelSpec::try_from(s).ok())
            .ok_or_else(|| TaskError::Bad("bad model".into()))?;
        let params = req
            .params
            .as_ref()
            .ok_or_else(|| TaskError::Bad("no hyperparameters".into()))
            .and_then(|p| TrainParams::try_from(p).map_err(|e| TaskError::Bad(e.to_string())))?;
        let want = spec.params() * 4;
        if req.weights_len as usize != want {
            return Err(TaskError::Bad(format!(
                "{} bytes of weights for a model of {want}",
                req.weights_len
            )));
        }
        let weights = read_floats(reader, want, "weights").await?;
        // A SCAFFOLD task's drift correction follows: one value per weight.
        let correction = match req.correction_len {
            0 => None,
            n if n as usize == want => Some(read_floats(reader, want, "drift correction").await?),
            n => {
                return Err(TaskError::Bad(format!(
                    "{n} bytes of drift correction for a model of {want}"
                )));
            }
        };
        let secret = sealed::open(self.identity.key(), &req.sealed_key)
            .ok()
            .and_then(|p| pb::TaskSecret::decode(p.as_slice()).ok())
            .ok_or_else(|| TaskError::Refused("the task key is not sealed to this node".into()))?;
        if (secret.segment, secret.row) != (req.segment, req.row) {
            return Err(TaskError::Refused(
                "the task key is for another piece".into(),
            ));
        }
        // A key sealed at publish names its listing's key tag, and is only
        // used for a job on that listing (the satellite presents the tag);
        // a key sealed for one job carries none.
        if secret.key_tag != req.key_tag {
            return Err(TaskError::Refused(
                "the task key was sealed for another job or listing".into(),
            ));
        }
        let mut schema: Schema = serde_json::from_slice(&secret.schema)
            .ok()
            .filter(|s: &Schema| s.validate().is_ok())
            .ok_or_else(|| TaskError::Bad("schema".into()))?;
        // A job across listings scales every dataset's features alike.
        if !req.scaling_mean.is_empty() || !req.scaling_std.is_empty() {
            let n = schema.mean.len();
            if req.scaling_mean.len() != n
                || req.scaling_std.len() != n
                || req.scaling_mean.iter().any(|m| !m.is_finite())
                || req.scaling_std.iter().any(|s| !s.is_finite() || *s <= 0.0)
            {
                return Err(TaskError::Bad("the job's feature scaling".into()));
            }
            schema.mean = req.scaling_mean.clone();
            schema.std = req.scaling_std.clone();
        }
        if schema.features() != spec.inputs
            || schema.outputs() != spec.classes
            || schema.task != spec.task
        {
            return Err(TaskError::Bad("the model does not fit the dataset".into()));
        }
        let cache_key = (
            [req.job_id.as_ref(), secret.key_tag.as_ref()].concat(),
            req.segment,
            req.row,
        );
        let cached = self.cache.lock().expect("cache lock").get(&cache_key);
        let (records, fetched) = match cached {
            Some(r) => (r, 0),
            None => {
                let (records, fetched) = self.load(&req, &secret, &schema).await?;
                let records = Arc::new(records);
                self.cache.lock().expect("cache lock").put(
                    cache_key,
                    records.clone(),
                    (self.config.cache_mib as usize) << 20,
                );
                (records, fetched)
            }
        };
        let _permit = self
            .slots
            .acquire()
            .await
            .map_err(|_| TaskError::Refused("shutting down".into()))?;
        let t0 = Instant::now();
        let stream = loam_common::compute::task_stream(req.segment, req.row);
        let backend = self.backend(&req)?;
        let round = req.round;
        let out = tokio::task::spawn_blocking(move || {
            loam_compute::train::train_corrected(
                &spec,
                &weights,
                &records,
                &params,
                round,
                stream,
                backend,
                correction.as_deref(),
            )
        })
        .await
        .map_err(|e| TaskError::Train(e.to_string()))?
        .map_err(|e| TaskError::Train(e.to_string()))?;
        let mut weights = out.weights;
        if let Some(hook) = &self.lies.weights {
            hook(&mut weights);
        }
        let bytes = weights_to_bytes(&weights);
        let mut result = pb::TrainResult {
            samples: self.lies.samples.unwrap_or(out.samples),
            loss: out.loss,
            accuracy: out.accuracy,
            weights_len: bytes.len() as u64,
            piece_bytes_fetched: fetched,
            train_ms: t0.elapsed().as_millis() as i64,
            val_loss: out.validation.loss,
            val_correct: out.validation.correct,
            val_records: out.validation.records,
        };
        if let Some(hook) = &self.lies.result {
            hook(&mut result);
        }
        Ok((result, bytes))
    }

    /// Where a task trains: a GPU job on the GPU this node offers (it
    /// refuses one it cannot run), everything else on the CPU.
    fn backend(&self, req: &pb::TrainRequest) -> Result<Backend, TaskError> {
        match pb::Device::try_from(req.device) {
            Ok(pb::Device::Cpu) => Ok(Backend::Cpu),
            Ok(pb::Device::Gpu)
                if self.config.offered_gpu().is_some() || self.lies.adapter.is_some() =>
            {
                Ok(Backend::Gpu)
            }
            Ok(pb::Device::Gpu) => Err(TaskError::Refused(
                "this node offers no GPU for GPU jobs".into(),
            )),
            Err(_) => Err(TaskError::Bad(format!("unknown device {}", req.device))),
        }
    }

    /// The task's records: from the local piece, or rebuilt from others.
    /// Returns them with the piece bytes fetched over the network.
    async fn load(
        &self,
        req: &pb::TrainRequest,
        secret: &pb::TaskSecret,
        schema: &Schema,
    ) -> Result<(Records, u64), TaskError> {
        let row_key =
            Key::try_from(secret.row_key.as_ref()).map_err(|_| TaskError::Bad("row key".into()))?;
        let (piece, fetched) = if !req.piece_id.is_empty() {
            let piece_id = PieceId::try_from(req.piece_id.as_ref())
                .map_err(|_| TaskError::Bad("piece id".into()))?;
            (self.read_local(&piece_id).await?, 0)
        } else {
            self.rebuild(req).await?
        };
        let (segment, row_size, skip) = (req.segment, secret.row_size, secret.skip_header);
        let schema = schema.clone();
        tokio::task::spawn_blocking(move || {
            let mut piece = piece;
            let n = encryption::decrypt_row(&row_key, segment, &mut piece)
                .map_err(|e| TaskError::Refused(format!("piece does not decrypt: {e}")))?;
            piece.truncate(n.min(row_size.max(0) as usize));
            loam_compute::dataset::parse_records(&piece, &schema, skip)
                .map(|r| (r, fetched))
                .map_err(|e| TaskError::Bad(format!("records: {e}")))
        })
        .await
        .map_err(|e| TaskError::Train(e.to_string()))?
    }

    async fn read_local(&self, piece_id: &PieceId) -> Result<Vec<u8>, TaskError> {
        let sats = self.trust.satellites();
        for sat in sats {
            if let Ok(Some(rec)) = self.db.piece(&sat, piece_id) {
                let blobs = self.blobs.clone();
                let id = *piece_id;
                let data = tokio::task::spawn_blocking(move || {
                    blobs.read(&sat, &id, 0, rec.size.max(0) as usize)
                })
                .await
                .map_err(|e| TaskError::Train(e.to_string()))?
                .map_err(|_| TaskError::NoPiece)?;
                if loam_common::merkle::root(&data).as_slice() != rec.hash.as_ref() {
                    return Err(TaskError::Rebuild("the local piece is corrupt".into()));
                }
                // Decrypted in place by the caller: a copy of its own.
                return Ok(data.to_vec());
            }
        }
        Err(TaskError::NoPiece)
    }

    /// Fetches `k` pieces of the segment and rebuilds data row `req.row`.
    async fn rebuild(&self, req: &pb::TrainRequest) -> Result<(Vec<u8>, u64), TaskError> {
        let scheme = req
            .redundancy
            .as_ref()
            .and_then(|r| RedundancyScheme::try_from(r).ok())
            .ok_or_else(|| TaskError::Bad("redundancy".into()))?;
        let piece_key = KeyPair::try_from(req.piece_private_key.as_ref())
            .map_err(|_| TaskError::Bad("piece key".into()))?;
        if !(0..=1 << 30).contains(&req.piece_size) || req.row as usize >= scheme.k() {
            return Err(TaskError::Bad("piece size or row".into()));
        }
        let mut pieces = loam_piece_transfer::fetch_pieces(
            &self.endpoint,
            Duration::from_secs(5),
            Duration::from_millis(750),
            &req.rebuild_limits,
            scheme,
            req.piece_size as u64,
            &piece_key,
            true,
        )
        .await
        .map_err(|e| TaskError::Rebuild(e.to_string()))?;
        let fetched: u64 = pieces.iter().flatten().map(|p| p.len() as u64).sum();
        let row = req.row as usize;
        let piece = tokio::task::spawn_blocking(move || {
            ErasureCoder::new(scheme)
                .reconstruct_data(&mut pieces)
                .map_err(|e| TaskError::Rebuild(e.to_string()))?;
            pieces[row]
                .take()
                .ok_or_else(|| TaskError::Rebuild("row missing after reconstruction".into()))
        })
        .await
        .map_err(|e| TaskError::Train(e.to_string()))??;
        Ok((piece, fetched))
    }
}

/// `len` bytes of little-endian f32s from data frames: finite numbers
/// only.
async fn read_floats(
    reader: &mut FrameReader,
    len: usize,
    what: &str,
) -> Result<Vec<f32>, TaskError> {
    let mut buf = Vec::with_capacity(len);
    while buf.len() < len {
        match reader.next().await? {
            Some(Frame::Data(d)) if buf.len() + d.len() <= len => buf.extend_from_slice(&d),
            _ => return Err(TaskError::Bad(format!("{what} cut short"))),
        }
    }
    weights_from_bytes(&buf)
        .filter(|v| v.iter().all(|x| x.is_finite()))
        .ok_or_else(|| TaskError::Bad(format!("{what} are not finite numbers")))
}
