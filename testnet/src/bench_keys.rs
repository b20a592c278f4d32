//! `testnet bench-keys`: what checking a caveated API key costs per
//! request. Runs the satellite's own check (secret lookup, the whole MAC
//! chain, the revocation set, every caveat applied) on a key with a chain
//! of 10 caveats, with no revoked keys and with 10 000 revoked ones, and
//! sets that against one real request measured in the same run (an object
//! lookup over QUIC on a loopback test network).

use std::time::Instant;

use loam_common::macaroon::{CaveatedKey, Op};
use loam_common::pb;
use loam_satellite::metainfo::Metainfo;

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
            "API key with {} caveats, checked by the satellite {} times",
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
fn ten_caveats(root: &CaveatedKey) -> CaveatedKey {
    let mut key = root.clone();
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
    key
}

/// The satellite's own check, as a request gets it: decode the key, find
/// its secret, verify the chain against the revocations, apply it.
fn verifications_per_sec(satellite: &Metainfo, key: &[u8], n: usize) -> anyhow::Result<f64> {
    let started = Instant::now();
    for _ in 0..n {
        let auth = satellite.authenticate(key)?;
        auth.check(Op::Read, Some("bench"), b"pppppppppp/object")?;
    }
    Ok(n as f64 / started.elapsed().as_secs_f64())
}

pub async fn run(verifications: usize, requests: usize) -> anyhow::Result<KeysReport> {
    let planet = Planet::start(PlanetConfig::new(4)).await?;
    let satellite = &planet.satellite;
    let root_bytes = planet.access.api_key.clone();
    let root = CaveatedKey::from_bytes(&root_bytes)?;
    let key = ten_caveats(&root).to_bytes();
    let per_sec_no_revocations = verifications_per_sec(satellite, &key, verifications)?;

    // 10 000 keys narrowed from the same root, revoked by it.
    let revoked = 10_000;
    let owner = satellite.authenticate(&root_bytes)?;
    for i in 0..revoked as u32 {
        let child = root.restrict(&pb::Caveat {
            nonce: i.to_be_bytes().to_vec().into(),
            ..Default::default()
        })?;
        satellite.api_keys().revoke(&owner, &child.to_bytes())?;
    }
    anyhow::ensure!(satellite.api_keys().revoked_count()? == revoked);
    let per_sec_with_revocations = verifications_per_sec(satellite, &key, verifications)?;

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
    project.close().await;
    planet.shutdown().await;
    Ok(KeysReport {
        caveats: 10,
        revoked,
        verifications,
        per_sec_no_revocations,
        per_sec_with_revocations,
        requests,
        requests_per_sec,
    })
}
