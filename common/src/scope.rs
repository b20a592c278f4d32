//! What an access grant can decrypt: the project's root key, or the path
//! keys of some prefixes.
//!
//! Path keys are derived down the path (see [`crate::encryption`]): the key
//! of `loam://b/team/` is `next(bucket_path_key(root, "b"), "team")`. It
//! encrypts and decrypts every name below `team/` and derives every object
//! key there, while nothing above or beside it can be computed from it. A
//! grant narrowed to a prefix carries only that key, with the prefix in
//! plain and encrypted form (the satellite sees the encrypted form anyway).

use crate::encryption::{self, CryptoError, Key};
use crate::pb;

/// The key of one prefix (whole components: empty or ending in `/`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PathKey {
    pub bucket: String,
    pub prefix: String,
    pub encrypted_prefix: Vec<u8>,
    /// The path key of the level below the prefix.
    pub key: Key,
}

/// The keys a grant holds.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum KeyScope {
    /// The root key: every bucket and path.
    Root(Key),
    /// Keys for some prefixes only.
    Paths(Vec<PathKey>),
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[non_exhaustive]
pub enum ScopeError {
    #[error(
        "this grant holds no encryption key for loam://{bucket}/{path}; it only holds keys for {held}"
    )]
    Outside {
        bucket: String,
        path: String,
        held: String,
    },
    #[error(transparent)]
    Crypto(#[from] CryptoError),
}

/// `prefix` as whole components: empty, or ending in `/`.
pub fn normalize_prefix(prefix: &str) -> String {
    if prefix.is_empty() || prefix.ends_with('/') {
        prefix.to_string()
    } else {
        format!("{prefix}/")
    }
}

/// The first `n` `/`-terminated components of `s`.
fn first_components(s: &[u8], n: usize) -> &[u8] {
    if n == 0 {
        return &[];
    }
    let mut seen = 0;
    for (i, b) in s.iter().enumerate() {
        if *b == b'/' {
            seen += 1;
            if seen == n {
                return &s[..=i];
            }
        }
    }
    s
}

impl KeyScope {
    /// The root key, if the grant holds it.
    pub fn root(&self) -> Option<&Key> {
        match self {
            Self::Root(k) => Some(k),
            Self::Paths(_) => None,
        }
    }

    /// The prefixes held, as URLs (`None` for the root key).
    pub fn prefixes(&self) -> Option<Vec<String>> {
        match self {
            Self::Root(_) => None,
            Self::Paths(ps) => Some(
                ps.iter()
                    .map(|p| format!("loam://{}/{}", p.bucket, p.prefix))
                    .collect(),
            ),
        }
    }

    fn outside(&self, bucket: &str, path: &str) -> ScopeError {
        ScopeError::Outside {
            bucket: bucket.to_string(),
            path: path.to_string(),
            held: self.prefixes().unwrap_or_default().join(", "),
        }
    }

    /// The held key whose prefix is the longest one of `path`: (encrypted
    /// prefix, the key below it, the rest of the path).
    fn entry<'p>(
        &self,
        bucket: &str,
        path: &'p str,
    ) -> Result<(Vec<u8>, Key, &'p str), ScopeError> {
        match self {
            Self::Root(root) => Ok((Vec::new(), encryption::bucket_path_key(root, bucket), path)),
            Self::Paths(ps) => ps
                .iter()
                .filter(|p| p.bucket == bucket && path.starts_with(&p.prefix))
                .max_by_key(|p| p.prefix.len())
                .map(|p| {
                    (
                        p.encrypted_prefix.clone(),
                        p.key.clone(),
                        &path[p.prefix.len()..],
                    )
                })
                .ok_or_else(|| self.outside(bucket, path)),
        }
    }

    /// The encrypted form of an object key.
    pub fn encrypt_path(&self, bucket: &str, path: &str) -> Result<Vec<u8>, ScopeError> {
        let (mut out, level, rest) = self.entry(bucket, path)?;
        out.extend_from_slice(&encryption::encrypt_components(level, rest));
        Ok(out)
    }

    /// The encrypted form of a listing prefix (whole components; a prefix
    /// not ending in `/` is taken as one). A parent of a held prefix
    /// encrypts too: its components are those of the held one.
    pub fn encrypt_prefix(&self, bucket: &str, prefix: &str) -> Result<Vec<u8>, ScopeError> {
        let prefix = normalize_prefix(prefix);
        if prefix.is_empty() {
            return Ok(Vec::new());
        }
        match self.entry(bucket, &prefix) {
            Ok((mut out, level, rest)) => {
                if let Some(rest) = rest.strip_suffix('/') {
                    out.extend_from_slice(&encryption::encrypt_components(level, rest));
                    out.push(b'/');
                }
                Ok(out)
            }
            Err(e) => {
                let Self::Paths(ps) = self else {
                    return Err(e);
                };
                ps.iter()
                    .find(|p| p.bucket == bucket && p.prefix.starts_with(&prefix))
                    .map(|p| {
                        first_components(&p.encrypted_prefix, prefix.matches('/').count()).to_vec()
                    })
                    .ok_or(e)
            }
        }
    }

    /// The plaintext of an encrypted object key or listed prefix.
    pub fn decrypt_path(&self, bucket: &str, encrypted: &[u8]) -> Result<String, ScopeError> {
        let ps = match self {
            Self::Root(root) => return Ok(encryption::decrypt_path(root, bucket, encrypted)?),
            Self::Paths(ps) => ps,
        };
        if let Some(p) = ps
            .iter()
            .filter(|p| p.bucket == bucket && encrypted.starts_with(&p.encrypted_prefix))
            .max_by_key(|p| p.encrypted_prefix.len())
        {
            let rest = &encrypted[p.encrypted_prefix.len()..];
            let mut out = p.prefix.clone();
            if !rest.is_empty() {
                out.push_str(&encryption::decrypt_components(p.key.clone(), rest)?);
            }
            return Ok(out);
        }
        // A collapsed prefix on the way down to a held one.
        if encrypted.ends_with(b"/")
            && let Some(p) = ps
                .iter()
                .find(|p| p.bucket == bucket && p.encrypted_prefix.starts_with(encrypted))
        {
            let n = encrypted.iter().filter(|b| **b == b'/').count();
            let plain = first_components(p.prefix.as_bytes(), n);
            return Ok(String::from_utf8_lossy(plain).into_owned());
        }
        Err(CryptoError::Decrypt.into())
    }

    /// The key of an object's content and metadata (path-derived).
    pub fn object_key(&self, bucket: &str, path: &str) -> Result<Key, ScopeError> {
        let (_, mut level, rest) = self.entry(bucket, path)?;
        let mut components = rest.split('/').peekable();
        loop {
            let c = components.next().unwrap_or_default();
            if components.peek().is_none() {
                return Ok(encryption::object_key_under(&level, c));
            }
            level = encryption::next_path_key(&level, c);
        }
    }

    /// The key objects stored before path keys have: the root key only.
    pub fn legacy_object_key(&self, bucket: &str, path: &str) -> Option<Key> {
        self.root()
            .map(|root| encryption::legacy_object_key(root, bucket, path))
    }

    /// A key derived from what the grant holds, for the grant's own notes
    /// (sealed job notes): the root key's, or the first prefix key's.
    pub fn own_key(&self, label: &str) -> Key {
        match self {
            Self::Root(root) => encryption::derive(root, label, b""),
            Self::Paths(ps) => ps.first().map_or_else(
                || encryption::derive(&Key::from_bytes([0; 32]), label, b""),
                |p| encryption::derive(&p.key, label, p.encrypted_prefix.as_slice()),
            ),
        }
    }

    /// The keys of `paths` only (each a bucket and a prefix of whole
    /// components), each of which this scope must hold.
    pub fn restrict(&self, paths: &[(String, String)]) -> Result<KeyScope, ScopeError> {
        let mut out = Vec::with_capacity(paths.len());
        for (bucket, prefix) in paths {
            let prefix = normalize_prefix(prefix);
            let (mut enc, mut level, rest) = self.entry(bucket, &prefix)?;
            if let Some(rest) = rest.strip_suffix('/') {
                enc.extend_from_slice(&encryption::encrypt_components(level.clone(), rest));
                enc.push(b'/');
                for c in rest.split('/') {
                    level = encryption::next_path_key(&level, c);
                }
            }
            out.push(PathKey {
                bucket: bucket.clone(),
                prefix,
                encrypted_prefix: enc,
                key: level,
            });
        }
        Ok(KeyScope::Paths(out))
    }

    /// The scope as grant fields: (root key, path keys).
    pub fn to_pb(&self) -> (Vec<u8>, Vec<pb::PathKey>) {
        match self {
            Self::Root(k) => (k.as_bytes().to_vec(), Vec::new()),
            Self::Paths(ps) => (
                Vec::new(),
                ps.iter()
                    .map(|p| pb::PathKey {
                        bucket: p.bucket.clone(),
                        prefix: p.prefix.clone(),
                        encrypted_prefix: p.encrypted_prefix.clone().into(),
                        key: p.key.as_bytes().to_vec().into(),
                    })
                    .collect(),
            ),
        }
    }

    /// A scope from grant fields; `None` if they are inconsistent.
    pub fn from_pb(root_key: &[u8], paths: &[pb::PathKey]) -> Option<KeyScope> {
        if paths.is_empty() {
            return Key::try_from(root_key).ok().map(Self::Root);
        }
        if !root_key.is_empty() {
            return None;
        }
        paths
            .iter()
            .map(|p| {
                let whole = p.prefix.is_empty() || p.prefix.ends_with('/');
                let enc_whole = p.encrypted_prefix.is_empty() == p.prefix.is_empty();
                (whole && enc_whole && !p.bucket.is_empty())
                    .then(|| Key::try_from(p.key.as_ref()).ok())
                    .flatten()
                    .map(|key| PathKey {
                        bucket: p.bucket.clone(),
                        prefix: p.prefix.clone(),
                        encrypted_prefix: p.encrypted_prefix.to_vec(),
                        key,
                    })
            })
            .collect::<Option<Vec<_>>>()
            .map(Self::Paths)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn team(root: &KeyScope) -> KeyScope {
        root.restrict(&[("b".into(), "team/".into())])
            .expect("restrict")
    }

    #[test]
    fn a_prefix_key_does_under_its_prefix_what_the_root_does() {
        let root = KeyScope::Root(Key::random());
        let team = team(&root);
        for path in ["team/x", "team/a/b/c.csv", "team/", "team/a/"] {
            assert_eq!(
                team.encrypt_path("b", path).expect("inside"),
                root.encrypt_path("b", path).expect("root"),
                "{path}"
            );
            assert_eq!(
                team.object_key("b", path).expect("inside"),
                root.object_key("b", path).expect("root"),
                "{path}"
            );
            let enc = root.encrypt_path("b", path).expect("root");
            assert_eq!(team.decrypt_path("b", &enc).expect("decrypt"), path);
        }
        assert_eq!(
            team.encrypt_prefix("b", "team/a/").expect("inside"),
            root.encrypt_prefix("b", "team/a/").expect("root")
        );
        // The way down: the parent listing's collapsed prefix.
        let way = root.encrypt_prefix("b", "team/").expect("root");
        assert_eq!(team.encrypt_prefix("b", "").expect("empty"), b"");
        assert_eq!(team.decrypt_path("b", &way).expect("way"), "team/");
        // Narrowing twice equals narrowing once.
        let deeper = team
            .restrict(&[("b".into(), "team/a".into())])
            .expect("restrict");
        assert_eq!(
            deeper,
            root.restrict(&[("b".into(), "team/a/".into())])
                .expect("restrict")
        );
    }

    #[test]
    fn a_prefix_key_opens_nothing_outside_its_prefix() {
        let root = KeyScope::Root(Key::random());
        let team = team(&root);
        for path in ["other/y", "teamx/y", "x", "team"] {
            assert!(matches!(
                team.encrypt_path("b", path),
                Err(ScopeError::Outside { .. })
            ));
            assert!(team.object_key("b", path).is_err());
            let enc = root.encrypt_path("b", path).expect("root");
            assert!(team.decrypt_path("b", &enc).is_err(), "{path}");
        }
        assert!(team.encrypt_path("c", "team/x").is_err());
        assert!(team.restrict(&[("b".into(), "other/".into())]).is_err());
        assert!(team.legacy_object_key("b", "team/x").is_none());
        // The object `team/x` and the prefix `team/x/` have unrelated keys.
        let below = root
            .restrict(&[("b".into(), "team/x/".into())])
            .expect("restrict");
        assert!(below.object_key("b", "team/x").is_err());
    }

    #[test]
    fn scopes_round_trip_through_grant_fields() {
        let root = KeyScope::Root(Key::random());
        let team = team(&root);
        for s in [root, team] {
            let (r, p) = s.to_pb();
            assert_eq!(KeyScope::from_pb(&r, &p), Some(s));
        }
        assert_eq!(KeyScope::from_pb(&[1; 5], &[]), None);
    }
}
