"""Foundation-model backbones (training/foundation.py) on tiny random ViTs of the published architectures:
loading a local file, pooling, errors, linear-probe freezing, LoRA and its merge."""

from __future__ import annotations

from pathlib import Path

import pytest
import timm
import torch
from safetensors.torch import save_file

from training.foundation import FOUNDATION_MODELS, FoundationBackbone, add_lora, freeze, load_weights_file, merge_lora

# tiny variants; patch 14 or 16, 2x2 patches (the H-optimus-0 spec has a fixed input size, so it is set here)
TINY = {
    "uni": {"embed_dim": 32, "depth": 2, "num_heads": 2, "img_size": 32},
    "virchow": {"embed_dim": 32, "depth": 2, "num_heads": 2, "img_size": 28},
    "virchow2": {"embed_dim": 48, "depth": 2, "num_heads": 2, "img_size": 28},
    "h-optimus-0": {"embed_dim": 32, "depth": 2, "num_heads": 2, "img_size": 28},
}
PATCH_TOKENS_FROM = {"virchow": 1, "virchow2": 5}  # the model cards: output[:, 1:] and output[:, 5:]


def random_timm_model(name: str, overrides: dict | None = None, seed: int = 0) -> torch.nn.Module:
    """The spec's timm model with every weight random (timm's LayerScale init, 1e-5, would hide the blocks)."""
    spec = FOUNDATION_MODELS[name]
    model = timm.create_model(spec.arch, pretrained=False,
                              **{**spec.kwargs, **(overrides or TINY[name]), "num_classes": 0})
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            p.copy_(torch.randn(p.shape, generator=gen) * 0.2)
    return model.eval()


def card_embedding(name: str, model: torch.nn.Module, x: torch.Tensor) -> torch.Tensor:
    """The embedding as the model cards compute it from timm's output."""
    out = model(x)
    if name in PATCH_TOKENS_FROM:  # global_pool="": all tokens
        return torch.cat([out[:, 0], out[:, PATCH_TOKENS_FROM[name]:].mean(1)], dim=1)
    return out  # class token (global_pool "token")


def images(name: str, n: int = 2) -> torch.Tensor:
    size = TINY[name]["img_size"]
    return torch.randn(n, 3, size, size, generator=torch.Generator().manual_seed(1))


def saved_backbone(tmp_path: Path, name: str = "uni") -> FoundationBackbone:
    path = tmp_path / f"{name}.safetensors"
    save_file(random_timm_model(name).state_dict(), str(path))
    return FoundationBackbone(name, path, TINY[name]).eval()


@pytest.mark.parametrize("name", list(FOUNDATION_MODELS))
def test_a_timm_state_dict_loads_and_pools_as_the_model_card(tmp_path, name):
    model = random_timm_model(name)
    path = tmp_path / "model.safetensors"
    save_file(model.state_dict(), str(path))
    backbone = FoundationBackbone(name, path, TINY[name]).eval()
    x = images(name)
    with torch.no_grad():
        expected, got = card_embedding(name, model, x), backbone(x)
    factor = 2 if FOUNDATION_MODELS[name].pool == "cls+mean" else 1
    assert backbone.embed_dim == TINY[name]["embed_dim"] * factor
    assert got.shape == (2, backbone.embed_dim)
    torch.testing.assert_close(got, expected, rtol=0, atol=1e-6)


@pytest.mark.parametrize("filename,wrap", [("w.bin", None), ("w.pth", "state_dict"), ("w.pt", "model")])
def test_torch_pickles_load_with_or_without_a_container(tmp_path, filename, wrap):
    model = random_timm_model("virchow2")
    state = model.state_dict()
    torch.save({wrap: state} if wrap else state, tmp_path / filename)
    assert load_weights_file(tmp_path / filename).keys() == state.keys()
    backbone = FoundationBackbone("virchow2", tmp_path / filename, TINY["virchow2"]).eval()
    x = images("virchow2")
    with torch.no_grad():
        torch.testing.assert_close(backbone(x), card_embedding("virchow2", model, x), rtol=0, atol=1e-6)


def test_a_missing_file_is_a_file_not_found_error_naming_it(tmp_path):
    path = tmp_path / "absent.safetensors"
    with pytest.raises(FileNotFoundError, match="absent.safetensors"):
        FoundationBackbone("uni", path, TINY["uni"])


def test_mismatching_or_unreadable_files_are_value_errors_naming_them(tmp_path):
    wrong_shapes = tmp_path / "wide.safetensors"
    save_file(random_timm_model("uni", {**TINY["uni"], "embed_dim": 48}).state_dict(), str(wrong_shapes))
    with pytest.raises(ValueError, match=r"wide\.safetensors.*wrong shape.*cls_token"):
        FoundationBackbone("uni", wrong_shapes, TINY["uni"])
    wrong_keys = tmp_path / "other.bin"
    torch.save({"encoder.weight": torch.zeros(2)}, wrong_keys)
    with pytest.raises(ValueError, match=r"other\.bin.*missing.*unexpected: encoder\.weight"):
        FoundationBackbone("uni", wrong_keys, TINY["uni"])
    for bad in ("junk.safetensors", "junk.pth", "junk.onnx"):
        (tmp_path / bad).write_bytes(b"not weights")
        with pytest.raises(ValueError, match=bad.replace(".", r"\.")):
            load_weights_file(tmp_path / bad)


def test_freeze_leaves_nothing_trainable():
    backbone = FoundationBackbone("uni", None, TINY["uni"])
    freeze(backbone)
    assert not any(p.requires_grad for p in backbone.parameters())


def test_lora_trains_only_the_adapters_and_merges_into_a_plain_backbone(tmp_path):
    backbone = saved_backbone(tmp_path, "virchow2")
    x = images("virchow2")
    with torch.no_grad():
        plain = backbone(x)
    lora = add_lora(backbone, rank=4, alpha=8).eval()
    assert lora.embed_dim == 96
    trainable = [n for n, p in lora.named_parameters() if p.requires_grad]
    assert trainable and all("lora_" in n for n in trainable)
    assert {n.split(".attn.")[1].split(".")[0] for n in trainable} == {"qkv", "proj"}
    with torch.no_grad():
        torch.testing.assert_close(lora(x), plain, rtol=0, atol=0)  # B starts at zero

    lora(x).square().sum().backward()
    for n, p in lora.named_parameters():
        assert (p.grad is not None) == p.requires_grad, n
    assert any(p.grad.abs().sum() > 0 for n, p in lora.named_parameters() if "lora_B" in n)

    with torch.no_grad():
        for n, p in lora.named_parameters():
            if "lora_" in n:
                p.copy_(torch.randn_like(p) * 0.3)
        adapted = lora(x)
    assert not torch.allclose(adapted, plain, atol=1e-3)
    merged = merge_lora(lora).eval()
    with torch.no_grad():
        torch.testing.assert_close(merged(x), adapted, rtol=1e-5, atol=1e-5)
    assert list(merged.state_dict()) == list(FoundationBackbone("virchow2", None, TINY["virchow2"]).state_dict())
    assert merge_lora(merged) is merged  # no LoRA: unchanged


@pytest.mark.parametrize("name,embed_dim,params,prefix", [
    ("uni", 1024, 303e6, 1), ("virchow", 2560, 631e6, 1), ("virchow2", 2560, 631e6, 5),
    ("h-optimus-0", 1536, 1.135e9, 5)])
def test_the_published_configurations_build(name, embed_dim, params, prefix):
    with torch.device("meta"):
        backbone = FoundationBackbone(name, None)
    assert backbone.embed_dim == embed_dim and backbone.vit.num_prefix_tokens == prefix
    assert sum(p.numel() for p in backbone.parameters()) == pytest.approx(params, rel=0.005)
    assert backbone.spec.input_size == 224 and backbone.vit.patch_embed.img_size == (224, 224)


def test_an_unknown_name_is_rejected():
    with pytest.raises(ValueError, match="unknown foundation model"):
        FoundationBackbone("gigapath", None)
