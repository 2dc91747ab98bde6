"""Exact weight interchange with Keras and PyTorch, and ONNX export (see README "Convert").

    from_keras(path, architecture=None)   .keras / legacy .h5 / .weights.h5 -> StackModel (h5py, no Keras)
    to_keras(model, path)                 StackModel or GRU SequenceClassifier -> Keras 3 .keras archive
    to_keras_h5(model, path)              ... -> Keras 2 full-model .h5 (hard_sigmoid = 0.2x + 0.5)
    to_torch_state_dict(gru)              grunet.GRU (reset-after, sigmoid) -> torch.nn.GRU state dict
    from_torch_state_dict(sd)             torch.nn.GRU state dict (or module) -> grunet.GRU
    export_onnx(model, path)              StackModel or GRU SequenceClassifier -> ONNX (GRU operator)
Layers: GRU, Bidirectional(GRU) (merge concat | sum | mul | ave), Dense, Activation, Dropout, SpatialDropout1D,
Flatten, Masking, Embedding (grunet.convert.stack); anything else is refused by name.
Weight layouts: grunet.convert.layout. Every conversion is a permutation of the same numbers: exact.
Keras files are untrusted: sizes, nesting, types and declared shapes are checked before anything is read
(keras_json, keras_read).
"""
from .keras_read import from_keras
from .keras_write import to_keras
from .keras2_write import to_keras_h5
from .onnx_export import export_onnx
from .stack import (ActivationSpec, DenseSpec, DropoutSpec, EmbeddingSpec, FlattenSpec, GRUSpec, MaskingSpec,
                    StackModel, as_stack)
from .torch_state import from_torch_state_dict, to_torch_state_dict

__all__ = ["from_keras", "to_keras", "to_keras_h5", "to_torch_state_dict", "from_torch_state_dict", "export_onnx",
           "StackModel", "GRUSpec", "DenseSpec", "ActivationSpec", "DropoutSpec", "FlattenSpec", "MaskingSpec",
           "EmbeddingSpec", "as_stack"]
