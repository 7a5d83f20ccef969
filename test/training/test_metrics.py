"""training/metrics.py: binary metrics, slide-bootstrap intervals and the results table."""

from __future__ import annotations

import numpy as np
import pytest
from sklearn.metrics import balanced_accuracy_score, recall_score, roc_auc_score

from training.metrics import binary_metrics, bootstrap_ba, evaluate_models, markdown_table


def test_metrics_agree_with_scikit_learn():
    rng = np.random.default_rng(1)
    labels = rng.integers(0, 2, 300)
    probs = np.clip(labels * 0.3 + rng.random(300) * 0.7, 0, 1)
    pred = probs >= 0.5
    m = binary_metrics(labels, probs, pred)
    assert m["balanced_accuracy"] == pytest.approx(balanced_accuracy_score(labels, pred))
    assert m["sensitivity"] == pytest.approx(recall_score(labels, pred))
    assert m["specificity"] == pytest.approx(recall_score(labels, pred, pos_label=0))
    assert m["auroc"] == pytest.approx(roc_auc_score(labels, probs))
    assert sum(m["confusion"].values()) == 300


def test_bootstrap_interval_resamples_whole_slides():
    rng = np.random.default_rng(2)
    slides = np.repeat(np.arange(30), 20)
    labels = rng.random(600) < 0.3
    slide_right = rng.random(30) < 0.8  # errors come by slide: every patch of a slide is right or wrong
    pred = np.where(slide_right[slides], labels, ~labels)
    point = balanced_accuracy_score(labels, pred)
    by_slide, by_patch = bootstrap_ba(labels, pred, slides), bootstrap_ba(labels, pred)
    assert by_slide[0] < point < by_slide[1] and by_patch[0] < point < by_patch[1]
    assert by_slide[1] - by_slide[0] > 2 * (by_patch[1] - by_patch[0])  # correlated patches: wider interval
    assert bootstrap_ba(labels, pred, slides) == by_slide  # seeded
    assert bootstrap_ba(labels, labels, slides) == (1.0, 1.0)

    # the same interval as drawing slides one by one
    draws = []
    for _ in range(2000):
        pick = rng.integers(0, 30, 30)
        keep = np.concatenate([np.flatnonzero(slides == s) for s in pick])
        draws.append(balanced_accuracy_score(labels[keep], pred[keep]))
    np.testing.assert_allclose(by_slide, np.quantile(draws, [0.025, 0.975]), atol=0.02)

    table = evaluate_models(labels, np.where(slides < 15, "a", "b"), {"m": (pred * 1.0, pred)}, slides, 500)
    assert set(table["m"]) == {"all", "a", "b"}
    lo, hi = table["m"]["a"]["balanced_accuracy_ci"]
    assert lo <= table["m"]["a"]["balanced_accuracy"] <= hi
    assert f"{table['m']['all']['balanced_accuracy']:.4f} (" in markdown_table(table)
