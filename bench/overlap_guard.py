"""The overlap guard's pixel check (training/overlap.py) on AMi-Br against itself: its false matches, and how many
planted copies it finds. Prints figures (the README quotes them); not a test.

    python bench/overlap_guard.py ../shared/data/amibr/manifest.csv

1. False matches: the check on every pair of distinct patches (exact pixel duplicates removed first): AMi-Br
   labels each figure once, so every match is a false one.
2. Within its own splits and folds (the guard within one dataset): of those pairs, the ones across its split
   (a held-out row and a training row) and across its domains (a LODO fold's validation and training domains),
   by pixels and by slide and position (same slide within POSITION_TOLERANCE px), and the closest two figures of
   one slide.
3. Planted copies: each patch shifted by up to 4 px (edge-padded) and re-encoded as JPEG (quality 75), then
   the check between the originals and the copies: a copy found is its own original matched; any other pair
   matched is a false match.
"""

from __future__ import annotations

import argparse
import io
import sys
import time
from pathlib import Path

import numpy as np
from PIL import Image
from scipy.spatial import cKDTree

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from training import overlap  # noqa: E402
from training.data import DataSource, load  # noqa: E402

SHIFT, QUALITY = 4, 75


def planted_copy(image: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """``image`` shifted by up to SHIFT px each way (edge-padded), then JPEG re-encoded."""
    dy, dx = rng.integers(-SHIFT, SHIFT + 1, 2)
    padded = np.pad(image, ((SHIFT, SHIFT), (SHIFT, SHIFT), (0, 0)), mode="edge")
    shifted = padded[SHIFT + dy:SHIFT + dy + image.shape[0], SHIFT + dx:SHIFT + dx + image.shape[1]]
    buffer = io.BytesIO()
    Image.fromarray(shifted).save(buffer, format="JPEG", quality=QUALITY)
    return np.asarray(Image.open(buffer).convert("RGB"))


def within_splits(data, pairs: np.ndarray, scores: np.ndarray) -> str:
    """Matches (by pixels: ``pairs`` and their ``scores``; by slide and position) across the data's split and across
    its domains, and the closest two figures of one slide."""
    splits = data.splits if data.splits is not None else np.full(len(data), "")
    positions = overlap.position_matches(data.slide_files, data.positions, data.slide_files, data.positions)
    positions = positions[positions[:, 0] < positions[:, 1]]
    closest = min((cKDTree(data.positions[k]).query(data.positions[k], 2)[0][:, 1].min()
                   for k in (np.flatnonzero(data.slide_files == s) for s in set(data.slide_files)) if len(k) > 1),
                  default=np.inf)
    lines = []
    for name, groups in (("its split (held-out vs training rows)", splits), ("its domains (LODO folds)", data.domains)):
        across = groups[pairs[:, 0]] != groups[pairs[:, 1]]
        top = scores[across].max() if across.any() else float("nan")
        matched = int((scores[across] >= overlap.PIXEL_MATCH).sum())
        placed = int((groups[positions[:, 0]] != groups[positions[:, 1]]).sum())
        lines.append(f"across {name}: {int(across.sum())} candidate pairs, {matched} pixel matches (highest "
                     f"{top:.3f}), {placed} slide-position matches")
    return "\n".join([*lines, f"same slide within {overlap.POSITION_TOLERANCE:g} px: {len(positions)} pairs; the "
                       f"closest two figures of one slide are {closest:.1f} px apart"])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("manifest", type=Path)
    args = parser.parse_args()
    data = load([DataSource(args.manifest)])
    unique = np.sort(np.unique(data.images.reshape(len(data), -1), axis=0, return_index=True)[1])
    data = data.subset(unique)
    images = data.images
    n = len(images)
    print(f"{len(unique)} patches after removing exact duplicates; {n * (n - 1) // 2} pairs")
    start = time.perf_counter()
    prints = overlap.fingerprints(images)
    pairs = overlap.candidates(prints)  # i < j
    scores = overlap.best_correlation(prints[pairs[:, 0]], prints[pairs[:, 1]])
    seconds = time.perf_counter() - start
    top = np.sort(scores)[-3:][::-1] if len(scores) else []
    print(f"against itself: {len(pairs)} candidate pairs, {int((scores >= overlap.PIXEL_MATCH).sum())} false "
          f"matches (correlation >= {overlap.PIXEL_MATCH}; highest {', '.join(f'{s:.3f}' for s in top)}), "
          f"{seconds:.1f} s")
    print(within_splits(data, pairs, scores))
    rng = np.random.default_rng(0)
    copies = np.stack([planted_copy(image, rng) for image in images])
    start = time.perf_counter()
    matched = overlap.pixel_matches(prints, overlap.fingerprints(copies))
    seconds = time.perf_counter() - start
    own = matched[:, 0] == matched[:, 1]
    lowest = overlap.best_correlation(prints, overlap.fingerprints(copies)).min()
    print(f"planted copies (shift <= {SHIFT} px, JPEG q{QUALITY}): {len(set(matched[own, 0]))}/{n} found "
          f"(lowest correlation {lowest:.3f}), {int((~own).sum())} false matches among the {n * n - n} other "
          f"pairs, {seconds:.1f} s")


if __name__ == "__main__":
    main()
