"""grunet serve: a local web page where the GRU reads a drawn digit row by row, and the JSON API behind it.

    GET  /             the page (grunet/web/serve.html: one self-contained file, no network needed)
    GET  /api/model    the model: GRU layers (bidirectional or not), units, variant, view and steps, class
                       names, the gate convention
    GET  /api/digits   test digits to pick from: the first of each class in the model's data set's test split
    POST /api/trace    a JSON body {"pixels": 28 x 28 numbers in 0..255, "prepare": false} or a PNG / JPEG body
                       (prepared like MNIST, as grunet predict does; "prepare": true does the same to pixels);
                       ?layer=K&direction=forward|reverse picks the GRU layer shown. Answers
                       grunet.explain.trace_dict's JSON, the structure `grunet explain --json` prints:
                       {"prediction", "probabilities", "steps": [T x {"z", "r", "dh", "probabilities"}], ...}

Every error is JSON {"error": one line}: 400 for a malformed body or query, 404 for an unknown path, 411
without Content-Length, 413 over MAX_BODY bytes. The gates come from the reference equations (as in grunet
explain), one trace at a time. The standard library's ThreadingHTTPServer serves it: one page and three
small endpoints need nothing more.
"""
from __future__ import annotations

import json
import math
import threading
from dataclasses import dataclass, field
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from importlib import resources
from typing import Callable, Optional
from urllib.parse import parse_qs, urlsplit

import numpy as np

from .checkpoint import load_model
from .data import CLASS_NAMES, load_split, to_sequences
from .errors import GrunetError
from .explain import CONVENTION, gate_trace, gru_layers, trace_dict

MAX_BODY = 4 << 20  # bytes: a phone photo of a digit fits; a 28 x 28 JSON body is ~4 KB
SIDE = 28


@dataclass
class TraceService:
    """A loaded model and what the page and the API ask of it (no HTTP here)."""

    model: object
    view: str
    permutation_seed: int
    dataset: str
    class_names: list
    _lock: threading.Lock = field(default_factory=threading.Lock)

    @classmethod
    def load(cls, path: str) -> "TraceService":
        model, ckpt = load_model(path, impl="reference")  # the equations themselves, as grunet explain
        data = ckpt.get("data", {})
        dataset = data.get("dataset") or "mnist-sample"
        names = [str(c) for c in CLASS_NAMES.get(dataset, CLASS_NAMES["mnist"])]
        return cls(model, data.get("view") or "rows", int(data.get("permutation_seed", 0)), dataset, names)

    def describe(self) -> dict:
        layers = [{"layer": i, "bidirectional": layer.bidirectional} for i, layer in enumerate(gru_layers(self.model))]
        steps = to_sequences(np.zeros((1, SIDE, SIDE), dtype=np.uint8), self.view, permutation_seed=self.permutation_seed)
        return {"layers": layers, "view": self.view, "steps": int(steps.shape[1]), "dataset": self.dataset,
                "class_names": self.class_names, "convention": CONVENTION}

    def digits(self) -> list[dict]:
        """The first test digit of each class (none when the data set cannot be read here)."""
        try:
            images, labels = load_split(self.dataset, "test")
        except GrunetError:
            return []
        found = {}
        for i, label in enumerate(labels.tolist()):
            if label not in found:
                found[label] = {"label": int(label), "index": i, "pixels": images[i].tolist()}
            if len(found) == len(self.class_names):
                break
        return [found[k] for k in sorted(found)]

    def trace(self, image: np.ndarray, layer: Optional[int], direction: str) -> dict:
        """grunet.explain.trace_dict of the (28, 28) uint8 digit ``image``, plus the pixels that were read."""
        x = to_sequences(image[None], self.view, permutation_seed=self.permutation_seed)[0]
        with self._lock:
            trace = gate_trace(self.model, x, layer=layer, direction=direction)
        return {**trace_dict(trace, self.class_names), "pixels": image.tolist()}


def pixels_of(value, prepare: bool) -> np.ndarray:
    """The (28, 28) uint8 digit of a JSON "pixels" value, checked; ``prepare``: as grunet predict prepares."""
    ok = (isinstance(value, list) and len(value) == SIDE
          and all(isinstance(row, list) and len(row) == SIDE for row in value)
          and all(isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v) and 0 <= v <= 255
                  for row in value for v in row))
    if not ok:
        got = f"a list of {len(value)}" if isinstance(value, list) else type(value).__name__
        raise GrunetError(f"pixels: expected {SIDE} rows of {SIDE} numbers in 0..255, got {got} (or values outside)")
    image = np.asarray(value, dtype=np.float64)
    if prepare:
        from .images import prepare_digit

        return prepare_digit(image, "pixels")
    return np.rint(image).astype(np.uint8)


def trace_request(service: TraceService, body: bytes, content_type: str, query: dict) -> dict:
    """/api/trace: the body (JSON pixels, or PNG / JPEG bytes) and query to a trace; GrunetError when bad."""
    layer = query.get("layer", [None])[-1]
    if layer is not None:
        try:
            layer = int(layer)
        except ValueError:
            raise GrunetError(f"layer: expected an integer, got {layer!r}") from None
    direction = query.get("direction", ["forward"])[-1]
    if content_type.startswith("application/json"):
        try:
            request = json.loads(body)
        except (ValueError, UnicodeDecodeError) as e:
            raise GrunetError(f"body: expected JSON, got text that does not parse ({e})") from None
        except RecursionError:
            raise GrunetError("body: expected JSON of a few levels, got one nested too deeply to read") from None
        if not isinstance(request, dict) or "pixels" not in request:
            raise GrunetError("body: expected a JSON object with \"pixels\", got " + type(request).__name__
                              + ("" if not isinstance(request, dict) else " without it"))
        prepare = request.get("prepare", False)
        if not isinstance(prepare, bool):
            raise GrunetError(f"prepare: expected true or false, got {prepare!r}")
        image = pixels_of(request["pixels"], prepare)
    elif content_type.startswith(("image/png", "image/jpeg")):
        from .images import digit_from_bytes

        image = digit_from_bytes(body, "body")
    else:
        raise GrunetError(f"Content-Type: expected application/json, image/png or image/jpeg, got "
                          f"{content_type or 'none'}")
    return service.trace(image, layer, direction)


def handler_for(service: TraceService) -> type:
    """The request handler class serving ``service``."""
    page = resources.files("grunet").joinpath("web/serve.html").read_bytes()

    class Handler(BaseHTTPRequestHandler):
        server_version = "grunet-serve"

        def log_message(self, format, *args):  # quiet: the terminal shows the address, not every request
            pass

        def _send(self, status: int, body: bytes, content_type: str) -> None:
            self.send_response(status)
            self.send_header("Content-Type", content_type)
            self.send_header("Content-Length", str(len(body)))
            self.send_header("Cache-Control", "no-store")
            self.end_headers()
            self.wfile.write(body)

        def _json(self, status: int, value) -> None:
            self._send(status, json.dumps(value).encode(), "application/json")

        def _error(self, status: int, message: str) -> None:
            self._json(status, {"error": message.splitlines()[0] if message else HTTPStatus(status).phrase})

        def do_GET(self):  # noqa: N802 - the standard library's name
            path = urlsplit(self.path).path
            if path in ("/", "/index.html"):
                return self._send(200, page, "text/html; charset=utf-8")
            if path == "/api/model":
                return self._json(200, service.describe())
            if path == "/api/digits":
                return self._json(200, {"digits": service.digits()})
            self._error(404, f"path: expected /, /api/model, /api/digits or POST /api/trace, got {path}")

        def do_POST(self):  # noqa: N802
            url = urlsplit(self.path)
            if url.path != "/api/trace":
                return self._error(404, f"path: expected POST /api/trace, got {url.path}")
            length = self.headers.get("Content-Length")
            if length is None or not length.isdigit():
                return self._error(411, f"Content-Length: expected the body's size, got {length or 'none'}")
            if int(length) > MAX_BODY:
                self.close_connection = True  # the body is not read
                return self._error(413, f"body: expected at most {MAX_BODY:,} bytes, got {int(length):,}")
            body = self.rfile.read(int(length))
            try:
                answer = trace_request(service, body, self.headers.get("Content-Type", ""), parse_qs(url.query))
            except GrunetError as e:
                return self._error(400, str(e))
            self._json(200, answer)

    return Handler


def make_server(service: TraceService, host: str, port: int) -> ThreadingHTTPServer:
    """The server bound to host:port (port 0: a free one), not yet serving; GrunetError when it cannot bind."""
    try:
        server = ThreadingHTTPServer((host, port), handler_for(service))
    except OSError as e:
        raise GrunetError(f"--host/--port: expected an address this machine can listen on, got {host}:{port} "
                          f"({e.strerror or e})") from None
    server.daemon_threads = True
    return server


def serve(path: str, host: str, port: int, print_fn: Callable[[str], None] = print) -> int:
    """Serve ``path``'s model until Ctrl-C; exit code 0."""
    service = TraceService.load(path)
    server = make_server(service, host, port)
    bound_host, bound_port = server.server_address[:2]
    print_fn(f"grunet serve: http://{bound_host}:{bound_port}/ ({path}; Ctrl-C stops)")
    if host not in ("127.0.0.1", "localhost", "::1"):
        print_fn(f"note: listening on {host}: other machines can reach this page")
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        pass
    finally:
        server.server_close()
    return 0
