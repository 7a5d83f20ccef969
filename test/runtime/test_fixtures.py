"""The test fixtures themselves (test/conftest.py): the tiny ONNX model must notice channel-order and orientation
mistakes, its numpy twin must match it, and the hand-written TIFFs must be what an independent reader sees."""

from __future__ import annotations

import numpy as np
import pytest
from conftest import d4_views, make_tiny_ensemble, real_pages, tiny_model_probs, write_tiff

from runtime.ensemble import Ensemble

CPU = ["CPUExecutionProvider"]


@pytest.mark.parametrize("corner", [None, 40])
def test_tiny_model_tells_channel_order_and_every_orientation_apart(corner, tmp_path):
    pages = real_pages(8)
    ens = Ensemble(make_tiny_ensemble(tmp_path / "w", corner=corner))
    variants = {"as is": pages, "BGR": pages[..., ::-1], "transposed": pages.transpose(0, 2, 1, 3),
                **{f"d4 view {i}": v for i, v in enumerate(d4_views(pages)) if i}}
    probs = {}
    for name, variant in variants.items():
        variant = np.ascontiguousarray(variant)
        probs[name] = ens.probabilities(variant)
        np.testing.assert_allclose(probs[name], tiny_model_probs(variant, corner=corner), atol=1e-6, err_msg=name)
    for name, p in probs.items():
        if name != "as is":
            assert np.abs(p - probs["as is"]).max() > 1e-3, f"the tiny model cannot tell {name} pages apart"
    assert len({p.round(5).tobytes() for p in probs.values()}) == len(probs) - 1  # the transpose is a d4 view


def test_tiny_model_on_a_uniform_page_is_the_offset_alone(tmp_path):
    offsets = (0.0, 0.5, -1.0, 2.0)
    pages = np.full((2, 128, 128, 3), 128, np.uint8)
    pages[1] = 160  # weighted mean 160: logit = 2 + offset
    probs = Ensemble(make_tiny_ensemble(tmp_path / "w", offsets=offsets)).probabilities(pages)
    expected = 1 / (1 + np.exp(-(np.array([[0.0], [2.0]]) + np.array(offsets))))
    np.testing.assert_allclose(probs, expected, atol=1e-7)
    np.testing.assert_allclose(tiny_model_probs(pages, offsets), expected, atol=1e-12)


@pytest.mark.parametrize("options", [{}, {"byteorder": ">"}, {"bigtiff": True}, {"bigtiff": True, "byteorder": ">"},
                                     {"tile": 48}, {"tile": 64, "bigtiff": True, "byteorder": ">"}],
                         ids=["plain", "big-endian", "BigTIFF", "big-endian BigTIFF", "tiled", "tiled BE BigTIFF"])
def test_hand_written_tiffs_are_what_tifffile_reads(options, tmp_path):
    tifffile = pytest.importorskip("tifffile")
    pages = real_pages(3)
    rng = np.random.default_rng(0)
    for name, written in [("rgb", pages), ("rgba", np.concatenate([pages, pages[..., :1]], axis=3)),
                          ("gray", pages[..., 0]), ("rgb16", rng.integers(0, 65536, pages.shape).astype(np.uint16)),
                          ("float", pages.astype(np.float32) / 255), ("int16", pages.astype(np.int16) - 100)]:
        path = write_tiff(tmp_path / f"{name}.tif", list(written), **options)
        with tifffile.TiffFile(path) as tif:
            assert len(tif.pages) == 3 and tif.byteorder == options.get("byteorder", "<"), name
            assert tif.is_bigtiff == options.get("bigtiff", False)
            assert tif.pages[0].is_tiled == bool(options.get("tile"))
            np.testing.assert_array_equal(tif.asarray(), written, err_msg=name)
