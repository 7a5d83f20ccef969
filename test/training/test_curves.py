"""``amf curves``: a run's metrics.csv files (a resumed fold's earlier part too) -> per-fold table and picture."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from cli.main import main as amf
from training import curves

COLUMNS = ["epoch", "step", "train/loss", "val/ba", "val/loss", "val_avg/ba", "select/score"]


def write_log(path: Path, rows: list[dict]) -> None:
    """Lightning's layout: a training row and a validation row per epoch, other columns empty."""
    with path.open("w", newline="") as f:
        writer = csv.DictWriter(f, COLUMNS)
        writer.writeheader()
        for row in rows:
            writer.writerow({k: row.get(k, "") for k in COLUMNS})


def epoch_rows(epoch: int, raw: float, averaged: float | None, loss: float) -> list[dict]:
    val = {"epoch": epoch, "step": 10 * epoch, "val/ba": raw, "val/loss": loss + 0.1}
    if averaged is not None:
        val |= {"val_avg/ba": averaged, "select/score": max(raw, averaged)}
    return [val, {"epoch": epoch, "step": 10 * epoch, "train/loss": loss}]


@pytest.fixture
def run(tmp_path) -> Path:
    """Fold a: finished, resumed once (epochs 0-1 in metrics.earlier.csv); fold b: training, no averaging."""
    raw, averaged = [0.6, 0.7, 0.8, 0.75], [0.5, 0.65, 0.78, 0.79]
    a = tmp_path / "run" / "val-a"
    a.mkdir(parents=True)
    rows = [r for e in range(4) for r in epoch_rows(e, raw[e], averaged[e], 1.0 - 0.1 * e)]
    write_log(a / curves.EARLIER_METRICS, rows[:4])
    write_log(a / curves.METRICS_FILE, rows[4:])
    (a / curves.CONFIG_FILE).write_text(json.dumps({"selected_epoch": 2, "selected_weights": "raw",
                                                    "selected_score": 0.8}))
    b = tmp_path / "run" / "val-b"
    b.mkdir()
    write_log(b / curves.METRICS_FILE, [r for e in range(2) for r in epoch_rows(e, 0.55 + 0.1 * e, None, 0.9)])
    return tmp_path / "run"


def test_the_resumed_parts_join_and_training_rows_fill_the_validation_epochs(run):
    a, b = curves.read_run(run)
    assert a.name == "val-a" and list(a.epochs) == [0, 1, 2, 3]
    np.testing.assert_allclose(a.series["val/ba"], [0.6, 0.7, 0.8, 0.75])
    np.testing.assert_allclose(a.series["train/loss"], [1.0, 0.9, 0.8, 0.7])
    assert a.best("val/ba") == (2, 0.8) and a.best("val_avg/ba") == (3, 0.79)
    assert a.tail_mean("val/ba", 2) == pytest.approx(0.775)
    assert b.best("val_avg/ba") is None and b.config is None and list(b.epochs) == [0, 1]


def test_the_table_gives_best_and_selected_per_fold_and_the_mean_of_the_finished(run):
    lines = curves.table(curves.read_run(run)).splitlines()
    assert lines[2] == ("| val-a | 4 | 0.8000 (epoch 2) | 0.7900 (epoch 3) | 0.7125 / 0.6800 "
                        "| **0.8000** (epoch 2, raw) |")
    assert lines[3] == "| val-b | 2 | 0.6500 (epoch 1) | - | 0.6000 / - | training |"
    assert lines[4] == "| mean selected (1 of 2 folds) | | | | | **0.8000** |"


def test_a_fold_selected_on_the_loss_reports_the_balanced_accuracy_of_its_selected_epoch(run):
    (run / "val-b" / curves.CONFIG_FILE).write_text(json.dumps({"selected_epoch": 0, "selected_weights": "raw",
                                                               "selected_on": "val/loss", "selected_score": 1.0}))
    b = curves.read_run(run)[1]
    assert b.selected() == (0, "raw", pytest.approx(0.55))
    assert curves.table([b]).splitlines()[-1] == "| mean selected (1 fold) | | | | | **0.5500** |"


def test_amf_curves_draws_one_column_per_fold_and_prints_the_table(run, capsys):
    assert amf(["curves", str(run)]) == 0
    printed = capsys.readouterr().out
    assert "| val-a | 4 |" in printed and f"wrote {run / curves.CURVES_FILE}" in printed
    width, height = Image.open(run / curves.CURVES_FILE).size
    assert (width, height) == (round(4.2 * 2 * 110), round(6.4 * 110))
    # a fold folder alone
    assert amf(["curves", str(run / "val-b"), "--out", str(run / "b.png")]) == 0
    assert Image.open(run / "b.png").size[0] == round(4.2 * 110)


def test_a_folder_without_metrics_is_one_line_and_exit_2(tmp_path, capsys):
    assert amf(["curves", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert err == f"amf curves: error: {tmp_path}: no metrics.csv in it or in its sub-folders (not a training run)\n"
