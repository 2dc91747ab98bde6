"""to_keras_h5: write a StackModel (or GRU SequenceClassifier) as a Keras 2 full-model ``.h5`` file, without Keras.

Layout (tf.keras 2.4-2.15, as TensorFlow's Keras 2 wrote it):
    root attrs        keras_version "2.4.0", backend "tensorflow", model_config (JSON of a Sequential model
                      whose first entry is an InputLayer with batch_input_shape [null, T, I])
    model_weights     attrs layer_names, keras_version, backend
      <layer>         attr weight_names, e.g. ["gru/kernel:0", "gru/recurrent_kernel:0", "gru/bias:0"];
                      Bidirectional: "<name>/forward_<name>/kernel:0", ... then the backward ones;
                      Embedding: ["<name>/embeddings:0"]; layers without weights: an empty list
        <weight name> the dataset (Keras layout, layout.torch_to_keras)
In Keras 2, hard_sigmoid is clip(0.2x + 0.5, 0, 1): hard_sigmoid_keras3 (x/6 + 0.5) has no Keras 2 form and is
refused. Note that Keras 3 reading this file would apply its own hard_sigmoid formula. The cell options are
written or refused as by to_keras.
"""
from __future__ import annotations

import io
import json
import os
from typing import Union

import numpy as np
from torch import nn

from ..errors import GrunetError
from ..fileio import write_bytes
from .keras_read import _h5py
from .keras_write import check_keras_cell, keras_arrays, keras_class, simple_config
from .stack import DenseSpec, EmbeddingSpec, GRUSpec, StackModel, as_stack

KERAS2_VERSION = "2.4.0"
KERAS2_ACTIVATIONS = {"sigmoid": "sigmoid", "hard_sigmoid_keras2": "hard_sigmoid"}


def _gru_config(spec: GRUSpec, name: str) -> dict:
    return {"name": name, "trainable": True, "dtype": "float32", "return_sequences": spec.return_sequences,
            "return_state": False, "go_backwards": False, "stateful": False, "unroll": False, "units": spec.units,
            "activation": "tanh", "recurrent_activation": KERAS2_ACTIVATIONS[spec.recurrent_activation],
            "use_bias": spec.use_bias, "dropout": spec.input_dropout, "recurrent_dropout": spec.recurrent_dropout,
            "reset_after": spec.reset_after}


def keras2_config(stack: StackModel) -> dict:
    for spec in stack.specs:
        if isinstance(spec, GRUSpec):
            check_keras_cell(spec, "Keras 2 file")
        if isinstance(spec, GRUSpec) and spec.recurrent_activation not in KERAS2_ACTIVATIONS:
            raise GrunetError(f"layer {spec.name!r} (GRU): expected recurrent_activation 'sigmoid' or "
                              f"'hard_sigmoid_keras2' for a Keras 2 file, got {spec.recurrent_activation!r} (Keras 2's "
                              "hard_sigmoid is clip(0.2x+0.5, 0, 1)): write a Keras 3 .keras instead")
    layers = []
    for spec in stack.specs:
        if isinstance(spec, GRUSpec) and spec.bidirectional:
            entry = {"class_name": "Bidirectional", "config": {
                "name": spec.name, "trainable": True, "dtype": "float32", "merge_mode": spec.merge_mode,
                "layer": {"class_name": "GRU", "config": _gru_config(spec, spec.name)}}}
        elif isinstance(spec, GRUSpec):
            entry = {"class_name": "GRU", "config": _gru_config(spec, spec.name)}
        else:
            config = simple_config(spec)
            if isinstance(spec, EmbeddingSpec):
                config["input_length"] = stack.input_shape[0]
            entry = {"class_name": keras_class(spec), "config": config}
        layers.append(entry)
    steps, features = stack.input_shape
    ids = isinstance(stack.specs[0], EmbeddingSpec)
    layers.insert(0, {"class_name": "InputLayer", "config": {
        "batch_input_shape": [None, steps] if ids else [None, steps, features], "dtype": "int32" if ids else "float32",
        "sparse": False, "ragged": False, "name": "input_1"}})
    return {"class_name": "Sequential", "config": {"name": "sequential", "layers": layers}}


def _weight_names(spec) -> list[str]:
    if isinstance(spec, GRUSpec):
        own = ["kernel", "recurrent_kernel"] + (["bias"] if spec.use_bias else [])
        if spec.bidirectional:
            return [f"{spec.name}/{d}_{spec.name}/{w}:0" for d in ("forward", "backward") for w in own]
        return [f"{spec.name}/{w}:0" for w in own]
    if isinstance(spec, DenseSpec):
        return [f"{spec.name}/{w}:0" for w in (["kernel", "bias"] if spec.use_bias else ["kernel"])]
    return [f"{spec.name}/embeddings:0"] if isinstance(spec, EmbeddingSpec) else []


def to_keras_h5(model: nn.Module, path: Union[str, os.PathLike]) -> None:
    """Write ``model`` as a Keras 2 full-model HDF5 file (see the module docstring)."""
    h5py = _h5py()
    stack = as_stack(model)
    config = keras2_config(stack)
    buffer = io.BytesIO()
    with h5py.File(buffer, "w") as f:
        f.attrs["keras_version"] = KERAS2_VERSION
        f.attrs["backend"] = "tensorflow"
        f.attrs["model_config"] = json.dumps(config)
        g = f.create_group("model_weights")
        g.attrs["layer_names"] = np.array([s.name.encode() for s in stack.specs])
        g.attrs["keras_version"] = KERAS2_VERSION
        g.attrs["backend"] = "tensorflow"
        for spec, arrays in zip(stack.specs, keras_arrays(stack)):
            lg = g.create_group(spec.name)
            names = _weight_names(spec)
            # Keras 2 writes an empty list of names as an empty float array
            lg.attrs["weight_names"] = np.array([n.encode() for n in names]) if names else np.zeros(0)
            for n, a in zip(names, arrays):
                lg.create_dataset(n, data=np.ascontiguousarray(a, dtype=np.float32))
    write_bytes(path, buffer.getvalue())
