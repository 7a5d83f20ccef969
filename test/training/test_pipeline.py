"""The training side end to end on the 16-patch fixture: learn, checkpoint, resume, evaluate, export."""

from __future__ import annotations

import csv
import json
import pickle
import subprocess
import sys
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch
from conftest import AMIBR_FIXTURE, ROOT
from golden import cpu_has_vnni

from cli.main import main as amf
from training import evaluate, train
from training.augment import AugmentConfig
from training.checkpoint import init_weights, load_network, load_weights_only, save_checkpoint, selected_score
from training.data import DataSource, load
from training.masks import generate_masks
from training.network import MultiTaskNet, NetworkConfig
from training.recipe import Recipe
from training.terms import Targets, weighted_losses

SMALL = NetworkConfig(backbone="resnetv2_18", head_hidden=(32, 16), decoder_channels=(32, 16, 8))


def test_a_few_training_steps_lower_the_loss(patches):
    torch.manual_seed(0)
    recipe = Recipe(lr=1e-3, network=SMALL, augment=AugmentConfig(d4=False, rotation_deg=0, stain_scale=0,
                                                                 stain_shift=0, brightness=0, contrast=0))
    task = train.MitosisTask(recipe.to_dict(), (1.0, 1.0), steps_per_epoch=1)
    images, pix, labels, _, domains, _ = train.tensors(patches, generate_masks(patches.images),
                                                       np.zeros(len(patches))).tensors
    targets = Targets(target=labels, pix=pix, labels=labels, domains=domains, progress=0.0)
    opt = torch.optim.Adam(task.net.parameters(), lr=recipe.lr)
    losses = []
    for _ in range(8):
        loss = weighted_losses(task.task_terms, task.net(task.to_input(images)), targets)["loss"]
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert losses[-1] < 0.9 * losses[0] and sum(b < a for a, b in zip(losses, losses[1:])) >= 6, losses


def test_checkpoint_round_trip_gives_identical_outputs(tmp_path):
    torch.manual_seed(0)
    net = MultiTaskNet(SMALL).eval()
    save_checkpoint(tmp_path, net, {"threshold": 0.4})
    loaded, config = load_network(tmp_path)
    x = torch.rand(3, 3, 128, 128)
    with torch.inference_mode():
        a, b = net(x), loaded(x)
    for k in a:
        assert torch.equal(a[k], b[k])
    assert config["threshold"] == 0.4 and config["network"]["backbone"] == "resnetv2_18"


def test_init_weights_starts_from_a_single_task_model_and_keeps_fresh_decoders(tmp_path):
    torch.manual_seed(0)
    single = MultiTaskNet(NetworkConfig(**{**SMALL.to_dict(), "decoders": False}))
    save_checkpoint(tmp_path / "st", single, {})
    torch.manual_seed(1)
    multi = MultiTaskNet(SMALL)
    decoder_before = next(iter(multi.seg_decoder.parameters())).clone()
    fresh = init_weights(multi, tmp_path / "st")
    assert fresh and all(k.startswith(("seg_decoder.", "pix_decoder.")) for k in fresh)
    for k, v in single.state_dict().items():
        assert torch.equal(multi.state_dict()[k], v), k
    assert torch.equal(next(iter(multi.seg_decoder.parameters())), decoder_before)
    # a checkpoint of another architecture is refused, naming the problem
    with pytest.raises(RuntimeError, match="size mismatch"):
        init_weights(MultiTaskNet(NetworkConfig(**{**SMALL.to_dict(), "head_hidden": (8, 4)})), tmp_path / "st")
    with pytest.raises(ValueError, match="does not have"):
        init_weights(torch.nn.Linear(2, 2), tmp_path / "st" / "model.safetensors")
    with pytest.raises(FileNotFoundError, match="no weights"):
        init_weights(multi, tmp_path / "missing")


class _Exploit:
    def __reduce__(self):
        return (print, ("pwned",))


def test_the_selected_score_is_a_number_or_none_in_new_and_older_configs():
    assert selected_score({"selected_score": 0.8}) == 0.8 and selected_score({"selected_score": 1}) == 1.0
    assert selected_score({}) is None and selected_score({"selected_score": None}) is None
    assert selected_score({"selected_score": {"train/loss": 0.7, "epoch": 0.0}}) is None  # never validated


def test_a_malicious_checkpoint_is_refused(tmp_path):
    path = tmp_path / "evil.ckpt"
    torch.save({"state_dict": {}, "payload": _Exploit()}, path)
    with pytest.raises(pickle.UnpicklingError):
        load_weights_only(path)


def test_cli_trains_all_folds_resumes_evaluates_and_exports(tmp_path, capsys):
    out = tmp_path / "run"
    args = ["train", "--manifest", str(AMIBR_FIXTURE / "manifest.csv"), "--split", "train", "--out", str(out),
            "--epochs", "2", "--batch-size", "4", "--backbone", "resnetv2_18", "--cache", str(tmp_path / "cache"),
            "--seed", "3"]
    assert amf(args) == 0
    folds = sorted(p.name for p in out.iterdir() if p.is_dir())
    assert len(folds) == 4 and all(f.startswith("val-") for f in folds)
    fold = out / folds[0]
    rows = list(csv.DictReader((fold / "metrics.csv").open()))
    assert ({r["epoch"] for r in rows} == {"0", "1"} and any(r["val/ba"] for r in rows)
            and any(r["perf/train_patches_per_s"] for r in rows))
    config = json.loads((fold / "config.json").read_text())
    assert config["fold"]["val_domain"] not in config["fold"]["train_domains"] and config["selected_on"] == "val/loss"
    stamp = (fold / "model.safetensors").stat().st_mtime_ns
    assert amf(args + ["--resume"]) == 0  # finished folds are skipped
    assert (fold / "model.safetensors").stat().st_mtime_ns == stamp
    assert "finished earlier, skipped" in capsys.readouterr().out

    # continued training: a fold starts from the same fold of the earlier run (its weights one Adam step at
    # lr 4e-5 away; BatchNorm's running statistics move more)
    tuned = tmp_path / "tuned"
    tuned_args = [a if a != str(out) else str(tuned) for a in args]
    assert amf(tuned_args + ["--init", str(out), "--folds", folds[0], "--max-steps", "1"]) == 0
    tuned_config = json.loads((tuned / folds[0] / "config.json").read_text())
    assert tuned_config["init"] == str(fold / "model.safetensors")
    # one step, no validation: the last epoch is kept and the score is null; a validated fold's is a float
    assert tuned_config["selected_score"] is None and isinstance(config["selected_score"], float)
    start, after = load_network(fold)[0].state_dict(), load_network(tuned / folds[0])[0].state_dict()
    assert max((after[k] - v).abs().max().item() for k, v in start.items()
               if "running_" not in k and v.is_floating_point()) < 1e-3
    # per fold, the better of the two runs on its validation part is picked
    assert amf(["pick", str(out), str(tuned), "--manifest", str(AMIBR_FIXTURE / "manifest.csv"), "--split", "train",
                "--out", str(tmp_path / "picked")]) == 0
    selection = json.loads((tmp_path / "picked" / "selection.json").read_text())
    assert sorted(selection["chosen"]) == folds and len(selection["candidates"]) == 5
    rivals = {c["model"]: c["ba_at_0.5"] for c in selection["candidates"] if c["fold"] == folds[0]}
    winner = selection["chosen"][folds[0]]
    assert len(rivals) == 2 and rivals[winner] == max(rivals.values())
    assert ((tmp_path / "picked" / folds[0] / "model.safetensors").read_bytes()
            == (Path(winner) / "model.safetensors").read_bytes())

    assert amf(["evaluate", str(out), "--manifest", str(AMIBR_FIXTURE / "manifest.csv"),
                "--out", str(tmp_path / "report")]) == 0
    report = json.loads((tmp_path / "report" / "report.json").read_text())
    assert set(report["models"]) == set(folds) | {"vote (4 folds)"}
    assert {"all", "tupac16"} <= set(report["models"]["vote (4 folds)"])
    assert all((tmp_path / "report" / f).stat().st_size > 1000 for f in ("roc.png", "confusion.png", "report.md"))

    assert amf(["calibrate", str(out), "--manifest", str(AMIBR_FIXTURE / "manifest.csv"), "--split", "train",
                "--tta", "auto", "--write"]) == 0
    chosen = json.loads((out / "calibration.json").read_text())
    assert len(chosen["folds"]) == 4 and chosen["tta"] in ("none", "d4") and 0.2 <= chosen["threshold"] <= 0.8
    # one model per fold: every vote rule is that model at the threshold, and majority stays
    assert chosen["vote"] == "majority" and set(chosen["members_per_fold"].values()) == {1}
    assert len({(r["threshold"], r["mean_ba"]) for r in chosen["vote_rules"].values()}) == 1
    assert all(json.loads((out / f / "config.json").read_text())["threshold"] == chosen["threshold"] for f in folds)

    # 1-epoch models on 4 patches a fold: an int8 shift moves a fold's BA by 0.25, and without VNNI onnxruntime's
    # saturating u8s8 kernels shift it (test/golden.py), so the guard is enforced only where the golden file's CPU
    # kind runs; its figures are recorded either way
    no_guard = [] if cpu_has_vnni() else ["--no-guard"]
    assert amf(["export", str(out), "--out", str(tmp_path / "weights"), "--manifest",
                str(AMIBR_FIXTURE / "manifest.csv"), *no_guard]) == 0
    doc = json.loads((tmp_path / "weights" / "ensemble.json").read_text())
    assert all(f["threshold"] == chosen["threshold"] for f in doc["folds"])
    parity = doc["provenance"]["parity_vs_float"]
    assert len(doc["provenance"]["accuracy_guard"]["int8_ba"]) == 4
    assert doc["cpu_model_files"] == [f"ensemble.cpu.{i}.onnx" for i in range(4)]
    assert all((tmp_path / "weights" / f).is_file() for f in doc["cpu_model_files"])
    assert doc["provenance"]["cpu_graphs_vs_standard"]["max_abs_prob_delta"] <= 1e-4
    assert parity["real"]["patches"] == 16 and parity["real"]["class_agreement"] >= 0.9
    model = onnx.load(str(tmp_path / "weights" / "ensemble.onnx"))
    assert any(t.data_type == onnx.TensorProto.INT8 for t in model.graph.initializer)
    session = ort.InferenceSession(str(tmp_path / "weights" / "ensemble.onnx"))
    for n in (1, 5):  # dynamic batch
        prob = session.run(["prob"], {"image": np.zeros((n, 128, 128, 3), np.uint8)})[0]
        assert prob.shape == (n, 4) and np.all((prob >= 0) & (prob <= 1))
    # the exported graph reproduces the evaluation's fp32 probabilities
    images = load([DataSource(AMIBR_FIXTURE / "manifest.csv")]).images
    ref = evaluate.score_checkpoints([out], images).results()
    got = session.run(["prob"], {"image": images})[0]
    np.testing.assert_allclose(got, np.stack([ref[f][0] for f in folds], 1), atol=0.03)

    # amf evaluate scores the checkpoints (A, PyTorch) and their export (B, the container's code) on the same
    # patches, with the same TTA and vote, and the paired interval of the votes' difference
    assert amf(["evaluate", str(out), str(tmp_path / "weights"), "--manifest", str(AMIBR_FIXTURE / "manifest.csv"),
                "--bootstrap", "200", "--out", str(tmp_path / "compare")]) == 0
    report = json.loads((tmp_path / "compare" / "report.json").read_text())
    assert [(s["key"], s["folds"]) for s in report["sources"]] == [("A", folds), ("B", folds)]
    a, b = (report["models"][f"{x}: vote (4 folds)"]["all"] for x in "AB")
    assert a["balanced_accuracy_ci"][0] <= a["balanced_accuracy"] <= a["balanced_accuracy_ci"][1]
    diff = report["comparison"]["vote A - vote B"]["all"]
    assert len(report["models"]) == 10 and diff["difference"] == a["balanced_accuracy"] - b["balanced_accuracy"]
    assert (tmp_path / "compare" / "report.html").stat().st_size > 10_000
    # bench/score_ensemble.py is its shorthand for exported ensembles (here: this export vs the shipped one)
    subprocess.run([sys.executable, str(ROOT / "bench" / "score_ensemble.py"), "--manifest",
                    str(AMIBR_FIXTURE / "manifest.csv"), "--weights", str(tmp_path / "weights"),
                    "--weights", str(ROOT / "weights"), "--bootstrap", "200", "--out", str(tmp_path / "shipped")],
                   check=True, capture_output=True)
    assert "vote A - vote B" in json.loads((tmp_path / "shipped" / "report.json").read_text())["comparison"]

    # the run and its continuation of fold 0: two members of that fold, scored together on its validation part
    assert amf(["calibrate", str(out), str(tuned), "--manifest", str(AMIBR_FIXTURE / "manifest.csv"), "--split",
                "train"]) == 0
    both = json.loads((tuned / "calibration.json").read_text())
    assert both["members_per_fold"] == {f: 2 if f == folds[0] else 1 for f in folds}
    assert set(both["vote_rules"]) == {"majority", "mean-probability", "mean-then-vote"}
    assert set(both["vote_rules"]["majority"]["ba"]) == set(folds)
    assert both["comparison"] == {"skipped": f"{tuned} has no model of fold(s) {', '.join(folds[1:])}: compare "
                                  "sources of the same folds"}  # the continuation of one fold is no ensemble


def test_training_is_reproducible_with_the_same_seed(tmp_path):
    from safetensors.numpy import load_file

    def run(out: Path) -> dict:
        assert amf(["train", "--manifest", str(AMIBR_FIXTURE / "manifest.csv"), "--out", str(out), "--epochs", "1",
                    "--batch-size", "4", "--backbone", "resnetv2_18", "--folds", "tupac16",
                    "--cache", str(tmp_path / "cache"), "--seed", "7"]) == 0
        return load_file(out / "val-tupac16" / "model.safetensors")

    a, b = run(tmp_path / "a"), run(tmp_path / "b")
    assert a.keys() == b.keys() and all(np.array_equal(a[k], b[k]) for k in a)


def test_a_fold_without_validation_patches_is_refused_before_training(patches, tmp_path):
    from training.data import ManifestError
    from training.folds import Fold

    fold = Fold(val_domain="midog25-canine-lymphoma", train_domains=("tupac16",))
    with pytest.raises(ManifestError, match=r"val-midog25-canine-lymphoma: 4 training and 0 validation patches"):
        train.train_fold(fold, patches, None, Recipe(network=SMALL), tmp_path, train.RunOptions())
    assert not any(tmp_path.iterdir())
