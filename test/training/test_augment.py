"""training/augment.py: D4 geometry, crops, flips, stain/colour jitter and MixUp."""

from __future__ import annotations

import torch

from training.augment import (
    RGB_FROM_YIQ,
    YIQ_FROM_RGB,
    AugmentConfig,
    augment,
    hed_to_rgb,
    mixup,
    mixup_params,
    rgb_to_hed,
    stain_jitter,
)

NO_COLOUR = dict(stain_scale=0.0, stain_shift=0.0, brightness=0.0, contrast=0.0)


def test_d4_geometry_moves_image_and_mask_together_and_hed_inverts():
    torch.manual_seed(0)
    x = torch.rand(8, 3, 32, 32).clamp_min(0.01)
    mask = torch.zeros(8, 32, 32, dtype=torch.long)
    mask[:, 3:9, 20:30] = 2
    x[:, :, 3:9, 20:30] = 1.0  # the masked region is white in the image
    cfg = AugmentConfig(rotation_deg=0, stain_scale=0, stain_shift=0, brightness=0, contrast=0)
    y, m = augment(x, mask, cfg)
    assert (m.sum((1, 2)) == mask.sum((1, 2))).all()
    assert torch.allclose(y.permute(0, 2, 3, 1)[m == 2], torch.ones(1), atol=1e-4)
    torch.testing.assert_close(hed_to_rgb(rgb_to_hed(x)), x, atol=1e-5, rtol=0)


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


def test_mixup_mixes_images_and_targets_with_returned_lambda():
    images = torch.rand(6, 3, 4, 4, dtype=torch.float64)
    targets = torch.tensor([1.0, 0.0, 1.0, 0.0, 1.0, 0.0])
    mixed, t = mixup(images, targets, 0.4, torch.Generator().manual_seed(3))
    lam, perm = mixup_params(6, 0.4, torch.Generator().manual_seed(3))
    assert mixed.shape == images.shape and mixed.dtype == images.dtype
    assert ((t >= 0) & (t <= 1)).all() and (lam >= 0.5).all() and (lam <= 1).all()
    lam64 = lam.double().view(-1, 1, 1, 1)
    assert torch.allclose(mixed, lam64 * images + (1 - lam64) * images[perm])
    assert torch.allclose(t, lam * targets + (1 - lam) * targets[perm])
    assert not torch.allclose(mixed, images)


def test_mixup_is_reproducible_and_alpha_zero_is_identity():
    images, targets = torch.rand(5, 3, 2, 2), torch.tensor([1.0, 0.0, 0.0, 1.0, 0.0])
    a = mixup(images, targets, 0.2, torch.Generator().manual_seed(7))
    b = mixup(images, targets, 0.2, torch.Generator().manual_seed(7))
    c = mixup(images, targets, 0.2, torch.Generator().manual_seed(8))
    assert torch.equal(a[0], b[0]) and torch.equal(a[1], b[1]) and not torch.equal(a[0], c[0])
    same = mixup(images, targets, 0.0)
    assert same[0] is images and same[1] is targets
    half = mixup(images.bfloat16(), targets, 0.2, torch.Generator().manual_seed(7))[0]
    assert half.dtype == torch.bfloat16
