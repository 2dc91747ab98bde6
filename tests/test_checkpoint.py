"""grunet.checkpoint: opening a file never runs code, reading is bounded and checked, version 1 migrates."""
import builtins
import json
import random
import shutil
import zipfile
from pathlib import Path

import numpy as np
import pytest
import torch

import grunet
from grunet.checkpoint import VERSION, load_checkpoint, load_model
from grunet.cli import main
from grunet.model import ModelConfig, SequenceClassifier
from grunet.train import TrainConfig, run
from grunet.train_state import set_rng_states

SMALL = dict(units=8, steps=3, eval_every=2, impl="reference", threads=1, lr=0.01)


@pytest.fixture(scope="module")
def small_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("ckpt") / "run"
    assert run(TrainConfig(**SMALL), out, print_fn=lambda s: None, progress=False).exit_code == 0
    return out


class Marker:
    """Unpickling this creates the marker file (``open(path, "w")``): what a malicious checkpoint does."""

    def __init__(self, path):
        self.path = str(path)

    def __reduce__(self):
        return (builtins.open, (self.path, "w"))


def crafted(path: Path, marker: Path, legacy: bool = False) -> Path:
    payload = {"format": "grunet-checkpoint", "version": 1, "architecture": {"kind": "sequence_classifier",
               "config": {}}, "model": {}, "x": Marker(marker)}
    torch.save(payload, path, _use_new_zipfile_serialization=not legacy)
    assert not marker.exists()
    return path


def _commands(evil: Path, run_dir: Path, tmp: Path):
    from PIL import Image

    image = tmp / "digit.png"
    Image.fromarray(np.zeros((28, 28), np.uint8)).save(image)
    return {
        "eval": ["eval", str(evil)],
        "predict": ["predict", str(evil), str(image)],
        "convert": ["convert", str(evil), str(tmp / "out.onnx")],
        "export": ["export", str(evil), str(tmp / "out2.onnx")],
        "explain": ["explain", str(evil), "--index", "0"],
        "report": ["report", str(run_dir)],
        "train --resume": ["train", "--resume", str(run_dir)],
    }


@pytest.mark.parametrize("legacy", [False, True], ids=["zip", "legacy-format"])
@pytest.mark.parametrize("command", ["eval", "predict", "convert", "export", "explain", "report", "train --resume"])
def test_crafted_pickle_never_runs(command, legacy, small_run, tmp_path, capsys):
    marker = tmp_path / "marker"
    run_dir = tmp_path / "run"
    shutil.copytree(small_run, run_dir)
    for name in ("best.pt", "last.pt"):  # the run directory's own checkpoints are the crafted file
        crafted(run_dir / name, marker, legacy)
    evil = crafted(tmp_path / "evil.pt", marker, legacy)
    argv = _commands(evil, run_dir, tmp_path)[command]
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert not marker.exists(), f"{command} ran the pickle"
    assert len(err.strip().splitlines()) == 1 and "Traceback" not in err, err
    assert "evil.pt" in err or str(run_dir) in err
    assert not (tmp_path / "out.onnx").exists() and not (tmp_path / "out2.onnx").exists()


@pytest.mark.parametrize("legacy", [False, True], ids=["zip", "legacy-format"])
def test_crafted_pickle_through_python_api(legacy, tmp_path):
    marker = tmp_path / "marker"
    evil = crafted(tmp_path / "evil.pt", marker, legacy)
    for loader in (load_model, load_checkpoint, grunet.load):
        with pytest.raises(grunet.GrunetError) as e:
            loader(evil)
        assert "\n" not in str(e.value)
    assert not marker.exists()


def test_checkpoint_is_plain_and_loads_with_weights_only(small_run):
    state = torch.load(small_run / "last.pt", weights_only=True)
    assert state["version"] == VERSION == 2

    def walk(obj):
        if isinstance(obj, dict):
            assert all(isinstance(k, (str, int)) for k in obj)
            for v in obj.values():
                walk(v)
        elif isinstance(obj, list):
            for v in obj:
                walk(v)
        else:
            assert isinstance(obj, (torch.Tensor, bool, int, float, str, type(None))), type(obj)

    walk(state)
    assert {"optimizer", "batches", "rng", "progress", "config"} <= set(state)


def test_grunet_load_returns_the_model_in_eval_mode(small_run):
    model = grunet.load(small_run)
    assert isinstance(model, SequenceClassifier) and not model.training
    reference, ckpt = load_model(small_run / "best.pt")
    for a, b in zip(model.state_dict().values(), ckpt["model"].values()):
        assert torch.equal(a, b)
    assert "grunet.load" in (grunet.__doc__ or "") and grunet.load.__doc__


def _rewrite(path: Path, change):
    state = torch.load(path, weights_only=True)
    change(state)
    torch.save(state, path)


@pytest.mark.parametrize("change,message", [
    (lambda s: s["architecture"]["config"].update(hidden_size=10**7), "hidden_size: expected a size that fits"),
    (lambda s: s["architecture"]["config"].update(num_layers=10**9), "num_layers: expected an integer from 1 to 1000"),
    (lambda s: s["architecture"]["config"].update(hidden_size="8"), "expected hidden_size of type int, got '8'"),
    (lambda s: s["architecture"]["config"].update(hidden_size=9), "expected rnn.weight_ih_l0 of shape (27, 28), got (24, 28)"),
    (lambda s: s["architecture"].update(kind="mystery"), "expected kind in"),
    (lambda s: s["architecture"].pop("config"), "expected a 'config' entry"),
    (lambda s: s.pop("architecture"), "expected a 'architecture' entry of type dict, got none"),
    (lambda s: s.update(model=[1, 2]), "expected a 'model' entry of type dict, got list"),
    (lambda s: s["model"].pop("dense.bias"), "missing ['dense.bias']"),
    (lambda s: s["model"].update(extra=torch.zeros(3)), "unexpected ['extra']"),
    (lambda s: s["model"].update({"dense.bias": torch.zeros(10, dtype=torch.float64)}),
     "expected dense.bias of dtype torch.float32, got torch.float64"),
    (lambda s: s["model"].update({"dense.bias": torch.zeros(11)}), "expected dense.bias of shape (10,), got (11,)"),
    (lambda s: s["model"].update({"dense.bias": "zeros"}), "expected dense.bias to be a dense tensor, got str"),
    (lambda s: s.update(version=7), "expected checkpoint version <= 2, got 7"),
    (lambda s: s.update(version="2"), "expected a checkpoint version from 1 to 2, got '2'"),
])
def test_edited_checkpoint_is_refused_before_allocating(change, message, small_run, tmp_path, capsys):
    path = tmp_path / "edited.pt"
    shutil.copy(small_run / "best.pt", path)
    _rewrite(path, change)
    assert main(["eval", str(path)]) == 2
    err = capsys.readouterr().err
    assert message in err and len(err.strip().splitlines()) == 1, err


def test_compressed_member_is_refused(small_run, tmp_path, capsys):
    """torch.save stores members uncompressed; a deflated one could inflate beyond the file's size."""
    path = tmp_path / "deflated.pt"
    with zipfile.ZipFile(small_run / "best.pt") as src, zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as dst:
        for info in src.infolist():
            dst.writestr(info.filename, src.read(info))
    assert main(["eval", str(path)]) == 2
    assert "expected a checkpoint with stored (uncompressed) members" in capsys.readouterr().err


def _as_version_1(path: Path) -> None:
    """The layout grunet 0.1 wrote: NumPy and Python RNG states as tuples holding a NumPy array."""
    state = torch.load(path, weights_only=True)
    n, p = state["rng"]["numpy"], state["rng"]["python"]
    state["rng"]["numpy"] = ("MT19937", n["key"].numpy().astype(np.uint32), n["pos"], n["has_gauss"],
                             n["cached_gaussian"])
    state["rng"]["python"] = (p["version"], tuple(p["internal"].tolist()), p["gauss_next"])
    state["version"] = 1
    torch.save(state, path)


def test_version_1_checkpoint_migrates(small_run, tmp_path):
    path = tmp_path / "v1.pt"
    shutil.copy(small_run / "last.pt", path)
    _as_version_1(path)
    with pytest.raises(Exception):
        torch.load(path, weights_only=True)  # what made version 1 unsafe to keep
    state = load_checkpoint(path)
    assert state["version"] == 2
    new = load_checkpoint(small_run / "last.pt")
    set_rng_states(state["rng"], "v1")
    after_v1 = (np.random.random(), random.random(), torch.rand(1).item())
    set_rng_states(new["rng"], "v2")
    assert (np.random.random(), random.random(), torch.rand(1).item()) == after_v1
    model, _ = load_model(path)
    assert isinstance(model, SequenceClassifier)


def test_version_1_run_resumes(small_run, tmp_path):
    out = tmp_path / "v1run"
    shutil.copytree(small_run, out)
    _as_version_1(out / "last.pt")
    assert main(["train", "--resume", str(out), "--steps", "5"]) == 0
    assert load_checkpoint(out / "last.pt")["progress"]["step"] == 5


@pytest.mark.parametrize("part,change,message", [
    ("architecture", lambda s: s["architecture"]["config"].update(hidden_size=9), "expected the architecture of the run's config.json"),
    ("optimizer", lambda s: s["optimizer"]["state"][0].update(exp_avg=torch.zeros(2)), "optimizer state 0 exp_avg"),
    ("optimizer", lambda s: s["optimizer"]["param_groups"][0].update(lr="fast"), "optimizer lr: expected a finite number"),
    ("batches", lambda s: s["batches"].update(position=10**9), "batches position: expected an integer from 0 to 4000"),
    ("rng", lambda s: s["rng"]["torch"].__setitem__(slice(None), 0) or s["rng"].update(torch=torch.zeros(3, dtype=torch.uint8)),
     "rng torch: expected a torch.uint8 tensor"),
    ("rng", lambda s: s["rng"]["numpy"].update(pos=10**6), "rng numpy pos: expected an integer from 0 to 624"),
    ("progress", lambda s: s["progress"].update(step=-1), "progress step: expected an integer from 0"),
    ("progress", lambda s: s["progress"]["rows"].append({"step": 3}), "progress rows[2]: expected a dict"),
])
def test_resume_refuses_edited_or_foreign_last_pt(part, change, message, small_run, tmp_path, capsys):
    out = tmp_path / "edited"
    shutil.copytree(small_run, out)
    _rewrite(out / "last.pt", change)
    before = {p.name: p.read_bytes() for p in out.iterdir() if p.is_file()}
    assert main(["train", "--resume", str(out), "--steps", "5"]) == 2
    err = capsys.readouterr().err
    assert message in err and len(err.strip().splitlines()) == 1, err
    assert {p.name: p.read_bytes() for p in out.iterdir() if p.is_file()} == before  # nothing rewritten


def test_edited_config_json_sizes_are_refused(small_run, tmp_path, capsys):
    for change, message in [({"units": 10**7}, "--units: expected a size that fits in this machine's"),
                            ({"layers": 10**9}, "--layers: expected an integer from 1 to 1000"),
                            ({"seed": 10**30}, "--seed: expected an integer from 0 to 4294967295"),
                            ({"steps": -4}, "--steps: expected an integer from 1")]:
        out = tmp_path / f"cfg-{len(list(tmp_path.iterdir()))}"
        shutil.copytree(small_run, out)
        saved = json.loads((out / "config.json").read_text())
        (out / "config.json").write_text(json.dumps({**saved, **change}))
        assert main(["train", "--resume", str(out)]) == 2
        err = capsys.readouterr().err
        assert message in err and "config.json" in err and len(err.strip().splitlines()) == 1, err
    out = tmp_path / "not-an-object"
    shutil.copytree(small_run, out)
    (out / "config.json").write_text("[1, 2]")
    assert main(["train", "--resume", str(out)]) == 2
    assert "expected a JSON object of settings, got list" in capsys.readouterr().err


def test_model_config_refuses_sizes_without_building():
    with pytest.raises(grunet.GrunetError, match="hidden_size: expected a size that fits"):
        ModelConfig.from_dict({"hidden_size": 10**7})
    assert ModelConfig(hidden_size=16, num_layers=2, bidirectional=True, cell="lstm").parameter_count() == sum(
        p.numel() for p in SequenceClassifier(ModelConfig(hidden_size=16, num_layers=2, bidirectional=True,
                                                          cell="lstm")).parameters())
