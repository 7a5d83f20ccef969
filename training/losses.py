"""Training losses. Labels: 1 = atypical, 0 = normal; image-level logits are [N]; targets float in [0, 1].

- seed 001: class-weighted BCE (image level) + Dice (binary segmentation) + Dice (pixel classes);
- seed 003's options: targets softened by the expert votes, adaptive focal loss, supervised contrastive loss.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn


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


def soft_targets(labels: torch.Tensor, votes: torch.Tensor, weight: float = 1.0) -> torch.Tensor:
    """``(1-weight)*label + weight*votes`` where the atypical vote fraction is known, else the hard label."""
    hard = labels.float()
    votes = votes.to(hard)
    return torch.where(torch.isnan(votes), hard, (1 - weight) * hard + weight * votes)


class AdaptiveFocalLoss(nn.Module):
    """Class-weighted binary focal loss (Lin et al. 2017) with per-class focusing that adapts to recall.

    Per sample: ``alpha_c * |t - p|**gamma_c * BCE(logit, t)``, with ``c = t >= 0.5`` its class. For hard
    targets the factor is the usual ``(1-p)**gamma`` / ``p**gamma``; for soft targets it is the distance to
    the target (the Generalized Focal Loss form, Li et al. 2020). ``gamma_c = gamma_max * (1 - recall_c)``
    where ``recall_c`` is an EMA (momentum ``m``) of the per-class training recall (prediction ``logit >= 0``)
    over batches containing class c. The EMA starts at 0.5, i.e. ``gamma_max/2`` for both classes (the
    midpoint: no class is assumed easy or hard before any evidence). A batch's loss uses the EMA of the
    previous batches, then updates it (training mode only; each DDP rank keeps its own). The EMA is a
    buffer, so it is checkpointed.
    """

    recall: torch.Tensor
    alpha: torch.Tensor

    def __init__(self, class_weights: tuple[float, float], gamma_max: float = 2.0, momentum: float = 0.9) -> None:
        super().__init__()
        if gamma_max < 0 or not 0 <= momentum < 1:
            raise ValueError(f"need gamma_max >= 0 and momentum in [0, 1); got {gamma_max}, {momentum}")
        self.gamma_max = float(gamma_max)
        self.momentum = float(momentum)
        self.register_buffer("alpha", torch.tensor(class_weights, dtype=torch.float32), persistent=False)
        self.register_buffer("recall", torch.full((2,), 0.5, dtype=torch.float32))

    @property
    def gamma(self) -> torch.Tensor:
        """Current focusing parameters (normal, atypical)."""
        return self.gamma_max * (1 - self.recall.float())

    def forward(self, logit: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        logit, target = logit.float(), target.float()
        cls = (target >= 0.5).long()
        bce = F.binary_cross_entropy_with_logits(logit, target, reduction="none")
        # clamp keeps the gradient of |t-p|**gamma finite where p == t (0 < gamma < 1)
        factor = (target - torch.sigmoid(logit)).abs().clamp_min(1e-6).pow(self.gamma[cls])
        loss = (self.alpha.float()[cls] * factor * bce).mean()
        if self.training:
            self._update_recall(logit.detach(), cls)
        return loss

    @torch.no_grad()
    def _update_recall(self, logit: torch.Tensor, cls: torch.Tensor) -> None:
        correct = ((logit >= 0).long() == cls).float()
        for c in (0, 1):
            present = cls == c
            if present.any():
                batch_recall = correct[present].mean()
                self.recall[c] = self.momentum * self.recall[c] + (1 - self.momentum) * batch_recall


class SupConLoss(nn.Module):
    """Supervised contrastive loss (Khosla et al. 2020, L_out) on embeddings [N, D] (L2-normalised here).

    For anchor i with positives P(i) (same label, not i): ``-mean_{p in P(i)} log softmax_{j != i}(z_i.z_j/tau)_p``,
    averaged over anchors with at least one positive; 0 (keeping the graph) when none has one.
    """

    def __init__(self, temperature: float = 0.1) -> None:
        super().__init__()
        self.temperature = float(temperature)

    def forward(self, embeddings: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        z = F.normalize(embeddings.float(), dim=1)
        n = len(z)
        self_mask = torch.eye(n, dtype=torch.bool, device=z.device)
        positive = (labels.view(-1, 1) == labels.view(1, -1)) & ~self_mask
        n_pos = positive.sum(1)
        anchors = n_pos > 0
        if not anchors.any():
            return (z * 0).sum()
        sim = (z @ z.T / self.temperature).masked_fill(self_mask, float("-inf"))
        log_prob = sim - torch.logsumexp(sim, dim=1, keepdim=True)
        pos_log_prob = log_prob.masked_fill(~positive, 0).sum(1)
        return -(pos_log_prob[anchors] / n_pos[anchors]).mean()
