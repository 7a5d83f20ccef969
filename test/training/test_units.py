"""Unit tests of the training side: data, masks, network, augmentation, losses, folds, metrics."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import AMIBR_FIXTURE
from PIL import Image
from sklearn.metrics import balanced_accuracy_score, recall_score, roc_auc_score

from training.augment import AugmentConfig, augment, hed_to_rgb, rgb_to_hed
from training.data import ManifestError, load_patches
from training.folds import lodo_folds
from training.losses import binary_dice_loss, inverse_frequency_weights, multiclass_dice_loss
from training.masks import generate_masks, load_masks
from training.metrics import binary_metrics, bootstrap_ba, evaluate_models, markdown_table
from training.network import MultiTaskNet, NetworkConfig


@pytest.fixture(scope="module")
def patches():
    return load_patches(AMIBR_FIXTURE / "manifest.csv", "amibr")


def test_fixture_loads_with_labels_domains_and_votes(patches):
    assert patches.images.shape == (16, 128, 128, 3) and patches.images.dtype == np.uint8
    assert patches.labels.sum() == 8 and len(set(patches.domains)) == 4
    assert set(patches.splits) == {"train"} and np.all((patches.votes >= 0) & (patches.votes <= 1))


def test_bad_manifest_rows_are_all_listed_in_one_error(tmp_path):
    rows = (AMIBR_FIXTURE / "manifest.csv").read_text().splitlines()
    garbage = tmp_path / "garbage.png"
    garbage.write_bytes(b"not a png")
    head, good = rows[0], rows[1].split(",")
    good[0] = str((AMIBR_FIXTURE / good[0]).resolve())
    bad_label = list(good)
    bad_label[1] = "mitosis-ish"
    missing = list(good)
    missing[0] = str(tmp_path / "nope.png")
    unreadable = list(good)
    unreadable[0] = str(garbage)
    manifest = tmp_path / "m.csv"
    manifest.write_text("\n".join([head, ",".join(good), ",".join(bad_label), ",".join(missing), ",".join(unreadable)]))
    with pytest.raises(ManifestError) as err:
        load_patches(manifest, "amibr", root="/")
    msg = str(err.value)
    assert "3 bad row(s)" in msg and "line 3" in msg and "'mitosis-ish'" in msg
    assert "line 4" in msg and "file not found" in msg and "line 5" in msg and "unreadable" in msg


def test_midog25_and_folder_layouts(tmp_path, patches):
    for i, (im, y) in enumerate(zip(patches.images[:4], patches.labels[:4])):
        Image.fromarray(im).save(tmp_path / f"{i}.png")
        d = tmp_path / "tree" / ("human-breast" if i % 2 else "canine-lymphoma") / ("atypical" if y else "normal")
        d.mkdir(parents=True, exist_ok=True)
        Image.fromarray(im).save(d / f"{i}.png")
    lines = ["image_id,majority,Tumor"] + [f"{i},{'AMF' if y else 'NMF'},t{i % 2}"
                                           for i, y in enumerate(patches.labels[:4])]
    (tmp_path / "m.csv").write_text("\n".join(lines))
    m = load_patches(tmp_path / "m.csv", "midog25")
    assert m.labels.tolist() == patches.labels[:4].tolist() and sorted(set(m.domains)) == ["t0", "t1"]
    f = load_patches(tmp_path / "tree", "folders")
    assert len(f) == 4 and sorted(set(f.domains)) == ["canine-lymphoma", "human-breast"]
    np.testing.assert_array_equal(np.sort(f.images.reshape(4, -1).sum(1)), np.sort(m.images.reshape(4, -1).sum(1)))


def test_masks_are_nonempty_cover_the_centre_and_cache(tmp_path, patches):
    masks = generate_masks(patches.images, tmp_path)
    assert masks.shape == (16, 128, 128) and masks.dtype == bool
    areas = masks.sum((1, 2))
    assert (areas >= 50).all() and (areas < 0.5 * 128 * 128).all()
    for m in masks:  # some mask pixel lies within 10 px of the patch centre
        ys, xs = np.nonzero(m)
        assert np.hypot(ys - 63.5, xs - 63.5).min() <= 10
    assert len(list(tmp_path.glob("masks-*.npz"))) == 1
    np.testing.assert_array_equal(generate_masks(patches.images, tmp_path), masks)


def test_external_masks_are_read_by_image_path(tmp_path, patches):
    root = AMIBR_FIXTURE
    for p in patches.paths[:3]:
        out = tmp_path / Path(p).relative_to(root).with_suffix(".png")
        out.parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(np.pad(np.full((8, 8), 255, np.uint8), 60)).save(out)
    masks = load_masks(tmp_path, patches.paths[:3], root)
    assert masks.shape == (3, 128, 128) and masks.sum() == 3 * 64
    with pytest.raises(FileNotFoundError, match="1 mask"):
        load_masks(tmp_path, patches.paths[:4], root)


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


def test_d4_geometry_moves_image_and_mask_together_and_hed_inverts():
    torch.manual_seed(0)
    x = torch.rand(8, 3, 32, 32).clamp_min(0.01)
    mask = torch.zeros(8, 32, 32, dtype=torch.long)
    mask[:, 3:9, 20:30] = 2
    x[:, :, 3:9, 20:30] = 1.0  # the masked region is white in the image
    cfg = AugmentConfig(rotation_deg=0, stain_scale=0, stain_shift=0, brightness=0, contrast=0)
    y, m = augment(x, mask, cfg)
    assert (m.sum((1, 2)) == mask.sum((1, 2))).all()
    assert torch.allclose(y.permute(0, 2, 3, 1)[m == 2], torch.ones(1), atol=1e-4)
    torch.testing.assert_close(hed_to_rgb(rgb_to_hed(x)), x, atol=1e-5, rtol=0)


def test_losses():
    assert inverse_frequency_weights(np.array([0, 0, 0, 1])) == pytest.approx((4 / 6, 2.0))
    target = torch.zeros(2, 8, 8, dtype=torch.long)
    target[:, 2:5, 2:5] = 1
    perfect = torch.where(target > 0, 20.0, -20.0)
    assert binary_dice_loss(perfect, target) < 1e-3 < binary_dice_loss(-perfect, target)
    onehot = torch.nn.functional.one_hot(target, 3).permute(0, 3, 1, 2).float() * 40 - 20
    assert multiclass_dice_loss(onehot, target) < 1e-2 < multiclass_dice_loss(-onehot, target)


def test_lodo_folds_never_leak_a_domain(patches):
    for hold_out_test in (False, True):
        folds = lodo_folds(patches.domains, hold_out_test)
        assert len(folds) == 4 and {f.val_domain for f in folds} == set(patches.domains)
        for fold in folds:
            tr, va, te = fold.indices(patches.domains)
            parts = [set(patches.domains[i]) for i in (tr, va, te)]
            assert not (parts[0] & parts[1]) and not (parts[0] & parts[2]) and not (parts[1] & parts[2])
            assert len(tr) + len(va) + len(te) == len(patches) and len(set(tr) | set(va) | set(te)) == len(patches)
            assert parts[1] == {fold.val_domain} and (len(te) > 0) == hold_out_test
    with pytest.raises(ValueError):
        lodo_folds(["a"])


def test_metrics_agree_with_scikit_learn():
    rng = np.random.default_rng(1)
    labels = rng.integers(0, 2, 300)
    probs = np.clip(labels * 0.3 + rng.random(300) * 0.7, 0, 1)
    pred = probs >= 0.5
    m = binary_metrics(labels, probs, pred)
    assert m["balanced_accuracy"] == pytest.approx(balanced_accuracy_score(labels, pred))
    assert m["sensitivity"] == pytest.approx(recall_score(labels, pred))
    assert m["specificity"] == pytest.approx(recall_score(labels, pred, pos_label=0))
    assert m["auroc"] == pytest.approx(roc_auc_score(labels, probs))
    assert sum(m["confusion"].values()) == 300


def test_bootstrap_interval_resamples_whole_slides():
    rng = np.random.default_rng(2)
    slides = np.repeat(np.arange(30), 20)
    labels = rng.random(600) < 0.3
    slide_right = rng.random(30) < 0.8  # errors come by slide: every patch of a slide is right or wrong
    pred = np.where(slide_right[slides], labels, ~labels)
    point = balanced_accuracy_score(labels, pred)
    by_slide, by_patch = bootstrap_ba(labels, pred, slides), bootstrap_ba(labels, pred)
    assert by_slide[0] < point < by_slide[1] and by_patch[0] < point < by_patch[1]
    assert by_slide[1] - by_slide[0] > 2 * (by_patch[1] - by_patch[0])  # correlated patches: wider interval
    assert bootstrap_ba(labels, pred, slides) == by_slide  # seeded
    assert bootstrap_ba(labels, labels, slides) == (1.0, 1.0)

    # the same interval as drawing slides one by one
    draws = []
    for _ in range(2000):
        pick = rng.integers(0, 30, 30)
        keep = np.concatenate([np.flatnonzero(slides == s) for s in pick])
        draws.append(balanced_accuracy_score(labels[keep], pred[keep]))
    np.testing.assert_allclose(by_slide, np.quantile(draws, [0.025, 0.975]), atol=0.02)

    table = evaluate_models(labels, np.where(slides < 15, "a", "b"), {"m": (pred * 1.0, pred)}, slides, 500)
    assert set(table["m"]) == {"all", "a", "b"}
    lo, hi = table["m"]["a"]["balanced_accuracy_ci"]
    assert lo <= table["m"]["a"]["balanced_accuracy"] <= hi
    assert f"{table['m']['all']['balanced_accuracy']:.4f} (" in markdown_table(table)

