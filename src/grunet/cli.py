"""The ``grunet`` command line: build_parser() and main(argv) -> exit code.

Each subcommand lives in ``grunet.commands.<name>`` with ``add_arguments(parser)`` and ``run(args) -> int``.
Bad input (GrunetError) becomes one line on stderr and exit code 2, never a traceback; so does a file
system error that escaped a command's own checks (it names the file). Output piped into a reader that
stops early (``| head``) ends quietly.
"""
from __future__ import annotations

import argparse
import importlib
import os
import sys
from typing import Optional, Sequence

from . import __version__
from .errors import GrunetError, os_error

# name -> one-line help; the module grunet.commands.<name with - as _> implements it
COMMANDS = {
    "params": "parameter counts of a GRU, gate by gate, with the formula",
    "train": "train a GRU classifier on MNIST-like digits read row by row",
    "eval": "accuracy, per-class accuracy and confusion matrix of a trained model",
    "predict": "classify PNG/JPEG digit images with a trained model",
    "bench": "time grunet's kernels against torch.nn.GRU",
    "convert": "convert models between grunet, Keras, PyTorch and ONNX",
    "export": "export a trained model to ONNX",
    "explain": "show the update and reset gates of a trained model on one digit",
    "report": "write an HTML report of a training run",
    "serve": "a local web page: draw a digit and watch the GRU read it row by row",
}


def _module(name: str):
    return importlib.import_module(f"grunet.commands.{name.replace('-', '_')}")


class _Parser(argparse.ArgumentParser):
    def error(self, message: str):  # argparse's own usage errors also exit 2, with one line
        self.exit(2, f"{self.prog}: error: {message}\n")


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="grunet", description="Exact, fast and explained GRU networks for PyTorch.")
    parser.add_argument("--version", action="version", version=f"grunet {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=_Parser)
    for name, help_text in COMMANDS.items():
        try:
            module = _module(name)
        except ModuleNotFoundError:  # a command whose module is not part of this build
            continue
        p = sub.add_parser(name, help=help_text, description=help_text)
        module.add_arguments(p)
        p.set_defaults(_run=module.run)
    return parser


def main(argv: Optional[Sequence[str]] = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    args._argv = list(sys.argv[1:] if argv is None else argv)  # as typed: grunet train --nproc passes them on
    if not getattr(args, "_run", None):
        parser.print_help()
        return 2
    try:
        code = int(args._run(args) or 0)
        sys.stdout.flush()  # a closed pipe shows here, inside the handler below, not at interpreter exit
        return code
    except BrokenPipeError:
        # the reader went away (| head): point stdout at /dev/null so the interpreter's final flush is quiet
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        return 141  # 128 + SIGPIPE, as a shell reports a command killed by a closed pipe
    except GrunetError as e:
        return _fail(args.command, e)
    except OSError as e:  # a file error no command check anticipated: still one line naming the file
        return _fail(args.command, os_error(e.filename or "a file", "read or write it", e))
    except KeyboardInterrupt:
        print(f"grunet {args.command}: interrupted", file=sys.stderr)
        return 130


def _fail(command: str, error: GrunetError) -> int:
    message = "; ".join(line.strip() for line in str(error).splitlines() if line.strip())  # one line
    print(f"grunet {command}: error: {message}", file=sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(main())
