"""training/calibrate.py: the shared decision threshold."""

from __future__ import annotations

import numpy as np


def test_the_shared_threshold_maximises_mean_validation_balanced_accuracy():
    from training.calibrate import best_shared_threshold

    y = np.array([0, 0, 0, 1, 1, 1])
    a = (y, np.array([0.1, 0.3, 0.35, 0.4, 0.6, 0.9]))  # separable at any t in (0.35, 0.4]
    b = (y, np.array([0.2, 0.25, 0.3, 0.38, 0.7, 0.8]))  # separable at any t in (0.3, 0.38]
    t, score = best_shared_threshold([a, b])
    assert 0.35 < t <= 0.38 and score == 1.0
    t, _ = best_shared_threshold([(y, np.array([0.1, 0.1, 0.1, 0.9, 0.9, 0.9]))])
    assert t == 0.5  # a flat optimum keeps the default
