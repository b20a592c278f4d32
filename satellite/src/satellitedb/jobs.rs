//! Training jobs: their records, weights and round-to-round state, the
//! indexes that find them, and what each compute node did.
//!
//! A job is driven by one process at a time (a lease, [`crate::lease`]),
//! but a driver that lost its lease without noticing must not commit over
//! its successor: every write of a job's record after its creation lands
//! only over the record its driver last wrote ([`JobStore::commit_round`],
//! [`JobStore::finish`]; otherwise [`DbError::Conflict`]). A round's
//! weights, round state and charges are written in that same batch, so a
//! round is stored (and charged) whole or not at all. A compute node's
//! counters change in one optimistic transaction each, so processes
//! crediting the same node at once lose nothing.
//!
//! Layout in the backend: `jobs` by job id (protobuf [`pb::JobRecord`]);
//! `project-jobs` by project and job id (empty values); `job-weights` by
//! job id (the current weights) and by job id with `/best`,
//! `/server-state`, `/drift` (round state); `meta` keys `running-job:<id>`
//! (the jobs some process must drive) and `cancel-job:<id>` (a
//! cancellation asked for at any process); `compute-nodes` by node id
//! (protobuf [`pb::ComputeRecord`]); charges as
//! [`super::charges`] lays them out.

use std::collections::{BTreeMap, HashMap};
use std::ops::ControlFlow;
use std::sync::Arc;

use loam_common::{NodeId, pb};
use prost::Message;

use super::accounting::add_work_in;
use super::{Stored, decode, stored, walk};
use crate::db::{Built, DbError, Kv, Op, Table, Txn, index_once, transact};

/// A job's id.
pub type JobId = [u8; 16];

const RUNNING: &[u8] = b"running-job:";

fn running_key(job: &[u8]) -> Vec<u8> {
    [RUNNING, job].concat()
}

fn cancel_key(job: &[u8]) -> Vec<u8> {
    [b"cancel-job:".as_slice(), job].concat()
}

fn best_key(job: &[u8]) -> Vec<u8> {
    [job, b"/best"].concat()
}

fn server_state_key(job: &[u8]) -> Vec<u8> {
    [job, b"/server-state"].concat()
}

fn drift_key(job: &[u8]) -> Vec<u8> {
    [job, b"/drift"].concat()
}

/// Whether a job's record says it is running.
pub fn is_running(rec: &pb::JobRecord) -> bool {
    rec.info
        .as_ref()
        .is_some_and(|i| i.state == pb::JobState::JobRunning as i32)
}

/// What a round did for one compute node: credited with the round.
#[derive(Debug, Default, Clone, Copy, PartialEq)]
pub struct NodeCredit {
    /// Accepted work, work units × 10⁶ (what payouts pay).
    pub micro_units: u64,
    pub tasks_accepted: u64,
    pub verification_failures: u64,
    pub tasks_failed: u64,
}

/// What a finished round leaves behind, written with the job's record.
#[derive(Debug, Default)]
pub struct FinishedRound<'a> {
    /// The weights the next round starts from.
    pub weights: Vec<u8>,
    /// The server optimizer's state.
    pub server_state: Vec<u8>,
    /// SCAFFOLD's control variates, for a job that keeps them.
    pub drift: Option<Vec<u8>>,
    /// The best weights so far, when this round's are the best.
    pub best: Option<Vec<u8>>,
    /// What the round cost the job's project.
    pub charge: Option<&'a pb::ChargeRecord>,
    /// What each node did, and when (the work's accounting time).
    pub credits: BTreeMap<NodeId, NodeCredit>,
    pub at_ms: i64,
}

/// A job's round-to-round state as stored (`None`: none yet).
#[derive(Debug, Default)]
pub struct RoundState {
    pub server_state: Option<Vec<u8>>,
    pub drift: Option<Vec<u8>>,
}

/// Jobs and compute nodes over one of the satellite's databases.
pub struct JobStore {
    kv: Arc<dyn Kv>,
    /// The running-job index exists (built once for an older database).
    running_indexed: Built,
    /// The project-to-jobs index exists.
    projects_indexed: Built,
}

impl JobStore {
    pub fn new(kv: Arc<dyn Kv>) -> Self {
        Self {
            kv,
            running_indexed: Built::default(),
            projects_indexed: Built::default(),
        }
    }

    /// Stores a new job with its first weights, running; returns the
    /// record's bytes (what its first round must find). Fails with
    /// [`DbError::Conflict`] if the id is taken.
    pub fn create(
        &self,
        job: &JobId,
        record: &pb::JobRecord,
        weights: Vec<u8>,
    ) -> Result<Vec<u8>, DbError> {
        let written = record.encode_to_vec();
        let mut ops = vec![
            Op::Expect(Table::Jobs, job.to_vec(), None),
            Op::Put(Table::Jobs, job.to_vec(), written.clone()),
            Op::Put(
                Table::ProjectJobs,
                [record.project_id.as_ref(), job].concat(),
                Vec::new(),
            ),
            Op::Put(Table::JobWeights, job.to_vec(), weights),
        ];
        if is_running(record) {
            ops.push(Op::Put(Table::Meta, running_key(job), Vec::new()));
        }
        self.kv.write(ops)?;
        Ok(written)
    }

    /// A job's record as stored.
    pub fn job(&self, job: &[u8]) -> Result<Option<Stored<pb::JobRecord>>, DbError> {
        self.kv
            .get(Table::Jobs, job)?
            .map(|raw| stored(raw, "job"))
            .transpose()
    }

    /// The jobs stored as running: the ones some process must drive.
    pub fn running(&self) -> Result<Vec<JobId>, DbError> {
        self.running_indexed.ensure(|| {
            index_once(&*self.kv, "running-jobs", Table::Jobs, |k, v| {
                let rec: pb::JobRecord = decode(v, "job")?;
                Ok(is_running(&rec).then(|| Op::Put(Table::Meta, running_key(k), Vec::new())))
            })
        })?;
        let mut ids = Vec::new();
        walk(&*self.kv, Table::Meta, RUNNING, b"", |k, _| {
            if let Ok(id) = JobId::try_from(&k[RUNNING.len()..]) {
                ids.push(id);
            }
            Ok::<_, DbError>(ControlFlow::Continue(()))
        })?;
        Ok(ids)
    }

    /// Takes a job found ended off the running index, given its record as
    /// just read (`None`: gone). Fails with [`DbError::Conflict`] if the
    /// record says it runs, or changed since.
    pub fn forget_running(
        &self,
        job: &JobId,
        seen: Option<&Stored<pb::JobRecord>>,
    ) -> Result<(), DbError> {
        let mut ops = vec![Op::Delete(Table::Meta, running_key(job))];
        if let Some(rec) = seen {
            if is_running(rec) {
                return Err(DbError::Conflict);
            }
            ops.push(Op::Expect(
                Table::Jobs,
                job.to_vec(),
                Some(rec.raw().to_vec()),
            ));
        }
        self.kv.write(ops)
    }

    /// Asks whichever process drives `job` to cancel it.
    pub fn ask_cancel(&self, job: &[u8]) -> Result<(), DbError> {
        self.kv.put(Table::Meta, cancel_key(job), vec![1])
    }

    /// Whether a cancellation of `job` was asked for.
    pub fn cancel_asked(&self, job: &[u8]) -> Result<bool, DbError> {
        Ok(self.kv.get(Table::Meta, &cancel_key(job))?.is_some())
    }

    fn index_projects(&self) -> Result<(), DbError> {
        self.projects_indexed.ensure(|| {
            index_once(&*self.kv, "project-jobs", Table::Jobs, |k, v| {
                let rec: pb::JobRecord = decode(v, "job")?;
                Ok(Some(Op::Put(
                    Table::ProjectJobs,
                    [rec.project_id.as_ref(), k].concat(),
                    Vec::new(),
                )))
            })
        })
    }

    /// Jobs ever submitted (index keys counted a page at a time).
    pub fn count(&self) -> Result<u64, DbError> {
        self.index_projects()?;
        let mut n = 0u64;
        walk(&*self.kv, Table::ProjectJobs, b"", b"", |_, _| {
            n += 1;
            Ok::<_, DbError>(ControlFlow::Continue(()))
        })?;
        Ok(n)
    }

    /// The ids of a project's jobs, through its index.
    pub fn of_project(&self, project: &[u8]) -> Result<Vec<Vec<u8>>, DbError> {
        self.index_projects()?;
        let mut ids = Vec::new();
        walk(&*self.kv, Table::ProjectJobs, project, b"", |k, _| {
            ids.push(k[project.len()..].to_vec());
            Ok::<_, DbError>(ControlFlow::Continue(()))
        })?;
        Ok(ids)
    }

    /// A job's current weights.
    pub fn weights(&self, job: &[u8]) -> Result<Option<Vec<u8>>, DbError> {
        self.kv.get(Table::JobWeights, job)
    }

    /// The best weights a job kept for early stopping.
    pub fn best_weights(&self, job: &[u8]) -> Result<Option<Vec<u8>>, DbError> {
        self.kv.get(Table::JobWeights, &best_key(job))
    }

    /// A job's round-to-round state.
    pub fn round_state(&self, job: &[u8]) -> Result<RoundState, DbError> {
        Ok(RoundState {
            server_state: self.kv.get(Table::JobWeights, &server_state_key(job))?,
            drift: self.kv.get(Table::JobWeights, &drift_key(job))?,
        })
    }

    /// Stores a finished round over `last` (the record this driver last
    /// wrote; `None`: none, which never matches a stored job): the job's
    /// record, what the round leaves, what it charged and what it credits
    /// each node (work for payouts, counters), in one transaction: a stale
    /// driver neither commits nor credits. Returns the record's new bytes.
    pub fn commit_round(
        &self,
        job: &JobId,
        last: Option<&[u8]>,
        record: &pb::JobRecord,
        round: FinishedRound<'_>,
    ) -> Result<Vec<u8>, DbError> {
        let written = record.encode_to_vec();
        transact(self.kv.as_ref(), |txn| {
            // Read in the transaction: a successor's round fails it whole.
            if txn.get(Table::Jobs, job)?.as_deref() != last {
                return Err(DbError::Conflict);
            }
            for (node, credit) in &round.credits {
                if credit.micro_units > 0 {
                    add_work_in(txn, node, round.at_ms, credit.micro_units)?;
                }
                account_in(txn, node, |st| {
                    st.work_units += credit.micro_units as f64 / 1e6;
                    st.tasks_accepted = st.tasks_accepted.saturating_add(credit.tasks_accepted);
                    st.verification_failures = st
                        .verification_failures
                        .saturating_add(credit.verification_failures);
                    st.tasks_failed = st.tasks_failed.saturating_add(credit.tasks_failed);
                })?;
            }
            txn.put(Table::Jobs, job.to_vec(), written.clone());
            txn.put(Table::JobWeights, job.to_vec(), round.weights.clone());
            txn.put(
                Table::JobWeights,
                server_state_key(job),
                round.server_state.clone(),
            );
            if let Some(d) = &round.drift {
                txn.put(Table::JobWeights, drift_key(job), d.clone());
            }
            if let Some(b) = &round.best {
                txn.put(Table::JobWeights, best_key(job), b.clone());
            }
            if let Some(c) = round.charge {
                txn.extend(super::charges::charge_ops(&record.project_id, c));
            }
            Ok(())
        })?;
        Ok(written)
    }

    /// Stores a job's end over `last`: its record; the round state goes
    /// (the weights stay), and so do its running mark and any
    /// cancellation asked for.
    pub fn finish(
        &self,
        job: &JobId,
        last: Option<&[u8]>,
        record: &pb::JobRecord,
    ) -> Result<(), DbError> {
        let mut ops = vec![
            Op::Expect(Table::Jobs, job.to_vec(), last.map(<[u8]>::to_vec)),
            Op::Put(Table::Jobs, job.to_vec(), record.encode_to_vec()),
        ];
        for key in [best_key(job), server_state_key(job), drift_key(job)] {
            ops.push(Op::Delete(Table::JobWeights, key));
        }
        if !is_running(record) {
            ops.push(Op::Delete(Table::Meta, running_key(job)));
        }
        ops.push(Op::Delete(Table::Meta, cancel_key(job)));
        self.kv.write(ops)
    }

    /// What every node that ran tasks did.
    pub fn node_stats(&self) -> Result<HashMap<NodeId, pb::ComputeStats>, DbError> {
        let mut out = HashMap::new();
        walk(&*self.kv, Table::ComputeNodes, b"", b"", |k, v| {
            let rec: pb::ComputeRecord = decode(&v, "compute record")?;
            if let Ok(id) = NodeId::try_from(k.as_slice()) {
                out.insert(id, rec.stats.unwrap_or_default());
            }
            Ok::<_, DbError>(ControlFlow::Continue(()))
        })?;
        Ok(out)
    }

    /// Changes a node's counters in one transaction on what is stored
    /// (`change` may run more than once).
    pub fn account(
        &self,
        node: &NodeId,
        change: impl Fn(&mut pb::ComputeStats),
    ) -> Result<(), DbError> {
        transact(self.kv.as_ref(), |txn| account_in(txn, node, &change))
    }
}

/// Changes a node's counters inside the caller's transaction.
fn account_in(
    txn: &mut Txn<'_>,
    node: &NodeId,
    change: impl Fn(&mut pb::ComputeStats),
) -> Result<(), DbError> {
    let mut rec: pb::ComputeRecord = match txn.get(Table::ComputeNodes, node.as_bytes())? {
        Some(v) => decode(&v, "compute record")?,
        None => pb::ComputeRecord::default(),
    };
    change(rec.stats.get_or_insert_with(Default::default));
    txn.put(
        Table::ComputeNodes,
        node.as_bytes().to_vec(),
        rec.encode_to_vec(),
    );
    Ok(())
}

/// One suite for jobs and compute nodes on every backend; two stores on
/// one database stand for two satellite processes.
#[cfg(test)]
mod tests {
    use super::*;
    use crate::satellitedb::on_every_backend;

    fn record(project: u8, state: pb::JobState, round: u32) -> pb::JobRecord {
        pb::JobRecord {
            project_id: vec![project; 16].into(),
            info: Some(pb::JobInfo {
                state: state as i32,
                round,
                ..Default::default()
            }),
            ..Default::default()
        }
    }

    fn conformance(kv: Arc<dyn Kv>) {
        let (a, b) = (JobStore::new(kv.clone()), JobStore::new(kv.clone()));
        let job: JobId = [0xff; 16];
        let first = record(1, pb::JobState::JobRunning, 0);
        let mut last = a.create(&job, &first, vec![1, 2, 3]).expect("create");
        assert!(
            matches!(b.create(&job, &first, vec![]), Err(DbError::Conflict)),
            "an id is taken once"
        );
        assert_eq!(
            b.job(&job).expect("read").expect("there").into_inner(),
            first
        );
        assert_eq!(b.weights(&job).expect("read"), Some(vec![1, 2, 3]));
        assert_eq!(b.running().expect("running"), vec![job]);
        let other: JobId = [0; 16];
        b.create(&other, &record(2, pb::JobState::JobDone, 4), vec![9])
            .expect("create");
        assert_eq!(a.of_project(&[1; 16]).expect("list"), vec![job.to_vec()]);
        assert_eq!(a.of_project(&[2; 16]).expect("list"), vec![other.to_vec()]);
        assert_eq!(a.count().expect("count"), 2);
        assert_eq!(a.running().expect("running"), vec![job], "a done job");

        // A round commits over what its driver last wrote, and only over
        // it: a stale driver (the other "process") cannot.
        let charge = pb::ChargeRecord {
            job_id: job.to_vec().into(),
            round: 1,
            unix_ms: 10,
            total: 7,
            ..Default::default()
        };
        let second = record(1, pb::JobState::JobRunning, 1);
        let round = |w: u8, best: bool| FinishedRound {
            weights: vec![w],
            server_state: vec![w, w],
            drift: Some(vec![w, w, w]),
            best: best.then(|| vec![w; 4]),
            charge: Some(&charge),
            credits: [(
                NodeId::from_bytes([7; 32]),
                NodeCredit {
                    micro_units: 2_500_000,
                    tasks_accepted: 2,
                    verification_failures: 1,
                    tasks_failed: 0,
                },
            )]
            .into(),
            at_ms: 1_000,
        };
        let stale = last.clone();
        last = a
            .commit_round(&job, Some(&last), &second, round(5, true))
            .expect("round");
        assert!(matches!(
            b.commit_round(&job, Some(&stale), &second, round(6, false)),
            Err(DbError::Conflict)
        ));
        assert!(matches!(
            b.commit_round(&job, None, &second, round(6, false)),
            Err(DbError::Conflict)
        ));
        assert_eq!(b.weights(&job).expect("read"), Some(vec![5]));
        assert_eq!(b.best_weights(&job).expect("read"), Some(vec![5; 4]));
        let state = b.round_state(&job).expect("state");
        assert_eq!(
            (state.server_state, state.drift),
            (Some(vec![5, 5]), Some(vec![5, 5, 5]))
        );
        let charges = crate::satellitedb::charges::ChargeStore::new(kv.clone());
        assert_eq!(
            charges.project_total(&[1; 16], 0).expect("total"),
            7,
            "the round's charge, once"
        );
        // The nodes' credits too: the stale driver's attempts credit nothing.
        let worker = NodeId::from_bytes([7; 32]);
        let work = crate::satellitedb::accounting::AccountingStore::new(kv.clone())
            .node_work(&worker, 0, i64::MAX)
            .expect("work");
        assert_eq!(work, 2_500_000);
        let stats = a.node_stats().expect("stats")[&worker];
        assert_eq!((stats.tasks_accepted, stats.verification_failures), (2, 1));
        assert!((stats.work_units - 2.5).abs() < 1e-9);

        // Cancellation asked at one process is seen at the other.
        assert!(!a.cancel_asked(&job).expect("read"));
        b.ask_cancel(&job).expect("cancel");
        assert!(a.cancel_asked(&job).expect("read"));

        // A running job is not taken off the index; an ended one ends once.
        let seen = a.job(&job).expect("read");
        assert!(matches!(
            a.forget_running(&job, seen.as_ref()),
            Err(DbError::Conflict)
        ));
        let ended = record(1, pb::JobState::JobCancelled, 1);
        assert!(matches!(
            b.finish(&job, Some(&stale), &ended),
            Err(DbError::Conflict)
        ));
        a.finish(&job, Some(&last), &ended).expect("finish");
        assert!(a.running().expect("running").is_empty());
        assert!(!a.cancel_asked(&job).expect("read"));
        assert_eq!(b.weights(&job).expect("read"), Some(vec![5]), "kept");
        assert_eq!(b.best_weights(&job).expect("read"), None);
        let state = b.round_state(&job).expect("state");
        assert_eq!((state.server_state, state.drift), (None, None));

        // An index mark left over by a job that ended is dropped.
        kv.put(Table::Meta, running_key(&other), Vec::new())
            .expect("put");
        assert_eq!(a.running().expect("running"), vec![other]);
        let seen = a.job(&other).expect("read");
        a.forget_running(&other, seen.as_ref()).expect("forget");
        assert!(a.running().expect("running").is_empty());

        // Counters from both "processes" at once: none lost.
        let node = NodeId::from_bytes([3; 32]);
        const EACH: u64 = 25;
        std::thread::scope(|s| {
            for store in [&a, &b] {
                for _ in 0..2 {
                    s.spawn(move || {
                        for _ in 0..EACH {
                            store
                                .account(&node, |st| st.tasks_accepted += 1)
                                .expect("account");
                        }
                    });
                }
            }
        });
        let stats = a.node_stats().expect("stats");
        assert_eq!(stats[&node].tasks_accepted, 4 * EACH);

        // A database from before the indexes: both are built once.
        let old = crate::satellitedb::backends::memory();
        let running = record(3, pb::JobState::JobRunning, 0);
        old.put(Table::Jobs, job.to_vec(), running.encode_to_vec())
            .expect("put");
        let fresh = JobStore::new(old);
        assert_eq!(fresh.running().expect("running"), vec![job]);
        assert_eq!(
            fresh.of_project(&[3; 16]).expect("list"),
            vec![job.to_vec()]
        );
    }

    on_every_backend!(conformance);
}
