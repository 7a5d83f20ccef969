"""runtime/tta.py: the eight D4 views of each page and the average back over them."""

from __future__ import annotations

import numpy as np
import pytest
from conftest import d4_views

from runtime import tta


def test_tta_views_are_the_eight_orientations_and_average_back():
    pages = np.arange(2 * 3 * 3 * 1, dtype=np.uint8).reshape(2, 3, 3, 1)
    views = tta.views(pages, "d4")
    assert views.shape == (16, 3, 3, 1) and views.flags.c_contiguous
    np.testing.assert_array_equal(views[:2], pages)  # view 0 is the page itself
    assert len({v.tobytes() for v in views[0::2]}) == 8  # the 8 orientations of page 0 all differ
    assert {v.tobytes() for v in views[0::2]} == {v[0].tobytes() for v in d4_views(pages[:1])}
    values = np.repeat(np.arange(8.0), 2)[:, None]  # view v of each page -> v
    np.testing.assert_array_equal(tta.mean_over_views(values, 2), [[3.5], [3.5]])
    np.testing.assert_array_equal(tta.views(pages, "none"), pages)
    with pytest.raises(ValueError, match=r"none \| d4"):
        tta.views(pages, "d8")
