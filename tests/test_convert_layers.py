"""The layers around the GRUs of real Keras models: Activation, Dropout, SpatialDropout1D, Flatten, Masking,
Embedding (mask_zero), Bidirectional merge modes; the tutorial's GRU -> Dense -> Activation("softmax").

Fixtures (tests/fixtures/keras/): keras2_<name>.h5 / .keras made by real Keras 2 (tf-keras,
scripts/make_keras2_fixtures.py) and <name>.keras made by Keras 3 (scripts/make_keras_fixtures.py), each with
Keras's own outputs in <name>.npz, so these tests need neither TensorFlow nor Keras.
"""
from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pytest
import torch

from grunet.checkpoint import load_model, save_checkpoint
from grunet.cli import main
from grunet.convert import StackModel, export_onnx, from_keras, to_keras, to_keras_h5
from grunet.convert.stack import (ActivationSpec, DenseSpec, DropoutSpec, EmbeddingSpec, FlattenSpec, GRUSpec,
                                  MaskingSpec)
from grunet.errors import GrunetError
from grunet.model import ModelConfig, SequenceClassifier

FIX = Path(__file__).parent / "fixtures" / "keras"
TOL = 1e-5
NAMES = ["tutorial_activation", "tutorial_default", "layers", "merge_modes", "masking", "masking_stack",
         "masking_bidirectional", "embedding", "embedding_nomask"]
MASKED = ("masking", "masking_stack", "masking_bidirectional", "embedding")
FILES = ([(f"keras2_{n}.h5", f"keras2_{n}") for n in NAMES] + [(f"{n}.keras", n) for n in NAMES]
         + [(f"keras2_{n}.keras", f"keras2_{n}") for n in ("tutorial_activation", "tutorial_default")])


def fixture(name):
    d = np.load(FIX / f"{name}.npz")
    return d["x"], d["y"]


def run(model, x) -> np.ndarray:
    x = torch.as_tensor(x)
    with torch.no_grad():
        return model(x.long() if not x.is_floating_point() else x).numpy()


def same_state(a, b) -> bool:
    sa, sb = a.state_dict(), b.state_dict()
    return sa.keys() == sb.keys() and all(torch.equal(sa[k], sb[k]) for k in sa)


@pytest.mark.parametrize("file, name", FILES)
def test_keras_outputs(file, name):
    model = from_keras(FIX / file, impl="reference")
    x, y = fixture(name)
    out = run(model, x)
    assert out.shape == y.shape and np.abs(out - y).max() < TOL


@pytest.mark.parametrize("version, activation", [("keras2", "hard_sigmoid_keras2"), ("", "hard_sigmoid_keras3")])
def test_the_tutorial_model_as_written(version, activation):
    """GRU(75, reset_after=False, hard_sigmoid) -> Dense(10) -> Activation("softmax"), input (28, 28)."""
    model = from_keras(FIX / (f"{version}_tutorial_activation.h5" if version else "tutorial_activation.keras"),
                       impl="reference")
    gru, dense, act = model.specs
    assert isinstance(gru, GRUSpec) and (gru.units, gru.reset_after, gru.recurrent_activation) == (75, False, activation)
    assert isinstance(dense, DenseSpec) and (dense.units, dense.activation) == (10, "linear")
    assert isinstance(act, ActivationSpec) and act.activation == "softmax"
    assert model.input_shape == (28, 28) and model.output_kind == "probabilities"
    assert sum(p.numel() for p in model.parameters()) == 3 * (75 * 28 + 75 * 75 + 75) + 75 * 10 + 10


def test_layer_kinds_read():
    kinds = [type(s).__name__ for s in from_keras(FIX / "keras2_layers.h5").specs]
    assert kinds == ["DropoutSpec", "GRUSpec", "DropoutSpec", "ActivationSpec", "FlattenSpec", "DenseSpec",
                     "ActivationSpec"]
    assert from_keras(FIX / "keras2_layers.h5").specs[0].spatial
    merges = [s.merge_mode for s in from_keras(FIX / "merge_modes.keras").specs if isinstance(s, GRUSpec)]
    assert merges == ["sum", "mul", "ave"]
    emb = from_keras(FIX / "keras2_embedding.h5")
    assert emb.input_shape == (9, None) and emb.specs[0] == EmbeddingSpec(emb.specs[0].name, 20, 6, True)
    assert from_keras(FIX / "masking_stack.keras").specs[0].mask_value == 0.5


@pytest.mark.parametrize("name", MASKED)
def test_masked_steps_follow_keras(name):
    """Rows 1-4 of the masked fixtures hold post-padding, pre-padding, a hole and nothing but padding."""
    model = from_keras(FIX / f"keras2_{name}.h5", impl="reference")
    x, y = fixture(f"keras2_{name}")
    for row in range(len(x)):
        assert np.abs(run(model, x[row:row + 1]) - y[row:row + 1]).max() < TOL


def test_masking_equals_the_unpadded_sequence():
    """A GRU behind Masking gives, for a padded row, the final state of the row without its padding."""
    g = torch.Generator().manual_seed(0)
    specs = [MaskingSpec("m", 0.0), GRUSpec("g", 4, reset_after=False, bidirectional=True), DenseSpec("d", 3)]
    masked = StackModel((None, 3), specs, impl="reference").eval()
    plain = StackModel((None, 3), specs[1:], impl="reference").eval()
    with torch.no_grad():
        for p in masked.parameters():
            p.copy_(torch.randn(p.shape, generator=g))
        plain.load_state_dict({k.replace("layers.1", "layers.0").replace("layers.2", "layers.1"): v
                               for k, v in masked.state_dict().items()})
    x = torch.randn(1, 5, 3, generator=g)
    pad = torch.zeros(1, 3, 3)
    for padded in (torch.cat([x, pad], 1), torch.cat([pad, x], 1), torch.cat([x[:, :2], pad, x[:, 2:]], 1)):
        assert torch.allclose(masked(padded), plain(x), atol=1e-6)


@pytest.mark.parametrize("name", NAMES)
def test_checkpoint_round_trip(tmp_path, name):
    model = from_keras(FIX / f"keras2_{name}.h5", impl="reference")
    save_checkpoint(tmp_path / "m.pt", model)
    back, _ = load_model(tmp_path / "m.pt", impl="reference")
    assert back.architecture_config() == model.architecture_config() and same_state(back, model)
    config = json.loads(json.dumps(model.architecture_config()))
    assert StackModel.from_config(config).architecture_config() == config
    x, y = fixture(f"keras2_{name}")
    assert np.abs(run(back, x) - y).max() < TOL


@pytest.mark.parametrize("name", NAMES)
def test_keras_writers_round_trip_exactly(tmp_path, name):
    k3 = from_keras(FIX / f"{name}.keras", impl="reference")
    to_keras(k3, tmp_path / "m.keras")
    back = from_keras(tmp_path / "m.keras", impl="reference")
    assert back.architecture_config() == k3.architecture_config() and same_state(back, k3)
    k2 = from_keras(FIX / f"keras2_{name}.h5", impl="reference")
    to_keras_h5(k2, tmp_path / "m.h5")
    back = from_keras(tmp_path / "m.h5", impl="reference")
    assert back.architecture_config() == k2.architecture_config() and same_state(back, k2)


@pytest.fixture(scope="module")
def keras():
    os.environ.setdefault("KERAS_BACKEND", "torch")
    return pytest.importorskip("keras")


@pytest.mark.parametrize("name", NAMES)
def test_keras_loads_what_to_keras_wrote(tmp_path, keras, name):
    to_keras(from_keras(FIX / f"{name}.keras", impl="reference"), tmp_path / "m.keras")
    loaded = keras.saving.load_model(tmp_path / "m.keras", compile=False)
    x, y = fixture(name)
    out = keras.ops.convert_to_numpy(loaded(x, training=False))
    assert np.abs(np.asarray(out) - y).max() < TOL


@pytest.mark.parametrize("name", ["tutorial_activation", "tutorial_default", "layers", "merge_modes",
                                  "embedding_nomask"])
@pytest.mark.parametrize("opset", [14, 23])
def test_onnx_of_new_layers(tmp_path, name, opset):
    ort = pytest.importorskip("onnxruntime")
    model = from_keras(FIX / f"{name}.keras", impl="reference")
    if name == "embedding_nomask":
        with pytest.raises(GrunetError, match=r"\(Embedding\): expected layers the ONNX export supports"):
            export_onnx(model, tmp_path / "m.onnx", opset=opset)
        assert not (tmp_path / "m.onnx").exists()
        return
    export_onnx(model, tmp_path / "m.onnx", opset=opset)
    x, y = fixture(name)
    out = ort.InferenceSession(str(tmp_path / "m.onnx")).run(None, {"input": x})[0]
    assert np.abs(out - y).max() < TOL


def test_onnx_refuses_masking_by_name(tmp_path, capsys):
    assert main(["convert", str(FIX / "masking.keras"), str(tmp_path / "m.onnx")]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "layer 'masking' (Masking): expected layers the ONNX export supports" in err
    assert not (tmp_path / "m.onnx").exists()


def test_stack_config_bounds_and_rules():
    ok = StackModel((6, 3), [GRUSpec("g", 4, return_sequences=True), FlattenSpec("f"), DenseSpec("d", 2)])
    assert ok.output_size == 2 and ok.layers[2].in_features == 24
    cases = [
        ((None, 3), [GRUSpec("g", 4, return_sequences=True), FlattenSpec("f")], "fixed number of steps"),
        ((6, 3), [GRUSpec("g", 4, merge_mode="sum")], "'concat' for a one-direction GRU"),
        ((6, 3), [GRUSpec("g", 4, bidirectional=True, merge_mode="max")], "merge_mode"),
        ((6, 3), [DropoutSpec("d", 1.5)], r"rate: expected a number in \[0, 1\)"),
        ((6, 3), [EmbeddingSpec("e", 5, 4)], "None .the first layer is an Embedding"),
        ((6, None), [GRUSpec("g", 4), EmbeddingSpec("e", 5, 4)], "input_shape I"),
        ((6, 3), [GRUSpec("g", 1 << 24), DenseSpec("d", 1 << 24)], "parameters"),  # petabytes: refused unallocated
        ((6, 3), [DenseSpec("d", 1 << 30)], "units"),
    ]
    for shape, specs, message in cases:
        with pytest.raises(GrunetError, match=message):
            StackModel(shape, specs)
    config = ok.architecture_config()
    for key, value in [("rate", "0.5"), ("mask_value", None), ("merge_mode", 3), ("input_dim", 2.0)]:
        layer = {"type": {"rate": "dropout", "mask_value": "masking", "merge_mode": "gru",
                          "input_dim": "embedding"}[key], "name": "x", key: value}
        layer.update({"units": 2} if layer["type"] == "gru" else {"output_dim": 2} if key == "input_dim" else {})
        with pytest.raises(GrunetError, match=key):
            StackModel.from_config({"input_shape": config["input_shape"], "layers": [layer]})


def test_predict_proba_takes_numpy():
    model = from_keras(FIX / "keras2_tutorial_activation.h5", impl="reference")
    x, y = fixture("keras2_tutorial_activation")
    p = model.predict_proba(x.astype(np.float64))  # what Keras users pass
    assert isinstance(p, np.ndarray) and p.dtype == np.float32 and np.abs(p - y).max() < TOL
    assert torch.equal(model.predict_proba(torch.from_numpy(x)), torch.from_numpy(model.predict_proba(x)))
    emb = from_keras(FIX / "keras2_embedding.h5", impl="reference")
    ids, y = fixture("keras2_embedding")
    assert np.abs(emb.predict_proba(ids.astype(np.int64)) - y).max() < TOL
    with pytest.raises(GrunetError, match="token ids"):
        emb.predict_proba(ids + 100)
    clf = SequenceClassifier(ModelConfig(input_size=4, hidden_size=3, num_classes=2), impl="reference").eval()
    x = np.random.default_rng(0).normal(size=(2, 5, 4))
    p = clf.predict_proba(x)
    assert isinstance(p, np.ndarray) and p.shape == (2, 2)
    assert np.allclose(p, clf.predict_proba(torch.from_numpy(x).float()).numpy(), atol=0)
    with pytest.raises(GrunetError, match="x: expected a tensor or a NumPy array"):
        clf.predict_proba("not an array")


def test_converted_keras2_tutorial_evaluates_and_predicts(tmp_path, capsys):
    from PIL import Image

    from grunet.data import load_split, to_sequences

    assert main(["convert", str(FIX / "keras2_tutorial_activation.h5"), str(tmp_path / "tut.pt")]) == 0
    capsys.readouterr()
    images, labels = load_split("mnist-sample", "test")
    model = from_keras(FIX / "keras2_tutorial_activation.h5", impl="reference")
    p = model.predict_proba(to_sequences(images, "rows"))
    accuracy = (p.argmax(1) == torch.as_tensor(labels)).double().mean().item()
    assert main(["eval", str(tmp_path / "tut.pt")]) == 0
    assert f"accuracy: {accuracy:.4f}" in capsys.readouterr().out
    Image.fromarray(images[3]).save(tmp_path / "d.png")
    assert main(["predict", str(tmp_path / "tut.pt"), str(tmp_path / "d.png")]) == 0
    assert capsys.readouterr().out.strip().split(": ")[1].split()[0] == str(int(p[3].argmax()))


def test_token_id_model_refuses_images_in_one_line(tmp_path, capsys):
    assert main(["convert", str(FIX / "keras2_embedding.h5"), str(tmp_path / "e.pt")]) == 0
    capsys.readouterr()
    assert main(["eval", str(tmp_path / "e.pt")]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "token ids" in err
