"""Keras model configs (Keras 2 and 3, Sequential or functional) -> a chain of grunet layer specs.

Accepted: a chain x -> layer -> layer -> ... -> y made of InputLayer, GRU, Bidirectional(GRU, merge_mode
"concat") and Dense (linear | relu | tanh | sigmoid | softmax). Anything else is refused with the layer's
name and type: a layer is never dropped.

GRU settings read: units, reset_after (absent in Keras <= 2.1 files: False), use_bias, return_sequences,
recurrent_activation: "sigmoid", or "hard_sigmoid", which depends on the Keras that wrote the file:
    Keras 2: clip(0.2 x + 0.5, 0, 1) -> "hard_sigmoid_keras2";  Keras 3: clip(x / 6 + 0.5, 0, 1) -> "hard_sigmoid_keras3".
Refused: activation other than tanh, go_backwards, stateful, return_state, time_major (they change the maths
or the outputs). Dropout settings only act in training and are ignored.

Keras 3 weight files address layers by position, not name: ``layers/<snake_case(class)>[_<n>]`` in the order of
``model.layers`` (Sequential without its InputLayer, functional models with it); ``key`` holds that name.
"""
from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Optional

from ..errors import GrunetError, expect
from .stack import DENSE_ACTIVATIONS, DenseSpec, GRUSpec, LayerSpec

SUPPORTED = "InputLayer, GRU, Bidirectional(GRU), Dense"


@dataclass
class KerasLayer:
    name: str
    class_name: str
    spec: LayerSpec
    key: str  # the layer's group under layers/ in a Keras 3 weights file


@dataclass
class KerasModel:
    input_shape: tuple[Optional[int], Optional[int]]  # (T or None, I or None when the config does not say)
    layers: list[KerasLayer]
    keras3_style: bool  # the config carries Keras 3's "module" entries


def snake_case(name: str) -> str:
    """Keras's naming.to_snake_case for class names: GRU -> gru, InputLayer -> input_layer."""
    name = re.sub(r"(.)([A-Z][a-z]+)", r"\1_\2", name)
    return re.sub(r"([a-z])([A-Z])", r"\1_\2", name).lower()


def _positional_keys(entries: list[dict]) -> list[str]:
    used: dict[str, int] = {}
    keys = []
    for entry in entries:
        base = snake_case(entry.get("class_name", ""))
        n = used.get(base, 0)
        keys.append(base if n == 0 else f"{base}_{n}")
        used[base] = n + 1
    return keys


def _name(entry: dict) -> str:
    cfg = entry.get("config") if isinstance(entry.get("config"), dict) else {}
    return str(entry.get("name") or cfg.get("name") or "?")


def _what(entry: dict) -> str:
    return f"layer {_name(entry)!r} ({entry.get('class_name', '?')})"


def _shape(value, where: str) -> tuple[Optional[int], Optional[int]]:
    expect(isinstance(value, (list, tuple)) and len(value) == 3, where,
           "an input shape (batch, T, I) for a sequence model", repr(value))
    return (value[1], value[2])


def _input_shape_of(entry: dict) -> Optional[tuple]:
    cfg = entry.get("config", {})
    for key in ("batch_shape", "batch_input_shape"):
        if cfg.get(key) is not None:
            return _shape(cfg[key], f"{_what(entry)} {key}")
    return None


def _inbound(entry: dict) -> list[str]:
    """Names of the layers whose outputs this functional-model layer reads (Keras 2 and 3 node formats)."""
    nodes = entry.get("inbound_nodes") or []
    if not nodes:
        return []
    if len(nodes) != 1:
        raise GrunetError(f"{_what(entry)}: expected a layer called once, got {len(nodes)} calls (shared layers "
                          "are not supported)")
    node = nodes[0]
    if isinstance(node, dict):  # Keras 3: {"args": [...], "kwargs": {...}} holding __keras_tensor__ entries
        found: list[str] = []

        def walk(o):
            if isinstance(o, dict):
                if o.get("class_name") == "__keras_tensor__":
                    found.append(o["config"]["keras_history"][0])
                else:
                    for v in o.values():
                        walk(v)
            elif isinstance(o, (list, tuple)):
                for v in o:
                    walk(v)

        walk(node)
        return found
    return [item[0] for item in node]  # Keras 2: [[name, node_index, tensor_index, kwargs], ...]


def _endpoints(value, where: str) -> list[str]:
    if isinstance(value, list) and value and isinstance(value[0], str):  # Keras 3 single ["name", 0, 0]
        return [value[0]]
    expect(isinstance(value, list), where, "a list of [name, node, tensor]", repr(value))
    return [v[0] for v in value]


def _gru_spec(cfg: dict, name: str, what: str, major: Optional[int], bidirectional: bool) -> GRUSpec:
    act = cfg.get("activation", "tanh")
    if act != "tanh":
        raise GrunetError(f"{what}: expected activation 'tanh', got {act!r}")
    for key in ("go_backwards", "stateful", "return_state", "time_major"):
        if cfg.get(key):
            raise GrunetError(f"{what}: expected {key}=False, got {key}=True (not supported)")
    rec = cfg.get("recurrent_activation", "sigmoid")
    if rec == "hard_sigmoid":
        if major is None:
            raise GrunetError(f"{what}: recurrent_activation 'hard_sigmoid' is clip(0.2x+0.5, 0, 1) in Keras 2 but "
                              "clip(x/6+0.5, 0, 1) in Keras 3, and nothing in the file says which Keras wrote it: "
                              "expected keras_version='2' or '3', got none")
        rec = "hard_sigmoid_keras2" if major < 3 else "hard_sigmoid_keras3"
    elif rec != "sigmoid":
        raise GrunetError(f"{what}: expected recurrent_activation 'sigmoid' or 'hard_sigmoid', got {rec!r}")
    units = cfg.get("units")
    expect(isinstance(units, int) and not isinstance(units, bool) and units >= 1, f"{what} units",
           "an integer >= 1", repr(units))
    return GRUSpec(name=name, units=units, reset_after=bool(cfg.get("reset_after", False)),
                   recurrent_activation=rec, use_bias=bool(cfg.get("use_bias", True)),
                   return_sequences=bool(cfg.get("return_sequences", False)), bidirectional=bidirectional)


def layer_spec(entry: dict, major: Optional[int]) -> LayerSpec:
    """The grunet spec of one Keras layer entry {"class_name", "config"}; refuses anything unsupported."""
    cls, cfg, name, what = entry.get("class_name"), entry.get("config", {}), _name(entry), _what(entry)
    if cls == "GRU":
        return _gru_spec(cfg, name, what, major, bidirectional=False)
    if cls == "Bidirectional":
        inner = cfg.get("layer", {})
        if inner.get("class_name") != "GRU":
            raise GrunetError(f"{what}: expected a wrapped GRU, got {inner.get('class_name')!r} (not supported)")
        mode = cfg.get("merge_mode", "concat")
        if mode != "concat":
            raise GrunetError(f"{what}: expected merge_mode 'concat', got {mode!r} (not supported)")
        spec = _gru_spec(inner.get("config", {}), name, what, major, bidirectional=True)
        back = cfg.get("backward_layer")
        if back is not None:
            back_cfg = dict(back.get("config", {}), go_backwards=False)
            if back.get("class_name") != "GRU" or _gru_spec(back_cfg, name, what, major, True) != spec:
                raise GrunetError(f"{what}: expected a backward_layer with the forward GRU's settings, got a "
                                  f"different {back.get('class_name')!r} (not supported)")
        return spec
    if cls == "Dense":
        act = cfg.get("activation", "linear")
        if act not in DENSE_ACTIVATIONS:
            raise GrunetError(f"{what}: expected activation in {list(DENSE_ACTIVATIONS)}, got {act!r}")
        units = cfg.get("units")
        expect(isinstance(units, int) and units >= 1, f"{what} units", "an integer >= 1", repr(units))
        return DenseSpec(name=name, units=units, activation=act, use_bias=bool(cfg.get("use_bias", True)))
    raise GrunetError(f"{what}: expected one of the supported layers ({SUPPORTED}), got {cls} "
                      "(unsupported layers are refused, never skipped)")


def parse_model(config: dict, major: Optional[int]) -> KerasModel:
    """A Keras model config {"class_name": "Sequential" | "Functional" | "Model", "config": ...} -> KerasModel."""
    expect(isinstance(config, dict) and "class_name" in config, "Keras config",
           "a dict with 'class_name' and 'config' (a model's config.json or model_config)",
           type(config).__name__ if not isinstance(config, dict) else f"keys {sorted(config)}")
    cls, cfg = config["class_name"], config.get("config")
    keras3_style = "module" in config
    if cls == "Sequential":
        entries = cfg["layers"] if isinstance(cfg, dict) else cfg  # Keras <= 2.1: the config is the list
        expect(isinstance(entries, list), "Sequential config layers", "a list", type(entries).__name__)
        inputs = [e for e in entries if e.get("class_name") == "InputLayer"]
        body = [e for e in entries if e.get("class_name") != "InputLayer"]
        keys = _positional_keys(body)
        shape = None
        for e in inputs + body[:1]:
            shape = shape or _input_shape_of(e)
        if shape is None and isinstance(cfg, dict) and cfg.get("build_input_shape") is not None:
            shape = _shape(cfg["build_input_shape"], "Sequential build_input_shape")
        if shape is None and (config.get("build_config") or {}).get("input_shape") is not None:
            shape = _shape(config["build_config"]["input_shape"], "Sequential build_config input_shape")
    elif cls in ("Functional", "Model"):
        entries = cfg.get("layers", [])
        by_name = {_name(e): e for e in entries}
        all_keys = dict(zip((_name(e) for e in entries), _positional_keys(entries)))
        outs = _endpoints(cfg.get("output_layers"), "model output_layers")
        ins = _endpoints(cfg.get("input_layers"), "model input_layers")
        expect(len(outs) == 1 and len(ins) == 1, "model", "one input and one output", f"inputs {ins}, outputs {outs}")
        chain, name = [], outs[0]
        while True:
            expect(name in by_name, "model", f"a layer named {name!r} in its config", "none")
            entry = by_name[name]
            chain.append(entry)
            if entry.get("class_name") == "InputLayer" or len(chain) > len(entries):
                break
            sources = _inbound(entry)
            if len(sources) != 1:
                raise GrunetError(f"{_what(entry)}: expected one input tensor (a chain of layers), got {len(sources)}")
            name = sources[0]
        chain.reverse()
        outside = [_what(e) for e in entries if e not in chain]
        if outside:
            raise GrunetError(f"model: expected a chain of layers from input to output, got {', '.join(outside)} "
                              "outside it (branching models are not supported)")
        shape = _input_shape_of(chain[0]) if chain[0].get("class_name") == "InputLayer" else None
        body = [e for e in chain if e.get("class_name") != "InputLayer"]
        keys = [all_keys[_name(e)] for e in body]
    else:
        raise GrunetError(f"Keras model: expected class Sequential or Functional, got {cls!r} (not supported)")
    expect(body, "Keras model", "at least one layer besides the input", "none")
    layers = [KerasLayer(_name(e), e.get("class_name", "?"), layer_spec(e, major), key) for e, key in zip(body, keys)]
    if shape is None:
        shape = (None, None)
    return KerasModel(input_shape=shape, layers=layers, keras3_style=keras3_style)

