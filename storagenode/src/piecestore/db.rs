//! The node's RocksDB: piece metadata, used space, serial numbers seen and
//! orders kept for settlement. Used space is a counter updated in the same
//! write batch as the piece records, never computed by walking the disk.

use std::path::Path;
use std::sync::Mutex;

use loam_common::orders::{OrderLimit, PieceAction, PieceId, SerialNumber};
use loam_common::{NodeId, merkle, pb};
use prost::Message;
use rocksdb::{ColumnFamilyDescriptor, DB, Options, WriteBatch, WriteOptions};

const CF_PIECES: &str = "pieces";
const CF_SERIALS: &str = "serials";
const CF_ORDERS: &str = "orders";
const CF_META: &str = "meta";
/// Bytes actually transferred, by satellite, action and day.
const CF_BANDWIDTH: &str = "bandwidth";
/// A piece's Merkle leaf hashes (32 bytes each, in order), kept beside its
/// record so an audit reads one leaf of the piece instead of all of it.
const CF_LEAVES: &str = "leaves";
const KEY_USED: &[u8] = b"used_bytes";
const KEY_PIECES: &[u8] = b"piece_count";
const KEY_TRASH: &[u8] = b"trash_bytes";
const KEY_TASKS_OK: &[u8] = b"compute_tasks_ok";
const KEY_TASKS_FAILED: &[u8] = b"compute_tasks_failed";
/// Work units of finished training tasks, in millionths.
const KEY_WORK_MICROS: &[u8] = b"compute_work_micros";

#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum DbError {
    #[error("rocksdb: {0}")]
    RocksDb(#[from] rocksdb::Error),
    #[error("stored record is corrupt: {0}")]
    Corrupt(&'static str),
}

/// Space used and pieces held, as recorded.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Usage {
    pub used_bytes: u64,
    pub pieces: u64,
    /// Bytes of garbage-collected pieces waiting in the trash.
    pub trash_bytes: u64,
}

/// Training tasks this node ran, as recorded.
#[derive(Debug, Clone, Copy, Default, PartialEq, serde::Serialize)]
pub struct ComputeStats {
    pub tasks_ok: u64,
    pub tasks_failed: u64,
    /// Work units (3 × parameters × samples / 10⁹) of the finished tasks.
    pub work_units: f64,
}

pub struct NodeDb {
    db: DB,
    /// Serializes read-modify-write of the usage counters and serial checks.
    lock: Mutex<Usage>,
    /// Whether serials and orders are synced (pieces always are).
    sync: bool,
}

fn piece_key(satellite: &NodeId, piece: &PieceId) -> Vec<u8> {
    let mut k = Vec::with_capacity(64);
    k.extend_from_slice(satellite.as_bytes());
    k.extend_from_slice(piece.as_bytes());
    k
}

fn read_u64(v: Option<Vec<u8>>) -> Result<u64, DbError> {
    match v {
        None => Ok(0),
        Some(b) => Ok(u64::from_be_bytes(
            b.as_slice()
                .try_into()
                .map_err(|_| DbError::Corrupt("counter"))?,
        )),
    }
}

impl NodeDb {
    /// Opens the database; every write is synced (see [`NodeDb::open_with`]).
    pub fn open(path: &Path) -> Result<Self, DbError> {
        Self::open_with(path, true)
    }

    /// Opens the database. With `sync`, serial numbers and unsent orders
    /// reach the disk before the transfer they belong to is answered, like
    /// pieces and their records always do, so a power loss can neither
    /// open a replay window nor lose bandwidth the node is owed.
    pub fn open_with(path: &Path, sync: bool) -> Result<Self, DbError> {
        let mut opts = Options::default();
        opts.create_if_missing(true);
        opts.create_missing_column_families(true);
        let cfs = [
            CF_PIECES,
            CF_SERIALS,
            CF_ORDERS,
            CF_META,
            CF_BANDWIDTH,
            CF_LEAVES,
        ]
        .into_iter()
        .map(|n| ColumnFamilyDescriptor::new(n, Options::default()));
        let db = DB::open_cf_descriptors(&opts, path, cfs)?;
        let meta = db.cf_handle(CF_META).expect("created above");
        let usage = Usage {
            used_bytes: read_u64(db.get_cf(meta, KEY_USED)?)?,
            pieces: read_u64(db.get_cf(meta, KEY_PIECES)?)?,
            trash_bytes: read_u64(db.get_cf(meta, KEY_TRASH)?)?,
        };
        Ok(Self {
            db,
            lock: Mutex::new(usage),
            sync,
        })
    }

    fn cf(&self, name: &str) -> &rocksdb::ColumnFamily {
        self.db
            .cf_handle(name)
            .expect("column families are created at open")
    }

    /// Writes `batch`, synced when the node was opened to sync.
    fn write_durable(&self, batch: WriteBatch) -> Result<(), DbError> {
        if self.sync {
            self.sync_write(batch)
        } else {
            Ok(self.db.write(batch)?)
        }
    }

    fn sync_write(&self, batch: WriteBatch) -> Result<(), DbError> {
        let mut opts = WriteOptions::default();
        opts.set_sync(true);
        Ok(self.db.write_opt(batch, &opts)?)
    }

    pub fn usage(&self) -> Usage {
        *self.lock.lock().expect("usage lock")
    }

    /// Records a serial number as used until `expires_ms`; false if it was
    /// already used.
    pub fn use_serial(&self, serial: &SerialNumber, expires_ms: i64) -> Result<bool, DbError> {
        let _guard = self.lock.lock().expect("usage lock");
        let cf = self.cf(CF_SERIALS);
        if self.db.get_cf(cf, serial.as_bytes())?.is_some() {
            return Ok(false);
        }
        let mut batch = WriteBatch::default();
        batch.put_cf(cf, serial.as_bytes(), expires_ms.to_be_bytes());
        self.write_durable(batch)?;
        Ok(true)
    }

    /// Forgets serial numbers whose order limits have expired (they can no
    /// longer be replayed anyway). Returns how many were removed.
    pub fn prune_serials(&self, now_ms: i64) -> Result<usize, DbError> {
        let cf = self.cf(CF_SERIALS);
        let mut batch = WriteBatch::default();
        let mut n = 0;
        for item in self.db.iterator_cf(cf, rocksdb::IteratorMode::Start) {
            let (k, v) = item?;
            let exp = i64::from_be_bytes(
                v.as_ref()
                    .try_into()
                    .map_err(|_| DbError::Corrupt("serial"))?,
            );
            if exp <= now_ms {
                batch.delete_cf(cf, k);
                n += 1;
            }
        }
        self.db.write(batch)?;
        Ok(n)
    }

    /// Records a stored piece, its Merkle leaf hashes and the order to
    /// settle for it, atomically with the usage counters.
    pub fn put_piece(
        &self,
        satellite: &NodeId,
        piece: &PieceId,
        record: &pb::StoredPiece,
        leaves: &[merkle::Hash],
        order: Option<&pb::UnsentOrder>,
    ) -> Result<(), DbError> {
        let mut usage = self.lock.lock().expect("usage lock");
        let key = piece_key(satellite, piece);
        let mut next = *usage;
        if let Some(old) = self.db.get_cf(self.cf(CF_PIECES), &key)? {
            let old =
                pb::StoredPiece::decode(old.as_slice()).map_err(|_| DbError::Corrupt("piece"))?;
            next.used_bytes = next.used_bytes.saturating_sub(old.size as u64);
            next.pieces = next.pieces.saturating_sub(1);
        }
        next.used_bytes += record.size as u64;
        next.pieces += 1;
        let mut batch = WriteBatch::default();
        batch.put_cf(self.cf(CF_PIECES), &key, record.encode_to_vec());
        batch.put_cf(self.cf(CF_LEAVES), &key, leaves.concat());
        if let Some(order) = order {
            batch.put_cf(self.cf(CF_ORDERS), order_key(order), order.encode_to_vec());
        }
        self.put_usage(&mut batch, &next);
        self.sync_write(batch)?;
        *usage = next;
        Ok(())
    }

    pub fn piece(
        &self,
        satellite: &NodeId,
        piece: &PieceId,
    ) -> Result<Option<pb::StoredPiece>, DbError> {
        match self
            .db
            .get_cf(self.cf(CF_PIECES), piece_key(satellite, piece))?
        {
            None => Ok(None),
            Some(v) => pb::StoredPiece::decode(v.as_slice())
                .map(Some)
                .map_err(|_| DbError::Corrupt("piece")),
        }
    }

    /// The Merkle leaf hashes stored with a piece, or `None` for a piece
    /// recorded without them (stored by an earlier version).
    pub fn piece_leaves(
        &self,
        satellite: &NodeId,
        piece: &PieceId,
    ) -> Result<Option<Vec<merkle::Hash>>, DbError> {
        let Some(v) = self
            .db
            .get_cf(self.cf(CF_LEAVES), piece_key(satellite, piece))?
        else {
            return Ok(None);
        };
        let (leaves, rest) = v.as_chunks::<32>();
        if !rest.is_empty() {
            return Err(DbError::Corrupt("piece leaves"));
        }
        Ok(Some(leaves.to_vec()))
    }

    /// Removes a piece record; returns its size if it existed.
    pub fn delete_piece(
        &self,
        satellite: &NodeId,
        piece: &PieceId,
    ) -> Result<Option<u64>, DbError> {
        self.remove_piece(satellite, piece, false)
    }

    /// Removes a piece record whose bytes moved to the trash: its size
    /// moves from used space to trash. Returns the size if it existed.
    pub fn trash_piece(&self, satellite: &NodeId, piece: &PieceId) -> Result<Option<u64>, DbError> {
        self.remove_piece(satellite, piece, true)
    }

    fn remove_piece(
        &self,
        satellite: &NodeId,
        piece: &PieceId,
        to_trash: bool,
    ) -> Result<Option<u64>, DbError> {
        let mut usage = self.lock.lock().expect("usage lock");
        let key = piece_key(satellite, piece);
        let Some(old) = self.db.get_cf(self.cf(CF_PIECES), &key)? else {
            return Ok(None);
        };
        let old = pb::StoredPiece::decode(old.as_slice()).map_err(|_| DbError::Corrupt("piece"))?;
        let size = old.size.max(0) as u64;
        let mut next = *usage;
        next.used_bytes = next.used_bytes.saturating_sub(size);
        next.pieces = next.pieces.saturating_sub(1);
        if to_trash {
            next.trash_bytes += size;
        }
        let mut batch = WriteBatch::default();
        batch.delete_cf(self.cf(CF_PIECES), &key);
        batch.delete_cf(self.cf(CF_LEAVES), &key);
        self.put_usage(&mut batch, &next);
        self.sync_write(batch)?;
        *usage = next;
        Ok(Some(size))
    }

    /// Records that `bytes` of trash were deleted from the disk.
    pub fn trash_emptied(&self, bytes: u64) -> Result<(), DbError> {
        let mut usage = self.lock.lock().expect("usage lock");
        let mut next = *usage;
        next.trash_bytes = next.trash_bytes.saturating_sub(bytes);
        let mut batch = WriteBatch::default();
        self.put_usage(&mut batch, &next);
        self.db.write(batch)?;
        *usage = next;
        Ok(())
    }

    fn put_usage(&self, batch: &mut WriteBatch, usage: &Usage) {
        let meta = self.cf(CF_META);
        batch.put_cf(meta, KEY_USED, usage.used_bytes.to_be_bytes());
        batch.put_cf(meta, KEY_PIECES, usage.pieces.to_be_bytes());
        batch.put_cf(meta, KEY_TRASH, usage.trash_bytes.to_be_bytes());
    }

    /// Counts one finished training task.
    pub fn record_task(&self, ok: bool, work_units: f64) -> Result<(), DbError> {
        let _guard = self.lock.lock().expect("usage lock");
        let meta = self.cf(CF_META);
        let (key, micros) = if ok {
            (KEY_TASKS_OK, (work_units.max(0.0) * 1e6).round() as u64)
        } else {
            (KEY_TASKS_FAILED, 0)
        };
        let mut batch = WriteBatch::default();
        batch.put_cf(
            meta,
            key,
            (read_u64(self.db.get_cf(meta, key)?)? + 1).to_be_bytes(),
        );
        if micros > 0 {
            let old = read_u64(self.db.get_cf(meta, KEY_WORK_MICROS)?)?;
            batch.put_cf(meta, KEY_WORK_MICROS, (old + micros).to_be_bytes());
        }
        self.db.write(batch)?;
        Ok(())
    }

    pub fn compute_stats(&self) -> Result<ComputeStats, DbError> {
        let meta = self.cf(CF_META);
        Ok(ComputeStats {
            tasks_ok: read_u64(self.db.get_cf(meta, KEY_TASKS_OK)?)?,
            tasks_failed: read_u64(self.db.get_cf(meta, KEY_TASKS_FAILED)?)?,
            work_units: read_u64(self.db.get_cf(meta, KEY_WORK_MICROS)?)? as f64 / 1e6,
        })
    }

    /// Every piece stored for `satellite`, with its record.
    pub fn pieces_of(
        &self,
        satellite: &NodeId,
    ) -> Result<Vec<(PieceId, pb::StoredPiece)>, DbError> {
        let prefix = satellite.as_bytes().to_vec();
        let mut out = Vec::new();
        for item in self.db.iterator_cf(
            self.cf(CF_PIECES),
            rocksdb::IteratorMode::From(&prefix, rocksdb::Direction::Forward),
        ) {
            let (k, v) = item?;
            if !k.starts_with(&prefix) {
                break;
            }
            let id =
                PieceId::try_from(&k[prefix.len()..]).map_err(|_| DbError::Corrupt("piece key"))?;
            let rec = pb::StoredPiece::decode(v.as_ref()).map_err(|_| DbError::Corrupt("piece"))?;
            out.push((id, rec));
        }
        Ok(out)
    }

    /// Keeps an order for settlement: the largest one per serial.
    pub fn put_order(&self, order: &pb::UnsentOrder) -> Result<(), DbError> {
        let key = order_key(order);
        let _guard = self.lock.lock().expect("usage lock");
        if let Some(old) = self.db.get_cf(self.cf(CF_ORDERS), &key)? {
            let old =
                pb::UnsentOrder::decode(old.as_slice()).map_err(|_| DbError::Corrupt("order"))?;
            if order_amount(&old) > order_amount(order) {
                return Ok(());
            }
        }
        let mut batch = WriteBatch::default();
        batch.put_cf(self.cf(CF_ORDERS), key, order.encode_to_vec());
        self.write_durable(batch)?;
        Ok(())
    }

    /// Number of orders waiting to be settled.
    pub fn unsent_orders(&self) -> usize {
        self.db
            .iterator_cf(self.cf(CF_ORDERS), rocksdb::IteratorMode::Start)
            .count()
    }

    /// Unsent orders of `satellite` whose limits were created before
    /// `before_ms`, oldest first, with their keys.
    pub fn orders_of(
        &self,
        satellite: &NodeId,
        before_ms: i64,
    ) -> Result<Vec<(Vec<u8>, pb::UnsentOrder)>, DbError> {
        let prefix = satellite.as_bytes().to_vec();
        let mut out = Vec::new();
        for item in self.db.iterator_cf(
            self.cf(CF_ORDERS),
            rocksdb::IteratorMode::From(&prefix, rocksdb::Direction::Forward),
        ) {
            let (k, v) = item?;
            if !k.starts_with(&prefix) {
                break;
            }
            let created = k
                .get(32..40)
                .and_then(|b| <[u8; 8]>::try_from(b).ok())
                .map_or(i64::MAX, i64::from_be_bytes);
            if created >= before_ms {
                break;
            }
            let o = pb::UnsentOrder::decode(v.as_ref()).map_err(|_| DbError::Corrupt("order"))?;
            out.push((k.to_vec(), o));
        }
        Ok(out)
    }

    /// Forgets settled (or unsettleable) orders.
    pub fn delete_orders(&self, keys: &[Vec<u8>]) -> Result<(), DbError> {
        let mut batch = WriteBatch::default();
        for k in keys {
            batch.delete_cf(self.cf(CF_ORDERS), k);
        }
        self.db.write(batch)?;
        Ok(())
    }

    /// Counts bytes actually transferred for `satellite` under `action`.
    pub fn add_bandwidth(
        &self,
        satellite: &NodeId,
        action: PieceAction,
        bytes: u64,
        now_ms: i64,
    ) -> Result<(), DbError> {
        if bytes == 0 {
            return Ok(());
        }
        let key = bandwidth_key(satellite, action, now_ms.div_euclid(86_400_000));
        let _guard = self.lock.lock().expect("usage lock");
        let old = read_u64(self.db.get_cf(self.cf(CF_BANDWIDTH), &key)?)?;
        self.db
            .put_cf(self.cf(CF_BANDWIDTH), key, (old + bytes).to_be_bytes())?;
        Ok(())
    }

    /// Notes the space used on `day` (days since the epoch): the day keeps
    /// the largest figure noted, for the dashboard's daily disk chart.
    pub fn note_disk_day(&self, day: i64, used_bytes: u64) -> Result<(), DbError> {
        let key = disk_day_key(day);
        let meta = self.cf(CF_META);
        let old = read_u64(self.db.get_cf(meta, &key)?)?;
        if used_bytes > old {
            self.db.put_cf(meta, key, used_bytes.to_be_bytes())?;
        }
        Ok(())
    }

    /// The space noted for each of days `[from_day, to_day)`, None for days
    /// nothing was noted.
    pub fn disk_days(&self, from_day: i64, to_day: i64) -> Result<Vec<Option<u64>>, DbError> {
        let meta = self.cf(CF_META);
        (from_day..to_day)
            .map(|day| {
                self.db
                    .get_cf(meta, disk_day_key(day))?
                    .map(|v| read_u64(Some(v)))
                    .transpose()
            })
            .collect()
    }

    /// Bytes transferred for `satellite` under `action` on days
    /// `[from_day, to_day)` (days since the epoch).
    pub fn bandwidth(
        &self,
        satellite: &NodeId,
        action: PieceAction,
        from_day: i64,
        to_day: i64,
    ) -> Result<u64, DbError> {
        let mut total = 0;
        for day in from_day..to_day {
            total += read_u64(
                self.db
                    .get_cf(self.cf(CF_BANDWIDTH), bandwidth_key(satellite, action, day))?,
            )?;
        }
        Ok(total)
    }
}

fn disk_day_key(day: i64) -> Vec<u8> {
    let mut k = b"disk_day/".to_vec();
    k.extend_from_slice(&day.to_be_bytes());
    k
}

fn bandwidth_key(satellite: &NodeId, action: PieceAction, day: i64) -> Vec<u8> {
    let mut k = satellite.as_bytes().to_vec();
    k.push(action.code() as u8);
    k.extend_from_slice(&day.to_be_bytes());
    k
}

fn order_amount(o: &pb::UnsentOrder) -> i64 {
    o.order
        .as_ref()
        .and_then(|s| pb::Order::decode(s.order.as_ref()).ok())
        .map_or(0, |o| o.amount)
}

/// Orders are keyed by satellite, limit creation time and the hash of the
/// signed limit (unique per serial), so a satellite's orders scan oldest
/// first.
fn order_key(order: &pb::UnsentOrder) -> Vec<u8> {
    let limit = order.limit.as_ref();
    let decoded = limit.and_then(|l| OrderLimit::decode_unverified(l).ok());
    let mut k = Vec::with_capacity(72);
    match &decoded {
        Some(l) => {
            k.extend_from_slice(l.satellite_id.as_bytes());
            k.extend_from_slice(&l.created_ms.to_be_bytes());
        }
        None => k.extend_from_slice(&[0; 40]),
    }
    k.extend_from_slice(
        blake3::hash(limit.map(|l| l.limit.as_ref()).unwrap_or_default()).as_bytes(),
    );
    k
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn usage_survives_reopen_and_tracks_deletes_and_trash() {
        let dir = tempfile::tempdir().expect("tmp");
        let sat = loam_common::Identity::generate(0, |_| {}).id();
        let (p1, p2, p3) = (PieceId::random(), PieceId::random(), PieceId::random());
        let rec = |size| pb::StoredPiece {
            size,
            ..Default::default()
        };
        let usage = |used_bytes, pieces, trash_bytes| Usage {
            used_bytes,
            pieces,
            trash_bytes,
        };
        {
            let db = NodeDb::open(dir.path()).expect("open");
            db.put_piece(&sat, &p1, &rec(100), &[[1; 32], [2; 32]], None)
                .expect("put");
            db.put_piece(&sat, &p2, &rec(50), &[], None).expect("put");
            db.put_piece(&sat, &p3, &rec(30), &[[3; 32]], None)
                .expect("put");
            assert_eq!(db.trash_piece(&sat, &p3).expect("trash"), Some(30));
            assert_eq!(db.usage(), usage(150, 2, 30));
            assert_eq!(db.piece_leaves(&sat, &p3).expect("leaves"), None);
        }
        let db = NodeDb::open(dir.path()).expect("reopen");
        assert_eq!(db.usage(), usage(150, 2, 30));
        assert_eq!(
            db.piece_leaves(&sat, &p1).expect("leaves"),
            Some(vec![[1; 32], [2; 32]])
        );
        assert_eq!(db.delete_piece(&sat, &p1).expect("delete"), Some(100));
        assert_eq!(db.piece_leaves(&sat, &p1).expect("leaves"), None);
        assert_eq!(db.delete_piece(&sat, &p1).expect("delete"), None);
        assert_eq!(db.usage(), usage(50, 1, 30));
        db.trash_emptied(30).expect("emptied");
        assert_eq!(db.usage(), usage(50, 1, 0));
    }

    #[test]
    fn compute_stats_accumulate() {
        let dir = tempfile::tempdir().expect("tmp");
        let db = NodeDb::open(dir.path()).expect("open");
        db.record_task(true, 1.25).expect("record");
        db.record_task(true, 0.5).expect("record");
        db.record_task(false, 9.0).expect("record");
        let stats = db.compute_stats().expect("stats");
        assert_eq!((stats.tasks_ok, stats.tasks_failed), (2, 1));
        assert!((stats.work_units - 1.75).abs() < 1e-9);
    }

    #[test]
    fn serials_are_single_use_until_pruned() {
        let dir = tempfile::tempdir().expect("tmp");
        let db = NodeDb::open(dir.path()).expect("open");
        let s = SerialNumber::random();
        assert!(db.use_serial(&s, 1000).expect("use"));
        assert!(!db.use_serial(&s, 1000).expect("reuse"));
        assert_eq!(db.prune_serials(999).expect("prune"), 0);
        assert_eq!(db.prune_serials(1000).expect("prune"), 1);
        assert!(db.use_serial(&s, 2000).expect("use again"));
    }
}
