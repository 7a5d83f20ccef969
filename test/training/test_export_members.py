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

from cli.main import main as amf
from runtime.contract import MEAN_THEN_VOTE, read_spec
from runtime.ensemble import Ensemble
from runtime.version import __version__
from runtime.vote import vote
from training.checkpoint import save_checkpoint
from training.data import load_patches
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
        assert (weights / name).stat().st_size < standard / 10
    assert len(doc["cpu_model_files"]) == 2

    ensemble = Ensemble(weights, providers=["CPUExecutionProvider"])
    assert ensemble.vote == MEAN_THEN_VOTE and ensemble.spec.member_of == ["val-tupac16", "val-tupac16"]
    images = load_patches(AMIBR_FIXTURE / "manifest.csv").images
    prediction = ensemble.predict(images)
    assert not np.allclose(prediction.fold_probs[:, 0], prediction.fold_probs[:, 1])  # two networks
    atypical, confidence = vote(prediction.fold_probs, [0.4, 0.6], MEAN_THEN_VOTE, ["val-tupac16"] * 2)
    assert np.array_equal(prediction.atypical, atypical) and np.allclose(prediction.confidence, confidence)
