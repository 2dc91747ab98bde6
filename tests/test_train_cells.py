"""grunet train with the GRU cell options: flags, config.json, checkpoints, resume, and refusals."""
import json
import os
import shutil
import signal

import pytest
import torch

from grunet.checkpoint import load_checkpoint, load_model
from grunet.cli import main
from grunet.fileio import torch_save
from grunet.model import ModelConfig, SequenceClassifier
from grunet.train import TrainConfig, run

SHORT = dict(units=8, steps=12, eval_every=5, impl="reference", threads=1, lr=0.01, reset_after=True)
SHORT_ARGS = ["--units", "8", "--steps", "12", "--eval-every", "5", "--impl", "reference", "--threads", "1",
              "--lr", "0.01", "--reset-after", "--progress", "lines"]
OPTIONS = {  # flag -> (its TrainConfig field, the value given)
    "--layer-norm": ("layer_norm", True),
    "--recurrent-dropout": ("recurrent_dropout", 0.25),
    "--input-dropout": ("input_dropout", 0.2),
    "--weight-dropout": ("weight_dropout", 0.3),
    "--zoneout": ("zoneout", 0.15),
}


def rows(run_dir):
    import csv

    with open(run_dir / "metrics.csv") as f:
        return [{k: v for k, v in r.items() if k != "elapsed_s"} for r in csv.DictReader(f)]


def same_weights(a, b):
    assert a.keys() == b.keys()
    return all(torch.equal(a[k], b[k]) for k in a)


@pytest.fixture(scope="module")
def plain_run(tmp_path_factory):
    """The same short reset-after run without any cell option: what each option must change."""
    out = tmp_path_factory.mktemp("cells") / "plain"
    assert run(TrainConfig(**SHORT), out, print_fn=lambda s: None, progress=False).exit_code == 0
    return out


@pytest.mark.parametrize("flag", list(OPTIONS))
def test_each_option_trains_and_is_recorded(flag, plain_run, tmp_path, capsys):
    name, value = OPTIONS[flag]
    out = tmp_path / name
    argv = ["train", *SHORT_ARGS, "--out", str(out), flag] + ([] if value is True else [str(value)])
    assert main(argv) == 0
    printed = capsys.readouterr().out
    shown = "layer_norm" if value is True else f"{name}={value:g}"
    assert f"rnn cell options: {shown}" in printed  # the model summary names the option
    assert json.loads((out / "config.json").read_text())[name] == value
    ckpt = load_checkpoint(out / "last.pt")
    assert ckpt["architecture"]["config"][name] == value
    model, _ = load_model(out, impl="reference")
    assert getattr(model.rnn.cell, name) == value  # rebuilt with the option, not the plain GRU
    assert all(float(r["loss"]) > 0 for r in rows(out))
    summary = json.loads((out / "summary.json").read_text())
    gains = 2 * 3 * 8 if name == "layer_norm" else 0
    assert summary["parameters"] == 3 * (8 * 28 + 8 * 8 + 2 * 8) + gains + 8 * 10 + 10
    # the option acts: the same seed without it gives other losses and weights
    assert rows(out) != rows(plain_run)
    plain = load_checkpoint(plain_run / "last.pt")["model"]
    assert any(not torch.equal(ckpt["model"][k], plain[k]) for k in plain)


def test_zoneout_run_stopped_and_resumed_equals_uninterrupted(tmp_path):
    """The masks come from torch's generator, whose state the checkpoint carries: a resumed run draws the
    masks the uninterrupted one drew."""
    config = dict(SHORT, zoneout=0.2, recurrent_dropout=0.1, input_dropout=0.1, weight_dropout=0.1, layer_norm=True)
    full = tmp_path / "full"
    assert run(TrainConfig(**config), full, print_fn=lambda s: None, progress=False).exit_code == 0

    def stop(i):
        if i == 6:
            os.kill(os.getpid(), signal.SIGTERM)

    out = tmp_path / "stopped"
    result = run(TrainConfig(**config), out, print_fn=lambda s: None, progress=False, on_step=stop)
    assert result.exit_code == 128 + signal.SIGTERM
    assert main(["train", "--resume", str(out), "--progress", "lines"]) == 0
    assert rows(out) == rows(full)
    assert same_weights(load_checkpoint(out / "last.pt")["model"], load_checkpoint(full / "last.pt")["model"])
    # resuming with an option changed is refused by name
    assert main(["train", "--resume", str(out), "--zoneout", "0.3"]) == 2


def test_run_from_before_the_options_resumes(plain_run, tmp_path, capsys):
    """config.json and last.pt written before the cell options existed (no such keys) load with the defaults
    and extend as any run does."""
    out = tmp_path / "old"
    shutil.copytree(plain_run, out)
    config = json.loads((out / "config.json").read_text())
    for name, _ in OPTIONS.values():
        del config[name]
    (out / "config.json").write_text(json.dumps(config))
    for file in ("last.pt", "best.pt"):
        ckpt = load_checkpoint(out / file)
        for name, _ in OPTIONS.values():
            del ckpt["architecture"]["config"][name]
        torch_save(ckpt, out / file)
    model, _ = load_model(out, impl="reference")
    assert model.rnn.cell.plain
    assert main(["train", "--resume", str(out), "--steps", "14"]) == 0
    assert "resuming" in capsys.readouterr().out
    assert json.loads((out / "summary.json").read_text())["steps"] == 14


def test_model_config_counts_and_checks_options():
    config = ModelConfig(reset_after=True, layer_norm=True, num_layers=2, bidirectional=True, zoneout=0.1)
    model = SequenceClassifier(config, impl="reference")
    assert config.parameter_count() == sum(p.numel() for p in model.parameters())
    assert ModelConfig.from_dict({"reset_after": True, "recurrent_dropout": 0.5}).recurrent_dropout == 0.5
    for bad, message in [({"layer_norm": True}, "model config layer_norm: expected reset_after=True"),
                         ({"zoneout": 1.0}, "model config zoneout: expected a probability in [0, 1)"),
                         ({"cell": "lstm", "input_dropout": 0.1}, "model config input_dropout: expected cell 'gru'"),
                         ({"layer_norm": 1}, "expected layer_norm of type bool, got 1")]:
        with pytest.raises(ValueError, match=message.replace("[", r"\[").replace("(", r"\(").replace(")", r"\)")):
            ModelConfig.from_dict(bad)


@pytest.mark.parametrize("argv,message", [
    (["--layer-norm"], "--layer-norm: expected --reset-after (the layer-normalised GRU normalises W_hh h, which "
                       "the reset-before GRU never forms), got --reset-before (the default)"),
    (["--zoneout", "1"], "--zoneout: expected a number in [0, 1), got 1.0"),
    (["--recurrent-dropout", "-0.1"], "--recurrent-dropout: expected a number in [0, 1), got -0.1"),
    (["--input-dropout", "nan"], "--input-dropout: expected a number in [0, 1), got nan"),
    (["--weight-dropout", "inf"], "--weight-dropout: expected a number in [0, 1), got inf"),
    (["--cell", "lstm", "--zoneout", "0.1"], "--zoneout: expected --cell gru (the cell options are grunet.GRU's), "
                                             "got --cell lstm"),
    (["--impl", "torch", "--reset-after", "--recurrent-dropout", "0.1"],
     "--recurrent-dropout: expected --impl auto, fused or reference (torch.nn.GRU has no cell options), got --impl torch"),
])
def test_bad_cell_options_one_line_exit_2(argv, message, tmp_path, capsys):
    out = tmp_path / "refused"
    assert main(["train", *argv, "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert message in err, err
    assert len(err.strip().splitlines()) == 1 and "Traceback" not in err
    assert not out.exists()


def test_edited_config_with_a_bad_option_is_refused(plain_run, tmp_path, capsys):
    for change, message in [({"zoneout": "lots"}, "expected zoneout of type float, got 'lots'"),
                            ({"layer_norm": True, "reset_after": False}, "--layer-norm: expected --reset-after")]:
        out = tmp_path / f"edited-{len(list(tmp_path.iterdir()))}"
        shutil.copytree(plain_run, out)
        saved = json.loads((out / "config.json").read_text())
        (out / "config.json").write_text(json.dumps({**saved, **change}))
        assert main(["train", "--resume", str(out)]) == 2
        err = capsys.readouterr().err
        assert message in err and str(out / "config.json") in err
