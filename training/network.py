"""The networks: seed 001's multi-task network, any timm classifier, and foundation-model classifiers.

``kind`` in :class:`NetworkConfig` picks one (:func:`build_network`):
- ``mtl`` (seed 001): a CNN encoder with ``features_only`` (default timm ``resnetv2_50``, pre-activation
  ResNet-50) and three heads: an image-level classifier (final pre-activation norm, global average pool,
  three stacked FC layers with ReLU -> one logit) and two U-Net-like decoders of three x2 up-sampling
  blocks with skip connections: mitosis binary segmentation (1 channel) and pixel-level mitosis
  classification (3 channels: background / normal / atypical), predicted at the resolution of the
  shallowest skip used (1/4 of the input for ResNets); the losses downsample the targets.
  ``decoders=False`` is the single-task ablation.
- ``timm``: any timm classification model (CNN or ViT; seed 002's baselines) with a one-logit head.
- ``foundation``: a pathology foundation model (training/foundation.py) loaded from a local weights file,
  with a linear head, trained by linear probing or LoRA (``finetune``).
Every network takes float RGB in [0, 1], NCHW, at any size: resizing to ``input_size`` and normalisation
happen inside, so the exported graph and training see the same preprocessing. :func:`to_input` makes that
input from the contract's uint8 NHWC pages (runtime/contract.py), for training, evaluation and export alike.
``forward`` returns a dict (``logit``; ``embedding``, the classifier's input; ``seg`` and ``pix`` with
decoders); ``pruned()`` is the inference form, float NCHW -> logit [N].
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from pathlib import Path

import timm
import torch
import torch.nn.functional as F
from timm.data import IMAGENET_DEFAULT_MEAN as IMAGENET_MEAN
from timm.data import IMAGENET_DEFAULT_STD as IMAGENET_STD
from torch import nn

KINDS = ("mtl", "timm", "foundation")
FINETUNE = ("full", "linear", "lora")


@dataclass
class NetworkConfig:
    kind: str = "mtl"  # mtl | timm | foundation
    backbone: str = "resnetv2_50"  # timm name (mtl: with features_only), or a foundation model name
    decoders: bool = True  # mtl only; False = single-task ablation (classifier only)
    head_hidden: tuple[int, int] = (256, 64)  # mtl classifier
    dropout: float = 0.0
    decoder_channels: tuple[int, int, int] = (128, 64, 32)
    pretrained: bool | str = False  # True: timm's hub weights; a path: a local weights file
    input_size: int = 128  # patches are resized to this inside the network
    backbone_kwargs: dict = field(default_factory=dict)  # extra timm kwargs / foundation-model overrides
    finetune: str = "full"  # full | linear (backbone frozen) | lora (foundation models)
    lora_rank: int = 8
    lora_alpha: int = 16

    def __post_init__(self) -> None:
        if self.kind not in KINDS:
            raise ValueError(f"unknown network kind {self.kind!r} (one of {', '.join(KINDS)})")
        if self.finetune not in FINETUNE:
            raise ValueError(f"unknown finetune mode {self.finetune!r} (one of {', '.join(FINETUNE)})")

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> NetworkConfig:
        fields = {k: tuple(v) if isinstance(v, list) else v for k, v in d.items() if k in cls.__dataclass_fields__}
        return cls(**fields)


def create_encoder(cfg: NetworkConfig, **kwargs) -> nn.Module:
    """A timm model with the config's weights: none, timm's hub weights, or a local file."""
    kwargs = {"pretrained": bool(cfg.pretrained), **cfg.backbone_kwargs, **kwargs}
    if isinstance(cfg.pretrained, str) and cfg.pretrained:
        if not Path(cfg.pretrained).is_file():
            raise FileNotFoundError(f"pretrained weights file not found: {cfg.pretrained}")
        kwargs["pretrained_cfg_overlay"] = {"file": str(cfg.pretrained)}
    return timm.create_model(cfg.backbone, **kwargs)


def to_input(images: torch.Tensor) -> torch.Tensor:
    """uint8 [N, H, W, 3] RGB pages -> float [N, 3, H, W] in [0, 1]."""
    return images.permute(0, 3, 1, 2).float() / 255


class Preprocess(nn.Module):
    """Resize to the network's input size (bilinear) and normalise with the backbone's mean / std."""

    def __init__(self, size: int, mean: tuple[float, ...] = IMAGENET_MEAN,
                 std: tuple[float, ...] = IMAGENET_STD) -> None:
        super().__init__()
        self.size = size
        self.register_buffer("mean", torch.tensor(mean).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(std).view(1, 3, 1, 1), persistent=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.shape[-1] != self.size or x.shape[-2] != self.size:
            x = F.interpolate(x, size=(self.size, self.size), mode="bilinear", align_corners=False)
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

    def embed(self, feature: torch.Tensor) -> torch.Tensor:
        return self.norm(feature).mean(dim=(2, 3))

    def forward(self, feature: torch.Tensor) -> torch.Tensor:
        return self.fc(self.embed(feature)).squeeze(1)


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
        if len(encoder_channels) < 4:
            raise ValueError(f"the decoders need 4 feature levels from the encoder, got {len(encoder_channels)}")
        deepest, *skips = encoder_channels[::-1][:4]  # e.g. 2048 <- 1024, 512, 256
        ins = (deepest, *channels[:2])
        self.blocks = nn.ModuleList(UpBlock(i, s, o) for i, s, o in zip(ins, skips, channels))
        self.out = nn.Conv2d(channels[-1], out_channels, 1)

    def forward(self, features: list[torch.Tensor]) -> torch.Tensor:
        x, *skips = features[::-1][:4]
        for block, skip in zip(self.blocks, skips):
            x = block(x, skip)
        return self.out(x)


class ClassifierNet(nn.Module):
    """The pruned multi-task network used at inference: encoder + classifier, float [0,1] NCHW -> logit [N]."""

    def __init__(self, normalize: nn.Module, encoder: nn.Module, classifier: ClassifierHead) -> None:
        super().__init__()
        self.normalize, self.encoder, self.classifier = normalize, encoder, classifier

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.encoder(self.normalize(x))[-1])


class LogitNet(nn.Module):
    """Inference form of a classifier-only network: float [0,1] NCHW -> logit [N]."""

    def __init__(self, net: nn.Module) -> None:
        super().__init__()
        self.net = net

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)["logit"]


class MultiTaskNet(nn.Module):
    def __init__(self, cfg: NetworkConfig | None = None) -> None:
        cfg = cfg or NetworkConfig()
        super().__init__()
        self.cfg = cfg
        self.normalize = Preprocess(cfg.input_size)
        self.encoder = create_encoder(cfg, features_only=True)
        channels = self.encoder.feature_info.channels()
        self.embed_dim = channels[-1]
        self.classifier = ClassifierHead(channels[-1], cfg.head_hidden, cfg.dropout)
        if cfg.decoders:
            self.seg_decoder = UNetDecoder(channels, cfg.decoder_channels, 1)
            self.pix_decoder = UNetDecoder(channels, cfg.decoder_channels, 3)

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        features = self.encoder(self.normalize(x))
        embedding = self.classifier.embed(features[-1])
        out = {"logit": self.classifier.fc(embedding).squeeze(1), "embedding": embedding}
        if self.cfg.decoders:
            out["seg"] = self.seg_decoder(features).squeeze(1)
            out["pix"] = self.pix_decoder(features)
        return out

    def pruned(self) -> ClassifierNet:
        return ClassifierNet(self.normalize, self.encoder, self.classifier)


class TimmClassifierNet(nn.Module):
    """Any timm classification model with a one-logit head (seed 002's end-to-end baselines)."""

    def __init__(self, cfg: NetworkConfig) -> None:
        super().__init__()
        self.cfg = cfg
        self.model = create_encoder(cfg, num_classes=1)
        self.embed_dim = getattr(self.model, "head_hidden_size", None) or self.model.num_features
        data = self.model.pretrained_cfg
        self.normalize = Preprocess(cfg.input_size, data.get("mean", IMAGENET_MEAN), data.get("std", IMAGENET_STD))

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        embedding = self.model.forward_head(self.model.forward_features(self.normalize(x)), pre_logits=True)
        return {"logit": self.model.get_classifier()(embedding).squeeze(1), "embedding": embedding}

    def pruned(self) -> LogitNet:
        return LogitNet(self)


class FoundationNet(nn.Module):
    """A pathology foundation model (local weights) + a linear head; linear probing or LoRA fine-tuning."""

    def __init__(self, cfg: NetworkConfig, train: bool = False) -> None:
        from training.foundation import FoundationBackbone, add_lora, freeze

        super().__init__()
        self.cfg = cfg
        weights = cfg.pretrained if isinstance(cfg.pretrained, str) and cfg.pretrained else None
        self.backbone = FoundationBackbone(cfg.backbone, weights, cfg.backbone_kwargs)
        spec = self.backbone.spec
        self.normalize = Preprocess(cfg.input_size, spec.mean, spec.std)
        self.embed_dim = self.backbone.embed_dim
        self.head = nn.Sequential(nn.Dropout(cfg.dropout), nn.Linear(self.embed_dim, 1))
        if train and cfg.finetune == "linear":
            freeze(self.backbone)
        elif train and cfg.finetune == "lora":
            self.backbone = add_lora(self.backbone, cfg.lora_rank, cfg.lora_alpha)

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        embedding = self.backbone(self.normalize(x))
        return {"logit": self.head(embedding).squeeze(1), "embedding": embedding}

    def merged(self) -> FoundationNet:
        """LoRA folded into plain weights (the checkpoint and export form); identity otherwise."""
        if self.cfg.finetune == "lora":
            from training.foundation import merge_lora

            self.backbone = merge_lora(self.backbone)
        return self

    def pruned(self) -> LogitNet:
        return LogitNet(self)


def build_network(cfg: NetworkConfig, train: bool = False) -> nn.Module:
    """The network named by ``cfg.kind``; ``train`` applies the fine-tuning mode (frozen backbone, LoRA)."""
    if cfg.kind == "foundation":
        return FoundationNet(cfg, train)
    if cfg.finetune == "lora":
        raise ValueError("LoRA fine-tuning is for foundation models (kind 'foundation')")
    net = MultiTaskNet(cfg) if cfg.kind == "mtl" else TimmClassifierNet(cfg)
    if train and cfg.finetune == "linear":
        encoder = net.encoder if cfg.kind == "mtl" else net.model
        head = net.model.get_classifier() if cfg.kind == "timm" else None
        for p in encoder.parameters():
            p.requires_grad_(False)
        if head is not None:
            for p in head.parameters():
                p.requires_grad_(True)
    return net


def has_decoders(cfg: NetworkConfig) -> bool:
    return cfg.kind == "mtl" and cfg.decoders
