"""How a classifier's predictions score against the true classes."""
from __future__ import annotations

import torch


def confusion_matrix(labels: torch.Tensor, predictions: torch.Tensor, classes: int) -> torch.Tensor:
    """C[i, j] = number of digits of class i predicted as j."""
    return torch.bincount(labels * classes + predictions, minlength=classes * classes).reshape(classes, classes)
