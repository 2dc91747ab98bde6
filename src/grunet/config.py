"""Strict dataclass configs: building one from a dict refuses unknown keys and values of the wrong type.

Used for config.json of runs and the architecture stored in checkpoints, which people may edit by hand.
"""
from __future__ import annotations

import dataclasses
import typing

from .errors import GrunetError

# the field annotations used in grunet's configs -> the accepted Python types (bool is not an int here)
_TYPES = {"int": (int,), "float": (int, float), "bool": (bool,), "str": (str,)}


def _accepts(annotation: str, value) -> bool:
    optional = annotation.startswith("Optional[")
    if optional:
        if value is None:
            return True
        annotation = annotation[len("Optional["):-1]
    types = _TYPES.get(annotation)
    if types is None:  # an annotation this checker does not know: accept rather than guess
        return True
    return isinstance(value, types) and not (isinstance(value, bool) and bool not in types)


def from_dict(cls, d: dict, where: str):
    """``cls(**d)`` for a dataclass ``cls``, after checking keys and value types; errors name ``where``."""
    if not isinstance(d, dict):
        raise GrunetError(f"{where}: expected a mapping of settings, got {type(d).__name__}")
    fields = {f.name: f for f in dataclasses.fields(cls)}
    unknown = sorted(set(d) - set(fields))
    if unknown:
        raise GrunetError(f"{where}: expected only the keys {sorted(fields)}, got unknown keys {unknown}")
    for name, value in d.items():
        annotation = fields[name].type if isinstance(fields[name].type, str) else typing.get_type_hints(cls)[name]
        if isinstance(annotation, str) and not _accepts(annotation, value):
            raise GrunetError(f"{where}: expected {name} of type {annotation}, got {value!r}")
    return cls(**d)
