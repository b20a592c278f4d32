//! Logging setup and the HTTP side of every daemon: Prometheus metrics at
//! `/metrics` and a health check at `/health`.

use std::sync::OnceLock;

use axum::Router;
use axum::response::IntoResponse;
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

/// How often histogram samples are folded into their buckets.
const UPKEEP_INTERVAL: std::time::Duration = std::time::Duration::from_secs(5);

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
            // Histogram samples wait in memory until they are folded into
            // their buckets; without this a daemon nobody scrapes would
            // grow by every request it serves.
            let upkeep = handle.clone();
            let _ = std::thread::Builder::new()
                .name("metrics-upkeep".into())
                .spawn(move || {
                    loop {
                        std::thread::sleep(UPKEEP_INTERVAL);
                        upkeep.run_upkeep();
                    }
                });
            // Another recorder may already be installed (tests); ours then
            // renders nothing, which is harmless.
            let _ = metrics::set_global_recorder(recorder);
            handle
        })
        .clone()
}

/// Router with `/metrics` for the daemon `role` (`satellite`,
/// `storagenode`); daemons merge their own routes into it. Besides the
/// daemon's own metrics it exports `loam_build_info` with `role` and
/// `version` labels (always 1) and the standard `process_*` metrics (CPU
/// seconds, resident memory, open file descriptors, start time), read when
/// scraped.
pub fn metrics_router(role: &'static str) -> Router {
    let handle = prometheus();
    let collector = metrics_process::Collector::default();
    collector.describe();
    metrics::describe_gauge!(
        "loam_build_info",
        "Always 1; the labels say which role and version of Loam runs"
    );
    metrics::gauge!(
        "loam_build_info",
        "role" => role,
        "version" => env!("CARGO_PKG_VERSION"),
    )
    .set(1.0);
    Router::new().route(
        "/metrics",
        get(move || {
            collector.collect();
            std::future::ready(handle.render())
        }),
    )
}

/// Refuses requests a web page on another site could make through the
/// operator's browser:
///
/// - DNS rebinding: the `Host` must be an IP address (with or without a
///   port), `localhost`, or one of `allowed_hosts` — a hostile name that
///   resolves to the node is refused;
/// - cross-site requests: anything but `GET`/`HEAD` must come from the
///   same origin (an `Origin` naming the same host and port) or from a
///   client that sends no `Origin` at all (curl, Prometheus, scripts);
///   browsers always send one on cross-site `POST`s.
///
/// Refusals are `403 Forbidden` with a one-line reason.
pub fn same_origin_only(router: Router, allowed_hosts: Vec<String>) -> Router {
    let allowed = std::sync::Arc::new(allowed_hosts);
    router.layer(axum::middleware::from_fn(
        move |req: axum::extract::Request, next: axum::middleware::Next| {
            let allowed = allowed.clone();
            async move {
                match check_origin(&req, &allowed) {
                    Ok(()) => next.run(req).await,
                    Err(why) => {
                        metrics::counter!("loam_http_requests_refused_total").increment(1);
                        (axum::http::StatusCode::FORBIDDEN, format!("{why}\n")).into_response()
                    }
                }
            }
        },
    ))
}

fn check_origin(req: &axum::extract::Request, allowed: &[String]) -> Result<(), String> {
    use axum::http::{Method, header};
    let header_str = |name: header::HeaderName| {
        req.headers()
            .get(&name)
            .map(|v| v.to_str().map_err(|_| format!("unreadable {name} header")))
            .transpose()
    };
    let host = header_str(header::HOST)?
        .or_else(|| req.uri().authority().map(|a| a.as_str()))
        .ok_or("no Host header")?
        .to_ascii_lowercase();
    if !host_allowed(&host, allowed) {
        return Err(format!(
            "host {host:?} is not this node's address; open the dashboard by IP address or \
             localhost"
        ));
    }
    if matches!(*req.method(), Method::GET | Method::HEAD | Method::OPTIONS) {
        return Ok(());
    }
    if header_str(header::HeaderName::from_static("sec-fetch-site"))?
        .is_some_and(|s| s == "cross-site" || s == "same-site")
    {
        return Err("cross-site requests are refused".into());
    }
    match header_str(header::ORIGIN)? {
        None => Ok(()),
        Some(origin) => {
            let authority = origin
                .split_once("://")
                .map_or("", |(_, rest)| rest)
                .trim_end_matches('/')
                .to_ascii_lowercase();
            if authority == host {
                Ok(())
            } else {
                Err(format!("origin {origin:?} is not this page's; refused"))
            }
        }
    }
}

/// Whether `host` (`name[:port]`) names this machine in a way no other
/// site can: an IP literal, `localhost`, or an operator-listed name.
fn host_allowed(host: &str, allowed: &[String]) -> bool {
    let name = if let Some(rest) = host.strip_prefix('[') {
        match rest.split_once(']') {
            Some((ip, _)) => return ip.parse::<std::net::Ipv6Addr>().is_ok(),
            None => return false,
        }
    } else {
        host.rsplit_once(':').map_or(
            host,
            |(n, port)| {
                if port.parse::<u16>().is_ok() { n } else { host }
            },
        )
    };
    name.parse::<std::net::Ipv4Addr>().is_ok()
        || name == "localhost"
        || allowed.iter().any(|a| a.eq_ignore_ascii_case(name))
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
    init_logging_as("info", crate::cli::LogFormat::Text);
}

/// Like [`init_logging`] with another default level.
pub fn init_logging_with_default(level: &str) {
    init_logging_as(level, crate::cli::LogFormat::Text);
}

/// Logging to stderr in `format`, filtered by `RUST_LOG` (default
/// `level`). Text is coloured only when stderr is a terminal, so log
/// files hold plain text.
pub fn init_logging_as(level: &str, format: crate::cli::LogFormat) {
    use std::io::IsTerminal;
    use tracing_subscriber::EnvFilter;
    let filter = EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| EnvFilter::new(format!("{level},quinn=warn")));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    let _ = match format {
        crate::cli::LogFormat::Text => builder
            .with_ansi(std::io::stderr().is_terminal())
            .try_init(),
        crate::cli::LogFormat::Json => builder
            .json()
            .flatten_event(true)
            .with_current_span(false)
            .try_init(),
    };
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

#[cfg(test)]
mod tests {
    use super::*;

    fn request(method: &str, host: &str, origin: Option<&str>) -> axum::extract::Request {
        let mut b = axum::http::Request::builder()
            .method(method)
            .uri("/api/chores/settle")
            .header("host", host);
        if let Some(o) = origin {
            b = b.header("origin", o);
        }
        b.body(axum::body::Body::empty()).expect("request")
    }

    #[test]
    fn foreign_hosts_and_origins_are_refused() {
        let none: Vec<String> = Vec::new();
        // The node by address, from anywhere, for reading.
        for host in [
            "127.0.0.1:14002",
            "localhost:14002",
            "[::1]:14002",
            "10.0.0.7",
        ] {
            assert_eq!(
                check_origin(&request("GET", host, None), &none),
                Ok(()),
                "{host}"
            );
        }
        // DNS rebinding: a hostile name that resolves to the node.
        let e = check_origin(&request("GET", "evil.example:14002", None), &none);
        assert!(e.is_err());
        let named = vec!["node.example.org".to_string()];
        assert_eq!(
            check_origin(&request("GET", "node.example.org:14002", None), &named),
            Ok(())
        );
        // POSTs: same origin or no origin (curl) pass, others are refused.
        let host = "127.0.0.1:14002";
        assert_eq!(check_origin(&request("POST", host, None), &none), Ok(()));
        assert_eq!(
            check_origin(
                &request("POST", host, Some("http://127.0.0.1:14002")),
                &none
            ),
            Ok(())
        );
        for origin in ["https://evil.example", "http://127.0.0.1:9999", "null"] {
            let e = check_origin(&request("POST", host, Some(origin)), &none);
            assert!(e.is_err(), "{origin}");
        }
        let mut cross = request("POST", host, None);
        cross.headers_mut().insert(
            "sec-fetch-site",
            axum::http::HeaderValue::from_static("cross-site"),
        );
        assert!(check_origin(&cross, &none).is_err());
    }
}
