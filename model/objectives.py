"""Seed-003 training options: vote-softened targets, adaptive focal loss, MixUp, supervised contrastive
loss, domain-adversarial head (gradient reversal) and a domain/class-balanced, hard-example-mining sampler.

Labels: 1 = atypical, 0 = normal. Logits are [N] (one per patch); targets are float in [0,1].
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Sequence

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F


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


class DomainAwareSampler(torch.utils.data.Sampler[int]):
    """Draws ``num_samples`` indices per epoch with replacement, balanced over domains and classes, with
    hard-example mining.

    Base weight = ``1 / (count of the sample's (domain, class) group * number of classes in its domain)``:
    every domain gets the same total weight and, within it, every class present the same share (this equals
    ``1/count`` up to a constant when each domain has both classes). It is multiplied by
    ``1 + hard_weight * hardness``, hardness = per-sample EMA (momentum) of the training loss divided by its
    maximum (0 until a sample is first seen; its first loss initialises the EMA). The epoch's indices are
    drawn from ``generator`` when iteration starts, so ``update`` calls take effect from the next epoch.
    """

    def __init__(self, domains: Sequence[str] | np.ndarray, labels: np.ndarray, num_samples: int | None = None,
                 hard_weight: float = 1.0, momentum: float = 0.7, generator: torch.Generator | None = None) -> None:
        domains, labels = np.asarray(domains), np.asarray(labels)
        if len(domains) != len(labels) or len(labels) == 0:
            raise ValueError(f"need as many domains as labels (> 0); got {len(domains)}, {len(labels)}")
        _, domain_id = np.unique(domains, return_inverse=True)
        _, group, group_count = np.unique(np.stack([domain_id, labels.astype(np.int64)]), axis=1,
                                          return_inverse=True, return_counts=True)
        group = group.reshape(-1)
        classes_in_domain = np.array([len(np.unique(labels[domain_id == d])) for d in range(domain_id.max() + 1)])
        self.base = 1.0 / (group_count[group] * classes_in_domain[domain_id])
        self.num_samples = len(labels) if num_samples is None else int(num_samples)
        self.hard_weight = float(hard_weight)
        self.momentum = float(momentum)
        self.generator = generator
        self.loss_ema = np.zeros(len(labels))
        self.seen = np.zeros(len(labels), dtype=bool)

    def weights(self) -> np.ndarray:
        """Current sampling weights (sum 1)."""
        top = self.loss_ema.max()
        hardness = self.loss_ema / top if top > 0 else self.loss_ema
        w = self.base * (1 + self.hard_weight * hardness)
        return w / w.sum()

    def update(self, indices: torch.Tensor, losses: torch.Tensor) -> None:
        """Record per-sample training losses for the dataset ``indices`` of a batch."""
        idx = indices.detach().cpu().numpy().astype(np.int64)
        loss = losses.detach().float().cpu().numpy().astype(np.float64)
        blended = self.momentum * self.loss_ema[idx] + (1 - self.momentum) * loss
        self.loss_ema[idx] = np.where(self.seen[idx], blended, loss)
        self.seen[idx] = True

    def __iter__(self) -> Iterator[int]:
        w = torch.from_numpy(self.weights())
        yield from torch.multinomial(w, self.num_samples, replacement=True, generator=self.generator).tolist()

    def __len__(self) -> int:
        return self.num_samples
