"""Cross-validation folds; a fold never shares a domain (LODO) or a slide (grouped k-fold) across its parts.

- ``lodo``: leave-one-domain-out (seed 001). Each fold holds one domain out for validation (model
  selection) and, optionally, the next one out for testing; the rest is training data.
- ``slide-kfold``: stratified k-fold grouped by slide (seed 002's 5-fold StratifiedGroupKFold): every
  slide's patches are in one part only, and each part keeps the class ratio as well as the groups allow.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np
from sklearn.model_selection import StratifiedGroupKFold

from runtime.errors import InputError

CV_SCHEMES = ("lodo", "slide-kfold")


@dataclass(frozen=True)
class Fold:
    val_domain: str | None = None
    train_domains: tuple[str, ...] = ()
    test_domain: str | None = None
    val_slides: tuple[str, ...] = ()  # slide-kfold: the validation slides (everything else trains)
    index: int | None = None  # slide-kfold: which of n_splits
    n_splits: int | None = None

    @property
    def name(self) -> str:
        if self.val_slides:
            return f"cv{self.index + 1}of{self.n_splits}"
        return f"val-{self.val_domain}" + (f"_test-{self.test_domain}" if self.test_domain else "")

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, entry: dict) -> Fold:
        """The fold that :meth:`to_dict` wrote (config.json's and ensemble.json's ``fold``; JSON lists back to
        tuples)."""
        return cls(**{k: tuple(v) if isinstance(v, list) else v for k, v in entry.items()})

    def indices(self, domains: np.ndarray,
                slides: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(train, val, test) row indices for arrays of per-patch domains (and slides, for slide folds)."""
        if self.val_slides:
            if slides is None:
                raise InputError(f"fold {self.name} splits by slide, but the data has no slide column")
            val = np.isin(slides, self.val_slides)
            return np.flatnonzero(~val), np.flatnonzero(val), np.array([], int)
        return (np.flatnonzero(np.isin(domains, self.train_domains)),
                np.flatnonzero(domains == self.val_domain),
                np.flatnonzero(domains == self.test_domain) if self.test_domain else np.array([], int))


def lodo_folds(domains: list[str] | np.ndarray, hold_out_test: bool = False) -> list[Fold]:
    names = sorted(set(map(str, domains)))
    if len(names) < (3 if hold_out_test else 2):
        raise InputError(f"leave-one-domain-out needs at least {3 if hold_out_test else 2} domains, got {names}")
    folds = []
    for i, val in enumerate(names):
        test = names[(i + 1) % len(names)] if hold_out_test else None
        folds.append(Fold(val, tuple(d for d in names if d not in (val, test)), test))
    return folds


def slide_kfolds(labels: np.ndarray, slides: np.ndarray | None, n_splits: int = 5, seed: int = 0) -> list[Fold]:
    if slides is None:
        raise InputError("slide-grouped k-fold needs a slide column in the manifest")
    if len(set(slides)) < n_splits:
        raise InputError(f"slide-grouped {n_splits}-fold needs at least {n_splits} slides, got {len(set(slides))}")
    cv = StratifiedGroupKFold(n_splits=n_splits, shuffle=True, random_state=seed)
    return [Fold(val_slides=tuple(sorted(set(slides[val]))), index=i, n_splits=n_splits)
            for i, (_, val) in enumerate(cv.split(np.zeros(len(labels)), labels, slides))]


def make_folds(scheme: str, domains: np.ndarray, labels: np.ndarray, slides: np.ndarray | None, *,
               n_splits: int = 5, hold_out_test: bool = False, seed: int = 0) -> list[Fold]:
    if scheme == "lodo":
        return lodo_folds(domains, hold_out_test)
    if scheme == "slide-kfold":
        return slide_kfolds(labels, slides, n_splits, seed)
    raise ValueError(f"unknown cross-validation scheme {scheme!r} (one of {CV_SCHEMES})")


def select_folds(folds: list[Fold], wanted: list[str]) -> list[Fold]:
    """The folds named in ``wanted`` (``amf train --folds``: fold names or validation domains), in run order; a name
    that matches none is an InputError listing the valid ones."""
    known = {f.name for f in folds} | {f.val_domain for f in folds if f.val_domain}
    unknown = [w for w in wanted if w not in known]
    if unknown:
        raise InputError(f"--folds: no fold {', '.join(map(repr, unknown))} in this run; its folds: "
                         f"{', '.join(f.name for f in folds)} (or, leaving one domain out, their validation domains)")
    return [f for f in folds if f.val_domain in wanted or f.name in wanted]


def fold_at(folds: list[Fold], index: int) -> list[Fold]:
    """``amf train --fold-index I``: the I-th fold (from 0) in run order, as a list of one; an index past the last
    is an InputError listing them. A SLURM array task passes its ``$SLURM_ARRAY_TASK_ID``."""
    if index >= len(folds):
        listed = ", ".join(f"{i} {f.name}" for i, f in enumerate(folds))
        raise InputError(f"--fold-index {index}: this run has {len(folds)} fold(s): {listed}")
    return [folds[index]]
