"""Training recipes: the seed-001 preset, our from-scratch default, and the competing methods of seeds 002
and 003 as presets. Any field can be overridden (``amf train --set key=value``).

A recipe is checked when it is built: an unknown loss, schedule, sampling, selection, cross-validation,
weight averaging, network kind or fine-tuning name fails at once, before any data is loaded, listing the
valid names, and so do epochs or a batch size below 1 and a learning rate that is not positive.
"""

from __future__ import annotations

import argparse
import json
import math
from dataclasses import asdict, dataclass, field, fields, replace

from training import choices
from training.augment import AugmentConfig
from training.choices import SELECTIONS
from training.folds import CV_SCHEMES
from training.network import NetworkConfig, has_decoders

LOSSES = ("bce", "focal")
SCHEDULES = ("constant", "cosine", "plateau")
SAMPLING = ("shuffle", "balanced", "domain-aware")  # how training batches are drawn: training/sampling.py
WEIGHT_AVERAGING = ("none", "ema")


@dataclass
class Recipe:
    epochs: int = 50
    batch_size: int = 24
    lr: float = 4e-5
    weight_decay: float = 0.0
    # constant | cosine (per step, after a linear warm-up) | plateau (halve the LR on a flat validation metric)
    schedule: str = "constant"
    warmup_epochs: float = 0.0
    loss_weights: tuple[float, float, float] = (1.0, 1.0, 1.0)  # classification, segmentation Dice, pixel-class Dice
    select: str = "val_loss"  # model selection on the validation part: val_loss (seed 001) | val_ba
    early_stopping: int = 0  # stop a fold after this many epochs without a better selection metric; 0 = off
    cv: str = "lodo"  # lodo (leave one domain out) | slide-kfold (stratified k-fold grouped by slide)
    n_splits: int = 5  # slide-kfold only
    sampling: str = "shuffle"  # shuffle | balanced (by class) | domain-aware (by domain x class, hard examples)
    hard_example_weight: float = 1.0  # domain-aware sampling: weight of the per-sample loss (hard-example mining)
    loss: str = "bce"  # bce | focal (adaptive focal loss)
    class_weighted: bool = True  # inverse-frequency class weights in the classification loss
    focal_gamma: float = 2.0  # largest focusing parameter of the adaptive focal loss
    soft_labels: float = 0.0  # weight of the expert-vote fraction in the target (0 = majority label only)
    mixup_alpha: float = 0.0  # MixUp Beta(alpha, alpha); 0 = off (classifier-only networks)
    supcon_weight: float = 0.0  # supervised contrastive loss on the embedding; 0 = off
    supcon_temperature: float = 0.1
    domain_adversarial: float = 0.0  # weight of the gradient-reversal domain head's loss; 0 = off
    # none | ema: an exponential moving average of the weights, validated beside the raw ones; selection picks
    # the better of the two each epoch
    weight_averaging: str = "none"
    ema_decay: float = 0.999  # horizon ~1/(1-decay) steps; one LODO fold epoch is ~90 steps of batch 24
    ema_warmup: bool = False  # decay min(ema_decay, (1 + n) / (10 + n)) after n updates: no long memory of the start
    seed: int = 0
    network: NetworkConfig = field(default_factory=NetworkConfig)
    augment: AugmentConfig = field(default_factory=AugmentConfig)

    def __post_init__(self) -> None:
        for name, value, valid in (("loss", self.loss, LOSSES), ("schedule", self.schedule, SCHEDULES),
                                   ("sampling", self.sampling, SAMPLING), ("select", self.select, tuple(SELECTIONS)),
                                   ("cv", self.cv, CV_SCHEMES),
                                   ("weight_averaging", self.weight_averaging, WEIGHT_AVERAGING)):
            if value not in valid:
                raise ValueError(f"unknown {name} {value!r} (one of {', '.join(valid)})")
        for name, value in (("epochs", self.epochs), ("batch_size", self.batch_size)):
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"{name} {value!r}: expected a positive whole number")
        if isinstance(self.lr, bool) or not isinstance(self.lr, int | float) or not 0 < self.lr < math.inf:
            raise ValueError(f"lr {self.lr!r}: expected a positive learning rate, e.g. 3e-4")

    def selection(self) -> tuple[str, str]:
        """The logged metric that checkpoint selection, early stopping and the plateau schedule watch, and its
        better direction: with weight averaging, ``select/score`` (the better of raw and averaged weights)."""
        metric, mode = SELECTIONS[self.select]
        return ("select/score" if self.weight_averaging != "none" else metric), mode

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> Recipe:
        d = dict(d)
        net = NetworkConfig.from_dict(d.pop("network", {}))
        aug = AugmentConfig.from_dict(d.pop("augment", {}))
        if d.pop("balanced_sampling", False):  # recipes written before `sampling` existed
            d["sampling"] = "balanced"
        d["loss_weights"] = tuple(d.get("loss_weights", (1.0, 1.0, 1.0)))
        return cls(network=net, augment=aug, **d)

    def single_task(self) -> Recipe:
        return replace(self, network=replace(self.network, decoders=False))

    def with_overrides(self, assignments: list[str]) -> Recipe:
        """``key=value`` strings; ``network.key`` / ``augment.key`` reach inside; values are JSON (or plain text)."""
        recipe = self
        for item in assignments:
            key, sep, text = item.partition("=")
            if not sep:
                raise ValueError(f"--set {item!r}: expected key=value")
            try:
                value = json.loads(text)
            except json.JSONDecodeError:
                value = text
            value = tuple(value) if isinstance(value, list) else value
            part, _, name = key.rpartition(".")
            if part in ("network", "augment"):
                inner = getattr(recipe, part)
                _check_field(inner, name, key)
                recipe = replace(recipe, **{part: replace(inner, **{name: value})})
            elif part:
                raise ValueError(f"--set {key}: unknown section {part!r} (network, augment)")
            else:
                _check_field(recipe, name, key)
                recipe = replace(recipe, **{name: value})
        return recipe


def _check_field(obj: object, name: str, key: str) -> None:
    names = [f.name for f in fields(obj)]
    if name not in names:
        raise ValueError(f"--set {key}: no such field; choose from {names}")


# Seed 002's end-to-end baselines: 224 px, flips, small rotations, colour jitter, random resized crop,
# class-balanced sampling (plain BCE), Adam 5e-5, LR halved on a validation plateau, early stopping on
# validation BA, 5-fold StratifiedGroupKFold by slide.
SEED002_AUGMENT = AugmentConfig(d4=False, flips=True, rotation_deg=10.0, crop_scale=(0.8, 1.0), stain_scale=0.0,
                                stain_shift=0.0, brightness=0.2, contrast=0.2, saturation=0.2, hue=0.1)
SEED002 = Recipe(epochs=100, batch_size=8, lr=5e-5, schedule="plateau", select="val_ba", early_stopping=15,
                 cv="slide-kfold", sampling="balanced", class_weighted=False, augment=SEED002_AUGMENT)


def _seed002(backbone: str) -> Recipe:
    return replace(SEED002, network=NetworkConfig(kind="timm", backbone=backbone, input_size=224))


def _foundation(name: str, finetune: str, **changes) -> Recipe:
    """Seed 002's foundation-model runs: local weights (--pretrained PATH), linear head, 224 px."""
    return replace(SEED002, **changes, network=NetworkConfig(kind="foundation", backbone=name, input_size=224,
                                                             finetune=finetune))


# Strong, scanner-realistic augmentation for unseen scanners, stains and tissues: Tellez et al. (Medical Image
# Analysis 2019) found strong HED or HSV colour augmentation with morphology augmentation (scaling, blur, noise)
# generalised best across centres, with no stain normalisation. Taken from there without a screen of our own:
# their HED-strong ratio (stain densities scaled by +-20 %) and strong brightness/contrast (+-20 %), with hue
# (+-0.04 turn) and saturation (+-20 %) on top; the density shift stays scratch's +-0.03 (scikit-image rgb2hed
# units: +-0.05 already washed some patches out to blank, docs/augment-strong.png was drawn to check); blur
# (sigma up to 1 px) and noise (std up to 0.03) as for focus and sensor, JPEG at quality 40-95 on half the
# patches as for the slide's storage, and a +-15 % scale jitter.
STRONG_AUGMENT = AugmentConfig(stain_scale=0.2, stain_shift=0.03, brightness=0.2, contrast=0.2, saturation=0.2,
                               hue=0.04, scale=0.15, blur_sigma=1.0, noise_std=0.03, jpeg_p=0.5,
                               jpeg_quality=(40, 95))
SCRATCH = Recipe(epochs=30, lr=3e-4, weight_decay=1e-4, schedule="cosine", warmup_epochs=1.0, select="val_ba",
                 augment=AugmentConfig(stain_scale=0.1, stain_shift=0.03))

PRESETS: dict[str, Recipe] = {
    # Seed 001 as published: Adam 4e-5, batch 24, 50 epochs, selection on validation loss.
    "seed001": Recipe(),
    # From scratch on a few thousand patches: higher peak LR with warm-up and cosine decay, weight decay,
    # stronger stain augmentation, selection on validation balanced accuracy.
    "scratch": SCRATCH,
    # The same with STRONG_AUGMENT: aimed at the multi-domain shift (other tumours, species, scanners).
    "scratch-strong": replace(SCRATCH, augment=STRONG_AUGMENT),
    "seed002-efficientnetv2-m": _seed002("efficientnetv2_m"),
    "seed002-vit-l16": _seed002("vit_large_patch16_224"),
    "seed002-swin-b": _seed002("swin_base_patch4_window7_224"),
    "uni-linear": _foundation("uni", "linear", lr=1e-3),
    "uni-lora": _foundation("uni", "lora"),
    "virchow-lora": _foundation("virchow", "lora"),
    "virchow2-lora": _foundation("virchow2", "lora"),
    "h-optimus-0-lora": _foundation("h-optimus-0", "lora"),
    # Seed 003: H-optimus-0 + LoRA with MixUp, soft labels from expert votes, adaptive focal loss,
    # supervised contrastive loss, a domain-adversarial head and domain-aware / hard-example sampling;
    # leave-one-domain-out so that the domain head and sampler see the domains.
    "seed003": _foundation("h-optimus-0", "lora", cv="lodo", sampling="domain-aware", loss="focal", soft_labels=1.0,
                           mixup_alpha=0.2, supcon_weight=0.1, domain_adversarial=0.1, class_weighted=True,
                           epochs=30, early_stopping=8, batch_size=16),
}
if tuple(PRESETS) != choices.PRESETS:  # amf offers training/choices.py's names before torch loads
    raise ImportError(f"training/choices.py's PRESETS {choices.PRESETS} differ from the recipes {tuple(PRESETS)}")


def build_recipe(args: argparse.Namespace) -> Recipe:
    """The recipe of ``amf train``'s arguments: the preset, then the options, then ``--set``; a ValueError names
    the bad field or value (and the valid ones)."""
    recipe = PRESETS[args.preset]
    overrides = {k: getattr(args, k) for k in ("epochs", "lr", "batch_size", "select", "seed")
                 if getattr(args, k) is not None}
    recipe = replace(recipe, **overrides)
    net = recipe.network
    if args.backbone:
        net = replace(net, backbone=args.backbone)
    if args.pretrained:
        net = replace(net, pretrained=True if args.pretrained == "hub" else args.pretrained)
    recipe = replace(recipe, network=net).with_overrides(args.set or [])
    recipe = recipe.single_task() if args.single_task else recipe
    if recipe.mixup_alpha and has_decoders(recipe.network):
        raise ValueError("MixUp mixes images but not their masks: use it with decoders off (--single-task)")
    if recipe.network.kind == "foundation" and not recipe.network.pretrained:
        print("warning: a foundation model without --pretrained PATH starts from random weights")
    return recipe
