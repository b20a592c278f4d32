//! Sans-IO core of a segment download: which pieces to fetch, and when.
//!
//! Candidates are given in order of preference (data pieces first: when all
//! `k` of them arrive nothing needs decoding). The plan starts `k` of them,
//! starts another whenever one fails, and hedges a piece whose download made
//! no progress for `hedge_after` by starting one more. Time comes in as
//! `now`; the async driver (`Project::fetch_pieces`) only carries out
//! [`FetchPlan::poll_start`] and reports back.

use std::collections::VecDeque;
use std::time::{Duration, Instant};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FetchStatus {
    /// Still waiting for pieces.
    Running,
    /// `k` pieces are in.
    Complete,
    /// Every candidate was tried and fewer than `k` arrived.
    Failed,
}

struct Running {
    candidate: usize,
    bytes: u64,
    moved: Instant,
    hedged: bool,
}

pub struct FetchPlan {
    k: usize,
    queue: VecDeque<usize>,
    running: Vec<Running>,
    /// Starts owed: `k` at first, plus one per failure and per stall.
    owed: usize,
    done: usize,
    hedge_after: Duration,
}

impl FetchPlan {
    /// A plan over `candidates` pieces (indexes `0..candidates`, in order
    /// of preference) needing `k` of them.
    pub fn new(candidates: usize, k: usize, hedge_after: Duration) -> Self {
        Self {
            k,
            queue: (0..candidates).collect(),
            running: Vec::new(),
            owed: k,
            done: 0,
            hedge_after,
        }
    }

    /// The next candidate to start now, if any.
    pub fn poll_start(&mut self, now: Instant) -> Option<usize> {
        if self.owed == 0 || self.done >= self.k {
            return None;
        }
        let candidate = self.queue.pop_front()?;
        self.owed -= 1;
        self.running.push(Running {
            candidate,
            bytes: 0,
            moved: now,
            hedged: false,
        });
        Some(candidate)
    }

    fn take(&mut self, candidate: usize) -> bool {
        match self.running.iter().position(|r| r.candidate == candidate) {
            Some(i) => {
                self.running.swap_remove(i);
                true
            }
            None => false,
        }
    }

    pub fn handle_done(&mut self, candidate: usize) {
        if self.take(candidate) {
            self.done += 1;
        }
    }

    pub fn handle_failed(&mut self, candidate: usize) {
        if self.take(candidate) {
            self.owed += 1;
        }
    }

    /// Bytes received so far by a running download.
    pub fn handle_progress(&mut self, candidate: usize, bytes: u64, now: Instant) {
        if let Some(r) = self.running.iter_mut().find(|r| r.candidate == candidate)
            && r.bytes != bytes
        {
            r.bytes = bytes;
            r.moved = now;
        }
    }

    /// Hedges every running download that has stalled (once each).
    pub fn handle_tick(&mut self, now: Instant) {
        for r in &mut self.running {
            if !r.hedged && now.duration_since(r.moved) >= self.hedge_after {
                r.hedged = true;
                self.owed += 1;
            }
        }
    }

    pub fn status(&self) -> FetchStatus {
        if self.done >= self.k {
            FetchStatus::Complete
        } else if self.running.is_empty() && self.queue.is_empty() {
            FetchStatus::Failed
        } else {
            FetchStatus::Running
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn starts(plan: &mut FetchPlan, now: Instant) -> Vec<usize> {
        std::iter::from_fn(|| plan.poll_start(now)).collect()
    }

    #[test]
    fn starts_k_preferred_pieces_and_completes_with_them() {
        let t = Instant::now();
        let mut plan = FetchPlan::new(10, 4, Duration::from_millis(750));
        assert_eq!(starts(&mut plan, t), [0, 1, 2, 3]);
        for i in 0..4 {
            assert_eq!(plan.status(), FetchStatus::Running);
            plan.handle_done(i);
        }
        assert_eq!(plan.status(), FetchStatus::Complete);
        assert!(starts(&mut plan, t).is_empty());
    }

    #[test]
    fn a_failure_starts_the_next_candidate() {
        let t = Instant::now();
        let mut plan = FetchPlan::new(6, 2, Duration::from_secs(1));
        assert_eq!(starts(&mut plan, t), [0, 1]);
        plan.handle_failed(1);
        assert_eq!(starts(&mut plan, t), [2]);
        plan.handle_failed(2);
        plan.handle_failed(2); // reported twice: counted once
        assert_eq!(starts(&mut plan, t), [3]);
    }

    #[test]
    fn a_stalled_piece_gets_one_hedge_and_progress_prevents_it() {
        let t = Instant::now();
        let hedge = Duration::from_millis(750);
        let mut plan = FetchPlan::new(10, 4, hedge);
        assert_eq!(starts(&mut plan, t).len(), 4);
        // pieces 0..3 progress except 2
        let later = t + Duration::from_millis(500);
        for i in [0, 1, 3] {
            plan.handle_progress(i, 1000, later);
        }
        plan.handle_tick(t + hedge);
        assert_eq!(
            starts(&mut plan, t + hedge),
            [4],
            "only the stalled piece is hedged"
        );
        plan.handle_tick(t + hedge * 2);
        // 2 was hedged already; 0, 1, 3 and 4 have now stalled too
        assert_eq!(starts(&mut plan, t + hedge * 2), [5, 6, 7, 8]);
        plan.handle_tick(t + hedge * 3);
        assert_eq!(starts(&mut plan, t + hedge * 3), [9]);
    }

    #[test]
    fn fails_when_candidates_run_out() {
        let t = Instant::now();
        let mut plan = FetchPlan::new(3, 2, Duration::from_secs(1));
        assert_eq!(starts(&mut plan, t), [0, 1]);
        plan.handle_done(0);
        plan.handle_failed(1);
        assert_eq!(starts(&mut plan, t), [2]);
        assert_eq!(plan.status(), FetchStatus::Running);
        plan.handle_failed(2);
        assert_eq!(plan.status(), FetchStatus::Failed);
    }

    #[test]
    fn no_candidates_fails_at_once() {
        let mut plan = FetchPlan::new(0, 2, Duration::from_secs(1));
        assert!(plan.poll_start(Instant::now()).is_none());
        assert_eq!(plan.status(), FetchStatus::Failed);
    }
}
