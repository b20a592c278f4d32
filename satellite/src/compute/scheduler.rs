//! The scheduler core of one training round, sans IO: it decides which
//! node runs which task, reacts to results, failures and nodes going away,
//! and compares re-executions. The driver ([`super::Compute`]) owns the
//! sockets and feeds it events; tests drive it directly.
//!
//! Policy:
//! - A task goes to the node holding its data piece. While that node is
//!   online the task waits for a free slot there rather than moving: moving
//!   means rebuilding the piece from `k` others, which costs bandwidth.
//! - If the holder is gone (offline, failed this round, or not offering
//!   compute), the first candidate with a free slot rebuilds and trains.
//! - A task chosen for verification is run a second time by another
//!   candidate, which rebuilds the piece without using the first node's
//!   copy. Equal weights accept the task; different weights call a third
//!   run, and the odd one out is a verification failure of its node.

use std::collections::{HashMap, HashSet};

use loam_common::NodeId;
use loam_common::compute::weights_match;
use rand::seq::SliceRandom;

/// A task: data row `row` of segment `segment` of the job's dataset
/// `dataset`: (dataset, segment, row).
pub type TaskId = (u32, u32, u32);

/// Why a task runs on a node.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Purpose {
    Train,
    Verify,
    TieBreak,
}

impl Purpose {
    pub fn wire(self) -> u32 {
        match self {
            Purpose::Train => 0,
            Purpose::Verify | Purpose::TieBreak => 1,
        }
    }
}

/// Where a task may run: the holder of its piece (if known) and, in order
/// of preference, the nodes the uplink sealed the piece key to.
#[derive(Debug, Clone)]
pub struct TaskPlan {
    pub id: TaskId,
    pub holder: Option<NodeId>,
    pub candidates: Vec<NodeId>,
}

/// The scheduler's instruction: run `task` on `node`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Assignment {
    pub task: TaskId,
    pub node: NodeId,
    pub purpose: Purpose,
    /// The node does not hold the piece and must rebuild it.
    pub rebuild: bool,
    /// A node whose piece the rebuild must not use (the run being checked).
    pub exclude: Option<NodeId>,
}

/// A successful run.
#[derive(Debug, Clone, PartialEq)]
pub struct Output {
    pub weights: Vec<f32>,
    pub samples: u64,
    pub loss: f32,
    pub accuracy: f32,
    /// The starting weights on the task's held-out records.
    pub val_loss: f32,
    pub val_correct: u64,
    pub val_records: u64,
    pub bytes_fetched: u64,
    pub train_ms: i64,
}

/// The nodes as the driver sees them now: which can take tasks, and how
/// many more each can take.
#[derive(Debug, Clone, Default)]
pub struct NodeView {
    pub online: HashSet<NodeId>,
    pub free_slots: HashMap<NodeId, usize>,
}

impl NodeView {
    fn usable(&self, n: &NodeId) -> bool {
        self.online.contains(n)
    }

    fn has_slot(&self, n: &NodeId) -> bool {
        self.free_slots.get(n).copied().unwrap_or(0) > 0
    }

    fn take_slot(&mut self, n: &NodeId) {
        if let Some(s) = self.free_slots.get_mut(n) {
            *s = s.saturating_sub(1);
        }
    }
}

#[derive(Debug, Clone, PartialEq)]
enum Status {
    Open,
    /// Index into `results` of the accepted output.
    Accepted(usize),
    /// Results exist but none can be trusted.
    Discarded,
    /// No candidate could run it.
    Failed,
}

#[derive(Debug)]
struct TaskState {
    plan: TaskPlan,
    verify: bool,
    tried: HashSet<NodeId>,
    running: Vec<(NodeId, Purpose)>,
    results: Vec<(NodeId, Purpose, Output)>,
    status: Status,
    verified: bool,
    /// Verification was wanted but no other node could do it.
    unverified: bool,
}

/// What a finished round produced.
#[derive(Debug, Default)]
pub struct RoundOutcome {
    /// Accepted updates: task, the node whose output is used, the output.
    pub accepted: Vec<(TaskId, NodeId, Output)>,
    /// Every run whose result agreed with an accepted one (work to pay).
    pub credited: Vec<(NodeId, u64)>,
    /// Nodes whose result was outvoted by re-execution.
    pub verification_failures: Vec<NodeId>,
    /// Runs that failed (node gone, error); one entry per failed run.
    pub failed_runs: Vec<NodeId>,
    pub failed_tasks: usize,
    pub verified_tasks: usize,
    pub unverified_tasks: usize,
    pub bytes_fetched_train: u64,
    pub bytes_fetched_verify: u64,
}

/// One round of a job.
#[derive(Debug)]
pub struct Round {
    tasks: Vec<TaskState>,
    index: HashMap<TaskId, usize>,
    /// Nodes that failed a run this round get nothing more in it.
    failed_nodes: HashSet<NodeId>,
    tolerance: f32,
    outcome: RoundOutcome,
    /// Picks among the nodes that may check a task.
    rng: rand::rngs::StdRng,
}

impl Round {
    /// `verify[i]` says whether `plans[i]` is re-executed; `tolerance` is
    /// passed to [`weights_match`].
    pub fn new(plans: Vec<TaskPlan>, verify: &[bool], tolerance: f32) -> Self {
        let tasks: Vec<TaskState> = plans
            .into_iter()
            .enumerate()
            .map(|(i, plan)| TaskState {
                plan,
                verify: verify.get(i).copied().unwrap_or(false),
                tried: HashSet::new(),
                running: Vec::new(),
                results: Vec::new(),
                status: Status::Open,
                verified: false,
                unverified: false,
            })
            .collect();
        let index = tasks
            .iter()
            .enumerate()
            .map(|(i, t)| (t.plan.id, i))
            .collect();
        Self {
            tasks,
            index,
            failed_nodes: HashSet::new(),
            tolerance,
            outcome: RoundOutcome::default(),
            rng: rand::SeedableRng::seed_from_u64(0),
        }
    }

    /// Seeds the choice of the nodes that re-execute tasks (the driver
    /// passes fresh randomness; tests a fixed seed).
    pub fn with_seed(mut self, seed: u64) -> Self {
        self.rng = rand::SeedableRng::seed_from_u64(seed);
        self
    }

    /// Runs in flight.
    pub fn running(&self) -> usize {
        self.tasks.iter().map(|t| t.running.len()).sum()
    }

    /// Tasks still waiting for a result.
    pub fn open(&self) -> usize {
        self.tasks
            .iter()
            .filter(|t| t.status == Status::Open)
            .count()
    }

    /// Tasks with an accepted result so far.
    pub fn done(&self) -> usize {
        self.tasks
            .iter()
            .filter(|t| matches!(t.status, Status::Accepted(_)))
            .count()
    }

    /// Whether every task is settled and nothing runs.
    pub fn is_complete(&self) -> bool {
        self.tasks
            .iter()
            .all(|t| t.status != Status::Open && t.running.is_empty())
    }

    /// New runs to start, given the nodes' state; takes their slots from
    /// `nodes`.
    pub fn assign(&mut self, nodes: &mut NodeView) -> Vec<Assignment> {
        let mut out = Vec::new();
        for i in 0..self.tasks.len() {
            if let Some(a) = self.next_run(i, nodes) {
                nodes.take_slot(&a.node);
                let t = &mut self.tasks[i];
                t.tried.insert(a.node);
                t.running.push((a.node, a.purpose));
                out.push(a);
            }
        }
        out
    }

    fn next_run(&mut self, i: usize, nodes: &NodeView) -> Option<Assignment> {
        let failed = &self.failed_nodes;
        let rng = &mut self.rng;
        let t = &mut self.tasks[i];
        if t.status != Status::Open {
            return None;
        }
        let has = |t: &TaskState, p: Purpose| {
            t.results.iter().any(|r| r.1 == p) || t.running.iter().any(|r| r.1 == p)
        };
        let purpose = if !has(t, Purpose::Train) {
            Purpose::Train
        } else if t.results.is_empty() {
            return None; // the first run is still going
        } else if t.verify && !has(t, Purpose::Verify) {
            Purpose::Verify
        } else if t.results.len() == 2 && !has(t, Purpose::TieBreak) {
            Purpose::TieBreak
        } else {
            return None;
        };
        let untried = |n: &&NodeId| !t.tried.contains(*n) && !failed.contains(*n);
        // Nobody left to run it: settle the task with what it has.
        if !t
            .plan
            .candidates
            .iter()
            .any(|n| untried(&n) && nodes.usable(n))
        {
            if t.running.is_empty() {
                match purpose {
                    Purpose::Train => t.status = Status::Failed,
                    Purpose::Verify => {
                        t.unverified = true;
                        t.status = Status::Accepted(0);
                    }
                    Purpose::TieBreak => t.status = Status::Discarded,
                }
            }
            return None;
        }
        let holder = t
            .plan
            .holder
            .filter(|h| t.plan.candidates.contains(h) && untried(&h) && nodes.usable(h));
        let node = match (purpose, holder) {
            // Locality: wait for the holder rather than move the data.
            (Purpose::Train, Some(h)) => nodes.has_slot(&h).then_some(h)?,
            // Training elsewhere: the first free candidate in the plan's
            // (satellite-shuffled) order.
            (Purpose::Train, None) => *t
                .plan
                .candidates
                .iter()
                .find(|n| untried(n) && nodes.usable(n) && nodes.has_slot(n))?,
            // A check goes to a random free candidate, one that must
            // rebuild if any (independent data): no node can tell in
            // advance that it will be the one checking.
            _ => {
                let free: Vec<NodeId> = t
                    .plan
                    .candidates
                    .iter()
                    .filter(|n| untried(n) && nodes.usable(n) && nodes.has_slot(n))
                    .copied()
                    .collect();
                let rebuilders: Vec<NodeId> = free
                    .iter()
                    .filter(|n| Some(**n) != t.plan.holder)
                    .copied()
                    .collect();
                let pool = if rebuilders.is_empty() {
                    free
                } else {
                    rebuilders
                };
                *pool.choose(rng)?
            }
        };
        let exclude = match purpose {
            Purpose::Train => None,
            _ => t.results.first().map(|r| r.0),
        };
        Some(Assignment {
            task: t.plan.id,
            node,
            purpose,
            rebuild: Some(node) != t.plan.holder || exclude == Some(node),
            exclude,
        })
    }

    /// A run ended. Results from runs the round no longer waits for are
    /// ignored.
    pub fn on_result(
        &mut self,
        task: TaskId,
        node: NodeId,
        purpose: Purpose,
        result: Result<Output, String>,
    ) {
        let Some(&i) = self.index.get(&task) else {
            return;
        };
        let t = &mut self.tasks[i];
        let Some(pos) = t.running.iter().position(|r| *r == (node, purpose)) else {
            return;
        };
        t.running.remove(pos);
        let out = match result {
            Ok(out) => out,
            Err(_) => {
                self.failed_nodes.insert(node);
                self.outcome.failed_runs.push(node);
                return;
            }
        };
        match purpose {
            Purpose::Train => self.outcome.bytes_fetched_train += out.bytes_fetched,
            _ => self.outcome.bytes_fetched_verify += out.bytes_fetched,
        }
        t.results.push((node, purpose, out));
        if t.status != Status::Open {
            return;
        }
        let tol = self.tolerance;
        match t.results.len() {
            1 if !t.verify => t.status = Status::Accepted(0),
            1 => {}
            2 => {
                if agree(&t.results[0].2, &t.results[1].2, tol) {
                    t.verified = true;
                    t.status = Status::Accepted(0);
                }
            }
            _ => {
                let r = &t.results;
                let pairs = [(0, 1, 2), (0, 2, 1), (1, 2, 0)];
                match pairs
                    .iter()
                    .find(|(a, b, _)| agree(&r[*a].2, &r[*b].2, tol))
                {
                    Some(&(a, _, odd)) => {
                        self.outcome.verification_failures.push(r[odd].0);
                        t.verified = true;
                        t.status = Status::Accepted(a);
                    }
                    None => t.status = Status::Discarded,
                }
            }
        }
    }

    /// `node` is gone: its runs count as failed, and the tasks move on.
    pub fn on_node_lost(&mut self, node: NodeId) {
        let lost: Vec<(TaskId, Purpose)> = self
            .tasks
            .iter()
            .flat_map(|t| {
                t.running
                    .iter()
                    .filter(|r| r.0 == node)
                    .map(|r| (t.plan.id, r.1))
                    .collect::<Vec<_>>()
            })
            .collect();
        for (task, purpose) in lost {
            self.on_result(task, node, purpose, Err("node went offline".into()));
        }
        self.failed_nodes.insert(node);
    }

    /// Runs that are still going on `node`.
    pub fn running_on(&self, node: &NodeId) -> usize {
        self.tasks
            .iter()
            .map(|t| t.running.iter().filter(|r| r.0 == *node).count())
            .sum()
    }

    /// The round's result; call once [`Round::is_complete`].
    pub fn finish(mut self) -> RoundOutcome {
        let tol = self.tolerance;
        for t in self.tasks {
            match t.status {
                Status::Accepted(a) => {
                    let Some((node, _, chosen)) = t.results.get(a).cloned() else {
                        continue;
                    };
                    for (n, _, out) in &t.results {
                        if agree(out, &chosen, tol) {
                            self.outcome.credited.push((*n, out.samples));
                        }
                    }
                    self.outcome.verified_tasks += usize::from(t.verified);
                    self.outcome.unverified_tasks += usize::from(t.unverified);
                    self.outcome.accepted.push((t.plan.id, node, chosen));
                }
                Status::Failed | Status::Discarded | Status::Open => {
                    self.outcome.failed_tasks += 1;
                }
            }
        }
        self.outcome
    }
}

/// Whether two runs of a task agree: on the weights they trained and on
/// how the starting weights did on the held-out records (which early
/// stopping believes). Only runs that agree with the accepted one are paid.
fn agree(a: &Output, b: &Output, tol: f32) -> bool {
    weights_match(&a.weights, &b.weights, tol)
        && (a.val_correct, a.val_records) == (b.val_correct, b.val_records)
        && (a.val_loss - b.val_loss).abs() <= tol * (1.0 + a.val_loss.abs())
}

#[cfg(test)]
mod tests {
    use super::*;
    use loam_common::KeyPair;

    fn node() -> NodeId {
        KeyPair::generate().public().node_id()
    }

    fn out(w: f32) -> Output {
        Output {
            weights: vec![w, w],
            samples: 10,
            loss: 1.0,
            accuracy: 0.5,
            val_loss: 0.0,
            val_correct: 0,
            val_records: 0,
            bytes_fetched: 0,
            train_ms: 1,
        }
    }

    fn view(nodes: &[NodeId], slots: usize) -> NodeView {
        NodeView {
            online: nodes.iter().copied().collect(),
            free_slots: nodes.iter().map(|n| (*n, slots)).collect(),
        }
    }

    #[test]
    fn tasks_go_to_their_holders_and_wait_for_them() {
        let n: Vec<NodeId> = (0..4).map(|_| node()).collect();
        let plans = vec![
            TaskPlan {
                id: (0, 0, 0),
                holder: Some(n[0]),
                candidates: vec![n[0], n[2], n[3]],
            },
            TaskPlan {
                id: (0, 0, 1),
                holder: Some(n[0]),
                candidates: vec![n[0], n[2], n[3]],
            },
        ];
        let mut round = Round::new(plans, &[false, false], 0.0);
        let mut v = view(&n, 1);
        let a = round.assign(&mut v);
        // One slot on the holder: the second task waits instead of moving.
        assert_eq!(a.len(), 1);
        assert_eq!((a[0].node, a[0].rebuild), (n[0], false));
        round.on_result((0, 0, 0), n[0], Purpose::Train, Ok(out(1.0)));
        let a = round.assign(&mut view(&n, 1));
        assert_eq!(a.len(), 1);
        assert_eq!((a[0].task, a[0].node), ((0, 0, 1), n[0]));
        round.on_result((0, 0, 1), n[0], Purpose::Train, Ok(out(2.0)));
        assert!(round.is_complete());
        let o = round.finish();
        assert_eq!(o.accepted.len(), 2);
        assert_eq!(o.credited.len(), 2);
        assert_eq!(o.bytes_fetched_train, 0);
    }

    #[test]
    fn a_lost_holder_moves_its_task_to_a_rebuilder() {
        let n: Vec<NodeId> = (0..3).map(|_| node()).collect();
        let plans = vec![TaskPlan {
            id: (0, 0, 0),
            holder: Some(n[0]),
            candidates: vec![n[0], n[1], n[2]],
        }];
        let mut round = Round::new(plans, &[false], 0.0);
        let a = round.assign(&mut view(&n, 2));
        assert_eq!(a[0].node, n[0]);
        round.on_node_lost(n[0]);
        let mut v = view(&n[1..], 2);
        let a = round.assign(&mut v);
        assert_eq!(a.len(), 1);
        assert_eq!((a[0].node, a[0].rebuild), (n[1], true));
        // A late answer from the lost node is ignored.
        round.on_result((0, 0, 0), n[0], Purpose::Train, Ok(out(9.0)));
        round.on_result((0, 0, 0), n[1], Purpose::Train, Ok(out(1.0)));
        let o = round.finish();
        assert_eq!(o.accepted[0].1, n[1]);
        assert_eq!(o.failed_runs, vec![n[0]]);
    }

    #[test]
    fn an_offline_holder_is_skipped_from_the_start() {
        let n: Vec<NodeId> = (0..3).map(|_| node()).collect();
        let plans = vec![TaskPlan {
            id: (0, 1, 2),
            holder: Some(n[0]),
            candidates: vec![n[0], n[1]],
        }];
        let mut round = Round::new(plans, &[false], 0.0);
        let a = round.assign(&mut view(&n[1..], 1));
        assert_eq!((a[0].node, a[0].rebuild), (n[1], true));
    }

    #[test]
    fn verification_outvotes_a_wrong_node() {
        let n: Vec<NodeId> = (0..4).map(|_| node()).collect();
        let plans = vec![TaskPlan {
            id: (0, 0, 0),
            holder: Some(n[0]),
            candidates: vec![n[0], n[1], n[2], n[3]],
        }];
        let mut round = Round::new(plans, &[true], 1e-6);
        let a = round.assign(&mut view(&n, 1));
        assert_eq!(a[0].purpose, Purpose::Train);
        round.on_result((0, 0, 0), n[0], Purpose::Train, Ok(out(5.0))); // wrong
        let a = round.assign(&mut view(&n, 1));
        assert_eq!(a.len(), 1);
        assert_eq!(a[0].purpose, Purpose::Verify);
        assert_eq!(a[0].exclude, Some(n[0]));
        assert!(a[0].rebuild);
        let verifier = a[0].node;
        round.on_result((0, 0, 0), verifier, Purpose::Verify, Ok(out(1.0)));
        let a = round.assign(&mut view(&n, 1));
        assert_eq!(a[0].purpose, Purpose::TieBreak);
        let third = a[0].node;
        assert!(third != n[0] && third != verifier);
        round.on_result((0, 0, 0), third, Purpose::TieBreak, Ok(out(1.0)));
        assert!(round.is_complete());
        let o = round.finish();
        assert_eq!(o.verification_failures, vec![n[0]]);
        assert_eq!(o.accepted[0].1, verifier);
        assert_eq!(o.accepted[0].2.weights, vec![1.0, 1.0]);
        let paid: Vec<NodeId> = o.credited.iter().map(|c| c.0).collect();
        assert!(!paid.contains(&n[0]));
        assert_eq!(paid.len(), 2);
        assert_eq!(o.verified_tasks, 1);
    }

    #[test]
    fn matching_verification_accepts_and_pays_both() {
        let n: Vec<NodeId> = (0..2).map(|_| node()).collect();
        let plans = vec![TaskPlan {
            id: (0, 0, 0),
            holder: Some(n[0]),
            candidates: vec![n[0], n[1]],
        }];
        let mut round = Round::new(plans, &[true], 0.0);
        round.assign(&mut view(&n, 1));
        round.on_result((0, 0, 0), n[0], Purpose::Train, Ok(out(1.0)));
        let a = round.assign(&mut view(&n, 1));
        round.on_result((0, 0, 0), a[0].node, Purpose::Verify, Ok(out(1.0)));
        let o = round.finish();
        assert_eq!(o.credited.len(), 2);
        assert!(o.verification_failures.is_empty());
    }

    #[test]
    fn a_task_nobody_can_run_fails_and_lone_nodes_go_unverified() {
        let n: Vec<NodeId> = (0..2).map(|_| node()).collect();
        let plans = vec![
            TaskPlan {
                id: (0, 0, 0),
                holder: None,
                candidates: vec![n[0]],
            },
            TaskPlan {
                id: (0, 0, 1),
                holder: Some(n[1]),
                candidates: vec![n[1]],
            },
        ];
        let mut round = Round::new(plans, &[false, true], 0.0);
        let a = round.assign(&mut view(&n, 1));
        assert_eq!(a.len(), 2);
        round.on_result((0, 0, 0), n[0], Purpose::Train, Err("boom".into()));
        round.on_result((0, 0, 1), n[1], Purpose::Train, Ok(out(1.0)));
        assert!(round.assign(&mut view(&n, 1)).is_empty());
        assert!(round.is_complete());
        let o = round.finish();
        assert_eq!(o.failed_tasks, 1);
        assert_eq!(o.unverified_tasks, 1);
        assert_eq!(o.accepted.len(), 1);
    }
}
