//! Logging setup and the HTTP side of every daemon: Prometheus metrics at
//! `/metrics` and a health check at `/health`.

use std::sync::OnceLock;

use axum::Router;
use axum::routing::get;
use metrics_exporter_prometheus::{Matcher, PrometheusBuilder, PrometheusHandle};
use tokio_util::sync::CancellationToken;

/// Buckets for latency histograms (seconds).
const LATENCY_BUCKETS: &[f64] = &[
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0,
];

/// Finer buckets (about ×1.25 apart, 1 ms to 60 s) for the durations of
/// background work whose percentiles are reported (segment repair).
const FINE_BUCKETS: &[f64] = &[
    0.001, 0.00125, 0.0016, 0.002, 0.0025, 0.0032, 0.004, 0.005, 0.0063, 0.008, 0.01, 0.0125,
    0.016, 0.02, 0.025, 0.032, 0.04, 0.05, 0.063, 0.08, 0.1, 0.125, 0.16, 0.2, 0.25, 0.32, 0.4,
    0.5, 0.63, 0.8, 1.0, 1.25, 1.6, 2.0, 2.5, 3.2, 4.0, 5.0, 6.3, 8.0, 10.0, 12.5, 16.0, 20.0,
    25.0, 32.0, 40.0, 50.0, 60.0,
];

/// Histograms that get [`FINE_BUCKETS`] (an exact name wins over the
/// `_seconds` suffix rule).
const FINE_HISTOGRAMS: &[&str] = &["loam_satellite_repair_duration_seconds"];

/// The process-wide Prometheus recorder, installed on first use.
pub fn prometheus() -> PrometheusHandle {
    static HANDLE: OnceLock<PrometheusHandle> = OnceLock::new();
    HANDLE
        .get_or_init(|| {
            let mut builder = PrometheusBuilder::new()
                .set_buckets_for_metric(Matcher::Suffix("_seconds".into()), LATENCY_BUCKETS)
                .expect("bucket list is not empty");
            for name in FINE_HISTOGRAMS {
                builder = builder
                    .set_buckets_for_metric(Matcher::Full((*name).into()), FINE_BUCKETS)
                    .expect("bucket list is not empty");
            }
            let recorder = builder.build_recorder();
            let handle = recorder.handle();
            // Another recorder may already be installed (tests); ours then
            // renders nothing, which is harmless.
            let _ = metrics::set_global_recorder(recorder);
            handle
        })
        .clone()
}

/// Router with `/metrics`; daemons merge their own routes into it.
pub fn metrics_router() -> Router {
    let handle = prometheus();
    Router::new().route("/metrics", get(move || std::future::ready(handle.render())))
}

/// Serves `router` on `listener` until `cancel` fires.
pub async fn serve_http(
    listener: tokio::net::TcpListener,
    router: Router,
    cancel: CancellationToken,
) -> std::io::Result<()> {
    axum::serve(listener, router)
        .with_graceful_shutdown(async move { cancel.cancelled().await })
        .await
}

/// Sets up `tracing` output to stderr, filtered by `RUST_LOG` (default `info`).
pub fn init_logging() {
    init_logging_with_default("info");
}

/// Like [`init_logging`] with another default level.
pub fn init_logging_with_default(level: &str) {
    use tracing_subscriber::EnvFilter;
    let filter = EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| EnvFilter::new(format!("{level},quinn=warn")));
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .try_init();
}

/// Resolves on Ctrl-C (SIGINT) or SIGTERM.
pub async fn shutdown_signal() {
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()).ok();
    let terminate = async {
        match term.as_mut() {
            Some(t) => {
                t.recv().await;
            }
            None => std::future::pending::<()>().await,
        }
    };
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = terminate => {}
    }
}
