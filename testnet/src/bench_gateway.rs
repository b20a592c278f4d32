//! `testnet bench-gateway`: one object up and down through the S3 gateway
//! with the AWS CLI and with boto3, against `uplink cp` of the same object
//! on the same network in the same run, and the gateway's peak memory
//! during each transfer.
//!
//! Each client runs as its own process at its defaults (the AWS CLI and
//! boto3 upload 8 MiB parts, 10 at a time). `uplink cp` and `aws s3 cp` are
//! timed as whole commands, as a user waits for them; boto3 around its
//! `upload_file` / `download_file` call. Every download is compared with
//! the source by BLAKE3 before it counts.

use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::time::Instant;

use anyhow::{Context, bail};
use loam_common::erasure::RedundancyScheme;

use crate::process::{NetworkOptions, ProcessNetwork, S3Endpoint, binary};

/// The boto3 side, run with `python3 -c`.
const BOTO3_CLIENT: &str = include_str!("bench_gateway.py");

const BUCKET: &str = "bench";

/// A client the bench drives.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Client {
    /// `uplink cp`, straight to the network: the baseline.
    Uplink,
    /// `aws s3 cp` through the gateway.
    Aws,
    /// boto3's `upload_file` / `download_file` through the gateway.
    Boto3,
}

impl Client {
    fn label(self) -> &'static str {
        match self {
            Client::Uplink => "uplink cp",
            Client::Aws => "aws s3 cp (gateway)",
            Client::Boto3 => "boto3 (gateway)",
        }
    }
}

/// What to measure.
pub struct GatewayBench {
    pub size: u64,
    pub nodes: usize,
    pub rounds: usize,
    pub clients: Vec<Client>,
    /// The satellite's largest segment (its default when None).
    pub max_segment_size: Option<u64>,
}

/// One client's figures: a value per round.
pub struct ClientFigures {
    pub client: Client,
    pub up_mbps: Vec<f64>,
    pub down_mbps: Vec<f64>,
    /// The gateway's peak resident memory during each upload and
    /// download (bytes), for the clients that go through it.
    pub up_peak_rss: Vec<u64>,
    pub down_peak_rss: Vec<u64>,
    /// CPU seconds each transfer took, summed over its rounds.
    pub up_cpu: Cpu,
    pub down_cpu: Cpu,
    /// Downloads through the gateway of the object `uplink cp` wrote in
    /// the same round (its segments are the satellite's full size, not the
    /// client's part size).
    pub down_uplink_written_mbps: Vec<f64>,
    pub down_uplink_written_peak_rss: Vec<u64>,
}

/// CPU seconds, by who spent them.
#[derive(Debug, Clone, Copy, Default)]
pub struct Cpu {
    /// The client's process.
    pub client: f64,
    pub gateway: f64,
    /// Every storage node together.
    pub nodes: f64,
    pub satellite: f64,
}

impl Cpu {
    /// What the network's processes and this process's finished children
    /// have used so far.
    fn now(net: &ProcessNetwork, gateway: u32) -> Self {
        let sum = |role: &str| {
            net.processes
                .iter()
                .filter(|p| p.role == role)
                .filter_map(|p| proc_cpu(p.pid))
                .sum()
        };
        Cpu {
            client: children_cpu(),
            gateway: proc_cpu(gateway).unwrap_or(0.0),
            nodes: sum("storagenode"),
            satellite: sum("satellite"),
        }
    }

    fn add_since(&mut self, before: &Cpu, after: &Cpu) {
        self.client += after.client - before.client;
        self.gateway += after.gateway - before.gateway;
        self.nodes += after.nodes - before.nodes;
        self.satellite += after.satellite - before.satellite;
    }

    fn total(&self) -> f64 {
        self.client + self.gateway + self.nodes + self.satellite
    }
}

pub struct GatewayReport {
    pub size: u64,
    pub nodes: usize,
    pub scheme: RedundancyScheme,
    pub segment_size: u64,
    /// The gateway's resident memory before the first transfer.
    pub idle_rss: Option<u64>,
    /// Whether the gateway's peak could be reset before each transfer
    /// (otherwise each figure is the peak since the gateway started).
    pub per_transfer_peaks: bool,
    pub clients: Vec<ClientFigures>,
}

fn median(v: &[f64]) -> f64 {
    let mut v = v.to_vec();
    v.sort_by(f64::total_cmp);
    v.get(v.len() / 2).copied().unwrap_or(0.0)
}

fn mib(bytes: u64) -> f64 {
    bytes as f64 / f64::from(1u32 << 20)
}

impl GatewayReport {
    pub fn print(&self) {
        println!(
            "object {} MiB, {} nodes, scheme {}, segments of at most {} MiB, {} round(s), medians first",
            self.size >> 20,
            self.nodes,
            self.scheme,
            self.segment_size >> 20,
            self.clients.first().map_or(0, |c| c.up_mbps.len()),
        );
        println!(
            "timed: uplink cp and aws s3 cp as whole commands, boto3 around upload_file/download_file"
        );
        let runs = |v: &[f64]| {
            v.iter()
                .map(|x| format!("{x:.0}"))
                .collect::<Vec<_>>()
                .join(", ")
        };
        println!(
            "{:<22} {:>9} {:>11}   {:<26} gateway peak RSS up / down",
            "client", "up MB/s", "down MB/s", "(runs up; down)"
        );
        for c in &self.clients {
            let rss = if c.up_peak_rss.is_empty() {
                "-".to_string()
            } else {
                format!(
                    "{:.0} / {:.0} MiB",
                    mib(c.up_peak_rss.iter().copied().max().unwrap_or(0)),
                    mib(c.down_peak_rss.iter().copied().max().unwrap_or(0))
                )
            };
            println!(
                "{:<22} {:>9.1} {:>11.1}   {:<26} {rss}",
                c.client.label(),
                median(&c.up_mbps),
                median(&c.down_mbps),
                format!("({}; {})", runs(&c.up_mbps), runs(&c.down_mbps)),
            );
        }
        for c in self
            .clients
            .iter()
            .filter(|c| !c.down_uplink_written_mbps.is_empty())
        {
            println!(
                "{:<38} {:8.1} MB/s   (runs: {}), gateway peak {:.0} MiB",
                format!("{} down, uplink cp's object", c.client.label()),
                median(&c.down_uplink_written_mbps),
                runs(&c.down_uplink_written_mbps),
                mib(c
                    .down_uplink_written_peak_rss
                    .iter()
                    .copied()
                    .max()
                    .unwrap_or(0)),
            );
        }
        println!(
            "CPU seconds per GiB moved (client + gateway + nodes + satellite = total; the machine has {} cores):",
            std::thread::available_parallelism().map_or(0, |n| n.get())
        );
        let gib = self.size as f64 / f64::from(1u32 << 30);
        for c in &self.clients {
            let rounds = c.up_mbps.len().max(1) as f64;
            for (way, cpu) in [("up", &c.up_cpu), ("down", &c.down_cpu)] {
                let per = |x: f64| x / rounds / gib.max(1e-9);
                println!(
                    "  {:<26} {:5.2} + {:5.2} + {:5.2} + {:5.2} = {:5.2}",
                    format!("{} {way}", c.client.label()),
                    per(cpu.client),
                    per(cpu.gateway),
                    per(cpu.nodes),
                    per(cpu.satellite),
                    per(cpu.total()),
                );
            }
        }
        if let Some(base) = self.clients.iter().find(|c| c.client == Client::Uplink) {
            for c in self.clients.iter().filter(|c| c.client != Client::Uplink) {
                println!(
                    "{:<38} up {:.2}   down {:.2}   (target 0.80)",
                    format!("{} / uplink cp", c.client.label()),
                    median(&c.up_mbps) / median(&base.up_mbps).max(1e-9),
                    median(&c.down_mbps) / median(&base.down_mbps).max(1e-9),
                );
            }
        }
        let peak = self
            .clients
            .iter()
            .flat_map(|c| {
                c.up_peak_rss
                    .iter()
                    .chain(&c.down_peak_rss)
                    .chain(&c.down_uplink_written_peak_rss)
            })
            .copied()
            .max();
        if let Some(peak) = peak {
            println!(
                "gateway RSS: {} idle, {:.0} MiB at its peak{}",
                self.idle_rss
                    .map_or("?".to_string(), |r| format!("{:.0} MiB", mib(r))),
                mib(peak),
                if self.per_transfer_peaks {
                    ""
                } else {
                    " (peaks are since start: /proc/PID/clear_refs not writable)"
                }
            );
        }
    }
}

/// A memory figure of `/proc/PID/status` (`VmHWM`, `VmRSS`) in bytes.
fn proc_memory(pid: u32, field: &str) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let line = status.lines().find(|l| l.starts_with(field))?;
    let kib: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    kib.checked_mul(1024)
}

/// CPU seconds (user + system) a running process has used so far.
fn proc_cpu(pid: u32) -> Option<f64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // Fields after the command name, which is in parentheses and may hold
    // spaces: state is the first, utime the 12th, stime the 13th.
    let rest = stat.rsplit_once(')')?.1;
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let ticks: u64 = fields.get(11)?.parse::<u64>().ok()? + fields.get(12)?.parse::<u64>().ok()?;
    let per_second = nix::unistd::sysconf(nix::unistd::SysconfVar::CLK_TCK)
        .ok()
        .flatten()
        .filter(|t| *t > 0)
        .unwrap_or(100);
    Some(ticks as f64 / per_second as f64)
}

/// CPU seconds used by this process's finished children.
fn children_cpu() -> f64 {
    use nix::sys::resource::{UsageWho, getrusage};
    getrusage(UsageWho::RUSAGE_CHILDREN).map_or(0.0, |u| {
        let t = |tv: nix::sys::time::TimeVal| tv.tv_sec() as f64 + tv.tv_usec() as f64 / 1e6;
        t(u.user_time()) + t(u.system_time())
    })
}

/// Resets a process's peak resident memory to its current one.
fn reset_peak(pid: u32) -> bool {
    std::fs::write(format!("/proc/{pid}/clear_refs"), "5").is_ok()
}

/// Writes `size` seeded random bytes to `path`, returning their hash.
fn write_source(path: &Path, size: u64) -> anyhow::Result<blake3::Hash> {
    use rand::{RngCore, SeedableRng};
    let mut rng = rand::rngs::StdRng::seed_from_u64(42);
    let mut file = std::io::BufWriter::new(
        std::fs::File::create(path).with_context(|| format!("cannot create {}", path.display()))?,
    );
    let mut hasher = blake3::Hasher::new();
    let mut chunk = vec![0u8; 8 << 20];
    let mut left = size;
    while left > 0 {
        let n = usize::try_from(left.min(chunk.len() as u64))?;
        rng.fill_bytes(&mut chunk[..n]);
        hasher.update(&chunk[..n]);
        file.write_all(&chunk[..n])?;
        left -= n as u64;
    }
    file.flush()?;
    Ok(hasher.finalize())
}

fn hash_file(path: &Path) -> anyhow::Result<(blake3::Hash, u64)> {
    let mut file =
        std::fs::File::open(path).with_context(|| format!("cannot open {}", path.display()))?;
    let mut hasher = blake3::Hasher::new();
    let mut buf = vec![0u8; 1 << 20];
    let mut len = 0u64;
    loop {
        let n = file.read(&mut buf)?;
        if n == 0 {
            return Ok((hasher.finalize(), len));
        }
        hasher.update(&buf[..n]);
        len += n as u64;
    }
}

/// The Debian package `scripts/install-deps --test` installs, else
/// whatever the path has.
fn system_tool(name: &str) -> PathBuf {
    let debian = Path::new("/usr/bin").join(name);
    if debian.exists() {
        debian
    } else {
        PathBuf::from(name)
    }
}

/// How the clients are run: programs, environments, files.
struct Clients {
    uplink: PathBuf,
    access_file: PathBuf,
    aws: PathBuf,
    aws_env: Vec<(&'static str, String)>,
    python: PathBuf,
    s3_json: PathBuf,
    endpoint: String,
}

impl Clients {
    fn new(net: &ProcessNetwork, s3: &S3Endpoint, work: &Path) -> anyhow::Result<Self> {
        Ok(Self {
            uplink: binary("uplink")?,
            access_file: net.dir.join("access"),
            aws: system_tool("aws"),
            aws_env: vec![
                ("AWS_ACCESS_KEY_ID", s3.access_key_id.clone()),
                ("AWS_SECRET_ACCESS_KEY", s3.secret_access_key.clone()),
                ("AWS_DEFAULT_REGION", s3.region.clone()),
                // Nothing from the user's own configuration.
                (
                    "AWS_CONFIG_FILE",
                    work.join("aws-config").display().to_string(),
                ),
                (
                    "AWS_SHARED_CREDENTIALS_FILE",
                    work.join("aws-credentials").display().to_string(),
                ),
            ],
            python: system_tool("python3"),
            s3_json: net.dir.join("s3.json"),
            endpoint: s3.endpoint.clone(),
        })
    }

    /// Checks every client the bench will use can run.
    async fn check(&self, clients: &[Client]) -> anyhow::Result<()> {
        for c in clients {
            let (program, args): (&Path, Vec<&str>) = match c {
                Client::Uplink => (&self.uplink, vec!["--version"]),
                Client::Aws => (&self.aws, vec!["--version"]),
                Client::Boto3 => (&self.python, vec!["-c", "import boto3"]),
            };
            let ok = tokio::process::Command::new(program)
                .args(&args)
                .output()
                .await
                .is_ok_and(|o| o.status.success());
            if !ok {
                bail!(
                    "{} cannot run ({} {}); scripts/install-deps --test installs the S3 clients",
                    c.label(),
                    program.display(),
                    args.join(" ")
                );
            }
        }
        Ok(())
    }

    /// One transfer: the seconds it took.
    async fn transfer(
        &self,
        client: Client,
        up: bool,
        key: &str,
        file: &Path,
    ) -> anyhow::Result<f64> {
        let file_arg = file.to_str().context("paths must be UTF-8")?;
        let mut cmd;
        match client {
            Client::Uplink => {
                let url = format!("loam://{BUCKET}/{key}");
                cmd = tokio::process::Command::new(&self.uplink);
                cmd.arg("--access-file").arg(&self.access_file).arg("cp");
                if up {
                    cmd.args([file_arg, &url]);
                } else {
                    cmd.args([&url, file_arg]);
                }
            }
            Client::Aws => {
                let url = format!("s3://{BUCKET}/{key}");
                cmd = tokio::process::Command::new(&self.aws);
                for (k, _) in std::env::vars() {
                    if k.starts_with("AWS_") {
                        cmd.env_remove(k);
                    }
                }
                cmd.envs(self.aws_env.iter().map(|(k, v)| (*k, v.as_str())))
                    .args(["--endpoint-url", &self.endpoint, "--only-show-errors"])
                    .args(["s3", "cp"]);
                if up {
                    cmd.args([file_arg, &url]);
                } else {
                    cmd.args([&url, file_arg]);
                }
            }
            Client::Boto3 => {
                cmd = tokio::process::Command::new(&self.python);
                cmd.args(["-c", BOTO3_CLIENT]).arg(&self.s3_json).args([
                    if up { "up" } else { "down" },
                    BUCKET,
                    key,
                    file_arg,
                ]);
            }
        }
        let started = Instant::now();
        let out = cmd
            .stdin(std::process::Stdio::null())
            .output()
            .await
            .with_context(|| format!("cannot run {}", client.label()))?;
        let wall = started.elapsed();
        if !out.status.success() {
            bail!(
                "{} {} failed: {}",
                client.label(),
                if up { "upload" } else { "download" },
                String::from_utf8_lossy(&out.stderr).trim()
            );
        }
        Ok(match client {
            Client::Boto3 => String::from_utf8_lossy(&out.stdout)
                .trim()
                .parse()
                .context("boto3 client printed no time")?,
            _ => wall.as_secs_f64(),
        })
    }

    async fn remove(&self, key: &str) -> anyhow::Result<()> {
        let out = tokio::process::Command::new(&self.uplink)
            .arg("--access-file")
            .arg(&self.access_file)
            .args(["rm", &format!("loam://{BUCKET}/{key}")])
            .output()
            .await?;
        if !out.status.success() {
            bail!(
                "uplink rm failed: {}",
                String::from_utf8_lossy(&out.stderr).trim()
            );
        }
        Ok(())
    }
}

fn mbps(bytes: u64, secs: f64) -> f64 {
    bytes as f64 / 1e6 / secs.max(1e-9)
}

/// Runs the bench on a network of its own in `dir`.
pub async fn run(bench: &GatewayBench, dir: &Path) -> anyhow::Result<GatewayReport> {
    if bench.clients.is_empty() {
        bail!("no clients to measure");
    }
    let scheme = RedundancyScheme::new(4, 6, 8, 10)?;
    let work = dir.join("files");
    std::fs::create_dir_all(&work)?;
    let source = work.join("source.bin");
    let back = work.join("back.bin");
    println!(
        "writing a {} MiB source file in {} ...",
        bench.size >> 20,
        work.display()
    );
    let want = write_source(&source, bench.size)?;

    let net = ProcessNetwork::start(
        &dir.join("net"),
        &NetworkOptions {
            nodes: bench.nodes,
            redundancy: scheme,
            gateway: true,
            max_segment_size: bench.max_segment_size,
            ..Default::default()
        },
    )
    .await?;
    let result = measure(bench, &net, &work, &source, &back, want).await;
    let segment_size = net.satellite_config.max_segment_size;
    net.stop().await;
    let (idle_rss, per_transfer_peaks, clients) = result?;
    Ok(GatewayReport {
        size: bench.size,
        nodes: bench.nodes,
        scheme,
        segment_size,
        idle_rss,
        per_transfer_peaks,
        clients,
    })
}

/// Checks a download against the source.
fn verify(path: &Path, want: blake3::Hash, size: u64, client: Client) -> anyhow::Result<()> {
    let (got, len) = hash_file(path)?;
    if got != want || len != size {
        bail!(
            "{} downloaded {len} bytes that differ from the {size} uploaded",
            client.label()
        );
    }
    Ok(())
}

type Measured = (Option<u64>, bool, Vec<ClientFigures>);

async fn measure(
    bench: &GatewayBench,
    net: &ProcessNetwork,
    work: &Path,
    source: &Path,
    back: &Path,
    want: blake3::Hash,
) -> anyhow::Result<Measured> {
    let s3 = net.s3.clone().context("the network started no gateway")?;
    let clients = Clients::new(net, &s3, work)?;
    clients.check(&bench.clients).await?;
    let project = loam_uplink::Project::open(net.access.clone())?;
    project.create_bucket(BUCKET).await?;
    project.close().await;

    let idle_rss = proc_memory(s3.pid, "VmRSS:");
    let mut per_transfer_peaks = true;
    let mut figures: Vec<ClientFigures> = bench
        .clients
        .iter()
        .map(|&client| ClientFigures {
            client,
            up_mbps: Vec::new(),
            down_mbps: Vec::new(),
            up_peak_rss: Vec::new(),
            down_peak_rss: Vec::new(),
            up_cpu: Cpu::default(),
            down_cpu: Cpu::default(),
            down_uplink_written_mbps: Vec::new(),
            down_uplink_written_peak_rss: Vec::new(),
        })
        .collect();
    // uplink cp first: the gateway's clients also read what it wrote.
    figures.sort_by_key(|f| f.client != Client::Uplink);
    let with_uplink = bench.clients.contains(&Client::Uplink);
    for round in 0..bench.rounds.max(1) {
        for f in &mut figures {
            let key = format!("{:?}-{round}", f.client).to_lowercase();
            let via_gateway = f.client != Client::Uplink;
            for up in [true, false] {
                if via_gateway {
                    per_transfer_peaks &= reset_peak(s3.pid);
                }
                let _ = std::fs::remove_file(back);
                let file = if up { source } else { back };
                let cpu_before = Cpu::now(net, s3.pid);
                let secs = clients.transfer(f.client, up, &key, file).await?;
                let cpu_after = Cpu::now(net, s3.pid);
                if up {
                    f.up_cpu.add_since(&cpu_before, &cpu_after);
                } else {
                    f.down_cpu.add_since(&cpu_before, &cpu_after);
                }
                let speed = mbps(bench.size, secs);
                let peak = proc_memory(s3.pid, "VmHWM:");
                println!(
                    "round {}: {} {} {:.1} MB/s ({:.1} s){}",
                    round + 1,
                    f.client.label(),
                    if up { "up" } else { "down" },
                    speed,
                    secs,
                    match (via_gateway, peak) {
                        (true, Some(p)) => format!(", gateway peak {:.0} MiB", mib(p)),
                        _ => String::new(),
                    }
                );
                if up {
                    f.up_mbps.push(speed);
                } else {
                    f.down_mbps.push(speed);
                    verify(back, want, bench.size, f.client)?;
                }
                if let (true, Some(p)) = (via_gateway, peak) {
                    if up {
                        f.up_peak_rss.push(p);
                    } else {
                        f.down_peak_rss.push(p);
                    }
                }
            }
            if via_gateway && with_uplink {
                let _ = std::fs::remove_file(back);
                let written = format!("uplink-{round}");
                per_transfer_peaks &= reset_peak(s3.pid);
                let secs = clients.transfer(f.client, false, &written, back).await?;
                let speed = mbps(bench.size, secs);
                let peak = proc_memory(s3.pid, "VmHWM:");
                verify(back, want, bench.size, f.client)?;
                println!(
                    "round {}: {} down of the uplink cp object {speed:.1} MB/s ({secs:.1} s){}",
                    round + 1,
                    f.client.label(),
                    peak.map_or(String::new(), |p| format!(
                        ", gateway peak {:.0} MiB",
                        mib(p)
                    ))
                );
                f.down_uplink_written_mbps.push(speed);
                f.down_uplink_written_peak_rss.extend(peak);
            }
            if !(f.client == Client::Uplink && bench.clients.len() > 1) {
                clients.remove(&key).await?;
            }
        }
        if with_uplink && bench.clients.len() > 1 {
            clients.remove(&format!("uplink-{round}")).await?;
        }
    }
    let _ = std::fs::remove_file(back);
    Ok((idle_rss, per_transfer_peaks, figures))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn memory_figures_are_read_from_proc() {
        let me = std::process::id();
        let rss = proc_memory(me, "VmRSS:").expect("VmRSS");
        let peak = proc_memory(me, "VmHWM:").expect("VmHWM");
        assert!(rss > 0 && peak >= rss, "rss {rss} peak {peak}");
        assert_eq!(proc_memory(me, "NoSuchField:"), None);
    }

    #[test]
    fn the_source_hash_is_the_files() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("f");
        let want = write_source(&path, (8 << 20) + 3).expect("write");
        let (got, len) = hash_file(&path).expect("hash");
        assert_eq!((got, len), (want, (8 << 20) + 3));
        // Seeded: the same bytes every time.
        let again = write_source(&path, (8 << 20) + 3).expect("write");
        assert_eq!(again, want);
    }

    #[test]
    fn medians_of_odd_and_even_lists() {
        assert_eq!(median(&[3.0, 1.0, 2.0]), 2.0);
        assert_eq!(median(&[4.0, 1.0]), 4.0);
        assert_eq!(median(&[]), 0.0);
    }
}
