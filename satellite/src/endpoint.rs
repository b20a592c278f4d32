//! The satellite's RPC endpoint: authenticates each request (API key for
//! uplinks, TLS identity for nodes and the operator) and routes it.

use std::sync::Arc;
use std::time::{Duration, Instant};

use loam_common::pb::satellite_request::Request as Req;
use loam_common::pb::satellite_response::Response as Resp;
use loam_common::rpc::RemoteError;
use loam_common::wire::{FrameReader, FrameWriter};
use loam_common::{NodeId, pb};

use loam_common::macaroon::Op as KeyOp;

use crate::apikeys::Authorized;
use crate::compute::{Compute, ComputeError};
use crate::market::MarketError;
use crate::metainfo::{Metainfo, MetainfoError};
use crate::overlay::Overlay;

/// The longest a `satellite status --wait-nodes` call is held open.
const MAX_STATUS_WAIT_MS: u64 = 600_000;

pub struct Endpoint {
    pub(crate) own_id: NodeId,
    pub(crate) overlay: Arc<Overlay>,
    pub(crate) metainfo: Arc<Metainfo>,
    pub(crate) compute: Arc<Compute>,
    pub(crate) reputation: Arc<crate::audit::Reputation>,
    pub(crate) payouts: Arc<crate::payouts::Payouts>,
    pub(crate) repair: Arc<crate::repair::Repair>,
    /// Least node version accepted without a warning; empty: none.
    pub(crate) minimum_node_version: String,
    pub(crate) started_ms: i64,
    /// The satellite's QUIC endpoint, to dial nodes back.
    pub(crate) quic: loam_common::transport::Endpoint,
    /// Nodes with a settlement running.
    pub(crate) settling: Arc<std::sync::Mutex<std::collections::HashSet<NodeId>>>,
    /// Settlements running at once, over all nodes.
    pub(crate) settlements: tokio::sync::Semaphore,
}

/// How long dialing a node back at check-in may take.
const DIAL_BACK_TIMEOUT: Duration = Duration::from_secs(5);

/// Settlements running at once over all nodes.
pub const MAX_SETTLEMENTS: usize = 4;

/// A node's claim on its one running settlement; released when dropped.
struct SettlingNode {
    set: Arc<std::sync::Mutex<std::collections::HashSet<NodeId>>>,
    node: NodeId,
}

impl SettlingNode {
    fn claim(
        set: &Arc<std::sync::Mutex<std::collections::HashSet<NodeId>>>,
        node: NodeId,
    ) -> Option<Self> {
        set.lock()
            .expect("settling lock")
            .insert(node)
            .then(|| Self {
                set: set.clone(),
                node,
            })
    }
}

impl Drop for SettlingNode {
    fn drop(&mut self) {
        self.set.lock().expect("settling lock").remove(&self.node);
    }
}

fn method(req: &Req) -> &'static str {
    match req {
        Req::CheckIn(_) => "check_in",
        Req::Info(_) => "info",
        Req::Status(_) => "status",
        Req::CreateBucket(_) => "create_bucket",
        Req::DeleteBucket(_) => "delete_bucket",
        Req::ListBuckets(_) => "list_buckets",
        Req::GetBucket(_) => "get_bucket",
        Req::ProjectInfo(_) => "project_info",
        Req::BeginObject(_) => "begin_object",
        Req::BeginSegment(_) => "begin_segment",
        Req::CommitSegment(_) => "commit_segment",
        Req::CommitObject(_) => "commit_object",
        Req::GetObject(_) => "get_object",
        Req::DownloadSegment(_) => "download_segment",
        Req::ListObjects(_) => "list_objects",
        Req::DeleteObject(_) => "delete_object",
        Req::BeginMoveObject(_) => "begin_move_object",
        Req::FinishMoveObject(_) => "finish_move_object",
        Req::FinishCopyObject(_) => "finish_copy_object",
        Req::ListPending(_) => "list_pending",
        Req::AbortObject(_) => "abort_object",
        Req::ListUploadSegments(_) => "list_upload_segments",
        Req::CreateApiKey(_) => "create_api_key",
        Req::ListApiKeys(_) => "list_api_keys",
        Req::RevokeApiKey(_) => "revoke_api_key",
        Req::PublishListing(_) => "publish_listing",
        Req::UnpublishListing(_) => "unpublish_listing",
        Req::ListListings(_) => "list_listings",
        Req::GetListing(_) => "get_listing",
        Req::ResealListing(_) => "reseal_listing",
        Req::ListingUsage(_) => "listing_usage",
        Req::Earnings(_) => "earnings",
        Req::SetPayoutAddress(_) => "set_payout_address",
        Req::Charges(_) => "charges",
        Req::FetchModel(_) => "fetch_model",
        Req::ListNodes(_) => "list_nodes",
        Req::SetCompute(_) => "set_compute",
        Req::Exit(_) => "exit",
        Req::PlanJob(_) => "plan_job",
        Req::SubmitJob(_) => "submit_job",
        Req::GetJob(_) => "get_job",
        Req::ListJobs(_) => "list_jobs",
        Req::CancelJob(_) => "cancel_job",
        Req::JobWeights(_) => "job_weights",
        Req::SettleOrders(_) => "settle_orders",
        Req::Ledger(_) => "ledger",
        Req::ProjectUsage(_) => "project_usage",
        Req::Payouts(_) => "payouts",
        Req::SetProjectLimits(_) => "set_project_limits",
    }
}

impl Endpoint {
    /// Serves one RPC stream from the peer authenticated as `peer`.
    pub async fn handle_stream(
        self: Arc<Self>,
        peer: NodeId,
        remote: std::net::SocketAddr,
        send: quinn::SendStream,
        recv: quinn::RecvStream,
    ) {
        let mut reader = FrameReader::new(recv);
        let mut writer = FrameWriter::new(send);
        let started = Instant::now();
        let (name, result) = match reader.message::<pb::SatelliteRequest>().await {
            Ok(pb::SatelliteRequest {
                api_key,
                request: Some(req),
            }) => {
                let name = method(&req);
                match req {
                    Req::SettleOrders(h) => (name, self.settle(peer, h, &mut reader).await),
                    Req::CheckIn(r) => (name, self.check_in(peer, remote, r).await),
                    // `status --wait-nodes`: held until enough nodes are
                    // online (each check-in wakes it) or the wait is over.
                    Req::Status(s) if s.wait_online_nodes > 0 && peer == self.own_id => {
                        let wait = Duration::from_millis(s.wait_ms.min(MAX_STATUS_WAIT_MS));
                        let online = self.overlay.wait_online_count(s.wait_online_nodes as usize);
                        let _ = tokio::time::timeout(wait, online).await;
                        (name, self.dispatch(peer, &api_key, Req::Status(s)))
                    }
                    req => (name, self.dispatch(peer, &api_key, req)),
                }
            }
            Ok(_) => (
                "unknown",
                Err(RemoteError::new(
                    pb::ErrorCode::InvalidArgument,
                    "empty request",
                )),
            ),
            Err(e) => (
                "unknown",
                Err(RemoteError::new(
                    pb::ErrorCode::InvalidArgument,
                    e.to_string(),
                )),
            ),
        };
        let response = match result {
            Ok(r) => r,
            Err(e) => {
                metrics::counter!("loam_satellite_rpc_errors_total", "method" => name, "code" => e.code.as_str_name())
                    .increment(1);
                tracing::debug!(method = name, error = %e, "request failed");
                Resp::Error((&e).into())
            }
        };
        metrics::histogram!("loam_satellite_rpc_duration_seconds", "method" => name)
            .record(started.elapsed().as_secs_f64());
        let _ = writer
            .message(&pb::SatelliteResponse {
                response: Some(response),
            })
            .await;
        let _ = writer.finish();
    }

    /// A node's check-in, as the satellite sees it: the source address of
    /// the connection (for the subnet rule), and whether the node can be
    /// reached at the address it advertises, by dialing it back.
    async fn check_in(
        &self,
        peer: NodeId,
        remote: std::net::SocketAddr,
        r: pb::CheckInRequest,
    ) -> Result<Resp, RemoteError> {
        let api = |e: crate::metainfo::MetainfoError| RemoteError::new(e.code(), e.to_string());
        let m = &self.metainfo;
        let reachable = self.dial_back(peer, &r.address).await;
        if !reachable {
            tracing::info!(node = %peer.short(), address = %r.address, "node not reachable at its advertised address");
        }
        let now = loam_common::orders::now_ms();
        self.overlay
            .check_in_seen(peer, &r, Some(remote.ip()), reachable, now)
            .map_err(|e| api(e.into()))?;
        metrics::counter!("loam_satellite_checkins_total").increment(1);
        metrics::gauge!("loam_satellite_nodes_online").set(self.overlay.online_count(now) as f64);
        let standing = self
            .reputation
            .get(&peer)
            .map(|r| self.reputation.config().standing(&r))
            .ok();
        let rates = self.payouts.config();
        Ok(Resp::CheckIn(pb::CheckInResponse {
            standing,
            order_window_ms: m.orders().window_ms(),
            rates: Some(pb::PayoutRates {
                token_decimals: rates.token_decimals,
                storage_per_tb_month: rates.storage_per_tb_month,
                egress_per_tb: rates.egress_per_tb,
                repair_audit_per_tb: rates.repair_audit_per_tb,
                ingress_per_tb: rates.ingress_per_tb,
                per_work_unit: rates.per_work_unit,
            }),
            minimum_version: self.minimum_node_version.clone(),
            suggested_version: loam_common::VERSION.to_string(),
            reachable,
            observed_address: remote.to_string(),
            ..Default::default()
        }))
    }

    /// Whether a QUIC connection to `address`, pinned to `peer`, comes up
    /// within [`DIAL_BACK_TIMEOUT`].
    async fn dial_back(&self, peer: NodeId, address: &str) -> bool {
        let Ok(Some(addr)) = tokio::net::lookup_host(address).await.map(|mut a| a.next()) else {
            return false;
        };
        matches!(
            tokio::time::timeout(DIAL_BACK_TIMEOUT, self.quic.dial(peer, addr)).await,
            Ok(Ok(_))
        )
    }

    /// Settles a window's order batches as they arrive on the stream: each
    /// batch is verified off the async runtime and dropped, keeping only the
    /// best order per serial. A node settles one window at a time, at most
    /// [`MAX_SETTLEMENTS`] run at once over all nodes, and a window holds at
    /// most `[orders] max_window_orders` orders: memory stays bounded
    /// whatever nodes send.
    async fn settle(
        &self,
        peer: NodeId,
        header: pb::SettleOrdersRequest,
        reader: &mut FrameReader,
    ) -> Result<Resp, RemoteError> {
        if self.overlay.get(&peer).is_none() {
            return Err(RemoteError::new(
                pb::ErrorCode::PermissionDenied,
                "only nodes that checked in can settle orders",
            ));
        }
        let busy = || {
            RemoteError::new(
                pb::ErrorCode::ResourceExhausted,
                "a settlement of this node is already running; try again later",
            )
        };
        let _node_slot = SettlingNode::claim(&self.settling, peer).ok_or_else(busy)?;
        let _permit = self.settlements.acquire().await.map_err(|_| busy())?;
        let settle_err = |e: crate::orders::SettleError| RemoteError::new(e.code(), e.to_string());
        let internal =
            |e: tokio::task::JoinError| RemoteError::new(pb::ErrorCode::Internal, e.to_string());
        let orders = self.metainfo.orders().clone();
        let now = loam_common::orders::now_ms();
        let window = header.window_start_unix_ms;
        // The state of the settlement lives on a blocking thread (it borrows
        // the orders service); batches go to it over a bounded channel, and
        // it records the window only when told the last batch arrived.
        let (tx, mut rx) = tokio::sync::mpsc::channel::<Option<Vec<pb::UnsentOrder>>>(2);
        let worker = tokio::task::spawn_blocking(move || {
            let mut s = match orders.begin_settlement(peer, window, now)? {
                Err(done) => return Ok(Some(done)),
                Ok(s) => s,
            };
            while let Some(feed) = rx.blocking_recv() {
                match feed {
                    Some(batch) => s.add(&batch),
                    None => return s.finish().map(Some),
                }
            }
            // The stream broke off: nothing is recorded for the window.
            Ok(None)
        });
        let max = self.metainfo.orders().max_window_orders();
        let mut received = 0u64;
        let read = async {
            loop {
                let batch: pb::OrderBatch = reader
                    .message()
                    .await
                    .map_err(|e| RemoteError::new(pb::ErrorCode::InvalidArgument, e.to_string()))?;
                received = received.saturating_add(batch.orders.len() as u64);
                if received > max {
                    return Err(RemoteError::new(
                        pb::ErrorCode::ResourceExhausted,
                        format!("more than {max} orders in one window"),
                    ));
                }
                let last = batch.last;
                if tx.send(Some(batch.orders)).await.is_err() {
                    // The worker stopped early: its answer says why.
                    return Ok(());
                }
                if last {
                    let _ = tx.send(None).await;
                    return Ok(());
                }
            }
        };
        let read = read.await;
        drop(tx);
        let outcome = worker.await.map_err(internal)?.map_err(settle_err)?;
        read?;
        outcome.map(Resp::SettleOrders).ok_or_else(|| {
            RemoteError::new(
                pb::ErrorCode::InvalidArgument,
                "the settlement stream ended before its last batch",
            )
        })
    }

    /// `satellite status`: nodes, storage, repair and jobs at a glance.
    fn status(&self, now: i64) -> Result<pb::StatusResponse, RemoteError> {
        let internal = |e: String| RemoteError::new(pb::ErrorCode::Internal, e);
        let mut st = pb::StatusResponse {
            version: loam_common::VERSION.to_string(),
            started_unix_ms: self.started_ms,
            ..Default::default()
        };
        for n in self.overlay.list() {
            st.nodes_total += 1;
            if n.disqualified_ms.is_some() {
                st.nodes_disqualified += 1;
                continue;
            }
            if n.exit_finished_ms.is_some() {
                st.nodes_exited += 1;
                continue;
            }
            if self.overlay.is_online(&n, now) {
                st.nodes_online += 1;
                st.free_disk_online += n.free_disk.max(0) as u64;
            }
            st.nodes_vetted += u64::from(n.vetted);
            st.nodes_suspended += u64::from(n.suspended_ms.is_some());
        }
        self.metainfo
            .for_each_segment(|_, seg| {
                st.segments += 1;
                let meta = seg.meta.clone().unwrap_or_default();
                st.stored_bytes += meta.plain_size.max(0) as u64;
                st.piece_bytes += meta.piece_size.max(0) as u64 * seg.pieces.len() as u64;
            })
            .map_err(|e| internal(e.to_string()))?;
        let repair = self.repair.summary();
        st.repair_checked_unix_ms = repair.checked_ms;
        st.repair_queue = repair.queue as u64;
        st.repaired_total = repair.repaired_total;
        st.repair_failed_total = repair.failed_total;
        let (running, total) = self
            .compute
            .job_counts()
            .map_err(|e| internal(e.to_string()))?;
        st.jobs_running = running;
        st.jobs_total = total;
        Ok(st)
    }

    /// A graceful exit returns the held amount, so only a node in good
    /// standing may start one: not disqualified, suspended or contained
    /// (owing an audit answer).
    fn exit_allowed(&self, node: &crate::overlay::Node) -> Result<(), RemoteError> {
        let refuse = |why: &str| {
            Err(RemoteError::new(
                pb::ErrorCode::FailedPrecondition,
                format!("graceful exit refused: {why}"),
            ))
        };
        if node.disqualified_ms.is_some() {
            return refuse("the node is disqualified");
        }
        if node.suspended_ms.is_some() {
            return refuse("the node is suspended; recover its standing first");
        }
        let rep = self
            .reputation
            .get(&node.id)
            .map_err(|e| RemoteError::new(pb::ErrorCode::Internal, e.to_string()))?;
        if rep.pending.is_some() {
            return refuse("the node owes the answer to an audit");
        }
        Ok(())
    }

    /// Sells one download of a model listing to `project`: charges its
    /// price (within the project's spending limit), credits the publisher,
    /// and hands over the listing's read-only grant.
    fn sell_model(
        &self,
        project: &crate::metainfo::ProjectId,
        id: &[u8],
    ) -> Result<pb::FetchModelResponse, RemoteError> {
        let m = &self.metainfo;
        let api = |e: MetainfoError| RemoteError::new(e.code(), e.to_string());
        let market = |e: MarketError| RemoteError::new(e.code(), e.to_string());
        let now = loam_common::orders::now_ms();
        let listing = m.market().get(id).map_err(market)?;
        crate::market::for_sale(&listing, now).map_err(market)?;
        let price = listing.price_per_download;
        let limit = m.project_record(project).map_err(api)?.spend_limit;
        if limit > 0 {
            let used = self
                .compute
                .month_charges(project)
                .map_err(|e| RemoteError::new(e.code(), e.to_string()))?;
            if used.saturating_add(price) > limit {
                return Err(RemoteError::new(
                    pb::ErrorCode::ResourceExhausted,
                    format!(
                        "this download costs {price} base units and the project has {} of its \
                         monthly spending limit of {limit} left",
                        limit.saturating_sub(used)
                    ),
                ));
            }
        }
        let rec = m.market().sell_model(id, now).map_err(market)?;
        let download: [u8; 16] = rand::random();
        let charge = pb::ChargeRecord {
            job_id: download.to_vec().into(),
            round: 0,
            unix_ms: now,
            data: vec![pb::DataFee {
                listing_id: id.to_vec().into(),
                owner_project: rec.project_id.clone(),
                sample_epochs: 0,
                amount: price,
                downloads: 1,
            }],
            total: price,
            ..Default::default()
        };
        self.payouts
            .charges()
            .record(project, &charge)
            .map_err(|e| api(e.into()))?;
        Ok(pb::FetchModelResponse {
            grant: rec.model_grant,
            bucket: rec.bucket,
            key: rec.model_key,
            charged: price,
        })
    }

    /// Applies the request's API key caveats to what the request touches:
    /// its bucket and encrypted key, found through the pending upload or
    /// the job where the request names only those.
    fn authorize(&self, auth: &Authorized, req: &Req) -> Result<(), RemoteError> {
        let m = &self.metainfo;
        let api = |e: MetainfoError| RemoteError::new(e.code(), e.to_string());
        let job = |e: ComputeError| RemoteError::new(e.code(), e.to_string());
        let market = |e: MarketError| RemoteError::new(e.code(), e.to_string());
        if auth.key.is_none() {
            return Ok(());
        }
        let at =
            |op: KeyOp, bucket: &str, key: &[u8]| auth.check(op, Some(bucket), key).map_err(api);
        let pending = |stream_id: &[u8]| m.pending_path(&auth.project, stream_id).map_err(api);
        let job_path = |id: &[u8]| self.compute.job_path(&auth.project, id).map_err(job);
        match req {
            // Listings are public to every valid key.
            Req::ProjectInfo(_) | Req::ListListings(_) | Req::GetListing(_) => {
                auth.check(KeyOp::Info, None, b"").map_err(api)
            }
            Req::PublishListing(r) => at(KeyOp::Write, &r.bucket, &r.encrypted_key),
            Req::UnpublishListing(r) | Req::ListingUsage(r) => {
                let rec = m.market().record(&r.id).map_err(market)?;
                if rec.project_id.as_ref() != auth.project {
                    // Answered as not the owner by the call itself.
                    return Ok(());
                }
                at(KeyOp::Write, &rec.bucket, &rec.encrypted_key)
            }
            Req::ResealListing(r) => at(KeyOp::Write, &r.bucket, &r.encrypted_key),
            // Money of the whole project: for keys that restrict nothing
            // project-wide.
            Req::Earnings(_) | Req::Charges(_) => auth.check(KeyOp::Usage, None, b"").map_err(api),
            // Buying spends the project's money, like starting a job.
            Req::FetchModel(_) => auth.check(KeyOp::Compute, None, b"").map_err(api),
            Req::SetPayoutAddress(_) => auth.check(KeyOp::Admin, None, b"").map_err(api),
            Req::CreateBucket(r) => at(KeyOp::Write, &r.name, b""),
            Req::DeleteBucket(r) => at(KeyOp::Delete, &r.name, b""),
            Req::GetBucket(r) => at(KeyOp::Bucket, &r.name, b""),
            Req::ListBuckets(_) | Req::ListJobs(_) => {
                auth.check(KeyOp::List, None, b"").map_err(api)
            }
            Req::BeginObject(r) => at(KeyOp::Write, &r.bucket, &r.encrypted_key),
            // Uploads in progress are checked where they will land.
            Req::BeginSegment(pb::BeginSegmentRequest { stream_id, .. })
            | Req::CommitSegment(pb::CommitSegmentRequest { stream_id, .. })
            | Req::CommitObject(pb::CommitObjectRequest { stream_id, .. })
            | Req::AbortObject(pb::AbortObjectRequest { stream_id, .. }) => {
                let (b, k) = pending(stream_id)?;
                at(KeyOp::Write, &b, &k)
            }
            Req::ListUploadSegments(r) => {
                let (b, k) = pending(&r.stream_id)?;
                at(KeyOp::List, &b, &k)
            }
            Req::GetObject(r) => at(KeyOp::Stat, &r.bucket, &r.encrypted_key),
            Req::DownloadSegment(r) => at(KeyOp::Read, &r.bucket, &r.encrypted_key),
            Req::ListObjects(r) => at(KeyOp::List, &r.bucket, &r.prefix),
            Req::ListPending(r) => at(KeyOp::List, &r.bucket, &r.prefix),
            Req::DeleteObject(r) => at(KeyOp::Delete, &r.bucket, &r.encrypted_key),
            Req::BeginMoveObject(r) => at(KeyOp::Read, &r.bucket, &r.encrypted_key),
            Req::FinishMoveObject(r) => {
                at(KeyOp::Read, &r.bucket, &r.encrypted_key)?;
                at(KeyOp::Delete, &r.bucket, &r.encrypted_key)?;
                at(KeyOp::Write, &r.new_bucket, &r.new_encrypted_key)
            }
            Req::FinishCopyObject(r) => {
                at(KeyOp::Read, &r.bucket, &r.encrypted_key)?;
                at(KeyOp::Write, &r.new_bucket, &r.new_encrypted_key)
            }
            Req::SetCompute(r) => at(KeyOp::Write, &r.bucket, &r.encrypted_key),
            Req::PlanJob(r) => at(KeyOp::Compute, &r.bucket, &r.encrypted_key),
            // A job on listings touches no path of the project.
            Req::SubmitJob(r) if !r.listings.is_empty() => {
                auth.check(KeyOp::Compute, None, b"").map_err(api)
            }
            Req::SubmitJob(r) => at(KeyOp::Compute, &r.bucket, &r.encrypted_key),
            // Job calls are checked at the job's dataset.
            Req::GetJob(pb::JobRequest { job_id })
            | Req::CancelJob(pb::JobRequest { job_id })
            | Req::JobWeights(pb::JobWeightsRequest { job_id, .. }) => match job_path(job_id)? {
                Some((b, k)) => at(KeyOp::Compute, &b, &k),
                None => auth.check(KeyOp::Compute, None, b"").map_err(api),
            },
            Req::ProjectUsage(_) => auth.check(KeyOp::Usage, None, b"").map_err(api),
            Req::CreateApiKey(_) | Req::ListApiKeys(_) => {
                auth.check(KeyOp::Admin, None, b"").map_err(api)
            }
            // Narrowed keys are revoked by their parents (checked there);
            // whole keys only by a key that restricts nothing.
            Req::RevokeApiKey(r) if !r.key.is_empty() => Ok(()),
            Req::RevokeApiKey(_) => auth.check(KeyOp::Admin, None, b"").map_err(api),
            Req::CheckIn(_)
            | Req::Info(_)
            | Req::Status(_)
            | Req::Exit(_)
            | Req::ListNodes(_)
            | Req::Ledger(_)
            | Req::Payouts(_)
            | Req::SetProjectLimits(_)
            | Req::SettleOrders(_) => Ok(()),
        }
    }

    fn dispatch(&self, peer: NodeId, api_key: &[u8], req: Req) -> Result<Resp, RemoteError> {
        let m = &self.metainfo;
        let now = loam_common::orders::now_ms();
        let api = |e: MetainfoError| RemoteError::new(e.code(), e.to_string());
        let job = |e: ComputeError| RemoteError::new(e.code(), e.to_string());
        let market = |e: MarketError| RemoteError::new(e.code(), e.to_string());
        let c = &self.compute;
        let admin = || {
            if peer == self.own_id {
                Ok(())
            } else {
                Err(RemoteError::new(
                    pb::ErrorCode::PermissionDenied,
                    "admin requests must come from the satellite's own identity",
                ))
            }
        };
        match req {
            Req::CheckIn(_) => {
                return Err(RemoteError::new(
                    pb::ErrorCode::InvalidArgument,
                    "check-ins are answered on their own path",
                ));
            }
            Req::Info(_) => {
                return Ok(Resp::Info(pb::InfoResponse {
                    min_difficulty: self.overlay.config().min_difficulty,
                    version: loam_common::VERSION.to_string(),
                    minimum_node_version: self.minimum_node_version.clone(),
                }));
            }
            Req::Status(_) => {
                admin()?;
                return self.status(now).map(Resp::Status);
            }
            Req::Exit(_) => {
                let Some(node) = self.overlay.get(&peer) else {
                    return Err(RemoteError::new(
                        pb::ErrorCode::NotFound,
                        "this node never checked in here",
                    ));
                };
                if node.exit_started_ms.is_none() {
                    self.exit_allowed(&node)?;
                }
                let (started, finished) = self
                    .overlay
                    .begin_exit(&peer, now)
                    .map_err(|e| api(e.into()))?;
                // Counted by the repair checker, which walks the segments
                // anyway: an exit status call scans nothing.
                let counted = self.repair.pieces_held(&peer);
                return Ok(Resp::Exit(pb::ExitResponse {
                    started_unix_ms: started,
                    finished_unix_ms: finished.unwrap_or(0),
                    pieces_left: if finished.is_some() {
                        0
                    } else {
                        counted.unwrap_or(0)
                    },
                    pieces_counted: counted.is_some() || finished.is_some(),
                    disqualified_unix_ms: node.disqualified_ms.unwrap_or(0),
                }));
            }
            Req::CreateApiKey(r) if peer == self.own_id => {
                let (key, project, salt) = m
                    .create_named_api_key(&r.project_name, &r.name)
                    .map_err(api)?;
                return Ok(Resp::CreateApiKey(pb::CreateApiKeyResponse {
                    api_key: key.into(),
                    project_id: project.to_vec().into(),
                    salt: salt.into(),
                }));
            }
            Req::ListApiKeys(r) if peer == self.own_id => {
                let (project, _) = m
                    .find_project(&r.project_name)
                    .map_err(api)?
                    .ok_or_else(|| api(MetainfoError::ProjectNotFound(r.project_name.clone())))?;
                return Ok(Resp::ListApiKeys(pb::ListApiKeysResponse {
                    keys: m.api_keys().list(&project).map_err(api)?,
                }));
            }
            Req::RevokeApiKey(r) if peer == self.own_id => {
                let (project, _) = m
                    .find_project(&r.project_name)
                    .map_err(api)?
                    .ok_or_else(|| api(MetainfoError::ProjectNotFound(r.project_name.clone())))?;
                m.api_keys().revoke_head(&project, &r.head).map_err(api)?;
                return Ok(Resp::RevokeApiKey(pb::RevokeApiKeyResponse {}));
            }
            Req::Ledger(r) => {
                if self.overlay.get(&peer).is_none() {
                    return Err(RemoteError::new(
                        pb::ErrorCode::NotFound,
                        "this node never checked in here",
                    ));
                }
                let pay =
                    |e: crate::payouts::PayoutError| RemoteError::new(e.code(), e.to_string());
                return Ok(Resp::Ledger(
                    self.payouts.ledger_response(&peer, r.since).map_err(pay)?,
                ));
            }
            Req::Payouts(r) => {
                admin()?;
                use pb::payouts_request::Action;
                let pay =
                    |e: crate::payouts::PayoutError| RemoteError::new(e.code(), e.to_string());
                let p = &self.payouts;
                let period = p.config().parse_period(&r.period, now).map_err(pay)?;
                let mut resp = pb::PayoutsResponse {
                    period: period.name.clone(),
                    ..Default::default()
                };
                let lines = match Action::try_from(r.action) {
                    Ok(Action::Compute) => p.compute(&period, now).map_err(pay)?,
                    Ok(Action::Show) => {
                        if !p.is_computed(&period).map_err(|e| pay(e.into()))? {
                            return Err(pay(crate::payouts::PayoutError::NotComputed(period.name)));
                        }
                        p.paystubs(&period).map_err(|e| pay(e.into()))?
                    }
                    Ok(Action::RecordPayment) => {
                        resp.payments_recorded =
                            p.record_payment(&period, &r.reference).map_err(pay)?;
                        Vec::new()
                    }
                    _ => {
                        return Err(RemoteError::new(
                            pb::ErrorCode::InvalidArgument,
                            "unknown payouts action",
                        ));
                    }
                };
                resp.lines = lines
                    .into_iter()
                    .map(|(node, stub)| pb::PayoutLine {
                        node_id: node.as_bytes().to_vec().into(),
                        paystub: Some(stub),
                    })
                    .collect();
                return Ok(Resp::Payouts(resp));
            }
            Req::SetProjectLimits(r) => {
                admin()?;
                return Ok(Resp::SetProjectLimits(
                    m.set_project_limits(&r.project_name, &r).map_err(api)?,
                ));
            }
            Req::ListNodes(_) => {
                admin()?;
                let stats = c.node_stats().map_err(job)?;
                let pieces = if self.repair.pieces_held(&self.own_id).is_none() {
                    // Before the first checker run: count them here, once.
                    m.pieces_per_node().map_err(api)?
                } else {
                    Default::default()
                };
                let nodes = self
                    .overlay
                    .list()
                    .into_iter()
                    .map(|n| pb::NodeInfo {
                        node_id: n.id.as_bytes().to_vec().into(),
                        online: self.overlay.is_online(&n, now),
                        address: n.address,
                        free_disk: n.free_disk,
                        version: n.version,
                        last_seen_unix_ms: n.last_seen_ms,
                        capabilities: Some(n.capabilities),
                        compute: stats.get(&n.id).cloned(),
                        reputation: self.reputation.get(&n.id).ok(),
                        pieces: self
                            .repair
                            .pieces_held(&n.id)
                            .or_else(|| pieces.get(&n.id).copied())
                            .unwrap_or(0),
                        exit_started_unix_ms: n.exit_started_ms.unwrap_or(0),
                        exit_finished_unix_ms: n.exit_finished_ms.unwrap_or(0),
                    })
                    .collect();
                return Ok(Resp::ListNodes(pb::ListNodesResponse { nodes }));
            }
            _ => {}
        }
        let auth = m.authenticate(api_key).map_err(api)?;
        self.authorize(&auth, &req)?;
        let project = auth.project;
        let resp = match req {
            Req::ProjectInfo(_) => Resp::ProjectInfo(m.project_info(&project).map_err(api)?),
            Req::CreateBucket(r) => Resp::CreateBucket(m.create_bucket(&project, &r).map_err(api)?),
            Req::GetBucket(r) => Resp::GetBucket(m.get_bucket(&project, &r.name).map_err(api)?),
            Req::DeleteBucket(r) => {
                m.delete_bucket(&project, &r.name).map_err(api)?;
                Resp::DeleteBucket(pb::DeleteBucketResponse {})
            }
            Req::ListBuckets(_) => Resp::ListBuckets(pb::ListBucketsResponse {
                buckets: m
                    .list_buckets(&project)
                    .map_err(api)?
                    .into_iter()
                    .filter(|b| auth.shows_bucket(&b.name))
                    .collect(),
            }),
            Req::BeginObject(r) => Resp::BeginObject(m.begin_object(&project, &r).map_err(api)?),
            Req::BeginSegment(r) => Resp::BeginSegment(m.begin_segment(&project, &r).map_err(api)?),
            Req::CommitSegment(r) => {
                m.commit_segment(&project, &r).map_err(api)?;
                Resp::CommitSegment(pb::CommitSegmentResponse {})
            }
            Req::CommitObject(r) => Resp::CommitObject(m.commit_object(&project, &r).map_err(api)?),
            Req::GetObject(r) => {
                let mut info = m.get_object(&project, &r).map_err(api)?;
                if auth.compute_only() {
                    // A compute-only key sees a dataset's record, not data.
                    info.inline_data = Default::default();
                }
                Resp::GetObject(info)
            }
            Req::DownloadSegment(r) => {
                Resp::DownloadSegment(m.download_segment(&project, &r).map_err(api)?)
            }
            Req::ListObjects(r) => Resp::ListObjects(
                m.list_visible_objects(&project, &r, &|key, is_prefix| {
                    auth.shows(&r.bucket, key, is_prefix)
                })
                .map_err(api)?,
            ),
            Req::DeleteObject(r) => {
                m.delete_object(&project, &r).map_err(api)?;
                Resp::DeleteObject(pb::DeleteObjectResponse {})
            }
            Req::BeginMoveObject(r) => {
                Resp::BeginMoveObject(m.begin_move_object(&project, &r).map_err(api)?)
            }
            Req::ListPending(r) => {
                let mut resp = m.list_pending(&project, &r).map_err(api)?;
                resp.items
                    .retain(|p| auth.shows(&r.bucket, &p.encrypted_key, false));
                Resp::ListPending(resp)
            }
            Req::AbortObject(r) => {
                m.abort_object(&project, &r).map_err(api)?;
                Resp::AbortObject(pb::AbortObjectResponse {})
            }
            Req::ListUploadSegments(r) => {
                Resp::ListUploadSegments(m.list_upload_segments(&project, &r).map_err(api)?)
            }
            Req::FinishCopyObject(r) => {
                m.finish_copy_object(&project, &r).map_err(api)?;
                Resp::FinishCopyObject(pb::FinishMoveObjectResponse {})
            }
            Req::FinishMoveObject(r) => {
                m.finish_move_object(&project, &r).map_err(api)?;
                Resp::FinishMoveObject(pb::FinishMoveObjectResponse {})
            }
            Req::SetCompute(r) => {
                m.set_compute(&project, &r).map_err(api)?;
                Resp::SetCompute(pb::SetComputeResponse {})
            }
            Req::PlanJob(r) => Resp::PlanJob(c.plan(&project, &r).map_err(job)?),
            Req::SubmitJob(r) => Resp::SubmitJob(c.submit(&project, &r).map_err(job)?),
            Req::GetJob(r) => Resp::GetJob(c.job(&project, &r.job_id).map_err(job)?),
            Req::ListJobs(_) => {
                let mut jobs = c.list(&project).map_err(job)?;
                if auth.key.is_some() {
                    jobs.retain(|j| match c.job_path(&project, &j.job_id) {
                        Ok(Some((b, k))) => auth.check(KeyOp::Compute, Some(&b), &k).is_ok(),
                        Ok(None) => auth.check(KeyOp::Compute, None, b"").is_ok(),
                        Err(_) => false,
                    });
                }
                Resp::ListJobs(pb::ListJobsResponse { jobs })
            }
            Req::CancelJob(r) => Resp::CancelJob(c.cancel(&project, &r.job_id).map_err(job)?),
            Req::JobWeights(r) => Resp::JobWeights(c.weights(&project, &r).map_err(job)?),
            Req::ProjectUsage(_) => Resp::ProjectUsage(m.project_usage(&project).map_err(api)?),
            Req::CreateApiKey(r) => {
                let (key, salt) = m.create_project_key(&project, &r.name).map_err(api)?;
                Resp::CreateApiKey(pb::CreateApiKeyResponse {
                    api_key: key.into(),
                    project_id: project.to_vec().into(),
                    salt: salt.into(),
                })
            }
            Req::ListApiKeys(_) => Resp::ListApiKeys(pb::ListApiKeysResponse {
                keys: m.api_keys().list(&project).map_err(api)?,
            }),
            Req::RevokeApiKey(r) => {
                if r.key.is_empty() {
                    m.api_keys().revoke_head(&project, &r.head).map_err(api)?;
                } else {
                    m.api_keys().revoke(&auth, &r.key).map_err(api)?;
                }
                Resp::RevokeApiKey(pb::RevokeApiKeyResponse {})
            }
            Req::PublishListing(r) if r.listing.as_ref().is_some_and(|l| l.kind == "model") => {
                Resp::PublishListing(m.market().publish_model(m, &project, &r).map_err(market)?)
            }
            Req::PublishListing(r) => {
                Resp::PublishListing(m.market().publish(m, &project, &r).map_err(market)?)
            }
            Req::FetchModel(r) => Resp::FetchModel(self.sell_model(&project, &r.id)?),
            Req::UnpublishListing(r) => {
                Resp::UnpublishListing(m.market().unpublish(&project, &r.id).map_err(market)?)
            }
            Req::ListListings(r) => Resp::ListListings(pb::ListListingsResponse {
                listings: m.market().list(&r).map_err(market)?,
            }),
            Req::GetListing(r) => {
                let rec = m.market().record(&r.id).map_err(market)?;
                let mut l = rec.listing.unwrap_or_default();
                l.fewest_key_holders_online = c.key_holders_online(&rec.tasks, pb::Device::Cpu);
                Resp::GetListing(l)
            }
            Req::ResealListing(r) => {
                Resp::ResealListing(m.market().reseal(m, &project, &r).map_err(market)?)
            }
            Req::ListingUsage(r) => {
                let rec = m.market().record(&r.id).map_err(market)?;
                if rec.project_id.as_ref() != project {
                    return Err(market(MarketError::NotOwner));
                }
                let (_, per) = self
                    .payouts
                    .charges()
                    .owner_earned(&project, 0)
                    .map_err(|e| api(e.into()))?;
                let e = per.get(r.id.as_ref()).copied().unwrap_or_default();
                let mut l = rec.listing.unwrap_or_default();
                l.fewest_key_holders_online = c.key_holders_online(&rec.tasks, pb::Device::Cpu);
                Resp::ListingUsage(pb::ListingUsageResponse {
                    jobs: l.jobs,
                    listing: Some(l),
                    sample_epochs: e.sample_epochs,
                    earned: e.amount,
                })
            }
            Req::Earnings(_) => Resp::Earnings(
                self.payouts
                    .owner_earnings(&project)
                    .map_err(|e| RemoteError::new(e.code(), e.to_string()))?,
            ),
            Req::SetPayoutAddress(r) => Resp::SetPayoutAddress(pb::SetPayoutAddressResponse {
                address: m.set_payout_address(&project, &r.address).map_err(api)?,
            }),
            Req::Charges(_) => {
                let db = |e: crate::db::DbError| api(e.into());
                let charges = self
                    .payouts
                    .charges()
                    .project_charges(&project, 0)
                    .map_err(db)?;
                let total = charges
                    .iter()
                    .try_fold(0u64, |a, c| a.checked_add(c.total))
                    .ok_or_else(|| db(crate::db::DbError::Overflow("a project's charges")))?;
                Resp::Charges(pb::ChargesResponse {
                    charges,
                    total,
                    month_total: c.month_charges(&project).map_err(job)?,
                    spend_limit: m.project_record(&project).map_err(api)?.spend_limit,
                })
            }
            Req::SettleOrders(_) => {
                return Err(RemoteError::new(
                    pb::ErrorCode::InvalidArgument,
                    "settlement must be followed by its order batches",
                ));
            }
            Req::CheckIn(_)
            | Req::Info(_)
            | Req::Status(_)
            | Req::Exit(_)
            | Req::ListNodes(_)
            | Req::Ledger(_)
            | Req::Payouts(_)
            | Req::SetProjectLimits(_) => {
                unreachable!("handled above")
            }
        };
        Ok(resp)
    }
}
