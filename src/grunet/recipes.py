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
    "steps": 30_000,
    "batch_size": 128,
    "lr": 3e-3,
    "lr_schedule": "cosine",
    "warmup_steps": 500,
    "clip_norm": 1.0,
    "shuffle": True,
    "shift": 1,
    "label_smoothing": 0.1,
    "ema": 0.999,
    "validation": 5000,
    "eval_every": 1000,
}

RECIPES = {"tutorial": TUTORIAL, "tuned": TUNED}


def settings(recipe: str, *overrides: dict) -> dict:
    """The recipe's settings with ``overrides`` applied in order (later ones win), ``recipe`` recorded."""
    from .errors import expect

    expect(recipe in RECIPES, "--recipe", f"one of {list(RECIPES)}", repr(recipe))
    merged = {**RECIPES[recipe], "recipe": recipe}
    for o in overrides:
        merged.update(o)
    merged["recipe"] = recipe
    return merged
