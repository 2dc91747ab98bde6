"""to_keras: write a StackModel (or a GRU SequenceClassifier) as a Keras 3 ``.keras`` archive, without Keras.

The archive is what ``keras.saving.load_model`` reads: a zip holding
    metadata.json      {"keras_version": "3.0.0", "date_saved": ..., "writer": "grunet ..."}
    config.json        a Sequential model: InputLayer(batch_shape (None, T, I), or (None, T) int32 ids before an
                       Embedding), then each layer with the StackModel's settings (keras_class: GRU,
                       Bidirectional(GRU) with its merge_mode, Dense, Activation, Dropout, SpatialDropout1D,
                       Flatten, Masking, Embedding)
    model.weights.h5   Keras 3's layout, layers addressed by position (see keras_config):
                       layers/<key>/vars (name attr; a group for every layer, empty for those without
                       weights), layers/<key>/cell/vars/{0,1,2}, layers/<key>/{forward,backward}_layer/...,
                       layers/<key>/vars/{0,1} for Dense, layers/<key>/vars/0 for Embedding; vars at the root
Weights go through layout.torch_to_keras (a permutation: exact). hard_sigmoid_keras2 has no Keras 3 form
(Keras 3's hard_sigmoid is x/6 + 0.5), so such a model is refused here; to_keras_h5 writes it for Keras 2.
A GRU's input_dropout and recurrent_dropout are written as Keras's dropout and recurrent_dropout; layer_norm
and zoneout, which Keras's GRU lacks, are refused by name; weight_dropout (training only) is not written.
"""
from __future__ import annotations

import datetime
import io
import json
import os
import zipfile
from typing import Optional, Union

import numpy as np
from torch import nn

from .. import __version__
from ..errors import GrunetError
from ..fileio import atomic_open
from .keras_config import _positional_keys
from .keras_read import _h5py
from .layout import torch_to_keras
from .stack import (ActivationSpec, DenseSpec, DropoutSpec, EmbeddingSpec, FlattenSpec, GRUSpec, LayerSpec,
                    MaskingSpec, StackModel, as_stack)

KERAS3_ACTIVATIONS = {"sigmoid": "sigmoid", "hard_sigmoid_keras3": "hard_sigmoid"}


def keras_class(spec: LayerSpec) -> str:
    """The Keras class that ``spec`` stands for."""
    if isinstance(spec, GRUSpec):
        return "Bidirectional" if spec.bidirectional else "GRU"
    if isinstance(spec, DropoutSpec):
        return "SpatialDropout1D" if spec.spatial else "Dropout"
    return {DenseSpec: "Dense", ActivationSpec: "Activation", FlattenSpec: "Flatten", MaskingSpec: "Masking",
            EmbeddingSpec: "Embedding"}[type(spec)]


def simple_config(spec: LayerSpec) -> dict:
    """The Keras config of a layer other than GRU and Bidirectional (the same keys in Keras 2 and 3)."""
    base = {"name": spec.name, "trainable": True, "dtype": "float32"}
    if isinstance(spec, DenseSpec):
        return {**base, "units": spec.units, "activation": spec.activation, "use_bias": spec.use_bias}
    if isinstance(spec, ActivationSpec):
        return {**base, "activation": spec.activation}
    if isinstance(spec, DropoutSpec):  # Keras 3's SpatialDropout1D takes no 'trainable'
        if spec.spatial:
            return {"name": spec.name, "dtype": "float32", "rate": spec.rate, "seed": None}
        return {**base, "rate": spec.rate, "seed": None, "noise_shape": None}
    if isinstance(spec, FlattenSpec):
        return {**base, "data_format": "channels_last"}
    if isinstance(spec, MaskingSpec):
        return {**base, "mask_value": spec.mask_value}
    return {**base, "input_dim": spec.input_dim, "output_dim": spec.output_dim, "mask_zero": spec.mask_zero}


def keras_arrays(stack: StackModel) -> list[list[np.ndarray]]:
    """Each layer's weights in Keras's order and layout (Bidirectional: forward's then backward's)."""
    out = []
    for spec, layer in zip(stack.specs, stack.layers):
        if isinstance(spec, GRUSpec):
            arrays = []
            for suffix in ("", "_reverse")[: spec.directions]:
                w_ih, w_hh, b_ih, b_hh = (None if t is None else t.detach().cpu().numpy()
                                          for t in layer.layer_weights(0, suffix).gru)
                arrays += torch_to_keras(w_ih, w_hh, b_ih, b_hh, spec.reset_after)
            out.append(arrays)
        elif isinstance(spec, DenseSpec):
            arrays = [np.ascontiguousarray(layer.weight.detach().cpu().numpy().T)]
            if layer.bias is not None:
                arrays.append(layer.bias.detach().cpu().numpy().copy())
            out.append(arrays)
        elif isinstance(spec, EmbeddingSpec):
            out.append([layer.weight.detach().cpu().numpy().copy()])
        else:
            out.append([])
    return out


def _gru_config(spec: GRUSpec, name: str, go_backwards: bool = False) -> dict:
    return {"name": name, "trainable": True, "dtype": "float32", "return_sequences": spec.return_sequences,
            "return_state": False, "go_backwards": go_backwards, "stateful": False, "unroll": False,
            "units": spec.units, "activation": "tanh",
            "recurrent_activation": KERAS3_ACTIVATIONS[spec.recurrent_activation], "use_bias": spec.use_bias,
            "dropout": spec.input_dropout, "recurrent_dropout": spec.recurrent_dropout, "reset_after": spec.reset_after}


def check_keras_cell(spec: GRUSpec, file: str) -> None:
    """Refuse the cell options a Keras GRU has no setting for and that change its outputs: layer norm, and
    zoneout (whose eval step mixes the old state in). weight_dropout acts in training only and is not written."""
    for option, value in (("layer_norm", spec.layer_norm), ("zoneout", spec.zoneout)):
        if value:
            raise GrunetError(f"layer {spec.name!r} (GRU): expected a GRU without {option} for a {file} (a Keras "
                              f"GRU has no {option}), got {option}={value}")


def _entry(class_name: str, config: dict, input_shape: Optional[list] = None) -> dict:
    entry = {"module": "keras.layers", "class_name": class_name, "config": config, "registered_name": None}
    if input_shape is not None:
        entry["build_config"] = {"input_shape": input_shape}
    return entry


def keras3_config(stack: StackModel) -> dict:
    """The config.json of a Keras 3 Sequential model equal to ``stack``."""
    for spec in stack.specs:
        if isinstance(spec, GRUSpec):
            check_keras_cell(spec, "Keras 3 file")
        if isinstance(spec, GRUSpec) and spec.recurrent_activation not in KERAS3_ACTIVATIONS:
            raise GrunetError(f"layer {spec.name!r} (GRU): expected recurrent_activation 'sigmoid' or "
                              f"'hard_sigmoid_keras3' for a Keras 3 file, got {spec.recurrent_activation!r} (Keras 3's "
                              "hard_sigmoid is clip(x/6+0.5, 0, 1), not 0.2x+0.5): write a Keras 2 .h5 instead")
    steps, features = stack.input_shape
    ids = isinstance(stack.specs[0], EmbeddingSpec)
    batch_shape = [None, steps] if ids else [None, steps, features]
    layers = [{"module": "keras.layers", "class_name": "InputLayer", "registered_name": None,
               "config": {"batch_shape": batch_shape, "dtype": "int32" if ids else "float32", "sparse": False,
                          "name": "input_layer"}}]
    shape = batch_shape
    for spec in stack.specs:
        if isinstance(spec, GRUSpec):
            if spec.bidirectional:
                inner = _entry("GRU", _gru_config(spec, f"forward_{spec.name}"), shape)
                back = _entry("GRU", _gru_config(spec, f"backward_{spec.name}", go_backwards=True), shape)
                layers.append(_entry("Bidirectional", {"name": spec.name, "trainable": True, "dtype": "float32",
                                                       "merge_mode": spec.merge_mode, "layer": inner,
                                                       "backward_layer": back}, shape))
            else:
                layers.append(_entry("GRU", _gru_config(spec, spec.name), shape))
            shape = [None, steps, spec.width] if spec.return_sequences else [None, spec.width]
            continue
        layers.append(_entry(keras_class(spec), simple_config(spec), shape))
        if isinstance(spec, DenseSpec):
            shape = shape[:-1] + [spec.units]
        elif isinstance(spec, EmbeddingSpec):
            shape = shape + [spec.output_dim]
        elif isinstance(spec, FlattenSpec) and len(shape) == 3:
            shape = [None, shape[1] * shape[2]]
    return {"module": "keras", "class_name": "Sequential", "registered_name": None,
            "config": {"name": "sequential", "trainable": True, "dtype": "float32", "layers": layers,
                       "build_input_shape": batch_shape},
            "build_config": {"input_shape": batch_shape}}


def _vars(group, name: str, arrays: list[np.ndarray]):
    v = group.create_group("vars")
    v.attrs["name"] = name
    for i, a in enumerate(arrays):
        v.create_dataset(str(i), data=np.ascontiguousarray(a, dtype=np.float32))
    return v


def keras3_weights(stack: StackModel) -> bytes:
    """model.weights.h5 in Keras 3's layout, as bytes."""
    h5py = _h5py()
    keys = _positional_keys([{"class_name": keras_class(s)} for s in stack.specs])
    buffer = io.BytesIO()
    with h5py.File(buffer, "w") as f:
        root = f.create_group("layers")
        for spec, key, arrays in zip(stack.specs, keys, keras_arrays(stack)):
            g = root.create_group(key)
            _vars(g, spec.name, arrays if not isinstance(spec, GRUSpec) else [])
            if not isinstance(spec, GRUSpec):
                continue
            if spec.bidirectional:
                n = len(arrays) // 2
                for part, prefix, chunk in (("forward_layer", "forward_", arrays[:n]),
                                            ("backward_layer", "backward_", arrays[n:])):
                    pg = g.create_group(part)
                    _vars(pg, prefix + spec.name, [])
                    _vars(pg.create_group("cell"), "gru_cell", chunk)
            else:
                _vars(g.create_group("cell"), "gru_cell", arrays)
        _vars(f, "sequential", [])
    return buffer.getvalue()


def to_keras(model: nn.Module, path: Union[str, os.PathLike]) -> None:
    """Write ``model`` (StackModel or GRU SequenceClassifier) as a Keras 3 .keras archive at ``path``."""
    stack = as_stack(model)
    config = keras3_config(stack)
    metadata = {"keras_version": "3.0.0",
                "date_saved": datetime.datetime.now().strftime("%Y-%m-%d@%H:%M:%S"),
                "writer": f"grunet {__version__}"}
    weights = keras3_weights(stack)
    with atomic_open(path, "wb") as f:
        with zipfile.ZipFile(f, "w", compression=zipfile.ZIP_STORED) as zf:
            zf.writestr("metadata.json", json.dumps(metadata))
            zf.writestr("config.json", json.dumps(config))
            zf.writestr("model.weights.h5", weights)
