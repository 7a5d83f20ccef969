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


MANIFEST = str(AMIBR_FIXTURE / "manifest.csv")


@pytest.fixture(scope="module")
def pipeline(tmp_path_factory) -> dict:
    """One 2-epoch run of every fold on the 16-patch fixture, shared by the tests below: its folder, arguments and
    fold names."""
    root = tmp_path_factory.mktemp("pipeline")
    out = root / "run"
    args = ["train", "--manifest", MANIFEST, "--split", "train", "--out", str(out), "--epochs", "2",
            "--batch-size", "4", "--backbone", "resnetv2_18", "--cache", str(root / "cache"), "--seed", "3"]
    assert amf(args) == 0
    return {"root": root, "out": out, "args": args, "folds": sorted(p.name for p in out.iterdir() if p.is_dir())}


@pytest.fixture(scope="module")
def tuned(pipeline) -> Path:
    """The run's first fold continued for one step from its weights (--init)."""
    tuned = pipeline["root"] / "tuned"
    args = [a if a != str(pipeline["out"]) else str(tuned) for a in pipeline["args"]]
    assert amf(args + ["--init", str(pipeline["out"]), "--folds", pipeline["folds"][0], "--max-steps", "1"]) == 0
    return tuned


@pytest.fixture(scope="module")
def calibrated(pipeline) -> dict:
    """amf calibrate --tta auto --write on the run: calibration.json."""
    assert amf(["calibrate", str(pipeline["out"]), "--manifest", MANIFEST, "--split", "train", "--tta", "auto",
                "--write"]) == 0
    return json.loads((pipeline["out"] / "calibration.json").read_text())


@pytest.fixture(scope="module")
def exported(pipeline, calibrated) -> Path:
    """The calibrated run exported. 1-epoch models on 4 patches a fold: an int8 shift moves a fold's BA by 0.25,
    and without VNNI onnxruntime's saturating u8s8 kernels shift it (test/golden.py), so the guard is enforced only
    where the golden file's CPU kind runs; its figures are recorded either way."""
    weights = pipeline["root"] / "weights"
    no_guard = [] if cpu_has_vnni() else ["--no-guard"]
    assert amf(["export", str(pipeline["out"]), "--out", str(weights), "--manifest", MANIFEST, *no_guard]) == 0
    return weights


def test_every_fold_trains_with_its_domain_held_out_and_logs_its_epochs(pipeline):
    folds, out = pipeline["folds"], pipeline["out"]
    assert len(folds) == 4 and all(f.startswith("val-") for f in folds)
    rows = list(csv.DictReader((out / folds[0] / "metrics.csv").open()))
    assert ({r["epoch"] for r in rows} == {"0", "1"} and any(r["val/ba"] for r in rows)
            and any(r["perf/train_patches_per_s"] for r in rows))
    config = json.loads((out / folds[0] / "config.json").read_text())
    assert config["fold"]["val_domain"] not in config["fold"]["train_domains"] and config["selected_on"] == "val/loss"


def test_resume_skips_finished_folds(pipeline, capsys):
    weights = pipeline["out"] / pipeline["folds"][0] / "model.safetensors"
    stamp = weights.stat().st_mtime_ns
    assert amf(pipeline["args"] + ["--resume"]) == 0
    assert weights.stat().st_mtime_ns == stamp
    assert "finished earlier, skipped" in capsys.readouterr().out


def test_init_continues_a_fold_from_the_same_fold_of_an_earlier_run(pipeline, tuned):
    # its weights one Adam step at lr 4e-5 away; BatchNorm's running statistics move more
    fold = pipeline["out"] / pipeline["folds"][0]
    tuned_config = json.loads((tuned / fold.name / "config.json").read_text())
    assert tuned_config["init"] == str(fold / "model.safetensors")
    # one step, no validation: the last epoch is kept and the score is null; a validated fold's is a float
    assert tuned_config["selected_score"] is None
    assert isinstance(json.loads((fold / "config.json").read_text())["selected_score"], float)
    start, after = load_network(fold)[0].state_dict(), load_network(tuned / fold.name)[0].state_dict()
    assert max((after[k] - v).abs().max().item() for k, v in start.items()
               if "running_" not in k and v.is_floating_point()) < 1e-3


def test_pick_keeps_per_fold_the_better_of_two_runs_on_its_validation_part(pipeline, tuned):
    folds, picked = pipeline["folds"], pipeline["root"] / "picked"
    assert amf(["pick", str(pipeline["out"]), str(tuned), "--manifest", MANIFEST, "--split", "train",
                "--out", str(picked)]) == 0
    selection = json.loads((picked / "selection.json").read_text())
    assert sorted(selection["chosen"]) == folds and len(selection["candidates"]) == 5
    rivals = {c["model"]: c["ba_at_0.5"] for c in selection["candidates"] if c["fold"] == folds[0]}
    winner = selection["chosen"][folds[0]]
    assert len(rivals) == 2 and rivals[winner] == max(rivals.values())
    assert (picked / folds[0] / "model.safetensors").read_bytes() == (Path(winner) / "model.safetensors").read_bytes()


def test_evaluate_scores_each_fold_and_the_vote(pipeline):
    report_dir = pipeline["root"] / "report"
    assert amf(["evaluate", str(pipeline["out"]), "--manifest", MANIFEST, "--out", str(report_dir)]) == 0
    report = json.loads((report_dir / "report.json").read_text())
    assert set(report["models"]) == set(pipeline["folds"]) | {"vote (4 folds)"}
    assert {"all", "tupac16"} <= set(report["models"]["vote (4 folds)"])
    assert all((report_dir / f).stat().st_size > 1000 for f in ("roc.png", "confusion.png", "report.md"))


def test_calibrate_chooses_tta_threshold_and_vote_by_its_rules(pipeline, calibrated):
    chosen, folds = calibrated, pipeline["folds"]
    assert len(chosen["folds"]) == 4
    d4_better = chosen["mean_ba_at_0.5_tta"] > chosen["mean_ba_at_0.5"]
    assert chosen["tta"] == ("d4" if d4_better else "none")
    at_half = chosen["mean_ba_at_0.5_tta" if d4_better else "mean_ba_at_0.5"]
    assert chosen["mean_ba_at_threshold"] >= at_half  # the chosen threshold scores at least as well as 0.5
    # one model per fold: every vote rule is that model at the threshold, and majority stays
    assert chosen["vote"] == "majority" and set(chosen["members_per_fold"].values()) == {1}
    assert len({(r["threshold"], r["mean_ba"]) for r in chosen["vote_rules"].values()}) == 1
    out = pipeline["out"]
    assert all(json.loads((out / f / "config.json").read_text())["threshold"] == chosen["threshold"] for f in folds)


def test_export_writes_the_int8_graph_its_cpu_graphs_and_their_parity(pipeline, calibrated, exported):
    doc = json.loads((exported / "ensemble.json").read_text())
    assert all(f["threshold"] == calibrated["threshold"] for f in doc["folds"])
    parity = doc["provenance"]["parity_vs_float"]
    assert len(doc["provenance"]["accuracy_guard"]["int8_ba"]) == 4
    assert doc["cpu_model_files"] == [f"ensemble.cpu.{i}.onnx" for i in range(4)]
    assert all((exported / f).is_file() for f in doc["cpu_model_files"])
    assert doc["provenance"]["cpu_graphs_vs_standard"]["max_abs_prob_delta"] <= 1e-4
    assert parity["real"]["patches"] == 16 and parity["real"]["class_agreement"] >= 0.9
    model = onnx.load(str(exported / "ensemble.onnx"))
    assert any(t.data_type == onnx.TensorProto.INT8 for t in model.graph.initializer)
    session = ort.InferenceSession(str(exported / "ensemble.onnx"), providers=["CPUExecutionProvider"])
    for n in (1, 5):  # dynamic batch; prob is the sigmoid of logit
        prob, logit = session.run(["prob", "logit"], {"image": real_patches(n)})
        assert prob.shape == (n, 4)
        np.testing.assert_allclose(prob, 1 / (1 + np.exp(-logit)), atol=1e-6)
    # the exported graph reproduces the evaluation's fp32 probabilities
    images = real_patches(None)
    ref = evaluate.score_checkpoints([pipeline["out"]], images).results()
    got = session.run(["prob"], {"image": images})[0]
    np.testing.assert_allclose(got, np.stack([ref[f][0] for f in pipeline["folds"]], 1), atol=0.03)


def test_an_export_carries_its_runs_training_rows_and_evaluating_it_alone_warns(exported, tmp_path):
    assert amf(["evaluate", str(exported), "--manifest", MANIFEST, "--bootstrap", "0",
                "--out", str(tmp_path / "export-report")]) == 0
    warning = json.loads((tmp_path / "export-report" / "report.json").read_text())["warning"]
    assert warning.startswith("warning: 16 of 16 evaluation rows are rows the run trained on")
    assert "16 same row" in warning


def real_patches(n: int | None) -> np.ndarray:
    return load([DataSource(Path(MANIFEST))]).images[:n]


def test_evaluate_compares_checkpoints_with_their_export(pipeline, exported):
    # A (PyTorch) and B (the container's code) on the same patches, with the same TTA and vote, and the paired
    # interval of the votes' difference
    compare = pipeline["root"] / "compare"
    assert amf(["evaluate", str(pipeline["out"]), str(exported), "--manifest", MANIFEST, "--bootstrap", "200",
                "--out", str(compare)]) == 0
    report = json.loads((compare / "report.json").read_text())
    folds = pipeline["folds"]
    assert [(s["key"], s["folds"]) for s in report["sources"]] == [("A", folds), ("B", folds)]
    a, b = (report["models"][f"{x}: vote (4 folds)"]["all"] for x in "AB")
    assert a["balanced_accuracy_ci"][0] <= a["balanced_accuracy"] <= a["balanced_accuracy_ci"][1]
    diff = report["comparison"]["vote A - vote B"]["all"]
    assert len(report["models"]) == 10 and diff["difference"] == a["balanced_accuracy"] - b["balanced_accuracy"]
    assert (compare / "report.html").stat().st_size > 10_000
    # bench/score_ensemble.py is its shorthand for exported ensembles (here: this export vs the shipped one)
    shipped = pipeline["root"] / "shipped"
    subprocess.run([sys.executable, str(ROOT / "bench" / "score_ensemble.py"), "--manifest", MANIFEST,
                    "--weights", str(exported), "--weights", str(ROOT / "weights"), "--bootstrap", "200",
                    "--out", str(shipped)], check=True, capture_output=True)
    assert "vote A - vote B" in json.loads((shipped / "report.json").read_text())["comparison"]


def test_calibrate_scores_a_fold_with_two_members_together(pipeline, tuned, calibrated):
    # the run and its continuation of fold 0: two members of that fold, scored together on its validation part
    folds = pipeline["folds"]
    assert amf(["calibrate", str(pipeline["out"]), str(tuned), "--manifest", MANIFEST, "--split", "train"]) == 0
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


def test_evaluate_scores_each_fold_model_on_its_held_out_test_domain(pipeline):
    out, report_dir = pipeline["root"] / "held-out", pipeline["root"] / "held-out-report"
    assert amf(["train", "--manifest", MANIFEST, "--out", str(out), "--hold-out-test", "--folds", "tupac16",
                "--max-steps", "1", "--batch-size", "4", "--backbone", "resnetv2_18",
                "--cache", str(pipeline["root"] / "cache")]) == 0
    (fold,) = [p.name for p in out.iterdir() if p.is_dir()]
    test_domain = json.loads((out / fold / "config.json").read_text())["fold"]["test_domain"]
    assert fold == f"val-tupac16_test-{test_domain}" and test_domain != "tupac16"
    assert amf(["evaluate", str(out), "--manifest", MANIFEST, "--bootstrap", "0", "--out", str(report_dir)]) == 0
    report = json.loads((report_dir / "report.json").read_text())
    cell = report["models"][fold][test_domain]
    line = f"held-out test domain of {fold}: {test_domain}, BA {cell['balanced_accuracy']:.4f} on {cell['n']} patches"
    assert line in report["note"] and line in (report_dir / "report.md").read_text()
    assert report["sources"][0]["test_domains"] == {fold: test_domain}
