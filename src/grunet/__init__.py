"""grunet: exact, fast and explained GRU networks for PyTorch.

    >>> import grunet
    >>> gru = grunet.GRU(28, 75, batch_first=True, reset_after=False)   # the original Keras GRU
    >>> out, h_n = gru(x)                                                # like torch.nn.GRU
    >>> model = grunet.load("runs/demo")                                 # a trained run, in eval mode
"""
from .checkpoint import load
from .errors import GrunetError
from .layers import GRU, GRU_CELL_TYPES, GRU_TYPES, GRUCell
from .params import count_params, summary

__version__ = "0.1.0"
__all__ = ["GRU", "GRUCell", "GRU_TYPES", "GRU_CELL_TYPES", "GrunetError", "count_params", "load", "summary",
           "__version__"]
