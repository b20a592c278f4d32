//! Client-side encryption: key derivation, block encryption of segment rows,
//! key wrapping and path encryption. The satellite and storage nodes only
//! ever see the output of this module.
//!
//! Key hierarchy:
//! - passphrase → root key (Argon2id, salted per project);
//! - root key + bucket → the bucket's path key; path key + component →
//!   the next component's path key, down the path (HMAC-SHA256); each
//!   component is encrypted under its level's key, and an object's key is
//!   derived from its parent level's key and its last component, so whoever
//!   holds the key of `team/` can encrypt, decrypt and open everything
//!   under it and nothing else (see [`crate::scope`]);
//! - objects stored before path keys: root key + bucket + path → object key
//!   ([`legacy_object_key`]), which only the root key opens;
//! - a random segment key per segment, wrapped (AES-256-GCM) by the object key;
//! - segment key + row index → row key: data piece `i` is encrypted under its
//!   own key, so a node can later be handed the key to its piece alone.
//!
//! Rows are sealed in blocks of [`BLOCK_SIZE`] bytes, each with AES-256-GCM
//! and a nonce made of the segment index and the block index, so blocks
//! cannot be reordered, dropped or moved between segments unnoticed.

use base64::Engine;
use ring::aead::{self, Aad, LessSafeKey, Nonce, UnboundKey};
use ring::hmac;

/// Plaintext bytes per AEAD block.
pub const BLOCK_SIZE: usize = 64 * 1024;
/// Authentication tag per block.
pub const TAG_LEN: usize = 16;
const NONCE_LEN: usize = 12;

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[non_exhaustive]
pub enum CryptoError {
    #[error("decryption failed: data corrupted or wrong key")]
    Decrypt,
    #[error("ciphertext too short")]
    Truncated,
    #[error("encrypted path is malformed")]
    MalformedPath,
    #[error("key derivation failed")]
    Kdf,
}

/// A 256-bit symmetric key.
#[derive(Clone, PartialEq, Eq)]
pub struct Key([u8; 32]);

impl Key {
    pub fn from_bytes(bytes: [u8; 32]) -> Self {
        Self(bytes)
    }

    pub fn random() -> Self {
        Self(rand::random())
    }

    pub fn as_bytes(&self) -> &[u8; 32] {
        &self.0
    }

    fn aead(&self) -> LessSafeKey {
        LessSafeKey::new(
            UnboundKey::new(&aead::AES_256_GCM, &self.0).expect("32-byte key fits AES-256-GCM"),
        )
    }
}

impl std::fmt::Debug for Key {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Key(..)")
    }
}

impl TryFrom<&[u8]> for Key {
    type Error = CryptoError;

    fn try_from(bytes: &[u8]) -> Result<Self, Self::Error> {
        bytes
            .try_into()
            .map(Self)
            .map_err(|_| CryptoError::Truncated)
    }
}

/// Derives the root key from a passphrase with Argon2id.
pub fn root_key(passphrase: &str, salt: &[u8]) -> Result<Key, CryptoError> {
    let mut out = [0u8; 32];
    argon2::Argon2::default()
        .hash_password_into(passphrase.as_bytes(), salt, &mut out)
        .map_err(|_| CryptoError::Kdf)?;
    Ok(Key(out))
}

/// HMAC-SHA256 key derivation with a domain-separating label.
pub fn derive(key: &Key, label: &str, data: &[u8]) -> Key {
    let mac = hmac::Key::new(hmac::HMAC_SHA256, &key.0);
    let mut ctx = hmac::Context::with_key(&mac);
    ctx.update(label.as_bytes());
    ctx.update(&[0]);
    ctx.update(data);
    let tag = ctx.sign();
    let mut out = [0u8; 32];
    out.copy_from_slice(tag.as_ref());
    Key(out)
}

/// Key of one object's content and metadata, as objects stored before
/// path-scoped keys have it: derived from the root key alone.
pub fn legacy_object_key(root: &Key, bucket: &str, path: &str) -> Key {
    let mut data = Vec::with_capacity(bucket.len() + 1 + path.len());
    data.extend_from_slice(bucket.as_bytes());
    data.push(0);
    data.extend_from_slice(path.as_bytes());
    derive(root, "loam-object", &data)
}

/// Key of data row (piece) `row` of a segment.
pub fn row_key(segment_key: &Key, row: u32) -> Key {
    derive(segment_key, "loam-row", &row.to_be_bytes())
}

/// Size of a row of `plain_len` bytes once encrypted.
pub fn encrypted_len(plain_len: usize) -> usize {
    plain_len + plain_len.div_ceil(BLOCK_SIZE) * TAG_LEN
}

/// Size of the plaintext inside an encrypted row of `enc_len` bytes.
pub fn plain_len(enc_len: usize) -> Option<usize> {
    let blocks = enc_len.div_ceil(BLOCK_SIZE + TAG_LEN);
    enc_len.checked_sub(blocks * TAG_LEN)
}

fn block_nonce(segment_index: u32, block: u64) -> Nonce {
    let mut n = [0u8; NONCE_LEN];
    n[..4].copy_from_slice(&segment_index.to_be_bytes());
    n[4..].copy_from_slice(&block.to_be_bytes());
    Nonce::assume_unique_for_key(n)
}

/// Encrypts one row into `out` (cleared first), block by block.
pub fn encrypt_row(key: &Key, segment_index: u32, plain: &[u8], out: &mut Vec<u8>) {
    encrypt_blocks(key, segment_index, 0, plain, out);
}

/// Encrypts part of a row into `out` (cleared first): `plain` starts at
/// block `first_block` of the row, and is whole blocks except perhaps at
/// the row's end. Parts encrypted in order concatenate to
/// [`encrypt_row`]'s output.
pub fn encrypt_blocks(
    key: &Key,
    segment_index: u32,
    first_block: u64,
    plain: &[u8],
    out: &mut Vec<u8>,
) {
    let aead = key.aead();
    out.clear();
    out.reserve(encrypted_len(plain.len()));
    for (block, chunk) in plain.chunks(BLOCK_SIZE).enumerate() {
        let start = out.len();
        out.extend_from_slice(chunk);
        let tag = aead
            .seal_in_place_separate_tag(
                block_nonce(segment_index, first_block + block as u64),
                Aad::empty(),
                &mut out[start..],
            )
            .expect("block is far below the AES-GCM message limit");
        out.extend_from_slice(tag.as_ref());
    }
}

/// Decrypts one row produced by [`encrypt_row`], in place; returns the
/// plaintext length (the plaintext is compacted to the front of `row`).
pub fn decrypt_row(key: &Key, segment_index: u32, row: &mut [u8]) -> Result<usize, CryptoError> {
    let opener = RowOpener::new(key, segment_index);
    let mut read = 0;
    let mut write = 0;
    let mut block = 0u64;
    while read < row.len() {
        let end = (read + BLOCK_SIZE + TAG_LEN).min(row.len());
        let n = opener.open_block(block, &mut row[read..end])?;
        row.copy_within(read..read + n, write);
        write += n;
        read = end;
        block += 1;
    }
    Ok(write)
}

/// A row's key made ready to open the row's blocks one at a time, in any
/// order: what a download needs to decrypt a piece as its bytes arrive.
pub struct RowOpener {
    aead: LessSafeKey,
    segment_index: u32,
}

impl RowOpener {
    pub fn new(key: &Key, segment_index: u32) -> Self {
        Self {
            aead: key.aead(),
            segment_index,
        }
    }

    /// Decrypts and authenticates block number `block` of the row in
    /// place: `sealed` is the block's ciphertext and tag, at most
    /// [`BLOCK_SIZE`] + [`TAG_LEN`] bytes. Returns the plaintext length;
    /// the plaintext is at the front of `sealed`.
    pub fn open_block(&self, block: u64, sealed: &mut [u8]) -> Result<usize, CryptoError> {
        if sealed.len() < TAG_LEN {
            return Err(CryptoError::Truncated);
        }
        if sealed.len() > BLOCK_SIZE + TAG_LEN {
            return Err(CryptoError::Decrypt);
        }
        self.aead
            .open_in_place(block_nonce(self.segment_index, block), Aad::empty(), sealed)
            .map(|plain| plain.len())
            .map_err(|_| CryptoError::Decrypt)
    }
}

/// Seals a small value (metadata, inline data, wrapped keys) with a random
/// nonce: `nonce || ciphertext || tag`.
pub fn seal(key: &Key, plain: &[u8]) -> Vec<u8> {
    let nonce: [u8; NONCE_LEN] = rand::random();
    seal_with_nonce(key, nonce, plain)
}

fn seal_with_nonce(key: &Key, nonce: [u8; NONCE_LEN], plain: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(NONCE_LEN + plain.len() + TAG_LEN);
    out.extend_from_slice(&nonce);
    out.extend_from_slice(plain);
    let tag = key
        .aead()
        .seal_in_place_separate_tag(
            Nonce::assume_unique_for_key(nonce),
            Aad::empty(),
            &mut out[NONCE_LEN..],
        )
        .expect("small value");
    out.extend_from_slice(tag.as_ref());
    out
}

/// Opens a value sealed by [`seal`].
pub fn open(key: &Key, sealed: &[u8]) -> Result<Vec<u8>, CryptoError> {
    if sealed.len() < NONCE_LEN + TAG_LEN {
        return Err(CryptoError::Truncated);
    }
    let nonce: [u8; NONCE_LEN] = sealed[..NONCE_LEN].try_into().expect("length checked");
    let mut buf = sealed[NONCE_LEN..].to_vec();
    let n = key
        .aead()
        .open_in_place(Nonce::assume_unique_for_key(nonce), Aad::empty(), &mut buf)
        .map_err(|_| CryptoError::Decrypt)?
        .len();
    buf.truncate(n);
    Ok(buf)
}

/// Value sealed into a bucket's metadata at creation, so a wrong passphrase
/// is reported as such rather than as "object not found".
pub fn bucket_key_check(root: &Key, bucket: &str) -> Vec<u8> {
    seal(
        &derive(root, "loam-bucket-check", bucket.as_bytes()),
        KEY_CHECK_PLAINTEXT,
    )
}

/// Whether `check` (from [`bucket_key_check`]) was made with this root key.
pub fn verify_bucket_key_check(root: &Key, bucket: &str, check: &[u8]) -> bool {
    open(&derive(root, "loam-bucket-check", bucket.as_bytes()), check)
        .is_ok_and(|p| p == KEY_CHECK_PLAINTEXT)
}

const KEY_CHECK_PLAINTEXT: &[u8] = b"loam key check v1";

/// The path key of a bucket's top level.
pub fn bucket_path_key(root: &Key, bucket: &str) -> Key {
    derive(root, "loam-path", bucket.as_bytes())
}

/// The path key one level down, below `component`.
pub fn next_path_key(level: &Key, component: &str) -> Key {
    derive(level, "loam-path-next", component.as_bytes())
}

/// Key of one object's content and metadata: from the path key of the
/// object's parent level and its last component. A prefix key below the
/// object (`key/`) cannot compute it.
pub fn object_key_under(parent_level: &Key, last_component: &str) -> Key {
    derive(parent_level, "loam-object-v2", last_component.as_bytes())
}

/// Encrypts an object path component by component, so the satellite can
/// list by (encrypted) prefix without reading names. Deterministic: the
/// nonce of each component is an HMAC of the component under that level's
/// key (SIV construction), so equal paths encrypt equally.
pub fn encrypt_path(root: &Key, bucket: &str, path: &str) -> Vec<u8> {
    encrypt_components(bucket_path_key(root, bucket), path)
}

/// Encrypts `path` (relative to the level whose key is `level`) component
/// by component.
pub fn encrypt_components(mut level: Key, path: &str) -> Vec<u8> {
    let mut out = Vec::with_capacity(path.len() * 2 + 32);
    for (i, component) in path.split('/').enumerate() {
        if i > 0 {
            out.push(b'/');
        }
        let mac = hmac::sign(
            &hmac::Key::new(hmac::HMAC_SHA256, level.as_bytes()),
            component.as_bytes(),
        );
        let nonce: [u8; NONCE_LEN] = mac.as_ref()[..NONCE_LEN]
            .try_into()
            .expect("HMAC-SHA256 is 32 bytes");
        let sealed = seal_with_nonce(&level, nonce, component.as_bytes());
        out.extend_from_slice(
            base64::engine::general_purpose::URL_SAFE_NO_PAD
                .encode(sealed)
                .as_bytes(),
        );
        level = next_path_key(&level, component);
    }
    out
}

/// Encrypts a listing prefix: whole components followed by `/`. An empty
/// prefix stays empty.
pub fn encrypt_prefix(root: &Key, bucket: &str, prefix: &str) -> Vec<u8> {
    let trimmed = prefix.strip_suffix('/').unwrap_or(prefix);
    if trimmed.is_empty() && prefix.is_empty() {
        return Vec::new();
    }
    let mut out = encrypt_path(root, bucket, trimmed);
    out.push(b'/');
    out
}

/// Decrypts a path made by [`encrypt_path`]; a trailing `/` (a collapsed
/// prefix in a listing) is kept.
pub fn decrypt_path(root: &Key, bucket: &str, encrypted: &[u8]) -> Result<String, CryptoError> {
    decrypt_components(bucket_path_key(root, bucket), encrypted)
}

/// Decrypts a path made by [`encrypt_components`] from the same level.
pub fn decrypt_components(mut level: Key, encrypted: &[u8]) -> Result<String, CryptoError> {
    let text = std::str::from_utf8(encrypted).map_err(|_| CryptoError::MalformedPath)?;
    let (body, trailing) = match text.strip_suffix('/') {
        Some(b) => (b, true),
        None => (text, false),
    };
    let mut out = String::with_capacity(body.len() / 2);
    for (i, component) in body.split('/').enumerate() {
        if i > 0 {
            out.push('/');
        }
        let sealed = base64::engine::general_purpose::URL_SAFE_NO_PAD
            .decode(component)
            .map_err(|_| CryptoError::MalformedPath)?;
        let plain = open(&level, &sealed)?;
        let plain = String::from_utf8(plain).map_err(|_| CryptoError::MalformedPath)?;
        level = next_path_key(&level, &plain);
        out.push_str(&plain);
    }
    if trailing {
        out.push('/');
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rows_round_trip_and_detect_tampering() {
        let key = Key::random();
        let plain: Vec<u8> = (0..(BLOCK_SIZE * 3 + 1000)).map(|i| i as u8).collect();
        let mut enc = Vec::new();
        encrypt_row(&key, 5, &plain, &mut enc);
        assert_eq!(enc.len(), encrypted_len(plain.len()));
        assert_eq!(plain_len(enc.len()), Some(plain.len()));
        let mut copy = enc.clone();
        let n = decrypt_row(&key, 5, &mut copy).expect("decrypt");
        assert_eq!(&copy[..n], &plain[..]);

        // wrong segment index (block moved between segments)
        assert_eq!(
            decrypt_row(&key, 6, &mut enc.clone()),
            Err(CryptoError::Decrypt)
        );
        // flipped bit
        let mut bad = enc.clone();
        bad[100] ^= 1;
        assert_eq!(decrypt_row(&key, 5, &mut bad), Err(CryptoError::Decrypt));
        // swapped blocks
        let mut swapped = enc.clone();
        let b = BLOCK_SIZE + TAG_LEN;
        let (a, rest) = swapped.split_at_mut(b);
        a.swap_with_slice(&mut rest[..b]);
        assert_eq!(
            decrypt_row(&key, 5, &mut swapped),
            Err(CryptoError::Decrypt)
        );
    }

    #[test]
    fn blocks_open_one_at_a_time_only_at_their_own_position() {
        let key = Key::random();
        let plain: Vec<u8> = (0..(BLOCK_SIZE * 2 + 700)).map(|i| (i * 3) as u8).collect();
        let mut enc = Vec::new();
        encrypt_row(&key, 9, &plain, &mut enc);
        let opener = RowOpener::new(&key, 9);
        let b = BLOCK_SIZE + TAG_LEN;
        // The last, short block alone, then the middle one.
        let mut last = enc[2 * b..].to_vec();
        assert_eq!(opener.open_block(2, &mut last), Ok(700));
        assert_eq!(&last[..700], &plain[2 * BLOCK_SIZE..]);
        let mut middle = enc[b..2 * b].to_vec();
        assert_eq!(opener.open_block(1, &mut middle), Ok(BLOCK_SIZE));
        assert_eq!(&middle[..BLOCK_SIZE], &plain[BLOCK_SIZE..2 * BLOCK_SIZE]);
        // At another position, in another segment, cut short or run long:
        // refused.
        let block = enc[b..2 * b].to_vec();
        assert_eq!(
            opener.open_block(0, &mut block.clone()),
            Err(CryptoError::Decrypt)
        );
        assert_eq!(
            RowOpener::new(&key, 8).open_block(1, &mut block.clone()),
            Err(CryptoError::Decrypt)
        );
        assert_eq!(
            opener.open_block(1, &mut block[..b - 1].to_vec()),
            Err(CryptoError::Decrypt)
        );
        assert_eq!(
            opener.open_block(1, &mut block[..TAG_LEN - 1].to_vec()),
            Err(CryptoError::Truncated)
        );
        let mut long = enc[..b + 1].to_vec();
        assert_eq!(opener.open_block(0, &mut long), Err(CryptoError::Decrypt));
    }

    #[test]
    fn paths_are_deterministic_and_prefix_preserving() {
        let root = Key::random();
        let a = encrypt_path(&root, "b", "photos/2024/cat.jpg");
        let b = encrypt_path(&root, "b", "photos/2024/dog.jpg");
        assert_eq!(a, encrypt_path(&root, "b", "photos/2024/cat.jpg"));
        let prefix = encrypt_prefix(&root, "b", "photos/2024/");
        assert!(a.starts_with(&prefix) && b.starts_with(&prefix));
        assert!(!String::from_utf8_lossy(&a).contains("photos"));
        assert_eq!(
            decrypt_path(&root, "b", &a).expect("decrypt"),
            "photos/2024/cat.jpg"
        );
        assert_eq!(
            decrypt_path(&root, "b", &prefix).expect("decrypt"),
            "photos/2024/"
        );
        // another bucket or key gives other names
        assert_ne!(a, encrypt_path(&root, "c", "photos/2024/cat.jpg"));
        assert!(decrypt_path(&Key::random(), "b", &a).is_err());
    }

    #[test]
    fn key_check_tells_passphrases_apart() {
        let salt = b"project-salt-123";
        let right = root_key("correct horse", salt).expect("kdf");
        let wrong = root_key("battery staple", salt).expect("kdf");
        let check = bucket_key_check(&right, "b");
        assert!(verify_bucket_key_check(&right, "b", &check));
        assert!(!verify_bucket_key_check(&wrong, "b", &check));
    }

    #[test]
    fn sealed_values_round_trip() {
        let k = Key::random();
        let s = seal(&k, b"metadata");
        assert_eq!(open(&k, &s).expect("open"), b"metadata");
        assert!(open(&Key::random(), &s).is_err());
        assert_eq!(open(&k, &s[..5]), Err(CryptoError::Truncated));
    }
}
