//! Datasets and training jobs, the uplink's side.
//!
//! - [`Project::upload_dataset`]: scans a CSV (schema, classes, feature
//!   scaling), packs whole records into every data row of every segment,
//!   and uploads it as a normal object that is also a dataset.
//! - [`Project::submit_job`]: asks the satellite which nodes may run each
//!   task, seals each task's row key (and the schema) to exactly those
//!   nodes, and submits the job. The satellite relays sealed keys it
//!   cannot open.
//! - [`Project::save_model`]: fetches a finished job's weights and stores
//!   them with the model config and scaling as a model file.

use std::sync::Arc;

use loam_common::compute::{ModelSpec, TrainParams};
use loam_common::encryption::{self, Key};
use loam_common::erasure::{ErasureCoder, RedundancyScheme};
use loam_common::{NodeId, PublicKey, pb, sealed};
use loam_compute::dataset::{self, Schema};
use loam_compute::{ModelFile, ModelHeader};
use pb::satellite_request::Request as Req;
use pb::satellite_response::Response as Resp;
use prost::Message;
use serde::{Deserialize, Serialize};

use crate::transfer::Plaintext;
use crate::{ObjectMeta, Progress, Project, UplinkError, not_found_as};

/// Kept (encrypted) in a dataset's object metadata.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct DatasetMeta {
    pub schema: Schema,
    /// Per segment, records in each data row.
    pub records: Vec<Vec<usize>>,
    /// How the records were reordered when stored (downloads undo it).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub shuffle: Option<dataset::Shuffle>,
}

/// How to upload a dataset.
#[derive(Debug, Clone)]
pub struct DatasetOptions {
    /// The label column.
    pub label: String,
    /// Classes, or a number to predict (regression).
    pub task: loam_common::compute::Task,
    /// Largest segment; smaller segments mean more, smaller tasks. `None`
    /// takes [`DatasetOptions::DEFAULT_SEGMENT`] (capped by the satellite).
    pub segment_size: Option<u64>,
    /// Opt the dataset in to compute jobs now.
    pub compute: bool,
    /// Store the records in an order drawn from this seed, so that every
    /// data piece (every training task) holds a fair sample of the file
    /// even when it is sorted by label; downloads return the original
    /// bytes. `None` keeps the file's order.
    pub shuffle: Option<u64>,
    /// The records are images of this shape (see
    /// [`loam_compute::dataset::scan_with`]).
    pub image: Option<loam_common::compute::ImageShape>,
}

impl DatasetOptions {
    pub const DEFAULT_SEGMENT: u64 = 16 << 20;
}

/// What `dataset put` reports.
#[derive(Debug, Clone)]
pub struct DatasetInfo {
    pub records: u64,
    pub features: usize,
    pub classes: Vec<String>,
    pub task: loam_common::compute::Task,
    pub segments: usize,
    pub tasks: usize,
    pub size: u64,
}

/// A job as the user describes it.
#[derive(Debug, Clone)]
pub struct JobRequest {
    pub architecture: String,
    pub hidden: Vec<usize>,
    /// A CNN's input image; `None` takes the dataset's (`dataset put
    /// --images` or `--image-shape`).
    pub image: Option<loam_common::compute::ImageShape>,
    /// A CNN's conv-pool block channels.
    pub conv: Vec<usize>,
    /// Rounds, or the most rounds when `patience` is set.
    pub rounds: u32,
    /// Stop after this many rounds without a better validation loss and
    /// keep the best weights; 0 runs exactly `rounds`.
    pub patience: u32,
    pub params: TrainParams,
    /// Share of tasks re-executed for verification; `None` for the
    /// satellite's default.
    pub verify_fraction: Option<f64>,
    /// Where the model goes (bucket, key).
    pub out: (String, String),
    /// If set, the dataset's label column must be this one.
    pub label: Option<String>,
    /// How the satellite settles each round.
    pub aggregation: loam_common::federated::Choice,
    /// Where the tasks train: GPU jobs go only to nodes that offer a GPU.
    pub device: pb::Device,
}

impl JobRequest {
    /// The registry model this job asks for, sized to `schema`, with its
    /// hyperparameters checked.
    fn spec_for(&self, schema: &Schema) -> Result<ModelSpec, UplinkError> {
        let job = |e: loam_common::compute::SpecError| UplinkError::Job(e.to_string());
        let architecture = self.architecture.parse().map_err(job)?;
        let spec = if architecture == loam_common::compute::Architecture::Cnn {
            let image = self.image.or(schema.image).ok_or_else(|| {
                UplinkError::Job(format!(
                    "a CNN trains on images, and the dataset's {} features have no image shape: \
                     give it with --image-shape HxW (or upload the dataset with --images or --image-shape)",
                    schema.features()
                ))
            })?;
            if image.pixels() != schema.features() {
                return Err(UplinkError::Job(format!(
                    "a {image} image has {} pixels, but the dataset has {} features",
                    image.pixels(),
                    schema.features()
                )));
            }
            ModelSpec::cnn(
                image,
                self.conv.clone(),
                self.hidden.clone(),
                schema.outputs(),
                schema.task,
            )
        } else {
            ModelSpec::for_task(
                architecture,
                self.hidden.clone(),
                schema.features(),
                schema.outputs(),
                schema.task,
            )
        }
        .map_err(job)?;
        self.params.validate().map_err(job)?;
        // The satellite checks it too; refusing here saves planning.
        loam_common::federated::Choice::try_from(&pb::Aggregation::from(&self.aggregation))
            .map_err(UplinkError::Job)?;
        Ok(spec)
    }
}

/// What the uplink seals inside a job for itself: where the model goes.
#[derive(Debug, Clone, Serialize, Deserialize)]
struct OwnerNote {
    out_bucket: String,
    out_key: String,
    dataset_bucket: String,
    dataset_key: String,
    /// A job on listings: the model's schema (pooled from the listings'
    /// public facts) and the listings.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    schema: Option<Schema>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    listings: Vec<String>,
}

/// What a sealed row key is good for.
#[derive(Debug, Clone, Copy)]
pub(crate) enum KeyBinding {
    /// One job (the uplink's own tag for it).
    Job([u8; 16]),
    /// Any job on a listing, by the listing's key tag.
    Listing([u8; 16]),
}

fn job_error(e: UplinkError) -> UplinkError {
    match e {
        UplinkError::Satellite(r) => UplinkError::Job(r.message),
        other => other,
    }
}

/// A job id as users type it (hex).
pub fn parse_job_id(s: &str) -> Result<Vec<u8>, UplinkError> {
    hex::decode(s.trim())
        .ok()
        .filter(|b| b.len() == 16)
        .ok_or_else(|| UplinkError::Job(format!("{s:?} is not a job id (32 hex digits)")))
}

/// The one id in `ids` that starts with the hex digits `prefix`, as `git`
/// takes short commit ids: at least 4 digits, and no other id may share
/// them.
pub fn match_job_prefix<'a>(
    prefix: &str,
    ids: impl IntoIterator<Item = &'a [u8]>,
) -> Result<Vec<u8>, UplinkError> {
    let prefix = prefix.trim().to_ascii_lowercase();
    if prefix.len() < 4 || prefix.len() > 32 || !prefix.bytes().all(|b| b.is_ascii_hexdigit()) {
        return Err(UplinkError::Job(format!(
            "{prefix:?} is not a job id (4 to 32 hex digits)"
        )));
    }
    let found: Vec<Vec<u8>> = ids
        .into_iter()
        .filter(|id| hex::encode(id).starts_with(&prefix))
        .map(<[u8]>::to_vec)
        .collect();
    match found.as_slice() {
        [one] => Ok(one.clone()),
        [] => Err(UplinkError::Job(format!("no job id starts with {prefix}"))),
        many => Err(UplinkError::Job(format!(
            "{} jobs start with {prefix}; give more digits",
            many.len()
        ))),
    }
}

impl Project {
    /// A job id from all 32 hex digits, or from a prefix unique among
    /// this project's jobs.
    pub async fn resolve_job_id(&self, s: &str) -> Result<Vec<u8>, UplinkError> {
        if let Ok(id) = parse_job_id(s) {
            return Ok(id);
        }
        let jobs = self.jobs().await?;
        match_job_prefix(s, jobs.iter().map(|j| j.job_id.as_ref()))
    }

    fn owner_key(&self) -> Key {
        self.access.keys.own_key("loam-job-note")
    }

    /// Uploads `text` (a CSV with a header) as a dataset at `bucket/key`.
    pub async fn upload_dataset(
        &self,
        bucket: &str,
        key: &str,
        text: Vec<u8>,
        opts: &DatasetOptions,
        progress: Option<Progress>,
    ) -> Result<DatasetInfo, UplinkError> {
        let (label, seed, task, image) = (opts.label.clone(), opts.shuffle, opts.task, opts.image);
        let (text, schema, shuffle) = tokio::task::spawn_blocking(move || {
            let schema = dataset::scan_with(&text, &label, task, image);
            match seed {
                Some(seed) if schema.is_ok() => {
                    let (stored, shuffle) = dataset::shuffle_records(&text, seed);
                    (stored, schema, Some(shuffle))
                }
                _ => (text, schema, None),
            }
        })
        .await
        .map_err(|e| UplinkError::Io(std::io::Error::other(e)))?;
        let schema = schema.map_err(|e| UplinkError::Dataset(e.to_string()))?;
        let begin = self.begin_object(bucket, key).await?;
        let scheme =
            RedundancyScheme::try_from(begin.redundancy.as_ref().ok_or(UplinkError::Unexpected)?)
                .map_err(|_| UplinkError::Unexpected)?;
        let k = scheme.k();
        let max_segment = (begin.max_segment_size.max(1) as u64)
            .min(opts.segment_size.unwrap_or(DatasetOptions::DEFAULT_SEGMENT))
            .max(k as u64);
        let row_capacity = (max_segment as usize / k).max(1);
        let packed = dataset::pack(&text, k, row_capacity)
            .map_err(|e| UplinkError::Dataset(e.to_string()))?;
        let obj_key = self.object_key(bucket, key)?;
        let coder = Arc::new(ErasureCoder::new(scheme));
        for (index, seg) in packed.iter().enumerate() {
            let plain = text[seg.start..seg.start + seg.len()].to_vec();
            self.upload_segment(
                coder.clone(),
                &begin.stream_id,
                index as u32,
                Plaintext::Memory(plain),
                Some(crate::transfer::RowLayout {
                    sizes: seg.rows.clone(),
                    records: seg.records.clone(),
                }),
                None,
                &obj_key,
                progress.clone(),
            )
            .await?;
        }
        let meta = ObjectMeta {
            size: text.len() as u64,
            custom: Default::default(),
            segment_size: None,
            parts: None,
            dataset: Some(DatasetMeta {
                schema: schema.clone(),
                records: packed.iter().map(|s| s.records.clone()).collect(),
                shuffle,
            }),
        };
        self.commit_object(
            &begin.stream_id,
            &obj_key,
            &meta,
            packed.len() as u32,
            Vec::new(),
            opts.compute,
            0,
            Vec::new(),
        )
        .await?;
        Ok(DatasetInfo {
            records: schema.records,
            features: schema.features(),
            classes: schema.classes.clone(),
            task: schema.task,
            segments: packed.len(),
            tasks: packed
                .iter()
                .map(|s| s.rows.iter().filter(|&&r| r > 0).count())
                .sum(),
            size: text.len() as u64,
        })
    }

    /// The dataset description of `bucket/key`, or an error if it is not
    /// a dataset.
    pub async fn dataset(
        &self,
        bucket: &str,
        key: &str,
    ) -> Result<(DatasetMeta, bool), UplinkError> {
        let (d, compute, _) = self.dataset_and_key(bucket, key).await?;
        Ok((d, compute))
    }

    /// As [`Self::dataset`], with the key the dataset is sealed under.
    pub(crate) async fn dataset_and_key(
        &self,
        bucket: &str,
        key: &str,
    ) -> Result<(DatasetMeta, bool, Key), UplinkError> {
        let info = self.object_info(bucket, key).await?;
        let meta = self.decrypt_meta(bucket, key, &info)?;
        match (meta.dataset, info.dataset) {
            (Some(d), true) => Ok((
                d,
                info.compute_enabled,
                self.read_key(bucket, key, &info.encrypted_metadata)?,
            )),
            _ => Err(UplinkError::Job(format!(
                "loam://{bucket}/{key} is not a dataset; upload it with `uplink dataset put`"
            ))),
        }
    }

    /// Opts a dataset in to compute jobs, or out.
    pub async fn set_dataset_compute(
        &self,
        bucket: &str,
        key: &str,
        enabled: bool,
    ) -> Result<(), UplinkError> {
        self.dataset(bucket, key).await?;
        let enc = self.encrypt_path(bucket, key)?;
        self.call(Req::SetCompute(pb::SetComputeRequest {
            bucket: bucket.to_string(),
            encrypted_key: enc.into(),
            enabled,
        }))
        .await
        .map_err(job_error)?;
        Ok(())
    }

    /// Plans, seals and submits a training job on the dataset
    /// `bucket/key`.
    pub async fn submit_job(
        &self,
        bucket: &str,
        key: &str,
        job: &JobRequest,
    ) -> Result<pb::JobInfo, UplinkError> {
        let (ds, compute, obj_key) = self.dataset_and_key(bucket, key).await?;
        let schema = &ds.schema;
        if let Some(label) = &job.label
            && label != schema.label_name()
        {
            return Err(UplinkError::Job(if schema.columns.contains(label) {
                format!(
                    "the dataset's label column is {:?}, not {label:?}; upload it again with --label {label}",
                    schema.label_name()
                )
            } else {
                format!(
                    "label column {label:?} is not in the dataset (columns: {})",
                    schema.columns.join(",")
                )
            }));
        }
        let spec = job.spec_for(schema)?;
        if !compute {
            return Err(UplinkError::Job(format!(
                "loam://{bucket}/{key} is not opted in to compute; run `uplink dataset compute on loam://{bucket}/{key}`"
            )));
        }
        let job_tag: [u8; 16] = rand::random();
        let (enc, tasks) = self
            .seal_dataset_keys(
                bucket,
                key,
                &ds,
                &obj_key,
                KeyBinding::Job(job_tag),
                false,
                job.device,
            )
            .await?;
        let note = OwnerNote {
            out_bucket: job.out.0.clone(),
            out_key: job.out.1.clone(),
            dataset_bucket: bucket.to_string(),
            dataset_key: key.to_string(),
            schema: None,
            listings: Vec::new(),
        };
        let note = encryption::seal(
            &self.owner_key(),
            &serde_json::to_vec(&note).expect("note serializes"),
        );
        match self
            .call(Req::SubmitJob(pb::SubmitJobRequest {
                bucket: bucket.to_string(),
                encrypted_key: enc.into(),
                spec: Some((&spec).into()),
                params: Some((&job.params).into()),
                rounds: job.rounds,
                patience: job.patience,
                tasks,
                owner_note: note.into(),
                verify_fraction: job.verify_fraction.unwrap_or(-1.0),
                aggregation: Some((&job.aggregation).into()),
                device: job.device as i32,
                ..Default::default()
            }))
            .await
            .map_err(job_error)?
        {
            Resp::SubmitJob(info) => Ok(info),
            _ => Err(UplinkError::Unexpected),
        }
    }

    /// Plans tasks on the dataset at `bucket/key` and seals each data
    /// row's key, with the schema, to every candidate node of its task;
    /// returns the encrypted key and the sealed keys.
    #[allow(clippy::too_many_arguments)]
    pub(crate) async fn seal_dataset_keys(
        &self,
        bucket: &str,
        key: &str,
        ds: &DatasetMeta,
        obj_key: &Key,
        binding: KeyBinding,
        listing: bool,
        device: pb::Device,
    ) -> Result<(Vec<u8>, Vec<pb::TaskKeys>), UplinkError> {
        let enc = self.encrypt_path(bucket, key)?;
        let plan = match self
            .call(Req::PlanJob(pb::PlanJobRequest {
                bucket: bucket.to_string(),
                encrypted_key: enc.clone().into(),
                listing,
                device: device as i32,
            }))
            .await
            .map_err(job_error)?
        {
            Resp::PlanJob(p) => p,
            _ => return Err(UplinkError::Unexpected),
        };
        let schema_json = serde_json::to_vec(&ds.schema).expect("schema serializes");
        let mut tasks = Vec::with_capacity(plan.tasks.len());
        for t in &plan.tasks {
            let meta = plan
                .segments
                .get(t.segment as usize)
                .ok_or(UplinkError::Unexpected)?;
            let seg_key = encryption::open(obj_key, &meta.encrypted_key)
                .ok()
                .and_then(|k| Key::try_from(k.as_slice()).ok())
                .ok_or_else(|| UplinkError::Corrupt("segment key does not decrypt".into()))?;
            let (job_id, key_tag) = match binding {
                KeyBinding::Job(tag) => (tag.to_vec(), Vec::new()),
                KeyBinding::Listing(tag) => (Vec::new(), tag.to_vec()),
            };
            let secret = pb::TaskSecret {
                row_key: encryption::row_key(&seg_key, t.row)
                    .as_bytes()
                    .to_vec()
                    .into(),
                schema: schema_json.clone().into(),
                skip_header: t.segment == 0 && t.row == 0,
                row_size: meta.row_sizes.get(t.row as usize).copied().unwrap_or(0),
                job_id: job_id.into(),
                key_tag: key_tag.into(),
                segment: t.segment,
                row: t.row,
            }
            .encode_to_vec();
            let mut keys = Vec::new();
            for c in &t.candidates {
                let public = PublicKey::try_from(c.public_key.as_ref())
                    .map_err(|_| UplinkError::Unexpected)?;
                let id =
                    NodeId::try_from(c.node_id.as_ref()).map_err(|_| UplinkError::Unexpected)?;
                if public.node_id() != id {
                    return Err(UplinkError::Job(
                        "the satellite offered a node whose key does not match its id".into(),
                    ));
                }
                keys.push(pb::SealedTaskKey {
                    node_id: c.node_id.clone(),
                    sealed: sealed::seal(&public, &secret).into(),
                });
            }
            tasks.push(pb::TaskKeys {
                segment: t.segment,
                row: t.row,
                keys,
            });
        }
        Ok((enc, tasks))
    }

    /// Submits a job on listings (`market:ID`s): the model's schema comes
    /// from the listings' public facts (their feature scaling pooled,
    /// weighted by records); the keys are the ones the owners sealed at
    /// publish, so this uplink never holds one.
    pub async fn submit_market_job(
        &self,
        listings: &[Vec<u8>],
        job: &JobRequest,
    ) -> Result<pb::JobInfo, UplinkError> {
        let mut found = Vec::with_capacity(listings.len());
        for id in listings {
            found.push(self.listing(id).await.map_err(job_error)?);
        }
        let schema = crate::market::pooled_schema(&found)?;
        if let Some(label) = &job.label
            && label != schema.label_name()
        {
            return Err(UplinkError::Job(format!(
                "the listings' label column is {:?}, not {label:?}",
                schema.label_name()
            )));
        }
        let spec = job.spec_for(&schema)?;
        let note = OwnerNote {
            out_bucket: job.out.0.clone(),
            out_key: job.out.1.clone(),
            dataset_bucket: String::new(),
            dataset_key: String::new(),
            listings: listings
                .iter()
                .map(|l| format!("market:{}", hex::encode(l)))
                .collect(),
            schema: Some(schema.clone()),
        };
        let note = encryption::seal(
            &self.owner_key(),
            &serde_json::to_vec(&note).expect("note serializes"),
        );
        match self
            .call(Req::SubmitJob(pb::SubmitJobRequest {
                spec: Some((&spec).into()),
                params: Some((&job.params).into()),
                rounds: job.rounds,
                patience: job.patience,
                owner_note: note.into(),
                verify_fraction: job.verify_fraction.unwrap_or(-1.0),
                listings: listings.iter().map(|l| l.clone().into()).collect(),
                scaling_mean: schema.mean.clone(),
                scaling_std: schema.std.clone(),
                aggregation: Some((&job.aggregation).into()),
                device: job.device as i32,
                ..Default::default()
            }))
            .await
            .map_err(job_error)?
        {
            Resp::SubmitJob(info) => Ok(info),
            _ => Err(UplinkError::Unexpected),
        }
    }

    async fn job_call(&self, req: Req, id: &[u8]) -> Result<pb::JobInfo, UplinkError> {
        let not_found = || UplinkError::Job(format!("job {} not found", hex::encode(id)));
        match self
            .call(req)
            .await
            .map_err(|e| not_found_as(e, not_found))?
        {
            Resp::GetJob(j) | Resp::CancelJob(j) => Ok(j),
            _ => Err(UplinkError::Unexpected),
        }
    }

    pub async fn job(&self, id: &[u8]) -> Result<pb::JobInfo, UplinkError> {
        let job_id = id.to_vec().into();
        self.job_call(Req::GetJob(pb::JobRequest { job_id }), id)
            .await
    }

    pub async fn jobs(&self) -> Result<Vec<pb::JobInfo>, UplinkError> {
        match self.call(Req::ListJobs(pb::ListJobsRequest {})).await? {
            Resp::ListJobs(l) => Ok(l.jobs),
            _ => Err(UplinkError::Unexpected),
        }
    }

    pub async fn cancel_job(&self, id: &[u8]) -> Result<pb::JobInfo, UplinkError> {
        let job_id = id.to_vec().into();
        self.job_call(Req::CancelJob(pb::JobRequest { job_id }), id)
            .await
    }

    /// A job's current (after the last round) weights.
    pub async fn job_weights(&self, id: &[u8]) -> Result<Vec<f32>, UplinkError> {
        let mut bytes = Vec::new();
        loop {
            let resp = match self
                .call(Req::JobWeights(pb::JobWeightsRequest {
                    job_id: id.to_vec().into(),
                    offset: bytes.len() as u64,
                }))
                .await
                .map_err(job_error)?
            {
                Resp::JobWeights(w) => w,
                _ => return Err(UplinkError::Unexpected),
            };
            if resp.weights.is_empty() && (bytes.len() as u64) < resp.total {
                return Err(UplinkError::Unexpected);
            }
            bytes.extend_from_slice(&resp.weights);
            if bytes.len() as u64 >= resp.total {
                break;
            }
        }
        loam_common::compute::weights_from_bytes(&bytes).ok_or(UplinkError::Unexpected)
    }

    /// Where the job's model goes, from the note sealed at submission.
    pub fn job_output(&self, job: &pb::JobInfo) -> Option<(String, String)> {
        let plain = encryption::open(&self.owner_key(), &job.owner_note).ok()?;
        let note: OwnerNote = serde_json::from_slice(&plain).ok()?;
        Some((note.out_bucket, note.out_key))
    }

    fn job_note(&self, job: &pb::JobInfo) -> Option<OwnerNote> {
        let plain = encryption::open(&self.owner_key(), &job.owner_note).ok()?;
        serde_json::from_slice(&plain).ok()
    }

    /// The model of a job as it stands (final once the job is done).
    pub async fn job_model(&self, job: &pb::JobInfo) -> Result<ModelFile, UplinkError> {
        let spec = job
            .spec
            .as_ref()
            .and_then(|s| ModelSpec::try_from(s).ok())
            .ok_or(UplinkError::Unexpected)?;
        let note = self
            .job_note(job)
            .ok_or_else(|| UplinkError::Job("the job was submitted with another access".into()))?;
        let (schema, source) = match note.schema {
            Some(schema) => (schema, note.listings.join(" ")),
            None => {
                let (ds, _) = self
                    .dataset(&note.dataset_bucket, &note.dataset_key)
                    .await?;
                (
                    ds.schema,
                    format!("loam://{}/{}", note.dataset_bucket, note.dataset_key),
                )
            }
        };
        let weights = self.job_weights(&job.job_id).await?;
        let last = job.history.last();
        Ok(ModelFile {
            header: ModelHeader {
                spec,
                schema,
                trained: serde_json::json!({
                    "job": hex::encode(&job.job_id),
                    "dataset": source,
                    "rounds": job.round,
                    "params": job.params.as_ref().map(|p| serde_json::json!({
                        "learning_rate": p.learning_rate,
                        "batch": p.batch,
                        "local_epochs": p.local_epochs,
                        "seed": p.seed,
                    })),
                    "train_loss": last.map(|r| r.loss),
                    "train_accuracy": last.map(|r| r.accuracy),
                }),
            },
            weights,
        })
    }

    /// Stores a job's model at `bucket/key`; returns its size.
    pub async fn save_model(
        &self,
        job: &pb::JobInfo,
        bucket: &str,
        key: &str,
    ) -> Result<u64, UplinkError> {
        let model = self.job_model(job).await?;
        let bytes = model
            .to_bytes()
            .map_err(|e| UplinkError::Job(e.to_string()))?;
        let n = bytes.len() as u64;
        self.upload(bucket, key, std::io::Cursor::new(bytes), None)
            .await?;
        Ok(n)
    }

    /// Reads a whole object into memory.
    pub async fn read_all(&self, bucket: &str, key: &str) -> Result<Vec<u8>, UplinkError> {
        let mut out = Vec::new();
        self.download(bucket, key, &mut out, None).await?;
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn job_ids_may_be_given_by_a_unique_prefix() {
        let a = [
            0xc1u8, 0x4e, 0xf3, 0x4e, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12,
        ];
        let b = [
            0xc1u8, 0x4e, 0x00, 0x01, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12,
        ];
        let ids = [&a[..], &b[..]];
        assert_eq!(match_job_prefix("c14ef34e", ids).expect("unique"), a);
        assert_eq!(match_job_prefix("C14E0", ids).expect("case"), b);
        let e = match_job_prefix("c14e", ids).expect_err("two").to_string();
        assert!(e.contains("2 jobs start with c14e"), "{e}");
        assert!(
            match_job_prefix("ffff", ids)
                .expect_err("none")
                .to_string()
                .contains("no job id")
        );
        for bad in ["c14", "zzzz", ""] {
            assert!(match_job_prefix(bad, ids).is_err(), "{bad:?}");
        }
    }
}
