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
import numbers
import warnings
from typing import Optional, Union

import torch
from torch import Tensor, nn
from torch.nn.utils.rnn import PackedSequence, pad_packed_sequence

from .contract import PROBABILITIES, CellSpec, LayerWeights, Masks
from .errors import GrunetError, GrunetTypeError, expect
from .kernels import check_impl, layer_function
from .kernels.gpu import cudnn
from .reference import activation, gru_step

INITS = ("torch", "keras")
# dtypes a length may have: bool is refused, as True would silently mean 1
INTEGER_DTYPES = (torch.uint8, torch.int8, torch.int16, torch.int32, torch.int64)


# ----------------------------------------------------------------------------------------------------
# constructor arguments: checked for type as torch.nn.GRU does, or stricter, each with one line
def show(value, limit: int = 60) -> str:
    """repr(value) on one line and at most ``limit`` characters (a tensor's repr spans lines)."""
    text = " ".join(repr(value).split())
    return text if len(text) <= limit else text[: limit - 3] + "..."


def integer_argument(name: str, value, minimum: int = 1) -> int:
    # bool is a subclass of int: GRU(4, True) must not mean hidden_size=1
    if isinstance(value, bool) or not isinstance(value, int):
        raise GrunetTypeError(f"{name}: expected an integer >= {minimum}, got {show(value)} ({type(value).__name__})")
    expect(value >= minimum, name, f"an integer >= {minimum}", show(value))
    return value


def bool_argument(name: str, value) -> bool:
    # any truthy value would do otherwise: batch_first="False" would run batch-first
    if not isinstance(value, bool):
        raise GrunetTypeError(f"{name}: expected True or False, got {show(value)} ({type(value).__name__})")
    return value


def dropout_argument(value, name: str = "dropout", upper: str = "]") -> float:
    """A probability: [0, 1] for nn.GRU's dropout between layers; [0, 1) (upper=")") for the cell options,
    whose kept units are scaled by 1 / (1 - p)."""
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise GrunetTypeError(f"{name}: expected a number in [0, 1{upper}, got {show(value)} ({type(value).__name__})")
    inside = 0 <= value <= 1 if upper == "]" else 0 <= value < 1  # NaN fails every comparison
    expect(inside, name, f"a number in [0, 1{upper}", show(value))
    return float(value)


def no_projection(proj_size) -> None:
    if isinstance(proj_size, bool) or not isinstance(proj_size, int):
        raise GrunetTypeError(f"proj_size: expected 0 (a GRU has no projection), got {show(proj_size)} "
                              f"({type(proj_size).__name__})")
    expect(proj_size == 0, "proj_size", "0: a GRU has no projection (PyTorch supports proj_size only for LSTM)",
           show(proj_size))


def activation_argument(name) -> None:
    if not isinstance(name, str):
        raise GrunetTypeError(f"recurrent_activation: expected a name such as 'sigmoid', got {show(name)} "
                              f"({type(name).__name__})")
    activation(name)  # refuses unknown names


def factory_arguments(device, dtype) -> dict:
    """``device=``/``dtype=`` for the parameters: None, a torch.device or its name; a floating-point dtype."""
    if dtype is not None and not (isinstance(dtype, torch.dtype) and dtype.is_floating_point):
        raise GrunetTypeError(f"dtype: expected a floating-point torch.dtype or None, got {show(dtype)}")
    if device is not None:
        try:
            device = torch.device(device)
        except (RuntimeError, TypeError, ValueError):
            raise GrunetError(f"device: expected a torch.device or a name such as 'cpu', got {show(device)}") from None
    return {"device": device, "dtype": dtype}


def init_rnn_weights(module: nn.Module, hidden_size: int, init: str) -> None:
    """Initialise a recurrent module's own parameters (grunet's or torch's, same names).
    init='torch': every parameter ~ U(-1/sqrt(H), 1/sqrt(H)) as nn.GRU does.
    init='keras': Keras defaults: glorot_uniform input weights, orthogonal recurrent weights (over the
    whole (3U, U) matrix, like Keras's (U, 3U) recurrent_kernel), zero biases.
    Layer-norm gains (layer_norm_*) start at one either way."""
    expect(init in INITS, "init", f"one of {list(INITS)}", repr(init))
    with torch.no_grad():
        for name, p in module.named_parameters():
            if name.startswith("layer_norm"):  # layer-norm gains start as the identity, as nn.LayerNorm's
                nn.init.ones_(p)
            elif init == "torch":
                bound = 1.0 / math.sqrt(hidden_size)
                nn.init.uniform_(p, -bound, bound)
            elif name.startswith("weight_ih"):
                nn.init.xavier_uniform_(p)
            elif name.startswith("weight_hh"):
                nn.init.orthogonal_(p)
            else:
                nn.init.zeros_(p)


def script_refused(kind: str) -> GrunetError:
    """torch.jit.script asks each module to prepare itself (__prepare_scriptable__) before compiling it; a
    grunet layer refuses there in one line, since TorchScript cannot compile its Python dispatch."""
    return GrunetError(f"torch.jit.script: expected torch.export.export(model, (x,)) (or torch.compile, or "
                       f"torch.jit.trace) for a model holding {kind}, got torch.jit.script of it (TorchScript "
                       f"cannot compile grunet's layers)")


class GRU(nn.Module):
    r"""A multi-layer GRU over a sequence: a drop-in for ``torch.nn.GRU`` that also runs the original Keras GRU.

    For every element of the input sequence each layer computes (sigma = ``recurrent_activation``)::

        reset-after (reset_after=True, the default: PyTorch, cuDNN, Keras >= 2.4)
            r_t = sigma(W_ir x_t + b_ir + W_hr h_(t-1) + b_hr)          reset gate
            z_t = sigma(W_iz x_t + b_iz + W_hz h_(t-1) + b_hz)          update gate
            n_t = tanh(W_in x_t + b_in + r_t * (W_hn h_(t-1) + b_hn))   candidate state
        reset-before (reset_after=False, the original Keras GRU: one bias per gate)
            r_t = sigma(W_ir x_t + W_hr h_(t-1) + b_r)
            z_t = sigma(W_iz x_t + W_hz h_(t-1) + b_z)
            n_t = tanh(W_in x_t + W_hn (r_t * h_(t-1)) + b_n)
        both
            h_t = z_t * h_(t-1) + (1 - z_t) * n_t                      (z is the share of the old state kept)

    ``*`` is the elementwise product. Layer k > 0 reads the outputs of layer k - 1 (both directions side by
    side when bidirectional), with dropout between layers while training. reset-after with sigmoid gates gives
    the same numbers as ``torch.nn.GRU`` and loads and saves its state dicts.

    Args:
        input_size: features of x (an int >= 1).
        hidden_size: features of the state h, H (an int >= 1).
        num_layers: stacked layers (an int >= 1; default 1).
        bias: False drops every bias (a bool; default True).
        batch_first: True takes and returns (batch, seq, feature) instead of (seq, batch, feature); h_n stays
            (layers*directions, batch, H) either way (a bool; default False).
        dropout: probability of zeroing each output of every layer but the last while training (a number in
            [0, 1]; default 0).
        bidirectional: True adds a reverse direction to every layer (a bool; default False).
        proj_size: only 0: a GRU has no projection (PyTorch offers it for LSTM only).
        reset_after: keyword only; False = the reset-before variant above (a bool; default True).
        recurrent_activation: keyword only; the gates' sigma: "sigmoid" (default), "hard_sigmoid_keras2"
            = clip(0.2 x + 0.5, 0, 1) or "hard_sigmoid_keras3" = clip(x / 6 + 0.5, 0, 1).
        impl: keyword only; "auto" (the device's fused kernel where it can run: the C++ kernel on CPU, cuDNN or
            grunet's Triton kernel on CUDA; else the reference loop with one warning), "fused" (the kernel or
            an error), "triton" (the Triton kernel: CUDA, or CPU under TRITON_INTERPRET=1) or "reference"
            (the plain loop of grunet.reference).
        init: keyword only; "torch" (every parameter ~ U(-1/sqrt(H), 1/sqrt(H)), as nn.GRU) or "keras"
            (glorot-uniform input weights, orthogonal recurrent weights, zero biases).
        device, dtype: keyword only; where the parameters live and their floating-point type.

    Inputs: ``input, hx=None, lengths=None``
        input: (L, N, input_size), (N, L, input_size) when batch_first, (L, input_size) unbatched, or a
            ``torch.nn.utils.rnn.PackedSequence``. L >= 1; N may be 0.
        hx: initial state (num_layers * num_directions, N, H), or (num_layers * num_directions, H) for an
            unbatched input; None means zeros. Rows are ordered layer by layer, forward direction first.
        lengths: grunet's addition: N valid lengths in [1, L] (an integer tensor or list) for a padded batch;
            steps past a sequence's length leave its state alone and output zeros, and its reverse pass starts
            at its own last valid step: the numbers of a PackedSequence, without packing.

    Outputs: ``(output, h_n)``
        output: (L, N, D * H) ((N, L, D * H) when batch_first, (L, D * H) unbatched; a PackedSequence for a
            packed input) with D = 2 if bidirectional else 1: the last layer's h_t for every t.
        h_n: (num_layers * D, N, H) (unbatched: (num_layers * D, H)): every layer's and direction's final state.

    Attributes (k: layer, suffix "" or "_reverse"; rows of every matrix in blocks r | z | n):
        weight_ih_l{k}{suffix}: (3H, input_size) for k = 0, else (3H, D * H).
        weight_hh_l{k}{suffix}: (3H, H).
        bias_ih_l{k}{suffix}, bias_hh_l{k}{suffix}: (3H,) each (reset-after with bias).
        bias_l{k}{suffix}: (3H,) (reset-before with bias: one bias per gate).
        all_weights, _flat_weights, _flat_weights_names, _all_weights: the parameters and their names in
            nn.GRU's order, for code that reads them; flatten_parameters() packs them for cuDNN on CUDA
            (see there) and does nothing elsewhere.

    Differences from torch.nn.GRU: ``isinstance(gru, torch.nn.GRU)`` is False (a subclass would make
    torch.compile break its graph at every layer); test with ``isinstance(m, grunet.GRU_TYPES)``. Bad
    arguments and inputs raise ``grunet.GrunetError`` (a ValueError and a RuntimeError; a wrong type also a
    TypeError) with one line: what, what was expected, what came.

    Example::

        >>> gru = grunet.GRU(28, 75, batch_first=True)
        >>> out, h_n = gru(torch.randn(50, 28, 28))            # (50, 28, 75), (1, 50, 75)
        >>> keras = grunet.GRU(28, 75, batch_first=True, reset_after=False, init="keras",
        ...                    recurrent_activation="hard_sigmoid_keras2")
    """

    def __init__(
        self,
        input_size: int,
        hidden_size: int,
        num_layers: int = 1,
        bias: bool = True,
        batch_first: bool = False,
        dropout: float = 0.0,
        bidirectional: bool = False,
        proj_size: int = 0,
        *,
        reset_after: bool = True,
        recurrent_activation: str = "sigmoid",
        layer_norm: bool = False,
        recurrent_dropout: float = 0.0,
        input_dropout: float = 0.0,
        weight_dropout: float = 0.0,
        zoneout: float = 0.0,
        impl: str = "auto",
        init: str = "torch",
        device=None,
        dtype=None,
    ) -> None:
        super().__init__()
        integer_argument("input_size", input_size)
        integer_argument("hidden_size", hidden_size)
        integer_argument("num_layers", num_layers)
        bool_argument("layer_norm", layer_norm)
        options = {name: dropout_argument(value, name, ")") for name, value in (
            ("recurrent_dropout", recurrent_dropout), ("input_dropout", input_dropout),
            ("weight_dropout", weight_dropout), ("zoneout", zoneout))}
        for name, value in (("bias", bias), ("batch_first", batch_first), ("bidirectional", bidirectional),
                            ("reset_after", reset_after)):
            bool_argument(name, value)
        dropout = dropout_argument(dropout)
        no_projection(proj_size)
        activation_argument(recurrent_activation)
        expect(isinstance(init, str) and init in INITS, "init", f"one of {list(INITS)}", show(init))
        factory = factory_arguments(device, dtype)
        if dropout > 0 and num_layers == 1:  # as nn.GRU: dropout only acts between layers
            warnings.warn(f"dropout={dropout} with num_layers=1 does nothing: grunet.GRU (like torch.nn.GRU) "
                          "applies dropout between stacked layers only", stacklevel=2)
        self.input_size, self.hidden_size, self.num_layers = input_size, hidden_size, num_layers
        self.bias, self.batch_first, self.dropout = bias, batch_first, dropout
        self.bidirectional, self.reset_after, self.proj_size = bidirectional, reset_after, 0
        self.recurrent_activation, self.impl = recurrent_activation, check_impl(impl)
        # the contract every implementation gets (grunet.contract); refuses layer_norm with reset-before
        self.cell = CellSpec(reset_after=reset_after, activation=recurrent_activation, layer_norm=layer_norm,
                             **options)
        self.layer_norm = layer_norm
        for name, value in options.items():
            setattr(self, name, value)
        self.mode = "GRU"  # as nn.RNNBase, for code that inspects it
        H, D = hidden_size, 2 if bidirectional else 1
        # nn.RNNBase's bookkeeping of parameter names, per layer and direction, then flat
        self._all_weights: list[list[str]] = []
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
                if layer_norm:
                    for which in ("ih", "hh"):
                        self.register_parameter(f"layer_norm_{which}_l{k}{suffix}",
                                                nn.Parameter(torch.empty(3 * H, **factory)))
                self._all_weights.append([n for n in self.layer_weight_names(k, suffix) if n is not None])
        self._flat_weights_names: list[str] = [n for names in self._all_weights for n in names]
        self.init = init
        self.reset_parameters(init)
        self.flatten_parameters()  # parameters made on a CUDA device (device="cuda")

    @property
    def _flat_weights(self) -> list[Tensor]:
        """The parameters in nn.GRU's order, read afresh on every access, so that weight_norm and
        parametrizations (which replace a parameter by a computed tensor) are seen as they are now."""
        return [getattr(self, n) for n in self._flat_weights_names]

    @property
    def all_weights(self) -> list[list[Tensor]]:
        """[w_ih, w_hh, biases...] per layer and direction, as nn.GRU.all_weights."""
        return [[getattr(self, n) for n in names] for names in self._all_weights]

    def flatten_parameters(self) -> None:
        """On CUDA, for the cell cuDNN computes: put each layer and direction's parameters into one buffer in
        cuDNN's layout (the parameters become views of it, their values and identities kept), so that cuDNN
        reads them in place instead of copying them on every call. grunet calls cuDNN once per layer and
        direction, so each has a buffer of its own, where torch.nn.GRU has one for all.

        Everywhere else it does nothing: on CPU (grunet's kernels read the parameters as they are), for the
        cells the Triton kernel or the reference loop runs (they read them as they are too), and when a
        parameter is no longer a plain registered tensor of one dtype on one CUDA device (weight_norm,
        parametrizations, pruning, a bias set to None, tied weights), as torch.nn.GRU does.
        It runs after construction and after every .cuda() / .to() / .half() (``_apply``); in-place updates
        (optimizers, load_state_dict) keep the buffer. Models written for nn.GRU that call it run unchanged."""
        groups = self._cudnn_groups()
        if groups and cudnn.flattenable([p for params, _ in groups for p in params]):  # refuses None too
            for params, width in groups:
                cudnn.flatten(params, width, self.hidden_size)

    def _cudnn_groups(self) -> list[tuple[list[Optional[Tensor]], int]]:
        """(registered parameters, input width) of each layer and direction, the parameters in the order cuDNN
        takes them, for the cell cuDNN computes (else []). None stands where no parameter is registered under
        the name (weight_norm, parametrizations and pruning move it away; a bias may be set to None)."""
        if not cudnn.computes(self.cell):
            return []
        registered, D = self._parameters, 2 if self.bidirectional else 1
        return [([registered.get(n) for n in names], self.input_size if i < D else self.hidden_size * D)
                for i, names in enumerate(self._all_weights)]

    def _apply(self, fn, recurse=True):
        # .cuda(), .to() and .half() give the parameters new storage: flatten again, as nn.RNNBase does
        module = super()._apply(fn, recurse)
        self.flatten_parameters()
        return module

    def _suffixes(self) -> tuple[str, ...]:
        return ("", "_reverse") if self.bidirectional else ("",)

    def reset_parameters(self, init: Optional[str] = None) -> None:
        init_rnn_weights(self, self.hidden_size, init or self.init)

    def layer_weight_names(self, k: int, suffix: str = "") -> tuple[Optional[str], ...]:
        """Names of (w_ih, w_hh, b_ih, b_hh, g_ih, g_hh) of layer k and direction suffix, None where absent
        (reset-before: b_ih is the one bias; g_*: the layer-norm gains)."""
        names = (f"weight_ih_l{k}{suffix}", f"weight_hh_l{k}{suffix}")
        if not self.bias:
            names += (None, None)
        elif self.reset_after:
            names += (f"bias_ih_l{k}{suffix}", f"bias_hh_l{k}{suffix}")
        else:
            names += (f"bias_l{k}{suffix}", None)
        if self.layer_norm:
            return names + (f"layer_norm_ih_l{k}{suffix}", f"layer_norm_hh_l{k}{suffix}")
        return names + (None, None)

    def layer_weights(self, k: int, suffix: str = "") -> LayerWeights:
        """The parameters of layer k and direction suffix (grunet.contract.LayerWeights)."""
        params = self._parameters
        # the registered parameter, or whatever stands under that name (a pruning hook sets plain tensors)
        return LayerWeights(*(None if n is None else (params[n] if n in params else getattr(self, n))
                              for n in self.layer_weight_names(k, suffix)))

    def __prepare_scriptable__(self):
        raise script_refused("grunet.GRU")

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
        if self.layer_norm:
            s += ", layer_norm=True"
        for name in PROBABILITIES:
            if getattr(self, name):
                s += f", {name}={getattr(self, name)}"
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
        if T == 0:
            raise GrunetError(f"input: expected a sequence of length >= 1, got shape {tuple(input.shape)}")
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
            if not isinstance(lengths, Tensor):
                try:
                    lengths = torch.as_tensor(lengths)
                except (TypeError, ValueError, RuntimeError):
                    raise GrunetError(f"lengths: expected a 1-D integer tensor or list of {B} lengths, got "
                                      f"{show(lengths)}") from None
            if lengths.dtype not in INTEGER_DTYPES:
                raise GrunetError(f"lengths: expected integer values, got {lengths.dtype}")
            expect(lengths.dim() == 1 and lengths.shape[0] == B, "lengths", f"a 1-D tensor of {B} lengths (one per sequence)",
                   f"shape {tuple(lengths.shape)}")
            if B and torch.compiler.is_compiling():  # values are unknown while tracing: the graph checks them
                torch._assert_async(((lengths >= 1) & (lengths <= T)).all(),
                                    f"lengths: expected values in [1, {T}] (the sequence length)")
            elif B:
                lo, hi = int(lengths.min()), int(lengths.max())
                expect(lo >= 1 and hi <= T, "lengths", f"values in [1, {T}] (the sequence length)", f"min {lo}, max {hi}")
            lengths = lengths.to(device=x.device, dtype=torch.int64)
        return x, h0, lengths, unbatched

    def _run(self, x: Tensor, h0: Optional[Tensor], lengths: Optional[Tensor]) -> tuple[Tensor, Tensor]:
        cell = self.cell
        layer = layer_function(self.impl, x, cell)
        D = 2 if self.bidirectional else 1
        random_masks = self.training and not cell.plain
        T, B, H = x.shape[0], x.shape[1], self.hidden_size
        masks = Masks()
        h_n = []
        for k in range(self.num_layers):
            outs = []
            for d, suffix in enumerate(self._suffixes()):
                if random_masks:  # each layer and direction draws its own, from torch's generator
                    masks = Masks.draw(cell, True, T, B, x.shape[2], H, x)
                out, h = layer(x, None if h0 is None else h0[k * D + d], self.layer_weights(k, suffix),
                               cell.direction(d == 1), masks, lengths)
                outs.append(out)
                h_n.append(h)
            x = outs[0] if D == 1 else torch.cat(outs, 2)
            if self.dropout and self.training and k < self.num_layers - 1:
                x = nn.functional.dropout(x, self.dropout, training=True)
        # one layer and direction: a view, not a copy (stack would copy in forward and backward)
        return x, (h_n[0].unsqueeze(0) if len(h_n) == 1 else torch.stack(h_n, 0))


class GRUCell(nn.Module):
    r"""One GRU step: a drop-in for ``torch.nn.GRUCell`` that also runs the original Keras GRU's step.

    With x: input, h: previous state, sigma: ``recurrent_activation``::

        reset-after (reset_after=True, the default; the same numbers as torch.nn.GRUCell)
            r = sigma(W_ir x + b_ir + W_hr h + b_hr)
            z = sigma(W_iz x + b_iz + W_hz h + b_hz)
            n = tanh(W_in x + b_in + r * (W_hn h + b_hn))
        reset-before (reset_after=False, the original Keras GRU: one bias per gate)
            r = sigma(W_ir x + W_hr h + b_r)
            z = sigma(W_iz x + W_hz h + b_z)
            n = tanh(W_in x + W_hn (r * h) + b_n)
        both
            h' = z * h + (1 - z) * n

    Args:
        input_size: features of x (an int >= 1).
        hidden_size: features of h, H (an int >= 1).
        bias: False drops the biases (a bool; default True).
        reset_after, recurrent_activation, init, device, dtype: keyword only, as for grunet.GRU.

    Inputs: ``input, hx=None``
        input: (N, input_size) or (input_size,) unbatched. N may be 0.
        hx: (N, H) or (H,) unbatched, the same batch as input (no broadcasting); None means zeros.

    Output: h' of hx's shape, (N, H) or (H,).

    Attributes (rows in blocks r | z | n):
        weight_ih: (3H, input_size); weight_hh: (3H, H).
        bias_ih, bias_hh: (3H,) each for reset-after (None when bias=False, as in nn.GRUCell).
        bias: for reset-before with bias, the one (3H,) bias per gate (else the bool argument).

    ``isinstance(cell, torch.nn.GRUCell)`` is False; test with ``isinstance(m, grunet.GRU_CELL_TYPES)``.
    Bad arguments and inputs raise ``grunet.GrunetError`` (a ValueError and a RuntimeError; a wrong type
    also a TypeError) with one line.
    """

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
        integer_argument("input_size", input_size)
        integer_argument("hidden_size", hidden_size)
        bool_argument("bias", bias)
        bool_argument("reset_after", reset_after)
        activation_argument(recurrent_activation)
        expect(isinstance(init, str) and init in INITS, "init", f"one of {list(INITS)}", show(init))
        factory = factory_arguments(device, dtype)
        self.cell = CellSpec(reset_after=reset_after, activation=recurrent_activation)
        self.input_size, self.hidden_size, self.bias = input_size, hidden_size, bias
        self.reset_after, self.recurrent_activation, self.init = reset_after, recurrent_activation, init
        H = hidden_size
        self.weight_ih = nn.Parameter(torch.empty(3 * H, input_size, **factory))
        self.weight_hh = nn.Parameter(torch.empty(3 * H, H, **factory))
        if bias and reset_after:
            self.bias_ih = nn.Parameter(torch.empty(3 * H, **factory))
            self.bias_hh = nn.Parameter(torch.empty(3 * H, **factory))
        elif bias:
            self.bias = nn.Parameter(torch.empty(3 * H, **factory))  # type: ignore[assignment]
        elif reset_after:  # nn.GRUCell(bias=False) has them, as None
            self.register_parameter("bias_ih", None)
            self.register_parameter("bias_hh", None)
        self.reset_parameters(init)

    def reset_parameters(self, init: Optional[str] = None) -> None:
        init_rnn_weights(self, self.hidden_size, init or self.init)

    def __prepare_scriptable__(self):
        raise script_refused("grunet.GRUCell")

    def extra_repr(self) -> str:
        s = f"{self.input_size}, {self.hidden_size}"
        if self.bias is False:
            s += ", bias=False"
        s += f", reset_after={self.reset_after}"
        if self.recurrent_activation != "sigmoid":
            s += f", recurrent_activation={self.recurrent_activation!r}"
        return s

    def forward(self, input: Tensor, hx: Optional[Tensor] = None) -> Tensor:
        w = self.weight_ih
        if not isinstance(input, Tensor):
            raise GrunetError(f"input: expected a torch.Tensor, got {type(input).__name__}")
        expect(input.dim() in (1, 2), "input", "a 1-D (unbatched) or 2-D (batch, input_size) tensor",
               f"{input.dim()}-D shape {tuple(input.shape)}")
        expect(input.shape[-1] == self.input_size, "input", f"last dimension input_size={self.input_size}",
               f"shape {tuple(input.shape)}")
        expect(input.dtype == w.dtype, "input", f"dtype {w.dtype} (the parameters' dtype)", input.dtype)
        expect(input.device == w.device, "input", f"device {w.device} (the parameters' device)", input.device)
        unbatched = input.dim() == 1
        x = input.unsqueeze(0) if unbatched else input
        if hx is None:
            h = torch.zeros(x.shape[0], self.hidden_size, dtype=x.dtype, device=x.device)
        else:
            if not isinstance(hx, Tensor):
                raise GrunetError(f"hx: expected a torch.Tensor or None, got {type(hx).__name__}")
            # the state must match the input's batch exactly: no broadcasting, as nn.GRUCell
            want = (self.hidden_size,) if unbatched else (x.shape[0], self.hidden_size)
            expect(tuple(hx.shape) == want, "hx", f"shape {want} (batch, hidden_size) like the input's batch",
                   tuple(hx.shape))
            expect(hx.dtype == x.dtype and hx.device == x.device, "hx", f"{x.dtype} on {x.device}",
                   f"{hx.dtype} on {hx.device}")
            h = hx.unsqueeze(0) if unbatched else hx
        if not isinstance(self.bias, bool):
            b_ih, b_hh = self.bias, None
        elif self.bias:
            b_ih, b_hh = self.bias_ih, self.bias_hh
        else:
            b_ih = b_hh = None
        h_new = gru_step(x, h, LayerWeights(self.weight_ih, self.weight_hh, b_ih, b_hh), self.cell)
        return h_new.squeeze(0) if unbatched else h_new


# For type-based code (initialisers, layer surgery) that should treat both implementations alike:
# isinstance(m, GRU_TYPES). grunet.GRU is not an nn.GRU subclass: torch.compile refuses to trace into any
# nn.GRU instance and would break its graph at every grunet layer.
GRU_TYPES = (nn.GRU, GRU)
GRU_CELL_TYPES = (nn.GRUCell, GRUCell)
