//! `testnet bench-keys`: what checking a caveated API key costs per
//! request. Verifies a key with a chain of 10 caveats (the whole MAC chain
//! and every caveat applied), with no revoked keys and with 10 000 revoked
//! ones, and sets that against one real request measured in the same run
//! (an object lookup over QUIC on a loopback test network).

use std::collections::HashSet;
use std::time::Instant;

use loam_common::macaroon::{CaveatedKey, KEY_BYTES, Op, Request};
use loam_common::pb;

use crate::planet::{Planet, PlanetConfig};

pub struct KeysReport {
    pub caveats: usize,
    pub revoked: usize,
    pub verifications: usize,
    pub per_sec_no_revocations: f64,
    pub per_sec_with_revocations: f64,
    pub requests: usize,
    pub requests_per_sec: f64,
}

impl KeysReport {
    pub fn print(&self) {
        println!(
            "API key with {} caveats, verified and applied {} times",
            self.caveats, self.verifications
        );
        println!(
            "  no revoked keys:        {:>12.0} verifications/s ({:.2} µs each)",
            self.per_sec_no_revocations,
            1e6 / self.per_sec_no_revocations
        );
        println!(
            "  {:>6} revoked keys:    {:>12.0} verifications/s ({:.2} µs each)",
            self.revoked,
            self.per_sec_with_revocations,
            1e6 / self.per_sec_with_revocations
        );
        println!(
            "one request (object lookup over QUIC, {} sequential): {:.0} requests/s ({:.1} µs each)",
            self.requests,
            self.requests_per_sec,
            1e6 / self.requests_per_sec
        );
        println!(
            "key check / request time: {:.4} (no revocations), {:.4} (with revocations)",
            self.requests_per_sec / self.per_sec_no_revocations,
            self.requests_per_sec / self.per_sec_with_revocations
        );
    }
}

/// A key narrowed ten times, as a shared grant passed along might be.
fn ten_caveats() -> (CaveatedKey, [u8; KEY_BYTES]) {
    let (mut key, secret) = CaveatedKey::generate();
    for i in 0..10u8 {
        let caveat = pb::Caveat {
            disallow_deletes: i % 2 == 0,
            allowed_paths: vec![pb::AllowedPath {
                bucket: "bench".into(),
                encrypted_prefix: vec![b'p'; usize::from(i)].into(),
            }],
            not_after_ms: i64::MAX / 2,
            nonce: vec![i; 8].into(),
            ..Default::default()
        };
        key = key.restrict(&caveat).expect("within the caveat limit");
    }
    (key, secret)
}

fn verifications_per_sec(
    key: &CaveatedKey,
    secret: &[u8; KEY_BYTES],
    revoked: &HashSet<[u8; KEY_BYTES]>,
    n: usize,
) -> f64 {
    let req = Request {
        op: Op::Read,
        bucket: Some("bench"),
        encrypted_key: b"pppppppppp/object",
        now_ms: loam_common::orders::now_ms(),
    };
    let started = Instant::now();
    for _ in 0..n {
        // As a request would: decode the key, verify the chain, apply it.
        let k = CaveatedKey::from_bytes(&key.to_bytes()).expect("decodes");
        k.verify(secret, |t| revoked.contains(t)).expect("valid");
        k.check(&req).expect("allowed");
    }
    n as f64 / started.elapsed().as_secs_f64()
}

pub async fn run(verifications: usize, requests: usize) -> anyhow::Result<KeysReport> {
    let (key, secret) = ten_caveats();
    let none = HashSet::new();
    let revoked: HashSet<[u8; KEY_BYTES]> = (0..10_000).map(|_| rand::random()).collect();
    let per_sec_no_revocations = verifications_per_sec(&key, &secret, &none, verifications);
    let per_sec_with_revocations = verifications_per_sec(&key, &secret, &revoked, verifications);

    let planet = Planet::start(PlanetConfig::new(4)).await?;
    let project = planet.project()?;
    project.create_bucket("bench").await?;
    project
        .upload("bench", "o", std::io::Cursor::new(vec![1u8; 1000]), None)
        .await?;
    project.stat("bench", "o").await?;
    let started = Instant::now();
    for _ in 0..requests {
        project.stat("bench", "o").await?;
    }
    let requests_per_sec = requests as f64 / started.elapsed().as_secs_f64();
    planet.shutdown().await;
    Ok(KeysReport {
        caveats: 10,
        revoked: revoked.len(),
        verifications,
        per_sec_no_revocations,
        per_sec_with_revocations,
        requests,
        requests_per_sec,
    })
}
