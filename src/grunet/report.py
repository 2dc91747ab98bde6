"""The HTML report of a training run, redrawn from the run directory's files alone (no retraining).

    write_report(run_dir, out=None) -> Path of the HTML file

Reads config.json, metrics.csv, summary.json (absent when the run was stopped) and best.pt (else last.pt);
the test split of the run's dataset is loaded again for the confusion matrix, the most confidently wrong
digits and the gate heatmaps. Writes one self-contained HTML file (figures embedded as base64 data URIs, CSS
inline, no scripts, nothing fetched) and the same figures as PNG files beside it:
    default   RUN_DIR/report/index.html  with  RUN_DIR/report/<figure>.png
    out=F     F  with  <F's directory>/<F's stem>_files/<figure>.png
Every file is written atomically. The page carries <meta name="grunet-report-schema" content="SCHEMA">;
SCHEMA changes when its sections or ids change. Sections (ids): summary, curves, confusion, mistakes,
gates, parameters, timings, config.
"""
from __future__ import annotations

import base64
import csv
import html
import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

import numpy as np
import torch

from . import __version__
from .contract import PROBABILITIES
from .errors import GrunetError

SCHEMA = 1
SECTIONS = {"summary": "Summary", "curves": "Learning curves", "confusion": "Confusion matrix",
            "mistakes": "Most confidently wrong test digits", "gates": "Gates while reading test digits",
            "parameters": "Parameters", "timings": "Timings", "config": "Configuration"}
TUTORIAL_STEPS = (0, 100, 200, 300)
TUTORIAL_ACCURACY = (0.1675, 0.6134, 0.7058, 0.7979)
MISTAKES, GATE_DIGITS = 12, 3


def is_tutorial_recipe(config: dict) -> bool:
    """The tutorial's model and data: GRU(75) reading MNIST (or the bundled sample) row by row."""
    return (config.get("dataset") in ("mnist-sample", "mnist") and config.get("view") == "rows"
            and config.get("units") == 75 and config.get("cell", "gru") == "gru")


def read_metrics(run_dir: Path) -> list[dict]:
    path = run_dir / "metrics.csv"
    if not path.is_file():
        raise GrunetError(f"{run_dir}: expected a run directory holding metrics.csv (written by grunet train), "
                          f"got {'no such directory' if not run_dir.is_dir() else 'none'}")
    try:
        with open(path, newline="") as f:
            rows = list(csv.DictReader(f))
        parsed = [{"step": int(r["step"]), "loss": float(r["loss"]), "train_accuracy": float(r["train_accuracy"]),
                   "test_accuracy": float(r["test_accuracy"]), "elapsed_s": float(r["elapsed_s"]),
                   "val_accuracy": _optional(r.get("val_accuracy")), "lr": _optional(r.get("lr"))} for r in rows]
    except (KeyError, TypeError, ValueError, csv.Error) as e:
        raise GrunetError(f"{path}: expected the columns step,loss,train_accuracy,test_accuracy,elapsed_s with "
                          f"numbers, got a file that does not parse ({e.__class__.__name__}: {e})") from None
    if not parsed:
        raise GrunetError(f"{path}: expected at least one evaluation row, got none (the run stopped before step 0 "
                          f"was evaluated)")
    return parsed


def _optional(value: Optional[str]) -> Optional[float]:
    """A column that runs may leave empty (val_accuracy without --validation) or lack (runs before it)."""
    return None if value is None or value == "" else float(value)


def _read_json(path: Path) -> Optional[dict]:
    if not path.is_file():
        return None
    try:
        return json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as e:
        raise GrunetError(f"{path}: expected JSON, got a file that does not parse ({e})") from None


# ----------------------------------------------------------------------------------------------------
class _Figures:
    """Renders figures to PNG, writes each beside the report and keeps its bytes for embedding."""

    def __init__(self, directory: Path) -> None:
        self.directory = directory
        self.files: list[Path] = []

    def img(self, name: str, fig, alt: str) -> str:
        from .fileio import write_bytes
        from .plots import png_bytes

        data = png_bytes(fig)
        path = self.directory / f"{name}.png"
        write_bytes(path, data)
        self.files.append(path)
        return (f'<img src="data:image/png;base64,{base64.b64encode(data).decode("ascii")}" '
                f'alt="{html.escape(alt)}" data-file="{html.escape(path.name)}">')


def _table(rows: list[tuple[str, str]]) -> str:
    body = "".join(f"<tr><th>{html.escape(k)}</th><td>{v}</td></tr>" for k, v in rows)
    return f'<table class="kv">{body}</table>'


def _pre(text: str) -> str:
    return f"<pre>{html.escape(text)}</pre>"


def _note(text: str) -> str:
    return f'<p class="note">{text}</p>'


@dataclass
class _Run:
    """What the report reads from a run directory."""

    directory: Path
    rows: list[dict]  # metrics.csv, parsed
    config: dict  # config.json
    summary: Optional[dict]  # summary.json; None for a stopped run
    model: object  # the model of best.pt (else last.pt), in eval mode
    checkpoint: dict
    checkpoint_name: str


@dataclass
class _TestSplit:
    """The run's test split and the model's probabilities on it; without them (``problem`` says why) the
    figures that need them are not drawn."""

    dataset: str
    names: list[str]
    images: Optional[np.ndarray] = None
    labels: Optional[np.ndarray] = None
    x: Optional[torch.Tensor] = None
    probabilities: Optional[np.ndarray] = None
    problem: str = ""


def write_report(run_dir: str | os.PathLike, out: str | os.PathLike | None = None) -> Path:
    """Write the report of the run in ``run_dir`` (see the module docstring); returns the HTML file's path."""
    from .fileio import write_text

    run = _read_run(Path(run_dir))
    html_path, fig_dir = _report_paths(run.directory, out)
    test = _score_test_split(run)
    _make_directories(html_path, fig_dir)
    figures = _Figures(fig_dir)
    sections = _sections(run, test, figures)
    write_text(html_path, _page(run.directory, run.config, sections))
    return html_path


def _read_run(run_dir: Path) -> _Run:
    """The run's files; a missing or unreadable one is one GrunetError line."""
    from .checkpoint import load_model

    rows = read_metrics(run_dir)
    config = _read_json(run_dir / "config.json")
    if config is None:
        raise GrunetError(f"{run_dir}: expected a run directory holding config.json (written by grunet train), "
                          f"got none")
    summary = _read_json(run_dir / "summary.json")
    model, ckpt = load_model(run_dir, impl="reference")  # a missing, unreadable or mismatched checkpoint is an error
    name = "best.pt" if (run_dir / "best.pt").is_file() else "last.pt"
    return _Run(run_dir, rows, config, summary, model, ckpt, name)


def _report_paths(run_dir: Path, out) -> tuple[Path, Path]:
    """(the HTML file, the directory of its PNG figures)."""
    if out is None:
        return run_dir / "report" / "index.html", run_dir / "report"
    html_path = Path(out)
    if html_path.suffix.lower() not in (".html", ".htm"):
        raise GrunetError(f"--out: expected a file name ending in .html, got {html_path}")
    return html_path, html_path.parent / f"{html_path.stem}_files"


def _score_test_split(run: _Run) -> _TestSplit:
    """The test split and the model's class probabilities on it, or the reason they are not available (a
    dataset not on this machine): the report is still written, with the figures that need them left out."""
    from .data import CLASS_NAMES, load_split, to_sequences

    config = run.config
    dataset = config.get("dataset", "mnist-sample")
    test = _TestSplit(dataset, [str(c) for c in CLASS_NAMES.get(dataset, CLASS_NAMES["mnist"])])
    try:
        test.images, test.labels = load_split(dataset, "test", data_dir=config.get("data_dir"))
        test.x = to_sequences(test.images, config.get("view", "rows"), permutation_seed=config.get("permutation_seed", 0))
        with torch.no_grad():
            probabilities = torch.cat([run.model.predict_proba(test.x[i:i + 1000]) for i in range(0, len(test.x), 1000)])
        test.probabilities = probabilities.double().numpy()
    except GrunetError as e:
        test.problem = f"the test split of {dataset} cannot be loaded: {e}"
    return test


def _make_directories(html_path: Path, fig_dir: Path) -> None:
    try:
        fig_dir.mkdir(parents=True, exist_ok=True)
        html_path.parent.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise GrunetError(f"report directory: expected a writable directory, got {fig_dir} ({e.strerror})") from None


def _sections(run: _Run, test: _TestSplit, figures: _Figures) -> dict[str, str]:
    """The HTML of every section of SECTIONS, by id."""
    sections = {"summary": _summary_section(run, test), "curves": _curves_section(run, test.dataset, figures)}
    if test.probabilities is not None:
        sections["confusion"] = _confusion_section(run, test, figures)
        sections["mistakes"] = _mistakes_section(test, figures)
        sections["gates"] = _gates_section(run.model, test.x, test.images, test.labels, test.names, run.config,
                                           figures)
    else:
        unavailable = _note("Not drawn: " + html.escape(test.problem))
        sections["confusion"] = sections["mistakes"] = sections["gates"] = unavailable
    sections["parameters"] = _parameters_section(run.config, run.model, test.x)
    sections["timings"] = _timings_section(run.summary, run.rows, run.config)
    sections["config"] = (f"<p>config.json of the run, every setting:</p>{_pre(json.dumps(run.config, indent=2))}"
                          + _checkpoint_words(run.checkpoint_name, run.checkpoint))
    return sections


def _summary_section(run: _Run, test: _TestSplit) -> str:
    rows, summary, config = run.rows, run.summary, run.config
    validated = _validated(rows)
    best = max(rows, key=lambda r: r["val_accuracy" if validated else "test_accuracy"])
    last = rows[-1]
    status = ("finished" if summary is not None else
              f"no summary.json: the run was stopped (or is still running); its files reach step {last['step']:,}")
    items = [("run directory", html.escape(str(run.directory.resolve()))), ("status", html.escape(status)),
             ("model", html.escape(_model_words(config))),
             ("data", html.escape(f"{test.dataset}, view {config.get('view')}")
              + (f", {len(test.labels):,} test digits" if test.labels is not None else "")),
             ("steps", f"{(summary or {}).get('steps', last['step'] + 1):,} of {config.get('steps', 0):,}"),
             ("best test accuracy", f"{best['test_accuracy']:.4f} at step {best['step']:,}"),
             ("last evaluated test accuracy", f"{last['test_accuracy']:.4f} at step {last['step']:,}")]
    if validated:
        items[-2] = ("best validation accuracy", f"{best['val_accuracy']:.4f} at step {best['step']:,} (test "
                     f"{best['test_accuracy']:.4f}): best.pt")
    if summary is not None and summary.get("final_test_accuracy") is not None:
        items.append(("final test accuracy", f"{summary['final_test_accuracy']:.4f}"))
    every = config.get("eval_every", 100)
    if validated:
        how = (f"best.pt and any early stop were chosen on the validation split (the last "
               f"{config.get('validation', 0):,} training images, not trained on), evaluated every {every:,} steps; "
               f"the test set was evaluated at the same steps for the record only.")
    else:
        how = (f"The test set was evaluated every {every:,} steps and best.pt is the best of those evaluations, as "
               f"in the tutorial: the best test accuracy is chosen on the test set itself, an optimistic number "
               f"(--validation N holds out a split to choose on).")
    return _table(items) + f"<p>{html.escape(how)}</p>"


def _validated(rows: list[dict]) -> bool:
    """Whether the run evaluated a validation split (every row has its accuracy)."""
    return all(r["val_accuracy"] is not None for r in rows)


def _curves_section(run: _Run, dataset: str, figures: _Figures) -> str:
    """Loss and accuracies against steps; for the tutorial's recipe, the tutorial's published accuracies."""
    from . import plots

    rows = run.rows
    tutorial = None
    caption = "Loss: training cross-entropy averaged over the steps since the previous evaluation. "
    if is_tutorial_recipe(run.config):
        tutorial = (TUTORIAL_STEPS, TUTORIAL_ACCURACY, "tutorial, published (full MNIST)")
        caption += ("Red diamonds: the tutorial's published test accuracy at steps 0, 100, 200, 300 "
                    "(" + ", ".join(f"{a:.4f}" for a in TUTORIAL_ACCURACY) + "), measured on full MNIST's "
                    "10,000 test digits")
        caption += "; this run's test split is the bundled 1,000-digit sample." if dataset == "mnist-sample" else "."
    steps = [r["step"] for r in rows]
    validation = [r["val_accuracy"] for r in rows] if _validated(rows) else None
    fig = plots.curves_figure(steps, [r["loss"] for r in rows], [r["test_accuracy"] for r in rows],
                              [r["train_accuracy"] for r in rows], tutorial=tutorial, val_accuracy=validation)
    if validation is not None:
        caption += ("Validation accuracy: the held-out training images that chose best.pt; test accuracy: "
                    "evaluated for the record. ")
    page = figures.img("curves", fig, "loss and accuracy against steps") + f"<p>{html.escape(caption)}</p>"
    if all(r["lr"] is not None for r in rows):
        schedule = run.config.get("lr_schedule", "constant")
        page += figures.img("lr", plots.lr_figure(steps, [r["lr"] for r in rows]), "learning rate against steps")
        page += (f"<p>{html.escape(f'Learning rate at each evaluated step ({schedule} schedule, warm-up of ')}"
                 f"{int(run.config.get('warmup_steps', 0)):,} steps).</p>")
    return page


def _confusion_section(run: _Run, test: _TestSplit, figures: _Figures) -> str:
    from . import plots
    from .metrics import confusion_matrix

    predicted = test.probabilities.argmax(1)
    matrix = confusion_matrix(torch.as_tensor(test.labels), torch.as_tensor(predicted), len(test.names)).numpy()
    caption = (f"The weights of {run.checkpoint_name} on the {len(test.labels):,} digits of the {test.dataset} test "
               f"split; rows: true class, columns: predicted; colour: share of the row.")
    return ('<div class="side">' + figures.img("confusion", plots.confusion_figure(matrix, test.names),
                                               "confusion matrix")
            + _per_class_table(matrix, test.names) + f"</div><p>{html.escape(caption)}</p>")


def _mistakes_section(test: _TestSplit, figures: _Figures) -> str:
    """The test digits given the highest probability on a wrong class."""
    from . import plots

    probabilities, labels, names = test.probabilities, test.labels, test.names
    predicted = probabilities.argmax(1)
    wrong = np.flatnonzero(predicted != labels)
    order = wrong[np.argsort(-probabilities[wrong, predicted[wrong]], kind="stable")][:MISTAKES]
    if not len(order):
        return "<p>No test digit is wrong.</p>"
    captions = [f"#{i}: true {_name(labels[i], names)}\npredicted {_name(predicted[i], names)}\n"
                f"p = {probabilities[i, predicted[i]]:.3f}" for i in order]
    return (figures.img("mistakes", plots.digits_figure([test.images[i] for i in order], captions),
                        "the most confidently wrong test digits")
            + f"<p>{len(wrong):,} of {len(labels):,} test digits are wrong; these are the "
              f"{len(order)} with the highest probability on the wrong class "
              f"(#: index in the test split, for <code>grunet explain --index</code>).</p>")


def _checkpoint_words(name: str, ckpt: dict) -> str:
    done = ckpt.get("progress", {}).get("step")
    when = f", saved after {done:,} training steps (metrics step {done - 1:,})" if isinstance(done, int) else ""
    return f"<p>Figures of the trained model use {html.escape(name)}{when}.</p>"


def _name(k, names) -> str:
    k = int(k)
    return str(k) if names[k] == str(k) else f"{k} ({names[k]})"


def _per_class_table(matrix: np.ndarray, names) -> str:
    """Per true class: digits, accuracy, and the class it is most often mistaken for."""
    head = "<tr><th>class</th><th>digits</th><th>accuracy</th><th>most often taken for</th></tr>"
    body = []
    for i, name in enumerate(names):
        n = int(matrix[i].sum())
        off = matrix[i].copy()
        off[i] = 0
        j = int(off.argmax())
        confused = f"{_name(j, names)} ({int(off[j])})" if off[j] else "&ndash;"
        accuracy = f"{matrix[i, i] / n:.3f}" if n else "&ndash;"
        body.append(f"<tr><td>{html.escape(_name(i, names))}</td><td>{n:,}</td><td>{accuracy}</td>"
                    f"<td>{confused}</td></tr>")
    return f'<table class="grid">{head}{"".join(body)}</table>'


def _model_words(config: dict) -> str:
    cell = config.get("cell", "gru").upper()
    words = f"{cell}({config.get('units')})"
    if config.get("layers", 1) > 1:
        words += f" x {config['layers']} layers"
    if config.get("bidirectional"):
        words += ", bidirectional"
    if cell == "GRU":
        words += ", " + ("reset-after" if config.get("reset_after") else "reset-before")
        words += f", {config.get('recurrent_activation', 'sigmoid')}"
        if config.get("layer_norm"):
            words += ", layer norm"
        for option in PROBABILITIES:  # runs from before the cell options have none of these keys
            if config.get(option):
                words += f", {option.replace('_', ' ')} {config[option]:g}"
    return words + " -> Dense(10) -> softmax"


def _gates_section(model, x_test, images, labels, names, config, figures) -> str:
    from .explain import CONVENTION, format_trace, gate_trace, gru_of
    from . import plots

    try:
        gru_of(model)
    except GrunetError as e:
        return _note(f"No gates to show: {html.escape(str(e))}.")
    classes = sorted(set(int(c) for c in labels))
    picked_classes = [classes[int(round(i))] for i in np.linspace(0, len(classes) - 1, min(GATE_DIGITS, len(classes)))]
    parts = [f"<p>Per time step (one image row per step in the rows view) and unit: the update gate z, the reset gate "
             f"r, the change of the state |h<sub>t</sub> &minus; h<sub>t&minus;1</sub>| (its L2 norm over the units "
             f"in the line plot) and the class probabilities softmax(Dense(h<sub>t</sub>)), i.e. the prediction had "
             f"the digit ended after that row. The last GRU layer, forward direction. "
             f"{html.escape(CONVENTION[0].upper() + CONVENTION[1:])}.</p>"]
    view = config.get("view", "rows")
    for c in picked_classes:
        i = int(np.flatnonzero(labels == c)[0])
        trace = gate_trace(model, x_test[i])
        fig = plots.explain_figure(trace, names, title=f"test digit #{i}, true class {_name(c, names)}",
                                   image=images[i] if view != "rows" else None, label=int(c))
        parts.append(f'<figure>{figures.img(f"gates-{i}", fig, f"gates on test digit {i}")}'
                     f"<figcaption>test digit #{i} (grunet explain RUN_DIR --index {i})</figcaption></figure>")
        parts.append(f"<details><summary>the numbers, step by step (digit #{i})</summary>"
                     f"{_pre(format_trace(trace, names))}</details>")
    return "".join(parts)


def _parameters_section(config: dict, model, x_test) -> str:
    from .params import count_params, summary

    parts = []
    if config.get("cell", "gru") == "gru":
        D = 2 if config.get("bidirectional") else 1
        input_size = int(x_test.shape[2]) if x_test is not None else (
            model.config.input_size if model is not None else (28 if config.get("view") == "rows" else 1))
        table = count_params(input_size, config["units"], reset_after=bool(config.get("reset_after")),
                             num_layers=config.get("layers", 1), bidirectional=bool(config.get("bidirectional")),
                             dense=10, layer_norm=bool(config.get("layer_norm"))).table()
        parts.append(f"<p>Gate by gate, with the formula (U = {config['units']} units, I = {input_size} inputs"
                     f"{', stacked layers read I = U x ' + str(D) if config.get('layers', 1) > 1 else ''}):</p>"
                     + _pre(table))
    if model is not None:
        T = int(x_test.shape[1]) if x_test is not None else 28
        I = int(x_test.shape[2]) if x_test is not None else model.config.input_size
        parts.append("<p>Layer by layer (grunet.summary):</p>" + _pre(summary(model, (1, T, I), print_fn=None)))
    return "".join(parts) or _note("No parameter table: neither a GRU config nor a checkpoint.")


def _timings_section(summary: Optional[dict], rows: list[dict], config: dict) -> str:
    batch = config.get("batch_size", 50)
    if summary is not None:
        items = [("steps", f"{summary.get('steps', 0):,}"),
                 ("wall time", f"{summary.get('seconds', 0):,.1f} s (training and evaluations)"),
                 ("training time", f"{summary.get('train_seconds', 0):,.1f} s (the steps alone)"),
                 ("samples / s", f"{summary.get('samples_per_s', 0):,.1f} (training, batch {batch})"),
                 ("time per step", f"{1000 * summary.get('train_seconds', 0) / max(summary.get('steps', 1), 1):.2f} ms"),
                 ("threads", str(summary.get("threads", "?"))),
                 ("torch", html.escape(str(summary.get("torch_version", "?")))),
                 ("implementation", html.escape(str(config.get("impl")))),
                 ("train / test digits", f"{summary.get('train_size', 0):,} / {summary.get('test_size', 0):,}")]
        return "<p>From summary.json:</p>" + _table(items)
    last = rows[-1]
    steps = last["step"] + 1
    rate = steps * batch / max(last["elapsed_s"], 1e-9)
    return (_note("This run has no summary.json: it was stopped (or is still running). The numbers below come "
                  "from metrics.csv up to its last evaluation; its elapsed time includes the evaluations, so "
                  "samples / s is a lower bound.")
            + _table([("steps", f"{steps:,} (to the last evaluation, step {last['step']:,})"),
                      ("elapsed", f"{last['elapsed_s']:,.1f} s"),
                      ("samples / s", f"{rate:,.1f} (batch {batch}, evaluations included)"),
                      ("implementation", html.escape(str(config.get("impl"))))]))


CSS = """
body { font-family: -apple-system, "Segoe UI", Helvetica, Arial, sans-serif; color: #1d1d1f; background: #fafafa;
       margin: 0; line-height: 1.45; }
main { max-width: 1120px; margin: 0 auto; padding: 18px 28px 40px; background: #fff; }
header h1 { font-size: 1.6em; margin: 0.4em 0 0.1em; }
header p { color: #555; margin: 0 0 0.6em; }
nav { border-bottom: 1px solid #ddd; padding-bottom: 8px; margin-bottom: 8px; font-size: 0.92em; }
nav a { margin-right: 14px; color: #0b5cad; text-decoration: none; }
section { margin: 22px 0; }
h2 { font-size: 1.2em; border-bottom: 2px solid #e5e5e5; padding-bottom: 4px; }
img { max-width: 100%; height: auto; display: block; margin: 6px 0; }
pre { background: #f4f4f6; border: 1px solid #e2e2e6; padding: 10px; overflow-x: auto; font-size: 12.5px;
      line-height: 1.3; }
table.kv { border-collapse: collapse; font-size: 0.95em; }
table.kv th { text-align: left; font-weight: 600; padding: 3px 18px 3px 0; color: #444; vertical-align: top; }
table.kv td { padding: 3px 0; }
table.grid { border-collapse: collapse; font-size: 0.92em; align-self: center; }
table.grid th, table.grid td { padding: 3px 12px; border-bottom: 1px solid #eee; text-align: right; }
table.grid th { color: #444; font-weight: 600; }
.side { display: flex; flex-wrap: wrap; gap: 28px; align-items: flex-start; }
.side img { max-width: 600px; }
.note { background: #fff7e0; border-left: 4px solid #e0a800; padding: 6px 10px; }
figure { margin: 10px 0 4px; }
figcaption, footer { color: #666; font-size: 0.9em; }
details { margin: 0 0 16px; }
summary { cursor: pointer; color: #0b5cad; }
"""


def _page(run_dir: Path, config: dict, sections: dict[str, str]) -> str:
    title = f"grunet report: {run_dir.resolve().name}"
    nav = "".join(f'<a href="#{key}">{html.escape(name)}</a>' for key, name in SECTIONS.items())
    body = "".join(f'<section id="{key}"><h2>{html.escape(SECTIONS[key])}</h2>{sections[key]}</section>\n'
                   for key in SECTIONS)
    return ("<!DOCTYPE html>\n<html lang=\"en\">\n<head>\n<meta charset=\"utf-8\">\n"
            f'<meta name="generator" content="grunet {html.escape(__version__)}">\n'
            f'<meta name="grunet-report-schema" content="{SCHEMA}">\n'
            f"<title>{html.escape(title)}</title>\n<style>{CSS}</style>\n</head>\n<body>\n<main>\n"
            f"<header><h1>{html.escape(title)}</h1><p>{html.escape(_model_words(config))} on "
            f"{html.escape(str(config.get('dataset')))}, redrawn from the run's files by grunet {html.escape(__version__)}"
            f" (report schema {SCHEMA})</p></header>\n<nav>{nav}</nav>\n{body}"
            f"<footer>Self-contained: every image is embedded; the same figures are PNG files beside this page.</footer>\n"
            "</main>\n</body>\n</html>\n")
