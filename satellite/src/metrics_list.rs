//! The metrics a satellite exports, described once at start-up.

use metrics::{describe_counter, describe_gauge, describe_histogram};

pub fn describe(nodes_online: usize) {
    // The recorder must exist before anything is described.
    loam_common::telemetry::prometheus();
    describe_counter!("loam_satellite_checkins_total", "Node check-ins accepted");
    describe_gauge!(
        "loam_satellite_database_memory_bytes",
        "Memory an embedded database holds in this process, by kind (write_buffers, table_readers, block_cache)"
    );
    describe_counter!(
        "loam_satellite_db_statements_total",
        "Statements sent to a PostgreSQL database, by table and statement (get, scan, expect, create, guard, put, delete)"
    );
    describe_counter!(
        "loam_satellite_db_retries_total",
        "PostgreSQL transactions tried again after a deadlock or serialization failure"
    );
    describe_gauge!(
        "loam_satellite_nodes_online",
        "Nodes that checked in within the online window"
    );
    describe_gauge!(
        "loam_satellite_nodes_suspended",
        "Nodes suspended (unknown audit errors or downtime), not disqualified"
    );
    describe_counter!(
        "loam_satellite_order_limits_issued_total",
        "Order limits signed, by action"
    );
    describe_counter!(
        "loam_satellite_segments_committed_total",
        "Segments committed"
    );
    describe_counter!(
        "loam_satellite_objects_committed_total",
        "Objects committed"
    );
    describe_counter!("loam_satellite_objects_deleted_total", "Objects deleted");
    describe_counter!(
        "loam_satellite_objects_moved_total",
        "Objects moved (renamed without moving their data)"
    );
    describe_counter!(
        "loam_satellite_objects_copied_total",
        "Objects copied on the satellite (sharing the source's pieces)"
    );
    describe_counter!(
        "loam_satellite_objects_expired_total",
        "Objects deleted by the expiry chore after their expiry time"
    );
    describe_counter!(
        "loam_satellite_uploads_aborted_total",
        "Pending uploads abandoned by their owner"
    );
    describe_counter!(
        "loam_satellite_api_keys_revoked_total",
        "API keys and shared grants revoked"
    );
    describe_counter!(
        "loam_satellite_listings_published_total",
        "Datasets published on the market"
    );
    describe_counter!(
        "loam_satellite_rpc_errors_total",
        "Failed requests by method and error code"
    );
    describe_histogram!(
        "loam_satellite_rpc_duration_seconds",
        "Request handling time by method"
    );
    metrics::gauge!("loam_satellite_nodes_online").set(nodes_online as f64);
    for name in [
        "loam_satellite_segments_committed_total",
        "loam_satellite_objects_committed_total",
        "loam_satellite_objects_deleted_total",
        "loam_satellite_objects_moved_total",
        "loam_satellite_objects_copied_total",
        "loam_satellite_objects_expired_total",
        "loam_satellite_uploads_aborted_total",
        "loam_satellite_api_keys_revoked_total",
        "loam_satellite_listings_published_total",
    ] {
        metrics::counter!(name).increment(0);
    }
}
