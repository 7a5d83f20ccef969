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
from training.guard import evaluation_warning, guard, record_training_rows
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
    assert sorted(p.name for p in run.iterdir() if p.is_dir()) == ["val-amibr_tupac16"]  # no colon in a folder name
    config = json.loads((run / "val-amibr_tupac16" / "config.json").read_text())
    assert config["allow_overlap"] is True and config["fold"]["val_domain"] == "amibr:tupac16"
    assert {"midog25:human breast cancer", "other:human breast (other)"} <= set(config["fold"]["train_domains"])
    rows = (run / TRAINING_ROWS).read_text().splitlines()
    assert rows[0] == "dataset,path,slide,x,y" and len(rows) == 1 + 28
    assert np.load(run / TRAINING_PRINTS).shape == (28, 40, 40)
    assert cli.main(["curves", str(run)]) == 0
    assert "val-amibr_tupac16" in capsys.readouterr().out and (run / "curves.png").is_file()
    assert json.loads((run / "val-amibr_tupac16" / "config.json").read_text())["selected_score"] is not None


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
    assert "figures shown twice: 5 pair(s), 0 within a dataset (3 slide-position, 2 pixels); searched in " in out
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


# --- within one dataset (AMi-Br's own split and folds) ------------------------------------------------------------

HEADER = "file,label,domain,split,slide,source,uid,x,y,votes_atypical"


def one_dataset(tmp_path: Path, *extra: str) -> Path:
    """The multi fixture's AMi-Br manifest (16 train, 4 test rows) with absolute paths and ``extra`` rows."""
    rows = [line.split(",")[:10] for line in AMIBR.read_text().splitlines()[1:]]
    lines = [",".join([str((AMIBR.parent / r[0]).resolve()), *r[1:]]) for r in rows]
    manifest = tmp_path / "amibr.csv"
    manifest.write_text("\n".join([HEADER, *lines, *extra]) + "\n")
    return manifest


def copy_of(name: str, tmp_path: Path) -> str:
    """A patch of the fixture saved again under another name, re-encoded as JPEG (the pixels nearly the same)."""
    from PIL import Image

    source = next(MULTI_FIXTURE.parent.rglob(name))
    target = tmp_path / f"copy-of-{Path(name).stem}.jpg"
    Image.open(source).convert("RGB").save(target, quality=90)
    return str(target)


def test_a_test_patch_copied_into_its_own_datasets_training_rows_is_caught(tmp_path, capsys, monkeypatch):
    monkeypatch.setattr(lightning.Trainer, "fit", lambda *a, **k: pytest.fail("trained"))
    manifest = one_dataset(tmp_path, f"{copy_of('TUPAC16_1298.png', tmp_path)},normal,tupac16,train,x.tif,T,1,1,1,0",
                           # another figure given the position of a test figure on its slide (within 8 px)
                           f"{MULTI_FIXTURE / 'midog25' / '5.png'},normal,tupac16,train,72.tif,T,2,2255,5603,0")
    assert cli.main(["data", "--manifest", str(manifest), "--split", "train"]) == 0
    out = capsys.readouterr().out
    assert "figures shown twice: 2 pair(s), 2 within a dataset (1 slide-position, 1 pixels)" in out, out
    options = ["train", "--manifest", str(manifest), "--split", "train", "--batch-size", "4", "--backbone",
               "resnetv2_18", "--cache", str(tmp_path / "cache"), "--out", str(tmp_path / "run")]
    assert cli.main(options) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "2 training row(s) show a figure that --split holds out" in err, err
    assert "copy-of-TUPAC16_1298.jpg" in err and not (tmp_path / "run").exists()
    everything, chosen = load_every_row([DataSource(manifest)], "train")
    data = everything.subset(np.flatnonzero(chosen))
    guarded = guard(everything, chosen, lodo_folds(data.domains), drop=True, allow=False)
    assert guarded.dropped == 2 and len(guarded.data) == 16
    assert "--drop-overlap: dropped 2 training row(s)" in capsys.readouterr().out
    # the run's record makes amf evaluate of the test split warn, within the dataset too
    record_training_rows(tmp_path, data)
    held_out = load([DataSource(manifest)], "test")
    warning = evaluation_warning([tmp_path], held_out)
    assert warning.startswith("warning: 2 of 4 evaluation rows") and "1 slide-position, 1 pixels" in warning


def test_a_lodo_folds_validation_domain_copied_into_a_training_domain_of_the_same_dataset_is_refused(tmp_path):
    copy = copy_of("TUPAC16_1096.png", tmp_path)
    manifest = one_dataset(tmp_path, f"{copy},atypical,midog21-hamamatsu-xr,train,y.tiff,M,3,5,5,2")
    everything, chosen = load_every_row([DataSource(manifest)], "train")
    data = everything.subset(np.flatnonzero(chosen))
    folds = lodo_folds(data.domains)
    with pytest.raises(InputError, match=r"1 training row\(s\) show a figure of fold val-midog21-hamamatsu-xr's "
                                         r"held-out part|of fold val-tupac16's held-out part"):
        guard(everything, chosen, folds, drop=False, allow=False)
    guarded = guard(everything, chosen, folds, drop=True, allow=False)
    assert {fold: [Path(guarded.data.paths[i]).name for i in rows] for fold, rows in guarded.exclude.items()} == {
        "val-midog21-hamamatsu-xr": ["TUPAC16_1096.png"], "val-tupac16": ["copy-of-TUPAC16_1096.jpg"]}


def test_a_row_given_twice_is_dropped_with_a_count_and_a_conflicting_one_refused(tmp_path, capsys):
    first = AMIBR.read_text().splitlines()[1].split(",")[:10]
    first[0] = str((AMIBR.parent / first[0]).resolve())
    manifest = one_dataset(tmp_path, ",".join(first), ",".join(first))
    assert cli.main(["data", "--manifest", str(manifest)]) == 0
    out = capsys.readouterr().out
    assert "2 repeated row(s) dropped, each the same file and values as an earlier row (line 22 = line 2, line 23 = " \
           "line 2)" in out and "figures shown twice: 0 pair(s)" in out, out
    assert len(load([DataSource(manifest)])) == 20
    first[3] = "test"  # the same file in the test split too: a leak, refused
    manifest = one_dataset(tmp_path, ",".join(first))
    assert cli.main(["data", "--manifest", str(manifest)]) == 2
    assert "line 22: " in capsys.readouterr().err


def test_an_export_carries_its_runs_training_rows_so_evaluating_it_warns(every_row, tmp_path):
    from training.guard import carry_training_rows

    everything, chosen = every_row
    data = everything.subset(np.flatnonzero(chosen))
    runs = [tmp_path / "a", tmp_path / "b"]
    for run in runs:  # two runs of the same rows (members of one ensemble): each row once in the export
        (run / "val-x").mkdir(parents=True)
        record_training_rows(run, data)
    export = tmp_path / "weights"
    export.mkdir()
    assert carry_training_rows([runs[0] / "val-x", runs[1]], export) == len(data)
    assert np.load(export / TRAINING_PRINTS).shape == (len(data), 40, 40)
    assert evaluation_warning([export], data) == evaluation_warning([runs[0]], data) is not None
    assert carry_training_rows([tmp_path / "unrecorded"], export) == 0  # a stale record is not left behind
    assert not (export / TRAINING_ROWS).exists() and evaluation_warning([export], data) is None
