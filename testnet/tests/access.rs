//! Caveated API keys on the in-process test network: every caveat applied
//! to every RPC that touches objects, segments, buckets and jobs (a table),
//! forged and stale keys refused, and path-scoped encryption keys that open
//! nothing outside their prefix even with the satellite's cooperation.

use loam_common::access::{Access, Restriction};
use loam_common::encryption;
use loam_common::pb;
use loam_common::pb::satellite_request::Request as Req;
use loam_common::pb::satellite_response::Response as Resp;
use loam_common::rpc::{self, CallError};
use loam_common::transport::Endpoint;
use loam_testnet::planet::{Planet, PlanetConfig};
use loam_uplink::dataset::{DatasetOptions, JobRequest};
use loam_uplink::{Project, UplinkError};
use prost::Message;

const BUCKET: &str = "acc";

/// A raw RPC client: requests with any key bytes.
struct Client {
    _endpoint: Endpoint,
    conn: quinn::Connection,
}

impl Client {
    async fn new(planet: &Planet) -> Self {
        let (endpoint, conn) = planet.satellite_connection().await.expect("connect");
        Self {
            _endpoint: endpoint,
            conn,
        }
    }

    async fn call(&self, key: &[u8], req: Req) -> Result<Resp, rpc::RemoteError> {
        match rpc::satellite(&self.conn, key, req).await {
            Ok(r) => Ok(r),
            Err(CallError::Remote(e)) => Err(e),
            Err(e) => panic!("transport failure: {e}"),
        }
    }
}

/// Whether the satellite refused the request for its key (as opposed to
/// answering it, or failing it for another reason).
fn refused(r: &Result<Resp, rpc::RemoteError>) -> bool {
    matches!(r, Err(e) if matches!(
        e.code,
        pb::ErrorCode::PermissionDenied | pb::ErrorCode::Unauthenticated
    ))
}

fn root_access(planet: &Planet) -> &Access {
    &planet.access
}

fn enc(planet: &Planet, path: &str) -> bytes::Bytes {
    root_access(planet)
        .keys
        .encrypt_path(BUCKET, path)
        .expect("root key")
        .into()
}

fn enc_prefix(planet: &Planet, prefix: &str) -> bytes::Bytes {
    root_access(planet)
        .keys
        .encrypt_prefix(BUCKET, prefix)
        .expect("root key")
        .into()
}

fn job_request(out: &str) -> JobRequest {
    JobRequest {
        image: None,
        conv: Vec::new(),
        architecture: "mlp".into(),
        hidden: vec![8],
        rounds: 1,
        patience: 0,
        params: Default::default(),
        verify_fraction: Some(0.0),
        out: (BUCKET.into(), out.into()),
        label: None,
        aggregation: Default::default(),
        device: Default::default(),
    }
}

struct World {
    planet: Planet,
    client: Client,
    team_job: Vec<u8>,
    other_job: Vec<u8>,
}

async fn world() -> World {
    let planet = Planet::start(PlanetConfig::new(5)).await.expect("planet");
    let project = planet.project().expect("project");
    project.create_bucket(BUCKET).await.expect("bucket");
    let data: Vec<u8> = (0..60_000u32).map(|i| (i * 7) as u8).collect();
    for key in ["team/x", "other/y"] {
        project
            .upload(BUCKET, key, std::io::Cursor::new(data.clone()), None)
            .await
            .expect("upload");
    }
    let (train, _) = loam_testnet::digits_split();
    let options = DatasetOptions {
        image: None,
        label: "label".into(),
        task: Default::default(),
        segment_size: None,
        compute: true,
        shuffle: None,
    };
    let mut jobs = Vec::new();
    for dir in ["team", "other"] {
        project
            .upload_dataset(
                BUCKET,
                &format!("{dir}/ds"),
                train.clone().into_bytes(),
                &options,
                None,
            )
            .await
            .expect("dataset");
        let job = project
            .submit_job(
                BUCKET,
                &format!("{dir}/ds"),
                &job_request(&format!("{dir}/m")),
            )
            .await
            .expect("submit");
        jobs.push(job.job_id.to_vec());
    }
    let client = Client::new(&planet).await;
    project.close().await;
    World {
        planet,
        client,
        other_job: jobs.pop().expect("two jobs"),
        team_job: jobs.pop().expect("two jobs"),
    }
}

impl World {
    /// A fresh pending upload at `path` (begun with the root key).
    async fn pending(&self, path: &str) -> bytes::Bytes {
        match self
            .client
            .call(
                &self.planet.access.api_key,
                Req::BeginObject(pb::BeginObjectRequest {
                    bucket: BUCKET.into(),
                    encrypted_key: enc(&self.planet, path),
                    ..Default::default()
                }),
            )
            .await
        {
            Ok(Resp::BeginObject(b)) => b.stream_id,
            other => panic!("begin object: {other:?}"),
        }
    }

    fn narrowed(&self, r: &Restriction) -> Vec<u8> {
        self.planet.access.restrict(r).expect("restrict").api_key
    }
}

fn object(p: &Planet, path: &str) -> pb::ObjectRequest {
    pb::ObjectRequest {
        bucket: BUCKET.into(),
        encrypted_key: enc(p, path),
    }
}

fn relocation(p: &Planet, from: &str, to: &str) -> pb::FinishMoveObjectRequest {
    pb::FinishMoveObjectRequest {
        bucket: BUCKET.into(),
        encrypted_key: enc(p, from),
        new_bucket: BUCKET.into(),
        new_encrypted_key: enc(p, to),
        ..Default::default()
    }
}

/// One request of the table and the caveats that let it through: N none,
/// R no reads, W no writes, L no lists, D no deletes, P only `team/`,
/// C compute only. (Expired and not-yet-valid keys let nothing through.)
async fn request(w: &World, name: &str) -> Req {
    let p = &w.planet;
    match name {
        "project info" => Req::ProjectInfo(pb::ProjectInfoRequest {}),
        "create bucket" => Req::CreateBucket(pb::CreateBucketRequest {
            name: "acc-new".into(),
            key_check: Default::default(),
        }),
        "get bucket" => Req::GetBucket(pb::GetBucketRequest {
            name: BUCKET.into(),
        }),
        "list buckets" => Req::ListBuckets(pb::ListBucketsRequest {}),
        "delete bucket" => Req::DeleteBucket(pb::DeleteBucketRequest {
            name: "acc-none".into(),
        }),
        "begin object" => Req::BeginObject(pb::BeginObjectRequest {
            bucket: BUCKET.into(),
            encrypted_key: enc(p, "team/new"),
            ..Default::default()
        }),
        "begin object outside" => Req::BeginObject(pb::BeginObjectRequest {
            bucket: BUCKET.into(),
            encrypted_key: enc(p, "other/new"),
            ..Default::default()
        }),
        "begin segment" => Req::BeginSegment(pb::BeginSegmentRequest {
            stream_id: w.pending("team/p").await,
            index: 0,
            piece_size: 1024,
        }),
        "begin segment outside" => Req::BeginSegment(pb::BeginSegmentRequest {
            stream_id: w.pending("other/p").await,
            index: 0,
            piece_size: 1024,
        }),
        "commit segment" => Req::CommitSegment(pb::CommitSegmentRequest {
            stream_id: w.pending("team/p").await,
            ..Default::default()
        }),
        "commit object" => Req::CommitObject(pb::CommitObjectRequest {
            stream_id: w.pending("team/p").await,
            ..Default::default()
        }),
        "abort object" => Req::AbortObject(pb::AbortObjectRequest {
            bucket: BUCKET.into(),
            stream_id: w.pending("team/p").await,
        }),
        "get object" => Req::GetObject(object(p, "team/x")),
        "get object outside" => Req::GetObject(object(p, "other/y")),
        "download segment" => Req::DownloadSegment(pb::DownloadSegmentRequest {
            bucket: BUCKET.into(),
            encrypted_key: enc(p, "team/x"),
            index: 0,
        }),
        "download segment outside" => Req::DownloadSegment(pb::DownloadSegmentRequest {
            bucket: BUCKET.into(),
            encrypted_key: enc(p, "other/y"),
            index: 0,
        }),
        "list objects" => Req::ListObjects(pb::ListObjectsRequest {
            bucket: BUCKET.into(),
            prefix: enc_prefix(p, "team/"),
            ..Default::default()
        }),
        "list objects outside" => Req::ListObjects(pb::ListObjectsRequest {
            bucket: BUCKET.into(),
            prefix: enc_prefix(p, "other/"),
            ..Default::default()
        }),
        "list objects above" => Req::ListObjects(pb::ListObjectsRequest {
            bucket: BUCKET.into(),
            ..Default::default()
        }),
        "list upload segments" => Req::ListUploadSegments(pb::ListUploadSegmentsRequest {
            bucket: BUCKET.into(),
            stream_id: w.pending("team/p").await,
            ..Default::default()
        }),
        "list upload segments outside" => Req::ListUploadSegments(pb::ListUploadSegmentsRequest {
            bucket: BUCKET.into(),
            stream_id: w.pending("other/p").await,
            ..Default::default()
        }),
        "list pending" => Req::ListPending(pb::ListPendingRequest {
            bucket: BUCKET.into(),
            prefix: enc_prefix(p, "team/"),
        }),
        "delete object" => Req::DeleteObject(object(p, "team/ghost")),
        "delete object outside" => Req::DeleteObject(object(p, "other/ghost")),
        "begin move" => Req::BeginMoveObject(object(p, "team/x")),
        "finish move" => Req::FinishMoveObject(relocation(p, "team/ghost", "team/ghost2")),
        "finish copy" => Req::FinishCopyObject(relocation(p, "team/ghost", "team/ghost2")),
        "finish copy outside" => Req::FinishCopyObject(relocation(p, "team/ghost", "other/ghost2")),
        "set compute" => Req::SetCompute(pb::SetComputeRequest {
            bucket: BUCKET.into(),
            encrypted_key: enc(p, "team/ds"),
            enabled: true,
        }),
        "plan job" => Req::PlanJob(pb::PlanJobRequest {
            bucket: BUCKET.into(),
            encrypted_key: enc(p, "team/ds"),
            ..Default::default()
        }),
        "plan job outside" => Req::PlanJob(pb::PlanJobRequest {
            bucket: BUCKET.into(),
            encrypted_key: enc(p, "other/ds"),
            ..Default::default()
        }),
        "submit job" => Req::SubmitJob(pb::SubmitJobRequest {
            bucket: BUCKET.into(),
            encrypted_key: enc(p, "team/ds"),
            ..Default::default()
        }),
        "get job" => Req::GetJob(pb::JobRequest {
            job_id: w.team_job.clone().into(),
        }),
        "get job outside" => Req::GetJob(pb::JobRequest {
            job_id: w.other_job.clone().into(),
        }),
        "job weights" => Req::JobWeights(pb::JobWeightsRequest {
            job_id: w.team_job.clone().into(),
            offset: 0,
        }),
        "cancel job outside" => Req::CancelJob(pb::JobRequest {
            job_id: w.other_job.clone().into(),
        }),
        "list jobs" => Req::ListJobs(pb::ListJobsRequest {}),
        "submit market job" => Req::SubmitJob(pb::SubmitJobRequest {
            listings: vec![vec![0xab; 8].into()],
            ..Default::default()
        }),
        "reseal listing" => Req::ResealListing(pb::ResealListingRequest {
            bucket: BUCKET.into(),
            encrypted_key: enc(p, "team/ds"),
            ..Default::default()
        }),
        "reseal listing outside" => Req::ResealListing(pb::ResealListingRequest {
            bucket: BUCKET.into(),
            encrypted_key: enc(p, "other/ds"),
            ..Default::default()
        }),
        "earnings" => Req::Earnings(pb::EarningsRequest {}),
        "fetch model" => Req::FetchModel(pb::ListingRequest {
            id: vec![0xab; 8].into(),
        }),
        "charges" => Req::Charges(pb::ChargesRequest {}),
        "set payout address" => Req::SetPayoutAddress(pb::SetPayoutAddressRequest {
            address: "0xowner".into(),
        }),
        "project usage" => Req::ProjectUsage(pb::ProjectUsageRequest {}),
        "create api key" => Req::CreateApiKey(pb::CreateApiKeyRequest::default()),
        "list api keys" => Req::ListApiKeys(pb::ListApiKeysRequest::default()),
        "revoke api key" => Req::RevokeApiKey(pb::RevokeApiKeyRequest {
            head: vec![0xee; 8].into(),
            ..Default::default()
        }),
        other => panic!("no request {other}"),
    }
}

const TABLE: &[(&str, &str)] = &[
    ("project info", "NRWLDPC"),
    ("create bucket", "NRLD"),
    ("get bucket", "NRWLDPC"),
    ("list buckets", "NRWDPC"),
    ("delete bucket", "NRWL"),
    ("begin object", "NRLDP"),
    ("begin object outside", "NRLD"),
    ("begin segment", "NRLDP"),
    ("begin segment outside", "NRLD"),
    ("commit segment", "NRLDP"),
    ("commit object", "NRLDP"),
    ("abort object", "NRLDP"),
    ("get object", "NWLDPC"),
    ("get object outside", "NWLDC"),
    ("download segment", "NWLDP"),
    ("download segment outside", "NWLD"),
    ("list objects", "NRWDPC"),
    ("list objects outside", "NRWDC"),
    ("list objects above", "NRWDPC"),
    ("list pending", "NRWDPC"),
    ("list upload segments", "NRWDPC"),
    ("list upload segments outside", "NRWDC"),
    ("delete object", "NRWLP"),
    ("delete object outside", "NRWL"),
    ("begin move", "NWLDP"),
    ("finish move", "NLP"),
    ("finish copy", "NLDP"),
    ("finish copy outside", "NLD"),
    ("set compute", "NRLDP"),
    ("plan job", "NRWLDPC"),
    ("plan job outside", "NRWLDC"),
    ("submit job", "NRWLDPC"),
    ("get job", "NRWLDPC"),
    ("get job outside", "NRWLDC"),
    ("job weights", "NRWLDPC"),
    ("cancel job outside", "NRWLDC"),
    ("list jobs", "NRWDPC"),
    ("submit market job", "NRWLDC"),
    ("reseal listing", "NRLDP"),
    ("reseal listing outside", "NRLD"),
    ("earnings", "NRWD"),
    ("fetch model", "NRWLDC"),
    ("charges", "NRWD"),
    ("set payout address", "N"),
    ("project usage", "NRWD"),
    ("create api key", "N"),
    ("list api keys", "N"),
    ("revoke api key", "N"),
];

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_caveat_is_applied_to_every_rpc() {
    let w = world().await;
    let now = loam_common::orders::now_ms();
    let caveats: Vec<(char, Restriction)> = vec![
        ('N', Restriction::default()),
        (
            'R',
            Restriction {
                disallow_reads: true,
                ..Default::default()
            },
        ),
        (
            'W',
            Restriction {
                disallow_writes: true,
                ..Default::default()
            },
        ),
        (
            'L',
            Restriction {
                disallow_lists: true,
                ..Default::default()
            },
        ),
        (
            'D',
            Restriction {
                disallow_deletes: true,
                ..Default::default()
            },
        ),
        (
            'P',
            Restriction {
                paths: vec![(BUCKET.into(), "team/".into())],
                ..Default::default()
            },
        ),
        (
            'C',
            Restriction {
                compute_only: true,
                ..Default::default()
            },
        ),
        (
            'E',
            Restriction {
                not_after_ms: now - 1000,
                ..Default::default()
            },
        ),
        (
            'F',
            Restriction {
                not_before_ms: now + 3_600_000,
                ..Default::default()
            },
        ),
    ];
    let mut wrong = Vec::new();
    for (letter, restriction) in &caveats {
        let key = w.narrowed(restriction);
        for (name, allowed_by) in TABLE {
            let r = w.client.call(&key, request(&w, name).await).await;
            let expect_allowed = allowed_by.contains(*letter);
            if refused(&r) == expect_allowed {
                wrong.push(format!(
                    "caveat {letter} on {name}: expected {}, got {r:?}",
                    if expect_allowed { "allowed" } else { "refused" }
                ));
            }
        }
    }
    assert!(wrong.is_empty(), "{}", wrong.join("\n"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn listings_show_only_what_a_key_may_see_and_denials_say_why() {
    let w = world().await;
    let p = &w.planet;
    let team = w.narrowed(&Restriction {
        paths: vec![(BUCKET.into(), "team/".into())],
        disallow_writes: true,
        disallow_deletes: true,
        ..Default::default()
    });
    // The bucket's top level shows the way down to team/ and nothing else.
    let top = match w
        .client
        .call(&team, request(&w, "list objects above").await)
        .await
    {
        Ok(Resp::ListObjects(l)) => l,
        other => panic!("{other:?}"),
    };
    let keys: Vec<_> = top.items.iter().map(|i| i.encrypted_key.clone()).collect();
    assert_eq!(keys, vec![enc_prefix(p, "team/")]);
    // Jobs: only the one on a dataset under team/.
    let jobs = match w
        .client
        .call(&team, Req::ListJobs(pb::ListJobsRequest {}))
        .await
    {
        Ok(Resp::ListJobs(l)) => l.jobs,
        other => panic!("{other:?}"),
    };
    assert_eq!(jobs.len(), 1);
    assert_eq!(jobs[0].job_id.to_vec(), w.team_job);
    // One clear line per denial.
    let e = w
        .client
        .call(&team, request(&w, "begin object").await)
        .await
        .expect_err("read-only");
    assert_eq!(e.message, "this grant is read-only");
    let e = w
        .client
        .call(&team, request(&w, "get object outside").await)
        .await
        .expect_err("outside");
    assert!(
        e.message.starts_with("this grant only allows"),
        "{}",
        e.message
    );
    let expired = w.narrowed(&Restriction {
        not_after_ms: 1_000,
        ..Default::default()
    });
    let e = w
        .client
        .call(&expired, Req::ProjectInfo(pb::ProjectInfoRequest {}))
        .await
        .expect_err("expired");
    assert_eq!(e.message, "this grant expired at 1970-01-01T00:00:01Z");
}

/// Re-encodes a key after `edit` changed its parts.
fn edited(key: &[u8], edit: impl FnOnce(&mut pb::CaveatedKey)) -> Vec<u8> {
    let mut k = pb::CaveatedKey::decode(key).expect("key");
    edit(&mut k);
    k.encode_to_vec()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn forged_truncated_reordered_and_revoked_keys_are_refused() {
    let planet = Planet::start(PlanetConfig::new(5)).await.expect("planet");
    let client = Client::new(&planet).await;
    let access = &planet.access;
    let read_only = access
        .restrict(&Restriction {
            disallow_writes: true,
            disallow_deletes: true,
            ..Default::default()
        })
        .expect("restrict");
    let narrowed = read_only
        .restrict(&Restriction {
            disallow_lists: true,
            ..Default::default()
        })
        .expect("restrict");
    let other = planet
        .satellite
        .create_api_key("planet")
        .expect("another key")
        .0;
    let other_narrowed = Access {
        api_key: other,
        ..access.clone()
    }
    .restrict(&Restriction {
        disallow_reads: true,
        ..Default::default()
    })
    .expect("restrict");
    let info = || Req::ProjectInfo(pb::ProjectInfoRequest {});
    for key in [&access.api_key, &read_only.api_key, &narrowed.api_key] {
        assert!(client.call(key, info()).await.is_ok());
    }
    let forged: Vec<(&str, Vec<u8>)> = vec![
        (
            "a caveat removed",
            edited(&narrowed.api_key, |k| {
                k.caveats.remove(0);
            }),
        ),
        (
            "a caveat edited",
            edited(&narrowed.api_key, |k| {
                let mut c = pb::Caveat::decode(k.caveats[0].as_ref()).expect("caveat");
                c.disallow_writes = false;
                k.caveats[0] = c.encode_to_vec().into();
            }),
        ),
        (
            "caveats reordered",
            edited(&narrowed.api_key, |k| k.caveats.swap(0, 1)),
        ),
        (
            "truncated",
            edited(&narrowed.api_key, |k| {
                k.caveats.pop();
            }),
        ),
        (
            "a caveat copied from another key",
            edited(&narrowed.api_key, |k| {
                let o = pb::CaveatedKey::decode(other_narrowed.api_key.as_slice()).expect("key");
                k.caveats.push(o.caveats[0].clone());
            }),
        ),
        (
            "another key's tail",
            edited(&narrowed.api_key, |k| {
                let o = pb::CaveatedKey::decode(other_narrowed.api_key.as_slice()).expect("key");
                k.tail = o.tail;
            }),
        ),
        (
            "cut short",
            narrowed.api_key[..narrowed.api_key.len() - 5].to_vec(),
        ),
        ("garbage", vec![7; 90]),
    ];
    for (what, key) in forged {
        let e = client.call(&key, info()).await.expect_err(what);
        assert_eq!(e.code, pb::ErrorCode::Unauthenticated, "{what}: {e:?}");
        assert!(
            e.message == "the API key is not valid" || e.message == "the API key is malformed",
            "{what}: {}",
            e.message
        );
    }
    // Revocation: by the parent, of the read-only key; the narrowed one
    // goes with it, the root key and a sibling stay.
    let sibling = access
        .restrict(&Restriction {
            disallow_writes: true,
            disallow_deletes: true,
            ..Default::default()
        })
        .expect("restrict");
    // A child cannot revoke its parent.
    let e = client
        .call(
            &read_only.api_key,
            Req::RevokeApiKey(pb::RevokeApiKeyRequest {
                key: access.api_key.clone().into(),
                ..Default::default()
            }),
        )
        .await
        .expect_err("child revoking its parent");
    assert_eq!(e.code, pb::ErrorCode::PermissionDenied);
    let project = planet.project().expect("project");
    project.revoke(&read_only).await.expect("revoke");
    for key in [&read_only.api_key, &narrowed.api_key] {
        let e = client.call(key, info()).await.expect_err("revoked");
        assert_eq!(e.code, pb::ErrorCode::Unauthenticated);
        assert_eq!(e.message, "the API key was revoked");
    }
    for key in [&access.api_key, &sibling.api_key] {
        assert!(client.call(key, info()).await.is_ok());
    }
    assert_eq!(
        planet.satellite.api_keys().revoked_count().expect("count"),
        1
    );
    project.close().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_prefix_grant_cannot_decrypt_outside_its_prefix_even_given_the_data() {
    let planet = Planet::start(PlanetConfig::new(5)).await.expect("planet");
    let project = planet.project().expect("project");
    project.create_bucket(BUCKET).await.expect("bucket");
    let data: Vec<u8> = (0..60_000u32).map(|i| (i * 13) as u8).collect();
    for key in ["team/x", "other/y"] {
        project
            .upload(BUCKET, key, std::io::Cursor::new(data.clone()), None)
            .await
            .expect("upload");
    }
    let team = planet
        .access
        .restrict(&Restriction {
            paths: vec![(BUCKET.into(), "team/".into())],
            ..Default::default()
        })
        .expect("restrict");
    // The satellite cooperates fully: the holder gets the project's
    // unrestricted API key, with only team/'s encryption keys.
    let cooperating = Project::open(Access {
        api_key: planet.access.api_key.clone(),
        ..team.clone()
    })
    .expect("open");
    assert_eq!(
        cooperating
            .read_all(BUCKET, "team/x")
            .await
            .expect("inside"),
        data
    );
    let e = cooperating
        .read_all(BUCKET, "other/y")
        .await
        .expect_err("outside");
    assert!(matches!(e, UplinkError::Scope(_)), "{e}");

    // Hand it other/y's record, segment and pieces anyway.
    let client = Client::new(&planet).await;
    let key = &planet.access.api_key;
    let info = match client
        .call(key, Req::GetObject(object(&planet, "other/y")))
        .await
    {
        Ok(Resp::GetObject(o)) => o,
        other => panic!("{other:?}"),
    };
    let segment = match client
        .call(
            key,
            Req::DownloadSegment(pb::DownloadSegmentRequest {
                bucket: BUCKET.into(),
                encrypted_key: info.encrypted_key.clone(),
                index: 0,
            }),
        )
        .await
    {
        Ok(Resp::DownloadSegment(s)) => s,
        other => panic!("{other:?}"),
    };
    let meta = segment.meta.clone().expect("segment meta");
    let scheme = loam_common::erasure::RedundancyScheme::try_from(
        segment.redundancy.as_ref().expect("scheme"),
    )
    .expect("scheme");
    let piece_key =
        loam_common::KeyPair::try_from(segment.piece_private_key.as_ref()).expect("piece key");
    let pieces = loam_uplink::fetch_pieces(
        &client._endpoint,
        std::time::Duration::from_secs(10),
        std::time::Duration::from_secs(10),
        &segment.limits,
        scheme,
        meta.piece_size as u64,
        &piece_key,
        false,
    )
    .await
    .expect("pieces");
    let row = pieces.into_iter().flatten().next().expect("a piece");

    // Every key the prefix grant holds or can derive, tried on everything.
    let loam_common::scope::KeyScope::Paths(held) = &team.keys else {
        panic!("a narrowed grant holds prefix keys");
    };
    let mut candidates = vec![held[0].key.clone()];
    for last in ["y", "other", "other/y", ""] {
        candidates.push(encryption::object_key_under(&held[0].key, last));
        candidates.push(encryption::next_path_key(&held[0].key, last));
    }
    for path in ["team/y", "team/other/y", "team/x"] {
        candidates.push(team.keys.object_key(BUCKET, path).expect("inside"));
    }
    assert!(team.keys.decrypt_path(BUCKET, &info.encrypted_key).is_err());
    assert!(team.keys.object_key(BUCKET, "other/y").is_err());
    for k in &candidates {
        assert!(encryption::open(k, &info.encrypted_metadata).is_err());
        assert!(encryption::open(k, &meta.encrypted_key).is_err());
        let mut r = row.clone();
        assert!(encryption::decrypt_row(k, 0, &mut r).is_err());
    }
    cooperating.close().await;
    project.close().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn objects_stored_before_path_keys_stay_readable_by_the_root_grant() {
    let planet = Planet::start(PlanetConfig::new(5)).await.expect("planet");
    let project = planet.project().expect("project");
    project.create_bucket(BUCKET).await.expect("bucket");
    // An object sealed as uplinks did before path keys: under the key
    // derived from the root key alone.
    let legacy = planet
        .access
        .keys
        .legacy_object_key(BUCKET, "old/z")
        .expect("root grant");
    let client = Client::new(&planet).await;
    let key = &planet.access.api_key;
    let stream_id = match client
        .call(
            key,
            Req::BeginObject(pb::BeginObjectRequest {
                bucket: BUCKET.into(),
                encrypted_key: enc(&planet, "old/z"),
                ..Default::default()
            }),
        )
        .await
    {
        Ok(Resp::BeginObject(b)) => b.stream_id,
        other => panic!("{other:?}"),
    };
    client
        .call(
            key,
            Req::CommitObject(pb::CommitObjectRequest {
                stream_id,
                encrypted_metadata: encryption::seal(&legacy, br#"{"size":5}"#).into(),
                plain_size: 5,
                inline_data: encryption::seal(&legacy, b"hello").into(),
                ..Default::default()
            }),
        )
        .await
        .expect("commit");
    assert_eq!(
        project.read_all(BUCKET, "old/z").await.expect("root reads"),
        b"hello"
    );
    assert_eq!(project.stat(BUCKET, "old/z").await.expect("stat").size, 5);
    // A prefix grant cannot: the old key needs the root key.
    let old = planet
        .access
        .restrict(&Restriction {
            paths: vec![(BUCKET.into(), "old/".into())],
            ..Default::default()
        })
        .expect("restrict");
    let holder = Project::open(old).expect("open");
    assert!(holder.read_all(BUCKET, "old/z").await.is_err());
    // A move (or server-side copy) by the root grant reseals it under the
    // path key: then the prefix grant reads it.
    project
        .move_object(BUCKET, "old/z", BUCKET, "old/z2")
        .await
        .expect("move");
    assert_eq!(
        holder.read_all(BUCKET, "old/z2").await.expect("resealed"),
        b"hello"
    );
    holder.close().await;
    project.close().await;
}
