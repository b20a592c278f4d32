//! The piece store: the upload and download endpoints that move piece bytes
//! under satellite-signed order limits, and where those bytes live.

mod blobs;
mod db;
mod endpoint;

pub use blobs::{BlobWriter, Blobs, Durability, FileBlobs, Fsync};
pub use db::{DbError, NodeDb, Usage};
pub use endpoint::{PieceError, Piecestore, Trust};
