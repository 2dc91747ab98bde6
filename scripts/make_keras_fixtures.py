"""Make the Keras fixtures of tests/test_convert.py in tests/fixtures/keras/ (run once; the files are committed).

    pip install keras && KERAS_BACKEND=torch python scripts/make_keras_fixtures.py

Keras 3 models (real Keras, seeded random weights, biases included so a z/r swap cannot hide):
    <name>.keras + <name>.npz {x, y}: y = Keras's own model.predict(x)
    also hard_sigmoid.h5 (Keras 3's legacy model.save("x.h5")) and bidirectional.weights.h5 (save_weights)
    unsupported_lstm.keras, unsupported_conv1d.keras: layers grunet must refuse
The models of keras_fixture_models.py (Activation, Dropout, SpatialDropout1D, Flatten, Masking, Embedding,
Bidirectional merge modes; the tutorial's GRU -> Dense -> Activation): <name>.keras + <name>.npz, y = Keras's
model(x, training=False). ``--layers`` remakes only these.
Keras 2 files are made with real Keras 2 by make_keras2_fixtures.py.
The numpy forward pass below reads Keras's own layouts (kernel columns z | r | h) and is independent of grunet;
every Keras 3 model's predict() is checked against it too.
"""
from __future__ import annotations

import json
import os
import sys
from pathlib import Path

os.environ.setdefault("KERAS_BACKEND", "torch")
import numpy as np  # noqa: E402

OUT = Path(__file__).resolve().parents[1] / "tests" / "fixtures" / "keras"


# ----------------------------------------------------------------------------------------------------
# numpy oracle (float64), Keras layouts
def sigmoid(v):
    return 1.0 / (1.0 + np.exp(-v))


SIGMA = {"sigmoid": sigmoid,
         "hard_sigmoid_keras2": lambda v: np.clip(0.2 * v + 0.5, 0.0, 1.0),
         "hard_sigmoid_keras3": lambda v: np.clip(v / 6.0 + 0.5, 0.0, 1.0)}
DENSE = {"linear": lambda v: v, "relu": lambda v: np.maximum(v, 0), "tanh": np.tanh, "sigmoid": sigmoid,
         "softmax": lambda v: np.exp(v - v.max(-1, keepdims=True)) / np.exp(v - v.max(-1, keepdims=True)).sum(-1, keepdims=True)}


def np_gru(x, kernel, rk, bias, reset_after, sigma, backwards=False):
    """Keras GRU over x (B, T, I): returns outputs (B, T, U) in input time order and the last state (B, U)."""
    kernel, rk = kernel.astype(np.float64), rk.astype(np.float64)
    U = rk.shape[0]
    h = np.zeros((x.shape[0], U))
    outs = [None] * x.shape[1]
    steps = range(x.shape[1] - 1, -1, -1) if backwards else range(x.shape[1])
    for t in steps:
        xk = x[:, t] @ kernel
        if bias is not None:
            xk = xk + (bias[0] if reset_after else bias)
        hk = h @ rk
        if bias is not None and reset_after:
            hk = hk + bias[1]
        z = sigma(xk[:, :U] + hk[:, :U])
        r = sigma(xk[:, U:2 * U] + hk[:, U:2 * U])
        if reset_after:
            cand = np.tanh(xk[:, 2 * U:] + r * hk[:, 2 * U:])
        else:
            cand = np.tanh(xk[:, 2 * U:] + (r * h) @ rk[:, 2 * U:])
        h = z * h + (1 - z) * cand
        outs[t] = h
    return np.stack(outs, 1), h


def np_forward(layers, x):
    """layers: [(kind, settings, weights)], kind 'gru' | 'bigru' | 'dense'; x (B, T, I) -> output (float64)."""
    y = x.astype(np.float64)
    for kind, s, w in layers:
        if kind == "dense":
            y = DENSE[s["activation"]](y @ w[0].astype(np.float64) + (w[1] if len(w) > 1 else 0))
            continue
        n = len(w) // (2 if kind == "bigru" else 1)
        parts = [w[:n]] if kind == "gru" else [w[:n], w[n:]]
        results = []
        for d, p in enumerate(parts):
            out, h = np_gru(y, p[0], p[1], p[2] if len(p) > 2 else None, s["reset_after"], SIGMA[s["sigma"]],
                            backwards=d == 1)
            results.append(out if s["return_sequences"] else h)
        y = np.concatenate(results, -1)
    return y


# ----------------------------------------------------------------------------------------------------
def keras3_fixtures(rng):
    import keras
    from keras import layers as L

    def seeded(model):
        for w in model.weights:  # ~unit pre-activations: 0.6 for the small models, 1.5 / sqrt(fan-in) for wide ones
            scale = 0.6 if w.shape[0] <= 8 else 1.5 / np.sqrt(w.shape[0])
            w.assign((rng.normal(size=tuple(w.shape)) * scale).astype(np.float32))
        return model

    def describe(model):
        out = []
        for layer in model.layers:
            if isinstance(layer, L.InputLayer):
                continue
            w = [np.asarray(v) for v in layer.get_weights()]
            if isinstance(layer, L.Dense):
                out.append(("dense", {"activation": layer.get_config()["activation"]}, w))
                continue
            cell = layer.forward_layer if isinstance(layer, L.Bidirectional) else layer
            c = cell.get_config()
            sigma = "hard_sigmoid_keras3" if c["recurrent_activation"] == "hard_sigmoid" else c["recurrent_activation"]
            out.append(("bigru" if isinstance(layer, L.Bidirectional) else "gru",
                        {"reset_after": c["reset_after"], "sigma": sigma, "return_sequences": c["return_sequences"]}, w))
        return out

    models = {
        "reset_after": keras.Sequential([keras.Input((7, 4)), L.GRU(5), L.Dense(3)]),
        "reset_before": keras.Sequential([keras.Input((7, 4)), L.GRU(5, reset_after=False), L.Dense(3, activation="tanh")]),
        "hard_sigmoid": keras.Sequential([keras.Input((7, 4)), L.GRU(5, reset_after=False, recurrent_activation="hard_sigmoid"),
                                          L.Dense(2, activation="sigmoid")]),
        "bidirectional": keras.Sequential([keras.Input((6, 4)), L.Bidirectional(L.GRU(4, return_sequences=True)),
                                           L.Bidirectional(L.GRU(3, reset_after=False, recurrent_activation="hard_sigmoid")),
                                           L.Dense(3, activation="softmax")]),
        "tutorial": keras.Sequential([keras.Input((28, 28)), L.GRU(75), L.Dense(10, activation="softmax")]),
    }
    inp = keras.Input((6, 4), name="digits")  # functional, stacked, Dense on the sequence
    h = L.GRU(5, return_sequences=True, name="encoder")(inp)
    h = L.GRU(4, return_sequences=True, reset_after=False)(h)
    models["stacked"] = keras.Model(inp, L.Dense(3, activation="relu", name="per_step")(h))
    for name, model in models.items():
        seeded(model)
        T, I = model.input_shape[1:]
        x = rng.random((3, T, I)).astype(np.float32) if name == "tutorial" else rng.normal(size=(3, T, I)).astype(np.float32)
        y = np.asarray(model.predict(x, verbose=0))
        err = np.abs(np_forward(describe(model), x) - y).max()
        assert err < 1e-5, f"{name}: Keras and the numpy oracle differ by {err}"
        model.save(OUT / f"{name}.keras")
        np.savez(OUT / f"{name}.npz", x=x, y=y)
        print(f"{name}.keras: Keras vs numpy oracle max abs diff {err:.2e}")
    models["hard_sigmoid"].save(OUT / "hard_sigmoid.h5")  # Keras 3's legacy HDF5: keras_version 3.x
    models["bidirectional"].save_weights(OUT / "bidirectional.weights.h5")
    seeded(keras.Sequential([keras.Input((5, 3)), L.LSTM(4), L.Dense(2)])).save(OUT / "unsupported_lstm.keras")
    seeded(keras.Sequential([keras.Input((5, 3)), L.Conv1D(4, 2), L.GRU(3), L.Dense(2)])).save(
        OUT / "unsupported_conv1d.keras")
    return keras.__version__


# ----------------------------------------------------------------------------------------------------
def keras3_layer_fixtures(rng):
    """The models of keras_fixture_models.py (Activation, Dropout, Flatten, Masking, Embedding, merge modes):
    <name>.keras + <name>.npz {x, y}, y = Keras's own model(x, training=False)."""
    import keras

    sys.path.insert(0, str(Path(__file__).resolve().parent))
    from keras_fixture_models import inputs, models, seed_weights

    for name, model in models(keras, 3).items():
        seed_weights(model, rng)
        x = inputs(name, model, rng)
        y = np.asarray(keras.ops.convert_to_numpy(model(x, training=False)))
        model.save(OUT / f"{name}.keras")
        np.savez(OUT / f"{name}.npz", x=x, y=y)
        print(f"{name}.keras: x {x.shape} -> y {y.shape}")
    return keras.__version__


def main() -> int:
    OUT.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(20261126)
    only_layers = sys.argv[1:] == ["--layers"]  # remake only the layer fixtures (the others stay byte-equal)
    version = keras3_fixtures(rng) if not only_layers else None
    version = keras3_layer_fixtures(np.random.default_rng(20261130)) or version
    (OUT / "VERSIONS.txt").write_text(f"Keras {version} (backend {os.environ['KERAS_BACKEND']}), numpy {np.__version__}\n")
    print(f"wrote {OUT}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
