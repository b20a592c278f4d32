//! Pure (sans-IO) transformation between a plaintext segment and its
//! pieces: encrypt each of the `k` rows under its own key, then compute the
//! parity pieces; and back.

use std::sync::Arc;

use bytes::Bytes;
use loam_common::buffers::BufferPool;
use loam_common::direct::DIRECT_ALIGN;
use loam_common::encryption::{self, CryptoError, Key};
use loam_common::erasure::{ErasureCoder, ErasureError};
use loam_common::merkle::MerkleHasher;

/// A segment ready to upload.
pub struct EncodedSegment {
    pub key: Key,
    /// All `total` pieces, data rows first.
    pub pieces: Vec<Bytes>,
    pub hashes: Vec<[u8; 32]>,
    pub piece_size: usize,
    pub plain_size: usize,
}

/// Plaintext bytes per row for a segment of `plain_size` bytes.
pub fn row_len(plain_size: usize, k: usize) -> usize {
    plain_size.div_ceil(k).max(1)
}

/// Threads used to encode or decode one segment.
fn threads(work_items: usize) -> usize {
    std::thread::available_parallelism()
        .map_or(1, |n| n.get())
        .min(4)
        .min(work_items)
        .max(1)
}

/// Runs `f` on disjoint chunks of `items`, one scoped thread per chunk.
pub fn par_chunks<T: Send>(items: &mut [T], f: impl Fn(usize, &mut [T]) + Sync) {
    let n = threads(items.len());
    let per = items.len().div_ceil(n).max(1);
    std::thread::scope(|s| {
        for (c, chunk) in items.chunks_mut(per).enumerate() {
            let f = &f;
            s.spawn(move || f(c * per, chunk));
        }
    });
}

/// Where each of the `k` rows lies in a segment of `plain_len` bytes, and
/// the (padded) row length: consecutive `rows[i]` bytes when given, else
/// an even split.
fn row_ranges(
    plain_len: usize,
    k: usize,
    rows: Option<&[usize]>,
) -> Result<(Vec<(usize, usize)>, usize), ErasureError> {
    match rows {
        Some(rows) if rows.len() == k && rows.iter().sum::<usize>() == plain_len => {
            let mut at = 0;
            let ranges: Vec<(usize, usize)> = rows
                .iter()
                .map(|&r| {
                    at += r;
                    (at - r, at)
                })
                .collect();
            let row = rows.iter().copied().max().unwrap_or(0).max(1);
            Ok((ranges, row))
        }
        Some(_) => Err(ErasureError::UnevenPieces),
        None => {
            let row = row_len(plain_len, k);
            let ranges = (0..k)
                .map(|i| ((i * row).min(plain_len), ((i + 1) * row).min(plain_len)))
                .collect();
            Ok((ranges, row))
        }
    }
}

/// Encrypts and erasure-codes one segment, using every core: rows are
/// encrypted in parallel, then the parity columns are split between
/// threads, then pieces are hashed in parallel.
pub fn encode(
    coder: &ErasureCoder,
    segment_index: u32,
    plain: &[u8],
) -> Result<EncodedSegment, ErasureError> {
    encode_rows(coder, segment_index, plain, None)
}

/// Like [`encode`], with the rows' lengths given: `rows[i]` bytes of
/// `plain` (consecutive) go into data row `i`, zero-padded to the longest.
/// This is how a dataset keeps whole records in every data piece.
pub fn encode_rows(
    coder: &ErasureCoder,
    segment_index: u32,
    plain: &[u8],
    rows: Option<&[usize]>,
) -> Result<EncodedSegment, ErasureError> {
    let pool = BufferPool::global();
    let scheme = coder.scheme();
    let k = scheme.k();
    let key = Key::random();
    let (ranges, row) = row_ranges(plain.len(), k, rows)?;
    let enc_row = encryption::encrypted_len(row);

    let mut rows: Vec<Vec<u8>> = (0..k).map(|_| pool.take(enc_row)).collect();
    par_chunks(&mut rows, |first, chunk| {
        let mut padded = Vec::new();
        for (j, out) in chunk.iter_mut().enumerate() {
            let i = first + j;
            let (start, end) = ranges[i];
            let src = if end - start == row {
                &plain[start..end]
            } else {
                padded.clear();
                padded.extend_from_slice(&plain[start..end]);
                padded.resize(row, 0);
                &padded[..]
            };
            encryption::encrypt_row(
                &encryption::row_key(&key, i as u32),
                segment_index,
                src,
                out,
            );
        }
    });

    let mut parity: Vec<Vec<u8>> = (0..scheme.parity()).map(|_| pool.take(enc_row)).collect();
    par_chunks(&mut parity, |_, chunk| {
        for p in chunk {
            p.resize(enc_row, 0);
        }
    });
    {
        // Column ranges, whole sub-stripes each.
        let n = threads(enc_row.div_ceil(ErasureCoder::SUB_STRIPE));
        let width =
            enc_row.div_ceil(n).div_ceil(ErasureCoder::SUB_STRIPE) * ErasureCoder::SUB_STRIPE;
        let mut columns: Vec<Vec<&mut [u8]>> = (0..n).map(|_| Vec::new()).collect();
        for p in parity.iter_mut() {
            for (c, part) in p.chunks_mut(width.max(1)).enumerate() {
                columns[c].push(part);
            }
        }
        let results: Vec<Result<(), ErasureError>> = std::thread::scope(|s| {
            let handles: Vec<_> = columns
                .into_iter()
                .enumerate()
                .map(|(c, mut par)| {
                    let rows = &rows;
                    s.spawn(move || {
                        let start = c * width;
                        let end = (start + width).min(enc_row);
                        let data: Vec<&[u8]> = rows.iter().map(|r| &r[start..end]).collect();
                        coder.encode_slices(&data, &mut par)
                    })
                })
                .collect();
            handles
                .into_iter()
                .map(|h| h.join().unwrap_or(Err(ErasureError::UnevenPieces)))
                .collect()
        });
        for r in results {
            r?;
        }
    }

    let mut all: Vec<(Vec<u8>, [u8; 32])> = rows
        .into_iter()
        .chain(parity)
        .map(|b| (b, [0u8; 32]))
        .collect();
    par_chunks(&mut all, |_, chunk| {
        for (piece, hash) in chunk {
            *hash = loam_common::merkle::root(piece);
        }
    });
    let hashes = all.iter().map(|(_, h)| *h).collect();
    let pieces: Vec<Bytes> = all.into_iter().map(|(b, _)| pool.freeze(b)).collect();
    Ok(EncodedSegment {
        key,
        piece_size: enc_row,
        pieces,
        hashes,
        plain_size: plain.len(),
    })
}

/// Plaintext bytes of each row per stripe (whole encryption blocks).
pub const STRIPE: usize = 16 * encryption::BLOCK_SIZE;

/// Encrypts and erasure-codes a segment one stripe at a time. A stripe is
/// the same column range of every piece, so the first bytes of every piece
/// can be on their way while the rest is still being encoded, and memory
/// stays a few stripes instead of the whole encoded segment: a fresh page
/// costs as much as encrypting it, so a client that touches less memory
/// is a faster one. The pieces match [`encode_rows`] byte for byte.
pub struct StripeEncoder {
    coder: Arc<ErasureCoder>,
    segment_index: u32,
    key: Key,
    row_keys: Vec<Key>,
    /// Each row's bytes in the segment.
    ranges: Vec<(usize, usize)>,
    /// Plaintext bytes per row (padded).
    row: usize,
    /// `None` for pieces whose uploads hash them (see
    /// [`StripeEncoder::leave_unhashed`]).
    hashers: Vec<Option<MerkleHasher>>,
    next: usize,
    plain: Vec<u8>,
}

#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum StripeError {
    #[error("reading the data to upload: {0}")]
    Read(#[from] std::io::Error),
    #[error(transparent)]
    Erasure(#[from] ErasureError),
}

impl StripeEncoder {
    /// For a segment of `plain_len` bytes, split evenly into rows or as
    /// `rows` says (see [`encode_rows`]).
    pub fn new(
        coder: Arc<ErasureCoder>,
        segment_index: u32,
        plain_len: usize,
        rows: Option<&[usize]>,
    ) -> Result<Self, ErasureError> {
        let k = coder.scheme().k();
        let (ranges, row) = row_ranges(plain_len, k, rows)?;
        let key = Key::random();
        Ok(Self {
            row_keys: (0..k as u32)
                .map(|i| encryption::row_key(&key, i))
                .collect(),
            key,
            ranges,
            row,
            hashers: (0..coder.scheme().total())
                .map(|_| Some(MerkleHasher::new()))
                .collect(),
            coder,
            segment_index,
            next: 0,
            plain: Vec::new(),
        })
    }

    /// Bytes in each piece.
    pub fn piece_size(&self) -> usize {
        encryption::encrypted_len(self.row)
    }

    /// Leaves pieces `pieces` unhashed: their stripes are still encoded,
    /// but [`StripeEncoder::finish`] has no hash for them. For spare pieces
    /// whose uploads may never start; a [`crate::feed::PieceFeed::hashing`] feed
    /// hashes what it sends instead.
    pub fn leave_unhashed(&mut self, pieces: impl IntoIterator<Item = usize>) {
        for i in pieces {
            if let Some(h) = self.hashers.get_mut(i) {
                *h = None;
            }
        }
    }

    /// Encodes the next stripe: one buffer per piece, data rows first, or
    /// `None` after the last. `read(offset, buf)` fills `buf` with the
    /// segment's plaintext at `offset`.
    pub fn next_stripe(
        &mut self,
        mut read: impl FnMut(usize, &mut [u8]) -> std::io::Result<()>,
    ) -> Result<Option<Vec<Bytes>>, StripeError> {
        let start = self.next * STRIPE;
        if start >= self.row {
            return Ok(None);
        }
        self.next += 1;
        let width = STRIPE.min(self.row - start);
        let pool = BufferPool::global();
        let mut pieces: Vec<Vec<u8>> = Vec::with_capacity(self.hashers.len());
        for (i, &(from, to)) in self.ranges.iter().enumerate() {
            // This row's part of the stripe, zero-padded past its end.
            let have = to.saturating_sub(from + start).min(width);
            // Only the padding needs zeroing: the read fills the rest.
            self.plain.resize(width, 0);
            let (data, padding) = self.plain.split_at_mut(have);
            padding.fill(0);
            if have > 0 {
                read(from + start, data)?;
            }
            let mut out = pool.take(encryption::encrypted_len(width));
            encryption::encrypt_blocks(
                &self.row_keys[i],
                self.segment_index,
                (start / encryption::BLOCK_SIZE) as u64,
                &self.plain,
                &mut out,
            );
            pieces.push(out);
        }
        let len = pieces[0].len();
        // Unzeroed: the encoder writes every parity byte (the first data
        // row is multiplied into the output, the others added to it).
        let mut parity: Vec<Vec<u8>> = (0..self.coder.scheme().parity())
            .map(|_| pool.scratch(len))
            .collect();
        {
            let data: Vec<&[u8]> = pieces.iter().map(Vec::as_slice).collect();
            let mut par: Vec<&mut [u8]> = parity.iter_mut().map(Vec::as_mut_slice).collect();
            self.coder.encode_slices(&data, &mut par)?;
        }
        pieces.extend(parity);
        for (hasher, piece) in self.hashers.iter_mut().zip(&pieces) {
            if let Some(hasher) = hasher {
                hasher.update(piece);
            }
        }
        Ok(Some(pieces.into_iter().map(|p| pool.freeze(p)).collect()))
    }

    /// The segment's key and each piece's hash (`None` for those left
    /// unhashed), once all stripes are out.
    pub fn finish(self) -> (Key, Vec<Option<[u8; 32]>>) {
        let hashes = self
            .hashers
            .into_iter()
            .map(|h| h.map(MerkleHasher::finalize))
            .collect();
        (self.key, hashes)
    }
}

#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum DecodeError {
    #[error(transparent)]
    Erasure(#[from] ErasureError),
    #[error("segment does not decrypt: {0}")]
    Crypto(#[from] CryptoError),
    #[error("segment metadata is inconsistent")]
    Inconsistent,
}

/// Rebuilds the plaintext of a segment from any `k` of its pieces: the
/// `k` rows in order, trimmed so that together they are `plain_size`
/// bytes. The pieces are consumed (decrypted in place, no copy).
/// `row_sizes` are the rows' lengths of a dataset segment (empty for an
/// evenly split one).
pub fn decode(
    coder: &ErasureCoder,
    key: &Key,
    segment_index: u32,
    plain_size: usize,
    row_sizes: &[i64],
    pieces: &mut [Option<Vec<u8>>],
) -> Result<Vec<Vec<u8>>, DecodeError> {
    let k = coder.scheme().k();
    check_row_sizes(k, plain_size, row_sizes)?;
    coder.reconstruct_data(pieces)?;
    let all: Vec<usize> = (0..k).collect();
    decrypt_rows(key, segment_index, plain_size, row_sizes, k, &all, pieces)
}

/// The rows `wanted` (ascending data piece numbers) of a segment, from
/// those data pieces alone: what a range inside the segment needs.
pub fn decode_rows(
    k: usize,
    key: &Key,
    segment_index: u32,
    plain_size: usize,
    row_sizes: &[i64],
    wanted: &[usize],
    pieces: &mut [Option<Vec<u8>>],
) -> Result<Vec<Vec<u8>>, DecodeError> {
    check_row_sizes(k, plain_size, row_sizes)?;
    if wanted.windows(2).any(|w| w[0] >= w[1]) || wanted.iter().any(|&i| i >= k) {
        return Err(DecodeError::Inconsistent);
    }
    decrypt_rows(key, segment_index, plain_size, row_sizes, k, wanted, pieces)
}

/// Where each of a segment's `k` data rows lies in its plaintext.
pub fn row_spans(
    k: usize,
    plain_size: usize,
    row_sizes: &[i64],
) -> Result<Vec<std::ops::Range<u64>>, DecodeError> {
    check_row_sizes(k, plain_size, row_sizes)?;
    let row = row_len(plain_size, k);
    let mut at = 0u64;
    Ok((0..k)
        .map(|i| {
            let len = match row_sizes.get(i) {
                Some(&r) => r as u64,
                None => (row as u64).min(plain_size as u64 - at),
            };
            at += len;
            at - len..at
        })
        .collect())
}

fn check_row_sizes(k: usize, plain_size: usize, row_sizes: &[i64]) -> Result<(), DecodeError> {
    if !row_sizes.is_empty()
        && (row_sizes.len() != k
            || row_sizes.iter().any(|&r| r < 0)
            || row_sizes
                .iter()
                .try_fold(0i64, |sum, &r| sum.checked_add(r))
                != i64::try_from(plain_size).ok())
    {
        return Err(DecodeError::Inconsistent);
    }
    Ok(())
}

/// Decrypts the data rows `wanted` (ascending) and cuts each to its length.
fn decrypt_rows(
    key: &Key,
    segment_index: u32,
    plain_size: usize,
    row_sizes: &[i64],
    k: usize,
    wanted: &[usize],
    pieces: &mut [Option<Vec<u8>>],
) -> Result<Vec<Vec<u8>>, DecodeError> {
    let spans = row_spans(k, plain_size, row_sizes)?;
    let row = row_len(plain_size, k);
    let mut rows = Vec::with_capacity(wanted.len());
    for &i in wanted {
        let mut piece = pieces
            .get_mut(i)
            .and_then(Option::take)
            .ok_or(DecodeError::Inconsistent)?;
        let n = encryption::decrypt_row(
            &encryption::row_key(key, i as u32),
            segment_index,
            &mut piece,
        )?;
        let keep = (spans[i].end - spans[i].start) as usize;
        // Rows of an even split are padded to the row length; rows of
        // given sizes to the longest.
        let whole = match row_sizes.is_empty() {
            true => n == row,
            false => keep <= n,
        };
        if !whole {
            return Err(DecodeError::Inconsistent);
        }
        piece.truncate(keep);
        rows.push(piece);
    }
    let pool = BufferPool::global();
    for p in pieces.iter_mut().filter_map(Option::take) {
        pool.give(p);
    }
    Ok(rows)
}

/// Plaintext bytes a [`RowStream`] hands out at a time (whole blocks).
pub const RUN: usize = 16 * encryption::BLOCK_SIZE;

/// Plaintext of one data row, ready to be written: the bytes at `offset`
/// in the row. They start at a [`DIRECT_ALIGN`]-aligned address, so a run
/// at an aligned file offset can be written with direct I/O. The buffer
/// returns to the pool when the run drops.
pub struct PlainRun {
    buf: Vec<u8>,
    start: usize,
    pub offset: u64,
}

impl PlainRun {
    pub fn bytes(&self) -> &[u8] {
        &self.buf[self.start..]
    }
}

impl Drop for PlainRun {
    fn drop(&mut self) {
        BufferPool::global().give(std::mem::take(&mut self.buf));
    }
}

/// A data piece decrypted as its bytes arrive, in order: each AEAD block
/// is authenticated and decrypted as soon as it is whole, and the
/// plaintext comes out in runs of [`RUN`] bytes (the row's padding cut
/// off). Memory is one run per row, whatever the piece's size, and no byte
/// is copied more than once.
pub struct RowStream {
    opener: encryption::RowOpener,
    piece_size: u64,
    received: u64,
    /// Plaintext bytes of the row that are data, not padding.
    keep: u64,
    /// The block being received.
    block: u64,
    /// The current run: `plain` bytes of plaintext from `buf[start..]`,
    /// then what has arrived of the block being received.
    buf: Vec<u8>,
    start: usize,
    plain: usize,
    /// Where the current run starts in the row.
    offset: u64,
}

impl RowStream {
    fn new(key: &Key, segment_index: u32, piece_size: u64, keep: u64) -> Self {
        let (buf, start) = Self::fresh();
        Self {
            opener: encryption::RowOpener::new(key, segment_index),
            piece_size,
            received: 0,
            keep,
            block: 0,
            buf,
            start,
            plain: 0,
            offset: 0,
        }
    }

    /// A buffer for one run (and the block after it) from the pool, and
    /// where its aligned part starts.
    fn fresh() -> (Vec<u8>, usize) {
        let mut buf = BufferPool::global().take(DIRECT_ALIGN + RUN + encryption::TAG_LEN);
        let start = buf.as_ptr().align_offset(DIRECT_ALIGN).min(DIRECT_ALIGN);
        buf.resize(start, 0);
        (buf, start)
    }

    /// Takes the next bytes of the piece; returns the runs they complete.
    pub fn push(&mut self, mut chunk: &[u8]) -> Result<Vec<PlainRun>, DecodeError> {
        const SEALED: u64 = (encryption::BLOCK_SIZE + encryption::TAG_LEN) as u64;
        let mut runs = Vec::new();
        while !chunk.is_empty() {
            if self.received >= self.piece_size {
                return Err(DecodeError::Inconsistent);
            }
            let block_start = self.block * SEALED;
            let block_len = SEALED.min(self.piece_size - block_start) as usize;
            let have = (self.received - block_start) as usize;
            let (now, later) = chunk.split_at((block_len - have).min(chunk.len()));
            self.buf.extend_from_slice(now);
            self.received += now.len() as u64;
            chunk = later;
            if have + now.len() < block_len {
                continue;
            }
            let at = self.start + self.plain;
            let n = self.opener.open_block(self.block, &mut self.buf[at..])?;
            self.buf.truncate(at + n);
            self.plain += n;
            self.block += 1;
            if self.plain >= RUN || self.received == self.piece_size {
                runs.extend(self.take_run());
            }
        }
        Ok(runs)
    }

    /// The current run, cut to the row's data (`None` when all of it is
    /// padding), and a fresh buffer for the next.
    fn take_run(&mut self) -> Option<PlainRun> {
        let (buf, start) = Self::fresh();
        let mut buf = std::mem::replace(&mut self.buf, buf);
        let run_start = std::mem::replace(&mut self.start, start);
        let offset = self.offset;
        self.offset += self.plain as u64;
        let keep = (self.plain as u64).min(self.keep.saturating_sub(offset)) as usize;
        self.plain = 0;
        buf.truncate(run_start + keep);
        let run = PlainRun {
            buf,
            start: run_start,
            offset,
        };
        (keep > 0).then_some(run)
    }

    /// Whether the whole piece has arrived (and so every run was handed
    /// out).
    pub fn is_complete(&self) -> bool {
        self.received == self.piece_size
    }
}

impl Drop for RowStream {
    fn drop(&mut self) {
        BufferPool::global().give(std::mem::take(&mut self.buf));
    }
}

/// One [`RowStream`] per data piece of a segment, with where its row lies
/// in the segment's plaintext: what a download that writes each row where
/// it belongs as it arrives needs. The same checks as [`decode`]: row sizes
/// that add up, pieces that hold the rows.
pub fn row_streams(
    k: usize,
    key: &Key,
    segment_index: u32,
    plain_size: usize,
    row_sizes: &[i64],
    piece_size: u64,
) -> Result<Vec<(std::ops::Range<u64>, RowStream)>, DecodeError> {
    let spans = row_spans(k, plain_size, row_sizes)?;
    let row = row_len(plain_size, k);
    let holds = usize::try_from(piece_size)
        .ok()
        .and_then(encryption::plain_len)
        .ok_or(DecodeError::Inconsistent)?;
    let fits = match row_sizes.is_empty() {
        true => holds == row,
        false => spans.iter().all(|s| s.end - s.start <= holds as u64),
    };
    if !fits {
        return Err(DecodeError::Inconsistent);
    }
    Ok(spans
        .into_iter()
        .enumerate()
        .map(|(i, span)| {
            let key = encryption::row_key(key, i as u32);
            let keep = span.end - span.start;
            (span, RowStream::new(&key, segment_index, piece_size, keep))
        })
        .collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn chosen_rows_decode_from_their_data_pieces_alone() {
        let coder = ErasureCoder::new("4/6/8/10".parse().expect("scheme"));
        // An even split (rows of 2 501 bytes, the last 2 497) and given
        // row sizes (one empty).
        let plain: Vec<u8> = (0..10_000u32).map(|i| (i % 253) as u8).collect();
        for rows in [None, Some(vec![3_000usize, 0, 4_500, 2_500])] {
            let enc = encode_rows(&coder, 5, &plain, rows.as_deref()).expect("encode");
            let sizes: Vec<i64> = rows.iter().flatten().map(|&r| r as i64).collect();
            let spans = row_spans(4, plain.len(), &sizes).expect("spans");
            assert_eq!(spans.len(), 4);
            assert_eq!(spans[3].end, plain.len() as u64);
            for wanted in [vec![0], vec![1, 2], vec![3], vec![0, 3]] {
                // Only the wanted data pieces; no parity, no others.
                let mut pieces: Vec<Option<Vec<u8>>> = (0..10)
                    .map(|i| wanted.contains(&i).then(|| enc.pieces[i].to_vec()))
                    .collect();
                let got = decode_rows(4, &enc.key, 5, plain.len(), &sizes, &wanted, &mut pieces)
                    .expect("decode");
                for (row, &i) in got.iter().zip(&wanted) {
                    let span = &spans[i];
                    assert!(
                        row[..] == plain[span.start as usize..span.end as usize],
                        "row {i}"
                    );
                }
            }
            // A row whose piece was not fetched, rows out of order, a row
            // past k, the wrong segment index: refused, not guessed.
            let mut only_0: Vec<Option<Vec<u8>>> = (0..10)
                .map(|i| (i == 0).then(|| enc.pieces[0].to_vec()))
                .collect();
            assert!(decode_rows(4, &enc.key, 5, plain.len(), &sizes, &[1], &mut only_0).is_err());
            assert!(
                decode_rows(4, &enc.key, 5, plain.len(), &sizes, &[2, 1], &mut only_0).is_err()
            );
            assert!(decode_rows(4, &enc.key, 5, plain.len(), &sizes, &[4], &mut only_0).is_err());
            let mut row_0: Vec<Option<Vec<u8>>> = (0..10)
                .map(|i| (i == 0).then(|| enc.pieces[0].to_vec()))
                .collect();
            assert!(decode_rows(4, &enc.key, 6, plain.len(), &sizes, &[0], &mut row_0).is_err());
            // Row sizes that overflow to the right sum are refused.
            let wrapping = [i64::MAX, i64::MAX, 2, plain.len() as i64];
            assert!(row_spans(4, plain.len(), &wrapping).is_err());
        }
    }

    #[test]
    fn segment_round_trips_from_any_k_pieces() {
        let coder = ErasureCoder::new("4/6/8/10".parse().expect("scheme"));
        for size in [1usize, 3, 1000, 200_001] {
            let plain: Vec<u8> = (0..size).map(|i| (i * 7) as u8).collect();
            let enc = encode(&coder, 3, &plain).expect("encode");
            assert_eq!(enc.pieces.len(), 10);
            let mut pieces: Vec<Option<Vec<u8>>> =
                enc.pieces.iter().map(|p| Some(p.to_vec())).collect();
            for i in [0, 2, 5, 6, 8, 9] {
                pieces[i] = None;
            }
            let back = decode(&coder, &enc.key, 3, size, &[], &mut pieces).expect("decode");
            assert_eq!(back.concat(), plain);
        }
    }

    #[test]
    fn uneven_rows_round_trip_and_keep_their_bounds() {
        let coder = ErasureCoder::new("4/6/8/10".parse().expect("scheme"));
        let plain: Vec<u8> = (0..1000u32).map(|i| (i % 251) as u8).collect();
        let rows = [300usize, 0, 450, 250];
        let enc = encode_rows(&coder, 1, &plain, Some(&rows)).expect("encode");
        assert!(encode_rows(&coder, 1, &plain, Some(&[1, 2, 3, 4])).is_err());
        let mut pieces: Vec<Option<Vec<u8>>> =
            enc.pieces.iter().map(|p| Some(p.to_vec())).collect();
        pieces[0] = None;
        pieces[2] = None;
        let sizes: Vec<i64> = rows.iter().map(|&r| r as i64).collect();
        let back = decode(&coder, &enc.key, 1, 1000, &sizes, &mut pieces).expect("decode");
        assert_eq!(back.iter().map(Vec::len).collect::<Vec<_>>(), rows);
        assert_eq!(back.concat(), plain);
    }

    /// Feeds `piece` to `stream` in chunks of the given sizes (cycled);
    /// returns the row's plaintext from the runs, checking each run's place.
    fn stream_row(stream: &mut RowStream, piece: &[u8], sizes: &[usize]) -> Vec<u8> {
        let mut row = Vec::new();
        let mut at = 0;
        for &n in sizes.iter().cycle() {
            if at == piece.len() {
                break;
            }
            let end = (at + n).min(piece.len());
            for run in stream.push(&piece[at..end]).expect("push") {
                assert_eq!(run.offset, row.len() as u64, "runs come in order");
                assert_eq!(run.bytes().as_ptr() as usize % DIRECT_ALIGN, 0);
                row.extend_from_slice(run.bytes());
            }
            at = end;
        }
        assert!(stream.is_complete());
        row
    }

    #[test]
    fn rows_stream_out_of_their_pieces_in_any_chunking() {
        let coder = ErasureCoder::new("4/6/8/10".parse().expect("scheme"));
        let block = encryption::BLOCK_SIZE;
        // Rows of several runs and a short block; rows of given sizes, one
        // empty and one that ends mid-block.
        let size = 4 * (2 * RUN + 3 * block + 100);
        let cases: [(usize, Option<Vec<usize>>); 2] =
            [(size, None), (size, Some(vec![size - RUN - 7, 0, RUN, 7]))];
        for (size, rows) in cases {
            let plain: Vec<u8> = (0..size).map(|i| (i * 11 + 5) as u8).collect();
            let enc = encode_rows(&coder, 2, &plain, rows.as_deref()).expect("encode");
            let sizes: Vec<i64> = rows.iter().flatten().map(|&r| r as i64).collect();
            let mut streams =
                row_streams(4, &enc.key, 2, size, &sizes, enc.piece_size as u64).expect("streams");
            for (i, ((span, stream), chunks)) in streams
                .iter_mut()
                .zip([
                    &[65_000usize][..],
                    &[1, 70_000, 3],
                    &[block + 16],
                    &[7_777_777],
                ])
                .enumerate()
            {
                let row = stream_row(stream, &enc.pieces[i], chunks);
                assert!(
                    row[..] == plain[span.start as usize..span.end as usize],
                    "row {i}"
                );
            }
        }
    }

    #[test]
    fn a_streamed_row_refuses_tampering_and_excess() {
        let coder = ErasureCoder::new("2/3/3/4".parse().expect("scheme"));
        let plain: Vec<u8> = (0..3 * encryption::BLOCK_SIZE).map(|i| i as u8).collect();
        let enc = encode(&coder, 1, &plain).expect("encode");
        let piece_size = enc.piece_size as u64;
        let fresh = || row_streams(2, &enc.key, 1, plain.len(), &[], piece_size).expect("streams");
        // A flipped bit in the second block: the first block's plaintext
        // may have gone out, nothing after it.
        let mut bad = enc.pieces[0].to_vec();
        bad[encryption::BLOCK_SIZE + 200] ^= 1;
        let (_, mut stream) = fresh().swap_remove(0);
        assert!(matches!(stream.push(&bad), Err(DecodeError::Crypto(_))));
        // Row 0's piece streamed as row 1 (another key), or under another
        // segment's index: refused.
        let (_, mut stream) = fresh().swap_remove(1);
        assert!(stream.push(&enc.pieces[0]).is_err());
        let (_, mut stream) = row_streams(2, &enc.key, 9, plain.len(), &[], piece_size)
            .expect("streams")
            .swap_remove(0);
        assert!(stream.push(&enc.pieces[0]).is_err());
        // A byte past the piece's end.
        let (_, mut stream) = fresh().swap_remove(0);
        let mut long = enc.pieces[0].to_vec();
        long.push(0);
        assert!(matches!(stream.push(&long), Err(DecodeError::Inconsistent)));
        // A piece that ends early is not complete.
        let (_, mut stream) = fresh().swap_remove(0);
        stream.push(&enc.pieces[0][..100]).expect("part");
        assert!(!stream.is_complete());
        // Pieces too small for the rows, or row sizes that do not add up.
        assert!(row_streams(2, &enc.key, 1, plain.len(), &[], piece_size - 1).is_err());
        assert!(row_streams(2, &enc.key, 1, plain.len(), &[5, 5], piece_size).is_err());
    }

    #[test]
    fn pieces_do_not_contain_plaintext() {
        let coder = ErasureCoder::new("2/3/3/4".parse().expect("scheme"));
        let plain = b"SECRETMARKER-".repeat(1000);
        let enc = encode(&coder, 0, &plain).expect("encode");
        for p in &enc.pieces {
            assert!(!p.windows(12).any(|w| w == b"SECRETMARKER"));
        }
    }

    #[test]
    fn stripes_concatenate_to_the_whole_segment_encoding() {
        let coder = Arc::new(ErasureCoder::new("4/6/8/10".parse().expect("scheme")));
        let cases: [(usize, Option<&[usize]>); 4] = [
            (1, None),
            (3 * STRIPE + 5, None),
            (4 * STRIPE, None),
            (3 * STRIPE + 700, Some(&[STRIPE + 300, 0, 2 * STRIPE, 400])),
        ];
        for (size, rows) in cases {
            let plain: Vec<u8> = (0..size).map(|i| (i * 13 + 1) as u8).collect();
            let mut enc = StripeEncoder::new(coder.clone(), 7, size, rows).expect("encoder");
            enc.leave_unhashed([9]);
            let mut pieces = vec![Vec::new(); 10];
            let mut reads = 0;
            while let Some(stripe) = enc
                .next_stripe(|at, buf: &mut [u8]| {
                    reads += 1;
                    buf.copy_from_slice(&plain[at..at + buf.len()]);
                    Ok(())
                })
                .expect("stripe")
            {
                for (whole, part) in pieces.iter_mut().zip(stripe) {
                    whole.extend_from_slice(&part);
                }
            }
            assert!(reads > 0);
            let size_each = enc.piece_size();
            let (key, hashes) = enc.finish();
            assert!(pieces.iter().all(|p| p.len() == size_each));
            for (p, h) in pieces.iter().zip(&hashes).take(9) {
                assert_eq!(Some(loam_common::merkle::root(p)), *h);
            }
            assert_eq!(hashes[9], None, "piece 9 was left unhashed");
            // Same layout as the one-shot encoder: decodes like its output.
            let sizes: Vec<i64> = rows
                .iter()
                .flat_map(|r| r.iter().map(|&n| n as i64))
                .collect();
            let mut some: Vec<Option<Vec<u8>>> = pieces.into_iter().map(Some).collect();
            for i in [0, 3, 4, 7, 8, 9] {
                some[i] = None;
            }
            let back = decode(&coder, &key, 7, size, &sizes, &mut some).expect("decode");
            assert_eq!(back.concat(), plain, "segment of {size} bytes");
        }
    }
}
