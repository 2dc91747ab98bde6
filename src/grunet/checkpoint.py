"""Model checkpoints: one file holds the architecture, the weights and whatever the writer adds.

A checkpoint is a ``torch.save``d dict, written atomically, that holds only tensors, numbers, strings, None,
lists and dicts, so that it loads with ``torch.load(weights_only=True)``: opening a file never runs code.
    format: "grunet-checkpoint", version: 2,
    architecture: {"kind": KIND, "config": {...}}    enough to rebuild the module without the code's defaults
    model: state_dict,
    data: {"dataset": ..., "view": ..., "permutation_seed": ...}   how inputs were made (optional)
    ... (the trainer adds optimizer, RNG states, step, data position)
Kinds map to classes with ``from_config(dict)`` and ``architecture_config()``; imported lazily.
A path may be a checkpoint file or a run directory (then its best.pt, else last.pt).

Files come from elsewhere, so reading one is bounded before anything is allocated: only torch's zip format
with stored (uncompressed) members is read, so every tensor is at most as large as the file; the
architecture is built on the meta device first and its parameter shapes and dtypes are compared with the
stored tensors before a real module is made.

Version 1 (grunet 0.1) stored the trainer's NumPy RNG state as a NumPy array, which weights_only refuses.
Such a file is read with NumPy's array type as the only extra global allowed (that rebuilds an array from
its bytes and runs nothing else) and migrated in memory; any other global is refused with one line.
"""
from __future__ import annotations

import importlib
import os
import pickle
import zipfile
from pathlib import Path
from typing import Optional

import torch
from torch import nn

from .errors import GrunetError
from .fileio import torch_save

FORMAT, VERSION = "grunet-checkpoint", 2
ARCHITECTURES = {
    "sequence_classifier": "grunet.model:SequenceClassifier",
    "keras_stack": "grunet.convert.stack:StackModel",
}
PLAIN_SCALARS = (bool, int, float, str, type(None))


def architecture_of(model: nn.Module) -> dict:
    for kind, target in ARCHITECTURES.items():
        module_name, attr = target.split(":")
        if type(model).__name__ == attr and type(model).__module__ == module_name:
            return {"kind": kind, "config": model.architecture_config()}
    raise GrunetError(f"model: expected one of the checkpointable kinds {sorted(ARCHITECTURES)}, "
                      f"got {type(model).__name__}")


def plain(obj, where: str = "checkpoint"):
    """``obj`` with tuples as lists; raises TypeError for anything weights_only would refuse (a bug here)."""
    if isinstance(obj, torch.Tensor) or isinstance(obj, PLAIN_SCALARS):
        return obj
    if isinstance(obj, (list, tuple)):
        return [plain(v, f"{where}[{i}]") for i, v in enumerate(obj)]
    if isinstance(obj, dict):
        return {k: plain(v, f"{where}[{k!r}]") for k, v in obj.items()}
    raise TypeError(f"{where}: a checkpoint holds only tensors, numbers, strings, lists and dicts, "
                    f"not {type(obj).__name__}")


def _build(architecture: dict, impl: str, device: Optional[str] = None) -> nn.Module:
    kind = architecture.get("kind") if isinstance(architecture, dict) else None
    if kind not in ARCHITECTURES:
        raise GrunetError(f"checkpoint architecture: expected kind in {sorted(ARCHITECTURES)}, got {kind!r}")
    if "config" not in architecture:
        raise GrunetError("checkpoint architecture: expected a 'config' entry, got none")
    module_name, attr = ARCHITECTURES[kind].split(":")
    cls = getattr(importlib.import_module(module_name), attr)
    try:
        if device is None:
            return cls.from_config(architecture["config"], impl=impl)
        with torch.device(device):
            return cls.from_config(architecture["config"], impl=impl)
    except GrunetError:
        raise
    except (TypeError, ValueError, RuntimeError, KeyError, OverflowError) as e:  # an edited config torch refuses
        raise GrunetError(f"checkpoint architecture: expected a buildable {kind} config, got one that fails "
                          f"({type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''})") from None


def build_model(architecture: dict, impl: str = "auto") -> nn.Module:
    return _build(architecture, impl)


def check_state_dict(expected: dict, stored, where: str) -> None:
    """Refuse a stored state dict whose names, shapes or dtypes differ from ``expected`` (tensors, e.g. of a
    model on the meta device); one line naming the first difference."""
    where = f"{where}: weights do not match the architecture"
    if not isinstance(stored, dict):
        raise GrunetError(f"{where}: expected a state dict of tensors, got {type(stored).__name__}")
    missing = [k for k in expected if k not in stored]
    unexpected = [k for k in stored if k not in expected]
    if missing or unexpected:
        parts = ([f"missing {missing[:5]}"] if missing else []) + ([f"unexpected {unexpected[:5]}"] if unexpected else [])
        raise GrunetError(f"{where}: expected the weights of the architecture, got {', '.join(parts)}")
    for name, want in expected.items():
        got = stored[name]
        if not isinstance(got, torch.Tensor) or got.layout != torch.strided or got.device.type != "cpu":
            raise GrunetError(f"{where}: expected {name} to be a dense tensor, got "
                              f"{type(got).__name__ if not isinstance(got, torch.Tensor) else got.layout}")
        if tuple(got.shape) != tuple(want.shape):
            raise GrunetError(f"{where}: expected {name} of shape {tuple(want.shape)}, got {tuple(got.shape)}")
        if got.dtype != want.dtype:
            raise GrunetError(f"{where}: expected {name} of dtype {want.dtype}, got {got.dtype}")


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


def _check_container(p: Path) -> None:
    """torch's zip format with stored members only: no legacy pickle stream whose declared storage sizes
    are allocated before they are read, no compressed member that inflates beyond the file's size."""
    try:
        with zipfile.ZipFile(p) as z:
            for info in z.infolist():
                if info.compress_type != zipfile.ZIP_STORED:
                    raise GrunetError(f"{p}: expected a checkpoint with stored (uncompressed) members as torch.save "
                                      f"writes them, got a compressed member {info.filename!r}")
    except (zipfile.BadZipFile, OSError, EOFError, ValueError) as e:
        raise GrunetError(f"{p}: expected a grunet checkpoint (torch.save's zip format), got "
                          f"{'a file that is not a zip archive' if isinstance(e, zipfile.BadZipFile) else e}") from None


# NumPy's array reconstruction: what a version-1 checkpoint's NumPy RNG state needs beyond weights_only
_V1_NUMPY = ("numpy.core.multiarray._reconstruct", "numpy._core.multiarray._reconstruct", "numpy.ndarray",
             "numpy.dtype", "numpy.dtypes.UInt32DType")


def _torch_load(p: Path) -> object:
    try:
        return torch.load(p, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError:
        pass
    except Exception as e:  # torch raises many types for a corrupt or foreign file
        raise GrunetError(f"{p}: expected a grunet checkpoint, got a file torch cannot read ({e.__class__.__name__}: "
                          f"{str(e).splitlines()[0] if str(e) else ''})") from None
    # weights_only refused a global: a version-1 file (NumPy RNG state) is read with NumPy's array type only
    try:
        needed = set(torch.serialization.get_unsafe_globals_in_checkpoint(p))
    except Exception:
        needed = {"an unreadable pickle"}
    unknown = sorted(needed - set(_V1_NUMPY))
    if unknown:
        raise GrunetError(f"{p}: expected a checkpoint that loads without running code (tensors, numbers, strings, "
                          f"lists, dicts), got one that needs {unknown[:3]}; it was not opened (re-create it with "
                          f"this grunet: train again or convert its source model again)")
    allowed = []
    for name in sorted(needed | {"numpy.dtypes.UInt32DType"}):  # the key's dtype class is only met when built  # each one of _V1_NUMPY: NumPy's own array and dtype types
        module_name, attr = name.rsplit(".", 1)
        try:
            allowed.append(getattr(importlib.import_module(module_name), attr))
        except (ImportError, AttributeError):
            raise GrunetError(f"{p}: expected a checkpoint whose NumPy types this NumPy has, got one that needs "
                              f"{name}") from None
    try:
        with torch.serialization.safe_globals(allowed):
            return torch.load(p, map_location="cpu", weights_only=True)
    except Exception as e:
        raise GrunetError(f"{p}: expected a grunet checkpoint, got a file torch cannot read safely "
                          f"({e.__class__.__name__}: {str(e).splitlines()[0] if str(e) else ''})") from None


def _migrate_v1(state: dict) -> dict:
    """Version 1 -> 2: the trainer's RNG states and batch position become plain values."""
    from .train_state import plain_rng_states  # the trainer owns that layout

    if isinstance(state.get("rng"), dict):
        state["rng"] = plain_rng_states(state["rng"])
    state = plain(state)
    state["version"] = VERSION
    return state


def load_checkpoint(path: str | os.PathLike) -> dict:
    """The checkpoint dict of a file or run directory, read without running code (see the module docstring)."""
    p = resolve(path)
    _check_container(p)
    state = _torch_load(p)
    if not isinstance(state, dict) or state.get("format") != FORMAT:
        raise GrunetError(f"{p}: expected a grunet checkpoint (format {FORMAT!r}), got "
                          f"{type(state).__name__ if not isinstance(state, dict) else 'a dict without that format'}")
    version = state.get("version")
    if not isinstance(version, int) or isinstance(version, bool) or version < 1:
        raise GrunetError(f"{p}: expected a checkpoint version from 1 to {VERSION}, got {version!r}")
    if version > VERSION:
        raise GrunetError(f"{p}: expected checkpoint version <= {VERSION}, got {version} (a newer grunet wrote it)")
    try:
        state = _migrate_v1(state) if version == 1 else state
    except (TypeError, ValueError, KeyError, IndexError) as e:
        raise GrunetError(f"{p}: expected a version-1 grunet checkpoint to migrate, got one that does not fit "
                          f"({e})") from None
    for key, kind in (("architecture", dict), ("model", dict)):
        if not isinstance(state.get(key), kind):
            raise GrunetError(f"{p}: expected a {key!r} entry of type {kind.__name__}, got "
                              f"{type(state.get(key)).__name__ if key in state else 'none'}")
    if not isinstance(state.get("data", {}), dict):
        raise GrunetError(f"{p}: expected a 'data' entry of type dict, got {type(state['data']).__name__}")
    return state


def model_from_checkpoint(state: dict, where: str, impl: str = "auto") -> nn.Module:
    """The module of a loaded checkpoint: built on the meta device and compared with the stored tensors
    first, so an edited architecture can neither allocate what the file does not hold nor mismatch it."""
    skeleton = _build(state["architecture"], impl="reference", device="meta")
    check_state_dict(skeleton.state_dict(), state["model"], where)
    model = _build(state["architecture"], impl=impl)
    try:
        model.load_state_dict(state["model"])
    except RuntimeError as e:
        raise GrunetError(f"{where}: weights do not match the architecture: {str(e).splitlines()[0]}") from None
    return model


def load_model(path: str | os.PathLike, impl: str = "auto") -> tuple[nn.Module, dict]:
    """Rebuild the model of a checkpoint (file or run directory) in eval mode; returns (model, checkpoint).

    Use this when the checkpoint's other entries are wanted too (its data view, the trainer's progress);
    ``grunet.load`` returns the model alone."""
    state = load_checkpoint(path)
    model = model_from_checkpoint(state, str(resolve(path)), impl=impl)
    model.eval()
    return model, state


def load(path: str | os.PathLike, impl: str = "auto") -> nn.Module:
    """The trained model in a grunet checkpoint file or run directory, in eval mode.

    ``path`` is a ``.pt`` written by ``grunet train`` or ``grunet convert``, or a run directory (its best.pt,
    else last.pt). The file is read with ``torch.load(weights_only=True)``: opening it runs no code.
    Bad or foreign files raise ``grunet.GrunetError`` with one line saying what was expected.

        >>> model = grunet.load("runs/demo")                  # a SequenceClassifier
        >>> probabilities = model.predict_proba(x)            # x (B, 28, 28), pixels / 255
    """
    return load_model(path, impl=impl)[0]


def save_checkpoint(path: str | os.PathLike, model: nn.Module, data: Optional[dict] = None, **extra) -> None:
    state = {"format": FORMAT, "version": VERSION, "architecture": architecture_of(model),
             "model": model.state_dict(), "data": data or {}}
    state.update(extra)
    torch_save(plain(state), path)
