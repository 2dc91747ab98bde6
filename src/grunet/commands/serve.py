"""grunet serve: a local web page to draw a digit and watch the GRU read it row by row (and its JSON API)."""
from __future__ import annotations

import argparse

from ..errors import expect


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("model", metavar="RUN_DIR|MODEL.pt", help="a run directory (its best.pt) or a checkpoint")
    p.add_argument("--port", type=int, default=8000, help="TCP port (default 8000; 0: any free port)")
    p.add_argument("--host", default="127.0.0.1", help="address to listen on (default 127.0.0.1: this machine only)")


def run(args: argparse.Namespace) -> int:
    expect(0 <= args.port <= 65535, "--port", "a port number from 0 to 65535", args.port)
    from ..serve import serve

    return serve(args.model, args.host, args.port)
