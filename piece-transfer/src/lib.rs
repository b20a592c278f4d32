//! Moving pieces between a client and storage nodes, shared by the uplink,
//! the satellite's repairer and a storage node rebuilding a piece it trains
//! on:
//!
//! - [`segment`]: the pure plaintext ↔ pieces transformation (encrypt rows,
//!   erasure-code, a stripe at a time; decode and verify);
//! - [`piece`]: the piece transfer protocol with one node (upload with
//!   signed orders, download checked against the committed hash);
//! - [`feed`]: stripes fed to every node's upload, paced by the slowest
//!   needed;
//! - [`fetch`] and [`fetch_pieces`]: fetching the first `k` pieces to
//!   arrive, hedging against slow or dead nodes.
//!
//! It links no training code and no CLI: the satellite depends on it.

pub mod feed;
pub mod fetch;
pub mod piece;
pub mod segment;

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Instant;

use futures::stream::{FuturesUnordered, StreamExt};
use loam_common::erasure::RedundancyScheme;
use loam_common::{KeyPair, pb};

use crate::fetch::{FetchPlan, FetchStatus};

/// Too few pieces of a segment could be fetched.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error(
    "download failed: only {got} of the {needed} pieces needed could be fetched (last error: {last_error})"
)]
pub struct FetchError {
    pub got: usize,
    pub needed: usize,
    pub last_error: String,
}

/// Fetches `k` pieces of a segment from the nodes of `limits`, data pieces first (no decoding needed), starting
/// another piece whenever one fails or stalls.
#[allow(clippy::too_many_arguments)]
pub async fn fetch_pieces(
    endpoint: &loam_common::transport::Endpoint,
    dial_timeout: std::time::Duration,
    hedge_after: std::time::Duration,
    limits: &[pb::AddressedOrderLimit],
    scheme: RedundancyScheme,
    piece_size: u64,
    piece_key: &KeyPair,
    verify_all: bool,
) -> Result<Vec<Option<Vec<u8>>>, FetchError> {
    let all: Vec<usize> = (0..scheme.total()).collect();
    fetch_chosen(
        endpoint,
        dial_timeout,
        hedge_after,
        limits,
        scheme,
        &all,
        scheme.k(),
        piece_size,
        piece_key,
        verify_all,
    )
    .await
}

/// Fetches `need` of the pieces numbered in `chosen` (data pieces first),
/// as [`fetch_pieces`] does for any `k`: a range read takes exactly the
/// data pieces that hold its rows.
#[allow(clippy::too_many_arguments)]
pub async fn fetch_chosen(
    endpoint: &loam_common::transport::Endpoint,
    dial_timeout: std::time::Duration,
    hedge_after: std::time::Duration,
    limits: &[pb::AddressedOrderLimit],
    scheme: RedundancyScheme,
    chosen: &[usize],
    need: usize,
    piece_size: u64,
    piece_key: &KeyPair,
    verify_all: bool,
) -> Result<Vec<Option<Vec<u8>>>, FetchError> {
    let k = scheme.k();
    let mut candidates: Vec<&pb::AddressedOrderLimit> = limits
        .iter()
        .filter(|l| (l.piece_num as usize) < scheme.total())
        .filter(|l| chosen.contains(&(l.piece_num as usize)))
        .collect();
    candidates.sort_by_key(|l| l.piece_num);
    let mut plan = FetchPlan::new(candidates.len(), need, hedge_after);
    let mut pieces: Vec<Option<Vec<u8>>> = vec![None; scheme.total()];
    let mut last_error = String::from("not enough pieces are on nodes that are online");
    let mut inflight = FuturesUnordered::new();
    let mut counters: HashMap<usize, Arc<AtomicU64>> = HashMap::new();
    let mut tick = tokio::time::interval(hedge_after / 3);
    loop {
        while let Some(c) = plan.poll_start(Instant::now()) {
            let counter = Arc::new(AtomicU64::new(0));
            counters.insert(c, counter.clone());
            let limit = candidates[c];
            inflight.push(async move {
                let r = piece::download(
                    endpoint,
                    limit,
                    piece_key,
                    piece_size,
                    dial_timeout,
                    counter,
                    verify_all || limit.piece_num as usize >= k,
                )
                .await;
                (c, r)
            });
        }
        match plan.status() {
            FetchStatus::Complete => return Ok(pieces),
            FetchStatus::Failed => {
                return Err(FetchError {
                    got: pieces.iter().flatten().count(),
                    needed: need,
                    last_error,
                });
            }
            FetchStatus::Running => {}
        }
        tokio::select! {
            Some((c, result)) = inflight.next() => {
                counters.remove(&c);
                match result {
                    Ok(data) => {
                        pieces[candidates[c].piece_num as usize] = Some(data);
                        plan.handle_done(c);
                    }
                    Err(e) => {
                        tracing::debug!(piece = candidates[c].piece_num, error = %e, "piece download failed");
                        last_error = e.to_string();
                        plan.handle_failed(c);
                    }
                }
            }
            _ = tick.tick() => {
                let now = Instant::now();
                for (c, counter) in &counters {
                    plan.handle_progress(*c, counter.load(Ordering::Relaxed), now);
                }
                plan.handle_tick(now);
            }
        }
    }
}
