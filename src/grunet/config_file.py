"""``grunet train --config FILE``: train options from a TOML or JSON file, by their long names.

    lr = 0.003            # TOML (a .toml file); "lr": 0.003 in JSON (.json)
    batch-size = 128      # or batch_size
    recipe = "tuned"

Keys are TrainConfig's settings (the command line's long options without "--"); an unknown key or a value of
the wrong type is one line naming the file. Options given on the command line override the file's.
"""
from __future__ import annotations

import json
import os
import tomllib
from dataclasses import fields
from pathlib import Path

from .config import from_dict
from .errors import GrunetError

MAX_BYTES = 64 * 1024  # a file of settings is a few hundred bytes; a bound before anything is parsed


def read_settings(path: str | os.PathLike) -> dict:
    """The settings of ``path`` as TrainConfig field names and values (types checked, ranges not yet)."""
    from .train import TrainConfig

    p = Path(path)
    where = f"--config {p}"
    kind = p.suffix.lower()
    if kind not in (".toml", ".json"):
        raise GrunetError(f"{where}: expected a .toml or .json file, got {kind or 'no suffix'}")
    try:
        size = p.stat().st_size
        if size > MAX_BYTES:
            raise GrunetError(f"{where}: expected at most {MAX_BYTES:,} bytes of settings, got {size:,}")
        text = p.read_bytes().decode("utf-8")
    except (OSError, UnicodeDecodeError) as e:
        raise GrunetError(f"{where}: expected a readable UTF-8 file, got {e.__class__.__name__}: {e}") from None
    try:
        raw = tomllib.loads(text) if kind == ".toml" else json.loads(text)
    except (tomllib.TOMLDecodeError, json.JSONDecodeError, RecursionError) as e:
        raise GrunetError(f"{where}: expected {kind[1:].upper()}, got a file that does not parse "
                          f"({str(e).splitlines()[0] if str(e) else type(e).__name__})") from None
    if not isinstance(raw, dict):
        raise GrunetError(f"{where}: expected a table of settings, got {type(raw).__name__}")
    names = {f.name for f in fields(TrainConfig)}
    settings = {}
    for key, value in raw.items():
        name = key.replace("-", "_")
        if name not in names:
            raise GrunetError(f"{where}: expected train options ({', '.join(sorted(n.replace('_', '-') for n in names))}), "
                              f"got unknown key {key!r}")
        if name in settings:
            raise GrunetError(f"{where}: expected each option once, got {key!r} twice")
        settings[name] = value
    from_dict(TrainConfig, settings, where)  # keys and value types; ranges once the options are merged
    return settings
