//! Reed-Solomon erasure coding of segments.
//!
//! The layout is systematic and row-contiguous: the (encrypted) segment is
//! cut into `k` equal rows, and data piece `i` is row `i` verbatim; parity
//! pieces `k..total` are computed column-wise. Encoding and reconstruction
//! work in cache-sized sub-stripes, which is several times faster than
//! coding whole multi-megabyte shards at once.

use std::fmt;
use std::str::FromStr;

use reed_solomon_erasure::galois_8::ReedSolomon;

/// Column width of one sub-stripe.
const SUB_STRIPE: usize = 64 * 1024;

/// `k / repair / success / total`: any `k` pieces rebuild a segment; repair
/// starts when healthy pieces fall to `repair`; an upload succeeds once
/// `success` pieces are stored; `total` pieces are attempted.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub struct RedundancyScheme {
    k: u16,
    repair: u16,
    success: u16,
    total: u16,
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[non_exhaustive]
pub enum SchemeError {
    #[error("redundancy scheme must be k/repair/success/total, got {0:?}")]
    Format(String),
    #[error(
        "redundancy scheme needs 1 <= k <= repair <= success <= total <= 255, got {k}/{repair}/{success}/{total}"
    )]
    Order {
        k: u32,
        repair: u32,
        success: u32,
        total: u32,
    },
    #[error("redundancy scheme needs at least one parity piece (total > k)")]
    NoParity,
}

impl RedundancyScheme {
    pub fn new(k: u32, repair: u32, success: u32, total: u32) -> Result<Self, SchemeError> {
        if !(1 <= k && k <= repair && repair <= success && success <= total && total <= 255) {
            return Err(SchemeError::Order {
                k,
                repair,
                success,
                total,
            });
        }
        if total == k {
            return Err(SchemeError::NoParity);
        }
        Ok(Self {
            k: k as u16,
            repair: repair as u16,
            success: success as u16,
            total: total as u16,
        })
    }

    pub fn k(&self) -> usize {
        self.k as usize
    }
    pub fn repair(&self) -> usize {
        self.repair as usize
    }
    pub fn success(&self) -> usize {
        self.success as usize
    }
    pub fn total(&self) -> usize {
        self.total as usize
    }
    pub fn parity(&self) -> usize {
        self.total() - self.k()
    }
}

impl fmt::Display for RedundancyScheme {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{}/{}/{}/{}",
            self.k, self.repair, self.success, self.total
        )
    }
}

impl FromStr for RedundancyScheme {
    type Err = SchemeError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let parts: Vec<u32> = s
            .split('/')
            .map(|p| p.trim().parse::<u32>())
            .collect::<Result<_, _>>()
            .map_err(|_| SchemeError::Format(s.to_string()))?;
        match parts.as_slice() {
            [k, r, o, n] => Self::new(*k, *r, *o, *n),
            _ => Err(SchemeError::Format(s.to_string())),
        }
    }
}

impl TryFrom<&crate::pb::RedundancyScheme> for RedundancyScheme {
    type Error = SchemeError;

    fn try_from(p: &crate::pb::RedundancyScheme) -> Result<Self, Self::Error> {
        Self::new(p.k, p.repair, p.success, p.total)
    }
}

impl From<RedundancyScheme> for crate::pb::RedundancyScheme {
    fn from(s: RedundancyScheme) -> Self {
        Self {
            k: s.k.into(),
            repair: s.repair.into(),
            success: s.success.into(),
            total: s.total.into(),
        }
    }
}

impl serde::Serialize for RedundancyScheme {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&self.to_string())
    }
}

impl<'de> serde::Deserialize<'de> for RedundancyScheme {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        String::deserialize(d)?
            .parse()
            .map_err(serde::de::Error::custom)
    }
}

#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ErasureError {
    #[error("need at least {need} pieces to rebuild, have {have}")]
    TooFewPieces { need: usize, have: usize },
    #[error("pieces differ in length")]
    UnevenPieces,
    #[error("wrong number of pieces: expected {expected}, got {got}")]
    PieceCount { expected: usize, got: usize },
    #[error("reed-solomon: {0:?}")]
    Codec(reed_solomon_erasure::Error),
}

/// Encoder/decoder for one scheme.
pub struct ErasureCoder {
    scheme: RedundancyScheme,
    rs: ReedSolomon,
}

impl ErasureCoder {
    pub fn new(scheme: RedundancyScheme) -> Self {
        let rs = ReedSolomon::new(scheme.k(), scheme.parity())
            .expect("scheme was validated: 1 <= k < total <= 255");
        Self { scheme, rs }
    }

    pub fn scheme(&self) -> RedundancyScheme {
        self.scheme
    }

    /// Computes the parity pieces of `rows` (the `k` data pieces).
    pub fn encode(&self, rows: &[&[u8]]) -> Result<Vec<Vec<u8>>, ErasureError> {
        let len = rows.first().map_or(0, |r| r.len());
        let mut parity = vec![vec![0u8; len]; self.scheme.parity()];
        self.encode_into(rows, &mut parity)?;
        Ok(parity)
    }

    /// Like [`ErasureCoder::encode`], writing into `parity` (one buffer
    /// per parity piece, each as long as a row).
    pub fn encode_into(&self, rows: &[&[u8]], parity: &mut [Vec<u8>]) -> Result<(), ErasureError> {
        let mut par: Vec<&mut [u8]> = parity.iter_mut().map(Vec::as_mut_slice).collect();
        self.encode_slices(rows, &mut par)
    }

    /// Sub-stripe width; column splits should be multiples of it.
    pub const SUB_STRIPE: usize = SUB_STRIPE;

    /// Parity of a column range: `rows` and `parity` are equally long
    /// slices of the data and parity pieces (so callers can split the
    /// columns of a segment between threads). Every parity byte is
    /// written, whatever the buffers held: they need no zeroing first.
    pub fn encode_slices(
        &self,
        rows: &[&[u8]],
        parity: &mut [&mut [u8]],
    ) -> Result<(), ErasureError> {
        let len = rows.first().map_or(0, |r| r.len());
        if rows.len() != self.scheme.k() || parity.len() != self.scheme.parity() {
            return Err(ErasureError::PieceCount {
                expected: self.scheme.total(),
                got: rows.len() + parity.len(),
            });
        }
        if rows.iter().any(|r| r.len() != len) || parity.iter().any(|p| p.len() != len) {
            return Err(ErasureError::UnevenPieces);
        }
        let mut start = 0;
        while start < len {
            let end = (start + SUB_STRIPE).min(len);
            let data: Vec<&[u8]> = rows.iter().map(|r| &r[start..end]).collect();
            let mut par: Vec<&mut [u8]> = parity.iter_mut().map(|p| &mut p[start..end]).collect();
            self.rs
                .encode_sep(&data, &mut par)
                .map_err(ErasureError::Codec)?;
            start = end;
        }
        Ok(())
    }

    /// Rebuilds the missing data pieces in place from any `k` present pieces
    /// (`pieces[i]` is piece `i`, `None` if missing); parity pieces stay as
    /// they are.
    pub fn reconstruct_data(&self, pieces: &mut [Option<Vec<u8>>]) -> Result<(), ErasureError> {
        let total = self.scheme.total();
        if pieces.len() != total {
            return Err(ErasureError::PieceCount {
                expected: total,
                got: pieces.len(),
            });
        }
        let present: Vec<bool> = pieces.iter().map(Option::is_some).collect();
        let have = present.iter().filter(|p| **p).count();
        if have < self.scheme.k() {
            return Err(ErasureError::TooFewPieces {
                need: self.scheme.k(),
                have,
            });
        }
        if present[..self.scheme.k()].iter().all(|p| *p) {
            return Ok(());
        }
        let len = pieces.iter().flatten().map(Vec::len).next().unwrap_or(0);
        if pieces.iter().flatten().any(|p| p.len() != len) {
            return Err(ErasureError::UnevenPieces);
        }
        // Missing data rows get buffers; missing parity rows get scratch.
        let mut bufs: Vec<Vec<u8>> = pieces
            .iter_mut()
            .map(|p| p.take().unwrap_or_else(|| vec![0u8; len]))
            .collect();
        let mut start = 0;
        while start < len {
            let end = (start + SUB_STRIPE).min(len);
            let mut slices: Vec<(&mut [u8], bool)> = bufs
                .iter_mut()
                .zip(&present)
                .map(|(b, p)| (&mut b[start..end], *p))
                .collect();
            self.rs
                .reconstruct_data(&mut slices)
                .map_err(ErasureError::Codec)?;
            start = end;
        }
        for (i, (slot, buf)) in pieces.iter_mut().zip(bufs).enumerate() {
            if present[i] || i < self.scheme.k() {
                *slot = Some(buf);
            }
        }
        Ok(())
    }

    /// Rebuilds every missing piece (data and parity) from any `k`.
    pub fn reconstruct_all(&self, pieces: &mut [Option<Vec<u8>>]) -> Result<(), ErasureError> {
        self.reconstruct_data(pieces)?;
        let k = self.scheme.k();
        if pieces[k..].iter().all(Option::is_some) {
            return Ok(());
        }
        let rows: Vec<&[u8]> = pieces[..k].iter().flatten().map(Vec::as_slice).collect();
        let parity = self.encode(&rows)?;
        for (slot, p) in pieces[k..].iter_mut().zip(parity) {
            if slot.is_none() {
                *slot = Some(p);
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use rand::{Rng, SeedableRng};

    use super::*;

    #[test]
    fn parity_buffers_need_no_zeroing() {
        let coder = ErasureCoder::new("4/6/8/10".parse().expect("scheme"));
        let mut rng = rand::rngs::StdRng::seed_from_u64(11);
        // Longer than one sub-stripe, and not a multiple of it.
        let len = SUB_STRIPE * 2 + 77;
        let rows: Vec<Vec<u8>> = (0..4)
            .map(|_| (0..len).map(|_| rng.r#gen()).collect())
            .collect();
        let rows: Vec<&[u8]> = rows.iter().map(Vec::as_slice).collect();
        let mut zeroed = vec![vec![0u8; len]; 6];
        coder.encode_into(&rows, &mut zeroed).expect("encode");
        let mut dirty: Vec<Vec<u8>> = (0..6).map(|i| vec![0xA5 ^ i as u8; len]).collect();
        coder.encode_into(&rows, &mut dirty).expect("encode");
        assert_eq!(dirty, zeroed);
    }

    #[test]
    fn scheme_validation() {
        assert!("4/6/8/10".parse::<RedundancyScheme>().is_ok());
        assert!("29/35/80/110".parse::<RedundancyScheme>().is_ok());
        assert!(matches!(
            "4/6/8".parse::<RedundancyScheme>(),
            Err(SchemeError::Format(_))
        ));
        assert!(matches!(
            "6/4/8/10".parse::<RedundancyScheme>(),
            Err(SchemeError::Order { .. })
        ));
        assert!(matches!(
            "4/4/4/4".parse::<RedundancyScheme>(),
            Err(SchemeError::NoParity)
        ));
        assert!("0/1/1/2".parse::<RedundancyScheme>().is_err());
        assert!("2/3/4/300".parse::<RedundancyScheme>().is_err());
    }

    #[test]
    fn any_k_pieces_rebuild_the_data() {
        let mut rng = rand::rngs::StdRng::seed_from_u64(7);
        let scheme: RedundancyScheme = "4/6/8/10".parse().expect("scheme");
        let coder = ErasureCoder::new(scheme);
        let len = 200_000; // several sub-stripes plus a ragged end
        let rows: Vec<Vec<u8>> = (0..4)
            .map(|_| (0..len).map(|_| rng.r#gen()).collect())
            .collect();
        let refs: Vec<&[u8]> = rows.iter().map(Vec::as_slice).collect();
        let parity = coder.encode(&refs).expect("encode");
        let all: Vec<Vec<u8>> = rows.iter().cloned().chain(parity).collect();
        for trial in 0..20 {
            let mut pieces: Vec<Option<Vec<u8>>> = all.iter().cloned().map(Some).collect();
            // drop 6 random pieces
            let mut idx: Vec<usize> = (0..10).collect();
            for i in 0..6 {
                let j = rng.gen_range(i..10);
                idx.swap(i, j);
            }
            for &i in &idx[..6] {
                pieces[i] = None;
            }
            coder.reconstruct_all(&mut pieces).expect("rebuild");
            for (i, p) in pieces.iter().enumerate() {
                assert_eq!(
                    p.as_ref().expect("rebuilt"),
                    &all[i],
                    "trial {trial} piece {i}"
                );
            }
        }
    }

    #[test]
    fn too_few_pieces_is_an_error() {
        let coder = ErasureCoder::new("2/3/3/4".parse().expect("scheme"));
        let mut pieces = vec![Some(vec![1u8; 8]), None, None, None];
        assert!(matches!(
            coder.reconstruct_data(&mut pieces),
            Err(ErasureError::TooFewPieces { need: 2, have: 1 })
        ));
    }
}
