//! Loam's S3-compatible gateway: S3 requests, signed with credentials
//! derived for access grants, served through an uplink per grant. See
//! `docs/s3.md`.

pub mod credentials;
pub mod listing;
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
}

/// The credentials a running gateway serves: those of its config
/// directory, read again when a request names an id it does not know (so
/// `gateway setup` and `gateway remove` take effect without a restart), at
/// most once a second.
pub struct Keyring {
    dir: Option<PathBuf>,
    inner: RwLock<(Arc<Credentials>, Instant)>,
}

/// The least time between two reads of the credentials file.
const RELOAD_EVERY: Duration = Duration::from_secs(1);

impl Keyring {
    /// `credentials`, read again from `dir` (when given) on a miss.
    pub fn new(credentials: Credentials, dir: Option<PathBuf>) -> Self {
        Self {
            dir,
            inner: RwLock::new((Arc::new(credentials), Instant::now())),
        }
    }

    /// The credentials, reread first if `id` is not among them.
    pub fn lookup(
        &self,
        id: &str,
    ) -> Option<(credentials::Credential, loam_common::access::Access)> {
        let current = self.inner.read().unwrap_or_else(|e| e.into_inner()).clone();
        if let Some(found) = current.0.get(id) {
            return Some(found.clone());
        }
        let dir = self.dir.as_ref()?;
        let mut inner = self.inner.write().unwrap_or_else(|e| e.into_inner());
        if inner.1.elapsed() >= RELOAD_EVERY {
            inner.1 = Instant::now();
            match Credentials::load(dir) {
                Ok(c) => inner.0 = Arc::new(c),
                Err(e) => tracing::warn!(error = %e, "cannot reread the credentials"),
            }
        }
        inner.0.get(id).cloned()
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
        let app = axum::Router::new().fallback_service(axum::error_handling::HandleError::new(
            service,
            |e: s3s::HttpError| async move {
                tracing::warn!(error = ?e, "S3 request failed below the S3 layer");
                (
                    axum::http::StatusCode::BAD_REQUEST,
                    "malformed HTTP request".to_string(),
                )
            },
        ));
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
