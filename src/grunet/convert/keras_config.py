"""Keras model configs (Keras 2 and 3, Sequential or functional) -> a chain of grunet layer specs.

Accepted: a chain x -> layer -> layer -> ... -> y made of InputLayer, GRU, Bidirectional(GRU, merge_mode
concat | sum | mul | ave), Dense and Activation (linear | relu | tanh | sigmoid | softmax), Dropout and
SpatialDropout1D (identity at inference), Flatten (channels_last), Masking, Embedding (mask_zero too; first
layer only). Anything else is refused with the layer's name and type: a layer is never dropped.

GRU settings read: units, reset_after (absent in Keras <= 2.1 files: False), use_bias, return_sequences,
recurrent_activation: "sigmoid", or "hard_sigmoid", which depends on the Keras that wrote the file:
    Keras 2: clip(0.2 x + 0.5, 0, 1) -> "hard_sigmoid_keras2";  Keras 3: clip(x / 6 + 0.5, 0, 1) -> "hard_sigmoid_keras3".
Refused: activation other than tanh, go_backwards, stateful, return_state, time_major, zero_output_for_mask
outside a Bidirectional (they change the maths or the outputs). The GRU's dropout settings map to grunet.GRU's
cell options (they act in training only): ``dropout`` -> input_dropout, ``recurrent_dropout`` -> recurrent_dropout.

Every value is type-checked as it is read (the config is untrusted): a number where a string, list or dict
belongs is one GrunetError line naming the layer and key.

Keras 3 weight files address layers by position, not name: ``layers/<snake_case(class)>[_<n>]`` in the order of
``model.layers`` (Sequential without its InputLayer, functional models with it); ``key`` holds that name.
"""
from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Optional

from ..errors import GrunetError, expect
from .stack import (DENSE_ACTIVATIONS, MERGE_MODES, ActivationSpec, DenseSpec, DropoutSpec, EmbeddingSpec,
                    FlattenSpec, GRUSpec, LayerSpec, MaskingSpec)

SUPPORTED = ("InputLayer, GRU, Bidirectional(GRU), Dense, Activation, Dropout, SpatialDropout1D, Flatten, Masking, "
             "Embedding")
_MISSING = object()


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


def _short(value) -> str:
    text = repr(value)
    return text if len(text) <= 80 else text[:77] + "..."


def get(d: dict, key: str, types, what: str, default=_MISSING):
    """d[key] checked against ``types`` (bool is not an int here); ``default`` when absent (or refused)."""
    if key not in d:
        expect(default is not _MISSING, what, f"a key {key!r}", "none")
        return default
    value = d[key]
    types = types if isinstance(types, tuple) else (types,)
    ok = isinstance(value, types) and not (isinstance(value, bool) and bool not in types)
    names = " or ".join("null" if t is type(None) else t.__name__ for t in types)
    expect(ok, f"{what} {key}", names, _short(value))
    return value


def _label(value) -> str:
    """A class name as written when it is plain text, else its repr (one line, bounded)."""
    return value if isinstance(value, str) and value.isprintable() and len(value) <= 80 else _short(value)


def _class(entry, what: str = "Keras layer") -> str:
    expect(isinstance(entry, dict), what, "a dict with 'class_name' and 'config'", type(entry).__name__)
    return get(entry, "class_name", str, what)


def _cfg(entry: dict) -> dict:
    cfg = entry.get("config", {})
    expect(isinstance(cfg, dict), f"layer {_short(entry.get('class_name'))} config", "a dict", type(cfg).__name__)
    return cfg


def _positional_keys(entries: list[dict]) -> list[str]:
    used: dict[str, int] = {}
    keys = []
    for entry in entries:
        base = snake_case(entry.get("class_name", "") if isinstance(entry.get("class_name", ""), str) else "")
        n = used.get(base, 0)
        keys.append(base if n == 0 else f"{base}_{n}")
        used[base] = n + 1
    return keys


def _name(entry: dict) -> str:
    name = entry.get("name")
    if name is None:
        cfg = entry.get("config")
        name = cfg.get("name") if isinstance(cfg, dict) else None
    expect(name is None or isinstance(name, str), f"layer {_short(entry.get('class_name'))} name", "a string",
           _short(name))
    return name or "?"


def _what(entry: dict) -> str:
    return f"layer {_name(entry)!r} ({_label(entry.get('class_name', '?'))})"


def _dim(v, where: str) -> Optional[int]:
    expect(v is None or (isinstance(v, int) and not isinstance(v, bool) and v >= 1), where,
           "None or an integer >= 1", _short(v))
    return v


def _shape(value, where: str) -> tuple[Optional[int], Optional[int]]:
    """(T, I) of a (batch, T, I) input, or (T, None) of a (batch, T) input of token ids."""
    expect(isinstance(value, (list, tuple)) and len(value) in (2, 3), where,
           "an input shape (batch, T, I), or (batch, T) for token ids", _short(value))
    return (_dim(value[1], where), _dim(value[2], where) if len(value) == 3 else None)


def _input_shape_of(entry: dict) -> Optional[tuple]:
    cfg = _cfg(entry)
    for key in ("batch_shape", "batch_input_shape"):
        if cfg.get(key) is not None:
            return _shape(cfg[key], f"{_what(entry)} {key}")
    return None


def _history_name(o: dict, what: str) -> str:
    cfg = get(o, "config", dict, what)
    history = get(cfg, "keras_history", list, what)
    expect(len(history) >= 1 and isinstance(history[0], str), f"{what} keras_history", "[layer name, node, tensor]",
           _short(history))
    return history[0]


def _inbound(entry: dict) -> list[str]:
    """Names of the layers whose outputs this functional-model layer reads (Keras 2 and 3 node formats)."""
    what = _what(entry)
    nodes = get(entry, "inbound_nodes", (list, type(None)), what, []) or []
    if not nodes:
        return []
    if len(nodes) != 1:
        raise GrunetError(f"{what}: expected a layer called once, got {len(nodes)} calls (shared layers "
                          "are not supported)")
    node = nodes[0]
    if isinstance(node, dict):  # Keras 3: {"args": [...], "kwargs": {...}} holding __keras_tensor__ entries
        found: list[str] = []
        stack = [node]  # the config's depth is bounded (keras_json), but walk without recursion anyway
        while stack:
            o = stack.pop()
            if isinstance(o, dict):
                if o.get("class_name") == "__keras_tensor__":
                    found.append(_history_name(o, f"{what} inbound tensor"))
                else:
                    stack.extend(reversed(list(o.values())))
            elif isinstance(o, (list, tuple)):
                stack.extend(reversed(o))
        return found
    expect(isinstance(node, list) and all(isinstance(i, list) and i and isinstance(i[0], str) for i in node),
           f"{what} inbound_nodes", "[[name, node, tensor, kwargs], ...]", _short(node))
    return [item[0] for item in node]  # Keras 2: [[name, node_index, tensor_index, kwargs], ...]


def _endpoints(value, where: str) -> list[str]:
    if isinstance(value, list) and value and isinstance(value[0], str):  # Keras 3 single ["name", 0, 0]
        return [value[0]]
    ok = isinstance(value, list) and all(isinstance(v, list) and v and isinstance(v[0], str) for v in value)
    expect(ok, where, "a list of [name, node, tensor]", _short(value))
    return [v[0] for v in value]


def _gru_spec(cfg: dict, name: str, what: str, major: Optional[int], bidirectional: bool,
              merge_mode: str = "concat") -> GRUSpec:
    act = get(cfg, "activation", str, what, "tanh")
    if act != "tanh":
        raise GrunetError(f"{what}: expected activation 'tanh', got {act!r}")
    for key in ("go_backwards", "stateful", "return_state", "time_major", "unroll"):
        value = get(cfg, key, (bool, type(None)), what, False)
        if value and key != "unroll":
            raise GrunetError(f"{what}: expected {key}=False, got {key}=True (not supported)")
    if not bidirectional and get(cfg, "zero_output_for_mask", (bool, type(None)), what, False):
        raise GrunetError(f"{what}: expected zero_output_for_mask=False outside a Bidirectional, got True "
                          "(not supported)")
    rec = get(cfg, "recurrent_activation", str, what, "sigmoid")
    if rec == "hard_sigmoid":
        if major is None:
            raise GrunetError(f"{what}: recurrent_activation 'hard_sigmoid' is clip(0.2x+0.5, 0, 1) in Keras 2 but "
                              "clip(x/6+0.5, 0, 1) in Keras 3, and nothing in the file says which Keras wrote it: "
                              "expected keras_version='2' or '3', got none")
        rec = "hard_sigmoid_keras2" if major < 3 else "hard_sigmoid_keras3"
    elif rec != "sigmoid":
        raise GrunetError(f"{what}: expected recurrent_activation 'sigmoid' or 'hard_sigmoid', got {rec!r}")
    units = get(cfg, "units", int, what)
    expect(units >= 1, f"{what} units", "an integer >= 1", _short(units))
    rates = {}
    for key, option in (("dropout", "input_dropout"), ("recurrent_dropout", "recurrent_dropout")):
        rate = get(cfg, key, (int, float), what, 0.0)
        # 1 would drop everything and scale by 1 / 0; NaN fails the comparison too
        expect(0 <= rate < 1, f"{what} {key}", "a number in [0, 1)", _short(rate))
        rates[option] = float(rate)
    return GRUSpec(name=name, units=units, reset_after=get(cfg, "reset_after", bool, what, False),
                   recurrent_activation=rec, use_bias=get(cfg, "use_bias", bool, what, True),
                   return_sequences=get(cfg, "return_sequences", bool, what, False), bidirectional=bidirectional,
                   merge_mode=merge_mode, **rates)


def _activation(cfg: dict, what: str, default: Optional[str]) -> str:
    act = get(cfg, "activation", str, what, default)
    if act not in DENSE_ACTIVATIONS:
        raise GrunetError(f"{what}: expected activation in {list(DENSE_ACTIVATIONS)}, got {_short(act)}")
    return act


def layer_spec(entry: dict, major: Optional[int]) -> LayerSpec:
    """The grunet spec of one Keras layer entry {"class_name", "config"}; refuses anything unsupported."""
    cls, cfg, name, what = _class(entry), _cfg(entry), _name(entry), _what(entry)
    if cls == "GRU":
        return _gru_spec(cfg, name, what, major, bidirectional=False)
    if cls == "Bidirectional":
        inner = get(cfg, "layer", dict, what)
        if inner.get("class_name") != "GRU":
            raise GrunetError(f"{what}: expected a wrapped GRU, got {_short(inner.get('class_name'))} (not supported)")
        mode = get(cfg, "merge_mode", (str, type(None)), what, "concat")
        if mode not in MERGE_MODES:
            raise GrunetError(f"{what}: expected merge_mode in {list(MERGE_MODES)}, got {_short(mode)} (not supported)")
        spec = _gru_spec(_cfg(inner), name, what, major, bidirectional=True, merge_mode=mode)
        back = get(cfg, "backward_layer", (dict, type(None)), what, None)
        if back is not None:
            back_cfg = dict(_cfg(back), go_backwards=False)
            if back.get("class_name") != "GRU" or _gru_spec(back_cfg, name, what, major, True, mode) != spec:
                raise GrunetError(f"{what}: expected a backward_layer with the forward GRU's settings, got a "
                                  f"different {_short(back.get('class_name'))} (not supported)")
        return spec
    if cls == "Dense":
        units = get(cfg, "units", int, what)
        expect(units >= 1, f"{what} units", "an integer >= 1", _short(units))
        return DenseSpec(name=name, units=units, activation=_activation(cfg, what, "linear"),
                         use_bias=get(cfg, "use_bias", bool, what, True))
    if cls == "Activation":
        return ActivationSpec(name=name, activation=_activation(cfg, what, None))
    if cls in ("Dropout", "SpatialDropout1D"):
        rate = get(cfg, "rate", (int, float), what)
        expect(0 <= rate < 1, f"{what} rate", "a number in [0, 1)", _short(rate))
        return DropoutSpec(name=name, rate=float(rate), spatial=cls == "SpatialDropout1D")
    if cls == "Flatten":
        fmt = get(cfg, "data_format", (str, type(None)), what, None)
        if fmt not in (None, "channels_last"):
            raise GrunetError(f"{what}: expected data_format 'channels_last', got {_short(fmt)} (not supported)")
        return FlattenSpec(name=name)
    if cls == "Masking":
        value = get(cfg, "mask_value", (int, float), what, 0.0)
        return MaskingSpec(name=name, mask_value=float(value))
    if cls == "Embedding":
        dims = [get(cfg, key, int, what) for key in ("input_dim", "output_dim")]
        for key, v in zip(("input_dim", "output_dim"), dims):
            expect(v >= 1, f"{what} {key}", "an integer >= 1", v)
        return EmbeddingSpec(name=name, input_dim=dims[0], output_dim=dims[1],
                             mask_zero=get(cfg, "mask_zero", bool, what, False))
    raise GrunetError(f"{what}: expected one of the supported layers ({SUPPORTED}), got {_label(cls)} "
                      "(unsupported layers are refused, never skipped)")


def parse_model(config: dict, major: Optional[int]) -> KerasModel:
    """A Keras model config {"class_name": "Sequential" | "Functional" | "Model", "config": ...} -> KerasModel."""
    expect(isinstance(config, dict) and "class_name" in config, "Keras config",
           "a dict with 'class_name' and 'config' (a model's config.json or model_config)",
           type(config).__name__ if not isinstance(config, dict) else f"keys {sorted(map(str, config))[:8]}")
    cls = get(config, "class_name", str, "Keras config")
    cfg = get(config, "config", (dict, list), "Keras config")
    keras3_style = "module" in config
    if cls == "Sequential":
        entries = get(cfg, "layers", list, "Sequential config") if isinstance(cfg, dict) else cfg  # Keras <= 2.1: a list
        classes = [_class(e, f"Sequential layer {i}") for i, e in enumerate(entries)]
        inputs = [e for e, c in zip(entries, classes) if c == "InputLayer"]
        body = [e for e, c in zip(entries, classes) if c != "InputLayer"]
        keys = _positional_keys(body)
        shape = None
        for e in inputs + body[:1]:
            shape = shape or _input_shape_of(e)
        if shape is None and isinstance(cfg, dict) and cfg.get("build_input_shape") is not None:
            shape = _shape(cfg["build_input_shape"], "Sequential build_input_shape")
        build = get(config, "build_config", (dict, type(None)), "Sequential", None) or {}
        if shape is None and build.get("input_shape") is not None:
            shape = _shape(build["input_shape"], "Sequential build_config input_shape")
    elif cls in ("Functional", "Model"):
        expect(isinstance(cfg, dict), "model config", "a dict", type(cfg).__name__)
        entries = get(cfg, "layers", list, "model config", [])
        for i, e in enumerate(entries):
            _class(e, f"model layer {i}")
        by_name = {_name(e): e for e in entries}
        all_keys = dict(zip((_name(e) for e in entries), _positional_keys(entries)))
        outs = _endpoints(cfg.get("output_layers"), "model output_layers")
        ins = _endpoints(cfg.get("input_layers"), "model input_layers")
        expect(len(outs) == 1 and len(ins) == 1, "model", "one input and one output", f"inputs {ins}, outputs {outs}")
        chain, name = [], outs[0]
        while True:
            expect(name in by_name, "model", f"a layer named {_short(name)} in its config", "none")
            entry = by_name[name]
            chain.append(entry)
            if entry.get("class_name") == "InputLayer" or len(chain) > len(entries):
                break
            sources = _inbound(entry)
            if len(sources) != 1:
                raise GrunetError(f"{_what(entry)}: expected one input tensor (a chain of layers), got {len(sources)}")
            name = sources[0]
        chain.reverse()
        outside = [_what(e) for e in entries if not any(e is c for c in chain)]
        if outside:
            raise GrunetError(f"model: expected a chain of layers from input to output, got {', '.join(outside[:5])} "
                              "outside it (branching models are not supported)")
        shape = _input_shape_of(chain[0]) if chain[0].get("class_name") == "InputLayer" else None
        body = [e for e in chain if e.get("class_name") != "InputLayer"]
        keys = [all_keys[_name(e)] for e in body]
    else:
        raise GrunetError(f"Keras model: expected class Sequential or Functional, got {_short(cls)} (not supported)")
    expect(body, "Keras model", "at least one layer besides the input", "none")
    layers = [KerasLayer(_name(e), e["class_name"], layer_spec(e, major), key) for e, key in zip(body, keys)]
    if shape is None:
        shape = (None, None)
    if isinstance(layers[0].spec, EmbeddingSpec):
        shape = (shape[0], None)  # token ids: (batch, T); Keras 2 may write a 3-D shape for them
    return KerasModel(input_shape=shape, layers=layers, keras3_style=keras3_style)
