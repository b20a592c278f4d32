"""Class probabilities from a model exported by
`uplink model export MODEL --format safetensors --out m.safetensors`,
with NumPy alone (pip install safetensors numpy).

    python3 predict_safetensors.py m.safetensors data.csv > predictions.csv

The CSV needs the model's feature columns (the label column may be there);
the output is `row,predicted_LABEL,p_CLASS...`, as
`uplink model predict --probabilities` prints it.
"""

import csv
import json
import sys

import numpy as np
from safetensors import safe_open


def load(path):
    with safe_open(path, framework="np") as f:
        meta = f.metadata()
        tensors = {name: f.get_tensor(name) for name in f.keys()}
    spec = json.loads(meta["loam.spec"])
    schema = json.loads(meta["loam.schema"])
    layers = len(spec["hidden"]) + 1
    weights = [(tensors[f"layers.{i}.weight"], tensors[f"layers.{i}.bias"]) for i in range(layers)]
    return schema, weights


def probabilities(weights, x):
    # Same layout as torch.nn.Linear: y = x @ W.T + b, ReLU between layers.
    for i, (w, b) in enumerate(weights):
        x = x @ w.T + b
        if i < len(weights) - 1:
            x = np.maximum(x, 0.0)
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
    schema, weights = load(sys.argv[1])
    p = probabilities([(w.astype(np.float64), b.astype(np.float64)) for w, b in weights],
                      features(schema, sys.argv[2]))
    classes = schema["classes"]
    out = csv.writer(sys.stdout, lineterminator="\n")
    out.writerow(["row", "predicted_" + schema["columns"][schema["label"]]]
                 + ["p_" + c for c in classes])
    for i, row in enumerate(p):
        out.writerow([i, classes[int(row.argmax())]] + [repr(float(v)) for v in row])


if __name__ == "__main__":
    main()
