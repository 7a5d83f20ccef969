"""training/masks.py: generated (cached) and external nucleus masks."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from conftest import AMIBR_FIXTURE
from PIL import Image

from training.masks import generate_masks, load_masks


def test_masks_are_nonempty_cover_the_centre_and_cache(tmp_path, patches):
    masks = generate_masks(patches.images, tmp_path)
    assert masks.shape == (16, 128, 128) and masks.dtype == bool
    areas = masks.sum((1, 2))
    assert (areas >= 50).all() and (areas < 0.5 * 128 * 128).all()
    for m in masks:  # some mask pixel lies within 10 px of the patch centre
        ys, xs = np.nonzero(m)
        assert np.hypot(ys - 63.5, xs - 63.5).min() <= 10
    assert len(list(tmp_path.glob("masks-*.npz"))) == 1
    np.testing.assert_array_equal(generate_masks(patches.images, tmp_path), masks)


def test_external_masks_are_read_by_image_path(tmp_path, patches):
    root = AMIBR_FIXTURE
    for p in patches.paths[:3]:
        out = tmp_path / Path(p).relative_to(root).with_suffix(".png")
        out.parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(np.pad(np.full((8, 8), 255, np.uint8), 60)).save(out)
    masks = load_masks(tmp_path, patches.paths[:3], root)
    assert masks.shape == (3, 128, 128) and masks.sum() == 3 * 64
    with pytest.raises(FileNotFoundError, match="1 mask"):
        load_masks(tmp_path, patches.paths[:4], root)
