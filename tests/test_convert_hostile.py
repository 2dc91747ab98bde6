"""Keras files and output paths from a hostile or careless user: one GrunetError line, exit 2, nothing written.

Malformed files are made here from the committed fixtures (deep nesting, wrong types anywhere in config.json,
metadata.json or the HDF5 model_config attribute, byte-string / integer / wrong-shape / missing weights, junk),
and memory bombs are crafted small on disk: a .keras whose weights member inflates to 512 MiB and an .h5 whose
datasets declare terabytes. Peak memory is measured in a subprocess (ru_maxrss).
"""
from __future__ import annotations

import io
import json
import os
import subprocess
import sys
import zipfile
from pathlib import Path

import h5py
import numpy as np
import pytest

from grunet.cli import main
from grunet.convert import from_keras
from grunet.errors import GrunetError

FIX = Path(__file__).parent / "fixtures" / "keras"
BASE = FIX / "tutorial_activation.keras"
H5 = FIX / "keras2_tutorial_activation.h5"


def members(path=BASE) -> dict:
    with zipfile.ZipFile(path) as zf:
        return {n: zf.read(n) for n in zf.namelist()}


def write_zip(path, parts: dict, compression=zipfile.ZIP_STORED) -> Path:
    with zipfile.ZipFile(path, "w", compression=compression) as zf:
        for name, data in parts.items():
            zf.writestr(name, data)
    return path


def with_config(tmp_path, edit, name="bad.keras", member="config.json") -> Path:
    parts = members()
    if callable(edit):
        value = json.loads(parts[member])
        edit(value)
        parts[member] = json.dumps(value).encode()
    else:
        parts[member] = edit
    return write_zip(tmp_path / name, parts)


def layer(config, i):  # the i-th entry of the Sequential's layers (0 is the InputLayer)
    return config["config"]["layers"][i]


def refused(path, message, capsys, tmp_path, **kw):
    with pytest.raises(GrunetError, match=message) as info:
        from_keras(path, **kw)
    assert "\n" not in str(info.value)
    out = tmp_path / "out.pt"
    assert main(["convert", str(path), str(out)]) == 2
    err = capsys.readouterr().err
    assert err.startswith("grunet convert: error: ") and err.count("\n") == 1, err
    assert not out.exists() and not [p for p in tmp_path.iterdir() if p.name.startswith(".out.pt")]


CONFIG_EDITS = {
    "class_name number": (lambda c: c.update(class_name=5), "class_name: expected str, got 5"),
    "config a number": (lambda c: c.update(config=7), "config: expected dict or list, got 7"),
    "layers a dict": (lambda c: c["config"].update(layers={}), "layers: expected list, got {}"),
    "layer a string": (lambda c: c["config"]["layers"].append("gru"), "expected a dict with 'class_name'"),
    "layer config a list": (lambda c: layer(c, 1).update(config=[1]), "config: expected a dict, got list"),
    "units a string": (lambda c: layer(c, 1)["config"].update(units="75"), "units: expected int, got '75'"),
    "units a bool": (lambda c: layer(c, 1)["config"].update(units=True), "units: expected int, got True"),
    "units huge": (lambda c: layer(c, 1)["config"].update(units=10 ** 12), r"units: expected an integer in \[1, "),
    "return_sequences a string": (lambda c: layer(c, 1)["config"].update(return_sequences="no"),
                                  "return_sequences: expected bool, got 'no'"),
    "recurrent_activation a dict": (lambda c: layer(c, 1)["config"].update(recurrent_activation={"a": 1}),
                                    "recurrent_activation: expected str"),
    "name a number": (lambda c: layer(c, 1)["config"].update(name=3), "name: expected a string, got 3"),
    "batch_shape a string": (lambda c: layer(c, 0)["config"].update(batch_shape="28x28"),
                             "batch_shape: expected an input shape"),
    "batch_shape floats": (lambda c: layer(c, 0)["config"].update(batch_shape=[None, 2.5, 28]),
                           "expected None or an integer >= 1, got 2.5"),
    "activation a list": (lambda c: layer(c, 3)["config"].update(activation=["softmax"]),
                          "activation: expected str, got"),
    "activation unknown": (lambda c: layer(c, 3)["config"].update(activation="gelu"),
                           r"\(Activation\): expected activation in"),
    "dense units missing": (lambda c: layer(c, 2)["config"].pop("units"), "expected a key 'units'"),
    "unsupported layer": (lambda c: layer(c, 3).update(class_name="LayerNormalization"),
                          r"\(LayerNormalization\): expected one of the supported layers"),
}


@pytest.mark.parametrize("case", sorted(CONFIG_EDITS))
def test_wrong_types_in_config_json(tmp_path, capsys, case):
    edit, message = CONFIG_EDITS[case]
    refused(with_config(tmp_path, edit), message, capsys, tmp_path)


@pytest.mark.parametrize("metadata, message", [
    (b"[]", "metadata.json: expected a JSON object, got list"),
    (b'{"keras_version": 3}', "keras_version: expected a string"),
    (b'{"keras_version": ["3"]}', "keras_version: expected a string"),
    (b'{"keras_version": "three"}', "expected a Keras version"),
    (b"\xff\xfe{}", "expected UTF-8 JSON text"),
    (b"[" * 200000, "nested at most 64 levels"),
], ids=["list", "version number", "version list", "version text", "not UTF-8", "deep"])
def test_wrong_metadata(tmp_path, capsys, metadata, message):
    refused(with_config(tmp_path, metadata, member="metadata.json"), message, capsys, tmp_path)


@pytest.mark.parametrize("text, message", [
    (b"[" * 200000 + b"]" * 200000, "nested at most 64 levels"),      # past Python's recursion limit
    (b"[" * 100 + b"]" * 100, "nested at most 64 levels"),            # parses, but too deep for any Keras config
    (b'{"class_name": "Sequential", "config": {"layers": [' + b"1" * 5000 + b"]}}", "invalid JSON"),
    (b'{"class_name": "Sequential", "config": {"layers": [NaN]}}', "expected a dict with 'class_name'"),
    (b"", "invalid JSON"),
], ids=["past recursion limit", "100 deep", "5000-digit integer", "NaN layer", "empty"])
def test_malformed_config_text(tmp_path, capsys, text, message):
    refused(with_config(tmp_path, text), message, capsys, tmp_path)


def test_deep_nesting_inside_a_layer(tmp_path, capsys):
    deep: dict = {}
    node = deep
    for _ in range(80):
        node["x"] = {}
        node = node["x"]
    refused(with_config(tmp_path, lambda c: layer(c, 1)["config"].update(kernel_initializer=deep)),
            "nested at most 64 levels", capsys, tmp_path)


def _rewrite_h5(src: Path, dst: Path, edit) -> Path:
    dst.write_bytes(src.read_bytes())
    with h5py.File(dst, "r+") as f:
        edit(f)
    return dst


def _set_weights(parts: dict, edit) -> dict:
    buffer = io.BytesIO(parts["model.weights.h5"])
    with h5py.File(buffer, "r+") as f:
        edit(f)
    parts["model.weights.h5"] = buffer.getvalue()
    return parts


def _replace(f, path, data):
    del f[path]
    f[path] = data


WEIGHT_EDITS = {
    "byte strings": (lambda f: _replace(f, "layers/dense/vars/0", np.array([b"abc"] * 10)),
                     r"\(Dense\) kernel: expected floating-point weights, got dtype \|S3"),
    "variable-length strings": (lambda f: _replace(f, "layers/dense/vars/1", np.array(["x"] * 10, dtype=h5py.string_dtype())),
                                r"bias: expected floating-point weights, got dtype object"),
    "integers": (lambda f: _replace(f, "layers/dense/vars/1", np.arange(10)), "expected floating-point weights, got dtype int64"),
    "wrong shape": (lambda f: _replace(f, "layers/dense/vars/0", np.zeros((75, 11), np.float32)),
                    r"kernel: expected shape \(75, 10\)"),
    "missing": (lambda f: f.__delitem__("layers/gru/cell/vars/2"), "3 weight arrays"),
    "extra": (lambda f: f.__setitem__("layers/gru/cell/vars/3", np.zeros(3, np.float32)), "3 weight arrays"),
    "junk name": (lambda f: f.__setitem__("layers/dense/vars/junk", np.zeros(3, np.float32)),
                  "expected datasets named 0, 1, 2"),
    "group for a dataset": (lambda f: (f.__delitem__("layers/dense/vars/1"), f.create_group("layers/dense/vars/1")),
                            "expected an HDF5 dataset of weights, got Group"),
    "no layers group": (lambda f: f.move("layers", "other"), "expected a Keras 3 weights file with a 'layers' group"),
}


@pytest.mark.parametrize("case", sorted(WEIGHT_EDITS))
def test_bad_weights_in_keras_archive(tmp_path, capsys, case):
    edit, message = WEIGHT_EDITS[case]
    path = write_zip(tmp_path / "bad.keras", _set_weights(members(), edit))
    refused(path, message, capsys, tmp_path)


def test_weights_member_not_hdf5(tmp_path, capsys):
    parts = members()
    parts["model.weights.h5"] = b"junk" * 100
    refused(write_zip(tmp_path / "bad.keras", parts), "model.weights.h5: expected a complete HDF5 file", capsys,
            tmp_path)


H5_EDITS = {
    "model_config a number": (lambda f: f.attrs.__setitem__("model_config", 5), "model_config: expected a string"),
    "model_config not UTF-8": (lambda f: f.attrs.__setitem__("model_config", np.void(b"\xff\xfe")),
                               "model_config: expected"),
    "model_config a list": (lambda f: f.attrs.__setitem__("model_config", "[1, 2]"), "Keras config: expected a dict"),
    "model_config too deep": (lambda f: f.attrs.__setitem__("model_config", "[" * 5000 + "]" * 5000),
                              "nested at most 64 levels"),
    "keras_version a number": (lambda f: f.attrs.__setitem__("keras_version", 2), "keras_version: expected a string"),
    "weight_names numbers": (lambda f: f["model_weights/dense"].attrs.__setitem__("weight_names", np.arange(2)),
                             "weight_names: expected a string"),
    "weight_names missing dataset": (lambda f: f["model_weights/dense"].attrs.__setitem__(
        "weight_names", np.array([b"dense/kernel:0", b"dense/nothing:0"])), "datasets its weight_names list"),
    "byte-string weights": (lambda f: _replace(f, "model_weights/dense/dense/bias:0", np.array([b"1.0"] * 10)),
                            "expected floating-point weights"),
    "model_weights a dataset": (lambda f: _replace(f, "model_weights", np.zeros(3)),
                                "a legacy Keras model with a model_weights group"),
}


@pytest.mark.parametrize("case", sorted(H5_EDITS))
def test_bad_legacy_h5(tmp_path, capsys, case):
    edit, message = H5_EDITS[case]
    with h5py.File(H5, "r") as f:  # the edits name the Dense layer's group
        assert "dense" in f["model_weights"]
    refused(_rewrite_h5(H5, tmp_path / "bad.h5", edit), message, capsys, tmp_path)


# ------------------------------------------------------------------------------------------------------
# memory bombs: refused from what the headers declare, before inflating or reading
PEAK = r"""
import resource, sys, zipfile
from grunet.convert import from_keras
from grunet.errors import GrunetError
from_keras(sys.argv[2])  # a real model first: the baseline includes everything a conversion needs
before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
try:
    from_keras(sys.argv[1])
    print("accepted")
except GrunetError as e:
    print("refused:", e)
print("peak_growth_mib", (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before) / 1024)
"""


def peak(bomb: Path, baseline: Path) -> tuple[str, float]:
    out = subprocess.run([sys.executable, "-c", PEAK, str(bomb), str(baseline)], capture_output=True, text=True,
                         timeout=300, env=os.environ)
    lines = out.stdout.strip().splitlines()
    assert out.returncode == 0 and len(lines) == 2, out.stderr[-2000:]
    return lines[0], float(lines[1].split()[1])


def test_keras_weights_bomb_is_refused_before_inflating(tmp_path):
    parts = members()
    path = tmp_path / "bomb.keras"
    with zipfile.ZipFile(path, "w", compression=zipfile.ZIP_DEFLATED) as zf:
        zf.writestr("config.json", parts["config.json"])
        zf.writestr("metadata.json", parts["metadata.json"])
        with zf.open("model.weights.h5", "w", force_zip64=True) as f:
            zeros = bytes(16 << 20)
            for _ in range(32):  # 512 MiB of zeros, ~0.5 MiB on disk
                f.write(zeros)
    assert path.stat().st_size < 4 << 20
    line, growth = peak(path, BASE)
    assert line.startswith("refused:") and "model.weights.h5: expected at most" in line and "declared" in line
    assert growth < 64, growth


def test_keras_bomb_with_a_lying_header_stops_at_the_bound(tmp_path):
    """A member whose header declares a small size but whose data inflates further is cut at the bound."""
    from grunet.convert.keras_read import read_member

    path = tmp_path / "lying.keras"
    with zipfile.ZipFile(path, "w", compression=zipfile.ZIP_DEFLATED) as zf:
        zf.writestr("model.weights.h5", bytes(8 << 20))
    raw = bytearray(path.read_bytes())
    with zipfile.ZipFile(path) as zf:
        info = zf.getinfo("model.weights.h5")
    for offset in (info.header_offset + 22, raw.rfind(b"PK\x01\x02") + 24):  # local and central uncompressed size
        raw[offset:offset + 4] = (1000).to_bytes(4, "little")
    path.write_bytes(bytes(raw))
    with zipfile.ZipFile(path) as zf:
        with pytest.raises((GrunetError, zipfile.BadZipFile)):
            read_member(zf, "model.weights.h5", 4 << 20, path)


def test_config_json_bomb(tmp_path, capsys):
    parts = members()
    path = tmp_path / "bomb.keras"
    with zipfile.ZipFile(path, "w", compression=zipfile.ZIP_DEFLATED) as zf:
        for name, data in parts.items():
            zf.writestr(name, data if name != "config.json" else b" " * (64 << 20))
    assert path.stat().st_size < 1 << 20
    refused(path, r"config.json: expected at most 16,777,216 bytes", capsys, tmp_path)


def test_h5_dataset_declaring_terabytes(tmp_path, capsys):
    def huge(f):
        del f["layers/gru/cell/vars/0"]
        f["layers/gru/cell/vars"].create_dataset("0", shape=(1 << 20, 1 << 20), dtype="f4", chunks=(64, 64),
                                                 compression="gzip")
    path = write_zip(tmp_path / "huge.keras", _set_weights(members(), huge))
    assert path.stat().st_size < 1 << 20
    refused(path, r"kernel: expected shape \(28, 225\) .*got \(1048576, 1048576\)", capsys, tmp_path)
    line, growth = peak(path, BASE)
    assert line.startswith("refused:") and growth < 64

    def huge_legacy(f):
        name = [n for n in f["model_weights"] if n.startswith("gru")][0]
        group = f["model_weights"][name]
        kernel = [n.decode() if isinstance(n, bytes) else n for n in group.attrs["weight_names"]][0]
        del group[kernel]
        group.create_dataset(kernel, shape=(1 << 20, 1 << 20), dtype="f8", chunks=(64, 64), compression="gzip")
    path = _rewrite_h5(H5, tmp_path / "huge.h5", huge_legacy)
    refused(path, r"kernel: expected shape \(28, 225\)", capsys, tmp_path)


# ------------------------------------------------------------------------------------------------------
# output paths: every writer goes through the atomic writes
WRITERS = [".pt", ".keras", ".h5", ".onnx"]


def _no_temp_files(directory: Path) -> bool:
    return not [p for p in directory.rglob(".*.tmp")]


@pytest.mark.parametrize("ext", WRITERS)
def test_convert_to_a_missing_directory(tmp_path, capsys, ext):
    out = tmp_path / "missing" / f"m{ext}"
    assert main(["convert", str(FIX / "keras2_tutorial_activation.h5" if ext == ".h5" else BASE), str(out)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and f"{out}: expected to write a file in an existing, writable directory" in err
    assert not out.parent.exists()


@pytest.mark.parametrize("ext", WRITERS)
def test_convert_onto_a_directory(tmp_path, capsys, ext):
    out = tmp_path / f"m{ext}"
    out.mkdir()
    (out / "keep").write_text("x")
    src = FIX / "keras2_tutorial_activation.h5" if ext == ".h5" else BASE
    assert main(["convert", str(src), str(out)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and f"{out}: expected to write a file" in err
    assert (out / "keep").read_text() == "x" and _no_temp_files(tmp_path)


@pytest.mark.parametrize("ext", WRITERS)
def test_convert_into_a_read_only_place(tmp_path, capsys, ext):
    out = Path("/proc") / f"grunet-test{ext}"  # read-only even for root
    src = FIX / "keras2_tutorial_activation.h5" if ext == ".h5" else BASE
    assert main(["convert", str(src), str(out)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and f"{out}: expected to write" in err and not out.exists()


@pytest.mark.parametrize("where", ["missing", "directory", "read-only"])
def test_export_output_paths(tmp_path, capsys, where):
    assert main(["convert", str(BASE), str(tmp_path / "m.pt")]) == 0
    out = {"missing": tmp_path / "no" / "m.onnx", "directory": tmp_path / "d.onnx",
           "read-only": Path("/proc/grunet-test.onnx")}[where]
    if where == "directory":
        out.mkdir()
    capsys.readouterr()
    assert main(["export", str(tmp_path / "m.pt"), str(out)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and f"{out}: expected to write" in err and _no_temp_files(tmp_path)


@pytest.mark.parametrize("opset", ["13", "24", "99"])
def test_opset_out_of_range(tmp_path, capsys, opset):
    assert main(["convert", str(BASE), str(tmp_path / "m.pt")]) == 0
    capsys.readouterr()
    for argv in (["export", str(tmp_path / "m.pt"), str(tmp_path / "m.onnx"), "--opset", opset],
                 ["convert", str(tmp_path / "none.keras"), str(tmp_path / "m.onnx"), "--opset", opset]):
        assert main(argv) == 2
        err = capsys.readouterr().err
        assert err.count("\n") == 1 and "--opset: expected an integer from 14 to 23" in err and f"got {opset}" in err
        assert not (tmp_path / "m.onnx").exists()
