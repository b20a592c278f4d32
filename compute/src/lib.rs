//! Loam compute: the tabular dataset format, the model registry and local
//! training with burn.
//!
//! Everything here is pure computation; the storage node calls it for its
//! tasks, the uplink for dataset upload, initial weights and evaluation.
//! Weights cross process boundaries as one flat `f32` vector (see
//! [`model::Net::flatten`]), so the satellite can average them without
//! burn.

pub mod dataset;
pub mod export;
pub mod federate;
pub mod gpu;
pub mod model;
pub mod train;

pub use dataset::{Records, Schema};
pub use model::{Architecture, ModelFile, ModelHeader, ModelSpec};
pub use train::{TrainOutput, TrainParams};

use burn::tensor::Device;

#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ComputeError {
    #[error(transparent)]
    Spec(#[from] loam_common::compute::SpecError),
    #[error("bad model: {0}")]
    BadModel(String),
    #[error("expected {expected} weights, got {got}")]
    WeightCount { expected: usize, got: usize },
    #[error("bad model file: {0}")]
    ModelFile(String),
    #[error(transparent)]
    Dataset(#[from] dataset::DatasetError),
}

/// Where training runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Backend {
    /// burn's ndarray backend: portable and deterministic.
    #[default]
    Cpu,
    /// burn's wgpu backend (Vulkan, Metal, DX12); needs the `wgpu` feature.
    Gpu,
}

impl Backend {
    /// Whether this build can run on `self`.
    pub fn available(self) -> bool {
        match self {
            Self::Cpu => true,
            Self::Gpu => cfg!(feature = "wgpu"),
        }
    }

    /// The burn device (without autodiff). Falls back to the CPU where
    /// this build has no GPU support.
    pub fn device(self) -> Device {
        match self {
            #[cfg(feature = "wgpu")]
            Self::Gpu => Device::wgpu(match crate::gpu::detected() {
                // Only a software adapter found (Mesa's lavapipe, in CI):
                // ask for it by kind, as the default asks for a GPU.
                Some(a) if a.software => burn::tensor::DeviceKind::Cpu,
                _ => burn::tensor::DeviceKind::DefaultDevice,
            }),
            #[allow(deprecated)] // ndarray is the deterministic CPU backend the design asks for
            _ => Device::ndarray(),
        }
    }
}

impl std::str::FromStr for Backend {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "cpu" | "ndarray" => Ok(Self::Cpu),
            "gpu" | "wgpu" => Ok(Self::Gpu),
            other => Err(format!("unknown backend {other:?} (cpu or gpu)")),
        }
    }
}
