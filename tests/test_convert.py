"""grunet.convert: Keras files in and out, torch.nn.GRU state dicts, ONNX export, and `grunet convert/export`.

Fixtures (tests/fixtures/keras/): Keras 3 files written by real Keras (scripts/make_keras_fixtures.py) and Keras 2
files written by real tf-keras (scripts/make_keras2_fixtures.py), each with Keras's own outputs on fixed inputs.
Where keras is importable, files grunet writes are also loaded in Keras.
"""
from __future__ import annotations

import json
import os
import zipfile
from pathlib import Path

import numpy as np
import pytest
import torch

import grunet
from grunet.checkpoint import load_model, save_checkpoint
from grunet.cli import main
from grunet.convert import (DenseSpec, GRUSpec, StackModel, as_stack, export_onnx, from_keras, from_torch_state_dict,
                            to_keras, to_keras_h5, to_torch_state_dict)
from grunet.errors import GrunetError
from grunet.model import ModelConfig, SequenceClassifier
from conftest import rewrite_keras_config

FIX = Path(__file__).parent / "fixtures" / "keras"
KERAS3 = ["reset_after", "reset_before", "hard_sigmoid", "bidirectional", "tutorial", "stacked"]
TOL = 1e-5


def run(model, x) -> np.ndarray:
    with torch.no_grad():
        return model(torch.as_tensor(x)).numpy()


def fixture(name):
    d = np.load(FIX / f"{name}.npz")
    return d["x"], d["y"]


def seeded(model, seed=0, scale=0.7):
    """Random weights for every parameter (biases too, so a z/r swap or a dropped bias cannot hide)."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            p.copy_(torch.randn(p.shape, generator=g) * scale)
    return model.eval()


STACKS = {
    "reset_after": ((7, 4), [GRUSpec("gru", 5), DenseSpec("dense", 3, "softmax")]),
    "reset_before_hard3": ((None, 4), [GRUSpec("gru", 5, reset_after=False, recurrent_activation="hard_sigmoid_keras3"),
                                       DenseSpec("dense", 3, "tanh")]),
    "stacked_bidir_seq": ((6, 3), [GRUSpec("g1", 4, return_sequences=True, bidirectional=True),
                                   GRUSpec("g2", 3, reset_after=False, return_sequences=True),
                                   DenseSpec("d1", 5, "relu"), DenseSpec("d2", 2, "sigmoid")]),
    "no_bias": ((5, 3), [GRUSpec("gru", 4, use_bias=False, bidirectional=True), DenseSpec("dense", 2, use_bias=False)]),
    "hard2": ((5, 3), [GRUSpec("gru", 4, reset_after=False, recurrent_activation="hard_sigmoid_keras2"),
                       DenseSpec("dense", 3, "softmax")]),
}
KERAS3_STACKS = [k for k in STACKS if k != "hard2"]


def make_stack(name, seed=0) -> StackModel:
    shape, specs = STACKS[name]
    return seeded(StackModel(shape, specs, impl="reference"), seed)


def classifier(cell="gru", **kw) -> SequenceClassifier:
    cfg = ModelConfig(input_size=6, hidden_size=5, num_classes=4, cell=cell, **kw)
    return seeded(SequenceClassifier(cfg, impl="reference"), 3)


def x_for(model, batch=3, steps=None, seed=1):
    T, I = model.input_shape
    return torch.randn(batch, steps or T or 7, I, generator=torch.Generator().manual_seed(seed)).numpy()


def same_state(a, b) -> bool:
    sa, sb = a.state_dict(), b.state_dict()
    return sa.keys() == sb.keys() and all(torch.equal(sa[k], sb[k]) for k in sa)


# ------------------------------------------------------------------------------------------------------
# Keras files in
@pytest.mark.parametrize("name", KERAS3)
def test_keras3_archive_gives_keras_outputs(name):
    model = from_keras(FIX / f"{name}.keras", impl="reference")
    x, y = fixture(name)
    out = run(model, x)
    assert out.shape == y.shape and np.abs(out - y).max() < TOL
    assert model.output_kind == ("probabilities" if name in ("bidirectional", "tutorial") else "logits")


def test_keras3_settings_read():
    hard = from_keras(FIX / "hard_sigmoid.keras", impl="reference")
    assert hard.specs[0].recurrent_activation == "hard_sigmoid_keras3" and not hard.specs[0].reset_after
    tutorial = from_keras(FIX / "tutorial.keras", impl="reference")
    assert tutorial.input_shape == (28, 28) and sum(p.numel() for p in tutorial.parameters()) == 24_385
    x, _ = fixture("tutorial")
    p = tutorial.predict_proba(torch.from_numpy(x))
    assert torch.allclose(p.sum(1), torch.ones(len(x)))
    bi = from_keras(FIX / "bidirectional.keras", impl="reference")
    assert [s.bidirectional for s in bi.specs[:2]] == [True, True] and bi.specs[1].recurrent_activation == "hard_sigmoid_keras3"
    stacked = from_keras(FIX / "stacked.keras", impl="reference")  # functional model, layer named "encoder"
    names = [s.name for s in stacked.specs]
    assert names[0] == "encoder" and names[2] == "per_step" and stacked.output_kind == "logits"


@pytest.mark.parametrize("file, name, activation", [
    ("hard_sigmoid.h5", "hard_sigmoid", "hard_sigmoid_keras3"),            # Keras 3's legacy HDF5
    ("keras2_hard_sigmoid.h5", "keras2_hard_sigmoid", "hard_sigmoid_keras2"),  # Keras 2.2.4 Sequential
    ("keras2_bidirectional.h5", "keras2_bidirectional", "sigmoid"),        # tf.keras 2.4 functional Model
])
def test_legacy_h5_full_model(file, name, activation):
    model = from_keras(FIX / file, impl="reference")
    x, y = fixture(name)
    assert np.abs(run(model, x) - y).max() < TOL
    assert model.specs[0].recurrent_activation == activation


def test_keras_version_override_changes_hard_sigmoid():
    model = from_keras(FIX / "keras2_hard_sigmoid.h5", keras_version="3", impl="reference")
    x, y = fixture("keras2_hard_sigmoid")
    assert model.specs[0].recurrent_activation == "hard_sigmoid_keras3" and np.abs(run(model, x) - y).max() > 1e-3


def test_weights_only_with_architecture(tmp_path):
    x, y = fixture("bidirectional")
    with zipfile.ZipFile(FIX / "bidirectional.keras") as zf:
        config = json.loads(zf.read("config.json"))
    (tmp_path / "config.json").write_text(json.dumps(config))
    for arch in (FIX / "bidirectional.keras", config, tmp_path / "config.json"):
        model = from_keras(FIX / "bidirectional.weights.h5", architecture=arch, impl="reference")
        assert np.abs(run(model, x) - y).max() < TOL
    with pytest.raises(GrunetError, match="architecture"):
        from_keras(FIX / "bidirectional.weights.h5")


# ------------------------------------------------------------------------------------------------------
# round trips: exact to the last bit
@pytest.mark.parametrize("name", KERAS3_STACKS)
def test_grunet_keras_grunet_is_exact(tmp_path, name):
    model = make_stack(name)
    to_keras(model, tmp_path / "m.keras")
    back = from_keras(tmp_path / "m.keras", impl="reference")
    assert back.architecture_config() == model.architecture_config() and same_state(back, model)


def test_grunet_keras2_h5_grunet_is_exact(tmp_path):
    model = make_stack("hard2")
    to_keras_h5(model, tmp_path / "m.h5")
    back = from_keras(tmp_path / "m.h5", impl="reference")
    assert back.architecture_config() == model.architecture_config() and same_state(back, model)


@pytest.mark.parametrize("kw", [{}, {"num_layers": 2, "bidirectional": True, "reset_after": True}])
def test_sequence_classifier_to_keras(tmp_path, kw):
    model = classifier(**kw)
    to_keras(model, tmp_path / "c.keras")
    back = from_keras(tmp_path / "c.keras", impl="reference")
    x = x_for(back, steps=9)
    assert np.abs(run(back, x) - run(model, x)).max() < 1e-6 and back.output_kind == "logits"
    assert torch.equal(back.layers[-1].weight, model.dense.weight)


def test_refused_conversions(tmp_path):
    with pytest.raises(GrunetError, match="hard_sigmoid_keras2.*Keras 2 .h5"):
        to_keras(make_stack("hard2"), tmp_path / "x.keras")
    with pytest.raises(GrunetError, match="hard_sigmoid_keras3.*Keras 3 .keras"):
        to_keras_h5(make_stack("reset_before_hard3"), tmp_path / "x.h5")
    with pytest.raises(GrunetError, match="cell 'lstm'"):
        to_keras(classifier(cell="lstm"), tmp_path / "x.keras")
    assert not list(tmp_path.iterdir())  # nothing half-written


# ------------------------------------------------------------------------------------------------------
# torch.nn.GRU state dicts
@pytest.mark.parametrize("layers, bidirectional, bias", [(1, False, True), (2, True, True), (2, False, False)])
def test_torch_state_dict_round_trips(layers, bidirectional, bias):
    torch.manual_seed(0)
    ref = torch.nn.GRU(4, 5, layers, bias=bias, batch_first=True, bidirectional=bidirectional)
    gru = from_torch_state_dict(ref.state_dict(), batch_first=True, impl="reference")
    x = torch.randn(3, 6, 4)
    with torch.no_grad():
        assert torch.allclose(gru(x)[0], ref(x)[0], atol=TOL)
    sd = to_torch_state_dict(gru)
    again = torch.nn.GRU(4, 5, layers, bias=bias, batch_first=True, bidirectional=bidirectional)
    again.load_state_dict(sd)
    assert all(torch.equal(sd[k], v) for k, v in ref.state_dict().items())
    assert same_state(from_torch_state_dict(again, impl="reference"), gru)  # a module works too


def test_torch_refuses_reset_before_and_hard_sigmoid():
    before = grunet.GRU(4, 5, reset_after=False)
    with pytest.raises(GrunetError, match="no reset-before form.*no single bias per gate"):
        to_torch_state_dict(before)
    with pytest.raises(GrunetError, match="bias_l0.*no reset-before form"):
        from_torch_state_dict(before.state_dict())
    with pytest.raises(GrunetError, match="reset_after: expected True"):
        from_torch_state_dict(torch.nn.GRU(4, 5).state_dict(), reset_after=False)
    with pytest.raises(GrunetError, match="sigmoid gates only"):
        to_torch_state_dict(grunet.GRU(4, 5, recurrent_activation="hard_sigmoid_keras3"))
    sd = torch.nn.GRU(4, 5).state_dict()
    sd["weight_hh_l0"] = torch.zeros(15, 6)
    with pytest.raises(GrunetError, match=r"weight_hh_l0: expected shape \(15, 5\), got \(15, 6\)"):
        from_torch_state_dict(sd)


# ------------------------------------------------------------------------------------------------------
# ONNX
def onnx_run(path, x):
    ort = pytest.importorskip("onnxruntime")
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    return session.run(None, {"input": x})[0]


@pytest.mark.parametrize("name", list(STACKS) + ["classifier", "tutorial"])
def test_onnx_matches_grunet(tmp_path, name):
    if name == "classifier":
        model = classifier(num_layers=2, bidirectional=True, recurrent_activation="hard_sigmoid_keras2")
    elif name == "tutorial":
        model = from_keras(FIX / "tutorial.keras", impl="reference")
    else:
        model = make_stack(name)
    export_onnx(model, tmp_path / "m.onnx")
    import onnx

    onnx.checker.check_model(str(tmp_path / "m.onnx"), full_check=True)
    for batch, steps in ((1, 5), (4, 11)):  # dynamic batch and length
        x = x_for(model, batch, steps, seed=batch)
        out, want = onnx_run(tmp_path / "m.onnx", x), run(model, x)
        assert out.shape == want.shape and np.abs(out - want).max() < TOL


# ------------------------------------------------------------------------------------------------------
# command line
@pytest.mark.parametrize("source, target", [
    ("tutorial.keras", "m.pt"), ("keras2_hard_sigmoid.h5", "m.pt"), ("stacked.keras", "m.onnx"),
    ("bidirectional.keras", "m.keras"), ("hard_sigmoid.h5", "m.keras"),
])
def test_cli_convert_from_keras(tmp_path, capsys, source, target):
    assert main(["convert", str(FIX / source), str(tmp_path / target)]) == 0
    assert f"wrote {tmp_path / target}" in capsys.readouterr().out
    x, y = fixture(source.split(".")[0])
    if target.endswith(".pt"):
        model, state = load_model(tmp_path / target, impl="reference")
        out = run(model, x)
        assert state["data"]["view"] == ("rows" if source == "tutorial.keras" else "pixels")
    elif target.endswith(".onnx"):
        out = onnx_run(tmp_path / target, x)
    else:
        out = run(from_keras(tmp_path / target, impl="reference"), x)
    assert np.abs(out - y).max() < TOL


@pytest.mark.parametrize("target", ["m.keras", "m.onnx", "m.h5", "again.pt"])
def test_cli_convert_from_checkpoint(tmp_path, target):
    model = classifier(num_layers=2, bidirectional=True)
    save_checkpoint(tmp_path / "c.pt", model, data={"view": "rows"})
    assert main(["convert", str(tmp_path / "c.pt"), str(tmp_path / target)]) == 0
    x = x_for(as_stack(model), steps=8)
    if target.endswith(".onnx"):
        out = onnx_run(tmp_path / target, x)
    elif target.endswith(".pt"):
        out = run(load_model(tmp_path / target, impl="reference")[0], x)
    else:
        out = run(from_keras(tmp_path / target, impl="reference"), x)
    assert np.abs(out - run(model, x)).max() < TOL


def test_cli_export(tmp_path, capsys):
    stack = make_stack("stacked_bidir_seq")
    save_checkpoint(tmp_path / "s.pt", stack)
    assert main(["export", str(tmp_path / "s.pt"), str(tmp_path / "s.onnx")]) == 0
    x = x_for(stack, 2, 9)
    assert np.abs(onnx_run(tmp_path / "s.onnx", x) - run(stack, x)).max() < TOL
    assert main(["export", str(tmp_path / "s.pt"), str(tmp_path / "s.keras")]) == 2
    assert "OUT: expected a path ending in .onnx" in capsys.readouterr().err


# ------------------------------------------------------------------------------------------------------
# bad input: one GrunetError naming the thing; the CLI exits 2 with one line
def _bad_files(tmp):
    (tmp / "text.keras").write_text("not a model\n")
    data = (FIX / "reset_after.keras").read_bytes()
    (tmp / "truncated.keras").write_bytes(data[: len(data) // 2])
    data = (FIX / "keras2_hard_sigmoid.h5").read_bytes()
    (tmp / "truncated.h5").write_bytes(data[: len(data) // 2])
    (tmp / "empty.h5").write_bytes(b"")

    def wider(config):
        config["config"]["layers"][1]["config"]["units"] = 6

    rewrite_keras_config(FIX / "reset_after.keras", tmp / "mismatch.keras", wider)

    def reset_before(config):
        config["config"]["layers"][1]["config"]["reset_after"] = False

    rewrite_keras_config(FIX / "reset_after.keras", tmp / "variant.keras", reset_before)


BAD = [
    ("text.keras", "expected a Keras file .*got neither"),
    ("truncated.keras", "truncated or damaged"),
    ("truncated.h5", "truncated or damaged"),
    ("empty.h5", "got an empty file"),
    ("unsupported_lstm.keras", r"layer 'lstm' \(LSTM\): expected one of the supported layers"),
    ("unsupported_conv1d.keras", r"layer 'conv1d' \(Conv1D\): expected one of the supported layers"),
    ("mismatch.keras", r"layer 'gru' \(GRU\) kernel: expected shape \(4, 18\) .*got \(4, 15\)"),
    ("variant.keras", r"layer 'gru' \(GRU\) bias: expected shape \(15,\) \(reset-before.*got \(2, 15\)"),
    ("missing.keras", "nothing at that path"),
]


@pytest.mark.parametrize("name, message", BAD)
def test_bad_keras_files(tmp_path, capsys, name, message):
    _bad_files(tmp_path)
    path = FIX / name if name.startswith("unsupported") else tmp_path / name
    with pytest.raises(GrunetError, match=message):
        from_keras(path)
    assert main(["convert", str(path), str(tmp_path / "out.pt")]) == 2
    err = capsys.readouterr().err
    assert err.startswith("grunet convert: error: ") and err.count("\n") == 1
    assert not (tmp_path / "out.pt").exists()


def test_cli_refuses_unknown_extensions(tmp_path, capsys):
    assert main(["convert", str(FIX / "reset_after.keras"), str(tmp_path / "m.tflite")]) == 2
    assert "OUT" in capsys.readouterr().err
    assert main(["convert", str(FIX / "reset_after.npz"), str(tmp_path / "m.pt")]) == 2


def test_stack_config_is_strict():
    config = make_stack("reset_after").architecture_config()
    assert StackModel.from_config(json.loads(json.dumps(config))).architecture_config() == config
    bad = json.loads(json.dumps(config))
    bad["layers"][0]["dropout"] = 0.1
    with pytest.raises(GrunetError, match="unknown"):
        StackModel.from_config(bad)
    bad = json.loads(json.dumps(config))
    bad["layers"][0]["units"] = "5"
    with pytest.raises(GrunetError, match="units"):
        StackModel.from_config(bad)
    with pytest.raises(GrunetError, match="return_sequences=False"):
        StackModel((5, 3), [GRUSpec("a", 4), GRUSpec("b", 4)])


# ------------------------------------------------------------------------------------------------------
# live Keras: the files grunet writes load in Keras and give the same outputs
@pytest.fixture(scope="module")
def keras():
    os.environ.setdefault("KERAS_BACKEND", "torch")
    return pytest.importorskip("keras")


@pytest.mark.parametrize("name", KERAS3_STACKS + ["classifier"])
def test_keras_loads_what_to_keras_wrote(tmp_path, keras, name):
    model = classifier(num_layers=2, bidirectional=True) if name == "classifier" else make_stack(name)
    to_keras(model, tmp_path / "m.keras")
    loaded = keras.saving.load_model(tmp_path / "m.keras")
    x = x_for(as_stack(model), steps=None if name != "classifier" else 8)
    assert np.abs(np.asarray(loaded.predict(x, verbose=0)) - run(model, x)).max() < TOL


def test_keras_loads_what_to_keras_h5_wrote(tmp_path, keras):
    # sigmoid gates (Keras 3 reads a Keras 2 file's hard_sigmoid with its own formula) and no Bidirectional
    # (Keras 3 cannot deserialize the inner layer of a Keras 2 Bidirectional config, real Keras 2 files included)
    model = seeded(StackModel((6, 3), [GRUSpec("g1", 4, return_sequences=True, use_bias=False),
                                       GRUSpec("g2", 3, reset_after=False), DenseSpec("dense", 2, "softmax")]))
    to_keras_h5(model, tmp_path / "m.h5")
    loaded = keras.saving.load_model(tmp_path / "m.h5", compile=False)
    x = x_for(model)
    assert np.abs(np.asarray(loaded.predict(x, verbose=0)) - run(model, x)).max() < TOL


def test_converted_keras_model_evaluates_and_predicts(tmp_path, capsys):
    """A Keras file converted to .pt goes through grunet eval / predict like a trained run."""
    from PIL import Image

    from grunet.data import load_split, to_sequences

    assert main(["convert", str(FIX / "tutorial.keras"), str(tmp_path / "tut.pt")]) == 0
    capsys.readouterr()
    keras_model = from_keras(FIX / "tutorial.keras", impl="reference")
    images, labels = load_split("mnist-sample", "test")
    with torch.no_grad():
        probabilities = keras_model.predict_proba(to_sequences(images, "rows"))
    accuracy = (probabilities.argmax(1) == torch.as_tensor(labels)).double().mean().item()
    assert main(["eval", str(tmp_path / "tut.pt")]) == 0
    assert f"accuracy: {accuracy:.4f}" in capsys.readouterr().out
    Image.fromarray(images[7]).save(tmp_path / "d.png")
    assert main(["predict", str(tmp_path / "tut.pt"), str(tmp_path / "d.png")]) == 0
    line = capsys.readouterr().out.strip()
    assert line.split(": ")[1].split()[0] == str(int(probabilities[7].argmax()))
    printed = [float(v) for v in line.split("[")[1].rstrip("]").split()]
    assert np.allclose(printed, probabilities[7].numpy(), atol=5e-4)
