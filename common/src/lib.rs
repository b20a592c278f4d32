//! Loam's shared foundation: what every role (satellite, storage node,
//! uplink) needs to name peers, talk to them and protect data.
//!
//! Read first:
//! - [`identity`]: [`identity::Identity`] key pairs and [`identity::NodeId`]s
//!   with proof-of-work difficulty.
//! - [`transport`]: the QUIC [`transport::Endpoint`] (quinn + rustls, TLS 1.3,
//!   peers pinned by node id).
//! - [`wire`] and [`rpc`]: one RPC per bidirectional stream, as capped frames
//!   carrying the protobuf messages of [`pb`] (generated from
//!   `proto/loam.proto`, in this crate only).
//! - [`orders`]: signed order limits, orders and piece hashes, converted from
//!   wire types at the edge.
//! - [`encryption`] and [`erasure`]: how a segment becomes pieces — encrypted
//!   row by row, then Reed-Solomon coded (systematic, row-contiguous).
//!
//! Data flow of an upload: plaintext segment → `encryption::encrypt_row` per
//! data row → `erasure::ErasureCoder::encode` for parity → each piece sent
//! under an `orders::OrderLimit` over `wire` frames.

pub mod access;
pub mod alloc;
pub mod bloom;
pub mod buffers;
pub mod chore;
pub mod cli;
pub mod compute;
pub mod config;
pub mod direct;
pub mod encryption;
pub mod erasure;
pub mod federated;
pub mod identity;
pub mod ledger;
pub mod macaroon;
pub mod merkle;
pub mod orders;
pub mod rpc;
pub mod scope;
pub mod sealed;
pub mod size;
pub mod telemetry;
pub mod time;
pub mod transport;
pub mod wallet;
pub mod wire;

/// Wire types generated from `proto/loam.proto`.
#[allow(clippy::all, missing_docs)]
pub mod pb {
    include!(concat!(env!("OUT_DIR"), "/loam.v1.rs"));
}

pub use identity::{Identity, KeyPair, NodeId, NodeUrl, PublicKey};

/// Version string every daemon reports.
pub const VERSION: &str = env!("CARGO_PKG_VERSION");
