"""Seed-001 loss: class-weighted BCE (image level) + Dice (binary segmentation) + Dice (pixel classes)."""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F


def inverse_frequency_weights(labels: np.ndarray) -> tuple[float, float]:
    """Weights (normal, atypical) inversely proportional to class frequency, mean weight 1 over samples."""
    counts = np.bincount(labels, minlength=2).astype(float)
    if (counts == 0).any():
        raise ValueError(f"both classes are needed to weight the loss; counts (normal, atypical) = {counts}")
    w = len(labels) / (2 * counts)
    return float(w[0]), float(w[1])


def weighted_bce(logit: torch.Tensor, target: torch.Tensor, class_weights: tuple[float, float]) -> torch.Tensor:
    """target: float in [0,1] (hard or soft labels); each sample weighted by its (rounded) class."""
    w = torch.where(target >= 0.5, class_weights[1], class_weights[0]).to(logit)
    return F.binary_cross_entropy_with_logits(logit.float(), target.float(), weight=w)


def resize_target(target: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """Integer masks [N,H,W] -> [N,h,w] by nearest sampling (identity when the size already matches)."""
    if tuple(target.shape[-2:]) == tuple(size):
        return target
    return F.interpolate(target[:, None].float(), size=size, mode="nearest")[:, 0].to(target.dtype)


def binary_dice_loss(logit: torch.Tensor, mask: torch.Tensor, eps: float = 1.0) -> torch.Tensor:
    p = torch.sigmoid(logit.float())
    m = resize_target(mask, logit.shape[-2:]).float()
    return 1 - (2 * (p * m).sum() + eps) / (p.sum() + m.sum() + eps)


def multiclass_dice_loss(logits: torch.Tensor, target: torch.Tensor, eps: float = 1.0) -> torch.Tensor:
    """Soft Dice averaged over classes, pooled over the batch; logits [N,C,H,W], target [N,H,W] int."""
    p = torch.softmax(logits.float(), dim=1)
    onehot = F.one_hot(resize_target(target, logits.shape[-2:]).long(), p.shape[1]).permute(0, 3, 1, 2).float()
    dims = (0, 2, 3)
    dice = (2 * (p * onehot).sum(dims) + eps) / (p.sum(dims) + onehot.sum(dims) + eps)
    return 1 - dice.mean()
