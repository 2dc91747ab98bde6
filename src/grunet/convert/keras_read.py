"""from_keras: read a Keras model file with h5py (Keras itself is never imported) into a StackModel.

Files (told apart by their first bytes, not their names):
    .keras        Keras 3 (or tf-keras >= 2.13) zip archive: config.json + metadata.json ({"keras_version": ...})
                  + model.weights.h5
    .h5           full model in the legacy HDF5 format (Keras 2, tf.keras, or Keras 3's model.save("x.h5")):
                  attrs model_config (JSON) and keras_version; group model_weights with attr layer_names and,
                  per layer, attr weight_names naming its datasets in order
    .weights.h5   weights only, either layout above; the caller gives the architecture (a Keras config dict,
                  a config.json or a .keras file)
Keras 3 weight layout: layers/<key>/vars/{0,1} (Dense kernel, bias; Embedding embeddings), layers/<key>/cell/vars/
{0,1,2} (GRU kernel, recurrent_kernel, bias), layers/<key>/{forward,backward}_layer/cell/vars/... (Bidirectional).
Which Keras wrote the file (for hard_sigmoid) comes from, first to last: the keras_version argument,
metadata.json or the HDF5 keras_version attribute, a Keras 3 weight layout, a Keras 3-style config.

Files are untrusted. JSON is bounded in size and depth (keras_json). A .keras member's declared size is checked
before it is inflated and the inflating stops at the bound: config.json and metadata.json at
keras_json.MAX_CONFIG_BYTES, model.weights.h5 at what the architecture's weights can take (8 bytes a weight plus
HDF5's own overhead). Every weight dataset's type, dtype and declared shape is checked against the architecture
before it is read, so a dataset that claims terabytes is refused without reading a byte of it. Anything else
malformed is one GrunetError line naming the file.
"""
from __future__ import annotations

import io
import os
import zipfile
from pathlib import Path
from typing import Optional, Union

import numpy as np
import torch

from ..errors import GrunetError, expect, require
from .keras_config import KerasLayer, KerasModel, parse_model
from .keras_json import MAX_CONFIG_BYTES, check_depth, load_json
from .layout import keras_to_torch
from .stack import DenseSpec, EmbeddingSpec, GRUSpec, StackModel, parameter_count

ZIP_MAGIC, HDF5_MAGIC = b"PK\x03\x04", b"\x89HDF\r\n\x1a\n"
HDF5_OVERHEAD = 16 << 20  # groups, attributes and dataset headers of a weights file: ~1-2 KB a layer
UNKNOWN_WIDTH_BYTES = 256 << 20  # extra room when the config does not give the input width
CHUNK = 1 << 20


def _h5py():
    return require("h5py", "read Keras files", "convert")


def _text(value, what: str = "attribute") -> str:
    if isinstance(value, np.ndarray) and value.shape == ():
        value = value[()]
    if isinstance(value, bytes):
        try:
            return value.decode("utf-8")
        except UnicodeDecodeError:
            raise GrunetError(f"{what}: expected UTF-8 text, got bytes that are not UTF-8") from None
    expect(isinstance(value, str), what, "a string", type(value).__name__)
    return value


def _major(version, where: str) -> int:
    text = _text(version, where).strip()
    head = text.split(".")[0]
    expect(head.isdigit() and len(head) <= 3, where, "a Keras version such as '2.3.1' or '3.5.0'", repr(text[:40]))
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


def read_member(zf: zipfile.ZipFile, name: str, limit: int, source) -> bytes:
    """A member's bytes, refused if its header declares more than ``limit`` or it inflates past it."""
    info = zf.getinfo(name)
    expect(info.file_size <= limit, f"{source}:{name}", f"at most {limit:,} bytes (what the model can need)",
           f"{info.file_size:,} bytes declared")
    out = io.BytesIO()
    with zf.open(info) as f:
        while True:
            chunk = f.read(CHUNK)
            if not chunk:
                break
            out.write(chunk)
            expect(out.tell() <= limit, f"{source}:{name}", f"at most {limit:,} bytes",
                   f"more when inflated (its header declared {info.file_size:,})")
    return out.getvalue()


class Archive:
    """An open .keras archive: config and metadata read (bounded); weights read on demand (bounded)."""

    def __init__(self, path: Path) -> None:
        self.path = path
        try:
            self.zf = zipfile.ZipFile(path)
            names = self.zf.namelist()
        except (zipfile.BadZipFile, EOFError, OSError, zipfile.LargeZipFile, ValueError) as e:
            raise GrunetError(f"{path}: expected a complete .keras zip archive, got a truncated or damaged one "
                              f"({str(e)[:120]})") from None
        missing = [n for n in ("config.json", "model.weights.h5") if n not in names]
        expect(not missing, str(path), "a .keras archive with config.json and model.weights.h5",
               f"members {names[:10]}")
        self.config = load_json(self._read("config.json", MAX_CONFIG_BYTES), f"{path}:config.json")
        meta = load_json(self._read("metadata.json", MAX_CONFIG_BYTES), f"{path}:metadata.json") \
            if "metadata.json" in names else {}
        expect(isinstance(meta, dict), f"{path}:metadata.json", "a JSON object", type(meta).__name__)
        self.version = meta.get("keras_version")
        expect(self.version is None or isinstance(self.version, str), f"{path}:metadata.json keras_version",
               "a string such as '3.5.0'", repr(self.version)[:40])

    def _read(self, name: str, limit: int) -> bytes:
        try:
            return read_member(self.zf, name, limit, self.path)
        except (zipfile.BadZipFile, EOFError, OSError, zipfile.LargeZipFile, ValueError, NotImplementedError) as e:
            if isinstance(e, GrunetError):
                raise
            raise GrunetError(f"{self.path}:{name}: expected a complete zip member, got a damaged one "
                              f"({str(e)[:120]})") from None

    def weights(self, limit: int) -> bytes:
        return self._read("model.weights.h5", limit)

    def close(self) -> None:
        self.zf.close()


def read_archive(path: Path) -> tuple[dict, dict, bytes]:
    """(config, metadata {"keras_version"}, model.weights.h5 bytes) of a .keras archive (weights bounded by
    the architecture it describes)."""
    archive = Archive(path)
    try:
        model = parse_model(archive.config, _major(archive.version, "keras_version") if archive.version else 3)
        data = archive.weights(weights_limit(model))
    finally:
        archive.close()
    return archive.config, {"keras_version": archive.version} if archive.version else {}, data


def _architecture(architecture) -> tuple[dict, Optional[str]]:
    """(Keras config, keras_version or None) from a config dict, a config.json, a .keras file or JSON text."""
    if isinstance(architecture, dict):
        check_depth(architecture, "architecture")
        return architecture, None
    if isinstance(architecture, str) and architecture.lstrip().startswith("{"):
        return load_json(architecture, "architecture"), None
    expect(isinstance(architecture, (str, os.PathLike)), "architecture",
           "a Keras config dict, a config.json path or a .keras file", type(architecture).__name__)
    p = Path(architecture)
    if p.is_file() and sniff_or_none(p) == "zip":
        archive = Archive(p)
        archive.close()
        return archive.config, archive.version
    expect(p.is_file(), "architecture", "a config.json or .keras file", f"nothing at {p}")
    size = p.stat().st_size
    expect(size <= MAX_CONFIG_BYTES, f"architecture {p}", f"at most {MAX_CONFIG_BYTES >> 20} MiB of JSON",
           f"{size:,} bytes")
    return load_json(p.read_bytes(), f"architecture {p}"), None


def sniff_or_none(path: Path) -> Optional[str]:
    try:
        return sniff(path)
    except GrunetError:
        return None


def weights_limit(model: KerasModel) -> int:
    """The most bytes a weights file of ``model`` can need: 8 bytes a weight (float64) plus HDF5 overhead."""
    steps, features = model.input_shape
    n = parameter_count((steps, features), [layer.spec for layer in model.layers])
    return HDF5_OVERHEAD + 8 * n + (UNKNOWN_WIDTH_BYTES if features is None else 0)


# ------------------------------------------------------------------------------------------------------
# weight stores: the datasets of one layer, in Keras's order (Bidirectional: forward's, then backward's);
# nothing is read here, only looked up
def _has_weights(layer: KerasLayer) -> bool:
    return isinstance(layer.spec, (GRUSpec, DenseSpec, EmbeddingSpec))


class Keras3Weights:
    def __init__(self, f, source: str) -> None:
        self.source = source
        h5py = _h5py()
        root = f.get("layers") if "layers" in f else f.get("_layer_checkpoint_dependencies")
        expect(isinstance(root, h5py.Group), source, "a Keras 3 weights file with a 'layers' group",
               f"groups {sorted(f)[:10]}")
        self.root = root

    def _group(self, layer: KerasLayer):
        h5py = _h5py()
        for key in self.root:  # match by the saved layer name first, then by position
            g = self.root[key]
            vars_group = g.get("vars") if isinstance(g, h5py.Group) else None
            if isinstance(vars_group, h5py.Group) and vars_group.attrs.get("name", None) is not None:
                name = vars_group.attrs["name"]
                if isinstance(name, (str, bytes)) and _text(name) == layer.name:
                    return g
        if layer.key in self.root and isinstance(self.root[layer.key], h5py.Group):
            return self.root[layer.key]
        raise GrunetError(f"layer {layer.name!r} ({layer.class_name}): expected its weights under layers/{layer.key} "
                          f"in {self.source}, got no such group (groups {sorted(self.root)[:10]})")

    def _vars(self, group, what: str) -> list:
        h5py = _h5py()
        g = group.get("cell") if "cell" in group else group
        g = g.get("vars") if isinstance(g, h5py.Group) and "vars" in g else None
        if g is None:
            return []
        expect(isinstance(g, h5py.Group), f"{what} vars", "an HDF5 group", type(g).__name__)
        names = list(g)
        expect(all(n.isdigit() and len(n) < 6 for n in names), f"{what} vars", "datasets named 0, 1, 2, ...",
               f"{names[:8]}")
        return [g[k] for k in sorted(names, key=int)]

    def arrays(self, layer: KerasLayer) -> list:
        if not _has_weights(layer):
            return []
        what = f"layer {layer.name!r} ({layer.class_name})"
        g = self._group(layer)
        if layer.class_name == "Bidirectional":
            for part in ("forward_layer", "backward_layer"):
                expect(part in g, what, f"a {part} group in {self.source}", f"groups {sorted(g)[:10]}")
            return self._vars(g["forward_layer"], what) + self._vars(g["backward_layer"], what)
        return self._vars(g, what)


class LegacyWeights:
    def __init__(self, g, source: str) -> None:
        self.g, self.source = g, source

    def arrays(self, layer: KerasLayer) -> list:
        if not _has_weights(layer):
            return []
        what = f"layer {layer.name!r} ({layer.class_name})"
        expect(layer.name in self.g, what, f"a weights group in {self.source}", f"groups {sorted(self.g)[:10]}")
        group = self.g[layer.name]
        raw = group.attrs.get("weight_names", [])
        expect(isinstance(raw, (np.ndarray, list)) and len(raw) <= 64, f"{what} weight_names", "a list of names",
               type(raw).__name__)
        names = [_text(n, f"{what} weight_names") for n in raw]
        missing = [n for n in names if n not in group]
        expect(not missing, what, f"the datasets its weight_names list in {self.source}", f"none for {missing[:3]}")
        return [group[n] for n in names]


# ------------------------------------------------------------------------------------------------------
def _read(ds, shape: tuple, what: str, note: str) -> np.ndarray:
    """A weight dataset as float32, after checking its kind, dtype and declared shape (nothing read before)."""
    h5py = _h5py()
    expect(isinstance(ds, h5py.Dataset), what, "an HDF5 dataset of weights", type(ds).__name__)
    expect(ds.dtype.kind == "f" and ds.dtype.itemsize <= 8, what, "floating-point weights",
           f"dtype {ds.dtype}")
    expect(ds.shape == shape, what, f"shape {shape} ({note})", ds.shape)
    return np.asarray(ds[()], dtype=np.float32)


def _weights_to_state(model: KerasModel, datasets: list[list], stack: StackModel) -> dict:
    """Check every dataset against the architecture, read it, and return the StackModel state dict."""
    state = {}
    for i, (layer, got, module) in enumerate(zip(model.layers, datasets, stack.layers)):
        spec, what = layer.spec, f"layer {layer.name!r} ({layer.class_name})"
        width = getattr(module, "input_size", getattr(module, "in_features", None))
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
                part = []
                for j, (name, (shape, note)) in enumerate(zip(names, wants)):
                    label = f"{('forward ' if d == 0 else 'backward ') if D == 2 else ''}{name}"
                    part.append(_read(got[d * len(names) + j], shape, f"{what} {label}", note))
                part += [None] * (3 - len(part))
                w_ih, w_hh, b_ih, b_hh = keras_to_torch(part[0], part[1], part[2], spec.reset_after)
                for key, value in (("weight_ih", w_ih), ("weight_hh", w_hh), ("bias_ih", b_ih), ("bias_hh", b_hh)):
                    if value is not None:
                        key = key if spec.reset_after or not key.startswith("bias") else "bias"
                        state[f"layers.{i}.{key}_l0{suffix}"] = torch.from_numpy(value)
        elif isinstance(spec, DenseSpec):
            names = ["kernel"] + (["bias"] if spec.use_bias else [])
            expect(len(got) == len(names), what, f"{len(names)} weight arrays ({', '.join(names)})", len(got))
            note = f"input {width}, {spec.units} units"
            kernel = _read(got[0], (width, spec.units), f"{what} kernel", note)
            state[f"layers.{i}.weight"] = torch.from_numpy(np.ascontiguousarray(kernel.T))
            if spec.use_bias:
                state[f"layers.{i}.bias"] = torch.from_numpy(_read(got[1], (spec.units,), f"{what} bias", note))
        elif isinstance(spec, EmbeddingSpec):
            expect(len(got) == 1, what, "1 weight array (embeddings)", len(got))
            table = _read(got[0], (spec.input_dim, spec.output_dim), f"{what} embeddings",
                          f"{spec.input_dim} tokens x {spec.output_dim}")
            state[f"layers.{i}.weight"] = torch.from_numpy(table)
    return state


def _build(model: KerasModel, store, impl: str) -> StackModel:
    datasets = [store.arrays(layer) for layer in model.layers]
    steps, features = model.input_shape
    if features is None and not isinstance(model.layers[0].spec, EmbeddingSpec):
        # no input shape in the config: the first kernel tells the input width
        first = datasets[0][0] if datasets[0] else None
        expect(first is not None and len(getattr(first, "shape", ())) == 2, f"layer {model.layers[0].name!r}",
               "a 2-D kernel", "none")
        features = int(first.shape[0])
    stack = StackModel((steps, features), [layer.spec for layer in model.layers], impl=impl)
    state = _weights_to_state(model, datasets, stack)
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
    except MemoryError:
        raise GrunetError(f"{path}: expected a Keras file whose parts fit in memory, got MemoryError") from None
    except RecursionError:
        raise GrunetError(f"{path}: expected a Keras file of bounded nesting, got one too deep to read") from None
    except (KeyError, TypeError, ValueError, AttributeError, IndexError, OSError, OverflowError, RuntimeError) as e:
        # whatever else a malformed file makes h5py, zipfile or numpy raise: one line, never a traceback
        detail = str(e).splitlines()[0][:160] if str(e) else ""
        raise GrunetError(f"{path}: expected a Keras model file laid out as Keras writes it, got one that is "
                          f"not ({e.__class__.__name__}: {detail})") from None


def _from_keras(path: Path, architecture, keras_version: Optional[str], impl: str) -> StackModel:
    h5py = _h5py()
    kind = sniff(path)
    override = None if keras_version is None else _major(keras_version, "keras_version")
    arch_config, arch_version = _architecture(architecture) if architecture is not None else (None, None)
    if kind == "zip":
        archive = Archive(path)
        try:
            version = archive.version or arch_version
            major = override if override is not None else (_major(version, f"{path} keras_version") if version else 3)
            model = parse_model(arch_config if arch_config is not None else archive.config, major)
            source = io.BytesIO(archive.weights(weights_limit(model)))
        finally:
            archive.close()
        try:
            with h5py.File(source, "r") as f:
                return _build(model, Keras3Weights(f, f"{path}:model.weights.h5"), impl)
        except OSError as e:
            raise GrunetError(f"{path}:model.weights.h5: expected a complete HDF5 file, got a damaged one "
                              f"({str(e).splitlines()[0] if str(e) else e.__class__.__name__})") from None
    major = override
    try:
        f = h5py.File(str(path), "r")
    except OSError as e:
        raise GrunetError(f"{path}: expected a complete HDF5 file, got a truncated or damaged one "
                          f"({str(e).splitlines()[0] if str(e) else e.__class__.__name__})") from None
    with f:
        config = None
        if "model_config" in f.attrs:
            config = load_json(_text(f.attrs["model_config"], "model_config"), f"{path} model_config")
            expect(isinstance(f.get("model_weights"), h5py.Group), str(path),
                   "a legacy Keras model with a model_weights group", f"groups {sorted(f)[:10]}")
            store = LegacyWeights(f["model_weights"], str(path))
            version = f.attrs.get("keras_version", f["model_weights"].attrs.get("keras_version"))
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
        return _build(parse_model(config, major), store, impl)
