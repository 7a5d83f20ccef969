"""Training recipes: the seed-001 preset and documented alternatives. Any field can be overridden."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field, replace

from model.augment import AugmentConfig
from model.network import NetworkConfig


@dataclass
class Recipe:
    epochs: int = 50
    batch_size: int = 24
    lr: float = 4e-5
    weight_decay: float = 0.0
    schedule: str = "constant"  # constant | cosine (per-step cosine decay after a linear warm-up)
    warmup_epochs: float = 0.0
    loss_weights: tuple[float, float, float] = (1.0, 1.0, 1.0)  # BCE, segmentation Dice, pixel-class Dice
    select: str = "val_loss"  # model selection on the validation domain: val_loss (seed 001) | val_ba
    balanced_sampling: bool = False  # class-balanced batches (in addition to the weighted BCE)
    seed: int = 0
    network: NetworkConfig = field(default_factory=NetworkConfig)
    augment: AugmentConfig = field(default_factory=AugmentConfig)

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> Recipe:
        d = dict(d)
        net = NetworkConfig.from_dict(d.pop("network", {}))
        aug = AugmentConfig(**d.pop("augment", {}))
        d["loss_weights"] = tuple(d.get("loss_weights", (1.0, 1.0, 1.0)))
        return cls(network=net, augment=aug, **d)

    def single_task(self) -> Recipe:
        return replace(self, network=replace(self.network, decoders=False))


PRESETS: dict[str, Recipe] = {
    # Seed 001 as published: Adam 4e-5, batch 24, 50 epochs, selection on validation loss.
    "seed001": Recipe(),
    # From scratch on a few thousand patches: higher peak LR with warm-up and cosine decay, weight decay,
    # stronger stain augmentation, selection on validation balanced accuracy.
    "scratch": Recipe(epochs=30, lr=3e-4, weight_decay=1e-4, schedule="cosine", warmup_epochs=1.0,
                      select="val_ba", augment=AugmentConfig(stain_scale=0.1, stain_shift=0.03)),
}
