//! The piece hash: a BLAKE3 Merkle tree over [`LEAF_SIZE`] leaves.
//!
//! The root is what the uplink and the node sign at upload and what the
//! satellite keeps per piece (32 bytes), so an audit can ask a node for one
//! leaf and the sibling hashes up to the root, and check the answer
//! without storing anything else. Leaves, inner nodes and the root are
//! domain-separated; the root also commits to the piece length.

/// Bytes per leaf.
pub const LEAF_SIZE: usize = 64 * 1024;

pub type Hash = [u8; 32];

fn leaf_hash(data: &[u8]) -> Hash {
    let mut h = blake3::Hasher::new();
    h.update(&[0]);
    h.update(data);
    *h.finalize().as_bytes()
}

fn node_hash(left: &Hash, right: &Hash) -> Hash {
    let mut h = blake3::Hasher::new();
    h.update(&[1]);
    h.update(left);
    h.update(right);
    *h.finalize().as_bytes()
}

fn root_hash(top: &Hash, len: u64) -> Hash {
    let mut h = blake3::Hasher::new();
    h.update(&[2]);
    h.update(&len.to_le_bytes());
    h.update(top);
    *h.finalize().as_bytes()
}

/// One level up: pairs hashed, an odd last node carried up as is.
fn level_up(level: &[Hash]) -> Vec<Hash> {
    level
        .chunks(2)
        .map(|p| {
            if p.len() == 2 {
                node_hash(&p[0], &p[1])
            } else {
                p[0]
            }
        })
        .collect()
}

fn top_of(leaves: &[Hash]) -> Hash {
    match leaves {
        [] => leaf_hash(&[]),
        [top] => *top,
        _ => {
            let mut level = level_up(leaves);
            while level.len() > 1 {
                level = level_up(&level);
            }
            level[0]
        }
    }
}

/// The leaf hashes of `data`.
pub fn leaves(data: &[u8]) -> Vec<Hash> {
    data.chunks(LEAF_SIZE).map(leaf_hash).collect()
}

/// The Merkle root of a whole piece.
pub fn root(data: &[u8]) -> Hash {
    root_hash(&top_of(&leaves(data)), data.len() as u64)
}

/// Number of leaves of a piece of `len` bytes.
pub fn leaf_count(len: u64) -> u64 {
    len.div_ceil(LEAF_SIZE as u64).max(1)
}

/// The sibling hashes from leaf `index` up to the top.
pub fn proof(leaves: &[Hash], index: usize) -> Vec<Hash> {
    let mut out = Vec::new();
    let mut level = leaves.to_vec();
    let mut i = index;
    while level.len() > 1 {
        let sibling = i ^ 1;
        if sibling < level.len() {
            out.push(level[sibling]);
        }
        level = level_up(&level);
        i /= 2;
    }
    out
}

/// Checks that `leaf` is leaf `index` of a piece of `len` bytes with root
/// `root`, given the sibling hashes of [`proof`].
pub fn verify(root: &Hash, len: u64, index: u64, leaf: &[u8], proof: &[Hash]) -> bool {
    let count = leaf_count(len);
    if index >= count {
        return false;
    }
    let expected_len = if index + 1 == count {
        len - index * LEAF_SIZE as u64
    } else {
        LEAF_SIZE as u64
    };
    if leaf.len() as u64 != expected_len {
        return false;
    }
    let mut hash = leaf_hash(leaf);
    let (mut i, mut width, mut used) = (index, count, 0);
    while width > 1 {
        let sibling = i ^ 1;
        if sibling < width {
            let Some(s) = proof.get(used) else {
                return false;
            };
            used += 1;
            hash = if i % 2 == 0 {
                node_hash(&hash, s)
            } else {
                node_hash(s, &hash)
            };
        }
        i /= 2;
        width = width.div_ceil(2);
    }
    used == proof.len() && root_hash(&hash, len) == *root
}

/// Computes the root of data given in pieces of any size.
#[derive(Default)]
pub struct MerkleHasher {
    leaves: Vec<Hash>,
    partial: Vec<u8>,
    len: u64,
}

impl MerkleHasher {
    pub fn new() -> Self {
        Self::default()
    }

    pub fn update(&mut self, mut data: &[u8]) {
        self.len += data.len() as u64;
        if !self.partial.is_empty() {
            let take = (LEAF_SIZE - self.partial.len()).min(data.len());
            self.partial.extend_from_slice(&data[..take]);
            data = &data[take..];
            if self.partial.len() == LEAF_SIZE {
                self.leaves.push(leaf_hash(&self.partial));
                self.partial.clear();
            }
        }
        let whole = data.len() / LEAF_SIZE * LEAF_SIZE;
        self.leaves
            .extend(data[..whole].chunks(LEAF_SIZE).map(leaf_hash));
        self.partial.extend_from_slice(&data[whole..]);
    }

    pub fn finalize(self) -> Hash {
        self.finish().0
    }

    /// The root and the leaf hashes it was computed from. A node keeps the
    /// leaves, so an audit of one leaf reads that leaf and nothing else.
    pub fn finish(mut self) -> (Hash, Vec<Hash>) {
        if !self.partial.is_empty() {
            self.leaves.push(leaf_hash(&self.partial));
        }
        let root = root_hash(&top_of(&self.leaves), self.len);
        (root, self.leaves)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn proofs_verify_for_every_leaf_and_only_for_the_right_data() {
        for len in [
            1usize,
            LEAF_SIZE,
            LEAF_SIZE + 1,
            5 * LEAF_SIZE + 77,
            8 * LEAF_SIZE,
        ] {
            let data: Vec<u8> = (0..len).map(|i| (i * 31 % 251) as u8).collect();
            let r = root(&data);
            let mut streamed = MerkleHasher::new();
            for part in data.chunks(1000) {
                streamed.update(part);
            }
            let (streamed_root, streamed_leaves) = streamed.finish();
            assert_eq!(streamed_root, r, "streaming root, len {len}");
            assert_eq!(
                streamed_leaves,
                leaves(&data),
                "streaming leaves, len {len}"
            );
            let l = leaves(&data);
            for (i, chunk) in data.chunks(LEAF_SIZE).enumerate() {
                let p = proof(&l, i);
                assert!(verify(&r, len as u64, i as u64, chunk, &p));
                let mut bad = chunk.to_vec();
                bad[0] ^= 1;
                assert!(!verify(&r, len as u64, i as u64, &bad, &p));
                if !p.is_empty() {
                    assert!(!verify(&r, len as u64, i as u64, chunk, &p[1..]));
                }
            }
            assert!(!verify(&r, len as u64, leaf_count(len as u64), &[], &[]));
        }
        assert_ne!(root(b"ab"), root(b"ab\0"));
    }
}
