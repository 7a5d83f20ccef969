"""Choose the ensemble's test-time augmentation, vote rule and decision threshold on the validation parts.

- TTA: the mean validation balanced accuracy at threshold 0.5 with and without D4 TTA; nothing is fitted, so the
  comparison is unbiased. D4 is chosen when it is higher.
- Vote rule and threshold: one threshold shared by all folds (fitting one per fold would overfit a single
  domain). Each rule (runtime/vote.py) is scored on each fold's validation part with that fold's members only
  (the other folds' models trained on that domain), at the grid threshold that maximises the mean validation
  balanced accuracy. Majority stays unless another rule gains at least VOTE_MIN_GAIN; with one model per fold
  every rule is that model at the threshold, so majority stays.
"""

from __future__ import annotations

import numpy as np
from sklearn.metrics import balanced_accuracy_score

from runtime import vote as voting
from runtime.contract import MAJORITY, VOTE_RULES
from training.validation import Scores

GRID = np.round(np.arange(0.2, 0.81, 0.01), 2)
VOTE_MIN_GAIN = 0.005  # mean validation BA another vote rule must gain over majority (seed 001's) to replace it


def choose_tta(mean_ba: float, mean_ba_tta: float) -> str:
    """d4 when its mean validation BA at 0.5 is higher than without TTA, else none."""
    return "d4" if mean_ba_tta > mean_ba else "none"


def fold_vote(probs: np.ndarray, threshold: float, vote: str = MAJORITY) -> np.ndarray:
    """One fold's answers: its members' probabilities, [N] (one model) or [N, M], voting at ``threshold``."""
    probs = probs.reshape(len(probs), -1)
    return voting.vote(probs, np.full(probs.shape[1], threshold), vote, ["one fold"] * probs.shape[1])[0]


def best_shared_threshold(per_fold: list[Scores], vote: str = MAJORITY) -> tuple[float, float]:
    """(threshold, mean BA) over the grid for [(labels, probabilities of the fold's members)] of several folds,
    the members voting by ``vote``; ties -> nearest 0.5."""
    scores = np.array([np.mean([balanced_accuracy_score(y, fold_vote(p, t, vote)) for y, p in per_fold])
                       for t in GRID])
    best = np.flatnonzero(scores >= scores.max() - 1e-12)
    i = best[np.argmin(np.abs(GRID[best] - 0.5))]
    return float(GRID[i]), float(scores[i])


def score_votes(per_fold: dict[str, Scores], votes=VOTE_RULES) -> dict[str, dict]:
    """fold -> (validation labels, its members' probabilities [N, M]) -> per vote rule: the best shared threshold,
    the mean validation BA there, and each fold's BA (``ba``)."""
    scored = {}
    for vote in votes:
        threshold, mean_ba = best_shared_threshold(list(per_fold.values()), vote)
        ba = {name: float(balanced_accuracy_score(y, fold_vote(p, threshold, vote)))
              for name, (y, p) in per_fold.items()}
        scored[vote] = {"threshold": threshold, "mean_ba": mean_ba, "ba": ba}
    return scored


def choose_vote(mean_ba: dict[str, float]) -> str:
    """The vote rule to ship from each rule's mean validation BA: majority unless another gains at least
    VOTE_MIN_GAIN (the first of VOTE_RULES among equals)."""
    best = max(VOTE_RULES, key=lambda vote: mean_ba[vote])
    return best if round(mean_ba[best] - mean_ba[MAJORITY], 12) >= VOTE_MIN_GAIN else MAJORITY
