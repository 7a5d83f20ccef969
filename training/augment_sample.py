"""``amf augment``: what a recipe's training augmentation does to real patches, as a picture.

One row per patch: the patch as read, then augmented views drawn as in training (the recipe's AugmentConfig on
the patch and its generated mask), the mask's outline on each view (red = atypical, green = normal).
"""

from __future__ import annotations

import argparse

import numpy as np
import torch

from training.augment import AugmentConfig, augment
from training.data import load
from training.masks import domain_class_groups, generate_masks, save_mask_grid
from training.network import to_input
from training.recipe import Recipe


def sample_views(images: np.ndarray, masks: np.ndarray, cfg: AugmentConfig, views: int,
                 seed: int) -> tuple[np.ndarray, np.ndarray]:
    """[N, 1 + views, H, W, 3] uint8 images and [N, 1 + views, H, W] bool masks: each patch, then its views."""
    gen = torch.Generator().manual_seed(seed)
    x = to_input(torch.from_numpy(images)).repeat_interleave(views, 0)
    m = torch.from_numpy(masks.astype(np.int64)).repeat_interleave(views, 0)
    y, my = augment(x, m, cfg, gen)
    out = (y.permute(0, 2, 3, 1).clamp(0, 1) * 255).round().to(torch.uint8).numpy()
    n, h, w = images.shape[:3]
    tiles = np.concatenate([images[:, None], out.reshape(n, views, h, w, 3)], 1)
    outlines = np.concatenate([masks[:, None], my.numpy().reshape(n, views, h, w) > 0], 1)
    return tiles, outlines


def run(args: argparse.Namespace, recipe: Recipe) -> None:
    """``amf augment`` (arguments and the recipe: cli/main.py)."""
    data = load(args.data, args.split)
    rng = np.random.default_rng(args.seed)
    picked = np.array([rng.choice(group) for group in domain_class_groups(data) if len(group)])
    sample = data.subset(picked)
    tiles, outlines = sample_views(sample.images, generate_masks(sample.images), recipe.augment, args.views, args.seed)
    labels = np.repeat(sample.labels, args.views + 1)
    h, w = tiles.shape[2:4]
    save_mask_grid(tiles.reshape(-1, h, w, 3), outlines.reshape(-1, h, w), labels, args.out, columns=args.views + 1)
    print(f"wrote {args.out}: {len(sample)} patches (an atypical and a normal one per domain), "
          f"each then {args.views} views of preset {args.preset}")
