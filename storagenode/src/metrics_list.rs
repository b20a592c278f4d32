//! The metrics a storage node exports, described once at start-up so that
//! `/metrics` lists each with its help text before it first moves.

use metrics::{describe_counter, describe_gauge, describe_histogram};

use crate::piecestore::Usage;

pub fn describe(usage: Usage, allocated: u64) {
    // The recorder must exist before anything is described.
    loam_common::telemetry::prometheus();
    describe_counter!(
        "loam_storagenode_piece_bytes_received_total",
        "Piece bytes stored from uploads"
    );
    describe_counter!(
        "loam_storagenode_piece_bytes_sent_total",
        "Piece bytes served to downloads"
    );
    describe_counter!("loam_storagenode_pieces_received_total", "Pieces stored");
    describe_counter!(
        "loam_storagenode_pieces_sent_total",
        "Piece downloads served in full"
    );
    describe_counter!(
        "loam_storagenode_uploads_total",
        "Piece uploads by result (ok, rejected, cancelled, error)"
    );
    describe_counter!(
        "loam_storagenode_downloads_total",
        "Piece downloads by result (ok, rejected, cancelled, error)"
    );
    describe_counter!(
        "loam_storagenode_order_rejections_total",
        "Transfers refused because of their order limit or orders, by reason"
    );
    describe_counter!(
        "loam_storagenode_requests_rejected_total",
        "Streams whose first message was malformed or over the size cap"
    );
    describe_counter!(
        "loam_storagenode_checkins_total",
        "Check-ins with satellites by result"
    );
    describe_gauge!(
        "loam_storagenode_used_bytes",
        "Bytes of pieces stored (from the database)"
    );
    describe_gauge!("loam_storagenode_allocated_bytes", "Bytes of disk offered");
    describe_gauge!("loam_storagenode_pieces_stored", "Pieces stored");
    describe_histogram!(
        "loam_storagenode_upload_duration_seconds",
        "Duration of successful piece uploads"
    );
    describe_histogram!(
        "loam_storagenode_download_duration_seconds",
        "Duration of successful piece downloads"
    );
    metrics::gauge!("loam_storagenode_used_bytes").set(usage.used_bytes as f64);
    metrics::gauge!("loam_storagenode_pieces_stored").set(usage.pieces as f64);
    metrics::gauge!("loam_storagenode_allocated_bytes").set(allocated as f64);
    for name in [
        "loam_storagenode_piece_bytes_received_total",
        "loam_storagenode_piece_bytes_sent_total",
        "loam_storagenode_pieces_received_total",
        "loam_storagenode_pieces_sent_total",
    ] {
        metrics::counter!(name).increment(0);
    }
}
