"""The tutorial's classifier: a recurrent layer reads a digit row by row, Dense(classes) reads its last state.

    logits = W_d h_T + b_d        (h_T: the final state, both directions concatenated)
    p      = softmax(logits)      (cross-entropy is applied to the logits in training)

Batch-first input (B, T, I) like Keras. ``cell="lstm"`` swaps in torch.nn.LSTM, the baseline the tutorial
compares the GRU with; ``impl="torch"`` uses torch.nn.GRU itself (reset-after only), whose state_dict is
the same as grunet.GRU's, so its checkpoints load into grunet.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass

import torch
from torch import Tensor, nn

from .config import from_dict as config_from_dict
from .contract import PROBABILITIES, CellSpec
from .errors import GrunetError, expect
from .layers import GRU, init_rnn_weights
from .memory import expect_fits

CELLS = ("gru", "lstm")
MAX_LAYERS = 1000  # stacked layers; far beyond any trained GRU, and each is a Python object to build


@dataclass
class ModelConfig:
    input_size: int = 28
    hidden_size: int = 75
    num_classes: int = 10
    num_layers: int = 1
    bidirectional: bool = False
    reset_after: bool = False
    recurrent_activation: str = "sigmoid"
    cell: str = "gru"
    init: str = "keras"
    # the GRU cell options (grunet.contract); configs written before they existed load with these defaults
    layer_norm: bool = False
    recurrent_dropout: float = 0.0
    input_dropout: float = 0.0
    weight_dropout: float = 0.0
    zoneout: float = 0.0

    def to_dict(self) -> dict:
        return asdict(self)

    @property
    def cell_options(self) -> dict:
        """The GRU cell options as grunet.GRU's keyword arguments."""
        return {"layer_norm": self.layer_norm, **{name: getattr(self, name) for name in PROBABILITIES}}

    def check_cell_options(self, where: str = "model config") -> None:
        """The options are a GRU's (an LSTM has none) and valid together (grunet.contract.CellSpec decides)."""
        used = [name for name, value in self.cell_options.items() if value]
        if used and self.cell != "gru":
            raise GrunetError(f"{where} {used[0]}: expected cell 'gru' (the cell options are grunet.GRU's), "
                              f"got cell {self.cell!r}")
        try:
            CellSpec(reset_after=self.reset_after, activation=self.recurrent_activation, **self.cell_options)
        except GrunetError as e:
            raise GrunetError(f"{where} {e}") from None

    @classmethod
    def from_dict(cls, d: dict, where: str = "model config") -> "ModelConfig":
        return config_from_dict(cls, d, where).validate(where)

    def validate(self, where: str = "model config") -> "ModelConfig":
        """Sizes in range before anything is built: a hand-edited file may ask for terabytes."""
        for name, high in (("input_size", 2**31 - 1), ("hidden_size", 2**31 - 1), ("num_classes", 2**31 - 1),
                           ("num_layers", MAX_LAYERS)):
            value = getattr(self, name)
            expect(isinstance(value, int) and not isinstance(value, bool) and 1 <= value <= high, f"{where} {name}",
                   f"an integer from 1 to {high}", repr(value))
        expect(self.cell in CELLS, f"{where} cell", f"one of {list(CELLS)}", repr(self.cell))
        self.check_cell_options(where)
        expect_fits(4 * self.parameter_count(), f"{where} hidden_size",
                    f"{self.parameter_count():,} float32 parameters")
        return self

    def parameter_count(self) -> int:
        """Parameters of the recurrent layers and the Dense head, from the sizes alone (nothing is built).
        Per layer and direction: G gate blocks of U*I_k + U*U weights and B*U biases, where G = 3 (GRU) or
        4 (LSTM), B = 2 for PyTorch's two bias vectors (reset-after GRU, LSTM), 1 for reset-before; a
        layer-normalised GRU adds its two gains of 3U."""
        U, D = self.hidden_size, 2 if self.bidirectional else 1
        gates = 4 if self.cell == "lstm" else 3
        biases = 1 if self.cell == "gru" and not self.reset_after else 2
        total = 0
        for k in range(self.num_layers):
            width = self.input_size if k == 0 else D * U
            total += D * gates * (U * width + U * U + biases * U)
            if self.layer_norm:
                total += D * 2 * 3 * U
        return total + D * U * self.num_classes + self.num_classes

def _keras_init(rnn: nn.Module, forget_bias: bool = False) -> None:
    """Keras's defaults on a torch RNN; for an LSTM also unit_forget_bias (forget gate bias 1; torch's gate
    order is i | f | g | o)."""
    init_rnn_weights(rnn, rnn.hidden_size, "keras")
    if forget_bias:
        with torch.no_grad():
            for name, p in rnn.named_parameters():
                if name.startswith("bias_ih"):
                    p[rnn.hidden_size:2 * rnn.hidden_size] = 1.0


class SequenceClassifier(nn.Module):
    """forward(x (B, T, I)) -> logits (B, classes); predict_proba(x) -> softmax probabilities."""

    output_kind = "logits"

    def __init__(self, config: ModelConfig, impl: str = "auto") -> None:
        super().__init__()
        expect(config.cell in CELLS, "cell", f"one of {list(CELLS)}", repr(config.cell))
        self.config = config
        config.check_cell_options()
        if config.cell == "gru" and impl == "torch":  # the baseline: PyTorch's own GRU, same state_dict
            expect(config.reset_after and config.recurrent_activation == "sigmoid", "impl 'torch'",
                   "a reset-after GRU with sigmoid gates (the only kind torch.nn.GRU has)",
                   f"reset_after={config.reset_after}, recurrent_activation={config.recurrent_activation!r}")
            used = [name for name, value in config.cell_options.items() if value]
            expect(not used, "impl 'torch'", "a GRU without cell options (torch.nn.GRU has none)",
                   ", ".join(f"{name}={config.cell_options[name]}" for name in used))
            with torch.random.fork_rng():  # nn.GRU's own init draws must not shift the seeded stream
                self.rnn = nn.GRU(config.input_size, config.hidden_size, config.num_layers, batch_first=True,
                                  bidirectional=config.bidirectional)
            _keras_init(self.rnn) if config.init == "keras" else self.rnn.reset_parameters()
        elif config.cell == "gru":
            self.rnn = GRU(config.input_size, config.hidden_size, config.num_layers, batch_first=True,
                           bidirectional=config.bidirectional, reset_after=config.reset_after,
                           recurrent_activation=config.recurrent_activation, init=config.init, impl=impl,
                           **config.cell_options)
        else:
            self.rnn = nn.LSTM(config.input_size, config.hidden_size, config.num_layers, batch_first=True,
                               bidirectional=config.bidirectional)
            if config.init == "keras":
                _keras_init(self.rnn, forget_bias=True)
        D = 2 if config.bidirectional else 1
        self.dense = nn.Linear(config.hidden_size * D, config.num_classes)
        if config.init == "keras":
            nn.init.xavier_uniform_(self.dense.weight)
            nn.init.zeros_(self.dense.bias)

    def forward(self, x: Tensor) -> Tensor:
        """x (B, T, I) -> logits (B, classes)."""
        _, h_n = self.rnn(x)
        if isinstance(h_n, tuple):  # LSTM: (h_n, c_n)
            h_n = h_n[0]
        D = 2 if self.config.bidirectional else 1
        last = h_n[-D:]  # (D, B, H): the top layer's final state of each direction
        return self.dense(torch.cat(list(last), dim=1))

    @classmethod
    def from_config(cls, config: dict, impl: str = "auto") -> "SequenceClassifier":
        return cls(ModelConfig.from_dict(config), impl=impl)

    def architecture_config(self) -> dict:
        return self.config.to_dict()

    @property
    def input_shape(self) -> tuple[int, None]:
        """(T, I) with T free: any sequence length is accepted."""
        return (None, self.config.input_size)

    @torch.no_grad()
    def predict_proba(self, x) -> Tensor:
        """Class probabilities; ``x`` a tensor, or a NumPy array as Keras users pass it (any float dtype,
        converted to the model's), for which a NumPy array comes back."""
        if isinstance(x, Tensor):
            return torch.softmax(self(x), dim=1)
        import numpy as np

        expect(isinstance(x, (np.ndarray, list, tuple)), "x", "a tensor or a NumPy array", type(x).__name__)
        a = np.asarray(x)
        expect(a.dtype.kind in "fiub", "x", "a numeric array", f"dtype {a.dtype}")
        dtype = self.dense.weight.dtype
        return torch.softmax(self(torch.from_numpy(np.ascontiguousarray(a)).to(dtype)), dim=1).cpu().numpy()
