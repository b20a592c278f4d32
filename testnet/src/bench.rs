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

pub struct BenchReport {
    pub size: usize,
    pub scheme: RedundancyScheme,
    pub pipeline_mbps: f64,
    pub quic_mbps: f64,
    pub upload_mbps: f64,
    pub download_mbps: f64,
    pub sync_writes: bool,
}

impl BenchReport {
    pub fn print(&self) {
        let k_over_n = self.scheme.k() as f64 / self.scheme.total() as f64;
        println!(
            "object size                          {} MiB, scheme {}",
            self.size >> 20,
            self.scheme
        );
        println!(
            "client pipeline (encrypt+RS+hash)    {:8.1} MB/s",
            self.pipeline_mbps
        );
        println!(
            "bare QUIC, one loopback stream       {:8.1} MB/s",
            self.quic_mbps
        );
        println!(
            "upload                               {:8.1} MB/s",
            self.upload_mbps
        );
        println!(
            "download                             {:8.1} MB/s",
            self.download_mbps
        );
        println!(
            "upload / (QUIC x k/total)            {:8.2}",
            self.upload_mbps / (self.quic_mbps * k_over_n)
        );
        println!(
            "download / QUIC                      {:8.2}",
            self.download_mbps / self.quic_mbps
        );
    }
}

pub async fn run(
    size: usize,
    nodes: usize,
    sync_writes: bool,
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
    let pipeline_mbps = {
        let d = data.clone();
        tokio::task::spawn_blocking(move || pipeline_throughput(&d, scheme)).await?
    };
    let quic_mbps = quic_throughput(size).await?;
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
        let started = Instant::now();
        project
            .upload("bench", "object", std::io::Cursor::new(data.clone()), None)
            .await?;
        let upload_mbps = mbps(size, started.elapsed());
        let mut out = Vec::with_capacity(size);
        let started = Instant::now();
        project.download("bench", "object", &mut out, None).await?;
        let download_mbps = mbps(size, started.elapsed());
        anyhow::ensure!(out == data, "downloaded object differs");
        project.close().await;
        anyhow::Ok((upload_mbps, download_mbps))
    }
    .await;
    net.stop().await;
    let (upload_mbps, download_mbps) = result?;
    Ok(BenchReport {
        size,
        scheme,
        pipeline_mbps,
        quic_mbps,
        upload_mbps,
        download_mbps,
        sync_writes,
    })
}
