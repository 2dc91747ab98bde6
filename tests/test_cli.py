"""The command line shell: version, help, unknown commands."""
import subprocess
import sys

import pytest

import grunet
from grunet.cli import build_parser, main


def test_version_and_help(capsys):
    with pytest.raises(SystemExit) as e:
        main(["--version"])
    assert e.value.code == 0 and capsys.readouterr().out.strip() == f"grunet {grunet.__version__}"
    with pytest.raises(SystemExit) as e:
        main(["--help"])
    assert e.value.code == 0 and "params" in capsys.readouterr().out


def test_no_command_and_unknown_command_exit_2(capsys):
    assert main([]) == 2
    with pytest.raises(SystemExit) as e:
        main(["frobnicate"])
    assert e.value.code == 2 and "invalid choice" in capsys.readouterr().err


def test_python_dash_m_runs():
    r = subprocess.run([sys.executable, "-m", "grunet", "params", "--reset-before", "--dense", "10"],
                       capture_output=True, text=True, timeout=120)
    assert r.returncode == 0 and "24,160" in r.stdout


def test_parser_has_params():
    assert "params" in build_parser()._subparsers._group_actions[0].choices


def test_output_into_a_reader_that_stops_early_is_quiet():
    """`grunet params ... | head -1`: the reader leaves after one line; no BrokenPipeError on stderr."""
    p = subprocess.Popen([sys.executable, "-m", "grunet.cli", "params", "--layers", "3000", "--bidirectional"],
                         stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    first = p.stdout.readline()
    p.stdout.close()  # like head -1 exiting: the rest (about 2 MB) has nowhere to go
    err = p.stderr.read()
    p.wait(timeout=120)
    assert first and err == b"", err.decode()
    assert p.returncode == 141


def one_error_line(capsys, message):
    captured = capsys.readouterr()
    assert message in captured.err and len(captured.err.strip().splitlines()) == 1, captured.err
    assert "Traceback" not in captured.err
    return captured


@pytest.fixture
def tiny_checkpoint(tmp_path):
    import torch

    from grunet.checkpoint import save_checkpoint
    from grunet.model import ModelConfig, SequenceClassifier

    torch.manual_seed(0)
    path = tmp_path / "tiny.pt"
    save_checkpoint(path, SequenceClassifier(ModelConfig(hidden_size=4)), data={"dataset": "mnist-sample"})
    return path


def test_predict_refuses_bombs_and_broken_images_in_one_line(tiny_checkpoint, tmp_path, capsys):
    from test_images import png_declaring

    bomb = tmp_path / "bomb.png"
    bomb.write_bytes(png_declaring(100_000, 100_000))
    broken = tmp_path / "broken.png"
    broken.write_bytes(b"\x89PNG\r\n\x1a\n" + b"\0" * 40)
    blank = tmp_path / "blank.png"
    from PIL import Image
    import numpy as np

    Image.fromarray(np.full((30, 30), 255, np.uint8)).save(blank)
    for image, message in ((bomb, "refused before decoding"), (broken, "expected a PNG or JPEG image, got a file that cannot be read"),
                           (blank, "blank image")):
        for argv in (["predict", str(tiny_checkpoint), str(image)],
                     ["explain", str(tiny_checkpoint), "--image", str(image)]):
            assert main(argv) == 2, argv
            assert one_error_line(capsys, message).out == ""


def test_predict_transparent_drawing(tiny_checkpoint, tmp_path, capsys):
    from PIL import Image
    import numpy as np

    from grunet.data import load_split

    images, _ = load_split("mnist-sample", "test")
    rgba = np.zeros((28, 28, 4), np.uint8)
    rgba[..., 3] = images[0]  # black strokes on a transparent canvas
    Image.fromarray(rgba, mode="RGBA").save(tmp_path / "d.png")
    Image.fromarray(images[0]).save(tmp_path / "plain.png")
    assert main(["predict", str(tiny_checkpoint), str(tmp_path / "d.png"), str(tmp_path / "plain.png")]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert len(lines) == 2 and lines[0].split(":", 1)[1] == lines[1].split(":", 1)[1]  # the same input


def test_eval_names_the_checkpoint_it_scored(tiny_checkpoint, tmp_path, capsys):
    assert main(["eval", str(tiny_checkpoint)]) == 0
    out = capsys.readouterr().out
    assert out.splitlines()[0] == f"checkpoint {tiny_checkpoint}: no training step recorded (a converted model)"
    from grunet.train import TrainConfig, run

    result = run(TrainConfig(units=4, steps=3, eval_every=2, impl="reference", threads=1), tmp_path / "run",
                 print_fn=lambda s: None, progress=False)
    assert result.exit_code == 0
    assert main(["eval", str(tmp_path / "run")]) == 0
    first = capsys.readouterr().out.splitlines()[0]
    import torch

    step = torch.load(tmp_path / "run" / "best.pt", weights_only=False)["progress"]["step"]
    assert first == f"checkpoint {tmp_path / 'run' / 'best.pt'}: {step:,} training steps done"


def write_split(directory, split, n):
    import numpy as np

    from grunet.data import write_idx
    from grunet.data.datasets import FILES

    directory.mkdir(parents=True, exist_ok=True)
    write_idx(directory / FILES[split][0], np.zeros((n, 28, 28), np.uint8))
    write_idx(directory / FILES[split][1], np.zeros(n, np.uint8))


@pytest.mark.parametrize("empty", ["train", "test"])
def test_train_with_an_empty_split_leaves_no_run(tmp_path, capsys, empty):
    data = tmp_path / "data"
    write_split(data, "train", 0 if empty == "train" else 60)
    write_split(data, "test", 0 if empty == "test" else 10)
    out = tmp_path / "run"
    # kmnist: no published IDX checksums, so files of any content are read
    assert main(["train", "--dataset", "kmnist", "--data-dir", str(data), "--steps", "2", "--units", "4",
                 "--impl", "reference", "--out", str(out)]) == 2
    one_error_line(capsys, f"expected 1 to {60_000 if empty == 'train' else 10_000:,} images")
    assert not out.exists()


def test_data_dir_with_the_bundled_sample_is_refused(tmp_path, capsys):
    out = tmp_path / "run"
    assert main(["train", "--data-dir", str(tmp_path), "--steps", "2", "--out", str(out)]) == 2
    one_error_line(capsys, "--data-dir: expected no directory with --dataset mnist-sample")
    assert not out.exists()
