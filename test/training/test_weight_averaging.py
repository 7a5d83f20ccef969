"""Weight averaging (EMA): the update rule, BatchNorm statistics, selection between raw and averaged weights,
and the averaged copy's life in Lightning checkpoints (--resume)."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import lightning as L
import numpy as np
import pytest
import torch
from conftest import AMIBR_FIXTURE
from safetensors.torch import load_file

from cli.main import main as amf
from training import train
from training.checkpoint import load_weights_only
from training.network import NetworkConfig
from training.recipe import PRESETS, Recipe

SMALL = NetworkConfig(backbone="resnetv2_18", head_hidden=(32, 16), decoder_channels=(32, 16, 8))


def ema_task(decay: float, warmup: bool = False) -> train.MitosisTask:
    torch.manual_seed(0)
    recipe = Recipe(weight_averaging="ema", ema_decay=decay, ema_warmup=warmup, network=SMALL)
    return train.MitosisTask(recipe.to_dict(), (1.0, 1.0), steps_per_epoch=1)


def update(task: train.MitosisTask, step: int = 0) -> None:
    """One update of the average, as after an optimizer step: by the callback the averaging task brings."""
    (callback,) = task.configure_callbacks()
    callback.on_train_batch_end(None, task, None, None, step)


def test_recipe_names_and_selection_metric():
    assert PRESETS["seed001"].weight_averaging == "none" and PRESETS["seed001"].selection() == ("val/loss", "min")
    with pytest.raises(ValueError, match="unknown weight_averaging 'swa' \\(one of none, ema\\)"):
        Recipe(weight_averaging="swa")
    recipe = Recipe(select="val_ba").with_overrides(["weight_averaging=ema", "ema_decay=0.99"])
    assert recipe.ema_decay == 0.99 and recipe.selection() == ("select/score", "max")
    plain = train.MitosisTask(Recipe(network=SMALL).to_dict(), (1.0, 1.0), 1)
    assert plain.averaged is None and plain.configure_callbacks() == []


def test_averaged_parameters_are_the_closed_form_ema_and_not_optimized():
    decay, values = 0.75, [0.5, -1.0, 2.0, 3.0]
    task = ema_task(decay)
    for v in values:  # one optimizer step each, leaving every parameter at v
        with torch.no_grad():
            for p in task.net.parameters():
                p.fill_(v)
        update(task)
    # the first update copies; then ema = decay * ema + (1 - decay) * current
    expected = decay ** 3 * values[0] + sum((1 - decay) * decay ** (3 - i) * v for i, v in enumerate(values) if i)
    averaged = list(task.averaged.module.parameters())
    assert len(averaged) == len(list(task.net.parameters())) and int(task.averaged.n_averaged) == 4
    for p in averaged:
        torch.testing.assert_close(p, torch.full_like(p, expected))
    optimized = {id(p) for group in task.configure_optimizers().param_groups for p in group["params"]}
    assert optimized == {id(p) for p in task.net.parameters()}


def test_warmup_lowers_the_decay_of_the_first_updates_only():
    task, values = ema_task(0.5, warmup=True), [4.0, 1.0, 2.0, -1.0, 3.0, 0.0, 5.0, 1.0, 2.0, 7.0, -2.0, 1.0, 6.0]
    expected = None
    for n, v in enumerate(values):  # n updates so far: decay min(0.5, (1 + n) / (10 + n)), 0.5 from n = 8 on
        with torch.no_grad():
            for p in task.net.parameters():
                p.fill_(v)
        update(task, n)
        d = min(0.5, (1 + n) / (10 + n))
        expected = v if expected is None else d * expected + (1 - d) * v
    for p in task.averaged.module.parameters():
        torch.testing.assert_close(p, torch.full_like(p, expected))
    plain = ema_task(0.5)
    for v in values:
        with torch.no_grad():
            for p in plain.net.parameters():
                p.fill_(v)
        update(plain)
    assert not torch.allclose(next(plain.averaged.module.parameters()), torch.tensor(expected))


def test_averaged_batchnorm_statistics_are_the_ema_of_the_raw_ones():
    decay = 0.5
    task = ema_task(decay)
    task.net.train()
    running = lambda: {k: v.clone() for k, v in task.net.named_buffers() if "running_" in k}  # noqa: E731
    initial, expected = running(), None
    for step in range(4):
        with torch.no_grad():
            task.net(torch.rand(4, 3, 128, 128) * (step + 1))  # BatchNorm updates its running statistics
        update(task, step)
        raw = running()
        expected = raw if expected is None else {k: decay * expected[k] + (1 - decay) * raw[k] for k in raw}
    averaged = dict(task.averaged.module.named_buffers())
    assert len(expected) > 20
    for k, v in expected.items():
        torch.testing.assert_close(averaged[k], v)
    assert all(not torch.allclose(averaged[k], raw[k]) for k in expected if k.endswith("running_mean"))  # not raw
    assert all(not torch.allclose(averaged[k], initial[k]) for k in expected)  # not frozen at init


def test_the_average_is_validated_as_the_raw_network_is(patches):
    """The same weights give the same validation figures raw and averaged: both run under the validation step's
    autocast (bf16 here), not the average in fp32 beside it."""
    task = ema_task(0.5)  # no update yet: the average is a copy of the raw network
    data = train.tensors(patches, np.zeros((len(patches), 128, 128), bool), np.zeros(len(patches), int))
    trainer = L.Trainer(accelerator="cpu", devices=1, precision="bf16-mixed", logger=False, enable_progress_bar=False,
                        enable_model_summary=False)
    metrics = trainer.validate(task, torch.utils.data.DataLoader(data, 8), verbose=False)[0]
    for name in ("loss", "cls", "dice_seg", "dice_pix", "ba", "auroc"):
        assert metrics[f"val_avg/{name}"] == metrics[f"val/{name}"], name
    assert metrics["select/ema"] == 0.0  # raw on a tie


def check_selection(fold: Path) -> tuple[dict, list[dict]]:
    """metrics.csv logs raw and averaged weights, select/score is the better (lower val loss) of the two, and
    model.safetensors is the plain network with the weights that won at the selected epoch (ckpt/best.ckpt)."""
    rows = [r for r in csv.DictReader((fold / "metrics.csv").open()) if r.get("select/score")]
    assert rows and all(r["val_avg/ba"] and r["val_avg/auroc"] and r["val/ba"] for r in rows)
    for r in rows:
        raw, avg = float(r["val/loss"]), float(r["val_avg/loss"])
        assert float(r["select/score"]) == pytest.approx(min(raw, avg), rel=1e-5)
        assert float(r["select/ema"]) == float(avg < raw)
    config = json.loads((fold / "config.json").read_text())
    best = load_weights_only(fold / "ckpt" / "best.ckpt")
    assert config["selected_on"] == "select/score" and config["selected_epoch"] == best["epoch"]
    assert config["selected_weights"] == best["selected_weights"]
    saved = load_file(fold / "model.safetensors")
    won, lost = ("averaged.module.", "net.") if config["selected_weights"] == "ema" else ("net.", "averaged.module.")
    assert all(torch.equal(v, best["state_dict"][won + k].float()) for k, v in saved.items())
    assert not all(torch.equal(v, best["state_dict"][lost + k].float()) for k, v in saved.items())
    return config, rows


def test_ema_training_logs_both_selects_the_winner_and_resumes_the_average(tmp_path):
    out = tmp_path / "run"
    args = ["train", "--manifest", str(AMIBR_FIXTURE / "manifest.csv"), "--out", str(out), "--batch-size", "4",
            "--backbone", "resnetv2_18", "--folds", "tupac16", "--cache", str(tmp_path / "cache"), "--seed", "3",
            "--set", "weight_averaging=ema", "--set", "ema_decay=0.5"]
    assert amf(args + ["--epochs", "1"]) == 0
    fold = out / "val-tupac16"
    config, rows = check_selection(fold)
    # on this fixture the average wins epoch 0 (narrowly), so the EMA path is the one checked here
    assert config["selected_weights"] == "ema" == ("ema" if float(rows[0]["select/ema"]) else "raw")
    assert config["selected_score"] == pytest.approx(float(rows[0]["select/score"]))
    first = load_weights_only(fold / "ckpt" / "last.ckpt")
    assert int(first["state_dict"]["averaged.n_averaged"]) == first["global_step"] > 0

    # interrupted after epoch 0: --resume continues the average from ckpt/last.ckpt
    (fold / "model.safetensors").unlink()
    assert amf(args + ["--epochs", "2", "--resume"]) == 0
    check_selection(fold)
    # metrics.csv keeps the epoch trained before the interruption (Lightning's logger would start it afresh)
    epochs = [r["epoch"] for r in csv.DictReader((fold / "metrics.csv").open()) if r.get("select/score")]
    assert epochs == ["0", "1"] and not (fold / train.EARLIER_METRICS).exists()
    assert (out / "curves.png").is_file()  # redrawn as the fold finished
    last = load_weights_only(fold / "ckpt" / "last.ckpt")
    assert last["global_step"] == 2 * first["global_step"]
    assert int(last["state_dict"]["averaged.n_averaged"]) == last["global_step"]

    # a fresh task holds the checkpoint's averaged weights once it is loaded, and they are not the raw ones
    task = train.MitosisTask(**last["hyper_parameters"])
    avg = {k: v for k, v in last["state_dict"].items() if k.startswith("averaged.module.")}
    assert not all(torch.equal(task.state_dict()[k], v) for k, v in avg.items())
    task.load_state_dict(last["state_dict"])
    assert all(torch.equal(task.state_dict()[k], v) for k, v in avg.items())
    assert not all(torch.equal(a, b) for a, b in zip(task.averaged.module.parameters(), task.net.parameters()))
