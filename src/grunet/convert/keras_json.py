"""Untrusted JSON from Keras files: bounded in size and nesting before and after parsing.

A config.json, metadata.json or HDF5 model_config comes from elsewhere: its size is checked before it is
decoded (MAX_CONFIG_BYTES), parsing errors of every kind (invalid text, nesting past Python's recursion
limit, integers of thousands of digits) become one GrunetError line, and the parsed value is walked
without recursion to refuse nesting deeper than MAX_DEPTH, so no later reader can overflow the stack.
"""
from __future__ import annotations

import json

from ..errors import GrunetError, expect

MAX_CONFIG_BYTES = 16 << 20  # a Keras config of a GRU model is ~10 KB; 16 MiB leaves room for any real one
MAX_DEPTH = 64               # real Keras configs nest ~12 levels (functional model > Bidirectional > GRU > initializer)


def depth_of(value) -> int:
    """Nesting depth of lists and dicts (a scalar is 0), without recursion."""
    deepest, stack = 0, [(value, 0)]
    while stack:
        item, depth = stack.pop()
        if isinstance(item, dict):
            item = list(item.values())
        if isinstance(item, (list, tuple)):
            depth += 1
            deepest = max(deepest, depth)
            if depth > MAX_DEPTH:
                return depth
            stack.extend((v, depth) for v in item)
    return deepest


def check_depth(value, what: str) -> None:
    depth = depth_of(value)
    expect(depth <= MAX_DEPTH, what, f"JSON nested at most {MAX_DEPTH} levels deep", f"more than {MAX_DEPTH} levels"
           if depth > MAX_DEPTH else depth)


def load_json(data, what: str):
    """Parse ``data`` (bytes or str) from an untrusted file; one GrunetError line for anything wrong."""
    expect(isinstance(data, (bytes, str)), what, "JSON text", type(data).__name__)
    expect(len(data) <= MAX_CONFIG_BYTES, what, f"at most {MAX_CONFIG_BYTES >> 20} MiB of JSON",
           f"{len(data):,} bytes")
    try:
        text = data.decode("utf-8") if isinstance(data, bytes) else data
        value = json.loads(text)
    except UnicodeDecodeError:
        raise GrunetError(f"{what}: expected UTF-8 JSON text, got bytes that are not UTF-8") from None
    except RecursionError:
        raise GrunetError(f"{what}: expected JSON nested at most {MAX_DEPTH} levels deep, got deeper") from None
    except (ValueError, OverflowError) as e:  # JSONDecodeError, or an integer too long to convert
        raise GrunetError(f"{what}: expected valid JSON, got invalid JSON ({str(e).splitlines()[0][:120]})") from None
    check_depth(value, what)
    return value
