"""One GRU layer and direction through PyTorch's own recurrent kernel (cuDNN on CUDA), for the cells it
computes exactly: reset-after, sigmoid gates, no layer norm, recurrent dropout or zoneout (input and weight
dropout are applied to x and W_hh before, as in every implementation).

``torch._VF.gru`` is what torch.nn.GRU calls; here it gets grunet's parameters of one layer and direction.
Lengths go through packing (pack_padded_sequence, as torch.nn.GRU does with packed input): a padded step takes
no part and outputs 0, h_n is each sequence's state at its last step. The reverse direction runs the same
forward call on each sequence reversed within its own length, and the outputs are put back in time order.

On CPU the same call runs PyTorch's CPU kernel, so the tests check this wrapper (packing, reversal, h0,
gradients) against grunet's reference loop without a GPU.

Flat weights: cuDNN reads a layer's parameters from one buffer in its own layout. When the parameters passed
to ``torch._VF.gru`` are views of one such buffer, in order from its start, ATen hands that buffer to cuDNN
as it is (try_get_weight_buf in ATen's cudnn/RNN.cpp); otherwise it copies them into a new buffer on every
call and warns. ``flatten`` builds that buffer for one layer and direction (torch.nn.GRU.flatten_parameters
does it for all its layers at once, because it makes one call for all of them; grunet makes one per layer and
direction, so each gets a buffer of its own). Weight dropout in training hands cuDNN m_w * W_hh, a new tensor
on every call, which it copies as it would any tensor outside the buffer.
"""
from __future__ import annotations

from typing import Optional

import torch
from torch import Tensor
from torch.nn.utils.rnn import pack_padded_sequence, pad_packed_sequence

from ...contract import CellSpec, LayerWeights, Masks
from ...reference import masked_inputs


def computes(spec: CellSpec) -> bool:
    """Whether PyTorch's kernel computes ``spec`` exactly (the cell of cuDNN and torch.nn.GRU)."""
    return (spec.reset_after and spec.activation == "sigmoid" and not spec.layer_norm
            and not spec.recurrent_dropout and not spec.zoneout)


def flattenable(params: list) -> bool:
    """Whether ``flatten`` can take ``params``: tensors, all on one CUDA device in one dtype that cuDNN
    accepts, none sharing memory with another (the conditions of torch.nn.GRU.flatten_parameters)."""
    if not params or not all(isinstance(p, Tensor) for p in params):
        return False
    first = params[0]
    if not all(p.dtype == first.dtype and p.device == first.device and torch.backends.cudnn.is_acceptable(p)
               for p in params):  # acceptable: cuDNN enabled, a CUDA tensor, a dtype it takes
        return False
    return len({p.data_ptr() for p in params}) == len(params)  # aliased parameters cannot get two places


def flatten(params: list[Tensor], input_size: int, hidden_size: int) -> None:
    """Copy one layer and direction's parameters, [w_ih, w_hh, b_ih, b_hh] or [w_ih, w_hh] (no biases),
    into one new buffer laid out as cuDNN's single-layer unidirectional GRU of that input width, and make each
    parameter a view of its place there (the same tensor objects, the same values). Takes what ``flattenable``
    accepts. torch.nn.GRU.flatten_parameters makes the same call with all its layers."""
    import torch.backends.cudnn.rnn as cudnn_rnn

    with torch.cuda.device_of(params[0]), torch.no_grad():  # set_ on leaves that require grad
        if torch._use_cudnn_rnn_flatten_weight():
            torch._cudnn_rnn_flatten_weight(params, len(params), input_size, cudnn_rnn.get_cudnn_mode("GRU"),
                                            hidden_size, 0, 1, False, False)  # proj 0, 1 layer, time-major, 1 direction


def _params(weights: LayerWeights) -> tuple[list[Tensor], bool]:
    if weights.b_ih is None and weights.b_hh is None:
        return [weights.w_ih, weights.w_hh], False
    zeros = lambda: weights.w_ih.new_zeros(weights.w_ih.shape[0])  # noqa: E731 - one bias absent
    b_ih = weights.b_ih if weights.b_ih is not None else zeros()
    b_hh = weights.b_hh if weights.b_hh is not None else zeros()
    return [weights.w_ih, weights.w_hh, b_ih, b_hh], True


def _reversal_index(lengths: Tensor, T: int) -> Tensor:
    """(T, B) time index that reverses each sequence within its length and leaves its padding in place."""
    t = torch.arange(T, device=lengths.device).unsqueeze(1)
    n = lengths.unsqueeze(0)
    return torch.where(t < n, n - 1 - t, t)


def gru_layer(x: Tensor, h0: Optional[Tensor], weights: LayerWeights, spec: CellSpec, masks: Masks,
              lengths: Optional[Tensor]) -> tuple[Tensor, Tensor]:
    """grunet.reference.gru_layer's function for the cells ``computes`` accepts."""
    x, weights = masked_inputs(x, weights, masks)
    T, B, H = x.shape[0], x.shape[1], weights.w_hh.shape[1]
    hx = (h0 if h0 is not None else x.new_zeros(B, H)).unsqueeze(0).contiguous()
    params, has_biases = _params(weights)
    training = torch.is_grad_enabled()
    if lengths is None:
        xs = x.flip(0) if spec.reverse else x
        out, h_n = torch._VF.gru(xs, hx, params, has_biases, 1, 0.0, training, False, False)
        return (out.flip(0) if spec.reverse else out), h_n[0]
    lengths = lengths.to(device=x.device, dtype=torch.int64)
    index = _reversal_index(lengths, T) if spec.reverse else None
    if index is not None:
        x = x.gather(0, index.unsqueeze(-1).expand_as(x))
    packed = pack_padded_sequence(x, lengths.cpu(), enforce_sorted=False)
    hx = hx.index_select(1, packed.sorted_indices)
    data, h_n = torch._VF.gru(packed.data, packed.batch_sizes, hx, params, has_biases, 1, 0.0, training, False)
    out, _ = pad_packed_sequence(packed._replace(data=data), total_length=T)
    if index is not None:
        out = out.gather(0, index.unsqueeze(-1).expand_as(out))
    return out, h_n[0].index_select(0, packed.unsorted_indices)
