"""Model checkpoints: one file holds the architecture, the weights and whatever the writer adds.

A checkpoint is a ``torch.save``d dict, written atomically:
    format: "grunet-checkpoint", version: 1,
    architecture: {"kind": KIND, "config": {...}}    enough to rebuild the module without the code's defaults
    model: state_dict,
    data: {"dataset": ..., "view": ..., "permutation_seed": ...}   how inputs were made (optional)
    ... (the trainer adds optimizer, RNG states, step, data position)
Kinds map to classes with ``from_config(dict)`` and ``architecture_config()``; imported lazily.
A path may be a checkpoint file or a run directory (then its best.pt, else last.pt).
"""
from __future__ import annotations

import importlib
import os
from pathlib import Path
from typing import Optional

import torch
from torch import nn

from .errors import GrunetError
from .fileio import torch_save

FORMAT, VERSION = "grunet-checkpoint", 1
ARCHITECTURES = {
    "sequence_classifier": "grunet.model:SequenceClassifier",
    "keras_stack": "grunet.convert.stack:StackModel",
}


def architecture_of(model: nn.Module) -> dict:
    for kind, target in ARCHITECTURES.items():
        module_name, attr = target.split(":")
        if type(model).__name__ == attr and type(model).__module__ == module_name:
            return {"kind": kind, "config": model.architecture_config()}
    raise GrunetError(f"model: expected one of the checkpointable kinds {sorted(ARCHITECTURES)}, "
                      f"got {type(model).__name__}")


def build_model(architecture: dict, impl: str = "auto") -> nn.Module:
    kind = architecture.get("kind") if isinstance(architecture, dict) else None
    if kind not in ARCHITECTURES:
        raise GrunetError(f"checkpoint architecture: expected kind in {sorted(ARCHITECTURES)}, got {kind!r}")
    module_name, attr = ARCHITECTURES[kind].split(":")
    cls = getattr(importlib.import_module(module_name), attr)
    return cls.from_config(architecture["config"], impl=impl)


def save_checkpoint(path: str | os.PathLike, model: nn.Module, data: Optional[dict] = None, **extra) -> None:
    state = {"format": FORMAT, "version": VERSION, "architecture": architecture_of(model),
             "model": model.state_dict(), "data": data or {}}
    state.update(extra)
    torch_save(state, path)


def resolve(path: str | os.PathLike) -> Path:
    """A checkpoint file, or a run directory's best.pt (else last.pt)."""
    p = Path(path)
    if p.is_dir():
        for name in ("best.pt", "last.pt"):
            if (p / name).is_file():
                return p / name
        raise GrunetError(f"{p}: expected a run directory holding best.pt or last.pt, got neither")
    if not p.exists():
        raise GrunetError(f"{p}: expected a checkpoint file or run directory, got nothing at that path")
    return p


def load_checkpoint(path: str | os.PathLike) -> dict:
    p = resolve(path)
    try:
        state = torch.load(p, map_location="cpu", weights_only=False)
    except Exception as e:  # torch raises many types for a corrupt or foreign file
        raise GrunetError(f"{p}: expected a grunet checkpoint, got a file torch cannot read ({e.__class__.__name__}: "
                          f"{str(e).splitlines()[0] if str(e) else ''})") from None
    if not isinstance(state, dict) or state.get("format") != FORMAT:
        raise GrunetError(f"{p}: expected a grunet checkpoint (format {FORMAT!r}), got "
                          f"{type(state).__name__ if not isinstance(state, dict) else 'a dict without that format'}")
    if state.get("version", 0) > VERSION:
        raise GrunetError(f"{p}: expected checkpoint version <= {VERSION}, got {state['version']} (a newer grunet wrote it)")
    return state


def load_model(path: str | os.PathLike, impl: str = "auto") -> tuple[nn.Module, dict]:
    """Rebuild the model of a checkpoint (file or run directory) in eval mode; returns (model, checkpoint)."""
    state = load_checkpoint(path)
    model = build_model(state["architecture"], impl=impl)
    try:
        model.load_state_dict(state["model"])
    except RuntimeError as e:
        raise GrunetError(f"{resolve(path)}: weights do not match the architecture: {str(e).splitlines()[0]}") from None
    model.eval()
    return model, state
