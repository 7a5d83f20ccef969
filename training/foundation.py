"""Pathology foundation-model backbones: timm ViTs with the published configurations, loaded from a local file.

Each entry of :data:`FOUNDATION_MODELS` reproduces the model card's ``timm.create_model`` call, so a
checkpoint published in timm's key layout (e.g. the ``pytorch_model.bin`` or ``model.safetensors`` on the
Hugging Face hub, downloaded beforehand) loads with ``strict=True``; nothing is ever downloaded here.
``overrides`` (JSON-able timm kwargs) are merged over the published ones, e.g. to build small variants.
Fine-tuning modes: :func:`freeze` (linear probing) and :func:`add_lora` / :func:`merge_lora` (peft LoRA on
the attention projections, merged back into plain weights for checkpoints and export).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import timm
import torch
from peft import LoraConfig, LoraModel
from timm.data import IMAGENET_DEFAULT_MEAN as IMAGENET_MEAN
from timm.data import IMAGENET_DEFAULT_STD as IMAGENET_STD
from timm.layers import SwiGLUPacked
from torch import nn

LORA_TARGETS = r".*\.attn\.(qkv|proj)"  # timm ViT attention Linear layers (not patch_embed.proj, a conv)


@dataclass(frozen=True)
class FoundationSpec:
    arch: str  # timm architecture name
    kwargs: dict  # timm.create_model kwargs of the published model (num_classes=0 is always added)
    mean: tuple[float, float, float]
    std: tuple[float, float, float]
    pool: str  # "cls" (class token) | "cls+mean" (class token and the mean of the patch tokens, Virchow)
    input_size: int  # native input size in pixels


_VIRCHOW = dict(img_size=224, init_values=1e-5, mlp_layer=SwiGLUPacked, act_layer=nn.SiLU, mlp_ratio=5.3375,
                global_pool="", dynamic_img_size=True)

FOUNDATION_MODELS: dict[str, FoundationSpec] = {
    # MahmoodLab/uni: ViT-L/16, 1024-d class token
    "uni": FoundationSpec(
        "vit_large_patch16_224", dict(img_size=224, patch_size=16, init_values=1e-5, dynamic_img_size=True),
        IMAGENET_MEAN, IMAGENET_STD, "cls", 224),
    # paige-ai/Virchow: ViT-H/14 with SwiGLU, class token + mean patch token = 2560-d
    "virchow": FoundationSpec("vit_huge_patch14_224", _VIRCHOW, IMAGENET_MEAN, IMAGENET_STD, "cls+mean", 224),
    # paige-ai/Virchow2: as Virchow, plus 4 register tokens (left out of the patch-token mean)
    "virchow2": FoundationSpec(
        "vit_huge_patch14_224", {**_VIRCHOW, "reg_tokens": 4}, IMAGENET_MEAN, IMAGENET_STD, "cls+mean", 224),
    # bioptimus/H-optimus-0: ViT-g/14 (DINOv2, 4 registers), 1536-d class token
    "h-optimus-0": FoundationSpec(
        "vit_giant_patch14_reg4_dinov2", dict(img_size=224, init_values=1e-5, dynamic_img_size=False),
        (0.707223, 0.578729, 0.703617), (0.211883, 0.230117, 0.177517), "cls", 224),
}


def load_weights_file(path: str | Path) -> dict[str, torch.Tensor]:
    """A state dict from ``.safetensors`` or a torch pickle (``.bin``/``.pth``/``.pt``, tensors only),
    unwrapped from a ``{"state_dict": ...}`` or ``{"model": ...}`` container."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"foundation-model weights file not found: {path}")
    suffix = path.suffix.lower()
    if suffix not in (".safetensors", ".bin", ".pth", ".pt"):
        raise ValueError(f"{path}: unsupported weights format {suffix!r} (.safetensors, .bin, .pth or .pt)")
    try:
        if suffix == ".safetensors":
            from safetensors.torch import load_file

            state = load_file(str(path), device="cpu")
        else:
            state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # the readers raise many types (SafetensorError, UnpicklingError, RuntimeError, ...)
        raise ValueError(f"{path}: cannot read weights file: {e}") from e
    for key in ("state_dict", "model"):
        if isinstance(state, dict) and isinstance(state.get(key), dict):
            state = state[key]
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise ValueError(f"{path}: not a state dict (a mapping of names to tensors)")
    return state


def _load_strict(model: nn.Module, state: dict[str, torch.Tensor], path: str | Path) -> None:
    """``load_state_dict(strict=True)`` with a ValueError that names the file and the mismatching keys."""
    own = model.state_dict()
    problems = {
        "missing": [k for k in own if k not in state],
        "unexpected": [k for k in state if k not in own],
        "wrong shape": [f"{k} {tuple(state[k].shape)} != {tuple(v.shape)}"
                        for k, v in own.items() if k in state and state[k].shape != v.shape],
    }
    if any(problems.values()):
        detail = "; ".join(f"{len(keys)} {kind}: {', '.join(keys[:5])}{', ...' if len(keys) > 5 else ''}"
                           for kind, keys in problems.items() if keys)
        raise ValueError(f"{path}: weights do not match the model ({detail})")
    model.load_state_dict(state, strict=True)


class FoundationBackbone(nn.Module):
    """ViT trunk -> pooled embedding [N, embed_dim]. Input: float NCHW already normalised with spec.mean/std
    and already at spec.input_size (the caller resizes/normalises)."""

    def __init__(self, name: str, weights: str | Path | None, overrides: dict | None = None) -> None:
        super().__init__()
        if name not in FOUNDATION_MODELS:
            raise ValueError(f"unknown foundation model {name!r} (one of {tuple(FOUNDATION_MODELS)})")
        self.spec = FOUNDATION_MODELS[name]
        kwargs = {**self.spec.kwargs, **(overrides or {}), "num_classes": 0, "pretrained": False}
        self.vit = timm.create_model(self.spec.arch, **kwargs)
        self.embed_dim: int = self.vit.num_features * (2 if self.spec.pool == "cls+mean" else 1)
        if weights is not None:
            _load_strict(self.vit, load_weights_file(weights), weights)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        tokens = self.vit.forward_features(x)  # [N, prefix + patches, D], final norm applied
        cls = tokens[:, 0]
        if self.spec.pool == "cls":
            return cls
        return torch.cat([cls, tokens[:, self.vit.num_prefix_tokens:].mean(dim=1)], dim=1)


def freeze(module: nn.Module) -> None:
    """No parameter of ``module`` is trained (linear probing)."""
    for p in module.parameters():
        p.requires_grad_(False)


def add_lora(backbone: FoundationBackbone, rank: int = 8, alpha: int = 16, dropout: float = 0.1) -> FoundationBackbone:
    """LoRA (peft) on the attention qkv and output projections, in place; only the LoRA weights stay trainable.
    LoRA's B matrices start at zero, so the output is unchanged until training."""
    config = LoraConfig(r=rank, lora_alpha=alpha, lora_dropout=dropout, target_modules=LORA_TARGETS, bias="none")
    backbone.vit = LoraModel(backbone.vit, config, "default")
    return backbone


def merge_lora(backbone: FoundationBackbone) -> FoundationBackbone:
    """LoRA folded into plain weights, in place: the state dict of a backbone without LoRA (no-op without LoRA)."""
    if isinstance(backbone.vit, LoraModel):
        backbone.vit = backbone.vit.merge_and_unload()
    return backbone
