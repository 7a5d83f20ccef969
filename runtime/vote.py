"""How the fold models' probabilities become one answer per patch: one implementation for the container
(process.py, ``amf predict``), ``amf evaluate`` and ``amf calibrate``; the ensemble spec names its rule
(``vote`` in runtime/contract.py; a spec without it means majority).

Each model (a column of the [N, F] probabilities) is taken at its own threshold.
- ``majority`` (seed 001's rule): atypical when more than half of the F models have P(atypical) >= their
  threshold; an exact tie (F even) goes to the mean probability against the mean threshold.
- ``mean-probability``: the mean probability against the mean threshold.
- ``mean-then-vote`` (several models per fold): the mean probability and threshold within each fold, then the
  folds' majority, as above.
Confidence: the mean probability (mean-then-vote: the mean of the folds' means, each fold counted once).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from runtime.contract import MAJORITY, MEAN_PROBABILITY, MEAN_THEN_VOTE, VOTE_RULES


def vote(probs: np.ndarray, thresholds: np.ndarray | Sequence[float], rule: str = MAJORITY,
         folds: Sequence[str] | None = None) -> tuple[np.ndarray, np.ndarray]:
    """probs float [N, F] -> (atypical bool [N], confidence float64 [N]). ``folds``: each column's fold, for
    mean-then-vote (default: a fold per column, which makes it the majority)."""
    probs = np.asarray(probs, dtype=np.float64)
    thresholds = np.asarray(thresholds, dtype=np.float64).reshape(-1)
    if rule == MEAN_THEN_VOTE:
        probs, thresholds = fold_means(probs, thresholds, folds)
    elif rule not in VOTE_RULES:
        raise ValueError(f"unknown vote rule {rule!r} ({' | '.join(VOTE_RULES)})")
    confidence = probs.mean(axis=1)
    above_mean = confidence >= thresholds.mean()
    if rule == MEAN_PROBABILITY:
        return above_mean, confidence
    votes = (probs >= thresholds).sum(axis=1)
    n_models = probs.shape[1]
    return np.where(2 * votes == n_models, above_mean, 2 * votes > n_models), confidence


def fold_means(probs: np.ndarray, thresholds: np.ndarray,
               folds: Sequence[str] | None) -> tuple[np.ndarray, np.ndarray]:
    """[N, F] probabilities and [F] thresholds -> their means within each fold, [N, K] and [K], the folds in
    the order they first appear in ``folds`` (None: a fold per column)."""
    if folds is None:
        return probs, thresholds
    if len(folds) != probs.shape[1]:
        raise ValueError(f"{len(folds)} fold names for {probs.shape[1]} models")
    columns = [[i for i, f in enumerate(folds) if f == name] for name in dict.fromkeys(folds)]
    return (np.stack([probs[:, c].mean(axis=1) for c in columns], axis=1),
            np.array([thresholds[c].mean() for c in columns]))
