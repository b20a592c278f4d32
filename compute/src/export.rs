//! Models in the safetensors format, for use outside Loam (PyTorch, NumPy,
//! JAX, ...).
//!
//! Layer `i` of the registry model becomes two tensors in PyTorch's
//! `nn.Linear` layout: `layers.i.weight`, `[out, in]`, and
//! `layers.i.bias`, `[out]`, both `F32`. The forward pass is
//! `x = relu(x @ W.T + b)` for every layer but the last, whose output
//! is the logits (softmax gives the probabilities `model predict
//! --probabilities` prints), or for a regression model the one output,
//! in standardized units (`* target_std + target_mean` of the schema). The metadata carries what a user needs to
//! feed it the same inputs: the architecture and sizes (`loam.spec`), the
//! columns, label, classes and feature scaling (`loam.schema`: each
//! feature is `(value - mean) / std`), and the training provenance
//! (`loam.trained`), all as JSON strings.
//!
//! A CNN's conv-pool blocks come first, as `convs.i.weight`, `[out, in,
//! 3, 3]` (PyTorch's `nn.Conv2d` layout, padding 1), and `convs.i.bias`:
//! the features are reshaped to the image (`[C, H, W]` of `image` in
//! `loam.spec`), and each block is `max_pool2d(relu(conv2d(x)), 2)`; the
//! result is flattened in `C, H, W` order and goes through the
//! `layers.i` as above.

use std::collections::HashMap;

use safetensors::tensor::{Dtype, SafeTensors, TensorView};

use crate::ComputeError;
use crate::model::{ModelFile, ModelHeader, ModelSpec};

/// The metadata keys of an exported model.
pub const SPEC_KEY: &str = "loam.spec";
pub const SCHEMA_KEY: &str = "loam.schema";
pub const TRAINED_KEY: &str = "loam.trained";
pub const FORWARD_KEY: &str = "loam.forward";

const FORWARD: &str = "for each layer i: x = x @ layers.i.weight.T + layers.i.bias, \
     then relu except after the last layer; the result is the logits (softmax for probabilities); \
     inputs are the schema's feature columns in order, each scaled as (value - mean) / std";
const FORWARD_CNN: &str = "reshape the scaled features to [batch, C, H, W] (image in loam.spec); \
     for each block i: x = max_pool2d(relu(conv2d(x, convs.i.weight, convs.i.bias, padding=1)), 2) (floor); \
     flatten to [batch, C*H*W]; then ";
const FORWARD_REGRESSION: &str = "for each layer i: x = x @ layers.i.weight.T + layers.i.bias, \
     then relu except after the last layer; the prediction is the single output * target_std + target_mean; \
     inputs are the schema's feature columns in order, each scaled as (value - mean) / std";

/// Named tensors as (name, shape, little-endian bytes).
type Buffers = Vec<(String, Vec<usize>, Vec<u8>)>;

/// The weight and bias tensor names of layer `i` of `group` (`layers`
/// for the dense layers, `convs` for a CNN's conv blocks).
fn tensor_names(group: &str, i: usize) -> (String, String) {
    (format!("{group}.{i}.weight"), format!("{group}.{i}.bias"))
}

fn le_bytes(v: &[f32]) -> Vec<u8> {
    v.iter().flat_map(|x| x.to_le_bytes()).collect()
}

fn bad(m: impl Into<String>) -> ComputeError {
    ComputeError::ModelFile(m.into())
}

/// `model` as a safetensors file.
pub fn to_safetensors(model: &ModelFile) -> Result<Vec<u8>, ComputeError> {
    let spec = &model.header.spec;
    if model.weights.len() != spec.params() {
        return Err(ComputeError::WeightCount {
            expected: spec.params(),
            got: model.weights.len(),
        });
    }
    // The flat vector holds each conv block's kernel (burn's layout is
    // PyTorch's) and bias, then, layer by layer, burn's `[in, out]` weight
    // and the bias; PyTorch's layout is the transpose.
    let mut buffers: Buffers = Vec::new();
    let mut at = 0;
    for (i, b) in spec.conv_blocks().iter().enumerate() {
        let (wn, bn) = tensor_names("convs", i);
        let k = loam_common::compute::CONV_KERNEL;
        buffers.push((
            wn,
            vec![b.outputs, b.inputs, k, k],
            le_bytes(&model.weights[at..at + b.kernel_len()]),
        ));
        at += b.kernel_len();
        buffers.push((
            bn,
            vec![b.outputs],
            le_bytes(&model.weights[at..at + b.outputs]),
        ));
        at += b.outputs;
    }
    for (layer, pair) in spec.widths().windows(2).enumerate() {
        let (inputs, outputs) = (pair[0], pair[1]);
        let w = &model.weights[at..at + inputs * outputs];
        let mut t = Vec::with_capacity(w.len() * 4);
        for o in 0..outputs {
            for i in 0..inputs {
                t.extend_from_slice(&w[i * outputs + o].to_le_bytes());
            }
        }
        at += inputs * outputs;
        let b = le_bytes(&model.weights[at..at + outputs]);
        at += outputs;
        let (wn, bn) = tensor_names("layers", layer);
        buffers.push((wn, vec![outputs, inputs], t));
        buffers.push((bn, vec![outputs], b));
    }
    let views = buffers
        .iter()
        .map(|(name, shape, data)| {
            TensorView::new(Dtype::F32, shape.clone(), data)
                .map(|v| (name.clone(), v))
                .map_err(|e| bad(format!("safetensors: {e}")))
        })
        .collect::<Result<Vec<_>, _>>()?;
    let metadata = HashMap::from([
        ("format".to_string(), "pt".to_string()),
        (SPEC_KEY.to_string(), to_json(spec)?),
        (SCHEMA_KEY.to_string(), to_json(&model.header.schema)?),
        (TRAINED_KEY.to_string(), to_json(&model.header.trained)?),
        (
            FORWARD_KEY.to_string(),
            format!(
                "{}{}",
                if spec.image.is_some() {
                    FORWARD_CNN
                } else {
                    ""
                },
                if spec.task.is_regression() {
                    FORWARD_REGRESSION
                } else {
                    FORWARD
                }
            ),
        ),
    ]);
    safetensors::tensor::serialize(views, Some(metadata))
        .map_err(|e| bad(format!("safetensors: {e}")))
}

/// A model from a safetensors file written by [`to_safetensors`] (or by
/// anything that keeps its tensor names, shapes and metadata), checked as
/// strictly as a Loam model file.
pub fn from_safetensors(bytes: &[u8]) -> Result<ModelFile, ComputeError> {
    let (_, meta) =
        SafeTensors::read_metadata(bytes).map_err(|e| bad(format!("not safetensors: {e}")))?;
    let info = meta
        .metadata()
        .as_ref()
        .ok_or_else(|| bad("safetensors file without Loam metadata"))?;
    let field = |key: &str| {
        info.get(key)
            .ok_or_else(|| bad(format!("safetensors metadata has no {key}")))
    };
    let parse_err = |key: &str, e: serde_json::Error| bad(format!("{key}: {e}"));
    let spec: ModelSpec =
        serde_json::from_str(field(SPEC_KEY)?).map_err(|e| parse_err(SPEC_KEY, e))?;
    let schema: crate::Schema =
        serde_json::from_str(field(SCHEMA_KEY)?).map_err(|e| parse_err(SCHEMA_KEY, e))?;
    let trained = match info.get(TRAINED_KEY) {
        Some(t) => serde_json::from_str(t).map_err(|e| parse_err(TRAINED_KEY, e))?,
        None => serde_json::Value::Null,
    };
    schema.validate()?;
    let spec = spec.rebuilt()?;
    let header = ModelHeader {
        spec,
        schema,
        trained,
    };
    header.fits()?;
    let spec = &header.spec;
    let tensors =
        SafeTensors::deserialize(bytes).map_err(|e| bad(format!("not safetensors: {e}")))?;
    let widths = spec.widths();
    let blocks = spec.conv_blocks();
    let expected = 2 * (blocks.len() + widths.len() - 1);
    if tensors.len() != expected {
        return Err(bad(format!(
            "{} tensors, the model has {expected}",
            tensors.len(),
        )));
    }
    let read = |name: &str, shape: &[usize]| -> Result<Vec<f32>, ComputeError> {
        let t = tensors
            .tensor(name)
            .map_err(|_| bad(format!("no tensor {name}")))?;
        if t.dtype() != Dtype::F32 || t.shape() != shape {
            return Err(bad(format!(
                "tensor {name} is {:?} {:?}, expected F32 {shape:?}",
                t.dtype(),
                t.shape()
            )));
        }
        Ok(t.data()
            .chunks_exact(4)
            .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
            .collect())
    };
    let mut weights = Vec::with_capacity(spec.params());
    for (i, b) in blocks.iter().enumerate() {
        let (wn, bn) = tensor_names("convs", i);
        let k = loam_common::compute::CONV_KERNEL;
        weights.extend(read(&wn, &[b.outputs, b.inputs, k, k])?);
        weights.extend(read(&bn, &[b.outputs])?);
    }
    for (layer, pair) in widths.windows(2).enumerate() {
        let (inputs, outputs) = (pair[0], pair[1]);
        let (wn, bn) = tensor_names("layers", layer);
        let w = read(&wn, &[outputs, inputs])?;
        for i in 0..inputs {
            weights.extend((0..outputs).map(|o| w[o * inputs + i]));
        }
        weights.extend(read(&bn, &[outputs])?);
    }
    if weights.iter().any(|w| !w.is_finite()) {
        return Err(bad("weights that are not finite numbers"));
    }
    Ok(ModelFile { header, weights })
}

fn to_json<T: serde::Serialize>(v: &T) -> Result<String, ComputeError> {
    serde_json::to_string(v).map_err(|e| bad(e.to_string()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::Architecture;

    fn model() -> ModelFile {
        let spec = ModelSpec::new(Architecture::Mlp, vec![3], 2, 2).expect("spec");
        ModelFile {
            header: ModelHeader {
                spec: spec.clone(),
                schema: crate::Schema {
                    columns: vec!["a".into(), "b".into(), "y".into()],
                    label: 2,
                    classes: vec!["no".into(), "yes".into()],
                    mean: vec![0.5, -1.0],
                    std: vec![2.0, 1.0],
                    records: 10,
                    task: Default::default(),
                    target_mean: 0.0,
                    target_std: 1.0,
                    image: None,
                },
                trained: serde_json::json!({"rounds": 3}),
            },
            weights: (0..spec.params()).map(|i| i as f32 * 0.25 - 1.0).collect(),
        }
    }

    #[test]
    fn safetensors_round_trip_in_pytorch_layout() {
        let m = model();
        let bytes = to_safetensors(&m).expect("export");
        assert_eq!(from_safetensors(&bytes).expect("import"), m);
        let t = SafeTensors::deserialize(&bytes).expect("parse");
        // Layer 0 is 2 -> 3: burn keeps [in, out] = [[-1, -0.75, -0.5],
        // [-0.25, 0, 0.25]]; PyTorch's [out, in] is its transpose.
        let w0 = t.tensor("layers.0.weight").expect("w0");
        assert_eq!(w0.shape(), [3, 2]);
        let w0: Vec<f32> = w0
            .data()
            .chunks_exact(4)
            .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
            .collect();
        assert_eq!(w0, [-1.0, -0.25, -0.75, 0.0, -0.5, 0.25]);
        assert_eq!(t.tensor("layers.1.weight").expect("w1").shape(), [2, 3]);
        assert_eq!(t.tensor("layers.1.bias").expect("b1").shape(), [2]);
    }

    #[test]
    fn regression_models_export_with_their_label_scaling() {
        use loam_common::compute::Task;
        let text = b"a,b,y\n1,2,10\n3,5,30\n4,1,20\n";
        let schema = crate::dataset::scan_for(text, "y", Task::Regression).expect("scan");
        let spec =
            ModelSpec::for_task(Architecture::Mlp, vec![3], 2, 1, Task::Regression).expect("spec");
        let m = ModelFile {
            header: ModelHeader {
                spec: spec.clone(),
                schema,
                trained: serde_json::Value::Null,
            },
            weights: spec.init_weights(4),
        };
        let bytes = to_safetensors(&m).expect("export");
        assert_eq!(from_safetensors(&bytes).expect("import"), m);
        let (_, meta) = SafeTensors::read_metadata(&bytes).expect("metadata");
        let info = meta.metadata().as_ref().expect("info");
        assert!(info[FORWARD_KEY].contains("target_std"));
        assert!(info[SCHEMA_KEY].contains("\"task\":\"regression\""));
        assert!(info[SPEC_KEY].contains("\"task\":\"regression\""));
        // A model file whose task disagrees with its schema is refused.
        let mut other = m.clone();
        other.header.schema.task = Task::Classification;
        other.header.schema.classes = vec!["a".into(), "b".into()];
        assert!(from_safetensors(&to_safetensors(&other).expect("export")).is_err());
        assert!(ModelFile::from_bytes(&m.to_bytes().expect("bytes")).is_ok());
        assert!(ModelFile::from_bytes(&other.to_bytes().expect("bytes")).is_err());
    }

    #[test]
    fn safetensors_that_do_not_fit_are_refused() {
        let m = model();
        let good = to_safetensors(&m).expect("export");
        assert!(
            from_safetensors(&good[..good.len() - 4]).is_err(),
            "truncated"
        );
        assert!(from_safetensors(b"not a model").is_err());
        // A tensor of the wrong shape, a missing one, a non-finite weight.
        let rewrite = |f: &dyn Fn(&mut Buffers)| {
            let t = SafeTensors::deserialize(&good).expect("parse");
            let mut buffers: Buffers = t
                .tensors()
                .into_iter()
                .map(|(n, v)| (n, v.shape().to_vec(), v.data().to_vec()))
                .collect();
            f(&mut buffers);
            let (_, meta) = SafeTensors::read_metadata(&good).expect("meta");
            let views = buffers.iter().map(|(n, s, d)| {
                (
                    n.clone(),
                    TensorView::new(Dtype::F32, s.clone(), d).expect("view"),
                )
            });
            safetensors::tensor::serialize(views, meta.metadata().clone()).expect("serialize")
        };
        let reshaped = rewrite(&|b| {
            let w = b.iter_mut().find(|t| t.0 == "layers.0.weight").expect("w0");
            w.1 = vec![2, 3];
        });
        let e = from_safetensors(&reshaped).expect_err("shape");
        assert!(e.to_string().contains("expected F32 [3, 2]"), "{e}");
        let missing = rewrite(&|b| b.retain(|t| t.0 != "layers.1.bias"));
        assert!(from_safetensors(&missing).is_err());
        let nan = rewrite(&|b| {
            let w = b.iter_mut().find(|t| t.0 == "layers.1.bias").expect("b1");
            w.2[..4].copy_from_slice(&f32::NAN.to_le_bytes());
        });
        let e = from_safetensors(&nan).expect_err("nan");
        assert!(e.to_string().contains("not finite"), "{e}");
        // Metadata whose sizes disagree with the schema.
        let mut other = m.clone();
        other.header.schema.classes.push("maybe".into());
        let e = to_safetensors(&other).and_then(|b| from_safetensors(&b));
        assert!(e.is_err());
    }
}
