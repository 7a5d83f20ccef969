"""Training-only heads on the network's embedding (seed 003's options); they never reach a checkpoint or export.

- projection head for the supervised contrastive loss (training/losses.py: ``SupConLoss``);
- domain-adversarial head behind a gradient-reversal layer (Ganin & Lempitsky 2015).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn


class ProjectionHead(nn.Module):
    """SupCon projection: Linear(d, hidden), ReLU, Linear(hidden, out); output L2-normalised."""

    def __init__(self, in_features: int, hidden: int = 256, out_features: int = 128) -> None:
        super().__init__()
        self.mlp = nn.Sequential(nn.Linear(in_features, hidden), nn.ReLU(inplace=True), nn.Linear(hidden, out_features))

    def forward(self, embedding: torch.Tensor) -> torch.Tensor:
        return F.normalize(self.mlp(embedding), dim=1)


class _GradReverse(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x: torch.Tensor, scale: float) -> torch.Tensor:
        ctx.scale = scale
        return x.view_as(x)

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> tuple[torch.Tensor, None]:
        return -ctx.scale * grad, None


def grad_reverse(x: torch.Tensor, scale: float) -> torch.Tensor:
    """Identity forward; gradient multiplied by ``-scale`` (Ganin & Lempitsky 2015)."""
    return _GradReverse.apply(x, scale)


def dann_schedule(progress: float, gamma: float = 10.0) -> float:
    """Gradient-reversal scale ``2/(1+exp(-gamma*p)) - 1`` rising from 0 to ~1; ``p`` clipped to [0, 1]."""
    p = min(max(progress, 0.0), 1.0)
    return 2.0 / (1.0 + math.exp(-gamma * p)) - 1.0


class DomainHead(nn.Module):
    """Domain-adversarial head: gradient reversal, then Linear(d, hidden), ReLU, Linear(hidden, n_domains)."""

    def __init__(self, in_features: int, n_domains: int, hidden: int = 256) -> None:
        super().__init__()
        self.mlp = nn.Sequential(nn.Linear(in_features, hidden), nn.ReLU(inplace=True), nn.Linear(hidden, n_domains))

    def forward(self, embedding: torch.Tensor, scale: float) -> torch.Tensor:
        return self.mlp(grad_reverse(embedding, scale))
