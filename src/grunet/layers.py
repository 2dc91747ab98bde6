"""grunet.GRU and grunet.GRUCell: drop-ins for torch.nn.GRU / torch.nn.GRUCell with both GRU variants.

Same constructor arguments, returns and (for reset-after) state_dict keys and shapes as PyTorch, so
``grunet.GRU(...).load_state_dict(torch.nn.GRU(...).state_dict())`` works and the reverse too.
Additions: ``reset_after`` (False = the original Keras GRU, one bias per gate stored as ``bias_l{k}``),
``recurrent_activation``, ``lengths=`` for padded batches, ``impl=`` (see grunet.kernels) and ``init=``.
The equations are in grunet.reference.

Parameters of layer k, direction d (suffix '' or '_reverse'), U = hidden_size, I_k = input width:
    weight_ih_l{k}{d} (3U, I_k), weight_hh_l{k}{d} (3U, U)             rows r | z | n
    reset-after:  bias_ih_l{k}{d} (3U,), bias_hh_l{k}{d} (3U,)
    reset-before: bias_l{k}{d} (3U,)
"""
from __future__ import annotations

import math
from typing import Optional, Union

import torch
from torch import Tensor, nn
from torch.nn.utils.rnn import PackedSequence, pad_packed_sequence

from .errors import GrunetError, expect
from .kernels import check_impl, layer_function
from .reference import activation, gru_step

INITS = ("torch", "keras")


def init_rnn_weights(module: nn.Module, hidden_size: int, init: str) -> None:
    """Initialise a recurrent module's own parameters (grunet's or torch's, same names).
    init='torch': every parameter ~ U(-1/sqrt(H), 1/sqrt(H)) as nn.GRU does.
    init='keras': Keras defaults: glorot_uniform input weights, orthogonal recurrent weights (over the
    whole (3U, U) matrix, like Keras's (U, 3U) recurrent_kernel), zero biases."""
    expect(init in INITS, "init", f"one of {list(INITS)}", repr(init))
    with torch.no_grad():
        for name, p in module.named_parameters():
            if init == "torch":
                bound = 1.0 / math.sqrt(hidden_size)
                nn.init.uniform_(p, -bound, bound)
            elif name.startswith("weight_ih"):
                nn.init.xavier_uniform_(p)
            elif name.startswith("weight_hh"):
                nn.init.orthogonal_(p)
            else:
                nn.init.zeros_(p)


class GRU(nn.Module):
    """Multi-layer GRU over a sequence; see the module docstring. forward(input, hx=None, lengths=None)."""

    def __init__(
        self,
        input_size: int,
        hidden_size: int,
        num_layers: int = 1,
        bias: bool = True,
        batch_first: bool = False,
        dropout: float = 0.0,
        bidirectional: bool = False,
        *,
        reset_after: bool = True,
        recurrent_activation: str = "sigmoid",
        impl: str = "auto",
        init: str = "torch",
        device=None,
        dtype=None,
    ) -> None:
        super().__init__()
        for name, value in (("input_size", input_size), ("hidden_size", hidden_size), ("num_layers", num_layers)):
            expect(isinstance(value, int) and value >= 1, name, "an integer >= 1", repr(value))
        expect(isinstance(dropout, (int, float)) and 0 <= dropout <= 1, "dropout", "a number in [0, 1]", repr(dropout))
        activation(recurrent_activation)  # validates the name
        self.input_size, self.hidden_size, self.num_layers = input_size, hidden_size, num_layers
        self.bias, self.batch_first, self.dropout = bias, batch_first, float(dropout)
        self.bidirectional, self.reset_after = bidirectional, reset_after
        self.recurrent_activation, self.impl = recurrent_activation, check_impl(impl)
        self.mode = "GRU"  # as nn.RNNBase, for code that inspects it
        factory = {"device": device, "dtype": dtype}
        H, D = hidden_size, 2 if bidirectional else 1
        for k in range(num_layers):
            width = input_size if k == 0 else H * D
            for suffix in self._suffixes():
                self.register_parameter(f"weight_ih_l{k}{suffix}", nn.Parameter(torch.empty(3 * H, width, **factory)))
                self.register_parameter(f"weight_hh_l{k}{suffix}", nn.Parameter(torch.empty(3 * H, H, **factory)))
                if bias and reset_after:
                    self.register_parameter(f"bias_ih_l{k}{suffix}", nn.Parameter(torch.empty(3 * H, **factory)))
                    self.register_parameter(f"bias_hh_l{k}{suffix}", nn.Parameter(torch.empty(3 * H, **factory)))
                elif bias:
                    self.register_parameter(f"bias_l{k}{suffix}", nn.Parameter(torch.empty(3 * H, **factory)))
        self.init = init
        self.reset_parameters(init)

    def _suffixes(self) -> tuple[str, ...]:
        return ("", "_reverse") if self.bidirectional else ("",)

    def reset_parameters(self, init: Optional[str] = None) -> None:
        init_rnn_weights(self, self.hidden_size, init or self.init)

    def layer_weight_names(self, k: int, suffix: str = "") -> tuple[str, str, Optional[str], Optional[str]]:
        """Names of (w_ih, w_hh, b_ih, b_hh) of layer k and direction suffix (reset-before: b_ih is the one bias)."""
        names = (f"weight_ih_l{k}{suffix}", f"weight_hh_l{k}{suffix}")
        if not self.bias:
            return names + (None, None)
        if self.reset_after:
            return names + (f"bias_ih_l{k}{suffix}", f"bias_hh_l{k}{suffix}")
        return names + (f"bias_l{k}{suffix}", None)

    def layer_weights(self, k: int, suffix: str = "") -> tuple[Tensor, Tensor, Optional[Tensor], Optional[Tensor]]:
        """(w_ih, w_hh, b_ih, b_hh) of layer k and direction suffix; for reset-before b_ih is the one bias."""
        params = self._parameters
        # the registered parameter, or whatever stands under that name (a pruning hook sets plain tensors)
        return tuple(None if n is None else (params[n] if n in params else getattr(self, n))
                     for n in self.layer_weight_names(k, suffix))

    def extra_repr(self) -> str:
        s = f"{self.input_size}, {self.hidden_size}"
        if self.num_layers != 1:
            s += f", num_layers={self.num_layers}"
        for name, default in (("bias", True), ("batch_first", False), ("dropout", 0.0), ("bidirectional", False)):
            if getattr(self, name) != default:
                s += f", {name}={getattr(self, name)}"
        s += f", reset_after={self.reset_after}"
        if self.recurrent_activation != "sigmoid":
            s += f", recurrent_activation={self.recurrent_activation!r}"
        return s

    # ------------------------------------------------------------------------------------------------
    def forward(
        self,
        input: Union[Tensor, PackedSequence],
        hx: Optional[Tensor] = None,
        lengths: Optional[Union[Tensor, list[int]]] = None,
    ):
        if isinstance(input, PackedSequence):
            expect(lengths is None, "lengths", "None with a PackedSequence input (it carries its lengths)", "a value")
            return self._forward_packed(input, hx)
        x, h0, lengths, unbatched = self._check_inputs(input, hx, lengths)
        output, h_n = self._run(x, h0, lengths)
        if self.batch_first:
            output = output.transpose(0, 1)
        if unbatched:
            return output.squeeze(0 if self.batch_first else 1), h_n.squeeze(1)
        return output, h_n

    def _forward_packed(self, packed: PackedSequence, hx: Optional[Tensor]):
        padded, lengths = pad_packed_sequence(packed)  # (T, B, I) in the caller's batch order
        x, h0, lengths, _ = self._check_inputs(padded, hx, lengths, time_major=True)
        output, h_n = self._run(x, h0, lengths)
        # repack in the input's own order so that batch_sizes and sorted_indices are shared with it
        order = packed.sorted_indices if packed.sorted_indices is not None else torch.arange(x.shape[1])
        out_sorted = output[:, order.to(output.device)]
        sizes = packed.batch_sizes.tolist()
        data = torch.cat([out_sorted[t, : sizes[t]] for t in range(len(sizes))], 0)
        return PackedSequence(data, packed.batch_sizes, packed.sorted_indices, packed.unsorted_indices), h_n

    def _check_inputs(self, input: Tensor, hx, lengths, time_major: Optional[bool] = None):
        """Validate and normalise to time-major x (T, B, I), h0 (L*D, B, H) or None (zeros, which the layer
        functions make themselves: the fused kernel then allocates and scans nothing), lengths (B,) or None."""
        # plain ifs: the messages are built only on failure (this runs on every forward call)
        if not isinstance(input, Tensor):
            raise GrunetError(f"input: expected a torch.Tensor or PackedSequence, got {type(input).__name__}")
        if input.dim() not in (2, 3):
            raise GrunetError(f"input: expected a 2-D (unbatched) or 3-D tensor, got {input.dim()}-D shape "
                              f"{tuple(input.shape)}")
        w = self.weight_ih_l0
        if input.shape[-1] != self.input_size:
            raise GrunetError(f"input: expected last dimension input_size={self.input_size}, got shape "
                              f"{tuple(input.shape)}")
        if input.dtype != w.dtype:
            raise GrunetError(f"input: expected dtype {w.dtype} (the parameters' dtype), got {input.dtype}")
        if input.device != w.device:
            raise GrunetError(f"input: expected device {w.device} (the parameters' device), got {input.device}")
        unbatched = input.dim() == 2
        batch_first = self.batch_first if time_major is None else not time_major
        x = input.unsqueeze(0 if batch_first else 1) if unbatched else input
        if batch_first:
            x = x.transpose(0, 1)
        T, B = x.shape[0], x.shape[1]
        LD, H = self.num_layers * (2 if self.bidirectional else 1), self.hidden_size
        if hx is None:
            h0 = None
        else:
            if not isinstance(hx, Tensor):
                raise GrunetError(f"h0: expected a torch.Tensor, got {type(hx).__name__}")
            want = (LD, H) if unbatched else (LD, B, H)
            if tuple(hx.shape) != want:
                raise GrunetError(f"h0: expected shape {want} (num_layers*num_directions, batch, hidden_size), "
                                  f"got {tuple(hx.shape)}")
            if hx.dtype != x.dtype or hx.device != x.device:
                raise GrunetError(f"h0: expected dtype {x.dtype} on device {x.device}, got {hx.dtype} on {hx.device}")
            h0 = hx.unsqueeze(1) if unbatched else hx
        if lengths is not None:
            lengths = torch.as_tensor(lengths)
            expect(lengths.dim() == 1 and lengths.shape[0] == B, "lengths", f"a 1-D tensor of {B} lengths (one per sequence)",
                   f"shape {tuple(lengths.shape)}")
            expect(not lengths.is_floating_point() and not lengths.is_complex(), "lengths", "integer values", lengths.dtype)
            if B:
                lo, hi = int(lengths.min()), int(lengths.max())
                expect(lo >= 1 and hi <= T, "lengths", f"values in [1, {T}] (the sequence length)", f"min {lo}, max {hi}")
            lengths = lengths.to(device=x.device, dtype=torch.int64)
        return x, h0, lengths, unbatched

    def _run(self, x: Tensor, h0: Optional[Tensor], lengths: Optional[Tensor]) -> tuple[Tensor, Tensor]:
        layer = layer_function(self.impl, x)
        D = 2 if self.bidirectional else 1
        h_n = []
        for k in range(self.num_layers):
            outs = []
            for d, suffix in enumerate(self._suffixes()):
                out, h = layer(x, None if h0 is None else h0[k * D + d], *self.layer_weights(k, suffix),
                               reset_after=self.reset_after,
                               activation_name=self.recurrent_activation, lengths=lengths, reverse=d == 1)
                outs.append(out)
                h_n.append(h)
            x = outs[0] if D == 1 else torch.cat(outs, 2)
            if self.dropout and self.training and k < self.num_layers - 1:
                x = nn.functional.dropout(x, self.dropout, training=True)
        # one layer and direction: a view, not a copy (stack costs ~10 us forward and backward per call)
        return x, (h_n[0].unsqueeze(0) if len(h_n) == 1 else torch.stack(h_n, 0))


class GRUCell(nn.Module):
    """One GRU step, a drop-in for torch.nn.GRUCell: forward(input (B, I) or (I,), hx=None) -> h' ."""

    def __init__(
        self,
        input_size: int,
        hidden_size: int,
        bias: bool = True,
        *,
        reset_after: bool = True,
        recurrent_activation: str = "sigmoid",
        init: str = "torch",
        device=None,
        dtype=None,
    ) -> None:
        super().__init__()
        for name, value in (("input_size", input_size), ("hidden_size", hidden_size)):
            expect(isinstance(value, int) and value >= 1, name, "an integer >= 1", repr(value))
        self.sigma = activation(recurrent_activation)
        self.input_size, self.hidden_size, self.bias = input_size, hidden_size, bias
        self.reset_after, self.recurrent_activation, self.init = reset_after, recurrent_activation, init
        factory = {"device": device, "dtype": dtype}
        H = hidden_size
        self.weight_ih = nn.Parameter(torch.empty(3 * H, input_size, **factory))
        self.weight_hh = nn.Parameter(torch.empty(3 * H, H, **factory))
        if bias and reset_after:
            self.bias_ih = nn.Parameter(torch.empty(3 * H, **factory))
            self.bias_hh = nn.Parameter(torch.empty(3 * H, **factory))
        elif bias:
            self.bias = nn.Parameter(torch.empty(3 * H, **factory))  # type: ignore[assignment]
        self.reset_parameters(init)

    def reset_parameters(self, init: Optional[str] = None) -> None:
        init_rnn_weights(self, self.hidden_size, init or self.init)

    def extra_repr(self) -> str:
        return f"{self.input_size}, {self.hidden_size}, reset_after={self.reset_after}"

    def forward(self, input: Tensor, hx: Optional[Tensor] = None) -> Tensor:
        w = self.weight_ih
        expect(isinstance(input, Tensor) and input.dim() in (1, 2), "input", "a 1-D (unbatched) or 2-D tensor",
               tuple(input.shape) if isinstance(input, Tensor) else type(input).__name__)
        expect(input.shape[-1] == self.input_size, "input", f"last dimension input_size={self.input_size}",
               f"shape {tuple(input.shape)}")
        expect(input.dtype == w.dtype, "input", f"dtype {w.dtype}", input.dtype)
        expect(input.device == w.device, "input", f"device {w.device}", input.device)
        unbatched = input.dim() == 1
        x = input.unsqueeze(0) if unbatched else input
        if hx is None:
            h = torch.zeros(x.shape[0], self.hidden_size, dtype=x.dtype, device=x.device)
        else:
            want = (self.hidden_size,) if unbatched else (x.shape[0], self.hidden_size)
            expect(tuple(hx.shape) == want, "hx", f"shape {want}", tuple(hx.shape))
            expect(hx.dtype == x.dtype and hx.device == x.device, "hx", f"{x.dtype} on {x.device}",
                   f"{hx.dtype} on {hx.device}")
            h = hx.unsqueeze(0) if unbatched else hx
        if not isinstance(self.bias, bool):
            b_ih, b_hh = self.bias, None
        elif self.bias:
            b_ih, b_hh = self.bias_ih, self.bias_hh
        else:
            b_ih = b_hh = None
        h_new = gru_step(x, h, self.weight_ih, self.weight_hh, b_ih, b_hh, reset_after=self.reset_after, sigma=self.sigma)
        return h_new.squeeze(0) if unbatched else h_new
