//! Sealing small secrets to a node's public key: X25519 between a fresh
//! ephemeral key and the node's Ed25519 key taken to the Montgomery curve,
//! BLAKE3 key derivation over the shared secret and both public keys, then
//! AES-256-GCM. Only the holder of the node's private key can open it.
//!
//! The uplink uses it to hand a computing node the key of the one piece it
//! trains on; the satellite relays the sealed bytes without being able to
//! read them.
//!
//! Layout: `ephemeral public key (32) || nonce (12) || ciphertext || tag`.

use curve25519_dalek::montgomery::MontgomeryPoint;

use crate::encryption::{self, CryptoError, Key};
use crate::identity::{KeyPair, PublicKey};

const CONTEXT: &str = "loam 2026 sealed box v1";

fn box_key(shared: &MontgomeryPoint, ephemeral: &[u8; 32], recipient: &[u8; 32]) -> Key {
    let mut h = blake3::Hasher::new_derive_key(CONTEXT);
    h.update(shared.as_bytes());
    h.update(ephemeral);
    h.update(recipient);
    Key::from_bytes(*h.finalize().as_bytes())
}

/// Seals `plain` so that only the owner of `recipient` can open it.
pub fn seal(recipient: &PublicKey, plain: &[u8]) -> Vec<u8> {
    let secret: [u8; 32] = rand::random();
    let ephemeral = MontgomeryPoint::mul_base_clamped(secret).to_bytes();
    let theirs = recipient.to_x25519();
    let shared = MontgomeryPoint(theirs).mul_clamped(secret);
    let key = box_key(&shared, &ephemeral, &theirs);
    let mut out = ephemeral.to_vec();
    out.extend_from_slice(&encryption::seal(&key, plain));
    out
}

/// Opens what [`seal`] sealed to `me`.
pub fn open(me: &KeyPair, sealed: &[u8]) -> Result<Vec<u8>, CryptoError> {
    let (ephemeral, rest) = sealed
        .split_first_chunk::<32>()
        .ok_or(CryptoError::Truncated)?;
    let shared = MontgomeryPoint(*ephemeral).mul_clamped(me.x25519_secret());
    let key = box_key(&shared, ephemeral, &me.public().to_x25519());
    encryption::open(&key, rest)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_the_recipient_opens() {
        let node = KeyPair::generate();
        let other = KeyPair::generate();
        let sealed = seal(&node.public(), b"row key");
        assert_eq!(open(&node, &sealed).expect("open"), b"row key");
        assert!(open(&other, &sealed).is_err());
        let mut bad = sealed.clone();
        bad[40] ^= 1;
        assert!(open(&node, &bad).is_err());
        assert!(open(&node, &sealed[..20]).is_err());
        assert_ne!(
            seal(&node.public(), b"row key"),
            sealed,
            "fresh ephemeral key"
        );
    }
}
