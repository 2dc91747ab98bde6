"""The Keras models of the test fixtures, written once for both Keras 2 (tf-keras) and Keras 3.

Used by make_keras2_fixtures.py (tf-keras) and make_keras_fixtures.py (Keras 3): ``models(keras)`` builds them
with the given Keras module, ``inputs(name, model, rng)`` makes the inputs Keras's outputs are recorded on, and
``seed_weights(model, rng)`` gives every weight (biases and embeddings included) seeded random values, so a
z/r swap, a dropped bias or a wrong mask cannot hide behind Keras's zero initial biases.
Masked inputs hold every padding kind: none, post-padding, pre-padding, a hole in the middle, all padding.
"""
from __future__ import annotations

import numpy as np

VOCAB = 20


def models(keras, version: int) -> dict:
    L = keras.layers
    seq = keras.Sequential

    def inp(shape, dtype="float32"):
        return keras.Input(shape=shape, dtype=dtype)

    hard = "hard_sigmoid"  # Keras 2: 0.2x + 0.5; Keras 3: x/6 + 0.5
    out = {
        # the tutorial's model as it was written: GRU(75) -> Dense(10) -> Activation("softmax")
        "tutorial_activation": seq([inp((28, 28)), L.GRU(75, reset_after=False, recurrent_activation=hard),
                                    L.Dense(10), L.Activation("softmax")]),
        # the same with the defaults of the Keras at hand (reset_after=True, sigmoid)
        "tutorial_default": seq([inp((28, 28)), L.GRU(75), L.Dense(10), L.Activation("softmax")]),
        "layers": seq([inp((6, 4)), L.SpatialDropout1D(0.3), L.GRU(5, return_sequences=True), L.Dropout(0.2),
                       L.Activation("tanh"), L.Flatten(), L.Dense(3), L.Activation("softmax")]),
        "merge_modes": seq([inp((6, 3)), L.Bidirectional(L.GRU(4, return_sequences=True), merge_mode="sum"),
                            L.Bidirectional(L.GRU(3, return_sequences=True, reset_after=False), merge_mode="mul"),
                            L.Bidirectional(L.GRU(3), merge_mode="ave"), L.Dense(2), L.Activation("sigmoid")]),
        "masking": seq([inp((7, 3)), L.Masking(0.0), L.GRU(5, return_sequences=True), L.Dense(2, activation="tanh")]),
        "masking_stack": seq([inp((7, 3)), L.Masking(0.5),
                              L.GRU(5, return_sequences=True, reset_after=False, recurrent_activation=hard),
                              L.Bidirectional(L.GRU(4, return_sequences=True), merge_mode="sum"),
                              L.Bidirectional(L.GRU(3), merge_mode="ave"), L.Dense(3, activation="softmax")]),
        "masking_bidirectional": seq([inp((7, 3)), L.Masking(0.0), L.Bidirectional(L.GRU(4, return_sequences=True)),
                                      L.Dense(2)]),
        "embedding": seq([inp((9,), "int32"), L.Embedding(VOCAB, 6, mask_zero=True), L.GRU(5, return_sequences=True),
                          L.Bidirectional(L.GRU(4), merge_mode="mul"), L.Dense(3, activation="softmax")]),
        "embedding_nomask": seq([inp((9,), "int32"), L.Embedding(VOCAB, 4), L.GRU(5), L.Dense(2)]),
    }
    return out


def seed_weights(model, rng) -> None:
    for w in model.weights:
        shape = tuple(int(s) for s in w.shape)
        scale = 0.6 if shape[0] <= 8 else 1.5 / np.sqrt(shape[0])
        w.assign((rng.normal(size=shape) * scale).astype(np.float32))


def inputs(name: str, model, rng) -> np.ndarray:
    shape = tuple(int(s) for s in model.input_shape[1:])
    if name.startswith("embedding"):
        ids = rng.integers(1, VOCAB, size=(5,) + shape).astype(np.int32)
        if name == "embedding":
            ids[1, 5:] = 0   # post-padding
            ids[2, :4] = 0   # pre-padding
            ids[3, 3:5] = 0  # a hole
            ids[4, :] = 0    # nothing but padding
        else:
            ids[1, :3] = 0   # 0 is an ordinary token without mask_zero
        return ids
    if name.startswith("tutorial"):
        return rng.random((4,) + shape).astype(np.float32)
    x = rng.normal(size=(5,) + shape).astype(np.float32)
    if name.startswith("masking"):
        pad = 0.5 if name == "masking_stack" else 0.0
        x[1, 4:] = pad
        x[2, :3] = pad
        x[3, 2:4] = pad
        x[4, :] = pad
        x[0, 3, 1] = pad  # one feature at the mask value does not mask the step
    return x
