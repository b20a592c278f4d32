//! Piece bytes on disk. A piece is written to a temporary file, fsynced and
//! renamed into place, so a visible piece file is always complete.

use std::fs::File;
use std::io::{Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};

use loam_common::NodeId;
use loam_common::orders::PieceId;

/// Where piece bytes live. A small trait so tests can wrap it with faults.
pub trait Blobs: Send + Sync + 'static {
    /// Starts writing a new piece.
    fn create(&self) -> std::io::Result<Box<dyn BlobWriter>>;
    /// Makes a finished piece visible under its name.
    fn commit(
        &self,
        writer: Box<dyn BlobWriter>,
        satellite: &NodeId,
        piece: &PieceId,
    ) -> std::io::Result<()>;
    /// Reads `len` bytes at `offset` of a piece.
    fn read(
        &self,
        satellite: &NodeId,
        piece: &PieceId,
        offset: u64,
        len: usize,
    ) -> std::io::Result<Vec<u8>>;
    fn delete(&self, satellite: &NodeId, piece: &PieceId) -> std::io::Result<()>;
    /// Moves a piece to the trash, stamped with `now_ms`.
    fn trash(&self, satellite: &NodeId, piece: &PieceId, now_ms: i64) -> std::io::Result<()>;
    /// Deletes trash stamped before `before_ms`; returns the bytes freed.
    fn empty_trash(&self, before_ms: i64) -> std::io::Result<u64>;
}

pub trait BlobWriter: Send {
    fn write(&mut self, data: &[u8]) -> std::io::Result<()>;
    /// Implementation detail for [`Blobs::commit`].
    fn into_temp(self: Box<Self>) -> (File, PathBuf);
}

/// Pieces as files under `DIR/pieces/<satellite>/<2 hex>/<rest>`.
pub struct FileBlobs {
    root: PathBuf,
    sync: bool,
}

impl FileBlobs {
    /// Opens the store; leftovers of interrupted uploads are removed.
    pub fn open(root: &Path, sync: bool) -> std::io::Result<Self> {
        let tmp = root.join("tmp");
        if tmp.exists() {
            std::fs::remove_dir_all(&tmp)?;
        }
        std::fs::create_dir_all(&tmp)?;
        std::fs::create_dir_all(root.join("pieces"))?;
        std::fs::create_dir_all(root.join("trash"))?;
        Ok(Self {
            root: root.to_path_buf(),
            sync,
        })
    }

    fn path(&self, satellite: &NodeId, piece: &PieceId) -> PathBuf {
        let hex = piece.to_hex();
        self.root
            .join("pieces")
            .join(&hex::encode(satellite.as_bytes())[..16])
            .join(&hex[..2])
            .join(&hex[2..])
    }
}

struct FileWriter {
    /// `None` once handed to [`Blobs::commit`].
    temp: Option<(File, PathBuf)>,
}

impl BlobWriter for FileWriter {
    fn write(&mut self, data: &[u8]) -> std::io::Result<()> {
        match &mut self.temp {
            Some((file, _)) => file.write_all(data),
            None => Err(std::io::Error::other("piece writer already committed")),
        }
    }

    fn into_temp(mut self: Box<Self>) -> (File, PathBuf) {
        self.temp
            .take()
            .expect("into_temp is called once, by commit")
    }
}

impl Drop for FileWriter {
    fn drop(&mut self) {
        // Abandoned upload: nothing is left behind.
        if let Some((_, path)) = self.temp.take() {
            let _ = std::fs::remove_file(path);
        }
    }
}

impl Blobs for FileBlobs {
    fn create(&self) -> std::io::Result<Box<dyn BlobWriter>> {
        let path = self
            .root
            .join("tmp")
            .join(format!("{:032x}.partial", rand::random::<u128>()));
        let file = File::create_new(&path)?;
        Ok(Box::new(FileWriter {
            temp: Some((file, path)),
        }))
    }

    fn commit(
        &self,
        writer: Box<dyn BlobWriter>,
        satellite: &NodeId,
        piece: &PieceId,
    ) -> std::io::Result<()> {
        let (file, tmp) = writer.into_temp();
        if self.sync {
            file.sync_all()?;
        }
        drop(file);
        let dest = self.path(satellite, piece);
        let parent = dest.parent().expect("piece path has a parent");
        std::fs::create_dir_all(parent)?;
        std::fs::rename(&tmp, &dest)?;
        if self.sync {
            File::open(parent)?.sync_all()?;
        }
        Ok(())
    }

    fn read(
        &self,
        satellite: &NodeId,
        piece: &PieceId,
        offset: u64,
        len: usize,
    ) -> std::io::Result<Vec<u8>> {
        let mut file = File::open(self.path(satellite, piece))?;
        file.seek(SeekFrom::Start(offset))?;
        let mut buf = loam_common::buffers::BufferPool::global().zeroed(len);
        file.read_exact(&mut buf)?;
        Ok(buf)
    }

    fn delete(&self, satellite: &NodeId, piece: &PieceId) -> std::io::Result<()> {
        match std::fs::remove_file(self.path(satellite, piece)) {
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
            other => other,
        }
    }

    fn trash(&self, satellite: &NodeId, piece: &PieceId, now_ms: i64) -> std::io::Result<()> {
        let dest = self.root.join("trash").join(format!(
            "{now_ms:016}-{}-{}",
            &hex::encode(satellite.as_bytes())[..16],
            piece.to_hex()
        ));
        match std::fs::rename(self.path(satellite, piece), dest) {
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
            other => other,
        }
    }

    fn empty_trash(&self, before_ms: i64) -> std::io::Result<u64> {
        let mut freed = 0;
        for entry in std::fs::read_dir(self.root.join("trash"))? {
            let entry = entry?;
            let name = entry.file_name();
            let stamp = name
                .to_str()
                .and_then(|n| n.split('-').next())
                .and_then(|t| t.parse::<i64>().ok());
            if stamp.is_some_and(|t| t < before_ms) {
                freed += entry.metadata().map_or(0, |m| m.len());
                std::fs::remove_file(entry.path())?;
            }
        }
        Ok(freed)
    }
}
