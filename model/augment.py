"""Batch augmentation on the training device, applied to images and masks alike.

Geometry: a random element of the dihedral group D4 (90-degree rotations and flips) composed with a free
rotation, done as one affine resampling (bilinear + reflection for images, nearest for masks).
Colour: H&E stain augmentation (per-image scale and shift of the hematoxylin, eosin and DAB optical
densities, Tellez et al. 2018) plus mild brightness / contrast jitter.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass

import torch
import torch.nn.functional as F

# Ruifrok & Johnston stain vectors (as in scikit-image's rgb2hed); rows: H, E, DAB.
RGB_FROM_HED = torch.tensor([[0.65, 0.70, 0.29], [0.07, 0.99, 0.11], [0.27, 0.57, 0.78]])
HED_FROM_RGB = torch.linalg.inv(RGB_FROM_HED)
_LOG_EPS = math.log(1e-6)


@dataclass
class AugmentConfig:
    d4: bool = True  # random 90-degree rotations and flips
    rotation_deg: float = 180.0  # free rotation drawn from [-deg, +deg]; 0 = off
    stain_scale: float = 0.05  # HED optical density scaled by U(1-s, 1+s)
    stain_shift: float = 0.02  # ... and shifted by U(-t, t)
    brightness: float = 0.1  # multiplicative, U(1-b, 1+b)
    contrast: float = 0.1  # around the image mean, U(1-c, 1+c)

    def to_dict(self) -> dict:
        return asdict(self)


def rgb_to_hed(rgb: torch.Tensor) -> torch.Tensor:
    """[N,3,H,W] RGB in [0,1] -> stain optical densities, as scikit-image's ``rgb2hed`` but unclamped,
    so that :func:`hed_to_rgb` inverts it exactly."""
    od = torch.log(rgb.clamp_min(1e-6)) / _LOG_EPS
    return torch.einsum("nchw,cd->ndhw", od, HED_FROM_RGB.to(rgb))


def hed_to_rgb(hed: torch.Tensor) -> torch.Tensor:
    log_rgb = -torch.einsum("nchw,cd->ndhw", hed * -_LOG_EPS, RGB_FROM_HED.to(hed))
    return torch.exp(log_rgb).clamp(0, 1)


def stain_jitter(rgb: torch.Tensor, cfg: AugmentConfig, gen: torch.Generator | None = None) -> torch.Tensor:
    n = rgb.shape[0]
    rand = lambda: torch.rand(n, 3, 1, 1, generator=gen, device=rgb.device)  # noqa: E731
    if cfg.stain_scale or cfg.stain_shift:
        hed = rgb_to_hed(rgb)
        rgb = hed_to_rgb(hed * (1 + cfg.stain_scale * (2 * rand() - 1)) + cfg.stain_shift * (2 * rand() - 1))
    if cfg.brightness or cfg.contrast:
        b = 1 + cfg.brightness * (2 * rand()[:, :1] - 1)
        c = 1 + cfg.contrast * (2 * rand()[:, :1] - 1)
        mean = rgb.mean(dim=(1, 2, 3), keepdim=True)
        rgb = ((rgb - mean) * c + mean) * b
    return rgb.clamp(0, 1)


def random_geometry(n: int, cfg: AugmentConfig, device: torch.device, gen: torch.Generator | None = None) -> torch.Tensor:
    """Per-sample 2x3 affine matrices (in grid_sample's normalised coordinates)."""
    angle = torch.zeros(n, device=device)
    flip = torch.ones(n, device=device)
    if cfg.d4:
        angle += torch.randint(0, 4, (n,), generator=gen, device=device) * (math.pi / 2)
        flip = torch.where(torch.rand(n, generator=gen, device=device) < 0.5, -1.0, 1.0)
    if cfg.rotation_deg:
        angle += (2 * torch.rand(n, generator=gen, device=device) - 1) * math.radians(cfg.rotation_deg)
    cos, sin = torch.cos(angle), torch.sin(angle)
    zero = torch.zeros_like(cos)
    return torch.stack([torch.stack([cos * flip, -sin, zero], 1), torch.stack([sin * flip, cos, zero], 1)], 1)


def augment(images: torch.Tensor, masks: torch.Tensor | None, cfg: AugmentConfig,
            gen: torch.Generator | None = None) -> tuple[torch.Tensor, torch.Tensor | None]:
    """images float [N,3,H,W] in [0,1]; masks integer [N,H,W] (class per pixel) or None."""
    if cfg.d4 or cfg.rotation_deg:
        theta = random_geometry(images.shape[0], cfg, images.device, gen)
        grid = F.affine_grid(theta, list(images.shape), align_corners=False)
        images = F.grid_sample(images, grid, mode="bilinear", padding_mode="reflection", align_corners=False)
        if masks is not None:
            m = F.grid_sample(masks[:, None].float(), grid, mode="nearest", padding_mode="zeros", align_corners=False)
            masks = m[:, 0].round().to(masks.dtype)
    return stain_jitter(images, cfg, gen), masks
