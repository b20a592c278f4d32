//! Market listings on the in-process test network: an owner publishes a
//! dataset (public facts only, the record count the satellite's own),
//! another project finds it, and only the owner may take it down.

use loam_common::access::{Access, Restriction};
use loam_common::pb;
use loam_testnet::planet::{Planet, PlanetConfig};
use loam_uplink::dataset::DatasetOptions;
use loam_uplink::market::ListingOptions;
use loam_uplink::{Project, UplinkError};

fn refusal(e: UplinkError) -> (pb::ErrorCode, String) {
    match e {
        UplinkError::Satellite(r) => (r.code, r.message),
        other => panic!("expected a satellite refusal, got {other}"),
    }
}

fn listing(title: &str) -> ListingOptions {
    ListingOptions {
        title: title.into(),
        description: "8x8 handwritten digits, one row per image".into(),
        license: "CC-BY-4.0".into(),
        tags: vec!["Vision".into(), "digits".into()],
        price_per_1000: 25,
        hide_columns: false,
        terms: pb::ListingTerms {
            allowed_models: vec!["mlp".into()],
            max_rounds: 20,
            min_records_per_task: 50,
            require_verification: 0.1,
            expires_unix_ms: 0,
        },
    }
}

/// The planet's project with the digits training split as the datasets
/// `clinic/NAME` for each of `names`, and a plain object `clinic/plain`.
async fn owner_with_digits(planet: &Planet, names: &[&str]) -> Project {
    let owner = planet.project().expect("project");
    owner.create_bucket("clinic").await.expect("bucket");
    let (train, _) = loam_testnet::digits_split();
    let options = DatasetOptions {
        image: None,
        label: "label".into(),
        task: Default::default(),
        segment_size: Some(64 << 10),
        compute: true,
        shuffle: None,
    };
    for key in names {
        owner
            .upload_dataset("clinic", key, train.clone().into_bytes(), &options, None)
            .await
            .expect("dataset");
    }
    owner
        .upload(
            "clinic",
            "plain",
            std::io::Cursor::new(vec![1u8; 10_000]),
            None,
        )
        .await
        .expect("upload");
    owner
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_owner_publishes_others_find_only_the_owner_unpublishes() {
    let planet = Planet::start(PlanetConfig::new(5)).await.expect("planet");
    let owner = owner_with_digits(&planet, &["digits", "hidden"]).await;

    // Another project on the same satellite.
    let (key, _, salt) = planet
        .satellite
        .create_api_key("consumer")
        .expect("consumer key");
    let consumer = Project::open(
        Access::derive(
            planet.satellite_url.clone(),
            key,
            "another passphrase",
            &salt,
        )
        .expect("grant"),
    )
    .expect("open");

    let published = owner
        .publish_dataset("clinic", "digits", &listing("Digits, clinic A"))
        .await
        .expect("publish");
    // The satellite counted the records itself, from the committed rows.
    assert_eq!(published.records, 1437);
    assert_eq!(published.owner, "planet");
    assert_eq!(published.features, 64);
    assert_eq!(published.classes.len(), 10);
    assert_eq!(published.columns.len(), 65);
    assert_eq!(published.tags, vec!["vision", "digits"]);
    let hidden = owner
        .publish_dataset(
            "clinic",
            "hidden",
            &ListingOptions {
                hide_columns: true,
                tags: vec!["tabular".into()],
                ..listing("Digits, columns hidden")
            },
        )
        .await
        .expect("publish");
    assert!(hidden.columns.is_empty());

    // Found by another project, by tag and by words.
    let all = consumer.listings("", "", false).await.expect("ls");
    assert_eq!(all.len(), 2);
    let by_tag = consumer.listings("vision", "", false).await.expect("ls");
    assert_eq!(by_tag.len(), 1);
    assert_eq!(by_tag[0].id, published.id);
    let by_words = consumer
        .listings("", "columns HIDDEN", false)
        .await
        .expect("ls");
    assert_eq!(by_words.len(), 1);
    assert_eq!(by_words[0].id, hidden.id);
    assert_eq!(
        consumer.listing(&published.id).await.expect("show").title,
        "Digits, clinic A"
    );

    // Refusals, each one line.
    let (code, msg) = refusal(
        owner
            .publish_dataset("clinic", "digits", &listing("again"))
            .await
            .expect_err("twice"),
    );
    assert_eq!(code, pb::ErrorCode::AlreadyExists);
    assert!(msg.contains("already published"), "{msg}");
    let e = owner
        .publish_dataset("clinic", "plain", &listing("not a dataset"))
        .await
        .expect_err("not a dataset");
    assert!(e.to_string().contains("not a dataset"), "{e}");
    for (bad, why) in [
        (
            ListingOptions {
                title: " ".into(),
                ..listing("")
            },
            "title",
        ),
        (
            ListingOptions {
                terms: pb::ListingTerms {
                    allowed_models: vec!["transformer".into()],
                    ..Default::default()
                },
                ..listing("x")
            },
            "--allow-model",
        ),
        (
            ListingOptions {
                terms: pb::ListingTerms {
                    require_verification: 2.0,
                    ..Default::default()
                },
                ..listing("x")
            },
            "--require-verification",
        ),
        (
            ListingOptions {
                terms: pb::ListingTerms {
                    expires_unix_ms: 1_000,
                    ..Default::default()
                },
                ..listing("x")
            },
            "--expires",
        ),
    ] {
        let (code, msg) = refusal(
            owner
                .publish_dataset("clinic", "hidden", &bad)
                .await
                .expect_err(why),
        );
        assert_eq!(code, pb::ErrorCode::InvalidArgument, "{why}: {msg}");
        assert!(msg.contains(why), "{why}: {msg}");
    }
    // A read-only grant of the owner's may not publish.
    let read_only = Project::open(
        planet
            .access
            .restrict(&Restriction {
                disallow_writes: true,
                disallow_deletes: true,
                ..Default::default()
            })
            .expect("restrict"),
    )
    .expect("open");
    owner.unpublish(&hidden.id).await.expect("unpublish");
    let (code, _) = refusal(
        read_only
            .publish_dataset("clinic", "hidden", &listing("x"))
            .await
            .expect_err("read-only"),
    );
    assert_eq!(code, pb::ErrorCode::PermissionDenied);
    // Only the owner takes a listing down.
    let (code, _) = refusal(
        consumer
            .unpublish(&published.id)
            .await
            .expect_err("not the owner"),
    );
    assert_eq!(code, pb::ErrorCode::PermissionDenied);
    let down = owner.unpublish(&published.id).await.expect("unpublish");
    assert!(down.unpublished_unix_ms > 0);
    assert!(
        consumer
            .listings("", "", false)
            .await
            .expect("ls")
            .is_empty()
    );
    assert_eq!(consumer.listings("", "", true).await.expect("ls").len(), 2);
    // Published again after being taken down: a new listing.
    let again = owner
        .publish_dataset("clinic", "digits", &listing("Digits, clinic A"))
        .await
        .expect("publish again");
    assert_ne!(again.id, published.id);
    read_only.close().await;
    consumer.close().await;
    owner.close().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_satellite_counts_records_and_sets_its_own_facts_whatever_the_owner_claims() {
    use loam_common::pb::satellite_request::Request as Req;
    use loam_common::pb::satellite_response::Response as Resp;
    let planet = Planet::start(PlanetConfig::new(5)).await.expect("planet");
    let owner = owner_with_digits(&planet, &["digits"]).await;
    let (_endpoint, conn) = planet.satellite_connection().await.expect("connect");
    let path = |key: &str| -> bytes::Bytes {
        planet
            .access
            .keys
            .encrypt_path("clinic", key)
            .expect("root key")
            .into()
    };
    // Keys for every data row (their sealed bytes are opaque to the
    // satellite), from a plan as the uplink makes one.
    let plan = match loam_common::rpc::satellite(
        &conn,
        &planet.access.api_key,
        Req::PlanJob(pb::PlanJobRequest {
            bucket: "clinic".into(),
            encrypted_key: path("digits"),
            listing: true,
            device: pb::Device::Cpu as i32,
        }),
    )
    .await
    {
        Ok(Resp::PlanJob(p)) => p,
        other => panic!("{other:?}"),
    };
    let tasks: Vec<pb::TaskKeys> = plan
        .tasks
        .iter()
        .map(|t| pb::TaskKeys {
            segment: t.segment,
            row: t.row,
            keys: t
                .candidates
                .iter()
                .map(|c| pb::SealedTaskKey {
                    node_id: c.node_id.clone(),
                    sealed: vec![7u8; 80].into(),
                })
                .collect(),
        })
        .collect();
    let publish = |key: &str, claims: pb::Listing, tasks: Vec<pb::TaskKeys>| {
        Req::PublishListing(pb::PublishListingRequest {
            bucket: "clinic".into(),
            encrypted_key: path(key),
            listing: Some(claims),
            tasks,
            key_tag: vec![1; 16].into(),
            ..Default::default()
        })
    };
    let claims = pb::Listing {
        id: vec![0; 8].into(),
        owner: "somebody famous".into(),
        title: "Digits".into(),
        records: 1_000_000_000,
        jobs: 5_000,
        created_unix_ms: 1,
        unpublished_unix_ms: 0,
        features: 64,
        feature_mean: vec![0.0; 64],
        feature_std: vec![1.0; 64],
        columns_digest: vec![9; 32].into(),
        classes: (0..10).map(|c| c.to_string()).collect(),
        ..Default::default()
    };
    // Keys that leave a data row out are refused: a job would stall on it.
    match loam_common::rpc::satellite(
        &conn,
        &planet.access.api_key,
        publish("digits", claims.clone(), tasks[1..].to_vec()),
    )
    .await
    {
        Err(loam_common::rpc::CallError::Remote(e)) => {
            assert_eq!(e.code, pb::ErrorCode::InvalidArgument);
            assert!(e.message.contains("sealed keys"), "{}", e.message);
        }
        other => panic!("{other:?}"),
    }
    let got = match loam_common::rpc::satellite(
        &conn,
        &planet.access.api_key,
        publish("digits", claims.clone(), tasks.clone()),
    )
    .await
    {
        Ok(Resp::PublishListing(l)) => l,
        other => panic!("{other:?}"),
    };
    assert_eq!(got.records, 1437, "the satellite's count, not the claim");
    assert_eq!(got.owner, "planet");
    assert_eq!(got.jobs, 0);
    assert_ne!(got.id.to_vec(), vec![0; 8]);
    assert!(got.created_unix_ms > 1);
    // An object that is not a dataset is refused by the satellite too.
    match loam_common::rpc::satellite(
        &conn,
        &planet.access.api_key,
        publish("plain", claims, tasks),
    )
    .await
    {
        Err(loam_common::rpc::CallError::Remote(e)) => {
            assert_eq!(e.code, pb::ErrorCode::FailedPrecondition);
            assert!(e.message.contains("not a dataset"), "{}", e.message);
        }
        other => panic!("{other:?}"),
    }
    owner.close().await;
}
