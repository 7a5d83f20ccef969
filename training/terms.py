"""The training loss, term by term. Each term is one object with ``loss(out, targets) -> tensor``; the training step
sums the terms the recipe switched on, each times its weight, in the order :func:`loss_terms` lists them.

- the network's own tasks (their weighted sum is also ``val/loss``): classification (class-weighted BCE, or the
  adaptive focal loss), and with decoders the binary segmentation Dice and the pixel-class Dice (seed 001);
- training-only terms on the embedding (seed 003): supervised contrastive (through a projection head) and domain
  adversarial (a domain head behind gradient reversal).

The terms with parameters or state (focal loss, projection head, domain head) are modules: the task registers them
under :data:`STATE_NAMES`, so the optimizer trains them and Lightning's checkpoints hold them, while exports hold the
network alone. The domain-aware sampler's per-sample losses are no term (they add nothing to the loss): see
``sampling.SamplerFeedback``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

import torch
import torch.nn.functional as F

from training.heads import DomainHead, ProjectionHead, dann_schedule
from training.losses import AdaptiveFocalLoss, SupConLoss, binary_dice_loss, multiclass_dice_loss, weighted_bce
from training.network import has_decoders
from training.recipe import Recipe

# the task's attribute for each term with state: the keys of its state in Lightning's checkpoints (--resume)
STATE_NAMES = {"cls": "focal", "supcon": "projection", "domain": "domain_head"}


@dataclass(frozen=True)
class Targets:
    """What the terms compare a batch's network output with (after augmentation and MixUp, in training)."""

    target: torch.Tensor  # [N] float in [0, 1]: the label, softened by the votes or mixed
    pix: torch.Tensor | None  # [N,H,W] pixel classes (0 background, 1 normal, 2 atypical); None without decoders
    labels: torch.Tensor  # [N] hard labels
    domains: torch.Tensor  # [N] domain ids
    progress: float  # the fraction of the fold's training steps done


class Term(Protocol):
    def loss(self, out: dict[str, torch.Tensor], targets: Targets) -> torch.Tensor: ...


@dataclass(frozen=True)
class Weighted:
    name: str  # logged as train/<name>, val/<name>
    weight: float
    term: Term


@dataclass(frozen=True)
class WeightedBCE:
    class_weights: tuple[float, float]

    def loss(self, out: dict[str, torch.Tensor], targets: Targets) -> torch.Tensor:
        return weighted_bce(out["logit"], targets.target, self.class_weights)


class AdaptiveFocal(AdaptiveFocalLoss):
    def loss(self, out: dict[str, torch.Tensor], targets: Targets) -> torch.Tensor:
        return self(out["logit"], targets.target)


class SegmentationDice:
    def loss(self, out: dict[str, torch.Tensor], targets: Targets) -> torch.Tensor:
        return binary_dice_loss(out["seg"], targets.pix > 0)


class PixelClassDice:
    def loss(self, out: dict[str, torch.Tensor], targets: Targets) -> torch.Tensor:
        return multiclass_dice_loss(out["pix"], targets.pix)


class SupCon(ProjectionHead):
    """Supervised contrastive loss of the projected embedding, by hard label."""

    def __init__(self, in_features: int, temperature: float) -> None:
        super().__init__(in_features)
        self.criterion = SupConLoss(temperature)

    def loss(self, out: dict[str, torch.Tensor], targets: Targets) -> torch.Tensor:
        return self.criterion(self(out["embedding"].float()), targets.labels.long())


class DomainAdversarial(DomainHead):
    """Cross-entropy of the domain head, whose reversed gradient grows over training (:func:`dann_schedule`)."""

    def loss(self, out: dict[str, torch.Tensor], targets: Targets) -> torch.Tensor:
        return F.cross_entropy(self(out["embedding"].float(), dann_schedule(targets.progress)), targets.domains)


def loss_terms(recipe: Recipe, class_weights: tuple[float, float], embed_dim: int,
               n_domains: int) -> tuple[list[Weighted], list[Weighted]]:
    """The network's task terms, and the training-only terms on its embedding, as ``recipe`` switches them on.
    ``class_weights``: the (normal, atypical) inverse frequencies, used where the recipe weights classes."""
    w_cls, w_seg, w_pix = recipe.loss_weights
    weights = tuple(class_weights) if recipe.class_weighted else (1.0, 1.0)
    cls = AdaptiveFocal(weights, recipe.focal_gamma) if recipe.loss == "focal" else WeightedBCE(weights)
    tasks = [Weighted("cls", w_cls, cls)]
    if has_decoders(recipe.network):
        tasks += [Weighted("dice_seg", w_seg, SegmentationDice()), Weighted("dice_pix", w_pix, PixelClassDice())]
    embedding = []
    if recipe.supcon_weight:
        embedding.append(Weighted("supcon", recipe.supcon_weight, SupCon(embed_dim, recipe.supcon_temperature)))
    if recipe.domain_adversarial:
        embedding.append(Weighted("domain", recipe.domain_adversarial, DomainAdversarial(embed_dim, n_domains)))
    return tasks, embedding


def weighted_losses(terms: list[Weighted], out: dict[str, torch.Tensor], targets: Targets) -> dict[str, torch.Tensor]:
    """Each term's loss by name, and ``loss``: their weighted sum, added up in the order of ``terms``."""
    losses, total = {}, None
    for t in terms:
        losses[t.name] = t.term.loss(out, targets)
        total = t.weight * losses[t.name] if total is None else total + t.weight * losses[t.name]
    return {**losses, "loss": total}
