"""The exported ensemble at run time: test-time augmentation views -> a runner (runtime/runners.py) -> the vote.

Reads the ensemble spec (runtime/contract.py); where it runs is runtime/device.py's choice, how is the runner's.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from runtime import tta
from runtime.contract import TTA_VIEWS, VOTE_RULES, read_spec
from runtime.errors import ModelError
from runtime.runners import open_runner
from runtime.vote import vote

PAGES_PER_RUN, IMAGES_PER_RUN = 64, 128  # the default run: 64 pages, or 16 pages of 8 views with D4 TTA


def default_pages_per_run(tta_mode: str) -> int:
    """Pages per inference run unless the caller sets it: PAGES_PER_RUN, at most IMAGES_PER_RUN views."""
    return min(PAGES_PER_RUN, IMAGES_PER_RUN // TTA_VIEWS[tta_mode])


@dataclass
class Prediction:
    atypical: np.ndarray  # bool [N]
    confidence: np.ndarray  # float [N], P(atypical) of the ensemble
    member_probs: np.ndarray  # float32 [N, members]


class Ensemble:
    """``tta`` and ``vote`` override the spec's test-time augmentation and vote rule. ``fork``: the caller allows
    worker processes (process.py and ``amf predict`` pass :func:`runtime.forked.fork_is_safe`; evaluation and
    calibration, which load PyTorch, do not fork). ``n_pages`` (the stack's size) informs the device choice;
    ``pages_per_run`` bounds the pages per inference run (default :func:`default_pages_per_run`). ``device_note``
    says why CUDA was wanted but does not run (None otherwise); ``provider`` and ``layout`` are the runner's.
    ``close`` ends the runner's workers."""

    def __init__(self, weights_dir: str | Path, tta: str | None = None, vote: str | None = None,
                 n_pages: int | None = None, fork: bool = False, pages_per_run: int | None = None) -> None:
        self.spec = read_spec(weights_dir)
        self.model_file, self.thresholds = self.spec.model_file, self.spec.thresholds
        if tta is not None and tta not in TTA_VIEWS:  # the spec's own mode and rule are checked by read_spec
            raise ModelError(f"unknown tta {tta!r} ({' | '.join(TTA_VIEWS)})")
        if vote is not None and vote not in VOTE_RULES:
            raise ModelError(f"unknown vote rule {vote!r} ({' | '.join(VOTE_RULES)})")
        self.tta, self.vote = tta or self.spec.tta, vote or self.spec.vote
        self.pages_per_run = pages_per_run or default_pages_per_run(self.tta)
        self.runner, self.device_note = open_runner(self.spec, fork, n_pages)
        self.provider, self.layout = self.runner.provider, self.runner.layout

    def describe(self) -> str:
        """``4 members (4 folds) on CPUExecutionProvider (<layout>), tta none, vote majority``."""
        members, folds = len(self.spec.member_names), len(set(self.spec.member_of))
        return (f"{members} member{'s' * (members != 1)} ({folds} fold{'s' * (folds != 1)}) on {self.provider} "
                f"({self.layout}), tta {self.tta}, vote {self.vote}")

    def close(self) -> None:
        self.runner.close()

    def __del__(self) -> None:
        if getattr(self, "runner", None) is not None:
            self.runner.close()

    def probabilities(self, pages: np.ndarray) -> np.ndarray:
        """uint8 [N, S, S, 3] -> float32 [N, members]: P(atypical) per member (with TTA: the mean over the
        views), ``pages_per_run`` pages at a time."""
        size = self.spec.patch_size
        if pages.dtype != np.uint8 or pages.shape[1:] != (size, size, 3):
            raise ModelError(f"{self.model_file}: the model takes uint8 [N, {size}, {size}, 3] pages, "
                             f"got {pages.dtype} {list(pages.shape)}")
        step = self.pages_per_run
        probs = np.empty((len(pages), len(self.thresholds)), np.float32)
        for start in range(0, len(pages), step):
            chunk = pages[start:start + step]
            probs[start:start + len(chunk)] = tta.mean_over_views(self._run(tta.views(chunk, self.tta)), len(chunk))
        if not np.isfinite(probs).all() or (probs < 0).any() or (probs > 1).any():
            raise ModelError(f"{self.model_file}: the model produced non-finite or out-of-range probabilities")
        return probs

    def _run(self, batch: np.ndarray) -> np.ndarray:
        out = self.runner.run(batch)
        if out.shape != (len(batch), len(self.thresholds)):
            raise ModelError(f"{self.model_file}: output {self.spec.output_name!r} has shape {list(out.shape)}, "
                             f"expected [{len(batch)}, {len(self.thresholds)}] (pages x members)")
        return out

    def predict(self, pages: np.ndarray) -> Prediction:
        probs = self.probabilities(pages)
        atypical, confidence = vote(probs, self.thresholds, self.vote, self.spec.member_of)
        return Prediction(atypical, confidence, probs)
