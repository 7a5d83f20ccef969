"""runtime/contract.py: the ensemble spec export writes is the one the runtime reads back, vote rule and members
included; old specs (no vote, no groups) keep their meaning."""

from __future__ import annotations

import json

import pytest
from conftest import make_tiny_ensemble

from runtime.contract import MAJORITY, MEAN_THEN_VOTE, SPEC_FILE, VOTE_RULES, make_spec, read_spec
from runtime.errors import ModelError

MEMBERS = [{"name": "run1/val-a", "group": "val-a", "threshold": 0.4},
           {"name": "run2/val-a", "group": "val-a", "threshold": 0.5},
           {"name": "run1/val-b", "group": "val-b", "threshold": 0.6},
           {"name": "run2/val-b", "group": "val-b", "threshold": 0.7}]


@pytest.mark.parametrize("rule", VOTE_RULES)
def test_the_spec_round_trips_its_vote_rule_and_members(rule, tmp_path):
    (tmp_path / SPEC_FILE).write_text(json.dumps(make_spec(MEMBERS, "d4", {"sources": []}, vote=rule)))
    spec = read_spec(tmp_path)
    assert spec.vote == rule and spec.tta == "d4"
    assert spec.member_names == ["run1/val-a", "run2/val-a", "run1/val-b", "run2/val-b"]
    assert spec.member_of == ["val-a", "val-a", "val-b", "val-b"]
    assert spec.thresholds.tolist() == [0.4, 0.5, 0.6, 0.7]
    assert [f.name for f in spec.cpu_model_files] == [f"ensemble.cpu.{i}.onnx" for i in range(4)]


def test_make_spec_refuses_an_unknown_rule():
    with pytest.raises(ValueError, match="unknown vote rule 'minority'"):
        make_spec(MEMBERS, "none", {}, vote="minority")
    assert make_spec(MEMBERS, "none", {})["vote"] == MAJORITY


def test_an_old_spec_means_majority_with_a_fold_per_column(tmp_path):
    spec = read_spec(make_tiny_ensemble(tmp_path / "w", vote=None))
    assert spec.vote == MAJORITY and spec.member_of == spec.member_names == ["fold0", "fold1", "fold2", "fold3"]


def test_a_spec_with_an_unknown_rule_is_a_model_error(tmp_path):
    weights = make_tiny_ensemble(tmp_path / "w", vote="minority")
    with pytest.raises(ModelError, match="unknown vote rule 'minority'"):
        read_spec(weights)
    grouped = make_tiny_ensemble(tmp_path / "m", vote=MEAN_THEN_VOTE, groups=["x", "x", "y", "y"])
    assert read_spec(grouped).member_of == ["x", "x", "y", "y"]
