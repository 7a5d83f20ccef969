"""The overlap guard (training/overlap.py, training/guard.py) on test/fixtures/multi: the planted duplicates
found by each kind and nothing else, amf train's refusal, --drop-overlap, --allow-overlap, the LODO fold check,
a few steps of training on several datasets, and amf evaluate's warning."""

from __future__ import annotations

import json
from pathlib import Path

import lightning
import numpy as np
import pytest
from conftest import MULTI_FIXTURE, OTHER_COLUMNS

from cli import main as cli
from runtime.errors import InputError
from training import overlap
from training.data import DataSource, load, load_every_row
from training.folds import lodo_folds
from training.guard import evaluation_warning, guard
from training.run_files import TRAINING_PRINTS, TRAINING_ROWS

AMIBR, MIDOG25, OTHER = (MULTI_FIXTURE / "amibr.csv", MULTI_FIXTURE / "midog25" / "midog25.csv",
                         MULTI_FIXTURE / "other" / "other.csv")
SOURCES = [DataSource(AMIBR), DataSource(MIDOG25, "midog25", name="midog25"),
           DataSource(OTHER, "csv", name="other", columns=OTHER_COLUMNS)]
DATA_OPTIONS = ["--manifest", str(AMIBR), "--manifest", str(MIDOG25), "--manifest", str(OTHER), "--format", "amibr",
                "--format", "midog25", "--format", "csv", "--columns", OTHER_COLUMNS]
# make_multi_fixture.py's plants: (dataset, file) pairs
SLIDE_POSITION = {("amibr-test/MIDOG21_114.png", "midog25/1.png"), ("amibr-test/MIDOG21_2424.png", "midog25/2.png"),
                  ("amibr/patches/atypical/MIDOG21_4178.png", "midog25/3.png")}
PIXELS = {("amibr-test/TUPAC16_1298.png", "other/o1.jpg"), ("amibr-test/TUPAC16_5828.png", "other/o2.jpg")}
HELD_OUT_COPIES = {"midog25/1.png", "midog25/2.png", "other/o1.jpg", "other/o2.jpg"}  # of AMi-Br test figures


def short(path: str) -> str:
    """A fixture path from test/fixtures/multi/ on (``../amibr/...`` as ``amibr/...``)."""
    return Path(path).as_posix().split("/multi/", 1)[1].removeprefix("../")


@pytest.fixture(scope="module")
def every_row():
    """Every row of the three datasets, and which of them --split train keeps."""
    return load_every_row(SOURCES, "train")


def test_every_planted_duplicate_is_found_by_its_kind_and_nothing_else(every_row):
    everything, _ = every_row
    found = {(short(everything.paths[m.i]), short(everything.paths[m.j]), m.kind)
             for m in overlap.find_overlaps(everything)}
    assert found == {(a, b, overlap.SLIDE_POSITION) for a, b in SLIDE_POSITION} | \
        {(a, b, overlap.PIXELS) for a, b in PIXELS}


def test_no_false_pixel_match_within_amibr(every_row):
    everything, _ = every_row
    amibr = everything.images[everything.datasets == "amibr"]
    prints = overlap.fingerprints(amibr)  # 20 distinct AMi-Br figures: only each with itself
    pairs = overlap.pixel_matches(prints, prints)
    assert sorted(map(tuple, pairs.tolist())) == [(i, i) for i in range(len(prints))]


def test_a_held_out_figure_that_comes_back_is_refused_in_one_line(tmp_path, capsys, monkeypatch):
    monkeypatch.setattr(lightning.Trainer, "fit", lambda *a, **k: pytest.fail("trained"))
    code = cli.main(["train", *DATA_OPTIONS, "--split", "train", "--out", str(tmp_path / "run")])
    err = capsys.readouterr().err
    assert code == 2 and err.count("\n") == 1 and err.startswith("amf train: error: 4 training row(s) show a "
                                                                  "figure that --split holds out"), err
    assert "--drop-overlap" in err and "--allow-overlap" in err and "MIDOG21_114.png" in err


def test_drop_overlap_drops_exactly_the_copies_and_the_folds_keep_out_shared_figures(every_row, capsys):
    everything, chosen = every_row
    data = everything.subset(np.flatnonzero(chosen))
    folds = lodo_folds(data.domains)
    guarded = guard(everything, chosen, folds, drop=True, allow=False)
    gone = {short(p) for p in data.paths} - {short(p) for p in guarded.data.paths}
    assert gone == HELD_OUT_COPIES and guarded.dropped == 4
    shared = {fold: {short(guarded.data.paths[i]) for i in rows} for fold, rows in guarded.exclude.items()}
    assert shared == {"val-amibr:midog21-aperio-cs2": {"midog25/3.png"},
                      "val-midog25:human breast cancer": {"amibr/patches/atypical/MIDOG21_4178.png"}}
    assert "--drop-overlap: dropped 4 training row(s)" in capsys.readouterr().out


def test_a_fold_whose_held_out_domain_shares_figures_with_its_training_is_refused(every_row):
    everything, _ = every_row
    folds = lodo_folds(everything.domains)
    with pytest.raises(InputError, match=r"of fold val-amibr:midog21-aperio-cs2's held-out part"):
        guard(everything, np.ones(len(everything), bool), folds, drop=False, allow=False)
    assert len(guard(everything, np.ones(len(everything), bool), folds, drop=False, allow=True).data) == 32


@pytest.fixture(scope="module")
def run(tmp_path_factory) -> Path:
    """A few steps of amf train on the three datasets, the overlap allowed, one fold: 24 training rows in
    batches of 12, then validation."""
    out = tmp_path_factory.mktemp("multi") / "run"
    assert cli.main(["train", *DATA_OPTIONS, "--split", "train", "--allow-overlap", "--out", str(out),
                     "--backbone", "resnetv2_18", "--batch-size", "12", "--epochs", "1", "--max-steps", "2",
                     "--limit-val-batches", "1", "--folds", "val-amibr:tupac16", "--cache",
                     str(out.parent / "cache")]) == 0
    return out


def test_training_on_several_datasets_uses_dataset_domains_and_records_its_rows(run, capsys):
    config = json.loads((run / "val-amibr:tupac16" / "config.json").read_text())
    assert config["allow_overlap"] is True and config["fold"]["val_domain"] == "amibr:tupac16"
    assert {"midog25:human breast cancer", "other:human breast (other)"} <= set(config["fold"]["train_domains"])
    rows = (run / TRAINING_ROWS).read_text().splitlines()
    assert rows[0] == "dataset,path,slide,x,y" and len(rows) == 1 + 28
    assert np.load(run / TRAINING_PRINTS).shape == (28, 40, 40)
    assert cli.main(["curves", str(run)]) == 0
    assert "val-amibr:tupac16" in capsys.readouterr().out and (run / "curves.png").is_file()
    assert json.loads((run / "val-amibr:tupac16" / "config.json").read_text())["selected_score"] is not None


def test_evaluate_warns_when_evaluation_rows_show_figures_the_run_trained_on(run, tmp_path):
    held_out = load([DataSource(AMIBR)], "test")
    warning = evaluation_warning([run], held_out)
    assert warning.startswith("warning: 4 of 4 evaluation rows") and "2 slide-position, 2 pixels" in warning
    assert evaluation_warning([run], load([DataSource(MIDOG25, "midog25", name="x")])) \
        .startswith("warning: 8 of 8")  # another name for midog25's rows: the same figures, by slide and pixels
    out = tmp_path / "report"
    assert cli.main(["evaluate", str(run), "--manifest", str(AMIBR), "--split", "test", "--out", str(out),
                     "--bootstrap", "0"]) == 0
    assert json.loads((out / "report.json").read_text())["warning"] == warning
    assert warning in (out / "report.md").read_text()
    both = tmp_path / "both"  # two datasets: their domains in the report
    assert cli.main(["evaluate", str(run), "--manifest", str(AMIBR), "--manifest", str(MIDOG25), "--format", "amibr",
                     "--format", "midog25", "--split", "test", "--out", str(both), "--bootstrap", "0"]) == 0
    columns = set(next(iter(json.loads((both / "report.json").read_text())["models"].values())))
    assert {"amibr:tupac16", "midog25:human breast cancer", "midog25:canine lymphoma"} <= columns


def test_amf_data_prints_the_table_and_writes_every_duplicate(tmp_path, capsys):
    assert cli.main(["data", *DATA_OPTIONS, "--split", "train", "--out", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    assert "figures in two datasets: 5 pair(s) (3 slide-position, 2 pixels)" in out
    assert "midog25: 3 of 8 patches cropped or padded" in out and "amibr    all" in out
    doc = json.loads((tmp_path / "data.json").read_text())
    found = {(short(d["a"]["path"]), short(d["b"]["path"]), d["match"]) for d in doc["duplicates"]}
    assert found == {(a, b, overlap.SLIDE_POSITION) for a, b in SLIDE_POSITION} | \
        {(a, b, overlap.PIXELS) for a, b in PIXELS}
    assert {d["a"]["dataset"] for d in doc["duplicates"]} == {"amibr"}
    table = {(r["dataset"], r["domain"]): r for r in doc["datasets"]}
    assert table["midog25", "all"] == {"dataset": "midog25", "domain": "all", "rows": 8, "atypical": 3, "slides": 8,
                                       "votes known": 8, "resized": 3}
    assert table["other", "all"]["slides"] is None and table["amibr", "all"]["rows"] == 16
