//! Nodes that lie about themselves, on the in-process test network: each
//! lie is caught, not paid, and counted against the liar. (Lies about
//! training — weights and sample counts — are in `compute.rs`.)

use loam_common::pb;
use loam_storagenode::adversary::Lies;
use loam_testnet::planet::{Planet, PlanetConfig};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_answering_audits_with_errors_fails_them_and_is_disqualified() -> anyhow::Result<()>
{
    // Node 0 lost its data and answers every audit "internal error", which
    // once only suspended it while it kept being paid for storage.
    let mut config = PlanetConfig::new(6).liar(
        0,
        Lies {
            audit_error: Some(pb::ErrorCode::Internal),
            ..Lies::default()
        },
    );
    config.reconfigure_satellite = Some(Box::new(|c| {
        c.max_segment_size = 64 * 1024;
        c.audit.max_reverifies = 2;
    }));
    let planet = Planet::start(config).await?;
    let project = planet.project()?;
    project.create_bucket("bk").await?;
    for i in 0..6 {
        project
            .upload(
                "bk",
                &format!("o{i}"),
                std::io::Cursor::new(vec![i as u8; 100_000]),
                None,
            )
            .await?;
    }
    let liar = planet.nodes[0].id;
    let mut cycles = 0;
    while planet.reputation.get(&liar)?.disqualified_unix_ms == 0 {
        planet.auditor.run_once().await;
        cycles += 1;
        assert!(cycles < 1000, "never disqualified");
    }
    let r = planet.reputation.get(&liar)?;
    assert!(r.audits_failed > 0, "{r:?}");
    assert!(
        planet
            .satellite_overlay
            .get(&liar)
            .expect("known")
            .disqualified_ms
            .is_some()
    );
    for n in &planet.nodes[1..] {
        let r = planet.reputation.get(&n.id)?;
        assert_eq!(r.audits_failed, 0, "honest node failed an audit: {r:?}");
        assert_eq!(r.disqualified_unix_ms, 0);
    }
    eprintln!("an erroring node was disqualified after {cycles} audit cycles");
    planet.shutdown().await;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_the_satellite_cannot_dial_back_gets_no_pieces() -> anyhow::Result<()> {
    // Node 0 advertises an address where nothing listens (a node behind a
    // closed port, or one lying about where it is).
    let mut config = PlanetConfig::new(6);
    config.reconfigure_node = Some(Box::new(|i, c| {
        if i == 0 {
            c.external_address = "127.0.0.1:9".into();
        }
    }));
    let planet = Planet::start(config).await?;
    let liar = planet.nodes[0].id;
    let node = planet.satellite_overlay.get(&liar).expect("checked in");
    assert!(node.unreachable);
    assert_eq!(
        node.observed_ip,
        Some("127.0.0.1".parse()?),
        "the subnet rule uses where check-ins come from"
    );
    let honest = planet
        .satellite_overlay
        .get(&planet.nodes[1].id)
        .expect("known");
    assert!(!honest.unreachable);

    let project = planet.project()?;
    project.create_bucket("bk").await?;
    for i in 0..4 {
        project
            .upload(
                "bk",
                &format!("o{i}"),
                std::io::Cursor::new(vec![i as u8; 50_000]),
                None,
            )
            .await?;
    }
    let placed = planet.satellite.piece_placements()?;
    assert!(!placed.is_empty());
    assert!(placed.iter().all(|(n, _)| *n != liar), "no piece on it");

    // Its operator is told why.
    let addr = planet.nodes[0].http_addr.expect("running");
    let (status, body) = loam_testnet::http_request(&format!("http://{addr}/health")).await?;
    assert_eq!(status, 503, "{body}");
    assert!(body.contains("cannot reach this node"), "{body}");
    planet.shutdown().await;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn capacity_and_free_space_claims_buy_nothing() -> anyhow::Result<()> {
    // Node 0 claims a million cores, a thousand GPUs and endless disk.
    let config = PlanetConfig::new(5).liar(
        0,
        Lies {
            compute: Some((1_000_000, 1_000)),
            free_disk: Some(i64::MAX),
            ..Lies::default()
        },
    );
    let planet = Planet::start(config).await?;
    let node = planet
        .satellite_overlay
        .get(&planet.nodes[0].id)
        .expect("known");
    use loam_satellite::overlay::*;
    assert_eq!(node.capabilities.cpu_cores, MAX_CLAIMED_CORES);
    assert_eq!(node.capabilities.gpus, MAX_CLAIMED_GPUS);
    assert_eq!(node.capabilities.max_tasks, MAX_CLAIMED_TASKS);
    assert_eq!(node.free_disk, MAX_CLAIMED_FREE_DISK);
    planet.shutdown().await;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_dashboard_refuses_foreign_hosts_and_cross_site_posts() -> anyhow::Result<()> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let planet = Planet::start(PlanetConfig::new(1)).await?;
    let addr = planet.nodes[0].http_addr.expect("running");
    let send = |req: String| async move {
        let mut s = tokio::net::TcpStream::connect(addr).await?;
        s.write_all(req.as_bytes()).await?;
        let mut out = String::new();
        s.read_to_string(&mut out).await?;
        anyhow::Ok(out)
    };
    let status = |resp: &str| resp.split_whitespace().nth(1).unwrap_or("").to_string();
    let ok = send(format!(
        "GET /api/sno HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n"
    ))
    .await?;
    assert_eq!(status(&ok), "200", "{ok}");
    // DNS rebinding: a page on evil.example whose name now points here.
    let rebound = send(
        "GET /api/sno HTTP/1.1\r\nHost: evil.example:14002\r\nConnection: close\r\n\r\n".into(),
    )
    .await?;
    assert_eq!(status(&rebound), "403", "{rebound}");
    // CSRF: a form on another site posting to a chore.
    let csrf = send(format!(
        "POST /api/chores/check-in HTTP/1.1\r\nHost: {addr}\r\nOrigin: https://evil.example\r\n\
         Content-Length: 0\r\nConnection: close\r\n\r\n"
    ))
    .await?;
    assert_eq!(status(&csrf), "403", "{csrf}");
    // The node's own page, and scripts without an Origin, may.
    let same = send(format!(
        "POST /api/chores/check-in HTTP/1.1\r\nHost: {addr}\r\nOrigin: http://{addr}\r\n\
         Content-Length: 0\r\nConnection: close\r\n\r\n"
    ))
    .await?;
    assert_eq!(status(&same), "200", "{same}");
    planet.shutdown().await;
    Ok(())
}

/// A piece store whose disk can be made full or failing, and that counts
/// the piece bytes read from it.
struct FaultyBlobs {
    inner: std::sync::Arc<dyn loam_storagenode::piecestore::Blobs>,
    full: std::sync::Arc<std::sync::atomic::AtomicBool>,
    read: std::sync::Arc<std::sync::atomic::AtomicU64>,
}

impl FaultyBlobs {
    /// A hook that wraps a node's store; returns it with the disk's switch
    /// and its read counter.
    fn hook() -> (
        loam_storagenode::adversary::BlobsHook,
        std::sync::Arc<std::sync::atomic::AtomicBool>,
        std::sync::Arc<std::sync::atomic::AtomicU64>,
    ) {
        let full = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let read = std::sync::Arc::new(std::sync::atomic::AtomicU64::new(0));
        let (f, r) = (full.clone(), read.clone());
        let hook: loam_storagenode::adversary::BlobsHook = std::sync::Arc::new(move |inner| {
            std::sync::Arc::new(FaultyBlobs {
                inner,
                full: f.clone(),
                read: r.clone(),
            })
        });
        (hook, full, read)
    }
}

struct FaultyWriter {
    inner: Box<dyn loam_storagenode::piecestore::BlobWriter>,
    full: std::sync::Arc<std::sync::atomic::AtomicBool>,
}

fn enospc() -> std::io::Error {
    std::io::Error::from_raw_os_error(28)
}

impl loam_storagenode::piecestore::BlobWriter for FaultyWriter {
    fn write(&mut self, data: &[u8]) -> std::io::Result<()> {
        if self.full.load(std::sync::atomic::Ordering::SeqCst) {
            return Err(enospc());
        }
        self.inner.write(data)
    }

    fn into_temp(self: Box<Self>) -> (std::fs::File, std::path::PathBuf) {
        self.inner.into_temp()
    }
}

impl loam_storagenode::piecestore::Blobs for FaultyBlobs {
    fn create(&self) -> std::io::Result<Box<dyn loam_storagenode::piecestore::BlobWriter>> {
        Ok(Box::new(FaultyWriter {
            inner: self.inner.create()?,
            full: self.full.clone(),
        }))
    }
    fn commit(
        &self,
        writer: Box<dyn loam_storagenode::piecestore::BlobWriter>,
        satellite: &loam_common::NodeId,
        piece: &loam_common::orders::PieceId,
    ) -> std::io::Result<()> {
        if self.full.load(std::sync::atomic::Ordering::SeqCst) {
            return Err(enospc());
        }
        self.inner.commit(writer, satellite, piece)
    }
    fn read(
        &self,
        satellite: &loam_common::NodeId,
        piece: &loam_common::orders::PieceId,
        offset: u64,
        len: usize,
    ) -> std::io::Result<bytes::Bytes> {
        if self.full.load(std::sync::atomic::Ordering::SeqCst) {
            // A failing disk: reads fail too (EIO).
            return Err(std::io::Error::from_raw_os_error(5));
        }
        self.read
            .fetch_add(len as u64, std::sync::atomic::Ordering::SeqCst);
        self.inner.read(satellite, piece, offset, len)
    }
    fn delete(
        &self,
        satellite: &loam_common::NodeId,
        piece: &loam_common::orders::PieceId,
    ) -> std::io::Result<()> {
        self.inner.delete(satellite, piece)
    }
    fn trash(
        &self,
        satellite: &loam_common::NodeId,
        piece: &loam_common::orders::PieceId,
        now_ms: i64,
    ) -> std::io::Result<()> {
        self.inner.trash(satellite, piece, now_ms)
    }
    fn empty_trash(&self, before_ms: i64) -> std::io::Result<u64> {
        self.inner.empty_trash(before_ms)
    }
    fn available(&self) -> std::io::Result<u64> {
        if self.full.load(std::sync::atomic::Ordering::SeqCst) {
            return Ok(0);
        }
        self.inner.available()
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_whose_disk_fills_or_fails_acknowledges_nothing_and_says_so() -> anyhow::Result<()> {
    let (hook, full, _) = FaultyBlobs::hook();
    let planet = Planet::start(PlanetConfig::new(5).liar(
        0,
        Lies {
            blobs: Some(hook),
            ..Lies::default()
        },
    ))
    .await?;
    let project = planet.project()?;
    project.create_bucket("bk").await?;
    let id = planet.nodes[0].id;
    let held = || -> anyhow::Result<usize> {
        Ok(planet
            .satellite
            .piece_placements()?
            .iter()
            .filter(|(n, _)| *n == id)
            .count())
    };
    // The disk fills up (and reads start failing) before any upload.
    full.store(true, std::sync::atomic::Ordering::SeqCst);
    for i in 0..6 {
        let data = vec![i as u8; 60_000];
        project
            .upload(
                "bk",
                &format!("o{i}"),
                std::io::Cursor::new(data.clone()),
                None,
            )
            .await?;
        let mut out = Vec::new();
        project
            .download("bk", &format!("o{i}"), &mut out, None)
            .await?;
        assert_eq!(out, data, "the network still stores and serves");
    }
    // No piece acknowledged after the error: the satellite places none of
    // the new segments on the node.
    assert_eq!(held()?, 0, "a piece was acknowledged after ENOSPC");
    assert_eq!(
        planet.nodes[0]
            .piecestore
            .as_ref()
            .expect("running")
            .db()
            .usage()
            .pieces,
        0
    );
    // The node says it is unhealthy.
    let addr = planet.nodes[0].http_addr.expect("running");
    let (status, body) = loam_testnet::http_request(&format!("http://{addr}/health")).await?;
    assert_eq!(status, 503, "{body}");
    assert!(body.contains("disk full"), "{body}");
    planet.shutdown().await;
    Ok(())
}

/// Records the piece store's durability steps, doing each for real, so
/// that what a power cut at any moment would leave can be worked out: a
/// piece file survives only if its contents were synced before it was
/// renamed into place, and its directory (and the parent of each directory
/// created for it) was synced after. From [`PowerCut::cut`] on, every sync
/// fails, as on a machine that has lost power.
#[derive(Default)]
struct PowerCut {
    events: std::sync::Mutex<Vec<DurableStep>>,
    cut: std::sync::atomic::AtomicBool,
}

enum DurableStep {
    File(std::path::PathBuf),
    Dir(std::path::PathBuf),
    Renamed {
        from: std::path::PathBuf,
        to: std::path::PathBuf,
        fresh: Vec<std::path::PathBuf>,
    },
}

impl PowerCut {
    fn step(&self, step: DurableStep) -> std::io::Result<()> {
        let mut events = self.events.lock().expect("lock");
        if self.cut.load(std::sync::atomic::Ordering::SeqCst) {
            return Err(std::io::Error::other("power lost"));
        }
        events.push(step);
        Ok(())
    }

    /// Cuts the power; returns the piece files still on disk afterwards.
    fn cut(&self) -> std::collections::HashSet<std::path::PathBuf> {
        let events = self.events.lock().expect("lock");
        self.cut.store(true, std::sync::atomic::Ordering::SeqCst);
        let mut synced = std::collections::HashSet::new();
        let mut survivors = std::collections::HashSet::new();
        for (at, event) in events.iter().enumerate() {
            match event {
                DurableStep::File(path) => {
                    synced.insert(path.clone());
                }
                DurableStep::Dir(_) => {}
                DurableStep::Renamed { from, to, fresh } => {
                    let dir_synced_later = |dir: Option<&std::path::Path>| {
                        events[at + 1..]
                            .iter()
                            .any(|e| matches!(e, DurableStep::Dir(d) if Some(d.as_path()) == dir))
                    };
                    if synced.contains(from)
                        && dir_synced_later(to.parent())
                        && fresh.iter().all(|d| dir_synced_later(d.parent()))
                    {
                        survivors.insert(to.clone());
                    }
                }
            }
        }
        survivors
    }
}

impl loam_storagenode::piecestore::Durability for PowerCut {
    fn sync_file(&self, file: &std::fs::File, path: &std::path::Path) -> std::io::Result<()> {
        file.sync_all()?;
        self.step(DurableStep::File(path.to_path_buf()))
    }

    fn sync_dir(&self, dir: &std::path::Path) -> std::io::Result<()> {
        std::fs::File::open(dir)?.sync_all()?;
        self.step(DurableStep::Dir(dir.to_path_buf()))
    }

    fn renamed(&self, from: &std::path::Path, to: &std::path::Path, fresh: &[std::path::PathBuf]) {
        let _ = self.step(DurableStep::Renamed {
            from: from.to_path_buf(),
            to: to.to_path_buf(),
            fresh: fresh.to_vec(),
        });
    }
}

/// Uploads 40 objects, four at a time, and cuts node 0's power after the
/// 20th is acknowledged; drops from its disk whatever the cut would have
/// taken and starts it again. Returns the pieces node 0 acknowledged (the
/// satellite holds its signed hash for each) and how many of them are gone.
async fn power_cut_on_node_0(sync_writes: bool) -> anyhow::Result<(usize, usize)> {
    use futures::StreamExt;
    let power = std::sync::Arc::new(PowerCut::default());
    let mut planet = Planet::start(PlanetConfig {
        reconfigure_node: Some(Box::new(move |_, config| config.sync_writes = sync_writes)),
        ..PlanetConfig::new(6).liar(
            0,
            Lies {
                durability: Some(power.clone()),
                ..Default::default()
            },
        )
    })
    .await?;
    let project = planet.project()?;
    project.create_bucket("power").await?;
    let acked = std::sync::atomic::AtomicUsize::new(0);
    let survivors = std::sync::Mutex::new(None);
    futures::stream::iter(0..40u32)
        .map(|i| {
            let (project, acked, power, survivors) = (&project, &acked, &power, &survivors);
            async move {
                let data: Vec<u8> = (0..64_000u32).map(|b| (b ^ i) as u8).collect();
                let up = project
                    .upload("power", &format!("o{i}"), std::io::Cursor::new(data), None)
                    .await;
                if up.is_ok() && acked.fetch_add(1, std::sync::atomic::Ordering::SeqCst) + 1 == 20 {
                    *survivors.lock().expect("lock") = Some(power.cut());
                }
            }
        })
        .buffer_unordered(4)
        .collect::<Vec<()>>()
        .await;
    let survivors = survivors
        .lock()
        .expect("lock")
        .take()
        .expect("power was cut");

    // The power loss: node 0 stops, and what was not durable is gone.
    planet.stop_node(0).await;
    let storage = planet.nodes[0].dir.join("storage").join("pieces");
    for file in loam_testnet::files_under(&storage) {
        if !survivors.contains(&file) {
            std::fs::remove_file(&file)?;
        }
    }
    planet.restart_node_lying(0, Lies::default()).await?;

    let node = planet.nodes[0].id;
    let sat = planet.satellite_identity.id();
    let blobs = planet.nodes[0]
        .piecestore
        .as_ref()
        .expect("node 0 runs")
        .blobs()
        .clone();
    let (mut held, mut lost) = (0, 0);
    for (_, segment) in planet.satellite.segments()? {
        let root = loam_common::orders::PieceId::try_from(segment.root_piece_id.as_ref())?;
        for piece in segment
            .pieces
            .iter()
            .filter(|p| p.node_id.as_ref() == node.as_bytes())
        {
            held += 1;
            let id = loam_common::orders::PieceId::derive(&root, &node, piece.piece_num);
            if blobs.read(&sat, &id, 0, 1).is_err() {
                lost += 1;
            }
        }
    }
    planet.shutdown().await;
    Ok((held, lost))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_power_cut_loses_no_piece_a_node_acknowledged() -> anyhow::Result<()> {
    let (acked, lost) = power_cut_on_node_0(true).await?;
    eprintln!("fsync on: {acked} pieces acknowledged by node 0, {lost} lost to a power cut");
    assert!(acked > 0, "node 0 stored pieces before the cut");
    assert_eq!(lost, 0, "acknowledged pieces lost to a power cut");

    // The same cut without fsync does lose acknowledged pieces: the
    // simulation sees what is not durable.
    let (acked, lost) = power_cut_on_node_0(false).await?;
    eprintln!("fsync off: {acked} pieces acknowledged by node 0, {lost} lost to a power cut");
    assert!(lost > 0);
    Ok(())
}

/// An audit costs a node one leaf of the piece read from its disk: the
/// proof comes from the leaf hashes it kept at upload. Those hashes are the
/// node's own, not evidence: a leaf changed on disk still fails its audit.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_audit_reads_one_leaf_and_a_changed_leaf_still_fails() -> anyhow::Result<()> {
    use loam_common::merkle::LEAF_SIZE;
    use std::sync::atomic::Ordering;
    let (hook, _, read) = FaultyBlobs::hook();
    let mut config = PlanetConfig::new(5).liar(
        0,
        Lies {
            blobs: Some(hook),
            ..Lies::default()
        },
    );
    config.reconfigure_satellite = Some(Box::new(|c| c.audit.per_node = 3));
    let planet = Planet::start(config).await?;
    let project = planet.project()?;
    project.create_bucket("aud").await?;
    for i in 0..4u8 {
        let data: Vec<u8> = (0..3_000_000u32).map(|j| (j % 251) as u8 ^ i).collect();
        project
            .upload("aud", &format!("o{i}"), std::io::Cursor::new(data), None)
            .await?;
    }
    let id = planet.nodes[0].id;
    let files: Vec<_> =
        loam_testnet::files_under(&planet.nodes[0].dir.join("storage").join("pieces"));
    let largest = files
        .iter()
        .map(|f| std::fs::metadata(f).map(|m| m.len()))
        .collect::<Result<Vec<_>, _>>()?
        .into_iter()
        .max()
        .unwrap_or(0);
    assert!(
        largest > 4 * LEAF_SIZE as u64,
        "pieces of several leaves: {largest}"
    );

    read.store(0, Ordering::SeqCst);
    planet.auditor.run_once().await;
    let r = planet.reputation.get(&id)?;
    assert!(r.audits >= 1, "{r:?}");
    assert_eq!(r.audits_failed, 0, "{r:?}");
    let bytes = read.load(Ordering::SeqCst);
    assert!(bytes > 0, "audits read the piece");
    assert!(
        bytes <= r.audits * LEAF_SIZE as u64,
        "{bytes} bytes read for {} audits",
        r.audits
    );

    // Every leaf of every piece on node 0 gets one byte changed.
    for f in &files {
        let mut data = std::fs::read(f)?;
        for at in (0..data.len()).step_by(LEAF_SIZE) {
            data[at] ^= 0x40;
        }
        std::fs::write(f, data)?;
    }
    planet.auditor.run_once().await;
    let after = planet.reputation.get(&id)?;
    assert!(after.audits > r.audits, "{after:?}");
    assert_eq!(
        after.audits_failed,
        after.audits - r.audits,
        "every audit of a changed piece fails: {after:?}"
    );
    planet.shutdown().await;
    Ok(())
}

/// A node whose disk takes every piece's bytes and then never finishes the
/// fsync, until released: its uploads stall at the very end, after all the
/// data went out (so no upload ever looks behind).
#[derive(Default)]
struct StuckDisk {
    open: std::sync::Mutex<bool>,
    opened: std::sync::Condvar,
    held: std::sync::atomic::AtomicUsize,
}

impl StuckDisk {
    fn release(&self) {
        *self.open.lock().expect("lock") = true;
        self.opened.notify_all();
    }
}

/// Releases a [`StuckDisk`] when dropped, so a test that fails while the
/// disk holds fsyncs does not hang its runtime's shutdown on them.
struct Unstick(std::sync::Arc<StuckDisk>);

impl Drop for Unstick {
    fn drop(&mut self) {
        self.0.release();
    }
}

impl loam_storagenode::piecestore::Durability for StuckDisk {
    fn sync_file(&self, file: &std::fs::File, _path: &std::path::Path) -> std::io::Result<()> {
        self.held.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        let mut open = self.open.lock().expect("lock");
        while !*open {
            open = self.opened.wait(open).expect("lock");
        }
        file.sync_all()
    }

    fn sync_dir(&self, dir: &std::path::Path) -> std::io::Result<()> {
        std::fs::File::open(dir)?.sync_all()
    }
}

/// The spares of a segment start only when an upload fails or lags; a
/// node that takes the data and then never answers must still not hold an
/// upload up: the spares start once the others are stored and it is not.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_upload_does_not_wait_for_a_node_that_stops_answering() -> anyhow::Result<()> {
    let stuck = std::sync::Arc::new(StuckDisk::default());
    let _unstick = Unstick(stuck.clone());
    let planet = Planet::start(PlanetConfig {
        redundancy: "4/6/8/10".parse()?,
        reconfigure_node: Some(Box::new(|_, config| config.sync_writes = true)),
        ..PlanetConfig::new(10).liar(
            0,
            Lies {
                durability: Some(stuck.clone()),
                ..Default::default()
            },
        )
    })
    .await?;
    let project = planet.project()?;
    project.create_bucket("tail").await?;
    // Every segment has a piece on each of the ten nodes; node 0's is one
    // of the eight that start at once in 4 of 5 segments.
    for i in 0..8u32 {
        let data: Vec<u8> = (0..300_000u32).map(|b| ((b * 31) ^ i) as u8).collect();
        tokio::time::timeout(
            std::time::Duration::from_secs(120),
            project.upload(
                "tail",
                &format!("o{i}"),
                std::io::Cursor::new(data.clone()),
                None,
            ),
        )
        .await
        .map_err(|_| anyhow::anyhow!("upload {i} waited for the node that stopped answering"))??;
        let mut out = Vec::new();
        project
            .download("tail", &format!("o{i}"), &mut out, None)
            .await?;
        assert_eq!(out, data);
    }
    assert!(
        stuck.held.load(std::sync::atomic::Ordering::SeqCst) > 0,
        "node 0 never got a piece to hold: the test tested nothing"
    );
    stuck.release();
    planet.shutdown().await;
    Ok(())
}
