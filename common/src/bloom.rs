//! A Bloom filter of piece ids, for garbage collection: the satellite sends
//! each node the set of pieces it should keep; a node trashes what is not
//! in it. No false negatives (a live piece is always kept); a false
//! positive only delays collecting one garbage piece to a later cycle,
//! since each cycle uses a fresh seed.

use crate::orders::PieceId;

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BloomFilter {
    bits: Vec<u8>,
    hashes: u32,
    seed: [u8; 16],
}

impl BloomFilter {
    /// A filter sized for `items` entries at false-positive rate `fpr`.
    pub fn new(items: usize, fpr: f64) -> Self {
        let fpr = fpr.clamp(1e-6, 0.5);
        let n = items.max(1) as f64;
        let ln2 = std::f64::consts::LN_2;
        let m = (-(n * fpr.ln()) / (ln2 * ln2)).ceil().max(64.0) as usize;
        let hashes = ((m as f64 / n) * ln2).round().clamp(1.0, 32.0) as u32;
        Self {
            bits: vec![0; m.div_ceil(8)],
            hashes,
            seed: rand::random(),
        }
    }

    /// Rebuilds a filter sent over the wire; `None` if malformed.
    pub fn from_parts(bits: Vec<u8>, hashes: u32, seed: &[u8]) -> Option<Self> {
        let seed: [u8; 16] = seed.try_into().ok()?;
        (!bits.is_empty() && (1..=32).contains(&hashes)).then_some(Self { bits, hashes, seed })
    }

    pub fn bits(&self) -> &[u8] {
        &self.bits
    }

    pub fn hashes(&self) -> u32 {
        self.hashes
    }

    pub fn seed(&self) -> &[u8; 16] {
        &self.seed
    }

    fn positions(&self, id: &PieceId) -> impl Iterator<Item = usize> + use<> {
        let mut h = blake3::Hasher::new();
        h.update(&self.seed);
        h.update(id.as_bytes());
        let d = h.finalize();
        let b = d.as_bytes();
        let h1 = u64::from_le_bytes(b[..8].try_into().expect("8 bytes"));
        let h2 = u64::from_le_bytes(b[8..16].try_into().expect("8 bytes")) | 1;
        let m = (self.bits.len() * 8) as u64;
        (0..u64::from(self.hashes)).map(move |i| (h1.wrapping_add(i.wrapping_mul(h2)) % m) as usize)
    }

    pub fn insert(&mut self, id: &PieceId) {
        for p in self.positions(id) {
            self.bits[p / 8] |= 1 << (p % 8);
        }
    }

    pub fn contains(&self, id: &PieceId) -> bool {
        self.positions(id)
            .all(|p| self.bits[p / 8] & (1 << (p % 8)) != 0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn members_are_always_found_and_others_mostly_not() {
        let members: Vec<PieceId> = (0..20_000).map(|_| PieceId::random()).collect();
        let mut f = BloomFilter::new(members.len(), 0.1);
        for m in &members {
            f.insert(m);
        }
        assert!(members.iter().all(|m| f.contains(m)), "no false negatives");
        let fp = (0..20_000)
            .filter(|_| f.contains(&PieceId::random()))
            .count() as f64
            / 20_000.0;
        assert!(fp < 0.13, "false-positive rate {fp}");
        let back = BloomFilter::from_parts(f.bits().to_vec(), f.hashes(), f.seed()).expect("parts");
        assert!(members.iter().all(|m| back.contains(m)));
        assert!(BloomFilter::from_parts(vec![], 3, &[0; 16]).is_none());
        assert!(BloomFilter::from_parts(vec![1], 0, &[0; 16]).is_none());
    }
}
