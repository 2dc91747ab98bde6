"""Make the Keras 2 fixtures of tests/test_convert*.py with real Keras 2 (tf-keras), into tests/fixtures/keras/.

Run once in a separate environment (the files are committed; the tests need neither TensorFlow nor Keras):
    python -m venv /tmp/venv-tf && /tmp/venv-tf/bin/pip install tensorflow-cpu==2.21.0 tf-keras==2.21.0 h5py
    /tmp/venv-tf/bin/python scripts/make_keras2_fixtures.py

For each model of keras_fixture_models.py, with seeded random weights:
    keras2_<name>.h5    model.save(..., save_format="h5"): the legacy full-model HDF5 of Keras 2
    keras2_<name>.npz   {x, y}: y = Keras's own model(x, training=False)
The tutorial models are also saved in tf-keras's .keras archive (keras2_<name>.keras).
Also keras2_hard_sigmoid.h5 and keras2_bidirectional.h5 (GRU reset-before + hard_sigmoid -> Dense softmax; a
functional Input -> Bidirectional(GRU) -> Dense).
"""
from __future__ import annotations

import os
import sys
from pathlib import Path

os.environ["TF_USE_LEGACY_KERAS"] = "1"
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
os.environ.setdefault("CUDA_VISIBLE_DEVICES", "")
import numpy as np  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parent))
from keras_fixture_models import inputs, models, seed_weights  # noqa: E402

OUT = Path(__file__).resolve().parents[1] / "tests" / "fixtures" / "keras"


def main() -> int:
    import tensorflow as tf
    import tf_keras as keras

    OUT.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(20261130)
    built = models(keras, 2)
    L = keras.layers
    built["hard_sigmoid"] = keras.Sequential([keras.Input(shape=(8, 5)),
                                              L.GRU(6, reset_after=False, recurrent_activation="hard_sigmoid"),
                                              L.Dense(4, activation="softmax")])
    inp = keras.Input(shape=(6, 3))
    built["bidirectional"] = keras.Model(inp, L.Dense(3)(L.Bidirectional(L.GRU(4))(inp)))
    for name, model in built.items():
        seed_weights(model, rng)
        x = inputs(name, model, rng)
        y = model(x, training=False).numpy()
        model.save(OUT / f"keras2_{name}.h5", save_format="h5")
        if name.startswith("tutorial"):
            model.save(OUT / f"keras2_{name}.keras")
        np.savez(OUT / f"keras2_{name}.npz", x=x, y=y)
        print(f"keras2_{name}: x {x.shape} -> y {y.shape}")
    (OUT / "VERSIONS-keras2.txt").write_text(f"tf-keras {keras.__version__}, tensorflow-cpu {tf.__version__}, "
                                             f"numpy {np.__version__}\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
