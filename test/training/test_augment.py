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


# ---- scanner-realistic steps: scale jitter, blur, noise, JPEG (off by default) ----

SCANNER_OFF = dict(d4=False, rotation_deg=0, **NO_COLOUR)


def _disc(n: int = 6, size: int = 64, radius: int = 12) -> tuple[torch.Tensor, torch.Tensor]:
    yy, xx = torch.meshgrid(torch.arange(size), torch.arange(size), indexing="ij")
    inside = ((yy - size / 2 + 0.5) ** 2 + (xx - size / 2 + 0.5) ** 2) < radius**2
    image = torch.where(inside, 0.2, 0.9).expand(n, 3, size, size).contiguous()
    return image, inside.long().expand(n, size, size).contiguous() * 2


def test_scale_jitter_zooms_about_the_centre_and_the_mask_follows():
    image, mask = _disc()
    out, m = augment(image, mask, AugmentConfig(**SCANNER_OFF, scale=0.15), torch.Generator().manual_seed(1))
    assert out.shape == image.shape and out.dtype == image.dtype and m.shape == mask.shape and m.dtype == mask.dtype
    ratio = m.bool().sum((1, 2)).float() / mask.bool().sum((1, 2)).float()  # area grows as zoom**2
    assert ((ratio > 0.85**2 - 0.05) & (ratio < 1.15**2 + 0.05)).all() and ratio.std() > 0.02
    dark = out[:, 0] < 0.55  # the image's disc is where the mask's is, and both stay centred
    assert (dark == m.bool()).float().mean() > 0.99
    assert (m[:, 31:33, 31:33] == 2).all()


def test_blur_is_local_averaging_and_keeps_flat_images():
    image, _ = _disc()
    out, _ = augment(image, None, AugmentConfig(**SCANNER_OFF, blur_sigma=2.0), torch.Generator().manual_seed(0))
    assert out.shape == image.shape and out.dtype == image.dtype
    edges = lambda x: (x[..., 1:] - x[..., :-1]).abs().amax((1, 2, 3))  # noqa: E731
    assert (edges(out) < edges(image)).all()
    torch.testing.assert_close(out.mean((1, 2, 3)), image.mean((1, 2, 3)), atol=2e-3, rtol=0)
    flat = torch.full((3, 3, 16, 16), 0.5)
    torch.testing.assert_close(augment(flat, None, AugmentConfig(**SCANNER_OFF, blur_sigma=1.5))[0], flat)


def test_noise_has_a_random_strength_per_image_up_to_the_maximum():
    image = torch.full((16, 3, 64, 64), 0.5)
    out, _ = augment(image, None, AugmentConfig(**SCANNER_OFF, noise_std=0.05), torch.Generator().manual_seed(0))
    std = (out - image).std((1, 2, 3))
    assert out.dtype == image.dtype and (std < 0.05 * 1.05).all() and std.max() > 0.025 and std.min() < std.max() / 2
    assert out.min() >= 0 and out.max() <= 1


def test_jpeg_compresses_a_chosen_share_at_a_drawn_quality():
    image = torch.rand(32, 3, 32, 32)
    cfg = AugmentConfig(**SCANNER_OFF, jpeg_p=0.5, jpeg_quality=(10, 10))
    out, _ = augment(image, None, cfg, torch.Generator().manual_seed(0))
    changed = (out - image).abs().amax((1, 2, 3)) > 0.05
    assert out.shape == image.shape and out.dtype == image.dtype and 8 <= int(changed.sum()) <= 24
    assert torch.equal(out[~changed], image[~changed])
    every, _ = augment(image, None, AugmentConfig(**SCANNER_OFF, jpeg_p=1.0, jpeg_quality=(95, 95)))
    assert 0 < (every - image).abs().mean() < (out[changed] - image[changed]).abs().mean()  # higher quality: closer


def test_every_new_step_off_is_the_identity_and_draws_nothing():
    """The defaults (off) leave a batch as the geometry and colour made it, and the random stream untouched, so
    recipes written before these steps existed train exactly as they did."""
    image, mask = _disc()
    cfg = AugmentConfig()
    assert (cfg.scale, cfg.blur_sigma, cfg.noise_std, cfg.jpeg_p) == (0, 0, 0, 0)
    a = augment(image, mask, cfg, torch.Generator().manual_seed(4))
    gen = torch.Generator().manual_seed(4)
    b = augment(image, mask, cfg, gen)
    assert torch.equal(a[0], b[0]) and torch.equal(a[1], b[1])
    old = torch.Generator().manual_seed(4)  # the draws the geometry and colour make, and nothing after them
    from training.augment import random_geometry
    random_geometry(len(image), cfg, image.device, old)
    stain_jitter(image, cfg, old)
    assert torch.equal(gen.get_state(), old.get_state())
    still = AugmentConfig(**SCANNER_OFF)
    assert torch.equal(augment(image, mask, still)[0], image)


def test_the_strong_preset_keeps_shape_dtype_range_and_masks():
    from training.recipe import PRESETS
    cfg = PRESETS["scratch-strong"].augment
    assert PRESETS["scratch"].augment.jpeg_p == 0 and cfg.jpeg_p > 0 and cfg.scale > 0
    image, mask = _disc(8, 128, 20)
    out, m = augment(image, mask, cfg, torch.Generator().manual_seed(2))
    assert out.shape == image.shape and out.dtype == image.dtype and m.dtype == mask.dtype
    assert out.min() >= 0 and out.max() <= 1 and set(m.unique().tolist()) <= {0, 2}


def test_amf_augment_draws_each_patch_then_its_views(tmp_path, capsys):
    from conftest import AMIBR_FIXTURE
    from PIL import Image

    from cli.main import main

    out = tmp_path / "augment.png"
    assert main(["augment", "--manifest", str(AMIBR_FIXTURE / "manifest.csv"), "--preset", "scratch-strong",
                 "--views", "3", "--out", str(out)]) == 0
    with Image.open(out) as im:  # 4 domains x 2 classes rows, 1 + 3 tiles of 128 (+4 border) each
        assert im.size == (4 * 132, 8 * 132)
    assert "8 patches" in capsys.readouterr().out
    assert main(["augment", "--manifest", str(AMIBR_FIXTURE / "manifest.csv"), "--set", "augment.blurr=1",
                 "--out", str(out)]) == 2
    assert capsys.readouterr().err.startswith("amf augment: error: --set augment.blurr: no such field")
