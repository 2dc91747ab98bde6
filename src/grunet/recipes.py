"""Named sets of defaults for grunet train: each setting of a recipe is an option of its own, and the
options a user gives (in a --config file, then on the command line) override it.

    tutorial  the tutorial's experiment, unchanged (TrainConfig's defaults): the test set evaluated every 100
              steps, best.pt the best of those evaluations
    tuned     the same model (GRU(75) + Dense(10)) trained for accuracy within ~10 minutes on 2 cores; best.pt
              and any early stop are chosen on a validation split, the test set is evaluated for the record.
              Why each setting: benchmarks/RESULTS.md (ablation)
"""
from __future__ import annotations

TUTORIAL: dict = {}

TUNED: dict = {
    "recipe": "tuned",
    "steps": 55_000,  # 6-7 minutes on 2 cores (18,000-20,500 samples/s with layer norm and shifts)
    "batch_size": 128,
    "lr": 3e-3,
    # constant: with the EMA below, it beat warm-up + cosine decay at this length (3 seeds each)
    "lr_schedule": "constant",
    "warmup_steps": 0,
    "clip_norm": 1.0,
    "shuffle": True,
    "reset_after": True,  # the layer-normalised GRU normalises W_hh h, which only the reset-after GRU forms
    "layer_norm": True,
    "shift": 1,
    "label_smoothing": 0.1,
    "ema": 0.999,
    "validation": 5000,
    "eval_every": 1000,
}

RECIPES = {"tutorial": TUTORIAL, "tuned": TUNED}

# the shorter runs (the bundled sample, the pixel views) decay the rate: measured so, and they end before an
# average over a constant rate has settled
COSINE = {"lr_schedule": "cosine", "warmup_steps": 500}

# the tuned recipe's settings that depend on the data: (dataset or view) -> settings over TUNED
TUNED_FOR = {
    # the bundled sample's 4,000 training images hold less than 5,000 to hold out; they take 8,000 steps
    "mnist-sample": {"validation": 500, "steps": 8_000, "eval_every": 500, **COSINE},
    # 784 steps of one pixel: ~28 times a row's work per image, and samples/s on a CPU barely depend on the
    # batch, so batches of 32 buy 4x the updates of 128 in the same time. 30,000 steps of 32: under an hour
    # on one core (benchmarks/RESULTS.md, pixel views).
    # No layer norm: with one input feature, normalising W_ih x leaves only the sign of the pixel (x * w
    # normalised over the gates is sign(x) * w normalised) and its gradient blows up at the black pixels
    "pixels": {"steps": 30_000, "batch_size": 32, "eval_every": 2_500, "lr": 1e-3, "layer_norm": False,
               **COSINE},
    "permuted": {"steps": 30_000, "batch_size": 32, "eval_every": 2_500, "lr": 1e-3, "layer_norm": False,
                 **COSINE},
}


def settings(recipe: str, asked: dict, defaults: dict) -> dict:
    """The run's settings: the recipe's (for the asked data set and view), then ``asked`` over them;
    ``defaults``: TrainConfig's, for a data set or view that is not asked."""
    from .errors import expect

    expect(recipe in RECIPES, "--recipe", f"one of {list(RECIPES)}", repr(recipe))
    merged = dict(RECIPES[recipe])
    if recipe == "tuned":
        for key in (asked.get("dataset", defaults["dataset"]), asked.get("view", defaults["view"])):
            merged.update(TUNED_FOR.get(key, {}))
    return {**merged, **asked, "recipe": recipe}
