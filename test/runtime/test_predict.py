"""The batched local mode (``amf predict``, runtime/predict.py): folders, manifests and stacks in one process."""

from __future__ import annotations

import csv
import shutil

import numpy as np
from conftest import HERE

from cli.main import main
from runtime.ensemble import Ensemble
from runtime.errors import EXIT_INPUT, EXIT_MODEL, EXIT_OUTPUT
from runtime.stack import read_stack


def test_scores_a_folder_a_manifest_and_a_stack_like_the_container(tmp_path, tiny_weights):
    stack = next((HERE / "input").rglob("*.tif"))
    manifest = HERE / "fixtures" / "amibr" / "manifest.csv"
    out = tmp_path / "pred.csv"
    assert main(["predict", str(stack), str(manifest), str(HERE / "fixtures" / "amibr" / "patches"), "--out", str(out),
                 "--weights", str(tiny_weights), "--batch-size", "7"]) == 0
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
    assert main(["predict", str(tmp_path / "m.csv"), "--out", str(tmp_path / "p.csv"),
                 "--weights", str(tiny_weights)]) == EXIT_INPUT
    err = capsys.readouterr().err
    assert err.startswith("input error: 16 file(s) not found") and err.count("\n") == 1
    assert not (tmp_path / "p.csv").exists()


def test_an_unwritable_csv_is_one_line_and_the_output_exit_code_with_no_partial_file(tmp_path, tiny_weights, capsys):
    stack = next((HERE / "input").rglob("*.tif"))
    out = tmp_path / "taken"
    out.mkdir()  # a folder where the CSV should go: the rename at the end fails (also as root)
    assert main(["predict", str(stack), "--out", str(out), "--weights", str(tiny_weights), "--batch-size", "5"]) \
        == EXIT_OUTPUT
    err = capsys.readouterr().err
    assert err.splitlines()[-1].startswith(f"output error: {out}: cannot write the CSV")
    assert "Traceback" not in err and sorted(p.name for p in tmp_path.iterdir()) == ["taken", "weights"]
    assert not any(out.iterdir())
    (tmp_path / "file").write_text("")  # the CSV's folder is a file: fails before any inference
    assert main(["predict", str(stack), "--out", str(tmp_path / "file" / "p.csv"),
                 "--weights", str(tiny_weights)]) == EXIT_OUTPUT
    err = capsys.readouterr().err
    assert err.splitlines()[-1].startswith("output error: ") and "Traceback" not in err


def test_a_missing_model_is_the_model_exit_code(tmp_path, capsys):
    stack = next((HERE / "input").rglob("*.tif"))
    assert main(["predict", str(stack), "--out", str(tmp_path / "p.csv"), "--weights", str(tmp_path)]) == EXIT_MODEL
    assert capsys.readouterr().err.startswith("model error: ") and not (tmp_path / "p.csv").exists()
