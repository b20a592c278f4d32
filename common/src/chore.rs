//! Background loops ("chores") that run on an interval, can be paused, and
//! can be triggered and awaited from tests instead of sleeping.

use std::future::Future;
use std::time::Duration;

use tokio::sync::{Notify, watch};
use tokio_util::sync::CancellationToken;

/// Drives one chore. Share it (`Arc`) between the loop and its controllers.
pub struct Cycle {
    interval: Duration,
    trigger: Notify,
    paused: watch::Sender<bool>,
    /// (cycles started, cycles finished)
    progress: watch::Sender<(u64, u64)>,
}

impl Cycle {
    pub fn new(interval: Duration) -> Self {
        Self {
            interval,
            trigger: Notify::new(),
            paused: watch::channel(false).0,
            progress: watch::channel((0, 0)).0,
        }
    }

    pub fn interval(&self) -> Duration {
        self.interval
    }

    /// Runs `f` now and then every interval (or on trigger) until `cancel`.
    pub async fn run<F, Fut>(&self, cancel: CancellationToken, mut f: F)
    where
        F: FnMut() -> Fut,
        Fut: Future<Output = ()>,
    {
        let mut paused = self.paused.subscribe();
        loop {
            while *paused.borrow_and_update() {
                tokio::select! {
                    _ = cancel.cancelled() => return,
                    r = paused.changed() => if r.is_err() { return },
                }
            }
            self.progress.send_modify(|p| p.0 += 1);
            tokio::select! {
                _ = cancel.cancelled() => return,
                _ = f() => {}
            }
            self.progress.send_modify(|p| p.1 += 1);
            tokio::select! {
                _ = cancel.cancelled() => return,
                _ = tokio::time::sleep(self.interval) => {}
                _ = self.trigger.notified() => {}
            }
        }
    }

    /// Starts the next cycle now.
    pub fn trigger(&self) {
        self.trigger.notify_one();
    }

    /// Starts a cycle and waits until a cycle begun after this call ends.
    pub async fn trigger_wait(&self) {
        let mut rx = self.progress.subscribe();
        let target = rx.borrow().0 + 1;
        self.trigger();
        let _ = rx.wait_for(|p| p.1 >= target).await;
    }

    pub fn pause(&self) {
        self.paused.send_replace(true);
    }

    pub fn resume(&self) {
        self.paused.send_replace(false);
    }

    /// Cycles finished so far.
    pub fn finished(&self) -> u64 {
        self.progress.borrow().1
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;
    use std::sync::atomic::{AtomicU64, Ordering};

    use super::*;

    #[tokio::test]
    async fn trigger_wait_runs_a_fresh_cycle() {
        let cycle = Arc::new(Cycle::new(Duration::from_secs(3600)));
        let count = Arc::new(AtomicU64::new(0));
        let cancel = CancellationToken::new();
        let task = {
            let (cycle, count, cancel) = (cycle.clone(), count.clone(), cancel.clone());
            tokio::spawn(async move {
                cycle
                    .run(cancel, || {
                        let count = count.clone();
                        async move {
                            count.fetch_add(1, Ordering::SeqCst);
                        }
                    })
                    .await
            })
        };
        cycle.trigger_wait().await;
        let after_first = count.load(Ordering::SeqCst);
        assert!(after_first >= 1);
        cycle.trigger_wait().await;
        assert!(count.load(Ordering::SeqCst) > after_first);
        cancel.cancel();
        task.await.expect("chore stops on cancel");
    }
}
