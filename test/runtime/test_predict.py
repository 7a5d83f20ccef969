"""The batched local mode (``amf predict``, runtime/predict.py): folders, manifests and stacks in one process."""

from __future__ import annotations

import csv
import shutil
import subprocess
import sys

import numpy as np
from conftest import HERE, ROOT

from cli.main import main
from runtime import predict
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
    assert err.startswith("amf predict: error: 16 file(s) not found") and err.count("\n") == 1
    assert not (tmp_path / "p.csv").exists()


def test_no_image_is_an_input_error_with_no_output(tmp_path, tiny_weights, capsys):
    """As process.py: a folder without images (or a manifest without rows) is exit 2, and no CSV is written."""
    (tmp_path / "empty").mkdir()
    (tmp_path / "notes.txt").write_text("not an image")
    (tmp_path / "rows.csv").write_text("\ufefffile,label\n", encoding="utf-8")  # a header only (and a BOM)
    for inputs in ([tmp_path / "empty"], [tmp_path / "rows.csv"], [tmp_path / "empty", tmp_path / "rows.csv"]):
        out = tmp_path / "out" / "p.csv"
        assert main(["predict", *map(str, inputs), "--out", str(out), "--weights", str(tiny_weights)]) == EXIT_INPUT
        err = capsys.readouterr().err
        assert err.startswith("amf predict: error: ") and "no image" in err and err.count("\n") == 1, err
        assert not (tmp_path / "out").exists()


def test_an_unwritable_csv_is_one_line_and_the_output_exit_code_with_no_partial_file(tmp_path, tiny_weights, capsys,
                                                                                      monkeypatch):
    stack = next((HERE / "input").rglob("*.tif"))
    out = tmp_path / "taken"
    out.mkdir()  # a folder where the CSV should go: refused before any inference
    assert main(["predict", str(stack), "--out", str(out), "--weights", str(tiny_weights)]) == EXIT_OUTPUT
    assert capsys.readouterr().err == f"amf predict: error: --out {out}: a folder is there; give a file name\n"
    (tmp_path / "file").write_text("")  # the CSV's folder is a file: refused too
    assert main(["predict", str(stack), "--out", str(tmp_path / "file" / "p.csv"),
                 "--weights", str(tiny_weights)]) == EXIT_OUTPUT
    err = capsys.readouterr().err
    assert err.startswith("amf predict: error: --out ") and "is a file, not a folder" in err and err.count("\n") == 1

    def refuse(*args):  # the rename at the end fails (e.g. the disk filled up): no partial file is left
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(predict.os, "replace", refuse)
    assert main(["predict", str(stack), "--out", str(tmp_path / "p.csv"), "--weights", str(tiny_weights),
                 "--batch-size", "5"]) == EXIT_OUTPUT
    err = capsys.readouterr().err
    assert err.splitlines()[-1] == (f"amf predict: error: {tmp_path / 'p.csv'}: cannot write the CSV "
                                    "(No space left on device)")
    assert "Traceback" not in err and sorted(p.name for p in tmp_path.iterdir()) == ["file", "taken", "weights"]


def test_progress_in_a_log_is_separate_lines(tmp_path, tiny_weights):
    stack = next((HERE / "input").rglob("*.tif"))
    proc = subprocess.run([sys.executable, "-m", "cli.main", "predict", str(stack), "--out", str(tmp_path / "p.csv"),
                           "--weights", str(tiny_weights), "--batch-size", "4"], capture_output=True, text=True,
                          cwd=ROOT, timeout=120)  # stderr a pipe, as in a redirected log
    assert proc.returncode == 0, proc.stderr
    assert "\r" not in proc.stderr
    lines = [line for line in proc.stderr.splitlines() if line.startswith("predicted ")]
    assert lines[0].startswith("predicted 4 patches from 1 file(s)") and lines[-1].startswith("predicted 16 patches")


def test_a_missing_model_is_the_model_exit_code(tmp_path, capsys):
    stack = next((HERE / "input").rglob("*.tif"))
    assert main(["predict", str(stack), "--out", str(tmp_path / "p.csv"), "--weights", str(tmp_path)]) == EXIT_MODEL
    err = capsys.readouterr().err
    assert err.startswith(f"amf predict: error: {tmp_path / 'ensemble.json'}: ") and err.count("\n") == 1
    assert not (tmp_path / "p.csv").exists()


def test_batch_size_sets_the_pages_per_inference_run(tmp_path, tiny_weights, monkeypatch):
    """``--batch-size 80`` over five 16-page stacks: one run of 80 pages (it was 64 + 16 whatever the option)."""
    from runtime.runners import InProcess

    stack = next((HERE / "input").rglob("*.tif"))
    runs = []
    run = InProcess.run
    monkeypatch.setattr(InProcess, "run", lambda self, batch: runs.append(len(batch)) or run(self, batch))
    for option, expected in ((["--batch-size", "80"], [80]), ([], [64, 16])):
        runs.clear()
        assert main(["predict", *[str(stack)] * 5, "--out", str(tmp_path / "p.csv"), "--weights", str(tiny_weights),
                     *option]) == 0
        assert runs == expected
