"""The one exception type for bad input.

Every message names the thing, what was expected and what came, e.g.
``GrunetError("h0: expected shape (1, 50, 75), got (1, 50, 64)")``.
It subclasses ValueError (what Python code catches for a bad argument) and RuntimeError (what PyTorch raises
for a wrong-shape input or state, so code written for torch.nn.GRU catches grunet's errors too); the CLI
turns it into one line and exit code 2.
"""
import os


class GrunetError(ValueError, RuntimeError):
    """Bad input from a user: a wrong argument, file, option or dataset."""


def os_error(path, action: str, error: OSError) -> GrunetError:
    """One line for a file system error caused by input: ``PATH: expected to ACTION, got STRERROR``."""
    reason = error.strerror or type(error).__name__
    return GrunetError(f"{os.fspath(path)}: expected to {action}, got {reason} (errno {error.errno})"
                       if error.errno else f"{os.fspath(path)}: expected to {action}, got {reason}")


def expect(condition: bool, what: str, expected: str, got) -> None:
    """Raise ``GrunetError("{what}: expected {expected}, got {got}")`` unless condition holds."""
    if not condition:
        raise GrunetError(f"{what}: expected {expected}, got {got}")


def require(module: str, purpose: str, extra: str):
    """Import an optional dependency, or say which extra installs it."""
    import importlib

    try:
        return importlib.import_module(module)
    except ImportError:
        raise GrunetError(f"{module}: expected the {module} package to {purpose} "
                          f"(pip install 'grunet[{extra}]'), got ImportError") from None


class GrunetTypeError(GrunetError, TypeError):
    """An argument of the wrong type (a bool where an int is due, a string where a bool is due): also a TypeError,
    which is what PyTorch raises for these, so code written for torch.nn.GRU catches it."""
