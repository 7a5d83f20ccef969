"""The batched local mode (runtime/predict.py): folders, manifests and stacks predicted in one process."""

from __future__ import annotations

import csv
import shutil

import numpy as np
from conftest import HERE

from runtime import predict
from runtime.ensemble import Ensemble
from runtime.stack import read_stack


def test_scores_a_folder_a_manifest_and_a_stack_like_the_container(tmp_path, tiny_weights):
    stack = next((HERE / "input").rglob("*.tif"))
    manifest = HERE / "fixtures" / "amibr" / "manifest.csv"
    out = tmp_path / "pred.csv"
    assert predict.main([str(stack), str(manifest), str(HERE / "fixtures" / "amibr" / "patches"), "--out", str(out),
                       "--weights", str(tiny_weights), "--batch", "7"]) == 0
    rows = list(csv.DictReader(out.open()))
    assert len(rows) == 16 + 16 + 16
    stack_rows = [r for r in rows if r["source"] == str(stack)]
    assert [int(r["page"]) for r in stack_rows] == list(range(16))
    expected = Ensemble(tiny_weights).predict(read_stack(stack))
    assert [r["class"] == "atypical" for r in stack_rows] == expected.atypical.tolist()
    np.testing.assert_allclose([float(r["confidence"]) for r in stack_rows], expected.confidence, atol=1e-6)
    # the manifest and the folder name the same 16 patches
    by_manifest = sorted(float(r["confidence"]) for r in rows[16:32])
    by_folder = sorted(float(r["confidence"]) for r in rows[32:])
    np.testing.assert_allclose(by_manifest, by_folder)


def test_missing_files_are_an_input_error(tmp_path, tiny_weights, capsys):
    shutil.copy(HERE / "fixtures" / "amibr" / "manifest.csv", tmp_path / "m.csv")  # its patches are not beside it
    assert predict.main([str(tmp_path / "m.csv"), "--out", str(tmp_path / "p.csv"),
                         "--weights", str(tiny_weights)]) == 2
    assert "16 file(s) not found" in capsys.readouterr().err
