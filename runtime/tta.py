"""Test-time augmentation, one implementation for the container, evaluation and calibration.

``d4``: each page is seen in the 8 orientations of the dihedral group (4 rotations of the page and of its
mirror image); a model's probability is the mean over the 8. ``none``: the page as it is.
"""

from __future__ import annotations

import numpy as np

from runtime.contract import TTA_MODES


def views(pages: np.ndarray, mode: str) -> np.ndarray:
    """[N, H, W, C] -> [V * N, H, W, C], view-major: view v of page i is row ``v * N + i``."""
    if mode == "none":
        return np.ascontiguousarray(pages)
    if mode == "d4":
        return np.concatenate([np.rot90(v, k, axes=(1, 2)) for v in (pages, pages[:, :, ::-1]) for k in range(4)])
    raise ValueError(f"unknown tta {mode!r} ({' | '.join(TTA_MODES)})")


def mean_over_views(values: np.ndarray, n_pages: int) -> np.ndarray:
    """[V * N, ...] in :func:`views` order -> [N, ...], the mean over the V views of each page."""
    return values.reshape(-1, n_pages, *values.shape[1:]).mean(axis=0)
