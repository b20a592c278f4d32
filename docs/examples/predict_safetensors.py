"""Predictions from a model exported by
`uplink model export MODEL --format safetensors --out m.safetensors`,
with NumPy alone (pip install safetensors numpy).

    python3 predict_safetensors.py m.safetensors data.csv > predictions.csv

The CSV needs the model's feature columns (the label column may be there).
For a classifier the output is `row,predicted_LABEL,p_CLASS...`, as
`uplink model predict --probabilities` prints it; for a regression model
(`"task": "regression"` in its schema) it is `row,predicted_LABEL`, as
`uplink model predict` prints it.
"""

import csv
import json
import sys

import numpy as np
from safetensors import safe_open


def load(path):
    with safe_open(path, framework="np") as f:
        meta = f.metadata()
        tensors = {name: f.get_tensor(name).astype(np.float64) for name in f.keys()}
    spec = json.loads(meta["loam.spec"])
    schema = json.loads(meta["loam.schema"])
    layers = len(spec["hidden"]) + 1
    model = {
        "image": spec.get("image"),
        "convs": [
            (tensors[f"convs.{i}.weight"], tensors[f"convs.{i}.bias"])
            for i in range(len(spec.get("conv", [])))
        ],
        "layers": [
            (tensors[f"layers.{i}.weight"], tensors[f"layers.{i}.bias"]) for i in range(layers)
        ],
    }
    return schema, model


def conv_block(x, w, b):
    # torch.nn.Conv2d(padding=1) with w [out, in, 3, 3], then ReLU and
    # 2x2 max pooling (odd sides round down).
    n, c, h, wd = x.shape
    padded = np.pad(x, ((0, 0), (0, 0), (1, 1), (1, 1)))
    windows = np.lib.stride_tricks.sliding_window_view(padded, (3, 3), axis=(2, 3))
    y = np.einsum("nchwij,ocij->nohw", windows, w) + b[None, :, None, None]
    y = np.maximum(y, 0.0)[:, :, : h // 2 * 2, : wd // 2 * 2]
    return y.reshape(n, y.shape[1], h // 2, 2, wd // 2, 2).max(axis=(3, 5))


def forward(model, x):
    image = model["image"]
    if image is not None:
        # Pixels are channel by channel, row by row.
        x = x.reshape(len(x), image["channels"], image["height"], image["width"])
        for w, b in model["convs"]:
            x = conv_block(x, w, b)
        x = x.reshape(len(x), -1)
    # Same layout as torch.nn.Linear: y = x @ W.T + b, ReLU between layers.
    layers = model["layers"]
    for i, (w, b) in enumerate(layers):
        x = x @ w.T + b
        if i < len(layers) - 1:
            x = np.maximum(x, 0.0)
    return x


def probabilities(model, x):
    x = forward(model, x)
    x = x - x.max(axis=1, keepdims=True)
    e = np.exp(x)
    return e / e.sum(axis=1, keepdims=True)


def features(schema, path):
    label = schema["columns"][schema["label"]]
    names = [c for c in schema["columns"] if c != label]
    with open(path, newline="") as f:
        rows = list(csv.DictReader(f))
    x = np.array([[float(r[c]) for c in names] for r in rows], dtype=np.float64)
    # The scaling the model was trained with: (value - mean) / std.
    return (x - np.array(schema["mean"])) / np.array(schema["std"])


def main():
    schema, model = load(sys.argv[1])
    x = features(schema, sys.argv[2])
    out = csv.writer(sys.stdout, lineterminator="\n")
    predicted = "predicted_" + schema["columns"][schema["label"]]
    if schema.get("task") == "regression":
        # The model predicts the standardized label.
        y = forward(model, x)[:, 0] * schema["target_std"] + schema.get("target_mean", 0.0)
        out.writerow(["row", predicted])
        for i, v in enumerate(y):
            out.writerow([i, repr(float(v))])
        return
    p = probabilities(model, x)
    classes = schema["classes"]
    out.writerow(["row", predicted] + ["p_" + c for c in classes])
    for i, row in enumerate(p):
        out.writerow([i, classes[int(row.argmax())]] + [repr(float(v)) for v in row])


if __name__ == "__main__":
    main()
