//! Loam's S3-compatible gateway: S3 requests, signed with credentials
//! derived for access grants, served through an uplink per grant. See
//! `docs/s3.md`.

pub mod credentials;
pub mod listing;
pub mod s3;

use std::net::SocketAddr;
use std::sync::Arc;

use credentials::Credentials;
use s3s::auth::{S3Auth, SecretKey};
use s3s::service::S3ServiceBuilder;
use s3s::{S3Result, s3_error};

/// Looks secrets up in the gateway's credentials.
struct Auth(Arc<Credentials>);

#[async_trait::async_trait]
impl S3Auth for Auth {
    async fn get_secret_key(&self, access_key: &str) -> S3Result<SecretKey> {
        match self.0.get(access_key) {
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
    /// Serves S3 on `listener` for `credentials` until the task is dropped
    /// or aborted.
    pub fn start(
        listener: tokio::net::TcpListener,
        credentials: Credentials,
    ) -> std::io::Result<Self> {
        let address = listener.local_addr()?;
        let credentials = Arc::new(credentials);
        let mut builder = S3ServiceBuilder::new(s3::Gateway::new(credentials.clone()));
        builder.set_auth(Auth(credentials));
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
