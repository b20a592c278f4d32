//! Operator commands against a running satellite, authenticated with the
//! satellite's own identity (so they work from its directory only).

use std::path::Path;

use loam_common::rpc::{self, CallError};
use loam_common::transport::{Endpoint, TransportConfig, TransportError};
use loam_common::{Identity, NodeUrl, pb};

use crate::RunInfo;

#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum AdminError {
    #[error("cannot read the satellite's identity: {0}")]
    Identity(#[from] loam_common::identity::IdentityFileError),
    #[error(
        "the satellite in {dir} does not seem to be running (no readable {}): {source}",
        RunInfo::PATH
    )]
    NotRunning { dir: String, source: std::io::Error },
    #[error(transparent)]
    Transport(#[from] TransportError),
    #[error(transparent)]
    Call(#[from] CallError),
    #[error("satellite gave an unexpected answer")]
    Unexpected,
}

/// A connection to a running satellite as its operator.
pub struct AdminClient {
    conn: quinn::Connection,
    pub url: NodeUrl,
    _endpoint: Endpoint,
}

impl AdminClient {
    /// Connects to the satellite whose directory is `dir`.
    pub async fn connect(dir: &Path) -> Result<Self, AdminError> {
        let identity = Identity::load(&dir.join("identity.key"))?;
        let info = RunInfo::load(dir).map_err(|source| AdminError::NotRunning {
            dir: dir.display().to_string(),
            source,
        })?;
        let url: NodeUrl = info.url.parse().map_err(|_| AdminError::Unexpected)?;
        let addr = url.socket_addr().map_err(|source| AdminError::NotRunning {
            dir: dir.display().to_string(),
            source,
        })?;
        Self::connect_with(identity, addr, url).await
    }

    pub async fn connect_with(
        identity: Identity,
        addr: std::net::SocketAddr,
        url: NodeUrl,
    ) -> Result<Self, AdminError> {
        let local: std::net::SocketAddr = if addr.is_ipv4() {
            "0.0.0.0:0".parse().expect("literal")
        } else {
            "[::]:0".parse().expect("literal")
        };
        let endpoint = Endpoint::bind(identity.clone(), local, TransportConfig::default())?;
        let conn = endpoint.connect(identity.id(), addr).await?;
        Ok(Self {
            conn,
            url,
            _endpoint: endpoint,
        })
    }

    /// A new API key (named `name`) for `project`, created if new.
    pub async fn create_api_key(
        &self,
        project: &str,
        name: &str,
    ) -> Result<pb::CreateApiKeyResponse, AdminError> {
        match rpc::satellite(
            &self.conn,
            &[],
            pb::satellite_request::Request::CreateApiKey(pb::CreateApiKeyRequest {
                project_name: project.to_string(),
                name: name.to_string(),
            }),
        )
        .await?
        {
            pb::satellite_response::Response::CreateApiKey(r) => Ok(r),
            _ => Err(AdminError::Unexpected),
        }
    }

    /// Any admin request; the satellite's answer or its error.
    pub async fn call(
        &self,
        request: pb::satellite_request::Request,
    ) -> Result<pb::satellite_response::Response, AdminError> {
        Ok(rpc::satellite(&self.conn, &[], request).await?)
    }

    pub async fn list_nodes(&self) -> Result<Vec<pb::NodeInfo>, AdminError> {
        match rpc::satellite(
            &self.conn,
            &[],
            pb::satellite_request::Request::ListNodes(pb::ListNodesRequest {}),
        )
        .await?
        {
            pb::satellite_response::Response::ListNodes(r) => Ok(r.nodes),
            _ => Err(AdminError::Unexpected),
        }
    }
}
