//! Request/response helpers over one bidirectional stream, and the typed
//! error a caller gets back from a remote peer.

use crate::pb;
use crate::transport::TransportError;
use crate::wire::{FrameReader, FrameWriter, WireError};

/// A failure reported by the remote side.
#[derive(Debug, Clone, thiserror::Error)]
#[error("{message}")]
pub struct RemoteError {
    pub code: pb::ErrorCode,
    pub message: String,
    pub rejection: pb::OrderRejection,
}

impl RemoteError {
    pub fn new(code: pb::ErrorCode, message: impl Into<String>) -> Self {
        Self {
            code,
            message: message.into(),
            rejection: pb::OrderRejection::Unspecified,
        }
    }

    pub fn order_rejected(err: &crate::orders::OrderError) -> Self {
        Self {
            code: pb::ErrorCode::OrderRejected,
            message: err.to_string(),
            rejection: err.rejection(),
        }
    }
}

impl From<&pb::RpcError> for RemoteError {
    fn from(e: &pb::RpcError) -> Self {
        Self {
            code: pb::ErrorCode::try_from(e.code).unwrap_or(pb::ErrorCode::Unspecified),
            message: e.message.clone(),
            rejection: pb::OrderRejection::try_from(e.order_rejection)
                .unwrap_or(pb::OrderRejection::Unspecified),
        }
    }
}

impl From<&RemoteError> for pb::RpcError {
    fn from(e: &RemoteError) -> Self {
        Self {
            code: e.code as i32,
            message: e.message.clone(),
            order_rejection: e.rejection as i32,
        }
    }
}

#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum CallError {
    #[error(transparent)]
    Remote(#[from] RemoteError),
    #[error(transparent)]
    Wire(#[from] WireError),
    #[error(transparent)]
    Transport(#[from] TransportError),
    #[error("peer answered with an unexpected message")]
    UnexpectedResponse,
    #[error("no answer within {0:?}")]
    Deadline(std::time::Duration),
}

impl CallError {
    pub fn code(&self) -> Option<pb::ErrorCode> {
        match self {
            Self::Remote(r) => Some(r.code),
            _ => None,
        }
    }

    /// Whether the connection under the call failed (closed, reset, timed
    /// out), as opposed to the peer answering wrongly or refusing: a fresh
    /// connection may succeed.
    pub fn connection_lost(&self) -> bool {
        matches!(
            self,
            Self::Transport(_)
                | Self::Wire(
                    WireError::Connection(_)
                        | WireError::Read(_)
                        | WireError::Write(_)
                        | WireError::Closed(_)
                )
        )
    }
}

impl From<quinn::ConnectionError> for CallError {
    fn from(e: quinn::ConnectionError) -> Self {
        Self::Wire(WireError::Connection(e))
    }
}

/// Sends one request message and reads one response message.
pub async fn unary<Req: prost::Message, Resp: prost::Message + Default>(
    conn: &quinn::Connection,
    request: &Req,
) -> Result<Resp, CallError> {
    let (send, recv) = conn.open_bi().await?;
    let mut writer = FrameWriter::new(send);
    writer.message(request).await?;
    writer.finish()?;
    let mut reader = FrameReader::new(recv);
    Ok(reader.message::<Resp>().await?)
}

/// How long one satellite call may take before it is given up. Every call
/// is a few database reads and writes; one that takes this long is stuck
/// on a dead connection or a dead satellite, and the caller reconnects.
pub const SATELLITE_DEADLINE: std::time::Duration = std::time::Duration::from_secs(30);

/// Calls the satellite and unwraps its response envelope; gives up after
/// [`SATELLITE_DEADLINE`].
pub async fn satellite(
    conn: &quinn::Connection,
    api_key: &[u8],
    request: pb::satellite_request::Request,
) -> Result<pb::satellite_response::Response, CallError> {
    satellite_within(conn, api_key, request, SATELLITE_DEADLINE).await
}

/// [`satellite`] with its own deadline.
pub async fn satellite_within(
    conn: &quinn::Connection,
    api_key: &[u8],
    request: pb::satellite_request::Request,
    deadline: std::time::Duration,
) -> Result<pb::satellite_response::Response, CallError> {
    let req = pb::SatelliteRequest {
        api_key: api_key.to_vec().into(),
        request: Some(request),
    };
    let resp: pb::SatelliteResponse = tokio::time::timeout(deadline, unary(conn, &req))
        .await
        .map_err(|_| CallError::Deadline(deadline))??;
    match resp.response {
        Some(pb::satellite_response::Response::Error(e)) => Err(RemoteError::from(&e).into()),
        Some(r) => Ok(r),
        None => Err(CallError::UnexpectedResponse),
    }
}
