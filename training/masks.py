"""Segmentation masks of the mitotic figure at the patch centre, for the two auxiliary tasks.

Built-in generator (a stand-in for seed 001's NuClick masks): hematoxylin channel by colour
deconvolution, smoothed, Otsu threshold over tissue (black padding excluded), cleaned; keep the dark
components that touch a disc around the patch centre (a dividing figure may be in pieces), else the nearest
one within reach, else a small disc at the centre; an oversized selection is re-thresholded within itself.
Results are cached on disk, keyed by the generator's version and the image bytes.
Masks made elsewhere (e.g. NuClick) are read with :func:`load_masks` (``amf train --masks``: :func:`external_masks`):
one PNG per patch, nonzero = figure.

    amf masks --manifest ../shared/data/amibr/manifest.csv --out docs/masks.png

draws the README's sample of generated masks: per domain one row of atypical then normal patches.
"""

from __future__ import annotations

import argparse
import hashlib
import os
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
from PIL import Image
from scipy import ndimage as ndi
from skimage.color import rgb2hed
from skimage.filters import gaussian, threshold_otsu
from skimage.morphology import disk, opening, remove_small_holes, remove_small_objects

from runtime.errors import InputError
from training.data import DataSource, PatchSet, load

GENERATOR_VERSION = "hed-otsu-centre-v2"
TOUCH_RADIUS = 10  # px: components reaching this close to the centre belong to the figure
REACH_RADIUS = 28  # px: otherwise take the nearest component this close
FALLBACK_RADIUS = 8  # px: disc used when no dark component is near the centre
MIN_AREA = 16  # px: smaller specks are noise
MAX_AREA = 2500  # px: a larger selection is re-thresholded within itself
PADDING_LEVEL = 20  # pixels with every channel at or below this are slide-edge padding


def centre_figure_mask(rgb: np.ndarray) -> np.ndarray:
    """Boolean mask of the figure at the centre of one uint8 RGB patch."""
    h, w = rgb.shape[:2]
    yy, xx = np.mgrid[:h, :w]
    dist = np.hypot(yy - (h - 1) / 2, xx - (w - 1) / 2)
    tissue = rgb.max(axis=2) > PADDING_LEVEL  # black slide-edge padding reads as dense stain: leave it out
    if tissue.sum() < MIN_AREA * 4:
        return dist <= FALLBACK_RADIUS
    hema = gaussian(rgb2hed(rgb)[..., 0], sigma=1.0)
    mask = _centre_components(hema, tissue, dist)
    if mask is not None and mask.sum() > MAX_AREA:  # pale cytoplasm came along: split darker from lighter
        mask = _centre_components(hema, mask, dist)
    return mask if mask is not None else dist <= FALLBACK_RADIUS


def _centre_components(hema: np.ndarray, region: np.ndarray, dist: np.ndarray) -> np.ndarray | None:
    """Otsu-dark components of ``region`` that touch the centre disc, else the nearest within reach."""
    dark = region & (hema > threshold_otsu(hema[region]))
    dark = remove_small_objects(opening(dark, disk(1)), max_size=MIN_AREA)
    labels, n = ndi.label(dark)
    if not n:
        return None
    nearest = ndi.minimum(dist, labels, index=np.arange(1, n + 1))
    keep = np.flatnonzero(nearest <= TOUCH_RADIUS) + 1
    if keep.size == 0 and nearest.min() <= REACH_RADIUS:
        keep = np.array([np.argmin(nearest) + 1])
    return remove_small_holes(np.isin(labels, keep), max_size=64) if keep.size else None


def generate_masks(images: np.ndarray, cache_dir: str | Path | None = None) -> np.ndarray:
    """Masks for uint8 [N, H, W, 3] patches -> bool [N, H, W], cached under ``cache_dir`` when given."""
    cache = None
    if cache_dir is not None:
        key = hashlib.sha1(GENERATOR_VERSION.encode() + np.ascontiguousarray(images).tobytes()).hexdigest()[:16]
        cache = Path(cache_dir) / f"masks-{key}.npz"
        if cache.is_file():
            with np.load(cache) as f:
                return np.unpackbits(f["bits"], count=images[..., 0].size).reshape(images.shape[:3]).astype(bool)
    with ThreadPoolExecutor(max_workers=2) as pool:
        masks = np.stack(list(pool.map(centre_figure_mask, images)))
    if cache is not None:
        cache.parent.mkdir(parents=True, exist_ok=True)
        tmp = cache.with_suffix(f".{os.getpid()}.tmp.npz")  # processes that start together write their own
        np.savez_compressed(tmp, bits=np.packbits(masks))
        tmp.replace(cache)
    return masks


def load_masks(mask_dir: str | Path, image_paths: list[str], image_root: str | Path) -> np.ndarray:
    """Masks made elsewhere: ``mask_dir/<image path relative to image_root, as .png>``, nonzero = figure."""
    mask_dir, image_root = Path(mask_dir), Path(image_root)
    masks, missing = [], []
    for p in image_paths:
        file = mask_dir / Path(p).relative_to(image_root).with_suffix(".png")
        if not file.is_file():
            missing.append(str(file))
            continue
        with Image.open(file) as im:
            masks.append(np.asarray(im.convert("L")) > 0)
    if missing:
        raise FileNotFoundError(f"{len(missing)} mask(s) missing under {mask_dir}, e.g. {missing[:3]}")
    return np.stack(masks)


def external_masks(folder: Path, data: PatchSet, sources: list[DataSource]) -> np.ndarray:
    """``amf train --masks DIR``: one PNG per patch under DIR (several datasets: under DIR/<dataset name>/), at the
    patch's path relative to its dataset's root."""
    masks = np.zeros(data.images.shape[:3], bool)
    for source in sources:
        rows = np.flatnonzero(data.datasets == source.name)
        if len(rows):
            masks[rows] = load_masks(folder if len(sources) == 1 else folder / source.name,
                                     [data.paths[i] for i in rows], source.root or Path(source.manifest).parent)
    return masks


def save_mask_grid(images: np.ndarray, masks: np.ndarray, labels: np.ndarray, out: str | Path,
                   columns: int = 8) -> None:
    """PNG grid of patches with the mask outline drawn on top (red = atypical, green = normal)."""
    n = len(images)
    rows = -(-n // columns)
    h, w = images.shape[1:3]
    grid = np.full((rows * (h + 4), columns * (w + 4), 3), 255, np.uint8)
    for i, (im, m, y) in enumerate(zip(images, masks, labels)):
        edge = m & ~ndi.binary_erosion(m, iterations=1)
        tile = im.copy()
        tile[edge] = (230, 30, 30) if y else (30, 200, 30)
        r, c = divmod(i, columns)
        grid[r * (h + 4) + 2:r * (h + 4) + 2 + h, c * (w + 4) + 2:c * (w + 4) + 2 + w] = tile
    Image.fromarray(grid).save(out, format="PNG")  # whatever the name ends in


def domain_class_groups(data: PatchSet) -> list[np.ndarray]:
    """Row indices per domain (sorted) and class (atypical, then normal): what the sample pictures draw from."""
    return [np.flatnonzero((data.domains == d) & (data.labels == y)) for d in sorted(set(data.domains))
            for y in (1, 0)]


def sample_grid(data: PatchSet, out: str | Path, per_class: int = 5, seed: int = 0) -> None:
    """Per domain, ``per_class`` random atypical then normal patches with their generated masks, as a PNG grid."""
    rng = np.random.default_rng(seed)
    groups = domain_class_groups(data)
    if min(map(len, groups)) < per_class:
        raise InputError(f"--per-class {per_class}: some domain has only {min(map(len, groups))} patches of a class "
                         f"in the data (--per-class {min(map(len, groups))} or less)")
    picked = [rng.choice(group, per_class, replace=False) for group in groups]
    sample = data.subset(np.concatenate(picked))
    save_mask_grid(sample.images, generate_masks(sample.images), sample.labels, out, columns=2 * per_class)


def run(args: argparse.Namespace) -> None:
    """``amf masks`` (arguments: cli/main.py)."""
    sample_grid(load(args.data, args.split), args.out, args.per_class, args.seed)
    print(f"wrote {args.out}")
