"""The accuracy options of grunet train: the learning-rate schedule, shifts, weight averaging, label smoothing,
clipping, the validation split and early stop, --recipe and --config; each resumes exactly."""
import json
import math
import os
import signal

import pytest
import torch

from grunet.augment import draw_shifts, shift_images, shift_sequences
from grunet.checkpoint import load_checkpoint
from grunet.cli import main
from grunet.data.views import to_sequences
from grunet.ema import WeightAverage
from grunet.recipes import TUNED, TUNED_FOR, settings
from grunet.schedule import LearningRate
from grunet.train import TrainConfig, run
from conftest import finished_run
from test_train import assert_same_weights, metrics, weights

# every accuracy option on, small enough for seconds of training on the bundled sample
TUNED_SMALL = dict(units=16, steps=60, eval_every=10, impl="reference", threads=1, lr=0.01, batch_size=50,
                   lr_schedule="cosine", warmup_steps=5, clip_norm=0.5, shuffle=True, shift=1, label_smoothing=0.1,
                   ema=0.9, validation=500, recipe="tuned")


@pytest.fixture(scope="module")
def tuned_run(tmp_path_factory):
    return finished_run(TUNED_SMALL, tmp_path_factory.mktemp("runs") / "tuned")


# ---- the pieces ---------------------------------------------------------------------------------------
def test_schedules():
    constant = LearningRate(0.01, "constant", 0, 100)
    assert [constant.at(i) for i in (0, 50, 99)] == [0.01, 0.01, 0.01]
    cosine = LearningRate(0.01, "cosine", 9, 109)
    assert cosine.at(0) == pytest.approx(0.001) and cosine.at(8) == pytest.approx(0.009)
    assert cosine.at(9) == pytest.approx(0.01)  # the peak once the warm-up is over
    assert cosine.at(59) == pytest.approx(0.005)  # half-way through the decay: half the peak
    assert cosine.at(108) == pytest.approx(0.01 * (1 + math.cos(99 / 100 * math.pi)) / 2)
    onecycle = LearningRate(0.01, "onecycle", 0, 100)  # 30 steps of warm-up from lr / 25
    assert onecycle.at(0) == pytest.approx(0.01 * (1 / 25 + (24 / 25) / 31))
    assert onecycle.at(30) == pytest.approx(0.01) and onecycle.at(100) == pytest.approx(0.01 * 1e-4)


def test_shift_images_moves_pixels_and_fills_zeros():
    image = torch.zeros(2, 5, 5)
    image[:, 2, 2] = 1.0
    image[:, 0, 4] = 0.5
    moved = shift_images(image, torch.tensor([[1, -1], [0, 0]]))
    expected = torch.zeros(5, 5)
    expected[3, 1] = 1.0  # (2, 2) one row down, one column left; (0, 4) -> (1, 3)
    expected[1, 3] = 0.5
    assert torch.equal(moved[0], expected) and torch.equal(moved[1], image[1])
    assert torch.equal(shift_images(image, torch.tensor([[0, 3], [0, 3]]))[:, :, :3], torch.zeros(2, 5, 3))


@pytest.mark.parametrize("view", ["rows", "pixels", "permuted"])
def test_shift_sequences_shift_the_image_in_every_view(view):
    images = torch.randint(0, 256, (4, 28, 28), dtype=torch.uint8, generator=torch.Generator().manual_seed(0))
    shifts = torch.tensor([[1, 0], [-2, 1], [0, 0], [2, -2]])
    x = to_sequences(images, view, permutation_seed=3)
    moved = shift_sequences(x, shifts, view, permutation_seed=3)
    expected = to_sequences((shift_images(images.float(), shifts)).to(torch.uint8), view, permutation_seed=3)
    assert torch.equal(moved, expected)


def test_draw_shifts_uses_torchs_generator():
    torch.manual_seed(5)
    a = draw_shifts(100, 2)
    torch.manual_seed(5)
    assert torch.equal(a, draw_shifts(100, 2)) and a.min() == -2 and a.max() == 2


def test_weight_average():
    model = torch.nn.Linear(2, 1, bias=False)
    with torch.no_grad():
        model.weight.fill_(1.0)
    ema = WeightAverage(model, decay=0.5)
    with torch.no_grad():
        model.weight.fill_(3.0)
    ema.update()  # d = min(0.5, 1 / 10): 1 + 0.9 * (3 - 1)
    assert torch.allclose(ema.average["weight"], torch.full((1, 2), 2.8))
    ema.update()  # d = min(0.5, 2 / 11)
    assert torch.allclose(ema.average["weight"], torch.full((1, 2), 2.8 + (1 - 2 / 11) * 0.2))
    with ema.averaged() as m:
        assert torch.allclose(m.weight, ema.average["weight"])
    assert torch.equal(model.weight, torch.full((1, 2), 3.0))


# ---- training with them ---------------------------------------------------------------------------------
def test_tuned_options_run(tuned_run):
    rows = metrics(tuned_run)
    assert [int(r["step"]) for r in rows] == [0, 10, 20, 30, 40, 50, 59]
    assert all(r["val_accuracy"] != "" for r in rows)
    assert float(rows[0]["lr"]) == pytest.approx(0.01 / 6, rel=1e-5) and float(rows[2]["lr"]) < 0.01
    summary = json.loads((tuned_run / "summary.json").read_text())
    best = max(rows, key=lambda r: float(r["val_accuracy"]))  # chosen on the validation split
    assert summary["best_step"] == int(best["step"]) and summary["selected_by"] == "val_accuracy"
    assert summary["best_test_accuracy"] == float(best["test_accuracy"])
    assert summary["train_size"] == 3500 and summary["validation_size"] == 500
    ckpt = load_checkpoint(tuned_run / "last.pt")
    # the checkpoint's model is the average; the training weights ride along
    assert set(ckpt["ema"]) == {"training_weights", "updates"} and ckpt["ema"]["updates"] == 60
    assert any(not torch.equal(ckpt["model"][k], ckpt["ema"]["training_weights"][k]) for k in ckpt["model"])
    assert load_checkpoint(tuned_run / "best.pt")["progress"]["step"] == summary["best_step"] + 1


def test_tuned_options_stop_and_resume_equal_uninterrupted(tuned_run, tmp_path):
    out = tmp_path / "stopped"

    def send_sigterm(i):
        if i == 23:
            os.kill(os.getpid(), signal.SIGTERM)

    result = run(TrainConfig(**TUNED_SMALL), out, print_fn=lambda s: None, progress=False, on_step=send_sigterm)
    assert result.exit_code == 128 + signal.SIGTERM
    assert main(["train", "--resume", str(out), "--progress", "lines"]) == 0
    assert metrics(out) == metrics(tuned_run)
    assert_same_weights(weights(out), weights(tuned_run))
    assert_same_weights(load_checkpoint(out / "last.pt")["ema"]["training_weights"],
                        load_checkpoint(tuned_run / "last.pt")["ema"]["training_weights"])
    assert_same_weights(weights(out, "best.pt"), weights(tuned_run, "best.pt"))


def test_early_stop_on_the_validation_split(tmp_path):
    out = tmp_path / "early"
    config = TrainConfig(**{**TUNED_SMALL, "steps": 400, "lr": 0.3, "lr_schedule": "constant", "early_stop": 2,
                            "ema": 0.0})
    result = run(config, out, print_fn=lambda s: None, progress=False)
    rows = metrics(out)
    vals = [float(r["val_accuracy"]) for r in rows]
    best = vals.index(max(vals))
    assert result.summary["early_stopped"] and len(rows) == best + 3  # two evaluations without a better one
    assert result.summary["steps"] == int(rows[-1]["step"]) + 1 < 400


def test_tutorial_recipe_is_unchanged(tmp_path):
    """Without the new options: no val_accuracy, the constant lr, best.pt chosen on the test set."""
    out = tmp_path / "tutorial"
    assert main(["train", "--steps", "21", "--units", "16", "--impl", "reference", "--threads", "1",
                 "--eval-every", "10", "--out", str(out), "--progress", "lines"]) == 0
    rows = metrics(out)
    assert [r["val_accuracy"] for r in rows] == ["", "", ""] and {r["lr"] for r in rows} == {"0.001"}
    summary = json.loads((out / "summary.json").read_text())
    assert summary["selected_by"] == "test_accuracy" and summary["recipe"] == "tutorial"
    config = json.loads((out / "config.json").read_text())
    assert config["recipe"] == "tutorial" and config["validation"] == 0 and config["ema"] == 0.0


# ---- --recipe and --config --------------------------------------------------------------------------------
SMALL_ARGS = ["--units", "16", "--impl", "reference", "--threads", "1", "--progress", "lines"]


def test_recipe_tuned_defaults_and_command_line_overrides(tmp_path):
    out = tmp_path / "tuned"
    assert main(["train", "--recipe", "tuned", "--steps", "12", "--eval-every", "5", "--lr", "0.02",
                 "--out", str(out), *SMALL_ARGS]) == 0
    config = json.loads((out / "config.json").read_text())
    for name, value in {**TUNED, **TUNED_FOR["mnist-sample"]}.items():  # this run is on the bundled sample
        if name not in ("steps", "eval_every", "lr"):
            assert config[name] == value, name
    assert (config["steps"], config["eval_every"], config["lr"], config["units"]) == (12, 5, 0.02, 16)
    # the bundled sample's settings: it holds 4,000 training images, less than the 5,000 held out otherwise
    assert config["validation"] == TUNED_FOR["mnist-sample"]["validation"] == 500


def test_tuned_recipe_settings_by_data():
    defaults = TrainConfig().to_dict()
    fashion = settings("tuned", {"dataset": "fashion-mnist"}, defaults)
    assert {k: fashion[k] for k in TUNED} == {**TUNED, "recipe": "tuned"}
    pixels = settings("tuned", {"dataset": "fashion-mnist", "view": "pixels", "steps": 7}, defaults)
    assert pixels["steps"] == 7 and pixels["eval_every"] == TUNED_FOR["pixels"]["eval_every"]
    # the full data set's long run: a constant rate under the EMA; the shorter runs decay it
    assert (fashion["lr_schedule"], fashion["warmup_steps"]) == ("constant", 0)
    for asked in ({"dataset": "mnist-sample"}, {"dataset": "fashion-mnist", "view": "permuted"}):
        shorter = settings("tuned", asked, defaults)
        assert (shorter["lr_schedule"], shorter["warmup_steps"]) == ("cosine", 500), asked
    assert settings("tutorial", {"lr": 0.5}, defaults) == {"lr": 0.5, "recipe": "tutorial"}


@pytest.mark.parametrize("kind", ["toml", "json"])
def test_config_file_then_command_line(tmp_path, kind):
    path = tmp_path / f"settings.{kind}"
    if kind == "toml":
        path.write_text('recipe = "tuned"\nlr = 0.003\nbatch-size = 25\nsteps = 500\nvalidation = 200\n'
                        'eval_every = 4\nshift = 2\n')
    else:
        path.write_text(json.dumps({"recipe": "tuned", "lr": 0.003, "batch-size": 25, "steps": 500,
                                    "validation": 200, "eval_every": 4, "shift": 2}))
    out = tmp_path / "run"
    assert main(["train", "--config", str(path), "--steps", "8", "--out", str(out), *SMALL_ARGS]) == 0
    config = json.loads((out / "config.json").read_text())
    assert (config["lr"], config["batch_size"], config["steps"], config["shift"], config["ema"]) == \
        (0.003, 25, 8, 2, TUNED["ema"])


@pytest.mark.parametrize("text, suffix, message", [
    ("lr = 0.003\nlearning_rate = 1\n", "toml", "got unknown key 'learning_rate'"),
    ('lr = "fast"\n', "toml", "expected lr of type float, got 'fast'"),
    ("shuffle = 1\n", "toml", "expected shuffle of type bool, got 1"),
    ("lr = \n", "toml", "expected TOML, got a file that does not parse"),
    ("[1, 2]", "json", "expected a table of settings, got list"),
    ("lr: 1", "yaml", "expected a .toml or .json file, got .yaml"),
    ("# " + "x" * 70_000 + "\n", "toml", "expected at most 65,536 bytes of settings, got 70,003"),
    ("shift = 99\n", "toml", "--shift: expected an integer from 0 to 8, got 99"),
    ("early-stop = 3\n", "toml", "--early-stop: expected --validation N"),
    ("validation = 3990\n", "toml", "--validation: expected at most 3,950 images"),
])
def test_bad_config_file_one_line_exit_2(tmp_path, capsys, text, suffix, message):
    path = tmp_path / f"settings.{suffix}"
    path.write_text(text)
    out = tmp_path / "run"
    assert main(["train", "--config", str(path), "--steps", "5", "--out", str(out), *SMALL_ARGS]) == 2
    err = capsys.readouterr().err
    assert message in err and len(err.strip().splitlines()) == 1, err
    assert not out.exists()


@pytest.mark.parametrize("argv, message", [
    (["--lr-schedule", "linear"], "invalid choice: 'linear'"),
    (["--warmup-steps", "-1"], "--warmup-steps: expected an integer from 0 to"),
    (["--clip-norm", "-1"], "--clip-norm: expected a number >= 0"),
    (["--label-smoothing", "1"], "--label-smoothing: expected a number in [0, 1), got 1.0"),
    (["--ema", "1"], "--ema: expected a decay in [0, 1) (0: no averaging), got 1.0"),
    (["--validation", "-5"], "--validation: expected an integer from 0 to"),
    (["--recipe", "fast"], "invalid choice: 'fast'"),
])
def test_bad_options_one_line_exit_2(tmp_path, capsys, argv, message):
    out = tmp_path / "run"
    try:
        code = main(["train", *argv, "--steps", "5", "--out", str(out), *SMALL_ARGS])
    except SystemExit as e:  # argparse's own refusals
        code = e.code
    assert code == 2
    err = capsys.readouterr().err
    assert message in err, err
    assert not out.exists()


def test_config_with_resume_is_refused(tuned_run, tmp_path, capsys):
    path = tmp_path / "s.toml"
    path.write_text("lr = 0.1\n")
    assert main(["train", "--resume", str(tuned_run), "--config", str(path)]) == 2
    assert "--config: expected no --config with --resume" in capsys.readouterr().err


# ---- the report -------------------------------------------------------------------------------------------
def test_report_shows_validation_curve_and_lr_schedule(tuned_run, tmp_path):
    from grunet.report import write_report

    page = write_report(tuned_run, tmp_path / "tuned" / "index.html").read_text()
    assert "validation accuracy" in page and "chosen on the validation split" in page
    assert 'data-file="lr.png"' in page and "cosine schedule, warm-up of 5 steps" in page
    assert (tmp_path / "tuned" / "index_files" / "lr.png").is_file()


def test_report_of_tutorial_run_says_it_chooses_on_the_test_set(tmp_path):
    from grunet.report import write_report

    out = tmp_path / "tutorial"
    assert main(["train", "--steps", "12", "--eval-every", "5", "--out", str(out), *SMALL_ARGS]) == 0
    page = write_report(out, tmp_path / "t" / "index.html").read_text()
    assert "The test set was evaluated every 5 steps and best.pt is the best of those evaluations" in page
    assert "validation accuracy" not in page
    assert 'data-file="lr.png"' in page  # the constant rate, drawn all the same


def test_run_from_before_the_new_columns_resumes_and_reports(tmp_path):
    """metrics.csv and checkpoints without val_accuracy / lr (older grunet): resumed, extended, reported."""
    from grunet.fileio import torch_save
    from grunet.report import write_report

    out = tmp_path / "old"
    assert main(["train", "--steps", "12", "--eval-every", "5", "--out", str(out), *SMALL_ARGS]) == 0
    for name in ("last.pt", "best.pt"):
        ckpt = load_checkpoint(out / name)
        for row in ckpt["progress"]["rows"]:
            del row["val_accuracy"], row["lr"]
        del ckpt["progress"]["since_best"]
        torch_save(ckpt, out / name)
    lines = (out / "metrics.csv").read_text().splitlines()
    (out / "metrics.csv").write_text("\n".join(",".join(line.split(",")[:5]) for line in lines) + "\n")
    config = json.loads((out / "config.json").read_text())
    for name in ("recipe", "lr_schedule", "warmup_steps", "clip_norm", "shift", "label_smoothing", "ema",
                 "validation", "early_stop"):
        del config[name]
    (out / "config.json").write_text(json.dumps(config))
    write_report(out, tmp_path / "r" / "index.html")  # no lr plot, no validation curve, no error
    assert main(["train", "--resume", str(out), "--steps", "20"]) == 0
    rows = metrics(out)
    assert [r["lr"] for r in rows] == ["", "", "", "", "0.001", "0.001"] and int(rows[-1]["step"]) == 19
    assert [r["val_accuracy"] for r in rows] == [""] * 6


def test_extending_a_cosine_run_says_the_schedule_changes(tuned_run, tmp_path, capsys):
    import shutil
    out = tmp_path / "extended"
    shutil.copytree(tuned_run, out)
    assert main(["train", "--resume", str(out), "--steps", "70", "--progress", "lines"]) == 0
    said = capsys.readouterr().out
    before = LearningRate(0.01, "cosine", 5, 60).at(60)
    after = LearningRate(0.01, "cosine", 5, 70).at(60)
    assert f"now ends at step 70 instead of 60: the learning rate at step 60 is {after:.3g} (was {before:.3g})" in said
    assert float(metrics(out)[-1]["lr"]) == pytest.approx(LearningRate(0.01, "cosine", 5, 70).at(69), rel=1e-5)


def test_layer_norm_on_one_input_feature_warns(tmp_path, capsys):
    config = TrainConfig(**{**TUNED_SMALL, "steps": 2, "eval_every": 2, "view": "pixels", "units": 4,
                            "reset_after": True, "layer_norm": True})
    lines = []
    assert run(config, tmp_path / "ln", print_fn=lines.append, progress=False).exit_code == 0
    assert sum("warning: --layer-norm with one input feature (--view pixels)" in line for line in lines) == 1
    lines.clear()
    rows = run(TrainConfig(**{**TUNED_SMALL, "steps": 2, "eval_every": 2, "units": 4, "reset_after": True,
                              "layer_norm": True}), tmp_path / "rows", print_fn=lines.append, progress=False)
    assert rows.exit_code == 0 and not any("warning" in line for line in lines)
