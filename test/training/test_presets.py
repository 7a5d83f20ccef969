"""Every training preset end to end on the 16-patch fixture (shrunk networks, one epoch of one fold), and the
container's runtime on exported ViT and foundation-model (LoRA) ensembles."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from conftest import AMIBR_FIXTURE
from safetensors.torch import save_file

from cli.main import main as amf
from runtime.ensemble import Ensemble
from training import evaluate
from training.data import DataSource, load
from training.foundation import FoundationBackbone
from training.network import has_decoders
from training.recipe import PRESETS

# Small variants of each preset's architecture (same timm family, fewer / narrower layers).
SHRINK = {
    "seed001": {"network.backbone": "resnetv2_18", "network.decoder_channels": [16, 8, 8]},
    "scratch": {"network.backbone": "resnetv2_18", "network.decoder_channels": [16, 8, 8]},
    "seed002-efficientnetv2-m": {"network.backbone_kwargs": {"channel_multiplier": 0.25, "depth_multiplier": 0.25},
                                 "network.input_size": 96},
    "seed002-vit-l16": {"network.backbone_kwargs": {"depth": 1, "embed_dim": 64, "num_heads": 2}},
    "seed002-swin-b": {"network.backbone_kwargs": {"depths": [1, 1, 1, 1], "embed_dim": 32, "num_heads": [1, 2, 2, 2]}},
}
TINY_VIT = {"embed_dim": 32, "depth": 1, "num_heads": 2}


def tiny_foundation_weights(name: str, folder: Path) -> tuple[Path, int]:
    """A random small ViT of the foundation model's architecture saved in timm's key layout."""
    size = 32 if name == "uni" else 28
    backbone = FoundationBackbone(name, None, {**TINY_VIT, "img_size": size})
    path = folder / f"{name}.safetensors"
    save_file({k: v.contiguous() for k, v in backbone.vit.state_dict().items()}, str(path))
    return path, size


def preset_args(name: str, out: Path, tmp: Path) -> list[str]:
    recipe = PRESETS[name]
    fold = "tupac16" if recipe.cv == "lodo" else "cv1of5"
    args = ["train", "--manifest", str(AMIBR_FIXTURE / "manifest.csv"), "--out", str(out), "--preset", name,
            "--epochs", "1", "--batch-size", "4", "--folds", fold]
    if has_decoders(recipe.network):  # the mask cache serves the decoders' targets only
        args += ["--cache", str(tmp / "cache")]
    changes = dict(SHRINK.get(name, {}))
    if recipe.network.kind == "foundation":
        weights, size = tiny_foundation_weights(recipe.network.backbone, tmp)
        args += ["--pretrained", str(weights)]
        changes = {"network.backbone_kwargs": {**TINY_VIT, "img_size": size}, "network.input_size": size}
    return args + [f"--set={k}={json.dumps(v)}" for k, v in changes.items()]


@pytest.mark.parametrize("name", sorted(PRESETS))
def test_every_preset_trains_end_to_end(name, tmp_path):
    out = tmp_path / "run"
    assert amf(preset_args(name, out, tmp_path)) == 0
    (fold,) = [p for p in out.iterdir() if p.is_dir()]
    config = json.loads((fold / "config.json").read_text())
    recipe = PRESETS[name]
    assert (fold / "model.safetensors").stat().st_size > 10_000
    assert config["recipe"]["cv"] == recipe.cv and config["network"]["kind"] == recipe.network.kind
    assert config["selected_on"] == ("val/ba" if recipe.select == "val_ba" else "val/loss")
    if recipe.network.finetune == "lora":  # checkpoints hold merged weights: no adapter left
        assert b"lora_" not in (fold / "model.safetensors").read_bytes()[:100_000]
    columns = (fold / "metrics.csv").read_text().splitlines()[0].split(",")
    assert {"val/ba", "train/cls"} <= set(columns)
    if name == "seed003":  # the contrastive and domain-adversarial losses ran
        assert {"train/supcon", "train/domain"} <= set(columns)
    images = load([DataSource(AMIBR_FIXTURE / "manifest.csv")]).images[:4]
    probs = evaluate.score_checkpoints([fold], images).results()[fold.name][0]
    assert probs.shape == (4,) and np.all((probs >= 0) & (probs <= 1))


def test_vit_and_foundation_lora_ensembles_run_in_the_container_runtime(tmp_path):
    runs = []
    for name in ("seed002-vit-l16", "seed003"):
        out = tmp_path / name
        assert amf(preset_args(name, out, tmp_path)) == 0
        runs.append(out)
    assert amf(["export", *map(str, runs), "--out", str(tmp_path / "weights"), "--quantize", "weights",
                "--manifest", str(AMIBR_FIXTURE / "manifest.csv")]) == 0
    doc = json.loads((tmp_path / "weights" / "ensemble.json").read_text())
    assert [f["network"]["kind"] for f in doc["folds"]] == ["timm", "foundation"]
    assert doc["provenance"]["parity_vs_float"]["real"]["class_agreement"] >= 0.9
    images = load([DataSource(AMIBR_FIXTURE / "manifest.csv")]).images
    ref = evaluate.score_checkpoints(runs, images).results()
    got = Ensemble(tmp_path / "weights").probabilities(images)
    np.testing.assert_allclose(got, np.stack([ref[f["name"]][0] for f in doc["folds"]], 1), atol=0.03)
