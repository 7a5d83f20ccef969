"""How fold-model probabilities become one answer per patch (shared by evaluation and the container).

- class: majority vote: atypical when more than half of the F fold models have P(atypical) >= their
  threshold; an exact tie (F even) goes to the mean probability against the mean threshold.
- confidence: the mean of the F fold probabilities (the ensemble's probability of atypical).
"""

from __future__ import annotations

import numpy as np


def vote(probs: np.ndarray, thresholds: np.ndarray | list[float]) -> tuple[np.ndarray, np.ndarray]:
    """probs float [N, F] -> (atypical bool [N], confidence float64 [N])."""
    probs = np.asarray(probs, dtype=np.float64)
    thresholds = np.asarray(thresholds, dtype=np.float64).reshape(1, -1)
    votes = (probs >= thresholds).sum(axis=1)
    n_models = probs.shape[1]
    confidence = probs.mean(axis=1)
    atypical = np.where(2 * votes == n_models, confidence >= thresholds.mean(), 2 * votes > n_models)
    return atypical, confidence
