"""Runs that cannot start, resumes that cannot continue, exports that would leave a fold out: each is one line and
its exit code before anything is written or moved (training/preflight.py, cli/checks.py); fold folder names are
safe for file systems, and earlier runs' folders still read (training/run_files.py)."""

from __future__ import annotations

import shutil
import zipfile
from pathlib import Path

import lightning
import pytest
import torch
from conftest import AMIBR_FIXTURE

from cli import checks
from cli.main import main as amf
from runtime.errors import EXIT_INPUT, EXIT_MODEL
from training import run_files

MANIFEST = str(AMIBR_FIXTURE / "manifest.csv")
TRAIN = ["train", "--manifest", MANIFEST, "--split", "train", "--backbone", "resnetv2_18"]
FOLD = "val-tupac16"  # one of the fixture's four LODO folds: 12 training rows, 4 validation rows


def listing(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() if p.is_file() else b"" for p in sorted(folder.rglob("*"))}


@pytest.fixture
def no_training(monkeypatch):
    monkeypatch.setattr(lightning.Trainer, "fit", lambda *a, **k: pytest.fail("training started"))


def test_fewer_training_rows_than_a_batch_is_one_line_before_anything_is_written(tmp_path, capsys, no_training):
    out = tmp_path / "run"
    assert amf([*TRAIN, "--out", str(out), "--cache", str(tmp_path / "cache")]) == EXIT_INPUT
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("amf train: error: fold val-"), err
    assert "12 training rows, fewer than one batch of 24" in err and "--batch-size 12" in err
    assert not out.exists() and not (tmp_path / "cache").exists()
    out.mkdir()  # an existing --out is left as it was
    (out / "notes.txt").write_text("mine")
    before = listing(out)
    assert amf([*TRAIN, "--out", str(out), "--batch-size", "13", "--cache", str(tmp_path / "cache")]) == EXIT_INPUT
    assert listing(out) == before


def test_a_missing_init_fold_is_refused_before_anything_is_written(tmp_path, capsys, no_training):
    (tmp_path / "earlier" / "val-other").mkdir(parents=True)
    out = tmp_path / "run"
    assert amf([*TRAIN, "--out", str(out), "--batch-size", "4", "--init", str(tmp_path / "earlier")]) == EXIT_INPUT
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "--init" in err and not out.exists()


def broken_checkpoints(folder: Path) -> dict[str, Path]:
    """A truncated last.ckpt and one with a flipped byte inside a member (the zip's directory still whole)."""
    whole = folder / "whole.ckpt"
    torch.save({"state_dict": {"w": torch.arange(4096.0)}, "epoch": 0}, whole)
    data = whole.read_bytes()
    truncated = folder / "truncated.ckpt"
    truncated.write_bytes(data[: len(data) // 2])
    flipped = bytearray(data)
    with zipfile.ZipFile(whole) as archive:
        member = max(archive.infolist(), key=lambda m: m.file_size)
        flipped[member.header_offset + 30 + len(member.filename) + len(member.extra) + 100] ^= 0xFF
    (folder / "flipped.ckpt").write_bytes(bytes(flipped))
    return {"truncated": truncated, "flipped": folder / "flipped.ckpt"}


@pytest.mark.parametrize("kind", ["truncated", "flipped"])
def test_resume_from_a_corrupt_checkpoint_is_exit_4_and_touches_nothing(kind, tmp_path, capsys, no_training):
    out = tmp_path / "run"
    fold = out / FOLD
    (fold / "ckpt").mkdir(parents=True)
    shutil.copy(broken_checkpoints(tmp_path)[kind], fold / "ckpt" / "last.ckpt")
    (fold / "metrics.csv").write_text("epoch,step,val/ba\n0,3,0.5\n")
    before = listing(out)
    assert amf([*TRAIN, "--out", str(out), "--batch-size", "4", "--folds", FOLD, "--resume",
                "--cache", str(tmp_path / "cache")]) == EXIT_MODEL
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith(f"amf train: error: {fold / 'ckpt' / 'last.ckpt'}: corrupt or "
                                                   "truncated checkpoint"), err
    assert listing(out) == before  # metrics.csv not renamed, nothing added


def fake_fold(folder: Path, finished: bool) -> Path:
    (folder / "ckpt").mkdir(parents=True)
    (folder / "metrics.csv").write_text("epoch\n0\n")
    (folder / "config.json").write_text("{}")
    if finished:
        (folder / "model.safetensors").write_bytes(b"weights")
    return folder


def test_export_refuses_a_fold_without_its_model_unless_finished_only(tmp_path, capsys):
    run = tmp_path / "run"
    fake_fold(run / "val-a", finished=True)
    lost = fake_fold(run / "val-b", finished=False)
    assert amf(["export", str(run), "--manifest", MANIFEST, "--out", str(tmp_path / "weights")]) == EXIT_MODEL
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and str(lost) in err and "--finished-only" in err, err
    assert not (tmp_path / "weights").exists()
    assert run_files.unfinished_folds(run) == [lost] and run_files.unfinished_folds(run / "val-a") == []
    checks.finished([run], finished_only=True)  # the finished folds go on; the others are named
    assert capsys.readouterr().out == f"--finished-only: 1 fold(s) left out, without their model: {lost}\n"


def test_fold_folders_have_safe_names_and_earlier_runs_still_read(tmp_path):
    assert run_files.safe_name("val-amibr:tupac16") == "val-amibr_tupac16"
    assert run_files.safe_name("val-a:b_test-c:d") == "val-a_b_test-c_d"
    assert run_files.safe_name("val-MIDOG21") == "val-MIDOG21"
    assert run_files.fold_folder(tmp_path, "val-amibr:tupac16") == tmp_path / "val-amibr_tupac16"
    earlier = tmp_path / "val-amibr:tupac16"  # a run folder written before the names were made safe
    earlier.mkdir()
    (earlier / "model.safetensors").write_bytes(b"weights")
    assert run_files.fold_folder(tmp_path, "val-amibr:tupac16") == earlier
    assert run_files.fold_weights(tmp_path, "val-amibr:tupac16") == earlier / "model.safetensors"


def test_init_weights_that_do_not_fit_the_network_are_refused_before_anything_is_written(tmp_path, capsys,
                                                                                           no_training):
    from safetensors.torch import save_file

    save_file({"encoder.stem.conv.weight": torch.zeros(3, 3)}, tmp_path / "other.safetensors")
    out = tmp_path / "run"
    assert amf([*TRAIN, "--out", str(out), "--batch-size", "4", "--init", str(tmp_path / "other.safetensors"),
                "--cache", str(tmp_path / "cache")]) == EXIT_INPUT
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("amf train: error: --init ") and "other.safetensors" in err, err
    assert not out.exists()
