"""training/recipe.py: recipe overrides and the seed-002/seed-001 presets."""

from __future__ import annotations

import math

import pytest

from training.recipe import PRESETS, Recipe


def test_recipe_overrides_reach_nested_fields_and_reject_unknown_ones():
    r = PRESETS["scratch"].with_overrides(["mixup_alpha=0.2", "augment.hue=0.05",
                                           "network.backbone_kwargs={\"depth\": 2}",
                                           "augment.crop_scale=[0.5, 1.0]", "cv=slide-kfold"])
    assert (r.mixup_alpha, r.augment.hue, r.network.backbone_kwargs, r.augment.crop_scale, r.cv) == (
        0.2, 0.05, {"depth": 2}, (0.5, 1.0), "slide-kfold")
    assert Recipe.from_dict(r.to_dict()) == r
    with pytest.raises(ValueError, match="no such field"):
        r.with_overrides(["mixup=0.2"])
    with pytest.raises(ValueError, match="key=value"):
        r.with_overrides(["mixup_alpha"])
    assert Recipe.from_dict({"balanced_sampling": True}).sampling == "balanced"  # recipes of older runs


def test_seed002_presets_follow_the_published_recipe():
    for name in ("seed002-efficientnetv2-m", "seed002-vit-l16", "seed002-swin-b"):
        r = PRESETS[name]
        assert (r.lr, r.cv, r.n_splits, r.sampling, r.select, r.network.input_size) == (
            5e-5, "slide-kfold", 5, "balanced", "val_ba", 224)
        assert r.early_stopping > 0 and r.augment.crop_scale == (0.8, 1.0) and r.augment.flips and not r.augment.d4
    assert math.isclose(PRESETS["seed001"].lr, 4e-5) and PRESETS["seed001"].batch_size == 24
