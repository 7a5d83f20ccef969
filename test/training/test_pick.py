"""training/pick.py: per fold, the model with the best validation BA at 0.5 is copied, ties keep the earlier run."""

from __future__ import annotations

import json

import pytest

from training.pick import pick_per_fold
from training.run_files import CONFIG_FILE, WEIGHTS_FILE


def test_each_folds_best_model_is_copied_and_a_tie_keeps_the_earlier_run(tmp_path):
    records = []
    for run, figures in (("r1", {"val-a": 0.7, "val-b": 0.6}), ("r2", {"val-a": 0.7, "val-b": 0.8})):
        for fold, ba in figures.items():
            folder = tmp_path / run / fold
            folder.mkdir(parents=True)
            (folder / WEIGHTS_FILE).write_text(f"{run} {fold}")
            (folder / CONFIG_FILE).write_text(json.dumps({"run": run}))
            records.append({"fold": fold, "model": str(folder), "source": str(tmp_path / run), "patches": 4,
                            "ba_at_0.5": ba})
    out = tmp_path / "picked"
    selection = pick_per_fold(records, out)
    assert selection["chosen"] == {"val-a": str(tmp_path / "r1" / "val-a"), "val-b": str(tmp_path / "r2" / "val-b")}
    assert selection["mean_ba_at_0.5"] == pytest.approx(0.75) and selection["candidates"] == records
    assert [(out / f / WEIGHTS_FILE).read_text() for f in ("val-a", "val-b")] == ["r1 val-a", "r2 val-b"]
    assert json.loads((out / "val-b" / CONFIG_FILE).read_text()) == {"run": "r2"}
    assert json.loads((out / "selection.json").read_text()) == selection
