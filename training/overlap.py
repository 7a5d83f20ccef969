"""The same mitotic figure in two datasets: found by slide and position, or by the pixels at the patch centre.

- ``slide-position``: the same slide file name (as both manifests give it, e.g. MIDOG 2021's ``002.tiff``, which
  MIDOG++ and MIDOG 2025 reuse) and positions within POSITION_TOLERANCE px, where both datasets give them.
- ``pixels``: a fingerprint of the patch centre. Perceptual hashes (pHash, dHash) match far too many of these
  look-alike H&E patches, and so does plain intensity (a dark figure on a pale ground in every patch): the
  fingerprint is the band-pass detail of the central 80x80 px (grey, a difference of Gaussians, sigma 1 and 4 px,
  which JPEG noise and flat or padded areas do not pass), at half resolution. Two patches match when the
  normalised cross-correlation of one's central 64x64 px with the other's, shifted by up to MAX_SHIFT px either
  way, reaches PIXEL_MATCH at some shift. That survives PNG/JPEG re-encoding and shifts of a few px. Candidate
  pairs come first, cheaply, from the same correlation at quarter resolution (shifts of 4 px steps, CANDIDATE);
  the full check runs on those only. bench/overlap_guard.py measures both on AMi-Br against itself.

Pairs within one dataset count as well as pairs from two: a patch copied between split folders, or one figure
exported twice, leaks as surely as a figure two datasets share. :func:`find_overlaps` returns them as
``Match(i, j, kind)``, ``i < j`` row indices of one PatchSet; the guard (training/guard.py) refuses those that
cross from a held-out part into training.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy.ndimage import gaussian_filter
from scipy.spatial import cKDTree

from runtime.contract import PATCH_SIZE

POSITION_TOLERANCE = 8.0  # px on the slide: annotations of one figure by two datasets differ by a few px
MAX_SHIFT = 6  # px (full resolution) that a copy may be shifted by
CENTRE = 64  # px: the central square compared
MARGIN = 8  # px kept around it in the fingerprint (MAX_SHIFT, rounded up to whole quarter-resolution cells)
BAND = (1.0, 4.0)  # px: the difference of Gaussians
PIXEL_MATCH = 0.72  # best normalised cross-correlation (half resolution) that makes a match
CANDIDATE = 0.4  # best correlation at quarter resolution that makes a candidate pair
SLIDE_POSITION, PIXELS = "slide-position", "pixels"
BLOCK = 1024  # rows per block of the candidate search
GREY = np.array([0.299, 0.587, 0.114], np.float32)


@dataclass(frozen=True)
class Match:
    i: int
    j: int
    kind: str  # SLIDE_POSITION | PIXELS


def fingerprints(images: np.ndarray) -> np.ndarray:
    """uint8 [N, 128, 128, 3] -> float16 [N, 40, 40]: the band-pass detail of the central CENTRE + 2 MARGIN px,
    at half resolution."""
    grey = images.astype(np.float32) @ GREY
    detail = gaussian_filter(grey, (0, BAND[0], BAND[0])) - gaussian_filter(grey, (0, BAND[1], BAND[1]))
    lo, hi = PATCH_SIZE // 2 - CENTRE // 2 - MARGIN, PATCH_SIZE // 2 + CENTRE // 2 + MARGIN
    return _pool(detail[:, lo:hi, lo:hi])


def _pool(x: np.ndarray) -> np.ndarray:
    n, s = len(x), x.shape[1] // 2
    return x.reshape(n, s, 2, s, 2).mean(axis=(2, 4)).astype(np.float16)


def _unit(x: np.ndarray) -> np.ndarray:
    """The last axis centred and scaled to unit length (a flat vector stays 0)."""
    x = x - x.mean(axis=-1, keepdims=True)
    norm = np.linalg.norm(x, axis=-1, keepdims=True)
    return x / np.where(norm > 0, norm, 1)


def _centre_and_windows(prints: np.ndarray, shift: int) -> tuple[np.ndarray, np.ndarray]:
    """Unit vectors of each print's central CENTRE px [N, D] and of its windows of that size shifted by up to
    ``shift`` cells either way [N, (2 shift + 1)^2, D]."""
    size = prints.shape[1]
    c = size * CENTRE // (CENTRE + 2 * MARGIN)
    lo = (size - c) // 2 - shift
    inner = prints[:, lo:lo + c + 2 * shift, lo:lo + c + 2 * shift].astype(np.float32)
    windows = np.lib.stride_tricks.sliding_window_view(inner, (c, c), axis=(1, 2))
    return (_unit(inner[:, shift:shift + c, shift:shift + c].reshape(len(prints), -1)),
            _unit(windows.reshape(len(prints), (2 * shift + 1) ** 2, -1)))


def candidates(prints_a: np.ndarray, prints_b: np.ndarray | None = None) -> np.ndarray:
    """[K, 2] pairs (i in a, j in b) whose quarter-resolution correlation, at the best shift of up to 2 cells
    (8 px) either way, reaches CANDIDATE: every pair, as matrix products (one per shift), in blocks of a. Without
    ``prints_b``: the pairs i < j of a with itself (half the work)."""
    (ca, wa) = _centre_and_windows(_pool(prints_a.astype(np.float32)), 2)
    (cb, wb) = (ca, wa) if prints_b is None else _centre_and_windows(_pool(prints_b.astype(np.float32)), 2)
    found = []
    for start in range(0, len(ca), BLOCK):
        stop, first = min(start + BLOCK, len(ca)), start if prints_b is None else 0  # first: b's first row compared
        best = np.full((stop - start, len(cb) - first), -1.0, np.float32)
        for s in range(wa.shape[1]):  # a's centre in b's windows, and b's centre in a's
            np.maximum(best, ca[start:stop] @ wb[first:, s].T, out=best)
            np.maximum(best, wa[start:stop, s] @ cb[first:].T, out=best)
        i, j = np.nonzero(best >= CANDIDATE)
        keep = j + first > i + start if prints_b is None else slice(None)
        found.append(np.stack([i[keep] + start, j[keep] + first], 1))
    return np.concatenate(found) if found else np.zeros((0, 2), int)


def best_correlation(prints_a: np.ndarray, prints_b: np.ndarray, batch: int = 512) -> np.ndarray:
    """Pairs of fingerprints [K, 40, 40] each -> float [K]: the best normalised cross-correlation (half
    resolution) of one's centre with the other's, shifted by up to MAX_SHIFT px either way."""
    out = np.zeros(len(prints_a), np.float32)
    for start in range(0, len(prints_a), batch):
        (ca, wa), (cb, wb) = (_centre_and_windows(p[start:start + batch], MAX_SHIFT // 2) for p in (prints_a, prints_b))
        out[start:start + batch] = np.maximum(np.einsum("kd,ksd->ks", ca, wb).max(axis=1),
                                              np.einsum("kd,ksd->ks", cb, wa).max(axis=1))
    return out


def pixel_matches(prints_a: np.ndarray, prints_b: np.ndarray | None = None) -> np.ndarray:
    """[K, 2] pairs (i in a, j in b) whose centres show the same pixels; without ``prints_b``, the pairs i < j of a."""
    pairs = candidates(prints_a, prints_b)
    if not len(pairs):
        return pairs
    prints_b = prints_a if prints_b is None else prints_b
    return pairs[best_correlation(prints_a[pairs[:, 0]], prints_b[pairs[:, 1]]) >= PIXEL_MATCH]


def position_matches(slides_a: np.ndarray, xy_a: np.ndarray, slides_b: np.ndarray, xy_b: np.ndarray) -> np.ndarray:
    """[K, 2] pairs (i in a, j in b) on the same slide (non-empty name) within POSITION_TOLERANCE px."""
    names = {name: k for k, name in enumerate(sorted(set(slides_a) | set(slides_b)))}

    def points(slides: np.ndarray, xy: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        known = np.flatnonzero((slides != "") & np.isfinite(xy).all(axis=1))
        # the slide as a third coordinate, far apart: a ball never reaches another slide
        slide = np.array([names[s] for s in slides[known]], float) * 1e9
        return known, np.column_stack([xy[known], slide])

    (ia, pa), (ib, pb) = points(slides_a, xy_a), points(slides_b, xy_b)
    if not len(pa) or not len(pb):
        return np.zeros((0, 2), int)
    pairs = cKDTree(pa).query_ball_tree(cKDTree(pb), POSITION_TOLERANCE)
    return np.array([(ia[i], ib[j]) for i, js in enumerate(pairs) for j in js], int).reshape(-1, 2)


def find_overlaps(data, prints: np.ndarray | None = None) -> list[Match]:
    """Every pair of rows of one PatchSet (within a dataset or from two) that shows the same figure, by slide and
    position or by pixels (``prints``: :func:`fingerprints` of its images, when at hand; a pair found both ways
    counts as slide-position)."""
    prints = fingerprints(data.images) if prints is None else prints
    found: dict[tuple[int, int], str] = {(int(i), int(j)): PIXELS for i, j in pixel_matches(prints)}
    if data.slide_files is not None and data.positions is not None:
        for i, j in position_matches(data.slide_files, data.positions, data.slide_files, data.positions):
            if i < j:
                found[int(i), int(j)] = SLIDE_POSITION
    return [Match(i, j, kind) for (i, j), kind in sorted(found.items())]
