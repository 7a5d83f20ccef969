"""Timing stand-in for the public MIDOG25 Track-2 reference container: one timm EfficientNetV2-M (1 logit,
random weights: timing only), PyTorch eager on CPU, pages resized to 224 px and classified one at a time.

    python bench/reference_standin.py --input test/input --output /tmp/ref-out
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import SimpleITK as sitk
import timm
import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from runtime.grand_challenge import OUTPUT_FILE, find_stack  # noqa: E402


def build() -> torch.nn.Module:
    return timm.create_model("efficientnetv2_m", pretrained=False, num_classes=1).eval()


@torch.inference_mode()
def classify(model: torch.nn.Module, pages: torch.Tensor) -> list[dict]:
    """pages uint8 [N,H,W,3]; one forward per page at 224 px, as the reference container does."""
    mean = torch.tensor([0.485, 0.456, 0.406]).view(1, 3, 1, 1)
    std = torch.tensor([0.229, 0.224, 0.225]).view(1, 3, 1, 1)
    out = []
    for page in pages:
        x = page.permute(2, 0, 1)[None].float() / 255
        x = (F.interpolate(x, size=(224, 224), mode="bilinear", align_corners=False) - mean) / std
        p = float(torch.sigmoid(model(x))[0, 0])
        out.append({"class": "atypical" if p >= 0.5 else "normal", "confidence": p})
    return out


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--input", type=Path, default=Path("/input"))
    p.add_argument("--output", type=Path, default=Path("/output"))
    args = p.parse_args()
    pages = torch.from_numpy(sitk.GetArrayFromImage(sitk.ReadImage(str(find_stack(args.input)))))
    pages = pages[None] if pages.ndim == 3 else pages  # a 1-page stack reads as one 2-D image
    results = classify(build(), pages)
    args.output.mkdir(parents=True, exist_ok=True)
    (args.output / OUTPUT_FILE).write_text(json.dumps(results))


if __name__ == "__main__":
    main()
