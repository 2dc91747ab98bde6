"""grunet.report and `grunet report`: every section, embedded images that decode, well-formed self-contained
HTML, a page that headless Chromium renders, runs without summary.json, `train --report`, bad input."""
import base64
import html
import io
import json
import re
import shutil
import subprocess
from html.parser import HTMLParser
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from grunet.cli import main
from grunet.errors import GrunetError
from grunet.report import SCHEMA, SECTIONS, is_tutorial_recipe, write_report
from grunet.train import TrainConfig, run

TINY = dict(units=8, steps=21, eval_every=10, impl="reference", threads=1)
VOID = {"area", "base", "br", "col", "embed", "hr", "img", "input", "link", "meta", "source", "track", "wbr"}


def quiet_run(out, **settings):
    result = run(TrainConfig(**{**TINY, **settings}), out, print_fn=lambda s: None, progress=False)
    assert result.exit_code == 0
    return out


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    root = tmp_path_factory.mktemp("report")
    gru = quiet_run(root / "gru")
    stopped = root / "stopped"  # a stopped run: everything but summary.json
    shutil.copytree(gru, stopped)
    (stopped / "summary.json").unlink()
    return {"gru": gru, "stopped": stopped, "report": write_report(gru), "root": root}


class Page(HTMLParser):
    """Collects tags, ids, headings, <img> sources and <meta>s; checks that every tag is closed in order."""

    def __init__(self):
        super().__init__(convert_charrefs=True)
        self.stack, self.errors, self.ids, self.images, self.meta, self.h2 = [], [], {}, [], {}, []
        self.tags, self._in_h2 = set(), False

    def handle_starttag(self, tag, attrs):
        a = dict(attrs)
        self.tags.add(tag)
        if "id" in a:
            self.ids[a["id"]] = tag
        if tag == "img":
            self.images.append(a)
        if tag == "meta" and "name" in a:
            self.meta[a["name"]] = a.get("content")
        if tag == "h2":
            self._in_h2 = True
            self.h2.append("")
        if tag not in VOID:
            self.stack.append(tag)

    def handle_startendtag(self, tag, attrs):
        self.handle_starttag(tag, attrs)
        if tag not in VOID:
            self.stack.pop()

    def handle_endtag(self, tag):
        if tag == "h2":
            self._in_h2 = False
        if not self.stack or self.stack[-1] != tag:
            self.errors.append(f"</{tag}> closes {self.stack[-1] if self.stack else 'nothing'}")
        else:
            self.stack.pop()

    def handle_data(self, data):
        if self._in_h2:
            self.h2[-1] += data


def parse(path: Path) -> Page:
    page = Page()
    page.feed(path.read_text(encoding="utf-8"))
    page.close()
    return page


def test_report_has_every_section_and_parses(runs):
    path = runs["report"]
    assert path == runs["gru"] / "report" / "index.html"
    page = parse(path)
    assert page.errors == [] and page.stack == []
    assert page.meta["grunet-report-schema"] == str(SCHEMA)
    assert page.h2 == list(SECTIONS.values())
    for key in SECTIONS:
        assert page.ids.get(key) == "section", key
    text = path.read_text()
    assert "<script" not in text and "<link" not in text and not re.search(r'(src|href)="(https?:)?//', text)
    # contents: the convention, the parameter formula, the full config, timings from summary.json
    assert "z is the share of the old state kept" in text
    assert "3 * (U*I + U*U + U) = 3 * (8*28 + 8*8 + 8)" in text  # reset-before, U=8, I=28
    config = json.loads((runs["gru"] / "config.json").read_text())
    shown = re.search(r'<section id="config">.*?<pre>(.*?)</pre>', text, re.S).group(1)
    assert json.loads(html.unescape(shown)) == config
    assert "From summary.json" in text and "samples / s" in text
    assert "published test accuracy" not in text  # units 8 is not the tutorial's recipe


def test_embedded_images_decode_and_match_files(runs):
    page = parse(runs["report"])
    figures = {img["data-file"] for img in page.images}
    assert {"curves.png", "confusion.png", "mistakes.png"} <= figures
    assert len([f for f in figures if f.startswith("gates-")]) == 3
    for img in page.images:
        prefix = "data:image/png;base64,"
        assert img["src"].startswith(prefix)
        data = base64.b64decode(img["src"][len(prefix):], validate=True)
        with Image.open(io.BytesIO(data)) as im:
            assert im.format == "PNG" and im.width > 100 and im.height > 100
            assert len(np.unique(np.asarray(im.convert("RGB")).reshape(-1, 3), axis=0)) > 5
        assert (runs["report"].parent / img["data-file"]).read_bytes() == data  # the PNG beside the page


def find_chromium():
    for name in ("chromium", "chromium-browser", "google-chrome", "google-chrome-stable"):
        if shutil.which(name):
            return shutil.which(name)
    return None


@pytest.mark.skipif(find_chromium() is None, reason="no chromium binary (apt-get install chromium)")
def test_chromium_renders_the_report(runs, tmp_path):
    shot = tmp_path / "shot.png"
    cmd = [find_chromium(), "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
           "--disable-background-networking", "--disable-component-update", "--disable-sync",
           f"--user-data-dir={tmp_path / 'profile'}", f"--screenshot={shot}", "--window-size=1200,2000",
           runs["report"].resolve().as_uri()]
    subprocess.run(cmd, capture_output=True, timeout=180)
    assert shot.is_file(), "chromium wrote no screenshot"
    with Image.open(shot) as im:
        pixels = np.asarray(im.convert("RGB")).astype(np.float64)
    assert pixels.shape[:2] == (2000, 1200)
    assert pixels.std() > 20  # not a blank page
    colours = len(np.unique(pixels.reshape(-1, 3), axis=0))
    assert colours > 50, colours  # text, curves, heatmap colours
    # the curves image is drawn near the top: its part of the page is not a single colour
    assert pixels[500:900].std() > 20


def test_stopped_run_and_out_file(runs, tmp_path):
    out = tmp_path / "elsewhere" / "page.html"
    path = write_report(runs["stopped"], out)
    assert path == out and (tmp_path / "elsewhere" / "page_files" / "curves.png").is_file()
    text = out.read_text()
    assert "no summary.json" in text and "evaluations included" in text
    assert parse(out).errors == []
    assert not (runs["stopped"] / "report").exists()


def test_tutorial_recipe_is_recognised_and_drawn(tmp_path):
    assert is_tutorial_recipe(TrainConfig().to_dict())
    assert is_tutorial_recipe({**TrainConfig().to_dict(), "dataset": "mnist"})
    assert not is_tutorial_recipe({**TrainConfig().to_dict(), "view": "pixels"})
    assert not is_tutorial_recipe({**TrainConfig().to_dict(), "units": 64})
    out = quiet_run(tmp_path / "tut", units=75, steps=1)
    text = write_report(out).read_text()
    assert "published test accuracy at steps 0, 100, 200, 300 (0.1675, 0.6134, 0.7058, 0.7979)" in text


def test_train_report_flag_and_lstm_run(tmp_path, capsys):
    out = tmp_path / "fresh"
    argv = ["train", "--units", "8", "--steps", "11", "--eval-every", "10", "--impl", "reference", "--threads", "1",
            "--cell", "lstm", "--progress", "lines", "--out", str(out), "--report"]
    assert main(argv) == 0
    assert f"report: {out / 'report' / 'index.html'}" in capsys.readouterr().out
    text = (out / "report" / "index.html").read_text()
    assert "No gates to show" in text and "LSTM" in text  # an LSTM has no GRU gates, the rest is drawn
    page = parse(out / "report" / "index.html")
    assert page.errors == [] and all(page.ids.get(k) == "section" for k in SECTIONS)


def test_cli_report_and_bad_input(runs, tmp_path, capsys):
    assert main(["report", str(runs["gru"]), "--out", str(tmp_path / "r.html")]) == 0
    assert "report:" in capsys.readouterr().out and (tmp_path / "r.html").is_file()
    empty = tmp_path / "empty"
    empty.mkdir()
    no_rows = tmp_path / "no_rows"
    shutil.copytree(runs["gru"], no_rows)
    (no_rows / "metrics.csv").write_text("step,loss,train_accuracy,test_accuracy,elapsed_s\n")
    garbled = tmp_path / "garbled"
    shutil.copytree(runs["gru"], garbled)
    (garbled / "metrics.csv").write_text("step,loss\n1,abc\n")
    no_config = tmp_path / "no_config"
    shutil.copytree(runs["gru"], no_config)
    (no_config / "config.json").unlink()
    cases = [
        ([str(empty)], "metrics.csv"),
        ([str(tmp_path / "missing")], "no such directory"),
        ([str(no_rows)], "at least one evaluation row"),
        ([str(garbled)], "does not parse"),
        ([str(no_config)], "config.json"),
        ([str(runs["gru"]), "--out", str(tmp_path / "r.txt")], ".html"),
    ]
    for argv, message in cases:
        assert main(["report", *argv]) == 2, argv
        err = capsys.readouterr().err
        assert message in err and len(err.strip().splitlines()) == 1, (argv, err)
    with pytest.raises(GrunetError):
        write_report(empty)


def test_mismatched_or_missing_checkpoint_exit_2(runs, tmp_path, capsys):
    import torch

    broken = tmp_path / "broken"
    shutil.copytree(runs["gru"], broken)
    for name in ("best.pt", "last.pt"):
        state = torch.load(broken / name, weights_only=False)
        state["model"] = {k: v[:1] for k, v in state["model"].items()}  # weights of another shape
        torch.save(state, broken / name)
    missing = tmp_path / "missing_ckpt"
    shutil.copytree(runs["gru"], missing)
    for name in ("best.pt", "last.pt"):
        (missing / name).unlink()
    for run_dir, message in ((broken, "weights do not match"), (missing, "best.pt or last.pt")):
        shutil.rmtree(run_dir / "report")  # copied from the fixture's run
        assert main(["report", str(run_dir)]) == 2
        err = capsys.readouterr().err
        assert message in err and len(err.strip().splitlines()) == 1, err
        assert not (run_dir / "report" / "index.html").exists()


def test_report_of_a_run_with_cell_options(tmp_path):
    """The model line names the cell options and the parameter table counts the layer-norm gains."""
    out = quiet_run(tmp_path / "cells", reset_after=True, layer_norm=True, zoneout=0.1, recurrent_dropout=0.25)
    text = html.unescape(write_report(out).read_text())
    assert "GRU(8), reset-after, sigmoid, layer norm, recurrent dropout 0.25, zoneout 0.1 -&gt; Dense(10)" in \
        write_report(out).read_text()
    gru = 3 * (8 * 28 + 8 * 8 + 2 * 8 + 2 * 8)
    assert f"GRU total: {gru:,}" in text and "LN gains" in text
    assert f"Total params: {gru + 90:,}" in text  # grunet.summary agrees with the gate table
    assert "rnn cell options: layer_norm, recurrent_dropout=0.25, zoneout=0.1" in text
