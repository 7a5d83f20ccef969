"""``amf train --jobs N``: folds trained side by side in processes of their own, the cores shared out as threads."""

from __future__ import annotations

import json

import pytest
from conftest import AMIBR_FIXTURE

from cli.main import main as amf
from training import data, side_by_side
from training.curves import CURVES_FILE
from training.side_by_side import threads_per_job

FOLDS = ("val-midog21-aperio-cs2", "val-tupac16")


def args(tmp_path, *extra: str) -> list[str]:
    return ["train", "--manifest", str(AMIBR_FIXTURE / "manifest.csv"), "--out", str(tmp_path / "run"),
            "--batch-size", "4", "--backbone", "resnetv2_18", "--epochs", "1", "--cache", str(tmp_path / "cache"),
            "--folds", "tupac16,midog21-aperio-cs2", "--device", "cpu", "--jobs", "2", *extra]


def test_two_folds_train_at_once_each_in_its_own_process_with_its_share_of_the_cores(tmp_path, capsys):
    assert amf(args(tmp_path)) == 0
    out = capsys.readouterr().out
    run = tmp_path / "run"
    threads = threads_per_job(2)
    for fold in FOLDS:
        assert f"[{fold}] started: a process of its own, {threads} thread" in out and f"[{fold}] finished" in out
        log = (run / f"{fold}.log").read_text()
        assert f"; {threads} CPU threads" in log  # the child's own torch thread count
        assert f"[{fold}] epoch 1/1 done in " in log and "\r" not in log  # progress as lines, no bar
        assert json.loads((run / fold / "config.json").read_text())["fold"]["val_domain"] in fold
    assert (run / CURVES_FILE).is_file()

    assert amf(args(tmp_path, "--resume")) == 0  # finished folds are skipped here, not in a child process
    out = capsys.readouterr().out
    assert all(f"[{fold}] finished earlier, skipped" in out for fold in FOLDS) and "started" not in out


def test_a_failing_fold_fails_the_command_and_names_its_log(tmp_path, capsys):
    (tmp_path / "nothing").mkdir()  # no fold's weights in it: the pre-flight stops the parent, no child starts
    assert amf(args(tmp_path, "--init", str(tmp_path / "nothing"))) == 2
    assert f"amf train: error: --init {tmp_path / 'nothing'}: neither" in capsys.readouterr().err
    assert not (tmp_path / "run").exists()
    # a precision whose package is not installed (Transformer Engine): the parent builds no trainer, so each child
    # fails as its fold starts
    assert amf(args(tmp_path, "--precision", "transformer-engine")) == 1
    out = capsys.readouterr().out
    for fold in FOLDS:
        log = tmp_path / "run" / f"{fold}.log"
        assert f"[{fold}] failed (exit 1): see {log}" in out
        assert "transformer" in log.read_text().lower()


def test_side_by_side_on_a_gpu_is_refused_before_any_image_is_read(tmp_path, capsys, monkeypatch):
    monkeypatch.setattr(data, "_load_patches", lambda *args: pytest.fail("images read"))
    assert amf(["train", "--manifest", str(AMIBR_FIXTURE / "manifest.csv"), "--out", str(tmp_path / "run"),
                "--device", "cuda", "--jobs", "2"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("amf train: error: --jobs: on a GPU the folds train one after another") and \
        err.count("\n") == 1
    assert not (tmp_path / "run").exists()


def test_more_jobs_than_cores_are_named_in_a_note(monkeypatch, tmp_path, capsys):
    monkeypatch.setattr(side_by_side.os, "sched_getaffinity", lambda pid: {0, 1})
    assert side_by_side.train_side_by_side([], tmp_path, [], 3) == 0
    assert capsys.readouterr().out.startswith("note: --jobs 3 on 2 CPUs: more fold processes than cores")
    assert side_by_side.train_side_by_side([], tmp_path, [], 2) == 0
    assert "note" not in capsys.readouterr().out
