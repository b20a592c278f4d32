//! The GPU adapters this node can train on, as wgpu reports them.
//!
//! A build without the `wgpu` feature has none. With it, every adapter of
//! the platform's graphics API counts, software ones included (Mesa's
//! lavapipe runs Vulkan on the CPU, which is how CI exercises the wgpu
//! path), but they are reported as such, and [`best`] prefers hardware.

use serde::{Deserialize, Serialize};

/// One adapter.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Adapter {
    /// As the driver names it: "NVIDIA H100 80GB HBM3", "llvmpipe (LLVM
    /// 15.0.6, 256 bits)".
    pub name: String,
    /// discrete, integrated, virtual, cpu or other.
    pub kind: String,
    /// Vulkan, Metal, Dx12 or Gl.
    pub api: String,
    /// The driver and its version, where the driver says.
    pub driver: String,
    /// A driver that runs on the CPU (no GPU hardware behind it).
    pub software: bool,
    /// Memory the adapter has, where it can be found out: the system's
    /// memory for a software adapter, `nvidia-smi` for NVIDIA boards.
    /// wgpu itself does not report it.
    pub memory_bytes: Option<u64>,
    /// The largest single buffer the adapter allows (a lower bound on its
    /// memory, and what limits the largest tensor).
    pub max_buffer_bytes: u64,
}

impl Adapter {
    /// One line for people: "NVIDIA H100 (discrete, Vulkan, 80.0 GiB)".
    pub fn describe(&self) -> String {
        let memory = match self.memory_bytes {
            Some(m) => format!("{:.1} GiB", m as f64 / f64::from(1u32 << 30)),
            None => format!(
                "memory unknown, buffers up to {:.1} GiB",
                self.max_buffer_bytes as f64 / f64::from(1u32 << 30)
            ),
        };
        let software = if self.software { ", software" } else { "" };
        format!(
            "{} ({}, {}{software}, {memory})",
            self.name, self.kind, self.api
        )
    }
}

/// Every adapter wgpu finds, hardware first.
#[cfg(feature = "wgpu")]
pub fn adapters() -> Vec<Adapter> {
    // Vulkan, Metal and DX12: what burn trains on (GL is a fallback it
    // does not choose while one of these answers).
    let backends = wgpu::Backends::PRIMARY;
    let instance = wgpu::Instance::new(wgpu::InstanceDescriptor {
        backends,
        ..wgpu::InstanceDescriptor::new_without_display_handle()
    });
    let mut out: Vec<Adapter> = futures::executor::block_on(instance.enumerate_adapters(backends))
        .iter()
        .map(|a| {
            let info = a.get_info();
            let software = info.device_type == wgpu::DeviceType::Cpu;
            let kind = match info.device_type {
                wgpu::DeviceType::DiscreteGpu => "discrete",
                wgpu::DeviceType::IntegratedGpu => "integrated",
                wgpu::DeviceType::VirtualGpu => "virtual",
                wgpu::DeviceType::Cpu => "cpu",
                wgpu::DeviceType::Other => "other",
            };
            let memory_bytes = if software {
                system_memory()
            } else if info.vendor == NVIDIA {
                nvidia_memory(&info.name)
            } else {
                None
            };
            Adapter {
                name: info.name.clone(),
                kind: kind.to_string(),
                api: format!("{:?}", info.backend),
                driver: [info.driver.as_str(), info.driver_info.as_str()]
                    .iter()
                    .filter(|s| !s.is_empty())
                    .copied()
                    .collect::<Vec<_>>()
                    .join(" "),
                software,
                memory_bytes,
                max_buffer_bytes: a.limits().max_buffer_size,
            }
        })
        .collect();
    // Hardware first, discrete boards before integrated ones; the same
    // device through two APIs counts once.
    out.sort_by_key(|a| (a.software, a.kind != "discrete", a.api != "Vulkan"));
    let mut seen = std::collections::HashSet::new();
    out.retain(|a| seen.insert(a.name.clone()));
    out
}

/// Without the `wgpu` feature, this build trains on the CPU only.
#[cfg(not(feature = "wgpu"))]
pub fn adapters() -> Vec<Adapter> {
    Vec::new()
}

/// The adapter training would use: the first hardware one, else a
/// software one. Looked for once per process (listing adapters starts a
/// graphics API instance).
pub fn detected() -> Option<&'static Adapter> {
    static FOUND: std::sync::OnceLock<Option<Adapter>> = std::sync::OnceLock::new();
    FOUND.get_or_init(|| adapters().into_iter().next()).as_ref()
}

#[cfg(feature = "wgpu")]
const NVIDIA: u32 = 0x10de;

/// The board's memory from `nvidia-smi`, for the board of that name.
#[cfg(feature = "wgpu")]
fn nvidia_memory(name: &str) -> Option<u64> {
    let out = std::process::Command::new("nvidia-smi")
        .args([
            "--query-gpu=name,memory.total",
            "--format=csv,noheader,nounits",
        ])
        .output()
        .ok()?;
    let text = String::from_utf8(out.stdout).ok()?;
    text.lines().find_map(|l| {
        let (n, mib) = l.rsplit_once(',')?;
        (n.trim() == name).then_some(())?;
        mib.trim().parse::<u64>().ok().map(|m| m << 20)
    })
}

/// The machine's physical memory (Linux `/proc/meminfo`), if known.
pub fn system_memory() -> Option<u64> {
    let info = std::fs::read_to_string("/proc/meminfo").ok()?;
    let line = info.lines().find(|l| l.starts_with("MemTotal:"))?;
    let kib: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    kib.checked_mul(1024)
}
