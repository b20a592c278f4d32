//! The payout ledger: per node, an append-only chain of entries (paystubs
//! and payments), each naming the BLAKE3 hash of the one before and signed
//! by the satellite, plus a signed *head* (count and last hash) so that a
//! dropped last entry shows too. A node keeps its copy as a text file, one
//! entry per line, and can check the whole chain offline.
//!
//! Data owners are payees too: a project's ledger has the subject
//! [`project_payee`] of its id, and is kept and checked the same way.
//!
//! ```text
//! loam-ledger v1
//! satellite <satellite id> <base64 public key>
//! entry <base64 LedgerEntry> <base64 signature>
//! ...
//! head <base64 LedgerHead> <base64 signature>
//! ```

use base64::Engine;
use base64::engine::general_purpose::STANDARD as B64;
use prost::Message;

use crate::identity::Domain;
use crate::{Identity, NodeId, PublicKey, pb};

pub const ZERO_HASH: [u8; 32] = [0; 32];

/// The ledger subject of a data owner (a project): a 32-byte id derived
/// from the project id, which no node id can equal (node ids are hashes of
/// public keys under another context).
pub fn project_payee(project_id: &[u8]) -> NodeId {
    let mut h = blake3::Hasher::new_derive_key("loam 2026 project payee v1");
    h.update(project_id);
    NodeId::from_bytes(*h.finalize().as_bytes())
}

/// The hash an entry's successor names.
pub fn entry_hash(signed: &pb::SignedLedgerEntry) -> [u8; 32] {
    *blake3::hash(&signed.entry).as_bytes()
}

/// Appends `body` after `prev` (None: the first entry) in `node`'s chain.
pub fn append(
    satellite: &Identity,
    node: &NodeId,
    prev: Option<&pb::SignedLedgerEntry>,
    body: pb::ledger_entry::Body,
    now_ms: i64,
) -> Result<pb::SignedLedgerEntry, LedgerError> {
    let (seq, prev_hash) = match prev {
        None => (0, ZERO_HASH),
        Some(p) => {
            let e = decode_entry(p).map_err(|reason| LedgerError::at(None, reason))?;
            (e.seq + 1, entry_hash(p))
        }
    };
    let entry = pb::LedgerEntry {
        seq,
        prev_hash: prev_hash.to_vec().into(),
        satellite_id: satellite.id().as_bytes().to_vec().into(),
        node_id: node.as_bytes().to_vec().into(),
        created_unix_ms: now_ms,
        body: Some(body),
    }
    .encode_to_vec();
    let signature = satellite.sign(Domain::LedgerEntry, &entry);
    Ok(pb::SignedLedgerEntry {
        entry: entry.into(),
        signature: signature.into(),
    })
}

/// The satellite's signed statement of a chain's length and last hash.
pub fn sign_head(
    satellite: &Identity,
    node: &NodeId,
    last: Option<&pb::SignedLedgerEntry>,
    count: u64,
    now_ms: i64,
) -> pb::SignedLedgerHead {
    let head = pb::LedgerHead {
        satellite_id: satellite.id().as_bytes().to_vec().into(),
        node_id: node.as_bytes().to_vec().into(),
        count,
        last_hash: last.map_or(ZERO_HASH, entry_hash).to_vec().into(),
        signed_unix_ms: now_ms,
    }
    .encode_to_vec();
    let signature = satellite.sign(Domain::LedgerHead, &head);
    pb::SignedLedgerHead {
        head: head.into(),
        signature: signature.into(),
    }
}

fn decode_entry(s: &pb::SignedLedgerEntry) -> Result<pb::LedgerEntry, String> {
    pb::LedgerEntry::decode(s.entry.as_ref()).map_err(|_| "entry does not decode".to_string())
}

/// What is wrong with a ledger, and where.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{}{reason}", match entry { Some(i) => format!("entry {i}: "), None => String::new() })]
pub struct LedgerError {
    /// Index of the first bad entry (0-based), if the fault is in one.
    pub entry: Option<usize>,
    pub reason: String,
}

impl LedgerError {
    fn at(entry: Option<usize>, reason: impl Into<String>) -> Self {
        Self {
            entry,
            reason: reason.into(),
        }
    }
}

/// One node's copy of its ledger with one satellite.
#[derive(Debug, Clone, PartialEq)]
pub struct LedgerFile {
    pub satellite: NodeId,
    pub public_key: PublicKey,
    pub entries: Vec<pb::SignedLedgerEntry>,
    pub head: Option<pb::SignedLedgerHead>,
}

impl LedgerFile {
    pub fn new(public_key: PublicKey) -> Self {
        Self {
            satellite: public_key.node_id(),
            public_key,
            entries: Vec::new(),
            head: None,
        }
    }

    pub fn to_text(&self) -> String {
        let mut out = format!(
            "loam-ledger v1\nsatellite {} {}\n",
            self.satellite,
            B64.encode(self.public_key.as_bytes())
        );
        for e in &self.entries {
            out.push_str(&format!(
                "entry {} {}\n",
                B64.encode(&e.entry),
                B64.encode(&e.signature)
            ));
        }
        if let Some(h) = &self.head {
            out.push_str(&format!(
                "head {} {}\n",
                B64.encode(&h.head),
                B64.encode(&h.signature)
            ));
        }
        out
    }

    /// Parses the text form; every line must be well formed (a damaged
    /// line is reported with the entry it holds).
    pub fn parse(text: &str) -> Result<Self, LedgerError> {
        let mut lines = text.lines();
        if lines.next() != Some("loam-ledger v1") {
            return Err(LedgerError::at(
                None,
                "not a Loam ledger file (bad first line)",
            ));
        }
        let sat_line = lines.next().unwrap_or_default();
        let mut parts = sat_line.split(' ');
        let (Some("satellite"), Some(id), Some(key), None) =
            (parts.next(), parts.next(), parts.next(), parts.next())
        else {
            return Err(LedgerError::at(None, "malformed satellite line"));
        };
        let satellite: NodeId = id
            .parse()
            .map_err(|_| LedgerError::at(None, "malformed satellite id"))?;
        let public_key = B64
            .decode(key)
            .ok()
            .and_then(|k| PublicKey::try_from(k.as_slice()).ok())
            .ok_or_else(|| LedgerError::at(None, "malformed satellite public key"))?;
        let mut file = Self {
            satellite,
            public_key,
            entries: Vec::new(),
            head: None,
        };
        for line in lines {
            let index = file.entries.len();
            let mut parts = line.split(' ');
            let fields = (parts.next(), parts.next(), parts.next(), parts.next());
            let decode = |s: &str| B64.decode(s).ok();
            match fields {
                (Some("entry"), Some(e), Some(s), None) if file.head.is_none() => {
                    let (Some(entry), Some(signature)) = (decode(e), decode(s)) else {
                        return Err(LedgerError::at(Some(index), "line is not valid base64"));
                    };
                    file.entries.push(pb::SignedLedgerEntry {
                        entry: entry.into(),
                        signature: signature.into(),
                    });
                }
                (Some("head"), Some(h), Some(s), None) if file.head.is_none() => {
                    let (Some(head), Some(signature)) = (decode(h), decode(s)) else {
                        return Err(LedgerError::at(None, "head line is not valid base64"));
                    };
                    file.head = Some(pb::SignedLedgerHead {
                        head: head.into(),
                        signature: signature.into(),
                    });
                }
                _ => {
                    return Err(LedgerError::at(
                        Some(index),
                        format!("malformed line {:?}", truncate(line)),
                    ));
                }
            }
        }
        Ok(file)
    }

    /// Checks everything offline: the key is the satellite's, every entry
    /// is signed by it, belongs to `node`, has the next sequence number and
    /// names its predecessor's hash, and the signed head covers exactly
    /// these entries. Returns the decoded entries.
    pub fn verify(&self, node: &NodeId) -> Result<Vec<pb::LedgerEntry>, LedgerError> {
        if self.public_key.node_id() != self.satellite {
            return Err(LedgerError::at(
                None,
                "the public key in the file is not the satellite's",
            ));
        }
        let mut out = Vec::with_capacity(self.entries.len());
        let mut prev_hash = ZERO_HASH;
        for (i, signed) in self.entries.iter().enumerate() {
            let fail = |reason: &str| LedgerError::at(Some(i), reason);
            self.public_key
                .verify(Domain::LedgerEntry, &signed.entry, &signed.signature)
                .map_err(|_| fail("the satellite's signature does not verify (entry altered)"))?;
            let e = decode_entry(signed).map_err(|r| fail(&r))?;
            if e.satellite_id.as_ref() != self.satellite.as_bytes()
                || e.node_id.as_ref() != node.as_bytes()
            {
                return Err(fail(
                    "entry belongs to another node's or satellite's ledger",
                ));
            }
            if e.seq != i as u64 {
                return Err(LedgerError::at(
                    Some(i),
                    format!(
                        "sequence number {} where {i} belongs (entries dropped or reordered)",
                        e.seq
                    ),
                ));
            }
            if e.prev_hash.as_ref() != prev_hash {
                return Err(fail(
                    "does not link to the entry before it (entries dropped or reordered)",
                ));
            }
            prev_hash = entry_hash(signed);
            out.push(e);
        }
        let Some(head) = &self.head else {
            return Err(LedgerError::at(None, "no signed head (file truncated?)"));
        };
        self.public_key
            .verify(Domain::LedgerHead, &head.head, &head.signature)
            .map_err(|_| LedgerError::at(None, "the head's signature does not verify"))?;
        let h = pb::LedgerHead::decode(head.head.as_ref())
            .map_err(|_| LedgerError::at(None, "head does not decode"))?;
        if h.node_id.as_ref() != node.as_bytes()
            || h.satellite_id.as_ref() != self.satellite.as_bytes()
        {
            return Err(LedgerError::at(None, "head belongs to another ledger"));
        }
        if h.count != self.entries.len() as u64 {
            return Err(LedgerError::at(
                None,
                format!(
                    "the signed head covers {} entries, the file has {} (entries dropped or added at the end)",
                    h.count,
                    self.entries.len()
                ),
            ));
        }
        if h.last_hash.as_ref() != prev_hash {
            return Err(LedgerError::at(
                None,
                "the last entry is not the one the signed head names",
            ));
        }
        Ok(out)
    }
}

fn truncate(s: &str) -> String {
    s.chars().take(40).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ledger(n: usize) -> (LedgerFile, NodeId) {
        let sat = Identity::generate(0, |_| {});
        let node = Identity::generate(0, |_| {}).id();
        let mut file = LedgerFile::new(sat.public());
        for i in 0..n {
            let body = if i % 2 == 0 {
                pb::ledger_entry::Body::Paystub(pb::Paystub {
                    period: format!("2026-{:02}", i / 2 + 1),
                    gross: 1000 + i as u64,
                    paid: 250 + i as u64,
                    ..Default::default()
                })
            } else {
                pb::ledger_entry::Body::Payment(pb::Payment {
                    period: format!("2026-{:02}", i / 2 + 1),
                    amount: 250 + i as u64 - 1,
                    ..Default::default()
                })
            };
            let e = append(&sat, &node, file.entries.last(), body, i as i64).expect("append");
            file.entries.push(e);
        }
        file.head = Some(sign_head(&sat, &node, file.entries.last(), n as u64, 99));
        (file, node)
    }

    #[test]
    fn an_intact_ledger_verifies_and_round_trips_as_text() {
        let (file, node) = ledger(6);
        assert_eq!(file.verify(&node).expect("valid").len(), 6);
        let again = LedgerFile::parse(&file.to_text()).expect("parse");
        assert_eq!(again, file);
        let other = Identity::generate(0, |_| {}).id();
        assert!(file.verify(&other).is_err());
    }

    #[test]
    fn every_single_byte_change_is_detected() {
        let (file, node) = ledger(4);
        let text = file.to_text().into_bytes();
        let header_len = text
            .iter()
            .enumerate()
            .filter(|(_, b)| **b == b'\n')
            .nth(1)
            .map(|(i, _)| i + 1)
            .expect("two header lines");
        for pos in 0..text.len() {
            let mut bad = text.clone();
            bad[pos] = if bad[pos] == b'A' { b'B' } else { b'A' };
            let Ok(s) = String::from_utf8(bad) else {
                continue;
            };
            let outcome = LedgerFile::parse(&s).and_then(|f| f.verify(&node));
            // Base64 padding bits can absorb a change without changing the
            // decoded bytes; then nothing was altered.
            if let Ok(entries) = outcome {
                let f = LedgerFile::parse(&s).expect("parsed");
                assert_eq!(f, file, "byte {pos} changed the content yet verified");
                assert_eq!(entries.len(), 4);
                continue;
            }
            // A change inside an entry's line names that entry.
            if pos >= header_len {
                let line = s[..pos].matches('\n').count() - 2;
                let err = outcome.expect_err("detected");
                if line < 4 {
                    assert_eq!(err.entry, Some(line), "byte {pos}: {err}");
                }
            }
        }
    }

    #[test]
    fn dropped_and_reordered_entries_are_named() {
        let (file, node) = ledger(5);
        let mut dropped = file.clone();
        dropped.entries.remove(2);
        let err = dropped.verify(&node).expect_err("dropped");
        assert_eq!(err.entry, Some(2), "{err}");

        let mut last = file.clone();
        last.entries.pop();
        let err = last.verify(&node).expect_err("last dropped");
        assert_eq!(err.entry, None);
        assert!(err.reason.contains("head covers 5"), "{err}");

        let mut swapped = file.clone();
        swapped.entries.swap(1, 3);
        let err = swapped.verify(&node).expect_err("reordered");
        assert_eq!(err.entry, Some(1), "{err}");

        let mut headless = file;
        headless.head = None;
        assert!(headless.verify(&node).is_err());
    }
}
