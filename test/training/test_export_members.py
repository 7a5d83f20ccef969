"""``amf export RUN1 RUN2``: two runs of the same fold give two members of it in one graph, a CPU graph each (the
weights stored once, in the standard graph), named by run in the spec with their fold as group and the vote rule;
the runtime reads them back and votes by that rule. Tiny random networks (timm's test_resnet), one fold."""

from __future__ import annotations

import json
from importlib.metadata import version

import numpy as np
import onnx
import torch
from conftest import AMIBR_FIXTURE
from onnx import numpy_helper
from sklearn.metrics import balanced_accuracy_score

from cli.main import main as amf
from runtime.contract import MEAN_THEN_VOTE, read_spec
from runtime.ensemble import Ensemble
from runtime.version import __version__
from runtime.vote import vote
from training.checkpoint import save_checkpoint
from training.cpu_graph import TILED
from training.data import DataSource, load
from training.network import MultiTaskNet, NetworkConfig

TINY = NetworkConfig(backbone="test_resnet", head_hidden=(8, 4), decoder_channels=(8, 8, 8))
FOLD = {"val_domain": "tupac16", "train_domains": ["midog21-aperio-cs2"]}


def test_two_runs_export_as_two_members_of_each_fold_with_the_weights_stored_once(tmp_path):
    for run, seed, threshold in (("run1", 0, 0.4), ("run2", 1, 0.6)):
        torch.manual_seed(seed)
        save_checkpoint(tmp_path / run / "val-tupac16", MultiTaskNet(TINY), {"threshold": threshold, "fold": FOLD})
    weights = tmp_path / "weights"
    assert amf(["export", str(tmp_path / "run1"), str(tmp_path / "run2"), "--out", str(weights), "--manifest",
                str(AMIBR_FIXTURE / "manifest.csv"), "--vote", MEAN_THEN_VOTE, "--no-guard"]) == 0
    doc = json.loads((weights / "ensemble.json").read_text())
    assert doc["vote"] == MEAN_THEN_VOTE
    assert [(f["name"], f["group"], f["threshold"]) for f in doc["folds"]] == [
        ("run1/val-tupac16", "val-tupac16", 0.4), ("run2/val-tupac16", "val-tupac16", 0.6)]
    assert len(doc["provenance"]["accuracy_guard"]["int8_ba"]) == 2  # the guard, per member
    assert doc["provenance"]["amf_version"] == __version__ == version("amf-mtl")  # the release that exported it
    assert read_spec(weights).identity().endswith(f", amf-mtl {__version__}")  # named in the model line
    standard = (weights / "ensemble.onnx").stat().st_size
    for name in doc["cpu_model_files"]:  # one per member, holding pointers into the standard graph
        graph = onnx.load(str(weights / name), load_external_data=False)
        external = [t for t in graph.graph.initializer if t.data_location == onnx.TensorProto.EXTERNAL]
        assert external and {e.value for t in external for e in t.external_data if e.key == "location"} == {
            "ensemble.onnx"}
        tiled = sum(numpy_helper.to_array(t).nbytes for t in graph.graph.initializer if t.name.endswith(TILED))
        assert (weights / name).stat().st_size - tiled < standard / 10  # less the input's tiled normalisation
    assert len(doc["cpu_model_files"]) == 2

    ensemble = Ensemble(weights)
    assert ensemble.vote == MEAN_THEN_VOTE and ensemble.spec.member_of == ["val-tupac16", "val-tupac16"]
    images = load([DataSource(AMIBR_FIXTURE / "manifest.csv")]).images
    prediction = ensemble.predict(images)
    assert not np.allclose(prediction.member_probs[:, 0], prediction.member_probs[:, 1])  # two networks
    atypical, confidence = vote(prediction.member_probs, [0.4, 0.6], MEAN_THEN_VOTE, ["val-tupac16"] * 2)
    assert np.array_equal(prediction.atypical, atypical) and np.allclose(prediction.confidence, confidence)
    ensemble.close()


def test_calibrate_compares_an_exported_ensemble_with_a_run_on_validation(tmp_path):
    """``amf calibrate WEIGHTS RUN``: the exported members run as in the container, beside the run's checkpoints;
    each source alone, both together and the better per fold are scored, and the decision written down."""
    for run, seed in (("run1", 0), ("run2", 1)):
        torch.manual_seed(seed)
        save_checkpoint(tmp_path / run / "val-tupac16", MultiTaskNet(TINY), {"threshold": 0.5, "fold": FOLD})
    weights, out, manifest = tmp_path / "weights", tmp_path / "cal", str(AMIBR_FIXTURE / "manifest.csv")
    assert amf(["export", str(tmp_path / "run1"), "--out", str(weights), "--manifest", manifest, "--no-guard"]) == 0
    assert amf(["calibrate", str(weights), str(tmp_path / "run2"), "--manifest", manifest, "--out", str(out)]) == 0
    doc = json.loads((out / "calibration.json").read_text())
    assert (out / "comparison.md").read_text().startswith("| candidate | vote |")
    assert not (weights / "calibration.json").exists() and (tmp_path / "run2" / "calibration.json").exists()
    data = load([DataSource(AMIBR_FIXTURE / "manifest.csv")])
    val = data.domains == "tupac16"
    ensemble = Ensemble(weights)
    p = ensemble.probabilities(data.images[val])[:, 0]
    ensemble.close()
    y = data.labels[val]
    exported = next(r for r in doc["folds"] if r["source"] == str(weights))
    assert exported["fold"] == "val-tupac16" and exported["patches"] == val.sum() == 4
    assert exported["ba_at_0.5"] == balanced_accuracy_score(y, p >= 0.5)  # as the container answers
    comparison = doc["comparison"]
    assert comparison["baseline"] == str(weights)
    assert set(comparison["candidates"]) == {f"alone: {weights}", f"alone: {tmp_path / 'run2'}", "all together",
                                             "the better source per fold"}
    assert comparison["candidates"]["all together"]["majority"]["ba"].keys() == {"val-tupac16"}
    decision = comparison["decision"]
    assert decision["ship"] == (decision["gain"] >= 0.005 and decision["best"] != f"alone: {weights}")


def test_an_exported_ensemble_and_a_run_export_as_members_of_one_graph(tmp_path):
    """``amf export WEIGHTS RUN``: the exported members (their int8 weights expanded) beside the run's, one graph,
    re-quantised together; each member answers as it did on its own, within int8's rounding."""
    for run, seed in (("run1", 0), ("run2", 1)):
        torch.manual_seed(seed)
        save_checkpoint(tmp_path / run / "val-tupac16", MultiTaskNet(TINY), {"threshold": 0.5, "fold": FOLD})
    manifest = str(AMIBR_FIXTURE / "manifest.csv")
    for source, out in (("run1", "w1"), ("run2", "w2")):
        assert amf(["export", str(tmp_path / source), "--out", str(tmp_path / out), "--manifest", manifest,
                    "--no-guard"]) == 0
    both = tmp_path / "both"
    assert amf(["export", str(tmp_path / "w1"), str(tmp_path / "run2"), "--out", str(both), "--manifest", manifest,
                "--vote", MEAN_THEN_VOTE, "--no-guard"]) == 0
    doc = json.loads((both / "ensemble.json").read_text())
    assert [(f["name"], f["group"]) for f in doc["folds"]] == [("w1/val-tupac16", "val-tupac16"),
                                                               ("val-tupac16", "val-tupac16")]
    assert len(doc["cpu_model_files"]) == 2 and len(doc["provenance"]["accuracy_guard"]["int8_ba"]) == 2
    images = load([DataSource(AMIBR_FIXTURE / "manifest.csv")]).images
    alone = []
    for folder in ("w1", "w2", "both"):
        ensemble = Ensemble(tmp_path / folder)
        alone.append(ensemble.probabilities(images))
        ensemble.close()
    np.testing.assert_allclose(alone[2], np.concatenate(alone[:2], axis=1), atol=0.01)  # seen: 1.3e-4; nets: 0.12 apart
