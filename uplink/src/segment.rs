//! Pure (sans-IO) transformation between a plaintext segment and its
//! pieces: encrypt each of the `k` rows under its own key, then compute the
//! parity pieces; and back.

use bytes::Bytes;
use loam_common::buffers::BufferPool;
use loam_common::encryption::{self, CryptoError, Key};
use loam_common::erasure::{ErasureCoder, ErasureError};

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

/// Encrypts and erasure-codes one segment.
pub fn encode(
    coder: &ErasureCoder,
    segment_index: u32,
    plain: &[u8],
) -> Result<EncodedSegment, ErasureError> {
    let pool = BufferPool::global();
    let k = coder.scheme().k();
    let key = Key::random();
    let row = row_len(plain.len(), k);
    let enc_row = encryption::encrypted_len(row);
    let mut padded = Vec::new();
    let mut rows: Vec<Vec<u8>> = Vec::with_capacity(k);
    for i in 0..k {
        let start = (i * row).min(plain.len());
        let end = ((i + 1) * row).min(plain.len());
        let src = if end - start == row {
            &plain[start..end]
        } else {
            padded.clear();
            padded.extend_from_slice(&plain[start..end]);
            padded.resize(row, 0);
            &padded[..]
        };
        let mut out = pool.take(enc_row);
        encryption::encrypt_row(
            &encryption::row_key(&key, i as u32),
            segment_index,
            src,
            &mut out,
        );
        rows.push(out);
    }
    let refs: Vec<&[u8]> = rows.iter().map(Vec::as_slice).collect();
    let mut parity: Vec<Vec<u8>> = (0..coder.scheme().parity())
        .map(|_| pool.zeroed(enc_row))
        .collect();
    coder.encode_into(&refs, &mut parity)?;
    let pieces: Vec<Bytes> = rows
        .into_iter()
        .chain(parity)
        .map(|b| pool.freeze(b))
        .collect();
    let hashes = pieces.iter().map(|p| *blake3::hash(p).as_bytes()).collect();
    Ok(EncodedSegment {
        key,
        piece_size: pieces[0].len(),
        pieces,
        hashes,
        plain_size: plain.len(),
    })
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
pub fn decode(
    coder: &ErasureCoder,
    key: &Key,
    segment_index: u32,
    plain_size: usize,
    pieces: &mut [Option<Vec<u8>>],
) -> Result<Vec<Vec<u8>>, DecodeError> {
    let k = coder.scheme().k();
    coder.reconstruct_data(pieces)?;
    let row = row_len(plain_size, k);
    let mut rows = Vec::with_capacity(k);
    let mut left = plain_size;
    for (i, piece) in pieces.iter_mut().take(k).enumerate() {
        let mut piece = piece.take().ok_or(DecodeError::Inconsistent)?;
        let n = encryption::decrypt_row(
            &encryption::row_key(key, i as u32),
            segment_index,
            &mut piece,
        )?;
        if n != row {
            return Err(DecodeError::Inconsistent);
        }
        piece.truncate(n.min(left));
        left -= piece.len();
        rows.push(piece);
    }
    let pool = BufferPool::global();
    for p in pieces.iter_mut().filter_map(Option::take) {
        pool.give(p);
    }
    Ok(rows)
}

#[cfg(test)]
mod tests {
    use super::*;

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
            let back = decode(&coder, &enc.key, 3, size, &mut pieces).expect("decode");
            assert_eq!(back.concat(), plain);
        }
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
}
