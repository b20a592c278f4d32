//! Loam's S3-compatible gateway: S3 requests, signed with credentials
//! derived for access grants, served through an uplink per grant. See
//! `docs/s3.md`.

pub mod credentials;
pub mod listing;
pub mod metrics;
pub mod multipart;
pub mod s3;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::{Arc, RwLock};
use std::time::{Duration, Instant};

use credentials::Credentials;
use s3s::auth::{S3Auth, SecretKey};
use s3s::service::S3ServiceBuilder;
use s3s::{S3Result, s3_error};

/// The region the gateway answers for (any is accepted in signatures).
pub const REGION: &str = "us-east-1";

/// Written into the config directory once `gateway run` listens.
pub const RUN_FILE: &str = "run.json";

/// What `RUN_FILE` holds.
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
pub struct RunInfo {
    pub address: SocketAddr,
    pub pid: u32,
    /// Where `/metrics` and `/health` are served, when they are.
    #[serde(default)]
    pub metrics_address: Option<SocketAddr>,
}

/// The gateway's own HTTP side (kept off the S3 port, where `/metrics`
/// would be a bucket): Prometheus metrics at `/metrics`, `ok` at `/health`.
pub fn http_router() -> axum::Router {
    metrics::describe();
    loam_common::telemetry::metrics_router("gateway")
        .route("/health", axum::routing::get(|| async { "ok" }))
}

/// The credentials a running gateway serves: those of its config
/// directory, read again when the file changes (so `gateway setup` and
/// `gateway remove` take effect without a restart; the file's time is
/// looked at most once a second).
pub struct Keyring {
    dir: Option<PathBuf>,
    reload_every: Duration,
    inner: RwLock<Loaded>,
}

struct Loaded {
    credentials: Arc<Credentials>,
    /// The file's modification time when read.
    modified: Option<std::time::SystemTime>,
    checked: Instant,
}

/// The least time between two looks at the credentials file.
const RELOAD_EVERY: Duration = Duration::from_secs(1);

fn modified(dir: &std::path::Path) -> Option<std::time::SystemTime> {
    std::fs::metadata(dir.join(credentials::FILE))
        .and_then(|m| m.modified())
        .ok()
}

impl Keyring {
    /// `credentials`, as read from `dir` (when given; followed from then
    /// on).
    pub fn new(credentials: Credentials, dir: Option<PathBuf>) -> Self {
        let modified = dir.as_deref().and_then(modified);
        Self {
            dir,
            reload_every: RELOAD_EVERY,
            inner: RwLock::new(Loaded {
                credentials: Arc::new(credentials),
                modified,
                checked: Instant::now(),
            }),
        }
    }

    /// The credential with access key id `id`, if there is one.
    pub fn lookup(
        &self,
        id: &str,
    ) -> Option<(credentials::Credential, loam_common::access::Access)> {
        self.refresh();
        let inner = self.inner.read().unwrap_or_else(|e| e.into_inner());
        inner.credentials.get(id).cloned()
    }

    /// Rereads the file if it changed since it was read.
    fn refresh(&self) {
        let Some(dir) = &self.dir else {
            return;
        };
        {
            let inner = self.inner.read().unwrap_or_else(|e| e.into_inner());
            if inner.checked.elapsed() < self.reload_every {
                return;
            }
        }
        let mut inner = self.inner.write().unwrap_or_else(|e| e.into_inner());
        if inner.checked.elapsed() < self.reload_every {
            return;
        }
        inner.checked = Instant::now();
        let now = modified(dir);
        if now == inner.modified {
            return;
        }
        match Credentials::load(dir) {
            Ok(c) => {
                inner.credentials = Arc::new(c);
                inner.modified = now;
            }
            // Keep serving what was read; say why the change is not taken.
            Err(e) => tracing::warn!(error = %e, "cannot reread the credentials"),
        }
    }
}

/// Looks secrets up in the gateway's keyring.
struct Auth(Arc<Keyring>);

#[async_trait::async_trait]
impl S3Auth for Auth {
    async fn get_secret_key(&self, access_key: &str) -> S3Result<SecretKey> {
        match self.0.lookup(access_key) {
            Some((c, _)) => Ok(SecretKey::from(c.secret_access_key.as_str())),
            None => Err(s3_error!(InvalidAccessKeyId)),
        }
    }
}

/// Closes the connection after answering a request that asked
/// `Expect: 100-continue` without having read its body: an empty body, or
/// an error answered before the body was wanted. Such an answer comes
/// without a `100 Continue`, and botocore (the AWS CLI, boto3) keeps that
/// early answer's status on the connection and misreads the next response
/// on it as garbage, retrying only after its read timeout (60 s). A fresh
/// connection carries no such state.
async fn close_after_early_answer(
    req: axum::extract::Request,
    next: axum::middleware::Next,
) -> axum::response::Response {
    use axum::http::header;
    let expects = req
        .headers()
        .get(header::EXPECT)
        .is_some_and(|v| v.as_bytes().eq_ignore_ascii_case(b"100-continue"));
    let empty = req
        .headers()
        .get(header::CONTENT_LENGTH)
        .is_some_and(|v| v.as_bytes() == b"0");
    let mut response = next.run(req).await;
    if expects && (empty || !response.status().is_success()) {
        response.headers_mut().insert(
            header::CONNECTION,
            header::HeaderValue::from_static("close"),
        );
    }
    response
}

/// A running gateway.
pub struct Server {
    pub address: SocketAddr,
    task: tokio::task::JoinHandle<std::io::Result<()>>,
}

impl Server {
    /// Serves S3 on `listener` for the keyring's credentials until the
    /// server is dropped.
    pub fn start(listener: tokio::net::TcpListener, keyring: Keyring) -> std::io::Result<Self> {
        let address = listener.local_addr()?;
        let keyring = Arc::new(keyring);
        let mut builder = S3ServiceBuilder::new(s3::Gateway::new(keyring.clone()));
        builder.set_auth(Auth(keyring));
        let service = builder.build();
        let app = axum::Router::new()
            .fallback_service(axum::error_handling::HandleError::new(
                service,
                |e: s3s::HttpError| async move {
                    tracing::warn!(error = ?e, "S3 request failed below the S3 layer");
                    (
                        axum::http::StatusCode::BAD_REQUEST,
                        "malformed HTTP request".to_string(),
                    )
                },
            ))
            .layer(axum::middleware::from_fn(close_after_early_answer))
            .layer(axum::middleware::from_fn(metrics::record));
        let task = tokio::spawn(async move { axum::serve(listener, app).await });
        Ok(Self { address, task })
    }

    /// Waits until the server stops (an error of its listener).
    pub async fn wait(mut self) -> anyhow::Result<()> {
        (&mut self.task).await??;
        Ok(())
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        self.task.abort();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A grant for a made-up satellite (nothing is dialled).
    fn grant(n: u8) -> String {
        let access = loam_common::access::Access::derive(
            loam_common::NodeUrl {
                id: loam_common::identity::Identity::generate(0, |_| {}).id(),
                address: "127.0.0.1:1".into(),
            },
            vec![n; 32],
            "passphrase",
            b"sixteen byte salt",
        )
        .expect("derive");
        access.serialize()
    }

    #[test]
    fn credentials_set_up_or_removed_while_running_take_effect() {
        let dir = tempfile::tempdir().expect("tempdir");
        let mut file = Credentials::default();
        let first = file.add(&grant(1)).expect("add");
        file.save(dir.path()).expect("save");
        let mut keyring = Keyring::new(
            Credentials::load(dir.path()).expect("load"),
            Some(dir.path().to_path_buf()),
        );
        keyring.reload_every = Duration::ZERO;
        assert!(keyring.lookup(&first.access_key_id).is_some());
        let second = file.add(&grant(2)).expect("add");
        file.save(dir.path()).expect("save");
        let found = keyring
            .lookup(&second.access_key_id)
            .expect("new credential");
        assert_eq!(found.0.secret_access_key, second.secret_access_key);
        assert!(file.remove(&first.access_key_id));
        file.save(dir.path()).expect("save");
        assert!(keyring.lookup(&first.access_key_id).is_none());
        // A file broken by hand keeps what was read.
        std::fs::write(dir.path().join(credentials::FILE), "{").expect("write");
        assert!(keyring.lookup(&second.access_key_id).is_some());
    }
}
