"""The method zoo's building blocks: slide-grouped folds, seed-002 augmentation, any-backbone networks,
recipe overrides and presets."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from conftest import AMIBR_FIXTURE

from training.augment import RGB_FROM_YIQ, YIQ_FROM_RGB, AugmentConfig, augment, stain_jitter
from training.data import load_patches
from training.folds import make_folds, slide_kfolds
from training.network import NetworkConfig, build_network
from training.recipe import PRESETS, Recipe

NO_COLOUR = dict(stain_scale=0.0, stain_shift=0.0, brightness=0.0, contrast=0.0)


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


def test_manifest_slides_are_domain_qualified():
    data = load_patches(AMIBR_FIXTURE / "manifest.csv")
    assert data.slides is not None and data.slides[0] == f"{data.domains[0]}/141.tiff"
    assert data.subset(np.array([3, 1])).slides.tolist() == [data.slides[3], data.slides[1]]


def test_random_resized_crop_zooms_into_a_window():
    ramp = torch.linspace(0, 1, 64).view(1, 1, 1, 64).expand(4, 3, 64, 64).contiguous()
    cfg = AugmentConfig(d4=False, rotation_deg=0, crop_scale=(0.25, 0.25), crop_ratio=(1.0, 1.0), **NO_COLOUR)
    out, _ = augment(ramp, None, cfg, torch.Generator().manual_seed(0))
    span = out[:, 0, 0, -1] - out[:, 0, 0, 0]
    assert torch.allclose(span, torch.full((4,), 0.5), atol=0.03)  # half the side: a quarter of the area
    assert not torch.allclose(out[0], out[1])  # windows at random offsets
    same, _ = augment(ramp, None, AugmentConfig(d4=False, rotation_deg=0, **NO_COLOUR))
    assert torch.allclose(same, ramp, atol=1e-5)


def test_flips_only_never_rotates():
    image = torch.rand(1, 3, 16, 16).expand(64, 3, 16, 16).contiguous()
    out, _ = augment(image, None, AugmentConfig(d4=False, flips=True, rotation_deg=0, **NO_COLOUR))
    flipped = image[0].flip(-1)
    kinds = [torch.allclose(o, image[0], atol=1e-5) or torch.allclose(o, flipped, atol=1e-5) for o in out]
    assert all(kinds) and any(torch.allclose(o, flipped, atol=1e-5) for o in out)


def test_hue_keeps_luma_and_gray_and_saturation_keeps_gray():
    rgb = torch.rand(8, 3, 8, 8) * 0.2 + 0.4  # chroma small enough that no channel clips
    cfg = AugmentConfig(**{**NO_COLOUR, "hue": 0.25})
    out = stain_jitter(rgb, cfg, torch.Generator().manual_seed(0))
    luma = lambda x: torch.einsum("nchw,c->nhw", x, YIQ_FROM_RGB[0])  # noqa: E731
    assert torch.allclose(luma(out), luma(rgb), atol=1e-4) and not torch.allclose(out, rgb, atol=1e-3)
    gray = torch.full((2, 3, 4, 4), 0.4)
    assert torch.allclose(stain_jitter(gray, AugmentConfig(**{**NO_COLOUR, "hue": 0.5, "saturation": 0.9})), gray,
                          atol=1e-5)
    assert torch.allclose(RGB_FROM_YIQ @ YIQ_FROM_RGB, torch.eye(3), atol=1e-5)


@pytest.mark.parametrize("backbone, kwargs, size", [
    ("resnet18", {}, 128),
    ("vit_tiny_patch16_224", {"depth": 2}, 224),
])
def test_any_timm_classifier_resizes_inside_and_prunes_to_a_logit(backbone, kwargs, size):
    cfg = NetworkConfig(kind="timm", backbone=backbone, input_size=size, backbone_kwargs=kwargs)
    net = build_network(cfg).eval()
    x = torch.rand(3, 3, 128, 128)
    with torch.no_grad():
        out = net(x)
        assert out["logit"].shape == (3,) and out["embedding"].shape == (3, net.embed_dim)
        assert torch.equal(net.pruned()(x), out["logit"])
    assert net.normalize.size == size


@pytest.mark.parametrize("backbone", ["resnet18", "efficientnet_b0"])
def test_multitask_network_takes_any_features_only_cnn(backbone):
    net = build_network(NetworkConfig(backbone=backbone, decoder_channels=(16, 8, 8))).eval()
    with torch.no_grad():
        out = net(torch.rand(2, 3, 128, 128))
    assert out["logit"].shape == (2,) and out["seg"].shape == (2, 32, 32) and out["pix"].shape == (2, 3, 32, 32)


def test_linear_probing_trains_only_the_head():
    net = build_network(NetworkConfig(kind="timm", backbone="resnet18", finetune="linear"), train=True)
    trainable = {n for n, p in net.named_parameters() if p.requires_grad}
    assert trainable == {"model.fc.weight", "model.fc.bias"}
    with pytest.raises(ValueError, match="LoRA"):
        build_network(NetworkConfig(kind="timm", backbone="resnet18", finetune="lora"))


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


def test_the_shared_threshold_maximises_mean_validation_balanced_accuracy():
    from training.calibrate import best_shared_threshold

    y = np.array([0, 0, 0, 1, 1, 1])
    a = (y, np.array([0.1, 0.3, 0.35, 0.4, 0.6, 0.9]))  # separable at any t in (0.35, 0.4]
    b = (y, np.array([0.2, 0.25, 0.3, 0.38, 0.7, 0.8]))  # separable at any t in (0.3, 0.38]
    t, score = best_shared_threshold([a, b])
    assert 0.35 < t <= 0.38 and score == 1.0
    t, _ = best_shared_threshold([(y, np.array([0.1, 0.1, 0.1, 0.9, 0.9, 0.9]))])
    assert t == 0.5  # a flat optimum keeps the default
