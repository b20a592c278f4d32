//! Fuzzing on stable Rust: every decoder that reads bytes from the network
//! or the disk, driven by a mutation fuzzer.
//!
//! Each [`Target`] feeds one input to one decoder (frames, every protobuf
//! message and its `TryFrom` into a domain type, signed order limits,
//! orders and piece hashes, Merkle proofs, Bloom filters, sealed keys,
//! access grants, ledgers, model files, dataset records). The driver takes
//! the seeds of a target (valid inputs built here, plus the files under
//! `testnet/fuzz-corpus/<target>/`), mutates them (bit flips, interesting
//! bytes, insertions, deletions, duplications, splices, truncations) and
//! runs the decoder on each mutant. A finding is a panic, or a single
//! allocation larger than [`ALLOCATION_LIMIT`] (a length taken on a peer's
//! word): the binary that runs targets installs [`CountingAlloc`] as its
//! global allocator to see those.
//!
//! `testnet fuzz --seconds N` runs every target for N seconds and prints
//! executions and findings; the test suite runs each for a fixed number of
//! executions with a fixed seed.

use std::alloc::{GlobalAlloc, Layout, System};
use std::path::Path;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use loam_common::erasure::RedundancyScheme;
use loam_common::orders::{Order, OrderLimit, PieceAction, PieceHash, PieceId, SerialNumber};
use loam_common::{Identity, KeyPair, pb};
use prost::Message;
use rand::{Rng, SeedableRng};

/// The largest single allocation a decoder may make for one input.
pub const ALLOCATION_LIMIT: usize = 64 << 20;

/// The global allocator of the fuzzing binaries: the system allocator,
/// plus a record of the largest allocation since the last reset.
pub struct CountingAlloc;

static LARGEST: AtomicUsize = AtomicUsize::new(0);

// A global allocator must implement an unsafe trait. This one only
// forwards to the system allocator and records a size.
#[allow(unsafe_code)]
unsafe impl GlobalAlloc for CountingAlloc {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        LARGEST.fetch_max(layout.size(), Ordering::Relaxed);
        // SAFETY: forwarded unchanged to the system allocator.
        unsafe { System.alloc(layout) }
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        // SAFETY: `ptr` came from `alloc` above with this layout.
        unsafe { System.dealloc(ptr, layout) }
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        LARGEST.fetch_max(new_size, Ordering::Relaxed);
        // SAFETY: forwarded unchanged to the system allocator.
        unsafe { System.realloc(ptr, layout, new_size) }
    }
}

/// One decoder under test.
pub struct Target {
    pub name: &'static str,
    /// Valid inputs to start from.
    pub seeds: fn(&Keys) -> Vec<Vec<u8>>,
    /// Runs the decoder on one input; must never panic.
    pub run: fn(&Keys, &[u8]),
}

/// Fixed keys the targets sign and verify with.
pub struct Keys {
    pub satellite: Identity,
    pub node: KeyPair,
    pub piece: KeyPair,
    pub limit: OrderLimit,
}

impl Keys {
    pub fn new() -> Self {
        let satellite = Identity::from_key(KeyPair::from_seed([1; 32]));
        let node = KeyPair::from_seed([2; 32]);
        let piece = KeyPair::from_seed([3; 32]);
        let limit = OrderLimit {
            serial: SerialNumber::try_from(&[4u8; 16][..]).expect("16 bytes"),
            satellite_id: satellite.id(),
            node_id: node.public().node_id(),
            piece_id: PieceId::try_from(&[5u8; 32][..]).expect("32 bytes"),
            action: PieceAction::Get,
            limit: 1 << 20,
            piece_public_key: piece.public(),
            created_ms: 1_700_000_000_000,
            expires_ms: 1_800_000_000_000,
            piece_expires_ms: 0,
            metadata: vec![9; 40],
        };
        Self {
            satellite,
            node,
            piece,
            limit,
        }
    }
}

impl Default for Keys {
    fn default() -> Self {
        Self::new()
    }
}

fn frame(kind: u8, body: &[u8]) -> Vec<u8> {
    let mut out = vec![kind];
    out.extend_from_slice(&(body.len() as u32).to_be_bytes());
    out.extend_from_slice(body);
    out
}

fn sample_requests() -> Vec<Vec<u8>> {
    use pb::satellite_request::Request as R;
    let scheme: pb::RedundancyScheme = RedundancyScheme::new(4, 6, 8, 10).expect("valid").into();
    vec![
        pb::SatelliteRequest {
            api_key: vec![1; 32].into(),
            request: Some(R::BeginObject(pb::BeginObjectRequest {
                bucket: "photos".into(),
                encrypted_key: b"a2V5/b3RoZXI".to_vec().into(),
                multipart: true,
                encrypted_metadata: vec![7; 40].into(),
            })),
        }
        .encode_to_vec(),
        pb::SatelliteRequest {
            api_key: vec![1; 32].into(),
            request: Some(R::ListObjects(pb::ListObjectsRequest {
                bucket: "photos".into(),
                prefix: b"x/".to_vec().into(),
                cursor: b"c".to_vec().into(),
                recursive: true,
                limit: 1000,
            })),
        }
        .encode_to_vec(),
        pb::SatelliteRequest {
            api_key: Default::default(),
            request: Some(R::CheckIn(pb::CheckInRequest {
                address: "127.0.0.1:7777".into(),
                free_disk: 1 << 30,
                capabilities: Some(pb::NodeCapabilities {
                    cpu_cores: 4,
                    max_tasks: 1,
                    compute_enabled: true,
                    ..Default::default()
                }),
                ..Default::default()
            })),
        }
        .encode_to_vec(),
        pb::CommitSegmentRequest {
            stream_id: vec![7; 16].into(),
            meta: Some(pb::SegmentMeta {
                plain_size: 1000,
                piece_size: 300,
                row_sizes: vec![250, 250, 250, 250],
                row_records: vec![10, 10, 10, 10],
                ..Default::default()
            }),
            ..Default::default()
        }
        .encode_to_vec(),
        scheme.encode_to_vec(),
    ]
}

fn signed_limit(k: &Keys) -> pb::SignedOrderLimit {
    k.limit.sign(&k.satellite)
}

/// Every target.
pub fn targets() -> Vec<Target> {
    vec![
        Target {
            name: "frames",
            seeds: |_| {
                let mut seeds = Vec::new();
                for r in sample_requests() {
                    let mut s = frame(1, &r);
                    s.extend(frame(2, &[0xab; 100]));
                    seeds.push(s);
                }
                seeds
            },
            run: |_, input| {
                for max in [loam_common::wire::MAX_MESSAGE_LEN, 64] {
                    if let Ok(frames) = loam_common::wire::split_frames(input, max) {
                        for f in frames {
                            if let loam_common::wire::Frame::Message(m) = f {
                                let _ = pb::SatelliteRequest::decode(m.clone());
                                let _ = pb::PieceRequest::decode(m.clone());
                                let _ = pb::SatelliteResponse::decode(m);
                            }
                        }
                    }
                }
            },
        },
        Target {
            name: "satellite_request",
            seeds: |_| sample_requests(),
            run: |_, input| {
                if let Ok(r) = pb::SatelliteRequest::decode(input) {
                    let _ = r.encoded_len();
                }
                if let Ok(c) = pb::CommitSegmentRequest::decode(input)
                    && let Some(m) = c.meta
                {
                    let _ = m.row_sizes.iter().sum::<i64>().checked_add(m.plain_size);
                }
                if let Ok(s) = pb::RedundancyScheme::decode(input) {
                    let _ = RedundancyScheme::try_from(&s);
                }
            },
        },
        Target {
            name: "compute_spec",
            seeds: |_| {
                let spec = loam_common::compute::ModelSpec {
                    architecture: loam_common::compute::Architecture::Mlp,
                    inputs: 64,
                    hidden: vec![64],
                    classes: 10,
                    task: Default::default(),
                    image: None,
                    conv: Vec::new(),
                };
                vec![
                    pb::ModelSpec::from(&spec).encode_to_vec(),
                    pb::TrainParams::from(&loam_common::compute::TrainParams::default())
                        .encode_to_vec(),
                ]
            },
            run: |_, input| {
                if let Ok(s) = pb::ModelSpec::decode(input)
                    && let Ok(spec) = loam_common::compute::ModelSpec::try_from(&s)
                {
                    let _ = spec.params();
                }
                if let Ok(p) = pb::TrainParams::decode(input) {
                    let _ = loam_common::compute::TrainParams::try_from(&p);
                }
                let _ = loam_common::compute::weights_from_bytes(input);
            },
        },
        Target {
            name: "order_limit",
            seeds: |k| vec![signed_limit(k).encode_to_vec()],
            run: |k, input| {
                if let Ok(s) = pb::SignedOrderLimit::decode(input) {
                    let _ = OrderLimit::decode_unverified(&s);
                    let _ = OrderLimit::verify(&s, &k.satellite.public());
                }
            },
        },
        Target {
            name: "order",
            seeds: |k| {
                vec![
                    Order {
                        serial: k.limit.serial,
                        amount: 1000,
                    }
                    .sign(&k.piece)
                    .encode_to_vec(),
                ]
            },
            run: |k, input| {
                if let Ok(s) = pb::SignedOrder::decode(input) {
                    let _ = Order::verify(&s, &k.limit);
                }
            },
        },
        Target {
            name: "piece_hash",
            seeds: |k| {
                vec![
                    PieceHash {
                        piece_id: k.limit.piece_id,
                        hash: [8; 32],
                        size: 1 << 20,
                        timestamp_ms: 1_700_000_000_000,
                    }
                    .sign(&k.node)
                    .encode_to_vec(),
                ]
            },
            run: |k, input| {
                if let Ok(s) = pb::SignedPieceHash::decode(input) {
                    let _ = PieceHash::verify(&s, &k.node.public());
                }
            },
        },
        Target {
            name: "merkle_proof",
            seeds: |_| {
                let data = vec![3u8; 5000];
                let leaves = loam_common::merkle::leaves(&data);
                let root = loam_common::merkle::root(&data);
                let proof = loam_common::merkle::proof(&leaves, 1);
                let mut s = root.to_vec();
                s.extend_from_slice(&(data.len() as u64).to_be_bytes());
                s.extend_from_slice(&1u64.to_be_bytes());
                s.extend_from_slice(&(proof.len() as u32).to_be_bytes());
                for p in proof {
                    s.extend_from_slice(&p);
                }
                s.extend_from_slice(&data[..100]);
                vec![s]
            },
            run: |_, input| {
                let Some(root) = input.get(..32).and_then(|r| <[u8; 32]>::try_from(r).ok()) else {
                    return;
                };
                let num = |at: usize| {
                    input
                        .get(at..at + 8)
                        .and_then(|b| <[u8; 8]>::try_from(b).ok())
                        .map(u64::from_be_bytes)
                };
                let (Some(len), Some(index)) = (num(32), num(40)) else {
                    return;
                };
                let count = input
                    .get(48..52)
                    .and_then(|b| <[u8; 4]>::try_from(b).ok())
                    .map_or(0, u32::from_be_bytes) as usize;
                let rest = input.get(52..).unwrap_or_default();
                let proof: Vec<[u8; 32]> = rest
                    .chunks_exact(32)
                    .take(count.min(64))
                    .filter_map(|c| <[u8; 32]>::try_from(c).ok())
                    .collect();
                let leaf = rest.get(proof.len() * 32..).unwrap_or_default();
                let _ = loam_common::merkle::verify(&root, len, index, leaf, &proof);
                let _ = loam_common::merkle::leaf_count(len);
            },
        },
        Target {
            name: "bloom_filter",
            seeds: |_| {
                let mut f = loam_common::bloom::BloomFilter::new(100, 0.1);
                f.insert(&PieceId::try_from(&[1u8; 32][..]).expect("32 bytes"));
                let mut s = f.hashes().to_be_bytes().to_vec();
                s.extend_from_slice(f.seed());
                s.extend_from_slice(f.bits());
                vec![s]
            },
            run: |_, input| {
                let Some(h) = input.get(..4).and_then(|b| <[u8; 4]>::try_from(b).ok()) else {
                    return;
                };
                let Some(seed) = input.get(4..20) else {
                    return;
                };
                let bits = input.get(20..).unwrap_or_default().to_vec();
                if let Some(f) =
                    loam_common::bloom::BloomFilter::from_parts(bits, u32::from_be_bytes(h), seed)
                {
                    for i in 0..8u8 {
                        let _ = f.contains(&PieceId::try_from(&[i; 32][..]).expect("32 bytes"));
                    }
                }
            },
        },
        Target {
            name: "sealed_key",
            seeds: |k| {
                vec![loam_common::sealed::seal(
                    &k.node.public(),
                    &pb::TaskSecret {
                        row_key: vec![1; 32].into(),
                        schema: b"{}".to_vec().into(),
                        row_size: 1000,
                        ..Default::default()
                    }
                    .encode_to_vec(),
                )]
            },
            run: |k, input| {
                if let Ok(plain) = loam_common::sealed::open(&k.node, input) {
                    let _ = pb::TaskSecret::decode(plain.as_slice());
                }
                let _ = pb::TaskSecret::decode(input);
            },
        },
        Target {
            name: "access_grant",
            seeds: |k| {
                let url = loam_common::NodeUrl {
                    id: k.satellite.id(),
                    address: "127.0.0.1:7777".into(),
                };
                let (key, _) = loam_common::macaroon::CaveatedKey::generate();
                let access = loam_common::access::Access::derive(
                    url,
                    key.to_bytes(),
                    "passphrase",
                    &[1; 16],
                );
                let Ok(access) = access else {
                    return Vec::new();
                };
                let narrowed = access.restrict(&loam_common::access::Restriction {
                    paths: vec![("bucket".into(), "team/".into())],
                    disallow_writes: true,
                    ..Default::default()
                });
                let mut seeds = vec![access.serialize().into_bytes()];
                seeds.extend(narrowed.map(|a| a.serialize().into_bytes()));
                seeds
            },
            run: |_, input| {
                if let Ok(a) = loam_common::access::Access::parse(&String::from_utf8_lossy(input))
                    && let Ok(caveats) = a.caveats()
                {
                    for c in &caveats {
                        let _ = a.describe_caveat(c);
                    }
                    let _ = a.keys.encrypt_path("bucket", "team/x");
                    let _ = a.keys.decrypt_path("bucket", b"abc/def/");
                }
            },
        },
        Target {
            name: "caveated_key",
            seeds: |_| {
                let (key, _) = loam_common::macaroon::CaveatedKey::generate();
                let narrowed = key.restrict(&pb::Caveat {
                    disallow_reads: true,
                    allowed_paths: vec![pb::AllowedPath {
                        bucket: "bucket".into(),
                        encrypted_prefix: b"abc/".to_vec().into(),
                    }],
                    not_after_ms: 1 << 40,
                    nonce: vec![1; 8].into(),
                    ..Default::default()
                });
                let mut seeds = vec![key.to_bytes()];
                seeds.extend(narrowed.map(|k| k.to_bytes()));
                seeds
            },
            run: |_, input| {
                use loam_common::macaroon::{CaveatedKey, Op, Request};
                if let Ok(k) = CaveatedKey::from_bytes(input) {
                    let _ = k.verify(&[5; 32], |t| t[0] == 0);
                    let _ = k.check(&Request {
                        op: Op::List,
                        bucket: Some("bucket"),
                        encrypted_key: b"abc/",
                        now_ms: 1 << 39,
                    });
                    let _ = k.shows("bucket", b"abc/d", false);
                }
            },
        },
        Target {
            name: "ledger",
            seeds: |k| {
                let node = k.node.public().node_id();
                let mut file = loam_common::ledger::LedgerFile::new(k.satellite.public());
                for i in 0..3u64 {
                    let Ok(entry) = loam_common::ledger::append(
                        &k.satellite,
                        &node,
                        file.entries.last(),
                        pb::ledger_entry::Body::Payment(pb::Payment {
                            period: format!("2026-0{}", i + 1),
                            amount: 1000 * i,
                            ..Default::default()
                        }),
                        1_700_000_000_000,
                    ) else {
                        break;
                    };
                    file.entries.push(entry);
                }
                vec![file.to_text().into_bytes()]
            },
            run: |k, input| {
                if let Ok(f) =
                    loam_common::ledger::LedgerFile::parse(&String::from_utf8_lossy(input))
                {
                    let _ = f.verify(&k.node.public().node_id());
                }
            },
        },
        Target {
            name: "model_file",
            seeds: |_| {
                let spec = loam_common::compute::ModelSpec {
                    architecture: loam_common::compute::Architecture::Mlp,
                    inputs: 4,
                    hidden: vec![3],
                    classes: 2,
                    task: Default::default(),
                    image: None,
                    conv: Vec::new(),
                };
                let schema =
                    loam_compute::dataset::scan(b"a,b,c,d,label\n1,2,3,4,x\n5,6,7,8,y\n", "label")
                        .expect("schema");
                let weights = spec.init_weights(1);
                let file = loam_compute::ModelFile {
                    header: loam_compute::ModelHeader {
                        spec,
                        schema,
                        trained: serde_json::Value::Null,
                    },
                    weights,
                };
                vec![file.to_bytes().unwrap_or_default()]
            },
            run: |_, input| {
                let _ = loam_compute::ModelFile::from_bytes(input);
            },
        },
        Target {
            name: "dataset_records",
            seeds: |_| {
                vec![
                    b"a,b,label\n1,2,x\n3,4,y\r\n\n5,6,x\n".to_vec(),
                    b"p0,p1,label\n0.5,1e3,cat\n-2,3.25,dog\n".to_vec(),
                ]
            },
            run: |_, input| {
                if let Ok(schema) = loam_compute::dataset::scan(input, "label") {
                    let _ = loam_compute::dataset::parse_records(input, &schema, true);
                    let _ = loam_compute::dataset::pack(input, 4, 64);
                }
            },
        },
    ]
}

/// What one target's run found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Report {
    pub target: &'static str,
    pub executions: u64,
    pub panics: u64,
    pub over_allocations: u64,
    /// The first input that found something (for a corpus file).
    pub first_finding: Option<Vec<u8>>,
}

/// How long a target runs.
#[derive(Debug, Clone, Copy)]
pub enum Budget {
    Executions(u64),
    Time(Duration),
}

/// The seeds of `target`: built-in ones and the corpus files.
pub fn seeds(target: &Target, keys: &Keys, corpus: Option<&Path>) -> Vec<Vec<u8>> {
    let mut out = (target.seeds)(keys);
    if let Some(dir) = corpus
        && let Ok(entries) = std::fs::read_dir(dir.join(target.name))
    {
        let mut files: Vec<_> = entries.flatten().map(|e| e.path()).collect();
        files.sort();
        out.extend(files.iter().filter_map(|p| std::fs::read(p).ok()));
    }
    if out.is_empty() {
        out.push(Vec::new());
    }
    out
}

fn mutate(rng: &mut rand::rngs::StdRng, seeds: &[Vec<u8>]) -> Vec<u8> {
    const INTERESTING: [u8; 8] = [0x00, 0x01, 0x7f, 0x80, 0xff, 0xfe, 0x10, 0x40];
    let mut v = seeds[rng.gen_range(0..seeds.len())].clone();
    for _ in 0..rng.gen_range(1..=8) {
        let len = v.len();
        match rng.gen_range(0..8) {
            0 if len > 0 => {
                let i = rng.gen_range(0..len);
                v[i] ^= 1 << rng.gen_range(0..8);
            }
            1 if len > 0 => {
                let i = rng.gen_range(0..len);
                v[i] = INTERESTING[rng.gen_range(0..INTERESTING.len())];
            }
            2 => {
                let i = rng.gen_range(0..=len);
                let n = rng.gen_range(1..=16);
                let bytes: Vec<u8> = (0..n).map(|_| rng.r#gen()).collect();
                v.splice(i..i, bytes);
            }
            3 if len > 0 => {
                let i = rng.gen_range(0..len);
                let j = rng.gen_range(i..=len.min(i + 64));
                v.drain(i..j);
            }
            4 if len > 0 => {
                let i = rng.gen_range(0..len);
                let j = rng.gen_range(i..=len.min(i + 64));
                let copy = v[i..j].to_vec();
                let at = rng.gen_range(0..=len);
                v.splice(at..at, copy);
            }
            5 => {
                let other = &seeds[rng.gen_range(0..seeds.len())];
                if !other.is_empty() {
                    let i = rng.gen_range(0..other.len());
                    let at = rng.gen_range(0..=len);
                    v.truncate(at);
                    v.extend_from_slice(&other[i..]);
                }
            }
            6 if len > 0 => v.truncate(rng.gen_range(0..len)),
            // Big-endian and varint lengths: set four bytes to a huge value.
            _ if len >= 4 => {
                let i = rng.gen_range(0..=len - 4);
                v[i..i + 4].copy_from_slice(&[0xff, 0xff, 0xff, 0x0f]);
            }
            _ => {}
        }
    }
    v
}

/// Runs `target` within `budget` from `seed`.
pub fn run(
    target: &Target,
    keys: &Keys,
    corpus: Option<&Path>,
    budget: Budget,
    seed: u64,
) -> Report {
    let inputs = seeds(target, keys, corpus);
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
    let mut report = Report {
        target: target.name,
        executions: 0,
        panics: 0,
        over_allocations: 0,
        first_finding: None,
    };
    let started = Instant::now();
    let done = |n: u64| match budget {
        Budget::Executions(max) => n >= max,
        Budget::Time(t) => n.is_multiple_of(64) && started.elapsed() >= t,
    };
    let hook = std::panic::take_hook();
    std::panic::set_hook(Box::new(|_| {}));
    let mut i = 0usize;
    while !done(report.executions) {
        // The seeds themselves first, then mutants.
        let input = match inputs.get(i) {
            Some(s) => s.clone(),
            None => mutate(&mut rng, &inputs),
        };
        i += 1;
        LARGEST.store(0, Ordering::Relaxed);
        let outcome =
            std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| (target.run)(keys, &input)));
        let largest = LARGEST.load(Ordering::Relaxed);
        report.executions += 1;
        let panicked = outcome.is_err();
        let over = largest > ALLOCATION_LIMIT;
        report.panics += u64::from(panicked);
        report.over_allocations += u64::from(over);
        if (panicked || over) && report.first_finding.is_none() {
            report.first_finding = Some(input);
        }
    }
    std::panic::set_hook(hook);
    report
}

/// The corpus folder in the repository.
pub fn corpus_dir() -> std::path::PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("fuzz-corpus")
}

/// Writes every target's built-in seeds under `dir/<target>/`.
pub fn write_corpus(dir: &Path) -> std::io::Result<usize> {
    let keys = Keys::new();
    let mut n = 0;
    for t in targets() {
        let d = dir.join(t.name);
        std::fs::create_dir_all(&d)?;
        for (i, s) in (t.seeds)(&keys).iter().enumerate() {
            std::fs::write(d.join(format!("seed-{i:02}")), s)?;
            n += 1;
        }
    }
    Ok(n)
}
