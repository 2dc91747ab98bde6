"""Helpers shared by the test files."""
from grunet.contract import NO_MASKS, CellSpec, LayerWeights


def positional(layer):
    """A layer function of the grunet.contract signature, called with the plain GRU's tensors and options:
    ``call(x, h0, w_ih, w_hh, b_ih, b_hh, *, reset_after, activation_name, lengths, reverse)``. The many
    parametrized kernel and reference tests build their cases that way."""

    def call(x, h0, w_ih, w_hh, b_ih=None, b_hh=None, *, reset_after=True, activation_name="sigmoid",
             lengths=None, reverse=False):
        spec = CellSpec(reset_after=reset_after, activation=activation_name, reverse=reverse)
        return layer(x, h0, LayerWeights(w_ih, w_hh, b_ih, b_hh), spec, NO_MASKS, lengths)

    return call
