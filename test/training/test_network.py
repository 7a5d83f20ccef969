"""training/network.py: the multi-task network and any-backbone timm classifiers."""

from __future__ import annotations

import pytest
import torch

from training.network import MultiTaskNet, NetworkConfig, build_network


@pytest.mark.parametrize("decoders", [True, False])
def test_network_output_shapes_at_128px(decoders):
    net = MultiTaskNet(NetworkConfig(decoders=decoders)).eval()
    out = net(torch.rand(2, 3, 128, 128))
    assert out["logit"].shape == (2,)
    if decoders:
        assert out["seg"].shape == (2, 32, 32) and out["pix"].shape == (2, 3, 32, 32)
    else:
        assert set(out) == {"logit", "embedding"} and out["embedding"].shape == (2, 2048)
    pruned = net.pruned()
    assert set(pruned.state_dict()) == {k for k in net.state_dict() if k.startswith(("encoder.", "classifier."))}
    torch.testing.assert_close(pruned(torch.zeros(1, 3, 128, 128)), net(torch.zeros(1, 3, 128, 128))["logit"])


def test_pretrained_backbone_from_a_local_file(tmp_path):
    import timm

    source = timm.create_model("resnetv2_18", pretrained=False)
    torch.save(source.state_dict(), tmp_path / "backbone.pth")
    net = MultiTaskNet(NetworkConfig(backbone="resnetv2_18", pretrained=str(tmp_path / "backbone.pth")))
    torch.testing.assert_close(net.encoder.stem_conv.weight, source.stem.conv.weight)
    torch.testing.assert_close(net.encoder.stages_3.blocks[0].conv2.weight, source.stages[3].blocks[0].conv2.weight)
    with pytest.raises(FileNotFoundError):
        MultiTaskNet(NetworkConfig(backbone="resnetv2_18", pretrained=str(tmp_path / "missing.pth")))


@pytest.mark.parametrize("backbone, kwargs, size", [
    ("resnet18", {}, 128),
    ("vit_tiny_patch16_224", {"depth": 2}, 224),
])
def test_any_timm_classifier_resizes_inside_and_prunes_to_a_logit(backbone, kwargs, size):
    cfg = NetworkConfig(kind="timm", backbone=backbone, input_size=size, backbone_kwargs=kwargs)
    net = build_network(cfg).eval()
    x = torch.rand(3, 3, 128, 128)
    with torch.no_grad():
        out = net(x)
        assert out["logit"].shape == (3,) and out["embedding"].shape == (3, net.embed_dim)
        assert torch.equal(net.pruned()(x), out["logit"])
    assert net.normalize.size == size


@pytest.mark.parametrize("backbone", ["resnet18", "efficientnet_b0"])
def test_multitask_network_takes_any_features_only_cnn(backbone):
    net = build_network(NetworkConfig(backbone=backbone, decoder_channels=(16, 8, 8))).eval()
    with torch.no_grad():
        out = net(torch.rand(2, 3, 128, 128))
    assert out["logit"].shape == (2,) and out["seg"].shape == (2, 32, 32) and out["pix"].shape == (2, 3, 32, 32)


def test_linear_probing_trains_only_the_head():
    net = build_network(NetworkConfig(kind="timm", backbone="resnet18", finetune="linear"), train=True)
    trainable = {n for n, p in net.named_parameters() if p.requires_grad}
    assert trainable == {"model.fc.weight", "model.fc.bias"}
    with pytest.raises(ValueError, match="LoRA"):
        build_network(NetworkConfig(kind="timm", backbone="resnet18", finetune="lora"))
