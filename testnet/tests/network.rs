//! End-to-end behaviour of the storage path on the in-process test network.

use loam_common::access::Access;
use loam_testnet::planet::{Planet, PlanetConfig};
use loam_uplink::{Project, UplinkError};
use rand::{RngCore, SeedableRng};

fn random_bytes(len: usize, seed: u64) -> Vec<u8> {
    let mut v = vec![0u8; len];
    rand::rngs::StdRng::seed_from_u64(seed).fill_bytes(&mut v);
    v
}

async fn download(project: &Project, bucket: &str, key: &str) -> Result<Vec<u8>, UplinkError> {
    let mut out = Vec::new();
    project.download(bucket, key, &mut out, None).await?;
    Ok(out)
}

/// Downloads into a file, as `uplink cp` does: each row streams into its
/// place, or the segment is fetched whole when a data piece cannot be had.
async fn download_file(project: &Project, bucket: &str, key: &str) -> anyhow::Result<Vec<u8>> {
    let dir = tempfile::tempdir()?;
    let path = dir.path().join("out");
    let n = project
        .download_to_file(bucket, key, std::fs::File::create(&path)?, None)
        .await?;
    let bytes = std::fs::read(&path)?;
    anyhow::ensure!(
        n == bytes.len() as u64,
        "{n} bytes reported, {} written",
        bytes.len()
    );
    Ok(bytes)
}

fn small_segments(c: &mut loam_satellite::Config) {
    // Several segments without megabytes of test data.
    c.max_segment_size = 256 * 1024;
}

async fn six_nodes_small_segments() -> anyhow::Result<(Planet, Project)> {
    let mut config = PlanetConfig::new(6);
    config.reconfigure_satellite = Some(Box::new(small_segments));
    let planet = Planet::start(config).await?;
    let project = planet.project()?;
    Ok((planet, project))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn objects_round_trip_across_segments_and_inline() -> anyhow::Result<()> {
    let (planet, project) = six_nodes_small_segments().await?;
    project.create_bucket("photos").await?;

    let big = random_bytes(1_000_000, 1); // 4 segments
    project
        .upload(
            "photos",
            "2024/big.bin",
            std::io::Cursor::new(big.clone()),
            None,
        )
        .await?;
    assert_eq!(download(&project, "photos", "2024/big.bin").await?, big);
    let dir = tempfile::tempdir()?;
    let path = dir.path().join("big.bin");
    let n = project
        .download_to_file(
            "photos",
            "2024/big.bin",
            std::fs::File::create(&path)?,
            None,
        )
        .await?;
    assert_eq!(n, big.len() as u64);
    assert_eq!(
        std::fs::read(&path)?,
        big,
        "positional writes put every row in place"
    );

    // The same from a file: each segment is read from its range of the
    // file, a stripe at a time; a small file is still inline.
    let up = project
        .upload_file("photos", "from-file", std::fs::File::open(&path)?, None)
        .await?;
    assert_eq!((up.size, up.segments), (big.len() as u64, 4));
    assert_eq!(download(&project, "photos", "from-file").await?, big);
    let note = dir.path().join("note");
    std::fs::write(&note, b"inline from a file")?;
    let up = project
        .upload_file("photos", "note", std::fs::File::open(&note)?, None)
        .await?;
    assert_eq!(up.segments, 0);
    assert_eq!(
        download(&project, "photos", "note").await?,
        b"inline from a file"
    );

    let small = b"a few bytes stored inline".to_vec();
    let item = project
        .upload(
            "photos",
            "note.txt",
            std::io::Cursor::new(small.clone()),
            None,
        )
        .await?;
    assert_eq!(item.segments, 0, "small objects are inline");
    assert_eq!(download(&project, "photos", "note.txt").await?, small);

    let empty = project
        .upload("photos", "empty", std::io::Cursor::new(Vec::new()), None)
        .await?;
    assert_eq!(empty.size, 0);
    assert!(download(&project, "photos", "empty").await?.is_empty());

    // Overwrite replaces.
    let other = random_bytes(300_000, 2);
    project
        .upload(
            "photos",
            "2024/big.bin",
            std::io::Cursor::new(other.clone()),
            None,
        )
        .await?;
    assert_eq!(download(&project, "photos", "2024/big.bin").await?, other);
    assert_eq!(project.stat("photos", "2024/big.bin").await?.size, 300_000);
    planet.shutdown().await;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn listing_by_prefix_and_deleting() -> anyhow::Result<()> {
    let planet = Planet::start(PlanetConfig::new(5)).await?;
    let project = planet.project()?;
    project.create_bucket("docs").await?;
    for key in ["a/1.txt", "a/2.txt", "a/b/3.txt", "top.txt"] {
        project
            .upload(
                "docs",
                key,
                std::io::Cursor::new(key.as_bytes().to_vec()),
                None,
            )
            .await?;
    }
    let root: Vec<(String, bool)> = project
        .list("docs", "", false)
        .await?
        .into_iter()
        .map(|i| (i.key, i.is_prefix))
        .collect();
    assert_eq!(root.len(), 2);
    assert!(root.contains(&("a/".to_string(), true)));
    assert!(root.contains(&("top.txt".to_string(), false)));
    let mut under_a: Vec<String> = project
        .list("docs", "a/", false)
        .await?
        .into_iter()
        .map(|i| i.key)
        .collect();
    under_a.sort();
    assert_eq!(under_a, ["a/1.txt", "a/2.txt", "a/b/"]);
    assert_eq!(project.list("docs", "", true).await?.len(), 4);

    assert!(matches!(
        project.delete_bucket("docs").await,
        Err(UplinkError::BucketNotEmpty(_))
    ));
    for key in ["a/1.txt", "a/2.txt", "a/b/3.txt", "top.txt"] {
        project.delete("docs", key).await?;
    }
    assert!(matches!(
        project.delete("docs", "top.txt").await,
        Err(UplinkError::ObjectNotFound(_))
    ));
    assert!(project.list("docs", "", true).await?.is_empty());
    project.delete_bucket("docs").await?;
    assert!(matches!(
        project.bucket("docs").await,
        Err(UplinkError::BucketNotFound(_))
    ));
    planet.shutdown().await;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn clear_errors_for_common_mistakes() -> anyhow::Result<()> {
    let planet = Planet::start(PlanetConfig::new(5)).await?;
    let project = planet.project()?;
    assert!(matches!(
        project
            .upload("nope", "k", std::io::Cursor::new(vec![1u8; 10]), None)
            .await,
        Err(UplinkError::BucketNotFound(_))
    ));
    project.create_bucket("mine").await?;
    assert!(matches!(
        project.create_bucket("mine").await,
        Err(UplinkError::BucketExists(_))
    ));
    assert!(matches!(
        download(&project, "mine", "missing").await,
        Err(UplinkError::ObjectNotFound(_))
    ));

    // Same API key, another passphrase: told so, not "not found".
    let salt = planet
        .satellite
        .project_info(
            &planet
                .satellite
                .authenticate(&planet.access.api_key)?
                .project,
        )?
        .salt;
    let wrong = Access::derive(
        planet.access.satellite.clone(),
        planet.access.api_key.clone(),
        "not the passphrase",
        &salt,
    )?;
    let intruder = Project::open(wrong)?;
    assert!(matches!(
        intruder.list("mine", "", true).await,
        Err(UplinkError::WrongPassphrase(_))
    ));

    // An unknown API key is refused.
    let mut forged = planet.access.clone();
    forged.api_key = vec![7u8; 32];
    assert!(Project::open(forged)?.list_buckets().await.is_err());
    planet.shutdown().await;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn too_few_nodes_is_reported() -> anyhow::Result<()> {
    let mut config = PlanetConfig::new(3);
    config.redundancy = "2/3/4/5".parse()?;
    let planet = Planet::start(config).await?;
    let project = planet.project()?;
    project.create_bucket("b01").await?;
    let err = project
        .upload(
            "b01",
            "k",
            std::io::Cursor::new(random_bytes(100_000, 3)),
            None,
        )
        .await
        .expect_err("3 nodes cannot hold 4 pieces");
    assert!(matches!(err, UplinkError::TooFewNodes(_)), "{err}");
    assert!(err.to_string().contains("need 4, found 3"), "{err}");
    planet.shutdown().await;
    Ok(())
}

/// Five nodes (2-of-5), small segments, and a client that gives up on a
/// node quickly (for tests that stop nodes).
async fn five_nodes_quick_to_give_up() -> anyhow::Result<(Planet, Project)> {
    let mut config = PlanetConfig::new(5);
    config.reconfigure_satellite = Some(Box::new(small_segments));
    let planet = Planet::start(config).await?;
    let project = Project::open_with(
        planet.access.clone(),
        loam_uplink::UplinkConfig {
            dial_timeout: std::time::Duration::from_millis(500),
            hedge_after: std::time::Duration::from_millis(200),
            ..Default::default()
        },
    )?;
    Ok((planet, project))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_object_in_parts_streams_into_its_file() -> anyhow::Result<()> {
    let (planet, project) = six_nodes_small_segments().await?;
    project.create_bucket("parts").await?;
    // Parts of several segments, one shorter than a segment, one tiny: the
    // segments have uneven sizes and places the parts decide.
    let parts = [
        random_bytes(600_000, 11),
        random_bytes(100_000, 12),
        random_bytes(3, 13),
    ];
    let id = project
        .begin_multipart("parts", "joined", &Default::default())
        .await?;
    for (number, part) in (1u32..).zip(&parts) {
        project
            .upload_part(
                "parts",
                "joined",
                &id,
                number,
                std::io::Cursor::new(part.clone()),
                || Ok(String::new()),
                None,
            )
            .await?;
    }
    project
        .complete_multipart("parts", "joined", &id, &[1, 2, 3], Default::default())
        .await?;
    let whole = parts.concat();
    assert_eq!(download_file(&project, "parts", "joined").await?, whole);
    assert_eq!(download(&project, "parts", "joined").await?, whole);
    planet.shutdown().await;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn downloads_survive_missing_nodes() -> anyhow::Result<()> {
    let (mut planet, project) = five_nodes_quick_to_give_up().await?;
    project.create_bucket("keep").await?;
    let data = random_bytes(700_000, 4);
    project
        .upload("keep", "obj", std::io::Cursor::new(data.clone()), None)
        .await?;
    // 2-of-5: any two nodes may go.
    planet.stop_node(0).await;
    planet.stop_node(2).await;
    assert_eq!(download(&project, "keep", "obj").await?, data);
    assert_eq!(download_file(&project, "keep", "obj").await?, data);
    planet.restart_node(0).await?;
    assert_eq!(download(&project, "keep", "obj").await?, data);
    assert_eq!(download_file(&project, "keep", "obj").await?, data);
    planet.shutdown().await;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn corrupt_piece_is_routed_around() -> anyhow::Result<()> {
    let planet = Planet::start(PlanetConfig::new(5)).await?;
    let project = planet.project()?;
    project.create_bucket("rot").await?;
    let data = random_bytes(200_000, 5);
    project
        .upload("rot", "obj", std::io::Cursor::new(data.clone()), None)
        .await?;
    // Flip a byte in every stored piece file of one node.
    let mut flipped = 0;
    for entry in walk(&planet.nodes[0].dir.join("storage/pieces")) {
        let mut bytes = std::fs::read(&entry)?;
        bytes[10] ^= 0xff;
        std::fs::write(&entry, bytes)?;
        flipped += 1;
    }
    if flipped == 0 {
        // Node 0 got no piece (long tail); corrupt node 1 instead.
        for entry in walk(&planet.nodes[1].dir.join("storage/pieces")) {
            let mut bytes = std::fs::read(&entry)?;
            bytes[10] ^= 0xff;
            std::fs::write(&entry, bytes)?;
        }
    }
    assert_eq!(download(&project, "rot", "obj").await?, data);
    // Into a file, a corrupt data piece fails its block's tag: the segment
    // is fetched again whole, every piece checked.
    assert_eq!(download_file(&project, "rot", "obj").await?, data);
    planet.shutdown().await;
    Ok(())
}

fn walk(dir: &std::path::Path) -> Vec<std::path::PathBuf> {
    let mut out = Vec::new();
    let Ok(entries) = std::fs::read_dir(dir) else {
        return out;
    };
    for e in entries.flatten() {
        let p = e.path();
        if p.is_dir() {
            out.extend(walk(&p));
        } else {
            out.push(p);
        }
    }
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ranges_fetch_only_the_rows_they_need() -> anyhow::Result<()> {
    let (mut planet, project) = five_nodes_quick_to_give_up().await?;
    project.create_bucket("ranges").await?;
    let range = |key: &'static str, start: u64, end: u64| {
        let project = &project;
        async move {
            let mut out = Vec::new();
            project
                .download_range("ranges", key, start, Some(end), &mut out, None)
                .await
                .map(|_| out)
        }
    };

    // Three segments of at most 256 KiB, two rows each (2-of-5): ranges
    // inside a row, across rows, across segments, the first and last byte.
    let long = random_bytes(700_000, 7);
    project
        .upload("ranges", "long", std::io::Cursor::new(long.clone()), None)
        .await?;
    let mut rng = rand::rngs::StdRng::seed_from_u64(8);
    let mut cases = vec![
        (0, 0),
        (699_999, 699_999),
        (0, 699_999),
        (131_071, 131_072),
        (262_143, 262_144),
        (200_000, 400_000),
        (140_000, 150_000),
    ];
    for _ in 0..20 {
        let a = u64::from(rng.next_u32()) % 700_000;
        let b = a + u64::from(rng.next_u32()) % (700_000 - a);
        cases.push((a, b));
    }
    for (a, b) in cases {
        let got = range("long", a, b).await?;
        assert!(
            got == long[a as usize..=b as usize],
            "range {a}..={b}: {} bytes back",
            got.len()
        );
    }

    // One segment of two rows; only the node holding row 0 stays up. A
    // range inside row 0 needs no other piece; one that touches row 1
    // cannot be served (one piece of the two any decode needs).
    // (The only object then: `holder_of_row` looks at the first segment.)
    project.delete("ranges", "long").await?;
    let short = random_bytes(200_000, 9);
    project
        .upload("ranges", "short", std::io::Cursor::new(short.clone()), None)
        .await?;
    let keep = planet
        .holder_of_row(0)
        .expect("a node holds row 0 of the segment");
    for i in 0..planet.nodes.len() {
        if i != keep {
            planet.stop_node(i).await;
        }
    }
    let mut out = Vec::new();
    project
        .download_range("ranges", "short", 10, Some(1009), &mut out, None)
        .await?;
    assert!(
        out == short[10..1010],
        "row 0 alone serves a range inside it"
    );
    for (a, b) in [(150_000, 150_099), (99_990, 100_009)] {
        let mut out = Vec::new();
        let err = project
            .download_range("ranges", "short", a, Some(b), &mut out, None)
            .await
            .expect_err("row 1's piece is gone and so is every parity piece");
        assert!(err.to_string().contains("pieces"), "{err}");
    }
    assert!(download(&project, "ranges", "short").await.is_err());
    planet.shutdown().await;
    Ok(())
}
