"""training/folds.py: leave-one-domain-out and slide-grouped k-fold splits."""

from __future__ import annotations

import numpy as np
import pytest

from training.folds import Fold, lodo_folds, make_folds, slide_kfolds


def test_lodo_folds_never_leak_a_domain(patches):
    for hold_out_test in (False, True):
        folds = lodo_folds(patches.domains, hold_out_test)
        assert len(folds) == 4 and {f.val_domain for f in folds} == set(patches.domains)
        for fold in folds:
            tr, va, te = fold.indices(patches.domains)
            parts = [set(patches.domains[i]) for i in (tr, va, te)]
            assert not (parts[0] & parts[1]) and not (parts[0] & parts[2]) and not (parts[1] & parts[2])
            assert len(tr) + len(va) + len(te) == len(patches) and len(set(tr) | set(va) | set(te)) == len(patches)
            assert parts[1] == {fold.val_domain} and (len(te) > 0) == hold_out_test
    with pytest.raises(ValueError):
        lodo_folds(["a"])


def test_slide_kfold_never_splits_a_slide_and_covers_every_patch_once():
    rng = np.random.default_rng(0)
    slides = np.array([f"d/s{i // 7}" for i in range(140)])  # 20 slides of 7 patches
    labels = (rng.random(140) < 0.2).astype(int)
    folds = slide_kfolds(labels, slides, n_splits=5, seed=1)
    seen = np.zeros(140, int)
    for fold in folds:
        train, val, test = fold.indices(np.full(140, "d"), slides)
        assert not set(slides[train]) & set(slides[val]) and len(test) == 0
        assert len(train) + len(val) == 140 and labels[val].sum() > 0
        seen[val] += 1
    assert (seen == 1).all() and [f.name for f in folds] == [f"cv{i}of5" for i in range(1, 6)]
    with pytest.raises(ValueError, match="slide column"):
        make_folds("slide-kfold", np.full(140, "d"), labels, None)
    with pytest.raises(ValueError, match="unknown cross-validation"):
        make_folds("random", np.full(140, "d"), labels, slides)


def test_a_fold_read_back_from_json_is_the_same_fold():
    import json

    slide_fold = slide_kfolds(np.array([0, 1] * 5), np.array([f"s{i}" for i in range(10)]), n_splits=2)[1]
    for fold in (*lodo_folds(["a", "b", "c"], hold_out_test=True), slide_fold):
        assert Fold.from_dict(json.loads(json.dumps(fold.to_dict()))) == fold
