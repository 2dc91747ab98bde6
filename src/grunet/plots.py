"""Figures of grunet's explanations and reports, drawn with matplotlib's Agg renderer (no display needed).

Every function builds a ``matplotlib.figure.Figure`` without pyplot (so no global state, no GUI backend) and
``png_bytes(fig)`` renders it. Figures:
    explain_figure    the input digit beside heatmaps over time steps of z, r, |h_t - h_(t-1)| per unit,
                      the L2 norm of the state change, and the class probabilities
    curves_figure     training loss and test accuracy against steps (optionally the tutorial's published points)
    confusion_figure  the confusion matrix with counts
    digits_figure     a grid of digit images with captions
"""
from __future__ import annotations

import io
from typing import Optional, Sequence

import numpy as np

from .errors import require
from .explain import GateTrace

Figure = require("matplotlib.figure", "draw figures", "report").Figure

DPI = 100


def png_bytes(fig: Figure, dpi: int = DPI) -> bytes:
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=dpi, bbox_inches="tight", facecolor="white")
    return buffer.getvalue()


def _as_image(x: np.ndarray, image: Optional[np.ndarray]) -> np.ndarray:
    """What to show as 'the input': the given image, else x (T, I) itself (a 28x28 square for 784 x 1)."""
    if image is not None:
        return np.asarray(image, dtype=np.float64) / (255.0 if np.asarray(image).dtype == np.uint8 else 1.0)
    if x.shape[1] == 1:
        side = int(round(np.sqrt(x.shape[0])))
        return x[:, 0].reshape(side, side) if side * side == x.shape[0] else x.T
    return x


def explain_figure(trace: GateTrace, class_names: Sequence[str], title: str = "",
                   image: Optional[np.ndarray] = None, label: Optional[int] = None) -> Figure:
    """The input beside five panels sharing the time axis: z, r, |dh| per unit, ||dh||_2, probabilities."""
    T, U = trace.z.shape
    C = trace.probabilities.shape[1]
    fig = Figure(figsize=(12, 10))
    unit_h = max(1.2, min(2.2, U / 25))
    outer = fig.add_gridspec(1, 2, width_ratios=[1.0, 3.3], wspace=0.16)
    left = outer[0, 0].subgridspec(3, 1, height_ratios=[1, 2.2, 1])
    heights = [unit_h, unit_h, unit_h, 0.9, max(1.3, 0.08 * C + 0.9)]
    right = outer[0, 1].subgridspec(5, 2, width_ratios=[40, 1], height_ratios=heights,
                                    hspace=0.42, wspace=0.04)
    steps = np.arange(T)
    extent = (-0.5, T - 0.5, U - 0.5, -0.5)

    ax_img = fig.add_subplot(left[1, 0])
    shown = _as_image(trace.x, image)
    ax_img.imshow(shown, cmap="gray_r", vmin=0, vmax=1, interpolation="nearest")
    rows_view = image is None and trace.x.shape[1] > 1
    ax_img.set_title("input" + (" (one row per step)" if rows_view else ""), fontsize=10)
    ax_img.set_ylabel("step (image row)" if rows_view else "")
    ax_img.set_xticks([])
    if not rows_view:
        ax_img.set_yticks([])
    if label is not None:
        ax_img.set_xlabel(f"true class {label} ({class_names[label]})" if str(class_names[label]) != str(label)
                          else f"true class {label}")

    prev = "h_(t-1)" if trace.direction == "forward" else "h_(t+1) (reverse direction)"
    panels = [
        (trace.z, "update gate z (share of old state kept; new information = 1 - z)", "viridis", (0, 1)),
        (trace.r, "reset gate r", "viridis", (0, 1)),
        (np.abs(trace.delta), f"|h_t - {prev}| per unit", "magma", (0, None)),
    ]
    axes = []
    for row, (values, name, cmap, (lo, hi)) in enumerate(panels):
        ax = fig.add_subplot(right[row, 0], sharex=axes[0] if axes else None)
        im = ax.imshow(values.T, aspect="auto", cmap=cmap, vmin=lo, vmax=hi if hi is not None else max(values.max(), 1e-6),
                       interpolation="nearest", extent=extent)
        ax.set_title(name, fontsize=10, loc="left")
        ax.set_ylabel("unit")
        fig.colorbar(im, cax=fig.add_subplot(right[row, 1]))
        axes.append(ax)

    ax = fig.add_subplot(right[3, 0], sharex=axes[0])
    ax.plot(steps, trace.dh, color="#b2182b", marker="o" if T <= 60 else None, markersize=2.5, linewidth=1.2)
    ax.set_xlim(-0.5, T - 0.5)
    ax.set_ylim(0, max(trace.dh.max() * 1.1, 1e-6))
    ax.set_title(f"|dh| = ||h_t - {prev.split()[0]}||_2 (L2 norm over units)", fontsize=10, loc="left")
    ax.grid(alpha=0.3)
    axes.append(ax)

    ax = fig.add_subplot(right[4, 0], sharex=axes[0])
    im = ax.imshow(trace.probabilities.T, aspect="auto", cmap="Blues", vmin=0, vmax=1, interpolation="nearest",
                   extent=(-0.5, T - 0.5, C - 0.5, -0.5))
    ax.set_yticks(range(C))
    ax.set_yticklabels([str(c) for c in class_names] if max(len(str(c)) for c in class_names) <= 3 else
                       [f"{i} {str(c)[:8]}" for i, c in enumerate(class_names)], fontsize=7)
    top = trace.probabilities.argmax(1)
    ax.plot(steps, top, linestyle="none", marker=".", color="#d95f02", markersize=4, label="most probable")
    source = "the model on steps 0..t" if trace.prefix_runs else "softmax(Dense(h_t)) of the top layer"
    ax.set_title(f"class probabilities after each step: {source} (dots: the most probable class)",
                 fontsize=10, loc="left")
    ax.set_xlabel("time step t" + (" (image row)" if rows_view else ""))
    fig.colorbar(im, cax=fig.add_subplot(right[4, 1]))
    for a in axes:
        a.tick_params(labelbottom=False)
    p = trace.probabilities[-1]
    k = int(p.argmax())
    name = "" if str(class_names[k]) == str(k) else f" ({class_names[k]})"
    summary = f"prediction after the last step: {k}{name}, p = {p.max():.3f}"
    variant = "reset-after" if trace.reset_after else "reset-before"
    fig.suptitle((title + "\n" if title else "") + f"layer {trace.layer} of {trace.num_layers}, {trace.direction}, "
                 f"{U} units, {variant}; {summary}", fontsize=11)
    return fig


def curves_figure(steps, loss, test_accuracy, train_accuracy=None,
                  tutorial: Optional[tuple[Sequence[int], Sequence[float], str]] = None,
                  val_accuracy: Optional[Sequence[float]] = None) -> Figure:
    """Loss (left) and accuracy (right) against training steps; ``tutorial`` = (steps, accuracies, label);
    ``val_accuracy``: the validation split's curve beside the test curve."""
    fig = Figure(figsize=(11, 4))
    ax_loss, ax_acc = fig.subplots(1, 2)
    ax_loss.plot(steps, loss, color="#1f77b4", linewidth=1.5)
    ax_loss.set_title("training loss (cross-entropy, mean since the previous evaluation)", fontsize=10)
    ax_loss.set_xlabel("step")
    ax_loss.set_ylabel("loss")
    ax_loss.grid(alpha=0.3)
    ax_acc.plot(steps, test_accuracy, color="#2ca02c", linewidth=1.8, marker="o" if len(steps) <= 30 else None,
                markersize=3, label="test accuracy")
    if val_accuracy is not None:
        ax_acc.plot(steps, val_accuracy, color="#9467bd", linewidth=1.5, marker="s" if len(steps) <= 30 else None,
                    markersize=3, label="validation accuracy (chooses best.pt)")
    if train_accuracy is not None:
        ax_acc.plot(steps, train_accuracy, color="#7f7f7f", linewidth=1.0, linestyle="--", label="train accuracy")
    if tutorial is not None:
        t_steps, t_acc, t_label = tutorial
        ax_acc.plot(t_steps, t_acc, linestyle="none", marker="D", color="#d62728", markersize=6, label=t_label)
        for s, a in zip(t_steps, t_acc):
            ax_acc.annotate(f"{a:.4f}", (s, a), textcoords="offset points", xytext=(6, -12), fontsize=8,
                            color="#d62728")
    ax_acc.set_title("accuracy", fontsize=10)
    ax_acc.set_xlabel("step")
    ax_acc.set_ylim(0, 1)
    ax_acc.grid(alpha=0.3)
    ax_acc.legend(loc="lower right", fontsize=8)
    fig.tight_layout()
    return fig


def lr_figure(steps, lr) -> Figure:
    """The learning-rate schedule: the rate of each evaluated step (metrics.csv's lr column)."""
    fig = Figure(figsize=(5.5, 2.6))
    ax = fig.subplots()
    ax.plot(steps, lr, color="#ff7f0e", linewidth=1.5, marker="o" if len(steps) <= 30 else None, markersize=3)
    ax.set_title("learning rate", fontsize=10)
    ax.set_xlabel("step")
    ax.set_ylabel("lr")
    ax.set_ylim(bottom=0)
    ax.ticklabel_format(axis="y", style="sci", scilimits=(-3, 3))
    ax.grid(alpha=0.3)
    fig.tight_layout()
    return fig


def confusion_figure(matrix: np.ndarray, class_names: Sequence[str]) -> Figure:
    """Counts of true (rows) against predicted (columns) classes; the diagonal is correct."""
    C = len(class_names)
    fig = Figure(figsize=(6.4, 5.6))
    ax = fig.subplots()
    m = np.asarray(matrix)
    row_share = m / np.maximum(m.sum(1, keepdims=True), 1)
    ax.imshow(row_share, cmap="Blues", vmin=0, vmax=1)
    for i in range(C):
        for j in range(C):
            if m[i, j]:
                ax.text(j, i, str(int(m[i, j])), ha="center", va="center", fontsize=8,
                        color="white" if row_share[i, j] > 0.5 else "black")
    labels = [str(c) if str(c) == str(i) else f"{i} {str(c)[:9]}" for i, c in enumerate(class_names)]
    ax.set_xticks(range(C))
    ax.set_xticklabels(labels, rotation=0 if max(map(len, labels)) <= 2 else 60, fontsize=8)
    ax.set_yticks(range(C))
    ax.set_yticklabels(labels, fontsize=8)
    ax.set_xlabel("predicted class")
    ax.set_ylabel("true class")
    correct, total = int(np.trace(m)), int(m.sum())
    ax.set_title(f"confusion matrix: {correct:,} of {total:,} correct ({correct / max(total, 1):.4f})", fontsize=10)
    fig.tight_layout()
    return fig


def digits_figure(images: Sequence[np.ndarray], captions: Sequence[str], columns: int = 6) -> Figure:
    """A grid of 28x28 digits (bright on dark in the data; drawn dark on light) with a caption under each."""
    n = max(len(images), 1)
    rows = -(-n // columns)
    fig = Figure(figsize=(1.75 * columns, 2.15 * rows))
    axes = np.atleast_1d(fig.subplots(rows, columns)).ravel()
    for ax in axes:
        ax.axis("off")
    for ax, image, caption in zip(axes, images, captions):
        ax.imshow(image, cmap="gray_r", vmin=0, vmax=255, interpolation="nearest")
        ax.set_title(caption, fontsize=8)
    fig.tight_layout()
    return fig
