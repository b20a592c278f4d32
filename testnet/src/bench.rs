//! `testnet bench`: in one run, the client pipeline in memory, the bare QUIC
//! ceiling of one stream between two of Loam's endpoints, and upload and
//! download through a 10-node process network, with the ratios between them.

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
        line("upload", &self.upload_mbps);
        line("download", &self.download_mbps);
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
        project.close().await;
        anyhow::Ok(())
    }
    .await;
    net.stop().await;
    result?;
    Ok(report)
}
