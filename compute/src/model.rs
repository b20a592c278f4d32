//! The model registry: built-in burn architectures, their parameters as one
//! flat `f32` vector (what travels between nodes and the satellite, and
//! what federated averaging works on), and the model file stored at the
//! end of a job.

use burn::module::{Module, ModuleMapper, ModuleVisitor, Param};
use burn::nn::conv::{Conv2d, Conv2dConfig};
use burn::nn::pool::MaxPool2dConfig;
use burn::nn::{Linear, LinearConfig, PaddingConfig2d};
use burn::store::ModuleRecord;
use burn::tensor::{Device, Tensor, TensorData, activation};
use serde::{Deserialize, Serialize};

use crate::ComputeError;
use crate::dataset::Schema;
use loam_common::compute::CONV_KERNEL;
pub use loam_common::compute::{Architecture, ImageShape, ModelSpec};

/// The burn module of `spec` with the given flat weights.
pub fn build(spec: &ModelSpec, weights: &[f32], device: &Device) -> Result<Net, ComputeError> {
    if weights.len() != spec.params() {
        return Err(ComputeError::WeightCount {
            expected: spec.params(),
            got: weights.len(),
        });
    }
    let convs = spec
        .conv_blocks()
        .iter()
        .map(|b| {
            Conv2dConfig::new([b.inputs, b.outputs], [CONV_KERNEL, CONV_KERNEL])
                .with_padding(PaddingConfig2d::Explicit(1, 1, 1, 1))
                .init(device)
        })
        .collect();
    let layers = spec
        .widths()
        .windows(2)
        .map(|p| LinearConfig::new(p[0], p[1]).init(device))
        .collect();
    let net = Net {
        convs,
        layers,
        image: spec.image,
    };
    Ok(net.map(&mut Loader {
        weights,
        at: 0,
        device: device.clone(),
    }))
}

/// A registry model as a burn module: a CNN's conv-pool blocks (none for
/// a dense model), then the fully connected layers. Its parameters are
/// visited in that order, each layer's weight before its bias: the order
/// of the flat weight vector.
#[derive(Module, Debug)]
pub struct Net {
    convs: Vec<Conv2d>,
    layers: Vec<Linear>,
    #[module(skip)]
    image: Option<ImageShape>,
}

impl Net {
    /// Logits `[batch, classes]` for `x` `[batch, inputs]`.
    pub fn forward(&self, x: Tensor<2>) -> Tensor<2> {
        let mut x = x;
        if let Some(image) = self.image {
            let batch = x.dims()[0];
            let mut m: Tensor<4> = x.reshape([batch, image.channels, image.height, image.width]);
            let pool = MaxPool2dConfig::new([2, 2]).init();
            for conv in &self.convs {
                m = pool.forward(activation::relu(conv.forward(m)));
            }
            x = m.flatten(1, 3);
        }
        let last = self.layers.len().saturating_sub(1);
        for (i, layer) in self.layers.iter().enumerate() {
            x = layer.forward(x);
            if i < last {
                x = activation::relu(x);
            }
        }
        x
    }

    /// Half the squared distance of the parameters to `anchor`'s (the
    /// proximal term of FedProx).
    pub fn half_distance(&self, anchor: &Net) -> Tensor<1> {
        self.pairwise_sum(
            anchor,
            |a, b| (a - b).powf_scalar(2.0).sum(),
            |a, b| (a - b).powf_scalar(2.0).sum(),
            |a, b| (a - b).powf_scalar(2.0).sum(),
        ) * 0.5
    }

    /// The dot product of the parameters with `other`'s (held constant):
    /// added to the loss, it adds `other` to every gradient (SCAFFOLD's
    /// drift correction).
    pub fn dot(&self, other: &Net) -> Tensor<1> {
        self.pairwise_sum(
            other,
            |a, b| (a * b).sum(),
            |a, b| (a * b).sum(),
            |a, b| (a * b).sum(),
        )
    }

    /// The sum over every parameter tensor of `f(own, other's detached)`
    /// (one closure per tensor rank: conv kernels, dense weights, biases).
    fn pairwise_sum(
        &self,
        other: &Net,
        f4: impl Fn(Tensor<4>, Tensor<4>) -> Tensor<1>,
        f2: impl Fn(Tensor<2>, Tensor<2>) -> Tensor<1>,
        f1: impl Fn(Tensor<1>, Tensor<1>) -> Tensor<1>,
    ) -> Tensor<1> {
        let mut terms = Vec::new();
        for (c, o) in self.convs.iter().zip(&other.convs) {
            terms.push(f4(c.weight.val(), o.weight.val().detach()));
            if let (Some(b), Some(ob)) = (&c.bias, &o.bias) {
                terms.push(f1(b.val(), ob.val().detach()));
            }
        }
        for (l, o) in self.layers.iter().zip(&other.layers) {
            terms.push(f2(l.weight.val(), o.weight.val().detach()));
            if let (Some(b), Some(ob)) = (&l.bias, &o.bias) {
                terms.push(f1(b.val(), ob.val().detach()));
            }
        }
        terms
            .into_iter()
            .reduce(|a, b| a + b)
            .expect("a model has layers")
    }

    /// The parameters as one flat vector, layer by layer (weight, then
    /// bias).
    pub fn flatten(&self) -> Vec<f32> {
        let mut f = Flattener(Vec::with_capacity(self.num_params()));
        self.visit(&mut f);
        f.0
    }
}

struct Flattener(Vec<f32>);

impl ModuleVisitor for Flattener {
    fn visit_float<const D: usize>(&mut self, param: &Param<Tensor<D>>) {
        let data = param.val().into_data();
        match data.as_slice::<f32>() {
            Ok(s) => self.0.extend_from_slice(s),
            Err(_) => self
                .0
                .extend(data.iter::<f32>().collect::<Vec<_>>().iter().copied()),
        }
    }
}

struct Loader<'a> {
    weights: &'a [f32],
    at: usize,
    device: Device,
}

impl ModuleMapper for Loader<'_> {
    fn map_float<const D: usize>(&mut self, param: Param<Tensor<D>>) -> Param<Tensor<D>> {
        let device = self.device.clone();
        let weights = self.weights;
        let at = &mut self.at;
        param.map(move |old| {
            let shape = old.shape();
            let n = shape.num_elements();
            let data = TensorData::new(weights[*at..*at + n].to_vec(), shape);
            *at += n;
            let t = Tensor::<D>::from_data(data, &device);
            if old.is_require_grad() {
                t.require_grad()
            } else {
                t
            }
        })
    }
}

const MAGIC: &[u8; 8] = b"LOAMMDL1";

/// What a model file says about the model besides its weights.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ModelHeader {
    pub spec: ModelSpec,
    /// Columns, label, classes and feature scaling of the training data.
    pub schema: Schema,
    /// Free-form provenance: job id, rounds, hyperparameters.
    #[serde(default)]
    pub trained: serde_json::Value,
}

impl ModelHeader {
    /// Whether the model's sizes and task are those of its schema.
    pub fn fits(&self) -> Result<(), ComputeError> {
        if self.spec.inputs != self.schema.features()
            || self.spec.classes != self.schema.outputs()
            || self.spec.task != self.schema.task
        {
            return Err(ComputeError::ModelFile(
                "model sizes do not match its schema".into(),
            ));
        }
        Ok(())
    }
}

/// A trained model: `LOAMMDL1`, the header length (u32, little endian), the
/// header (JSON), then the burn record of the weights.
#[derive(Debug, Clone, PartialEq)]
pub struct ModelFile {
    pub header: ModelHeader,
    pub weights: Vec<f32>,
}

impl ModelFile {
    pub fn to_bytes(&self) -> Result<Vec<u8>, ComputeError> {
        let device = crate::Backend::Cpu.device();
        let net = build(&self.header.spec, &self.weights, &device)?;
        let record = net
            .into_record()
            .into_bytes()
            .map_err(|e| ComputeError::ModelFile(format!("burn record: {e:?}")))?;
        let header =
            serde_json::to_vec(&self.header).map_err(|e| ComputeError::ModelFile(e.to_string()))?;
        let mut out = Vec::with_capacity(12 + header.len() + record.len());
        out.extend_from_slice(MAGIC);
        out.extend_from_slice(&(header.len() as u32).to_le_bytes());
        out.extend_from_slice(&header);
        out.extend_from_slice(&record);
        Ok(out)
    }

    pub fn from_bytes(bytes: &[u8]) -> Result<Self, ComputeError> {
        let bad = |m: &str| ComputeError::ModelFile(m.to_string());
        let rest = bytes
            .strip_prefix(MAGIC)
            .ok_or_else(|| bad("not a Loam model file"))?;
        let (len, rest) = rest
            .split_first_chunk::<4>()
            .ok_or_else(|| bad("truncated header"))?;
        let len = u32::from_le_bytes(*len) as usize;
        if rest.len() < len {
            return Err(bad("truncated header"));
        }
        let header: ModelHeader = serde_json::from_slice(&rest[..len])
            .map_err(|e| ComputeError::ModelFile(format!("header: {e}")))?;
        header.schema.validate()?;
        let spec = header.spec.rebuilt()?;
        header.fits()?;
        let record =
            ModuleRecord::from_bytes(burn::tensor::Bytes::from_bytes_vec(rest[len..].to_vec()))
                .map_err(|e| ComputeError::ModelFile(format!("burn record: {e:?}")))?;
        let device = crate::Backend::Cpu.device();
        let net = build(&spec, &spec.init_weights(0), &device)?;
        let net =
            std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| net.load_record(record)))
                .map_err(|_| bad("burn record does not fit the model"))?;
        let weights = net.flatten();
        Ok(Self { header, weights })
    }
}
