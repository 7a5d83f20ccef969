"""Leave-one-domain-out folds: each fold holds one domain out for validation (model selection) and,
optionally, the next one out for testing; the rest is training data. Domains never leak across parts."""

from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np


@dataclass(frozen=True)
class Fold:
    val_domain: str
    train_domains: tuple[str, ...]
    test_domain: str | None = None

    @property
    def name(self) -> str:
        return f"val-{self.val_domain}" + (f"_test-{self.test_domain}" if self.test_domain else "")

    def to_dict(self) -> dict:
        return asdict(self)

    def indices(self, domains: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(train, val, test) row indices for an array of per-patch domains."""
        return (np.flatnonzero(np.isin(domains, self.train_domains)),
                np.flatnonzero(domains == self.val_domain),
                np.flatnonzero(domains == self.test_domain) if self.test_domain else np.array([], int))


def lodo_folds(domains: list[str] | np.ndarray, hold_out_test: bool = False) -> list[Fold]:
    names = sorted(set(map(str, domains)))
    if len(names) < (3 if hold_out_test else 2):
        raise ValueError(f"leave-one-domain-out needs at least {3 if hold_out_test else 2} domains, got {names}")
    folds = []
    for i, val in enumerate(names):
        test = names[(i + 1) % len(names)] if hold_out_test else None
        folds.append(Fold(val, tuple(d for d in names if d not in (val, test)), test))
    return folds
