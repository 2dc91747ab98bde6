"""from_keras: read a Keras model file with h5py (Keras itself is never imported) into a StackModel.

Files (told apart by their first bytes, not their names):
    .keras        Keras 3 zip archive: config.json + metadata.json ({"keras_version": ...}) + model.weights.h5
    .h5           full model in the legacy HDF5 format (Keras 2, tf.keras, or Keras 3's model.save("x.h5")):
                  attrs model_config (JSON) and keras_version; group model_weights with attr layer_names and,
                  per layer, attr weight_names naming its datasets in order
    .weights.h5   weights only, either layout above; the caller gives the architecture (a Keras config dict,
                  a config.json or a .keras file)
Keras 3 weight layout: layers/<key>/vars/{0,1} (Dense kernel, bias), layers/<key>/cell/vars/{0,1,2}
(GRU kernel, recurrent_kernel, bias), layers/<key>/{forward,backward}_layer/cell/vars/... (Bidirectional).
Which Keras wrote the file (for hard_sigmoid) comes from, first to last: the keras_version argument,
metadata.json or the HDF5 keras_version attribute, a Keras 3 weight layout, a Keras 3-style config.
Every weight's shape is checked against the architecture before anything is loaded.
"""
from __future__ import annotations

import io
import json
import os
import zipfile
from pathlib import Path
from typing import Optional, Union

import numpy as np
import torch

from ..errors import GrunetError, require, expect
from .keras_config import KerasLayer, KerasModel, parse_model
from .layout import keras_to_torch
from .stack import GRUSpec, StackModel

ZIP_MAGIC, HDF5_MAGIC = b"PK\x03\x04", b"\x89HDF\r\n\x1a\n"


def _h5py():
    return require("h5py", "read Keras files", "convert")


def _text(value) -> str:
    return value.decode("utf-8") if isinstance(value, bytes) else str(value)


def _major(version, where: str) -> int:
    text = _text(version).strip()
    head = text.split(".")[0]
    expect(head.isdigit(), where, "a Keras version such as '2.3.1' or '3.5.0'", repr(text))
    return int(head)


def sniff(path: Path) -> str:
    """'zip' or 'hdf5' from the file's first bytes."""
    expect(path.is_file(), str(path), "a Keras file (.keras, .h5, .weights.h5)", "nothing at that path")
    with open(path, "rb") as f:
        head = f.read(8)
    if head.startswith(ZIP_MAGIC):
        return "zip"
    if head == HDF5_MAGIC or _h5py().is_hdf5(str(path)):
        return "hdf5"
    raise GrunetError(f"{path}: expected a Keras file (a .keras zip archive or an HDF5 .h5 file), got "
                      f"{'an empty file' if not head else 'neither (first bytes ' + repr(head) + ')'}")


def read_archive(path: Path) -> tuple[dict, dict, bytes]:
    """(config, metadata, model.weights.h5 bytes) of a .keras archive."""
    try:
        with zipfile.ZipFile(path) as zf:
            names = zf.namelist()
            missing = [n for n in ("config.json", "model.weights.h5") if n not in names]
            expect(not missing, str(path), "a .keras archive with config.json and model.weights.h5",
                   f"members {names}")
            config = json.loads(zf.read("config.json"))
            metadata = json.loads(zf.read("metadata.json")) if "metadata.json" in names else {}
            weights = zf.read("model.weights.h5")
    except (zipfile.BadZipFile, EOFError, OSError, zipfile.LargeZipFile) as e:
        raise GrunetError(f"{path}: expected a complete .keras zip archive, got a truncated or damaged one ({e})") from None
    except json.JSONDecodeError as e:
        raise GrunetError(f"{path}: expected JSON in config.json / metadata.json, got invalid JSON ({e})") from None
    return config, metadata, weights


def _architecture(architecture) -> tuple[dict, Optional[str]]:
    """(Keras config, keras_version or None) from a config dict, a config.json, a .keras file or JSON text."""
    if isinstance(architecture, dict):
        return architecture, None
    if isinstance(architecture, str) and architecture.lstrip().startswith("{"):
        return json.loads(architecture), None
    expect(isinstance(architecture, (str, os.PathLike)), "architecture",
           "a Keras config dict, a config.json path or a .keras file", type(architecture).__name__)
    p = Path(architecture)
    if p.is_file() and sniff_or_none(p) == "zip":
        config, metadata, _ = read_archive(p)
        return config, metadata.get("keras_version")
    expect(p.is_file(), "architecture", "a config.json or .keras file", f"nothing at {p}")
    try:
        return json.loads(p.read_text(encoding="utf-8")), None
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise GrunetError(f"architecture {p}: expected a JSON Keras config or a .keras file, got unreadable text "
                          f"({e.__class__.__name__})") from None


def sniff_or_none(path: Path) -> Optional[str]:
    try:
        return sniff(path)
    except GrunetError:
        return None


# ------------------------------------------------------------------------------------------------------
# weight stores: the arrays of one layer, in Keras's order (Bidirectional: forward's, then backward's)
class Keras3Weights:
    def __init__(self, f, source: str) -> None:
        self.source = source
        self.root = f["layers"] if "layers" in f else f.get("_layer_checkpoint_dependencies")
        expect(self.root is not None, source, "a Keras 3 weights file with a 'layers' group", f"groups {sorted(f)}")

    def _group(self, layer: KerasLayer):
        for key in self.root:  # match by the saved layer name first, then by position
            vars_group = self.root[key].get("vars")
            if vars_group is not None and _text(vars_group.attrs.get("name", "")) == layer.name:
                return self.root[key]
        if layer.key in self.root:
            return self.root[layer.key]
        raise GrunetError(f"layer {layer.name!r} ({layer.class_name}): expected its weights under layers/{layer.key} "
                          f"in {self.source}, got no such group (groups {sorted(self.root)})")

    @staticmethod
    def _vars(group) -> list[np.ndarray]:
        g = group["cell"]["vars"] if "cell" in group else group.get("vars", {})
        return [np.asarray(g[k]) for k in sorted(g, key=int)]

    def arrays(self, layer: KerasLayer) -> list[np.ndarray]:
        g = self._group(layer)
        if layer.class_name == "Bidirectional":
            for part in ("forward_layer", "backward_layer"):
                expect(part in g, f"layer {layer.name!r} (Bidirectional)", f"a {part} group in {self.source}",
                       f"groups {sorted(g)}")
            return self._vars(g["forward_layer"]) + self._vars(g["backward_layer"])
        return self._vars(g)


class LegacyWeights:
    def __init__(self, g, source: str) -> None:
        self.g, self.source = g, source

    def arrays(self, layer: KerasLayer) -> list[np.ndarray]:
        expect(layer.name in self.g, f"layer {layer.name!r} ({layer.class_name})", f"a weights group in {self.source}",
               f"groups {sorted(self.g)}")
        group = self.g[layer.name]
        names = [_text(n) for n in group.attrs.get("weight_names", [])]
        return [np.asarray(group[n]) for n in names]


# ------------------------------------------------------------------------------------------------------
def _weights_to_state(model: KerasModel, arrays: list[list[np.ndarray]], width: int) -> dict:
    """Check every array's shape against the architecture and return the StackModel state dict."""
    state = {}
    for i, (layer, got) in enumerate(zip(model.layers, arrays)):
        spec, what = layer.spec, f"layer {layer.name!r} ({layer.class_name})"
        if isinstance(spec, GRUSpec):
            U = spec.units
            names = ["kernel", "recurrent_kernel"] + (["bias"] if spec.use_bias else [])
            bias_shape = (2, 3 * U) if spec.reset_after else (3 * U,)
            bias_note = "reset-after: input and recurrent rows" if spec.reset_after else "reset-before: one bias"
            wants = [((width, 3 * U), f"input {width}, 3 gates x {U} units"),
                     ((U, 3 * U), f"{U} units, 3 gates x {U} units"),
                     (bias_shape, f"{bias_note}, 3 gates x {U} units")][: len(names)]
            D = spec.directions
            expect(len(got) == D * len(names), what,
                   f"{D * len(names)} weight arrays ({', '.join(names)}{' per direction' if D == 2 else ''})",
                   len(got))
            for d, suffix in enumerate(("", "_reverse")[:D]):
                part = got[d * len(names):(d + 1) * len(names)]
                for name, a, (shape, note) in zip(names, part, wants):
                    label = f"{('forward ' if d == 0 else 'backward ') if D == 2 else ''}{name}"
                    expect(a.shape == shape, f"{what} {label}", f"shape {shape} ({note})", a.shape)
                part = [p.astype(np.float32) for p in part] + [None] * (3 - len(part))
                w_ih, w_hh, b_ih, b_hh = keras_to_torch(part[0], part[1], part[2], spec.reset_after)
                for key, value in (("weight_ih", w_ih), ("weight_hh", w_hh), ("bias_ih", b_ih), ("bias_hh", b_hh)):
                    if value is not None:
                        key = key if spec.reset_after or not key.startswith("bias") else "bias"
                        state[f"layers.{i}.{key}_l0{suffix}"] = torch.from_numpy(value)
            width = U * D
        else:
            names = ["kernel"] + (["bias"] if spec.use_bias else [])
            expect(len(got) == len(names), what, f"{len(names)} weight arrays ({', '.join(names)})", len(got))
            wants = [(width, spec.units), (spec.units,)]
            for name, a, shape in zip(names, got, wants):
                expect(a.shape == shape, f"{what} {name}", f"shape {shape} (input {width}, {spec.units} units)", a.shape)
            state[f"layers.{i}.weight"] = torch.from_numpy(np.ascontiguousarray(got[0].astype(np.float32).T))
            if spec.use_bias:
                state[f"layers.{i}.bias"] = torch.from_numpy(got[1].astype(np.float32))
            width = spec.units
    return state


def _build(config: dict, major: Optional[int], store, impl: str) -> StackModel:
    model = parse_model(config, major)
    arrays = [store.arrays(layer) for layer in model.layers]
    steps, features = model.input_shape
    first = arrays[0][0] if arrays[0] else None
    if features is None:  # no input shape in the config: the first kernel tells the input width
        expect(first is not None and first.ndim == 2, f"layer {model.layers[0].name!r}", "a 2-D kernel", "none")
        features = int(first.shape[0])
    state = _weights_to_state(model, arrays, features)
    stack = StackModel((steps, features), [layer.spec for layer in model.layers], impl=impl)
    stack.load_state_dict(state)
    return stack.eval()


def from_keras(path: Union[str, os.PathLike], architecture=None, *, keras_version: Optional[str] = None,
               impl: str = "auto") -> StackModel:
    """Read a Keras .keras, .h5 or .weights.h5 file into a StackModel (eval mode) with Keras's outputs.

    ``architecture``: the Keras config (dict, config.json or .keras path) of a weights-only file; for other
    files it replaces the file's own config. ``keras_version`` ('2' or '3', or a full version) overrides the
    file's own, which decides what 'hard_sigmoid' means.
    """
    path = Path(path)
    try:
        return _from_keras(path, architecture, keras_version, impl)
    except GrunetError as e:
        if str(e).startswith(str(path)):
            raise
        raise GrunetError(f"{path}: {e}") from None


def _from_keras(path: Path, architecture, keras_version: Optional[str], impl: str) -> StackModel:
    h5py = _h5py()
    kind = sniff(path)
    override = None if keras_version is None else _major(keras_version, "keras_version")
    arch_config, arch_version = _architecture(architecture) if architecture is not None else (None, None)
    if kind == "zip":
        config, metadata, weights = read_archive(path)
        version = metadata.get("keras_version") or arch_version
        major = override if override is not None else (_major(version, f"{path} keras_version") if version else 3)
        source = io.BytesIO(weights)
    else:
        config, major, source = None, override, str(path)
    try:
        with h5py.File(source, "r") as f:
            if kind == "zip":
                store = Keras3Weights(f, f"{path}:model.weights.h5")
            elif "model_config" in f.attrs:
                config = json.loads(_text(f.attrs["model_config"]))
                expect("model_weights" in f, str(path), "a legacy Keras model with a model_weights group",
                       f"groups {sorted(f)}")
                store = LegacyWeights(f["model_weights"], str(path))
                version = f.attrs.get("keras_version", f["model_weights"].attrs.get("keras_version"))
                if major is None and version is not None:
                    major = _major(version, f"{path} keras_version")
            else:  # weights only
                expect(arch_config is not None, f"{path} (weights only)",
                       "an architecture: a Keras config dict, a config.json or a .keras file", "architecture=None")
                if "layer_names" in f.attrs:
                    store = LegacyWeights(f, str(path))
                    version = f.attrs.get("keras_version", arch_version)
                else:
                    store = Keras3Weights(f, str(path))
                    version = arch_version or "3"
                if major is None and version is not None:
                    major = _major(version, f"{path} keras_version")
            if arch_config is not None:
                config = arch_config
            if major is None and isinstance(config, dict) and "module" in config:
                major = 3
            return _build(config, major, store, impl)
    except OSError as e:
        raise GrunetError(f"{path}: expected a complete HDF5 file, got a truncated or damaged one "
                          f"({str(e).splitlines()[0] if str(e) else e.__class__.__name__})") from None
    except (KeyError, TypeError, json.JSONDecodeError) as e:
        raise GrunetError(f"{path}: expected a Keras model file, got one whose config or weights are not "
                          f"laid out as Keras writes them ({e.__class__.__name__}: {e})") from None
