"""grunet train under torchrun: 2 processes (gloo on 127.0.0.1) follow the 1-process run of the same global
batch; stops, kills, restarts and resumes with another number of processes; the process group's pieces."""
import csv
import json
import os
import signal
import subprocess
import sys
import uuid
from pathlib import Path

import pytest
import torch

from conftest import free_port, ranks_of, torchrun_command, wait_for
from grunet.cli import main
from grunet.contract import BatchRows, CellSpec, Masks, global_batch
from grunet.distributed import Group, GroupLost, threads_per_rank
from grunet.errors import GrunetError
from grunet.train import TrainConfig, run

# the mnist-sample tutorial recipe (GRU(75), batch 50, Adam 1e-3, fused kernel), 200 steps, a row every 20
RECIPE = ["--steps", "200", "--eval-every", "20", "--threads", "1", "--progress", "lines"]
# every cell option on a stacked bidirectional GRU, through the fused kernel
CELLS = ["--steps", "20", "--eval-every", "10", "--threads", "1", "--progress", "lines", "--units", "12",
         "--layers", "2", "--bidirectional", "--reset-after", "--layer-norm", "--recurrent-dropout", "0.2",
         "--input-dropout", "0.1", "--weight-dropout", "0.1", "--zoneout", "0.1", "--impl", "fused", "--lr", "0.01"]
RUN_TIMEOUT_S = 300  # a bound on each torchrun (the first may build the fused kernel), not a timing


def metrics(run_dir: Path) -> list[dict]:
    with open(run_dir / "metrics.csv") as f:
        return list(csv.DictReader(f))


def assert_follows(run_dir: Path, reference: Path) -> None:
    """The same rows: losses within 1e-4, the same test accuracies."""
    got, want = metrics(run_dir), metrics(reference)
    assert [r["step"] for r in got] == [r["step"] for r in want]
    for a, b in zip(got, want):
        assert abs(float(a["loss"]) - float(b["loss"])) <= 1e-4, (a, b)
        assert a["test_accuracy"] == b["test_accuracy"], (a, b)


def torchrun(nproc: int, *args: str, launcher: tuple = (), env: dict | None = None, **popen) -> subprocess.Popen:
    return subprocess.Popen(torchrun_command(nproc, free_port(), "train", *args, launcher=launcher),
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            env={**os.environ, **(env or {})}, **popen)


def finished(process: subprocess.Popen) -> tuple[int, str, str]:
    out, err = process.communicate(timeout=RUN_TIMEOUT_S)
    return process.returncode, out, err


def ddp_complaints(stderr: str) -> list[str]:
    """DistributedDataParallel's complaints about the kernel's gradients: strides unlike the parameters'
    (a copy into the bucket at every step) or parameters without a gradient."""
    return [line for line in stderr.splitlines()
            if "strides do not match" in line or "did not receive grad" in line or "unused parameters" in line
            or "finished reduction" in line]


@pytest.fixture(scope="module")
def one_process(tmp_path_factory):
    out = tmp_path_factory.mktemp("one") / "run"
    assert main(["train", *RECIPE, "--out", str(out)]) == 0
    return out


@pytest.fixture(scope="module")
def two_processes(tmp_path_factory):
    out = tmp_path_factory.mktemp("two") / "run"
    code, stdout, stderr = finished(torchrun(2, *RECIPE, "--out", str(out)))
    assert code == 0, stderr[-3000:]
    return out, stdout, stderr


def test_two_processes_follow_one_process(one_process, two_processes):
    out, stdout, stderr = two_processes
    assert_follows(out, one_process)
    assert not ddp_complaints(stderr)
    assert json.loads((out / "config.json").read_text())["world_size"] == 2
    assert json.loads((one_process / "config.json").read_text())["world_size"] == 1
    summary = json.loads((out / "summary.json").read_text())
    assert summary["world_size"] == 2 and summary["steps"] == 200 and summary["threads"] == 1
    # rank 0 alone speaks and writes
    assert stdout.count("done: 200 steps") == 1 and stdout.count("Total params") == 1
    assert stdout.count("accuracy: ") == len(metrics(out))
    ours = torch.load(out / "last.pt", weights_only=True)["model"]
    theirs = torch.load(one_process / "last.pt", weights_only=True)["model"]
    assert all(torch.allclose(ours[k], theirs[k], atol=1e-4) for k in theirs)


def test_cell_options_on_two_processes_follow_one_process(tmp_path):
    """Stacked, bidirectional, layer norm and every dropout through the fused kernel: every rank draws the
    global batch's masks and keeps its rows, so the 2 processes draw what the 1 process draws; the kernel's
    gradients fill DistributedDataParallel's buckets as they are (dense, shaped like their parameters)."""
    code, _, stderr = finished(torchrun(2, *CELLS, "--out", str(tmp_path / "two")))
    assert code == 0, stderr[-3000:]
    assert not ddp_complaints(stderr)
    assert main(["train", *CELLS, "--out", str(tmp_path / "one")]) == 0
    assert_follows(tmp_path / "two", tmp_path / "one")


def test_sigterm_to_one_rank_stops_all_then_resume_with_one_process(one_process, tmp_path, capsys):
    out, marker = tmp_path / "run", f"GRUNET_TEST_RUN={uuid.uuid4()}"
    process = torchrun(2, *RECIPE, "--out", str(out), env=dict([marker.split("=")]))
    wait_for(lambda: (out / "metrics.csv").exists() or process.poll() is not None, RUN_TIMEOUT_S, "step 0's row")
    os.kill(ranks_of(marker)[1], signal.SIGTERM)
    code, stdout, stderr = finished(process)
    assert code != 0  # torchrun reports the ranks' 128 + SIGTERM
    assert "stopped by SIGTERM after step" in stdout and stdout.count("stopped by") == 1
    done = torch.load(out / "last.pt", weights_only=True)["progress"]["step"]
    assert 1 <= done < 200 and not (out / "summary.json").exists()
    capsys.readouterr()
    assert main(["train", "--resume", str(out)]) == 0
    assert f"resuming {out} at step {done}" in capsys.readouterr().out
    assert_follows(out, one_process)
    assert json.loads((out / "config.json").read_text())["world_size"] == 1


def test_one_process_run_resumed_by_nproc_2(one_process, tmp_path):
    """``grunet train --nproc 2`` starts torchrun itself; a run stopped on 1 process goes on with 2."""
    out = tmp_path / "run"

    def stop_at_30(i):
        if i == 30:
            os.kill(os.getpid(), signal.SIGTERM)

    config = TrainConfig(steps=200, eval_every=20, threads=1)
    assert run(config, out, print_fn=lambda s: None, progress=False, on_step=stop_at_30).exit_code == 143
    result = subprocess.run([sys.executable, "-m", "grunet", "train", "--nproc", "2", "--resume", str(out)],
                            capture_output=True, text=True, timeout=RUN_TIMEOUT_S)
    assert result.returncode == 0, result.stderr[-3000:]
    assert f"resuming {out} at step 31" in result.stdout
    assert_follows(out, one_process)
    assert json.loads((out / "summary.json").read_text())["world_size"] == 2


def test_sigterm_to_nproc_launcher_stops_the_run(tmp_path):
    """A SIGTERM to ``grunet train --nproc 2`` reaches every process through torchrun; the command's exit
    status is 128 + SIGTERM, as for one process."""
    out = tmp_path / "run"
    process = subprocess.Popen([sys.executable, "-m", "grunet", "train", "--nproc", "2", *RECIPE, "--units", "16",
                                "--steps", "1000000", "--out", str(out)], stdout=subprocess.PIPE,
                               stderr=subprocess.PIPE, text=True)
    wait_for(lambda: (out / "metrics.csv").exists() or process.poll() is not None, RUN_TIMEOUT_S, "step 0's row")
    process.send_signal(signal.SIGTERM)
    code, stdout, stderr = finished(process)
    assert code == 128 + signal.SIGTERM, stderr[-2000:]
    assert stdout.count("stopped by SIGTERM after step") == 1
    assert torch.load(out / "last.pt", weights_only=True)["progress"]["step"] >= 1


def test_killed_rank_ends_the_other_with_one_line(tmp_path):
    out, marker = tmp_path / "run", f"GRUNET_TEST_RUN={uuid.uuid4()}"
    process = torchrun(2, *RECIPE, "--steps", "1000000", "--dist-timeout", "30", "--out", str(out),
                       env=dict([marker.split("=")]))
    wait_for(lambda: (out / "metrics.csv").exists() or process.poll() is not None, RUN_TIMEOUT_S, "step 0's row")
    os.kill(ranks_of(marker)[1], signal.SIGKILL)
    out_text, err = process.communicate(timeout=60)  # bounded: the survivor does not hang
    assert process.returncode != 0
    lines = [line for line in err.splitlines() if line.startswith("grunet train: error:")]
    assert len(lines) == 1 and "rank 0: expected all 2 processes of the run to answer" in lines[0], err[-2000:]
    assert "[rank0]: Traceback" not in err
    assert torch.load(out / "last.pt", weights_only=True)["progress"]["step"] >= 1


def test_max_restarts_resumes_from_last_pt(one_process, tmp_path):
    """A rank killed with -9 under --max-restarts 1: torchrun restarts the group, which resumes --out from
    its last.pt and ends with the metrics of an uninterrupted run."""
    out, marker = tmp_path / "run", f"GRUNET_TEST_RUN={uuid.uuid4()}"
    process = torchrun(2, *RECIPE, "--out", str(out), launcher=("--max-restarts", "1"),
                       env=dict([marker.split("=")]))
    wait_for(lambda: (out / "metrics.csv").exists() or process.poll() is not None, RUN_TIMEOUT_S, "step 0's row")
    os.kill(ranks_of(marker)[1], signal.SIGKILL)
    code, stdout, stderr = finished(process)
    assert code == 0, stderr[-3000:]
    assert f"torchrun restart 1: resuming {out}" in stdout
    assert_follows(out, one_process)


# ---- the pieces, in one process ------------------------------------------------------------------------
@pytest.mark.parametrize("total,world", [(50, 2), (7, 3), (2, 4)])
def test_shares_cover_the_batch_once_in_order(total, world):
    shares = [Group(rank=r, world_size=world).share(total) for r in range(world)]
    assert [i for s in shares for i in range(total)[s]] == list(range(total))


def test_masks_of_shares_are_rows_of_the_global_masks():
    spec = CellSpec(recurrent_dropout=0.3, input_dropout=0.2, weight_dropout=0.1, zoneout=0.25)
    T, I, H, x = 5, 3, 4, torch.zeros(1)
    torch.manual_seed(7)
    whole = Masks.draw(spec, True, T, 6, I, H, x)
    for start, B in ((0, 2), (2, 4)):
        torch.manual_seed(7)
        with global_batch(BatchRows(start, 6)):
            part = Masks.draw(spec, True, T, B, I, H, x)
        rows = slice(start, start + B)
        assert torch.equal(part.input, whole.input[rows]) and torch.equal(part.recurrent, whole.recurrent[rows])
        assert torch.equal(part.weight, whole.weight) and torch.equal(part.zoneout, whole.zoneout[:, rows])
        assert part.zoneout.is_contiguous()
    with global_batch(BatchRows(4, 6)), pytest.raises(GrunetError, match="batch: expected at most the 2 rows"):
        Masks.draw(spec, True, T, 3, I, H, x)


def test_batch_that_does_not_divide_is_refused_before_anything_is_written(tmp_path):
    with pytest.raises(GrunetError, match=r"--batch-size: expected a multiple of the 3 processes .*, got 50"):
        run(TrainConfig(steps=1), tmp_path / "run", group=Group(rank=0, world_size=3))
    assert not (tmp_path / "run").exists()


def test_nproc_checks_every_option_once_before_starting_torchrun(tmp_path, capsys, monkeypatch):
    """A bad option under --nproc is one line and exit 2 from the launcher, not one line per process and
    torchrun's traceback: no process is started."""
    import subprocess

    started = []
    monkeypatch.setattr(subprocess, "Popen", lambda *a, **k: started.append(a))
    for argv, message in [(["--nproc", "3"], "--batch-size: expected a multiple of the 3 processes"),
                          (["--nproc", "2", "--lr", "nan"], "--lr: expected a number > 0")]:
        assert main(["train", *argv, "--steps", "5", "--out", str(tmp_path / "run")]) == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and message in err[0]
    assert started == [] and not (tmp_path / "run").exists()


def test_threads_per_rank():
    cores = len(os.sched_getaffinity(0))
    assert threads_per_rank(Group(world_size=2, local_world_size=2), None) == max(1, cores // 2)
    assert threads_per_rank(Group(world_size=8, local_world_size=8 * cores), None) == 1
    assert threads_per_rank(Group(world_size=2, local_world_size=2), 3) == 3


def test_lost_peer_is_one_line():
    group = Group(rank=1, world_size=2, backend="gloo")
    error = RuntimeError("[/x/gloo/gloo/transport/tcp/pair.cc:537] Read error [127.0.0.1]:5542: Connection reset "
                         "by peer. This is typically caused by a remote worker hanging.\nmore")
    assert group.is_lost(error) and not group.is_lost(RuntimeError("a bug")) and not Group().is_lost(error)
    lost = group.lost(error)
    assert isinstance(lost, GroupLost) and str(lost) == (
        "rank 1: expected all 2 processes of the run to answer, got one that died or stopped answering "
        "(Read error [127.0.0.1]:5542: Connection reset by peer)")


def test_nproc_under_torchrun_is_refused(monkeypatch, capsys):
    for name, value in (("RANK", "0"), ("WORLD_SIZE", "1"), ("LOCAL_RANK", "0"), ("LOCAL_WORLD_SIZE", "1"),
                        ("MASTER_ADDR", "127.0.0.1"), ("MASTER_PORT", "1")):
        monkeypatch.setenv(name, value)
    assert main(["train", "--nproc", "2"]) == 2
    assert capsys.readouterr().err.strip() == ("grunet train: error: --nproc: expected a command started outside "
                                              "torchrun (torchrun chooses the processes itself), got --nproc 2 "
                                              "under torchrun")
