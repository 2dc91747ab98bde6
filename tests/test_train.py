"""grunet train / eval / predict: the recipe, run directory, determinism, stop-and-resume, bad input."""
import csv
import dataclasses
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from conftest import finished_run
from grunet.checkpoint import load_checkpoint, load_model
from grunet.cli import main
from grunet.data import SPECS, load_split
from grunet.train import Batches, TrainConfig, run

SMALL = dict(units=16, steps=60, eval_every=10, impl="reference", threads=1, lr=0.01)
SMALL_ARGS = ["--units", "16", "--lr", "0.01", "--eval-every", "10", "--impl", "reference", "--threads", "1", "--progress", "lines"]


def metrics(run_dir: Path, drop_elapsed=True):
    with open(run_dir / "metrics.csv") as f:
        rows = list(csv.DictReader(f))
    return [{k: v for k, v in r.items() if not (drop_elapsed and k == "elapsed_s")} for r in rows]


def weights(run_dir: Path, name="last.pt"):
    return load_checkpoint(run_dir / name)["model"]


def assert_same_weights(a: dict, b: dict):
    assert a.keys() == b.keys()
    for k in a:
        assert torch.equal(a[k], b[k]), k


@pytest.fixture(scope="module")
def reference_run(tmp_path_factory):
    """An uninterrupted small run of 60 steps, shared by the resume tests."""
    return finished_run(SMALL, tmp_path_factory.mktemp("runs") / "full")


def test_run_directory_contents(reference_run):
    out = reference_run
    config = json.loads((out / "config.json").read_text())
    assert config["units"] == 16 and config["batch_size"] == 50 and config["lr"] == 0.01 and config["steps"] == 60
    rows = metrics(out)
    assert [int(r["step"]) for r in rows] == [0, 10, 20, 30, 40, 50, 59]  # 59: the final weights
    assert all(0 <= float(r["test_accuracy"]) <= 1 and float(r["loss"]) > 0 for r in rows)
    # it learns: the loss falls and accuracy rises well above chance in 60 steps
    assert float(rows[-1]["loss"]) < float(rows[0]["loss"]) - 0.3
    assert float(rows[-1]["test_accuracy"]) > 0.3
    summary = json.loads((out / "summary.json").read_text())
    assert summary["steps"] == 60 and summary["parameters"] == 3 * (16 * 28 + 16 * 16 + 16) + 16 * 10 + 10
    assert summary["best_test_accuracy"] == max(float(r["test_accuracy"]) for r in rows)
    assert summary["final_test_accuracy"] == float(rows[-1]["test_accuracy"])
    best = load_checkpoint(out / "best.pt")
    assert best["progress"]["rows"][-1]["step"] == summary["best_step"]
    assert not list(out.glob("*.tmp")) and not list(out.glob(".*.tmp"))
    # the final accuracy in summary.json is that of the final weights
    model, _ = load_model(out / "last.pt", impl="reference")
    x, y = load_split("mnist-sample", "test")
    from grunet.data import to_sequences

    with torch.no_grad():
        acc = (model(to_sequences(x, "rows")).argmax(1) == torch.as_tensor(y)).double().mean().item()
    assert acc == pytest.approx(summary["final_test_accuracy"], abs=1e-12)


def test_same_seed_same_metrics(reference_run, tmp_path):
    run(TrainConfig(**SMALL), tmp_path / "again", print_fn=lambda s: None, progress=False)
    assert metrics(tmp_path / "again") == metrics(reference_run)
    assert_same_weights(weights(tmp_path / "again"), weights(reference_run))
    run(TrainConfig(**{**SMALL, "seed": 1}), tmp_path / "other", print_fn=lambda s: None, progress=False)
    assert metrics(tmp_path / "other") != metrics(reference_run)


def test_stop_by_signal_then_resume_equals_uninterrupted(reference_run, tmp_path):
    out = tmp_path / "stopped"

    def send_sigterm(i):
        if i == 23:  # between two evaluations: the window sums and data position must survive
            os.kill(os.getpid(), signal.SIGTERM)

    lines = []
    result = run(TrainConfig(**SMALL), out, print_fn=lines.append, progress=False, on_step=send_sigterm)
    assert result.exit_code == 128 + signal.SIGTERM
    assert "stopped by SIGTERM after step 24" in lines[-1] and f"grunet train --resume {out}" in lines[-1]
    assert load_checkpoint(out / "last.pt")["progress"]["step"] == 24
    assert not (out / "summary.json").exists()
    assert main(["train", "--resume", str(out), "--progress", "lines"]) == 0
    assert metrics(out) == metrics(reference_run)
    assert_same_weights(weights(out), weights(reference_run))


def test_extend_with_steps_equals_uninterrupted(reference_run, tmp_path):
    """An extended run keeps the final row of its first part (step 29, an evaluation that happened); every
    other row and the weights are those of the run that was never stopped."""
    out = tmp_path / "short"
    assert main(["train", "--steps", "30", "--out", str(out), *SMALL_ARGS]) == 0
    assert [int(r["step"]) for r in metrics(out)] == [0, 10, 20, 29]
    first_part_final = metrics(out)[-1]
    assert main(["train", "--resume", str(out), "--steps", "60"]) == 0
    assert json.loads((out / "config.json").read_text())["steps"] == 60
    expected = metrics(reference_run)
    assert metrics(out) == expected[:3] + [first_part_final] + expected[3:]
    assert_same_weights(weights(out), weights(reference_run))


def test_kill_of_cli_process_then_resume(reference_run, tmp_path):
    """A real `grunet train` process stopped by SIGTERM at whatever step it reached, then resumed."""
    out = tmp_path / "killed"
    cmd = [sys.executable, "-m", "grunet", "train", "--out", str(out), "--steps", "60", *SMALL_ARGS]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    deadline = time.time() + 120
    while time.time() < deadline and not (out / "metrics.csv").exists():
        time.sleep(0.05)
    proc.send_signal(signal.SIGTERM)
    output, _ = proc.communicate(timeout=120)
    if proc.returncode == 0:  # it finished before the signal came: nothing to resume
        pytest.skip("the run ended before SIGTERM arrived")
    assert proc.returncode == 128 + signal.SIGTERM, output
    assert "Resume with: grunet train --resume" in output
    r = subprocess.run([sys.executable, "-m", "grunet", "train", "--resume", str(out)], capture_output=True,
                       text=True, timeout=300)
    assert r.returncode == 0, r.stderr
    assert metrics(out) == metrics(reference_run)
    assert_same_weights(weights(out), weights(reference_run))


def test_batches_are_consecutive_slices_that_wrap():
    b = Batches(120, 50, shuffle=False, seed=0)
    got = [b.next_indices() for _ in range(4)]
    assert got == [slice(0, 50), slice(50, 100), slice(0, 50), slice(50, 100)]
    s = Batches(120, 50, shuffle=True, seed=0)
    first = torch.cat([s.next_indices(), s.next_indices()])
    assert len(set(first.tolist())) == 100
    state = s.state_dict()
    after = s.next_indices()
    t = Batches(120, 50, shuffle=True, seed=0)
    t.load_state_dict(state)
    assert torch.equal(t.next_indices(), after)


def test_epochs_and_lstm_baseline(tmp_path, capsys):
    out = tmp_path / "lstm"
    assert main(["train", "--cell", "lstm", "--epochs", "0.25", "--out", str(out), *SMALL_ARGS]) == 0
    summary = json.loads((out / "summary.json").read_text())
    assert summary["steps"] == 20  # a quarter of 4,000 / 50
    assert summary["parameters"] == 4 * (16 * 28 + 16 * 16 + 2 * 16) + 170
    assert "LSTM" in capsys.readouterr().out


def test_eval_and_predict_commands(reference_run, tmp_path, capsys):
    assert main(["eval", str(reference_run)]) == 0
    out = capsys.readouterr().out
    best = json.loads((reference_run / "summary.json").read_text())["best_test_accuracy"]
    assert f"accuracy: {best:.4f}" in out and "confusion matrix" in out
    matrix = [line.split()[1:] for line in out.splitlines()[-10:]]
    assert sum(int(v) for row in matrix for v in row) == 1000
    assert sum(int(matrix[i][i]) for i in range(10)) == round(best * 1000)

    from PIL import Image

    x, y = load_split("mnist-sample", "test")
    model, _ = load_model(reference_run, impl="reference")
    from grunet.data import to_sequences

    with torch.no_grad():
        expected = model(to_sequences(x[:3], "rows")).argmax(1).tolist()
    paths = []
    for i in range(3):  # dark ink on white paper, 3x larger: predict inverts and resizes it back
        path = tmp_path / f"digit{i}.png"
        Image.fromarray(255 - x[i]).resize((84, 84), Image.NEAREST).save(path)
        paths.append(str(path))
    assert main(["predict", str(reference_run / "best.pt"), *paths]) == 0
    lines = capsys.readouterr().out.strip().splitlines()
    assert [int(line.split(": ")[1].split()[0]) for line in lines] == expected
    probabilities = [float(v) for v in lines[0].split("[")[1].rstrip("]").split()]
    assert len(probabilities) == 10 and sum(probabilities) == pytest.approx(1, abs=0.01)


def _bad_idx_dir(tmp_path):
    d = tmp_path / "bad-idx"
    d.mkdir()
    for name in ("train-images-idx3-ubyte", "train-labels-idx1-ubyte", "t10k-images-idx3-ubyte",
                 "t10k-labels-idx1-ubyte"):
        (d / name).write_bytes(b"\x00\x00\x08\x03garbage")
    return d


@pytest.mark.parametrize("argv,message", [
    (["train", "--steps", "0"], "--steps: expected an integer from 1 to 1000000000000, got 0"),
    (["train", "--steps", "1" + "0" * 29], "--steps: expected an integer from 1 to 1000000000000, got 1000"),
    (["train", "--lr", "-1"], "--lr: expected a number > 0 and <= 10, got -1.0"),
    (["train", "--lr", "nan"], "--lr: expected a number > 0 and <= 10, got nan"),
    (["train", "--lr", "inf"], "--lr: expected a number > 0 and <= 10, got inf"),
    (["train", "--lr", "1e300"], "--lr: expected a number > 0 and <= 10, got 1e+300"),
    (["train", "--epochs", "inf"], "--epochs: expected a finite number > 0, got inf"),
    (["train", "--epochs", "nan"], "--epochs: expected a finite number > 0, got nan"),
    (["train", "--epochs", "1e300"], "--epochs: expected at most 1,000,000,000,000 steps' worth, got 1e+300"),
    (["train", "--seed", "1" + "0" * 29], "--seed: expected an integer from 0 to 4294967295, got 1000"),
    (["train", "--seed", "-1"], "--seed: expected an integer from 0 to 4294967295, got -1"),
    (["train", "--view", "permuted", "--permutation-seed", "-3"],
     "--permutation-seed: expected an integer from 0 to 4294967295, got -3"),
    (["train", "--view", "permuted", "--permutation-seed", str(2**40)],
     "--permutation-seed: expected an integer from 0 to 4294967295, got 1099511627776"),
    (["train", "--eval-every", "0"], "--eval-every: expected an integer from 1 to 1000000000000, got 0"),
    (["train", "--eval-every", "1" + "0" * 29], "--eval-every: expected an integer from 1 to"),
    (["train", "--batch-size", "-5"], "--batch-size: expected an integer from 1 to 2147483647, got -5"),
    (["train", "--threads", "1" + "0" * 29], "--threads: expected an integer from 1 to 4096, got 1000"),
    (["train", "--threads", "0"], "--threads: expected an integer from 1 to 4096, got 0"),
    (["train", "--units", "10000000"], "--units: expected a size that fits in this machine's"),
    (["train", "--layers", "1000000000"], "--layers: expected an integer from 1 to 1000, got 1000000000"),
    (["train", "--batch-size", "5000"], "--batch-size: expected at most the training set's size 4000, got 5000"),
    (["train", "--units", "0"], "--units: expected an integer from 1 to 2147483647, got 0"),
    (["train", "--device", "tpu"], "--device: expected 'cpu' or 'cuda[:N]', got 'tpu'"),
    (["train", "--dataset", "mnist", "--data-dir", "{tmp}/empty"], "expected files train-images-idx3-ubyte.gz"),
    (["train", "--dataset", "mnist", "--data-dir", "{bad}"], "bad-idx"),
    (["train", "--dataset", "kmnist", "--cache-dir", "{tmp}/cache"], "mnist-sample"),
    (["train", "--out", "{file}"], "--out: expected a directory (or a path to create)"),
    (["train", "--out", "{file}/sub"], "--out: expected a writable directory"),
    (["eval", "{tmp}/nothing"], "expected a checkpoint file or run directory, got nothing at that path"),
    (["eval", "{file}"], "expected a grunet checkpoint"),
    (["predict", "{tmp}/nothing.pt", "x.png"], "expected a checkpoint file or run directory"),
])
def test_bad_input_one_line_exit_2(argv, message, tmp_path, capsys, monkeypatch):
    (tmp_path / "empty").mkdir()
    (tmp_path / "afile").write_text("not a run")
    # no network here: the mirrors are local addresses that refuse at once
    monkeypatch.setitem(SPECS, "kmnist", dataclasses.replace(SPECS["kmnist"], mirrors=("http://127.0.0.1:9/",)))
    fill = {"tmp": str(tmp_path), "file": str(tmp_path / "afile"), "bad": str(_bad_idx_dir(tmp_path))}
    argv = [a.format(**fill) for a in argv]
    if argv[0] == "train" and "--out" not in argv:
        argv += ["--out", str(tmp_path / "new-run")]
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert message in err, err
    assert "Traceback" not in err and sum("error:" in line for line in err.splitlines()) == 1
    assert not (tmp_path / "new-run").exists()  # nothing made for a refused run


def test_out_holding_another_run_and_resume_with_changed_options(reference_run, capsys):
    assert main(["train", "--out", str(reference_run), *SMALL_ARGS]) == 2
    assert "already holds a run (continue it with --resume" in capsys.readouterr().err
    assert main(["train", "--resume", str(reference_run), "--units", "32", "--lr", "0.02"]) == 2
    err = capsys.readouterr().err
    assert "units: the run has 16, the command asks 32" in err and "lr: the run has 0.01, the command asks 0.02" in err
    assert len(err.strip().splitlines()) == 1


def test_predict_rejects_non_images(reference_run, tmp_path, capsys):
    bad = tmp_path / "digit.png"
    bad.write_bytes(b"GIF89a not really")
    assert main(["predict", str(reference_run), str(bad)]) == 2
    assert "expected a PNG or JPEG image" in capsys.readouterr().err
    from PIL import Image

    gif = tmp_path / "real.gif"
    Image.fromarray(np.zeros((28, 28), np.uint8)).save(gif)
    assert main(["predict", str(reference_run), str(gif)]) == 2
    assert "expected a PNG or JPEG image, got GIF format" in capsys.readouterr().err


def test_torch_baseline_trains_like_grunet(tmp_path):
    """--impl torch (torch.nn.GRU) and grunet's reference GRU start from the same weights and follow the
    same loss curve; the baseline's checkpoint loads into grunet."""
    curves = {}
    for impl in ("torch", "reference"):
        cfg = TrainConfig(**{**SMALL, "impl": impl, "reset_after": True, "steps": 31})
        run(cfg, tmp_path / impl, print_fn=lambda s: None, progress=False)
        curves[impl] = metrics(tmp_path / impl)
    for a, b in zip(curves["torch"], curves["reference"]):
        assert float(a["loss"]) == pytest.approx(float(b["loss"]), abs=1e-4)
        assert float(a["test_accuracy"]) == pytest.approx(float(b["test_accuracy"]), abs=2e-3)
    model, ckpt = load_model(tmp_path / "torch" / "last.pt", impl="reference")
    assert type(model.rnn).__module__ == "grunet.layers"
    assert main(["train", "--impl", "torch", "--steps", "2", "--out", str(tmp_path / "rb")]) == 2
    assert not (tmp_path / "rb").exists()


def test_edited_config_with_wrong_types_or_keys_is_refused(reference_run, tmp_path, capsys):
    import shutil

    for change, message in [({"lr": "fast"}, "expected lr of type float, got 'fast'"),
                            ({"units": 16.5}, "expected units of type int, got 16.5"),
                            ({"shuffle": 1}, "expected shuffle of type bool, got 1"),
                            ({"colour": "red"}, "got unknown keys ['colour']")]:
        out = tmp_path / f"edited-{len(list(tmp_path.iterdir()))}"
        shutil.copytree(reference_run, out)
        saved = json.loads((out / "config.json").read_text())
        (out / "config.json").write_text(json.dumps({**saved, **change}))
        assert main(["train", "--resume", str(out)]) == 2
        assert message in capsys.readouterr().err


# ---- runs that get stuck or clobbered; full disks; the final evaluation ---------------------------------
def test_final_evaluation_is_a_row_and_a_best_candidate(tmp_path, capsys):
    """--steps N --eval-every N: the rows are step 0 and step N-1 (the final weights); best.pt, summary.json
    and the done line agree with metrics.csv."""
    out = tmp_path / "final"
    assert main(["train", "--steps", "20", "--out", str(out), *SMALL_ARGS[:4], "--eval-every", "20",
                 *SMALL_ARGS[6:]]) == 0
    rows = metrics(out)
    assert [int(r["step"]) for r in rows] == [0, 19]
    accuracies = [float(r["test_accuracy"]) for r in rows]
    assert accuracies[1] > accuracies[0]  # 20 steps at lr 0.01 learn: the untrained model is not the best
    summary = json.loads((out / "summary.json").read_text())
    assert summary["final_test_accuracy"] == accuracies[1] == summary["best_test_accuracy"]
    assert summary["best_step"] == 19
    best = load_checkpoint(out / "best.pt")
    assert best["progress"]["step"] == 20
    assert_same_weights(best["model"], weights(out))
    done = capsys.readouterr().out.strip().splitlines()[-1]
    assert f"final test accuracy {accuracies[1]:.4f}, best {accuracies[1]:.4f} at step 19" in done


def test_out_on_a_directory_of_other_files_is_refused(tmp_path, capsys):
    out = tmp_path / "mine"
    out.mkdir()
    for name in ("last.pt", "best.pt", "metrics.csv"):
        (out / name).write_text(f"my own {name}")
    assert main(["train", "--out", str(out), "--steps", "2", *SMALL_ARGS]) == 2
    err = capsys.readouterr().err
    assert "--out: expected an empty or new directory" in err and "not a run" in err
    assert len(err.strip().splitlines()) == 1
    assert sorted(p.name for p in out.iterdir()) == ["best.pt", "last.pt", "metrics.csv"]
    assert all((out / n).read_text() == f"my own {n}" for n in ("last.pt", "best.pt", "metrics.csv"))


def test_run_killed_before_first_checkpoint_resumes(reference_run, tmp_path, capsys):
    """A run directory holding only config.json (killed before its first checkpoint): --out refuses it,
    --resume starts it from step 0 and ends as the run that was never stopped."""
    out = tmp_path / "early"
    out.mkdir()
    shutil.copy(reference_run / "config.json", out / "config.json")
    assert main(["train", "--out", str(out), *SMALL_ARGS]) == 2
    assert f"continue it with --resume {out}" in capsys.readouterr().err
    assert main(["train", "--resume", str(out)]) == 0
    assert "starting" in capsys.readouterr().out
    assert metrics(out) == metrics(reference_run)
    assert_same_weights(weights(out), weights(reference_run))


def test_signal_before_first_step_saves_last_pt(reference_run, tmp_path):
    def print_then_sigterm(line):  # the model summary is printed after config.json, before any step
        os.kill(os.getpid(), signal.SIGTERM)
        lines.append(line)

    out = tmp_path / "sigterm-early"
    lines = []
    result = run(TrainConfig(**SMALL), out, print_fn=print_then_sigterm, progress=False)
    assert result.exit_code == 128 + signal.SIGTERM
    assert "stopped by SIGTERM after step 0 of 60" in lines[-1]
    assert load_checkpoint(out / "last.pt")["progress"]["step"] == 0
    assert main(["train", "--resume", str(out)]) == 0
    assert metrics(out) == metrics(reference_run)
    assert_same_weights(weights(out), weights(reference_run))


def test_resume_with_fewer_steps_than_done_is_refused(reference_run, tmp_path, capsys):
    out = tmp_path / "done"
    shutil.copytree(reference_run, out)
    before = (out / "config.json").read_bytes()
    assert main(["train", "--resume", str(out), "--steps", "30"]) == 2
    err = capsys.readouterr().err
    assert "--steps: expected at least the 60 steps the run" in err and "got 30" in err
    assert (out / "config.json").read_bytes() == before


def test_second_process_on_a_locked_run_is_refused(reference_run, tmp_path, capsys):
    from grunet.run_dir import RunLock

    out = tmp_path / "locked"
    shutil.copytree(reference_run, out)
    before = {p.name: p.read_bytes() for p in out.iterdir() if p.is_file() and p.name != ".grunet.lock"}
    holder = subprocess.Popen([sys.executable, "-c", "import fcntl, os, sys, time; "
                               f"fd = os.open({str(out / '.grunet.lock')!r}, os.O_RDWR | os.O_CREAT); "
                               "fcntl.flock(fd, fcntl.LOCK_EX); os.write(fd, b'%d' % os.getpid()); "
                               "print('locked', flush=True); time.sleep(60)"], stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "locked"
        assert main(["train", "--resume", str(out), "--steps", "70"]) == 2
        err = capsys.readouterr().err
        assert f"expected a run no other process is training, got one locked by pid {holder.pid}" in err
        after = {p.name: p.read_bytes() for p in out.iterdir() if p.is_file() and p.name != ".grunet.lock"}
        assert after == before
    finally:
        holder.kill()
        holder.wait()
    with RunLock(out):  # the lock of a process that ended is free again
        pass


def test_full_disk_while_checkpointing_keeps_the_old_checkpoint(reference_run, tmp_path, capsys, monkeypatch):
    import errno

    out = tmp_path / "full"
    shutil.copytree(reference_run, out)
    before = {p.name: p.read_bytes() for p in out.iterdir() if p.is_file()}

    def no_space(*args, **kwargs):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(torch, "save", no_space)
    assert main(["train", "--resume", str(out), "--steps", "80"]) == 2
    err = capsys.readouterr().err
    assert "last.pt: expected to write the file, got No space left on device" in err
    assert len(err.strip().splitlines()) == 1
    after = {p.name: p.read_bytes() for p in out.iterdir() if p.is_file() and p.name not in ("config.json", ".grunet.lock")}
    assert after == {k: v for k, v in before.items() if k not in ("config.json", ".grunet.lock")}  # intact
    assert not [p for p in out.iterdir() if p.name.endswith(".tmp")]
    monkeypatch.undo()

    import grunet.fileio as fileio

    def read_only(src, dst):
        raise OSError(errno.EROFS, "Read-only file system")

    monkeypatch.setattr(fileio.os, "replace", read_only)
    assert main(["train", "--resume", str(out), "--steps", "80"]) == 2
    assert "expected to write the file, got Read-only file system" in capsys.readouterr().err
    assert (out / "last.pt").read_bytes() == before["last.pt"]


def test_temporary_files_of_killed_writers_are_removed(tmp_path):
    from grunet.fileio import write_text

    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True,
                          text=True).stdout.strip()
    stale = tmp_path / f".metrics.csv.{dead}.abc123_x.tmp"
    alive = tmp_path / f".metrics.csv.{os.getppid()}.def456_y.tmp"  # a writer that still runs
    other = tmp_path / f".metrics.csv.old.{dead}.ghi789_z.tmp"  # another file's temporary file
    for p in (stale, alive, other):
        p.write_text("half")
    write_text(tmp_path / "metrics.csv", "step\n")
    assert not stale.exists() and alive.exists() and other.exists()
    assert (tmp_path / "metrics.csv").read_text() == "step\n"
