"""The multi-task network of seed 001 and its pruned inference form.

Shared pre-activation ResNet-50 encoder (timm ``resnetv2_50``, ``features_only``) with three heads:
- an image-level classifier: final pre-activation norm, global average pool, three stacked FC layers with
  ReLU -> one logit (atypical);
- two U-Net-like decoders of three x2 up-sampling blocks with skip connections: mitosis binary segmentation
  (1 channel) and pixel-level mitosis classification (3 channels: background / normal / atypical), both
  predicted at 1/4 of the input resolution (32x32 for 128 px patches); the losses downsample the targets.
Inputs are float RGB in [0, 1], NCHW; ImageNet normalisation happens inside the network, so the exported
graph and training see the same preprocessing. :meth:`MultiTaskNet.pruned` keeps encoder + classifier.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from pathlib import Path

import timm
import torch
import torch.nn.functional as F
from torch import nn

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


@dataclass
class NetworkConfig:
    backbone: str = "resnetv2_50"
    decoders: bool = True  # False = single-task ablation (classifier only)
    head_hidden: tuple[int, int] = (256, 64)
    dropout: float = 0.0
    decoder_channels: tuple[int, int, int] = (128, 64, 32)
    pretrained: bool | str = False  # True: timm's hub weights; a path: a local weights file

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> NetworkConfig:
        fields = {k: tuple(v) if isinstance(v, list) else v for k, v in d.items() if k in cls.__dataclass_fields__}
        return cls(**fields)


def create_encoder(cfg: NetworkConfig) -> nn.Module:
    kwargs: dict = {"features_only": True, "pretrained": bool(cfg.pretrained)}
    if isinstance(cfg.pretrained, str) and cfg.pretrained:
        if not Path(cfg.pretrained).is_file():
            raise FileNotFoundError(f"pretrained weights file not found: {cfg.pretrained}")
        kwargs["pretrained_cfg_overlay"] = {"file": str(cfg.pretrained)}
    return timm.create_model(cfg.backbone, **kwargs)


class Normalize(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.register_buffer("mean", torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(IMAGENET_STD).view(1, 3, 1, 1), persistent=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return (x - self.mean) / self.std


class ClassifierHead(nn.Module):
    """Pre-activation norm + ReLU, global average pool, FC-ReLU-FC-ReLU-FC -> one logit."""

    def __init__(self, in_channels: int, hidden: tuple[int, int], dropout: float) -> None:
        super().__init__()
        self.norm = nn.Sequential(nn.BatchNorm2d(in_channels), nn.ReLU(inplace=True))
        self.fc = nn.Sequential(
            nn.Dropout(dropout), nn.Linear(in_channels, hidden[0]), nn.ReLU(inplace=True),
            nn.Dropout(dropout), nn.Linear(hidden[0], hidden[1]), nn.ReLU(inplace=True),
            nn.Linear(hidden[1], 1),
        )

    def forward(self, feature: torch.Tensor) -> torch.Tensor:
        return self.fc(self.norm(feature).mean(dim=(2, 3))).squeeze(1)


class UpBlock(nn.Module):
    """x2 up-sampling, concatenation with the skip feature, 1x1 conv (channel mixing) + 3x3 conv, BN-ReLU.

    The 1x1 mixing keeps the decoders cheap next to the encoder (the deepest concatenation has 3072 channels).
    """

    def __init__(self, in_channels: int, skip_channels: int, out_channels: int) -> None:
        super().__init__()
        self.conv = nn.Sequential(
            nn.Conv2d(in_channels + skip_channels, out_channels, 1, bias=False),
            nn.BatchNorm2d(out_channels), nn.ReLU(inplace=True),
            nn.Conv2d(out_channels, out_channels, 3, padding=1, bias=False),
            nn.BatchNorm2d(out_channels), nn.ReLU(inplace=True),
        )

    def forward(self, x: torch.Tensor, skip: torch.Tensor) -> torch.Tensor:
        x = F.interpolate(x, size=skip.shape[-2:], mode="nearest")
        return self.conv(torch.cat([x, skip], dim=1))


class UNetDecoder(nn.Module):
    """Three x2 up-sampling blocks from the deepest feature through the three skips above it."""

    def __init__(self, encoder_channels: list[int], channels: tuple[int, int, int], out_channels: int) -> None:
        super().__init__()
        deepest, *skips = encoder_channels[::-1][:4]  # e.g. 2048 <- 1024, 512, 256
        ins = (deepest, *channels[:2])
        self.blocks = nn.ModuleList(UpBlock(i, s, o) for i, s, o in zip(ins, skips, channels))
        self.out = nn.Conv2d(channels[-1], out_channels, 1)

    def forward(self, features: list[torch.Tensor]) -> torch.Tensor:
        """Logits at the resolution of the shallowest skip used (1/4 of the input for ResNets)."""
        x, *skips = features[::-1][:4]
        for block, skip in zip(self.blocks, skips):
            x = block(x, skip)
        return self.out(x)


class ClassifierNet(nn.Module):
    """The pruned network used at inference: encoder + classifier, float [0,1] NCHW -> logit [N]."""

    def __init__(self, normalize: nn.Module, encoder: nn.Module, classifier: ClassifierHead) -> None:
        super().__init__()
        self.normalize, self.encoder, self.classifier = normalize, encoder, classifier

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.encoder(self.normalize(x))[-1])


class MultiTaskNet(nn.Module):
    def __init__(self, cfg: NetworkConfig = NetworkConfig()) -> None:
        super().__init__()
        self.cfg = cfg
        self.normalize = Normalize()
        self.encoder = create_encoder(cfg)
        channels = self.encoder.feature_info.channels()
        self.classifier = ClassifierHead(channels[-1], cfg.head_hidden, cfg.dropout)
        if cfg.decoders:
            self.seg_decoder = UNetDecoder(channels, cfg.decoder_channels, 1)
            self.pix_decoder = UNetDecoder(channels, cfg.decoder_channels, 3)

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        features = self.encoder(self.normalize(x))
        out = {"logit": self.classifier(features[-1])}
        if self.cfg.decoders:
            out["seg"] = self.seg_decoder(features).squeeze(1)
            out["pix"] = self.pix_decoder(features)
        return out

    def pruned(self) -> ClassifierNet:
        return ClassifierNet(self.normalize, self.encoder, self.classifier)

