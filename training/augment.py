"""Batch augmentation on the training device, applied to images and masks alike.

Geometry: a random element of the dihedral group D4 (90-degree rotations and flips), or flips only,
composed with a free rotation, a scale jitter about the centre and an optional random resized crop, done as
one affine resampling (bilinear + reflection for images, nearest for masks); the output size never changes.
Colour: H&E stain augmentation (per-image scale and shift of the hematoxylin, eosin and DAB optical
densities, Tellez et al. 2018) plus colour jitter (brightness, contrast, saturation, hue).
Scanner: Gaussian blur (focus), Gaussian noise (sensor) and JPEG compression (the slide's storage), in that
order, after the colour; images only (none moves a pixel of the mask).
Every step is off at its default and then draws no random numbers, so recipes written before a step existed
train exactly as they did.
MixUp (Zhang et al. 2018, seed 003): images and targets blended with a partner, for classifier-only networks.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass

import numpy as np
import torch
import torch.nn.functional as F
from torchvision.io import decode_jpeg, encode_jpeg

# Ruifrok & Johnston stain vectors (as in scikit-image's rgb2hed); rows: H, E, DAB.
RGB_FROM_HED = torch.tensor([[0.65, 0.70, 0.29], [0.07, 0.99, 0.11], [0.27, 0.57, 0.78]])
HED_FROM_RGB = torch.linalg.inv(RGB_FROM_HED)
_LOG_EPS = math.log(1e-6)
YIQ_FROM_RGB = torch.tensor([[0.299, 0.587, 0.114], [0.596, -0.274, -0.322], [0.211, -0.523, 0.312]])
RGB_FROM_YIQ = torch.linalg.inv(YIQ_FROM_RGB)


@dataclass
class AugmentConfig:
    d4: bool = True  # random 90-degree rotations and flips
    flips: bool = False  # random horizontal flips only (used when d4 is off; seed 002)
    rotation_deg: float = 180.0  # free rotation drawn from [-deg, +deg]; 0 = off
    crop_scale: tuple[float, float] = (1.0, 1.0)  # random resized crop: area fraction range; (1, 1) = off
    crop_ratio: tuple[float, float] = (3 / 4, 4 / 3)  # ... and aspect-ratio range (log-uniform)
    stain_scale: float = 0.05  # HED optical density scaled by U(1-s, 1+s)
    stain_shift: float = 0.02  # ... and shifted by U(-t, t)
    brightness: float = 0.1  # multiplicative, U(1-b, 1+b)
    contrast: float = 0.1  # around the image mean, U(1-c, 1+c)
    saturation: float = 0.0  # blend with the gray image, U(1-s, 1+s)
    hue: float = 0.0  # rotation of the chroma plane (YIQ) by U(-h, h) turns
    scale: float = 0.0  # zoom about the centre by U(1-s, 1+s) (content larger or smaller, size kept); 0 = off
    blur_sigma: float = 0.0  # Gaussian blur, sigma U(0, b) pixels per image; 0 = off
    noise_std: float = 0.0  # additive Gaussian noise, std U(0, n) per image (intensities in [0, 1]); 0 = off
    jpeg_p: float = 0.0  # probability that an image is JPEG-compressed; 0 = off
    jpeg_quality: tuple[int, int] = (40, 95)  # ... at a quality drawn uniformly from this range (inclusive)

    @classmethod
    def from_dict(cls, d: dict) -> AugmentConfig:
        return cls(**{k: tuple(v) if isinstance(v, list) else v for k, v in d.items()})

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
    if cfg.saturation:
        gray = torch.einsum("nchw,c->nhw", rgb, YIQ_FROM_RGB[0].to(rgb))[:, None]
        rgb = gray + (rgb - gray) * (1 + cfg.saturation * (2 * rand()[:, :1] - 1))
    if cfg.hue:
        turn = 2 * math.pi * cfg.hue * (2 * rand()[:, 0, 0, 0] - 1)
        cos, sin, one, zero = turn.cos(), turn.sin(), torch.ones_like(turn), torch.zeros_like(turn)
        rot = torch.stack([torch.stack([one, zero, zero], 1), torch.stack([zero, cos, -sin], 1),
                           torch.stack([zero, sin, cos], 1)], 1)  # [N,3,3], luma kept
        mix = RGB_FROM_YIQ.to(rgb) @ rot @ YIQ_FROM_RGB.to(rgb)
        rgb = torch.einsum("ndc,nchw->ndhw", mix, rgb)
    return rgb.clamp(0, 1)


def random_geometry(n: int, cfg: AugmentConfig, device: torch.device,
                    gen: torch.Generator | None = None) -> torch.Tensor:
    """Per-sample 2x3 affine matrices (in grid_sample's normalised coordinates)."""
    rand = lambda: torch.rand(n, generator=gen, device=device)  # noqa: E731
    angle = torch.zeros(n, device=device)
    flip = torch.ones(n, device=device)
    if cfg.d4:
        angle += torch.randint(0, 4, (n,), generator=gen, device=device) * (math.pi / 2)
    if cfg.d4 or cfg.flips:
        flip = torch.where(rand() < 0.5, -1.0, 1.0)
    if cfg.rotation_deg:
        angle += (2 * rand() - 1) * math.radians(cfg.rotation_deg)
    zoom = 1 + cfg.scale * (2 * rand() - 1) if cfg.scale else torch.ones(n, device=device)
    # random resized crop: output pixels sample a (w, h) window (fractions of the side) at a random offset
    w = h = torch.ones(n, device=device)
    tx = ty = torch.zeros(n, device=device)
    if tuple(cfg.crop_scale) != (1.0, 1.0):
        area = cfg.crop_scale[0] + (cfg.crop_scale[1] - cfg.crop_scale[0]) * rand()
        log_lo, log_hi = math.log(cfg.crop_ratio[0]), math.log(cfg.crop_ratio[1])
        ratio = torch.exp(log_lo + (log_hi - log_lo) * rand())
        w, h = (area * ratio).sqrt().clamp(max=1), (area / ratio).sqrt().clamp(max=1)
        tx, ty = (1 - w) * (2 * rand() - 1), (1 - h) * (2 * rand() - 1)
    cos, sin = torch.cos(angle) / zoom, torch.sin(angle) / zoom  # output pixels sample a window 1/zoom wide
    rows = [torch.stack([cos * flip * w, -sin * h, tx], 1), torch.stack([sin * flip * w, cos * h, ty], 1)]
    return torch.stack(rows, 1)


def gaussian_blur(rgb: torch.Tensor, max_sigma: float, gen: torch.Generator | None = None) -> torch.Tensor:
    """Separable Gaussian blur with a sigma of U(0, max_sigma) pixels per image (reflected borders). Written here
    because torchvision's ``gaussian_blur`` takes one sigma per call, not one per image of a batch."""
    n, c, hgt, wid = rgb.shape
    sigma = (max_sigma * torch.rand(n, generator=gen, device=rgb.device)).clamp_min(1e-3)
    radius = max(1, math.ceil(3 * max_sigma))
    taps = torch.arange(-radius, radius + 1, device=rgb.device, dtype=torch.float32)
    kernel = torch.exp(-0.5 * (taps[None] / sigma[:, None]) ** 2)
    kernel = (kernel / kernel.sum(1, keepdim=True)).repeat_interleave(c, 0)[:, None]  # [N*C, 1, K]
    with torch.autocast(rgb.device.type, enabled=False):  # float32 like the other steps, also under bf16 training
        x = F.pad(rgb.float().reshape(1, n * c, hgt, wid), (radius, radius, radius, radius), mode="reflect")
        x = F.conv2d(x, kernel[..., None, :], groups=n * c)  # along rows
        x = F.conv2d(x, kernel[..., :, None], groups=n * c)  # along columns
    return x.reshape(n, c, hgt, wid).to(rgb.dtype)


def gaussian_noise(rgb: torch.Tensor, max_std: float, gen: torch.Generator | None = None) -> torch.Tensor:
    std = max_std * torch.rand(rgb.shape[0], 1, 1, 1, generator=gen, device=rgb.device)
    return rgb + std * torch.randn(rgb.shape, generator=gen, device=rgb.device, dtype=rgb.dtype)


def jpeg(rgb: torch.Tensor, p: float, quality: tuple[int, int], gen: torch.Generator | None = None) -> torch.Tensor:
    """JPEG-compress each image with probability ``p`` at a quality drawn from ``quality`` (torchvision's libjpeg
    codec, on the CPU); the others pass unchanged."""
    n = rgb.shape[0]
    chosen = torch.rand(n, generator=gen, device=rgb.device) < p
    qualities = torch.randint(quality[0], quality[1] + 1, (n,), generator=gen, device=rgb.device)
    picked = chosen.nonzero()[:, 0].tolist()
    if not picked:
        return rgb
    pixels = (rgb[picked].clamp(0, 1) * 255).round().to(torch.uint8).cpu()
    coded = [decode_jpeg(encode_jpeg(image, quality=int(qualities[i]))) for image, i in zip(pixels, picked)]
    out = rgb.clone()
    out[picked] = (torch.stack(coded).to(rgb.device, rgb.dtype) / 255)
    return out


def scanner(rgb: torch.Tensor, cfg: AugmentConfig, gen: torch.Generator | None = None) -> torch.Tensor:
    """Focus, sensor and storage: blur, then noise, then JPEG (each off at 0)."""
    if cfg.blur_sigma:
        rgb = gaussian_blur(rgb, cfg.blur_sigma, gen)
    if cfg.noise_std:
        rgb = gaussian_noise(rgb, cfg.noise_std, gen).clamp(0, 1)
    if cfg.jpeg_p:
        rgb = jpeg(rgb, cfg.jpeg_p, tuple(cfg.jpeg_quality), gen)
    return rgb


def augment(images: torch.Tensor, masks: torch.Tensor | None, cfg: AugmentConfig,
            gen: torch.Generator | None = None) -> tuple[torch.Tensor, torch.Tensor | None]:
    """images float [N,3,H,W] in [0,1]; masks integer [N,H,W] (class per pixel) or None."""
    if cfg.d4 or cfg.flips or cfg.rotation_deg or cfg.scale or tuple(cfg.crop_scale) != (1.0, 1.0):
        theta = random_geometry(images.shape[0], cfg, images.device, gen)
        grid = F.affine_grid(theta, list(images.shape), align_corners=False)
        images = F.grid_sample(images, grid, mode="bilinear", padding_mode="reflection", align_corners=False)
        if masks is not None:
            m = F.grid_sample(masks[:, None].float(), grid, mode="nearest", padding_mode="zeros", align_corners=False)
            masks = m[:, 0].round().to(masks.dtype)
    return scanner(stain_jitter(images, cfg, gen), cfg, gen), masks


def mixup_params(n: int, alpha: float, generator: torch.Generator | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """MixUp coefficients ``lam`` [N] (float32, each >= 0.5) and partner permutation [N], on the generator's device.

    Beta(alpha, alpha) is drawn by numpy's ``Generator.beta`` seeded with an integer drawn from ``generator``
    (torch's Beta/Gamma samplers take no generator), so the draw is reproducible from the torch generator
    (or from ``torch.manual_seed`` when it is None) and advances it.
    """
    device = generator.device if generator is not None else torch.device("cpu")
    seed = int(torch.randint(2**62, (1,), generator=generator, device=device).item())
    lam = torch.from_numpy(np.random.default_rng(seed).beta(alpha, alpha, size=n)).float().to(device)
    perm = torch.randperm(n, generator=generator, device=device)
    return torch.maximum(lam, 1 - lam), perm


def mixup(images: torch.Tensor, targets: torch.Tensor, alpha: float,
          generator: torch.Generator | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """MixUp (Zhang et al. 2018): ``x_i <- lam_i x_i + (1-lam_i) x_perm(i)``, same for targets [N].

    One ``lam`` per sample (see :func:`mixup_params`); mixing is computed in float32 and cast back to the
    images' dtype. ``alpha <= 0`` returns the inputs unchanged.
    """
    if alpha <= 0:
        return images, targets
    lam, perm = mixup_params(len(images), alpha, generator)
    lam, perm = lam.to(images.device), perm.to(images.device)
    x = images.float()
    lam_x = lam.view(-1, *([1] * (x.dim() - 1)))
    mixed = (lam_x * x + (1 - lam_x) * x[perm]).to(images.dtype)
    t = targets.float()
    return mixed, lam * t + (1 - lam) * t[perm]
