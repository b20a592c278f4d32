//! How tests play a dishonest storage node.
//!
//! A [`Lies`] value makes a node misreport one thing about itself while
//! everything else stays honest: the weights or sample count of its
//! training tasks, its answer to audits, its free space or its compute
//! capacity. Nothing in the node's configuration or command line sets it;
//! only code that builds a node (the test networks) can. Each lie has a
//! test showing that the satellite catches it, does not pay for it and
//! counts it against the node.

use std::sync::Arc;

use loam_common::pb;

/// Alters the weights a node returns.
pub type WeightsHook = Arc<dyn Fn(&mut [f32]) + Send + Sync>;

/// Alters a training result (its validation figures, say) before it is sent.
pub type ResultHook = Arc<dyn Fn(&mut pb::TrainResult) + Send + Sync>;

/// Wraps the node's piece store (tests inject disk faults with it: a full
/// disk, I/O errors).
pub type BlobsHook = Arc<
    dyn Fn(Arc<dyn crate::piecestore::Blobs>) -> Arc<dyn crate::piecestore::Blobs> + Send + Sync,
>;

/// What a node lies about; the default is an honest node.
#[derive(Clone, Default)]
pub struct Lies {
    /// Applied to the trained weights of every task before they are sent.
    pub weights: Option<WeightsHook>,
    /// Reported as the sample count of every task.
    pub samples: Option<u64>,
    /// Applied to every training result (after `samples`).
    pub result: Option<ResultHook>,
    /// Sent as the answer to every audit instead of the leaf and proof.
    pub audit_error: Option<pb::ErrorCode>,
    /// Advertised as free disk at check-in instead of what the node has.
    pub free_disk: Option<i64>,
    /// Advertised as CPU cores and GPUs at check-in.
    pub compute: Option<(u32, u32)>,
    /// Advertised as the node's GPU at check-in (whatever it has); the
    /// node then takes GPU jobs and trains them on what its build has.
    pub adapter: Option<pb::GpuAdapter>,
    /// Not a lie but a fault: wraps the piece store, so tests can make
    /// the disk fill up or fail.
    pub blobs: Option<BlobsHook>,
    /// A fault too: takes the piece store's durability steps (fsyncs),
    /// so tests can record them and simulate a power loss.
    pub durability: Option<Arc<dyn crate::piecestore::Durability>>,
}

impl Lies {
    /// Whether the node is honest.
    pub fn is_honest(&self) -> bool {
        self.weights.is_none()
            && self.samples.is_none()
            && self.result.is_none()
            && self.audit_error.is_none()
            && self.free_disk.is_none()
            && self.compute.is_none()
            && self.adapter.is_none()
            && self.blobs.is_none()
            && self.durability.is_none()
    }
}

impl std::fmt::Debug for Lies {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Lies")
            .field("weights", &self.weights.is_some())
            .field("samples", &self.samples)
            .field("result", &self.result.is_some())
            .field("audit_error", &self.audit_error)
            .field("free_disk", &self.free_disk)
            .field("compute", &self.compute)
            .field("adapter", &self.adapter)
            .field("blobs", &self.blobs.is_some())
            .field("durability", &self.durability.is_some())
            .finish()
    }
}
