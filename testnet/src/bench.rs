//! `testnet bench`: in one run, the client pipeline in memory, the bare QUIC
//! ceiling of one stream between two of Loam's endpoints, upload and
//! download through a 10-node process network from and into memory, and
//! the same through the `uplink cp` command from and into a file, with the
//! ratios between them and the command's peak memory.

use std::time::{Duration, Instant};

use bytes::Bytes;
use loam_common::Identity;
use loam_common::erasure::{ErasureCoder, RedundancyScheme};
use loam_common::transport::{Endpoint, TransportConfig};
use loam_common::wire::{Frame, FrameReader, FrameWriter};
use loam_uplink::Project;

use crate::process::{NetworkOptions, ProcessNetwork};

fn mbps(bytes: usize, d: Duration) -> f64 {
    bytes as f64 / 1e6 / d.as_secs_f64().max(1e-9)
}

/// Encrypt + erasure-encode + hash `data` in 64 MiB segments, in memory.
pub fn pipeline_throughput(data: &[u8], scheme: RedundancyScheme) -> f64 {
    let coder = ErasureCoder::new(scheme);
    let started = Instant::now();
    for (i, seg) in data.chunks(64 << 20).enumerate() {
        let enc = loam_uplink::segment::encode(&coder, i as u32, seg).expect("encode");
        std::hint::black_box(enc);
    }
    mbps(data.len(), started.elapsed())
}

/// One stream over loopback between two Loam endpoints.
pub async fn quic_throughput(size: usize) -> anyhow::Result<f64> {
    let server = Endpoint::bind(
        Identity::generate(0, |_| {}),
        "127.0.0.1:0".parse()?,
        TransportConfig::default(),
    )?;
    let client = Endpoint::bind(
        Identity::generate(0, |_| {}),
        "127.0.0.1:0".parse()?,
        TransportConfig::default(),
    )?;
    let addr = server.local_addr()?;
    let server_id = server.identity().id();
    let sink = tokio::spawn(async move {
        let conn = server
            .accept()
            .await
            .ok_or_else(|| anyhow::anyhow!("no connection"))?
            .await?;
        let (_send, recv) = conn.accept_bi().await?;
        let mut reader = FrameReader::new(recv);
        let mut n = 0usize;
        while let Some(frame) = reader.next().await? {
            if let Frame::Data(b) = frame {
                n += b.len();
            }
        }
        anyhow::Ok(n)
    });
    let conn = client.connect(server_id, addr).await?;
    let (send, _recv) = conn.open_bi().await?;
    let mut writer = FrameWriter::new(send);
    let data = Bytes::from(vec![7u8; 4 << 20]);
    let started = Instant::now();
    let mut sent = 0;
    while sent < size {
        writer.data(data.clone()).await?;
        sent += data.len();
    }
    writer.finish()?;
    let received = sink.await??;
    let elapsed = started.elapsed();
    anyhow::ensure!(received == sent, "received {received} of {sent} bytes");
    Ok(mbps(sent, elapsed))
}

/// Median of a non-empty list.
fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

/// Figures of one `testnet bench` run: every list has one value per round.
pub struct BenchReport {
    pub size: usize,
    pub scheme: RedundancyScheme,
    pub sync_writes: bool,
    pub pipeline_mbps: Vec<f64>,
    pub quic_mbps: Vec<f64>,
    pub upload_mbps: Vec<f64>,
    pub download_mbps: Vec<f64>,
    /// `uplink cp FILE loam://…`, process start to exit.
    pub cli_upload_mbps: Vec<f64>,
    /// `uplink cp loam://… FILE`, process start to exit.
    pub cli_download_mbps: Vec<f64>,
    /// Peak resident memory of each `uplink cp` up, in bytes.
    pub cli_upload_rss: Vec<u64>,
    /// Peak resident memory of each `uplink cp` down, in bytes.
    pub cli_download_rss: Vec<u64>,
}

impl BenchReport {
    pub fn print(&self) {
        let k_over_n = self.scheme.k() as f64 / self.scheme.total() as f64;
        let line = |name: &str, v: &[f64]| {
            let list: Vec<String> = v.iter().map(|x| format!("{x:.0}")).collect();
            println!(
                "{name:<38} {:8.1} MB/s   (runs: {})",
                median(v.to_vec()),
                list.join(", ")
            );
        };
        println!(
            "object {} MiB, scheme {}, node fsync {}, {} rounds (median first)",
            self.size >> 20,
            self.scheme,
            if self.sync_writes { "on" } else { "off" },
            self.upload_mbps.len()
        );
        line("client pipeline (encrypt+RS+hash)", &self.pipeline_mbps);
        line("bare QUIC, one loopback stream", &self.quic_mbps);
        line("upload, from memory", &self.upload_mbps);
        line("download, into memory", &self.download_mbps);
        line("upload, uplink cp FILE loam://", &self.cli_upload_mbps);
        line("download, uplink cp loam:// FILE", &self.cli_download_mbps);
        let (up, down, quic) = (
            median(self.upload_mbps.clone()),
            median(self.download_mbps.clone()),
            median(self.quic_mbps.clone()),
        );
        println!(
            "{:<38} {:8.2}",
            "upload / (QUIC x k/total)",
            up / (quic * k_over_n)
        );
        println!("{:<38} {:8.2}", "download / QUIC", down / quic);
        println!(
            "{:<38} {:8.2}",
            "CLI upload / in-memory upload",
            median(self.cli_upload_mbps.clone()) / up
        );
        println!(
            "{:<38} {:8.2}",
            "CLI download / in-memory download",
            median(self.cli_download_mbps.clone()) / down
        );
        let mib = |v: &[u64]| v.iter().max().copied().unwrap_or(0) as f64 / f64::from(1 << 20);
        println!(
            "{:<38} {:8.1} MiB up, {:.1} MiB down (largest of the runs)",
            "peak RSS of uplink cp",
            mib(&self.cli_upload_rss),
            mib(&self.cli_download_rss)
        );
    }
}

/// Measures everything `rounds` times on one network.
pub async fn run(
    size: usize,
    nodes: usize,
    sync_writes: bool,
    rounds: usize,
    dir: &std::path::Path,
) -> anyhow::Result<BenchReport> {
    let scheme = RedundancyScheme::new(4, 6, 8, 10)?;
    ensure_room(dir, size, rounds.max(1), scheme)?;
    let data: Vec<u8> = {
        use rand::{RngCore, SeedableRng};
        let mut rng = rand::rngs::StdRng::seed_from_u64(42);
        let mut v = vec![0u8; size];
        rng.fill_bytes(&mut v);
        v
    };
    let mut report = BenchReport {
        size,
        scheme,
        sync_writes,
        pipeline_mbps: Vec::new(),
        quic_mbps: Vec::new(),
        upload_mbps: Vec::new(),
        download_mbps: Vec::new(),
        cli_upload_mbps: Vec::new(),
        cli_download_mbps: Vec::new(),
        cli_upload_rss: Vec::new(),
        cli_download_rss: Vec::new(),
    };
    let data = std::sync::Arc::new(data);
    for _ in 0..rounds.max(1) {
        let d = data.clone();
        report
            .pipeline_mbps
            .push(tokio::task::spawn_blocking(move || pipeline_throughput(&d, scheme)).await?);
        report.quic_mbps.push(quic_throughput(size).await?);
    }
    let net = ProcessNetwork::start(
        dir,
        &NetworkOptions {
            nodes,
            redundancy: scheme,
            sync_writes,
            ..Default::default()
        },
    )
    .await?;
    let result = async {
        let project = Project::open(net.access.clone())?;
        project.create_bucket("bench").await?;
        let mut out = Vec::with_capacity(size);
        for round in 0..rounds.max(1) {
            let key = format!("object-{round}");
            let started = Instant::now();
            project
                .upload("bench", &key, std::io::Cursor::new(data.to_vec()), None)
                .await?;
            report.upload_mbps.push(mbps(size, started.elapsed()));
            out.clear();
            let started = Instant::now();
            project.download("bench", &key, &mut out, None).await?;
            report.download_mbps.push(mbps(size, started.elapsed()));
            anyhow::ensure!(out[..] == data[..], "downloaded object differs");
        }
        drop(out);
        // The same through the command line, file to file.
        let access_file = net.dir.join("access");
        let input = dir.join("bench-in");
        let output = dir.join("bench-out");
        std::fs::write(&input, &data[..])?;
        for round in 0..rounds.max(1) {
            let url = format!("loam://bench/cli-{round}");
            let (took, rss) = uplink_cp(&access_file, input.as_os_str(), url.as_ref()).await?;
            report.cli_upload_mbps.push(mbps(size, took));
            report.cli_upload_rss.push(rss);
            let (took, rss) = uplink_cp(&access_file, url.as_ref(), output.as_os_str()).await?;
            report.cli_download_mbps.push(mbps(size, took));
            report.cli_download_rss.push(rss);
            anyhow::ensure!(
                same_file_as(&output, &data)?,
                "the file uplink cp downloaded differs"
            );
            std::fs::remove_file(&output)?;
        }
        std::fs::remove_file(&input)?;
        project.close().await;
        anyhow::Ok(())
    }
    .await;
    net.stop().await;
    result?;
    Ok(report)
}

/// Fails, before anything runs, when the file system holding `dir`
/// cannot take what the benchmark writes there: each round uploads the
/// object twice (from memory and through `uplink cp`), each upload
/// storing up to `total/k` times its size in pieces, plus the input and
/// output files of the command-line runs.
fn ensure_room(
    dir: &std::path::Path,
    size: usize,
    rounds: usize,
    scheme: RedundancyScheme,
) -> anyhow::Result<()> {
    let size = size as u64;
    let pieces = size.saturating_mul(scheme.total() as u64) / scheme.k() as u64;
    let need = pieces
        .saturating_mul((rounds as u64).saturating_mul(2))
        .saturating_add(size.saturating_mul(2));
    std::fs::create_dir_all(dir)?;
    let free = loam_storagenode::preflight::free_space(dir)?;
    let gib = |b: u64| b as f64 / f64::from(1 << 30);
    anyhow::ensure!(
        free >= need,
        "the benchmark writes about {:.1} GiB under {} ({rounds} rounds of {} MiB, \
         uploaded twice each, in pieces of scheme {scheme}) and its file system has \
         {:.1} GiB free",
        gib(need),
        dir.display(),
        size >> 20,
        gib(free)
    );
    Ok(())
}

/// Runs `uplink --access-file ACCESS cp FROM TO` under `testnet peak-rss`:
/// how long it took, start to exit, and its peak resident memory in bytes.
async fn uplink_cp(
    access: &std::path::Path,
    from: &std::ffi::OsStr,
    to: &std::ffi::OsStr,
) -> anyhow::Result<(Duration, u64)> {
    let started = Instant::now();
    let out = tokio::process::Command::new(crate::process::binary("testnet")?)
        .arg("peak-rss")
        .arg("--")
        .arg(crate::process::binary("uplink")?)
        .arg("--access-file")
        .arg(access)
        .arg("cp")
        .arg(from)
        .arg(to)
        .stdin(std::process::Stdio::null())
        .output()
        .await?;
    let took = started.elapsed();
    let stdout = String::from_utf8_lossy(&out.stdout);
    anyhow::ensure!(
        out.status.success(),
        "uplink cp {} {} failed: {}{}",
        from.to_string_lossy(),
        to.to_string_lossy(),
        stdout.trim(),
        String::from_utf8_lossy(&out.stderr).trim()
    );
    let kib: u64 = stdout
        .lines()
        .rev()
        .find_map(|l| l.strip_prefix("peak_rss_kib "))
        .and_then(|v| v.trim().parse().ok())
        .ok_or_else(|| anyhow::anyhow!("testnet peak-rss printed no figure: {stdout}"))?;
    Ok((took, kib << 10))
}

/// Whether the file at `path` holds exactly `data`, read a megabyte at a
/// time.
fn same_file_as(path: &std::path::Path, data: &[u8]) -> anyhow::Result<bool> {
    use std::io::Read;
    let mut file = std::fs::File::open(path)?;
    if file.metadata()?.len() != data.len() as u64 {
        return Ok(false);
    }
    let mut buf = vec![0u8; 1 << 20];
    for chunk in data.chunks(buf.len()) {
        let part = &mut buf[..chunk.len()];
        file.read_exact(part)?;
        if part != chunk {
            return Ok(false);
        }
    }
    Ok(true)
}

/// `testnet peak-rss -- COMMAND ARGS…`: runs the command as this process's
/// child and returns the largest resident set, in KiB, that any child this
/// process has waited for had (the kernel's `ru_maxrss` of its children):
/// the command's own when it is the only child, as under `testnet
/// peak-rss`. Fails with the command's failure.
pub fn peak_rss_kib(command: &[std::ffi::OsString]) -> anyhow::Result<u64> {
    let (program, args) = command
        .split_first()
        .ok_or_else(|| anyhow::anyhow!("peak-rss needs a command"))?;
    let status = std::process::Command::new(program)
        .args(args)
        .status()
        .map_err(|e| anyhow::anyhow!("cannot run {}: {e}", program.to_string_lossy()))?;
    anyhow::ensure!(status.success(), "{} {status}", program.to_string_lossy());
    let usage = nix::sys::resource::getrusage(nix::sys::resource::UsageWho::RUSAGE_CHILDREN)?;
    Ok(u64::try_from(usage.max_rss()).unwrap_or(0))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn peak_rss_sees_what_the_child_touched() {
        let cmd =
            |args: &[&str]| -> Vec<std::ffi::OsString> { args.iter().map(Into::into).collect() };
        // 200 MiB written by the child (a shell filling a variable would be
        // slower; dd's buffer is one block).
        let kib = peak_rss_kib(&cmd(&[
            "dd",
            "if=/dev/zero",
            "of=/dev/null",
            "bs=200M",
            "count=1",
        ]))
        .expect("dd runs");
        assert!((200 << 10..1 << 20).contains(&kib), "{kib} KiB");
        let e = peak_rss_kib(&cmd(&["sh", "-c", "exit 3"])).expect_err("exit 3");
        assert!(e.to_string().contains("exit status: 3"), "{e}");
        assert!(peak_rss_kib(&cmd(&["/nonexistent/loam-command"])).is_err());
        assert!(peak_rss_kib(&[]).is_err());
    }

    #[test]
    fn a_benchmark_that_cannot_fit_is_refused_up_front() {
        let dir = tempfile::tempdir().expect("tempdir");
        let scheme = RedundancyScheme::new(4, 6, 8, 10).expect("scheme");
        ensure_room(dir.path(), 1 << 20, 3, scheme).expect("3 MiB of rounds fit");
        let e = ensure_room(dir.path(), usize::MAX / 4, 1, scheme).expect_err("too big");
        let msg = e.to_string();
        assert!(msg.contains("GiB free"), "{msg}");
        assert!(msg.contains(&dir.path().display().to_string()), "{msg}");
    }
}
