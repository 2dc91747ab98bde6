"""The GRU cell options through grunet.convert: Keras's dropout settings read and written, layer norm and
zoneout refused by name where the target has no such thing (Keras, ONNX, torch.nn.GRU), and StackModel's
masked path computing the options as grunet.GRU does."""
from __future__ import annotations

import json
import shutil
import zipfile
from pathlib import Path

import numpy as np
import pytest
import torch

import grunet
from grunet.checkpoint import load_model, save_checkpoint
from grunet.cli import main
from grunet.convert import (DenseSpec, GRUSpec, MaskingSpec, StackModel, as_stack, export_onnx, from_keras,
                            to_keras, to_keras_h5, to_torch_state_dict)
from grunet.errors import GrunetError
from grunet.model import ModelConfig, SequenceClassifier
from conftest import rewrite_keras_config

FIX = Path(__file__).parent / "fixtures" / "keras"
TOL = 1e-5


def seeded(model, seed=0):
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            p.copy_(torch.randn(p.shape, generator=g) * 0.7)
    return model.eval()


def run(model, x):
    with torch.no_grad():
        return model(torch.as_tensor(x)).numpy()


def gru_configs(config):
    """Every GRU config dict inside a Keras model config (a Bidirectional's layer and backward_layer too)."""
    found, stack = [], [config]
    while stack:
        o = stack.pop()
        if isinstance(o, dict):
            if o.get("class_name") == "GRU":
                found.append(o["config"])
            stack.extend(o.values())
        elif isinstance(o, list):
            stack.extend(o)
    return found


def with_rates(dropout, recurrent_dropout):
    def edit(config):
        for cfg in gru_configs(config):
            cfg["dropout"], cfg["recurrent_dropout"] = dropout, recurrent_dropout
    return edit


# ------------------------------------------------------------------------------------------------------
# Keras in
@pytest.mark.parametrize("name", ["tutorial", "bidirectional", "stacked"])
def test_keras3_dropout_settings_become_cell_options(tmp_path, name):
    rewrite_keras_config(FIX / f"{name}.keras", tmp_path / "m.keras", with_rates(0.2, 0.3))
    model = from_keras(tmp_path / "m.keras", impl="reference")
    grus = [(s, layer) for s, layer in zip(model.specs, model.layers) if isinstance(s, GRUSpec)]
    assert grus
    for spec, layer in grus:
        assert (spec.input_dropout, spec.recurrent_dropout) == (0.2, 0.3)
        assert (layer.cell.input_dropout, layer.cell.recurrent_dropout) == (0.2, 0.3)
    d = np.load(FIX / f"{name}.npz")
    assert np.abs(run(model, d["x"]) - d["y"]).max() < TOL  # in eval the dropouts are off: Keras's outputs
    model.train()  # in training they act
    torch.manual_seed(0)
    with torch.no_grad():
        assert np.abs(model(torch.as_tensor(d["x"])).numpy() - d["y"]).max() > 1e-3


def test_keras2_h5_dropout_settings_become_cell_options(tmp_path):
    h5py = pytest.importorskip("h5py")
    path = tmp_path / "k2.h5"
    shutil.copy(FIX / "keras2_bidirectional.h5", path)
    with h5py.File(path, "r+") as f:
        config = json.loads(f.attrs["model_config"])
        with_rates(0.1, 0.4)(config)
        f.attrs["model_config"] = json.dumps(config)
    model = from_keras(path, impl="reference")
    spec = next(s for s in model.specs if isinstance(s, GRUSpec))
    assert (spec.input_dropout, spec.recurrent_dropout) == (0.1, 0.4)


@pytest.mark.parametrize("key, value, message", [
    ("dropout", 1.0, "dropout: expected a number in [0, 1), got 1.0"),
    ("recurrent_dropout", -0.5, "recurrent_dropout: expected a number in [0, 1), got -0.5"),
    ("dropout", "0.5", "dropout: expected int or float, got '0.5'"),
    ("recurrent_dropout", True, "recurrent_dropout: expected int or float, got True"),
])
def test_bad_keras_dropout_settings_one_line(tmp_path, capsys, key, value, message):
    def edit(config):
        gru_configs(config)[0][key] = value

    rewrite_keras_config(FIX / "reset_after.keras", tmp_path / "bad.keras", edit)
    with pytest.raises(GrunetError) as e:
        from_keras(tmp_path / "bad.keras")
    assert message in str(e.value) and "layer 'gru' (GRU)" in str(e.value)
    assert main(["convert", str(tmp_path / "bad.keras"), str(tmp_path / "out.pt")]) == 2
    assert message in capsys.readouterr().err and not (tmp_path / "out.pt").exists()


# ------------------------------------------------------------------------------------------------------
# Keras out
def dropout_stack():
    return seeded(StackModel((6, 3), [GRUSpec("g1", 4, return_sequences=True, bidirectional=True, input_dropout=0.2,
                                              recurrent_dropout=0.3),
                                      GRUSpec("g2", 5, reset_after=False, recurrent_dropout=0.1),
                                      DenseSpec("d", 2, "softmax")], impl="reference"))


def test_keras3_writer_writes_the_dropouts_and_reads_them_back(tmp_path):
    model = dropout_stack()
    to_keras(model, tmp_path / "m.keras")
    with zipfile.ZipFile(tmp_path / "m.keras") as zf:
        written = [(c["dropout"], c["recurrent_dropout"]) for c in gru_configs(json.loads(zf.read("config.json")))]
    assert sorted(written) == [(0.0, 0.1), (0.2, 0.3), (0.2, 0.3)]  # g2; g1's forward and backward GRUs
    back = from_keras(tmp_path / "m.keras", impl="reference")
    assert back.architecture_config() == model.architecture_config()
    assert all(torch.equal(a, b) for a, b in zip(back.state_dict().values(), model.state_dict().values()))


def test_keras2_writer_writes_the_dropouts_and_reads_them_back(tmp_path):
    h5py = pytest.importorskip("h5py")
    model = seeded(StackModel((5, 3), [GRUSpec("g", 4, reset_after=False, recurrent_activation="hard_sigmoid_keras2",
                                               input_dropout=0.25, recurrent_dropout=0.5), DenseSpec("d", 2)],
                              impl="reference"))
    to_keras_h5(model, tmp_path / "m.h5")
    with h5py.File(tmp_path / "m.h5") as f:
        cfg = gru_configs(json.loads(f.attrs["model_config"]))[0]
    assert (cfg["dropout"], cfg["recurrent_dropout"]) == (0.25, 0.5)
    back = from_keras(tmp_path / "m.h5", impl="reference")
    assert back.architecture_config() == model.architecture_config()


def test_classifier_options_reach_the_keras_file(tmp_path):
    model = seeded(SequenceClassifier(ModelConfig(input_size=6, hidden_size=5, num_classes=3, reset_after=True,
                                                  recurrent_dropout=0.2, input_dropout=0.1, weight_dropout=0.3),
                                      impl="reference"))
    stack = as_stack(model)
    assert (stack.specs[0].recurrent_dropout, stack.specs[0].weight_dropout) == (0.2, 0.3)
    to_keras(model, tmp_path / "c.keras")
    back = from_keras(tmp_path / "c.keras", impl="reference")
    # Keras has no DropConnect: weight_dropout (training only) is not in the file; the rest is
    assert (back.specs[0].input_dropout, back.specs[0].recurrent_dropout, back.specs[0].weight_dropout) == (0.1, 0.2, 0.0)
    x = torch.randn(2, 7, 6, generator=torch.Generator().manual_seed(1))
    assert np.abs(run(back, x) - run(model, x)).max() < 1e-6


REFUSED = [({"layer_norm": True}, "layer_norm", "layer_norm=True"), ({"zoneout": 0.25}, "zoneout", "zoneout=0.25")]


@pytest.mark.parametrize("option, name, shown", REFUSED)
def test_keras_and_onnx_writers_refuse_layer_norm_and_zoneout(tmp_path, option, name, shown):
    stack = seeded(StackModel((5, 3), [GRUSpec("g", 4, **option), DenseSpec("d", 2)], impl="reference"))
    classifier = seeded(SequenceClassifier(ModelConfig(input_size=3, hidden_size=4, num_classes=2, reset_after=True,
                                                       **option), impl="reference"))
    for model in (stack, classifier):
        for write, target in ((to_keras, "Keras 3 file"), (to_keras_h5, "Keras 2 file")):
            with pytest.raises(GrunetError, match=rf"expected a GRU without {name} for a {target} \(a Keras GRU has "
                                                  rf"no {name}\), got {shown}"):
                write(model, tmp_path / "x.out")
        with pytest.raises(GrunetError, match=rf"expected a GRU without {name} for ONNX \(the ONNX GRU operator has "
                                              rf"no {name}\), got {shown}"):
            export_onnx(model, tmp_path / "x.onnx")
    gru = grunet.GRU(3, 4, **option)
    with pytest.raises(GrunetError, match=rf"gru: expected a GRU without {name}, got {shown}: torch.nn.GRU has no"):
        to_torch_state_dict(gru)
    assert not list(tmp_path.iterdir())  # nothing half-written


@pytest.mark.parametrize("option, name, shown", REFUSED)
def test_cli_convert_and_export_refuse_layer_norm_and_zoneout(tmp_path, capsys, option, name, shown):
    model = seeded(SequenceClassifier(ModelConfig(input_size=3, hidden_size=4, num_classes=2, reset_after=True,
                                                  **option), impl="reference"))
    save_checkpoint(tmp_path / "c.pt", model, data={"view": "pixels"})
    for argv in (["convert", "c.pt", "m.keras"], ["convert", "c.pt", "m.h5"], ["convert", "c.pt", "m.onnx"],
                 ["export", "c.pt", "m.onnx"]):
        assert main([argv[0], str(tmp_path / argv[1]), str(tmp_path / argv[2])]) == 2
        err = capsys.readouterr().err
        assert f"expected a GRU without {name}" in err and shown in err and err.count("\n") == 1
        assert not (tmp_path / argv[2]).exists()
    # to a grunet checkpoint the options travel
    assert main(["convert", str(tmp_path / "c.pt"), str(tmp_path / "again.pt")]) == 0
    again, _ = load_model(tmp_path / "again.pt", impl="reference")
    assert getattr(again.rnn.cell, name) == next(iter(option.values()))


def test_dropouts_export_to_onnx_and_torch_unchanged(tmp_path):
    """Training-only options leave the inference numbers alone: ONNX and nn.GRU give grunet's eval outputs."""
    pytest.importorskip("onnxruntime")
    import onnxruntime as ort

    model = dropout_stack()
    export_onnx(model, tmp_path / "m.onnx")
    x = torch.randn(3, 6, 3, generator=torch.Generator().manual_seed(2)).numpy()
    session = ort.InferenceSession(str(tmp_path / "m.onnx"), providers=["CPUExecutionProvider"])
    assert np.abs(session.run(None, {"input": x})[0] - run(model, x)).max() < TOL
    gru = seeded(grunet.GRU(3, 4, recurrent_dropout=0.3, input_dropout=0.2, weight_dropout=0.1, impl="reference"))
    ref = torch.nn.GRU(3, 4)
    ref.load_state_dict(to_torch_state_dict(gru))
    xt = torch.randn(5, 2, 3)
    with torch.no_grad():
        assert torch.allclose(ref(xt)[0], gru(xt)[0], atol=TOL)


# ------------------------------------------------------------------------------------------------------
# StackModel: configs, checkpoints, and the masked path
def test_stack_config_and_checkpoint_carry_the_options(tmp_path):
    model = seeded(StackModel((5, 3), [GRUSpec("g", 4, layer_norm=True, zoneout=0.2, weight_dropout=0.1),
                                       DenseSpec("d", 2)], impl="reference"))
    config = model.architecture_config()
    assert config["layers"][0]["layer_norm"] is True and config["layers"][0]["zoneout"] == 0.2
    assert sum(p.numel() for p in model.parameters()) == 3 * (4 * 3 + 4 * 4 + 2 * 4) + 2 * 3 * 4 + 4 * 2 + 2
    save_checkpoint(tmp_path / "s.pt", model)
    back, _ = load_model(tmp_path / "s.pt", impl="reference")
    assert back.architecture_config() == config and back.layers[0].cell.layer_norm
    old = json.loads(json.dumps(config))  # a stack config written before the options: they default to off
    for key in ("input_dropout", "recurrent_dropout", "weight_dropout", "zoneout", "layer_norm"):
        del old["layers"][0][key]
    assert StackModel.from_config(old).layers[0].cell.plain
    for change, message in [({"layer_norm": True, "reset_after": False}, "layer_norm: expected reset_after=True"),
                            ({"zoneout": 1.5}, "zoneout: expected a probability in [0, 1)"),
                            ({"layer_norm": "yes"}, "layer_norm")]:
        bad = json.loads(json.dumps(config))
        bad["layers"][0].update(change)
        with pytest.raises(GrunetError, match=message.replace("[", r"\[").replace("(", r"\(").replace(")", r"\)")):
            StackModel.from_config(bad)


@pytest.mark.parametrize("training", [False, True])
def test_masked_path_computes_the_options_as_the_gru(training):
    """A Masking layer sends the GRU through the step-by-step masked path; with nothing masked it must give the
    GRU's own outputs: zoneout's eval mean, and in training the same masks from the same seed."""
    options = dict(layer_norm=True, zoneout=0.3, recurrent_dropout=0.2, input_dropout=0.25, weight_dropout=0.1)
    gru_spec = GRUSpec("g", 4, bidirectional=True, return_sequences=True, **options)
    plain = seeded(StackModel((6, 3), [gru_spec], impl="reference"))
    masked = StackModel((6, 3), [MaskingSpec("m", -99.0), gru_spec], impl="reference").eval()
    masked.layers[1].load_state_dict(plain.layers[0].state_dict())
    plain.train(training), masked.train(training)
    x = torch.randn(2, 6, 3, generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        torch.manual_seed(7)
        want = plain(x)
        torch.manual_seed(7)
        got = masked(x)
    assert torch.allclose(got, want, atol=1e-6)
    if training:  # the masks acted
        with torch.no_grad():
            assert not torch.allclose(plain.eval()(x), want, atol=1e-3)


def test_keras_reads_the_dropouts_to_keras_wrote(tmp_path):
    import os

    os.environ.setdefault("KERAS_BACKEND", "torch")
    keras = pytest.importorskip("keras")
    model = dropout_stack()
    to_keras(model, tmp_path / "m.keras")
    loaded = keras.saving.load_model(tmp_path / "m.keras")
    grus = [layer for layer in loaded.layers if type(layer).__name__ in ("GRU", "Bidirectional")]
    inner = grus[0].forward_layer
    assert (inner.dropout, inner.recurrent_dropout) == (0.2, 0.3)
    assert (grus[1].dropout, grus[1].recurrent_dropout) == (0.0, 0.1)
    x = torch.randn(2, 6, 3, generator=torch.Generator().manual_seed(4)).numpy()
    assert np.abs(np.asarray(loaded.predict(x, verbose=0)) - run(model, x)).max() < TOL
