"""Several ``amf train`` processes in one run folder (training/run_lock.py; SLURM arrays, docs/cluster.md): one fold
per process with ``--fold-index``, run-level files written once and whole, a second writer into a fold being
trained, or with other options, refused with one line; and a fold stopped by a signal in the middle of an epoch
(training/cluster.py) that resumes to the same weights and metrics as one trained straight through
(training/resume.py)."""

from __future__ import annotations

import csv
import json
import multiprocessing
import os
import signal
import subprocess
import sys
from dataclasses import replace

import pytest
import torch
from conftest import AMIBR_FIXTURE, ROOT
from safetensors.torch import load_file

from cli.main import main as amf
from runtime.errors import OutputError
from training import train
from training.augment import AugmentConfig
from training.data import DataSource, load
from training.folds import make_folds
from training.masks import generate_masks
from training.network import NetworkConfig
from training.recipe import Recipe
from training.run_files import METRICS_FILE, WEIGHTS_FILE
from training.run_lock import write_once

FOLDS = "val-midog21-aperio-cs2,tupac16"  # two of the fixture's four LODO folds (a fold name, a domain)
NAMES = ("val-midog21-aperio-cs2", "val-tupac16")


def train_args(out, *extra: str) -> list[str]:
    return ["train", "--manifest", str(AMIBR_FIXTURE / "manifest.csv"), "--split", "train", "--out", str(out),
            "--epochs", "1", "--batch-size", "4", "--backbone", "resnetv2_18", "--max-steps", "2", "--seed", "3",
            "--folds", FOLDS, *extra]


def amf_process(args: list[str], cache) -> subprocess.Popen:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONWARNINGS": "ignore"}
    return subprocess.Popen([sys.executable, "-m", "cli.main", *args, "--cache", str(cache)], cwd=ROOT, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


def test_two_fold_tasks_started_at_once_make_one_consistent_run_and_a_later_run_trains_nothing(tmp_path, capsys):
    out, cache = tmp_path / "run", tmp_path / "cache"
    tasks = [amf_process(train_args(out, "--fold-index", str(i), "--resume"), cache) for i in (0, 1)]
    logs = [t.communicate(timeout=600)[0] for t in tasks]
    assert [t.returncode for t in tasks] == [0, 0], "\n".join(log[-3000:] for log in logs)
    for name, log in zip(NAMES, logs):  # each task trained its own fold only
        assert f"[{name}] selected epoch" in log and all(f"[{n}]" not in log for n in NAMES if n != name), log
        assert (out / name / WEIGHTS_FILE).is_file()
        assert {r["epoch"] for r in csv.DictReader((out / name / METRICS_FILE).open())} == {"0"}
    recipe = json.loads((out / "recipe.json").read_text())
    assert recipe["seed"] == 3 and recipe["network"]["backbone"] == "resnetv2_18"
    assert not list(out.rglob("*.partial")) and not list(out.rglob(".lock.holder"))
    assert {json.loads((out / n / "config.json").read_text())["recipe"]["seed"] for n in NAMES} == {3}

    # the same options afterwards, without --fold-index: every fold is finished, nothing trains or changes
    stamps = {p: p.stat().st_mtime_ns for p in out.rglob("*") if p.is_file()}
    assert amf(train_args(out, "--resume", "--cache", str(cache))) == 0
    printed = capsys.readouterr().out
    assert all(f"[{n}] finished earlier, skipped" in printed for n in NAMES), printed
    assert {p: p.stat().st_mtime_ns for p in out.rglob("*") if p.is_file() and p.name != "curves.png"} == {
        p: t for p, t in stamps.items() if p.name != "curves.png"}


def test_a_second_writer_into_a_fold_being_trained_or_with_other_options_is_refused(tmp_path, capsys):
    out, cache = tmp_path / "run", tmp_path / "cache"
    assert amf(train_args(out, "--fold-index", "1", "--cache", str(cache))) == 0
    before = {p: p.read_bytes() for p in out.rglob("*") if p.is_file()}
    capsys.readouterr()

    # another process holds fold 0, as a running amf train does
    holder = subprocess.Popen([sys.executable, "-c", "import sys, time; from pathlib import Path; "
                               "from training.run_lock import claim_folds\n"
                               f"with claim_folds(Path({str(out)!r}), [{NAMES[0]!r}]):\n"
                               "    print('held', flush=True); time.sleep(600)"],
                              cwd=ROOT, stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "held"
        assert amf(train_args(out, "--fold-index", "0", "--cache", str(cache))) == 3
        err = capsys.readouterr().err
        assert err.startswith(f"amf train: error: --out {out / NAMES[0]}: being trained by another amf train (pid "
                              f"{holder.pid} on ") and err.count("\n") == 1, err
    finally:
        holder.kill()
        holder.wait()
    # other options (here the seed) into the same run: refused before anything is written
    assert amf(train_args(out, "--fold-index", "0", "--seed", "4", "--cache", str(cache))) == 3
    err = capsys.readouterr().err
    assert err.startswith(f"amf train: error: --out {out}: holds a run with another recipe.json") and err.count(
        "\n") == 1, err
    locks = (".lock", ".lock.holder", ".run-files.lock")  # the holder's, and its note of who it is
    after = {p: p.read_bytes() for p in out.rglob("*") if p.is_file() and p.name not in locks}
    assert after == {p: b for p, b in before.items() if p.name not in locks}
    # the holder is gone (killed: the kernel released its lock): the fold trains
    assert amf(train_args(out, "--fold-index", "0", "--cache", str(cache))) == 0
    assert (out / NAMES[0] / WEIGHTS_FILE).is_file()


def _write(path, content: bytes, start, results) -> None:
    start.wait()
    try:
        write_once(path, content)
        results.put((content, "written"))
    except OutputError as exc:
        results.put((content, str(exc)))


def test_writers_that_start_together_leave_one_whole_file_and_refuse_other_content(tmp_path):
    """8 processes released at once, half with one content and half with another (1 MB each, so that a file
    written in place would be seen half-written): one content wins whole, its writers all succeed, the others are
    refused."""
    path = tmp_path / "run" / "recipe.json"
    contents = [bytes([65]) * 2**20, bytes([66]) * 2**20]
    context = multiprocessing.get_context("fork")
    start, results = context.Barrier(8), context.Queue()
    writers = [context.Process(target=_write, args=(path, contents[i % 2], start, results)) for i in range(8)]
    for w in writers:
        w.start()
    outcomes = [results.get(timeout=60) for _ in writers]
    for w in writers:
        w.join(timeout=60)
    winner = path.read_bytes()
    assert winner in contents
    assert sorted(outcome for content, outcome in outcomes if content == winner) == ["written"] * 4
    assert all(outcome.startswith(f"--out {path.parent}: holds a run with another recipe.json")
               for content, outcome in outcomes if content != winner)
    assert sorted(p.name for p in path.parent.iterdir()) == [".run-files.lock", "recipe.json"]


def test_a_fold_index_past_the_last_fold_is_one_line_and_exit_2(tmp_path, capsys):
    assert amf(train_args(tmp_path / "run", "--fold-index", "2")) == 2
    err = capsys.readouterr().err
    assert err == (f"amf train: error: --fold-index 2: this run has 2 fold(s): 0 {NAMES[0]}, 1 {NAMES[1]}\n")
    assert not (tmp_path / "run").exists()


def test_fold_index_and_jobs_together_are_refused(tmp_path, capsys):
    assert amf(train_args(tmp_path / "run", "--fold-index", "0", "--jobs", "2")) == 2
    assert capsys.readouterr().err.startswith("amf train: error: --jobs: trains several folds side by side")


def test_several_nodes_outside_srun_or_torchrun_are_refused(tmp_path, capsys, monkeypatch):
    for name in ("SLURM_JOB_ID", "WORLD_SIZE"):
        monkeypatch.delenv(name, raising=False)
    assert amf(train_args(tmp_path / "run", "--num-nodes", "2")) == 2
    assert capsys.readouterr().err.startswith("amf train: error: --num-nodes 2: nodes join one model when srun")


SMALL = NetworkConfig(backbone="resnetv2_18", head_hidden=(32, 16), decoder_channels=(32, 16, 8))


@pytest.mark.parametrize(("setting", "step"), [
    ({}, 4),  # the default: shuffled batches, augmentation on; stopped inside epoch 2 (3 steps an epoch)
    ({"sampling": "domain-aware", "weight_averaging": "ema"}, 2),  # the sampler's losses, the average; stopped at
])  # the last step of epoch 1, so after its validation
def test_a_fold_stopped_by_a_signal_resumes_to_the_same_weights_and_metrics(tmp_path, monkeypatch, setting, step,
                                                                          capsys):
    data = load([DataSource(AMIBR_FIXTURE / "manifest.csv")])
    masks = generate_masks(data.images)
    recipe = replace(Recipe(epochs=3, batch_size=4, lr=1e-3, seed=5, network=SMALL, augment=AugmentConfig()),
                     **setting)
    fold = next(f for f in make_folds("lodo", data.domains, data.labels, data.slides) if f.val_domain == "tupac16")
    options = train.RunOptions(accelerator="cpu", devices=1, precision="32-true")
    straight = train.train_fold(fold, data, masks, recipe, tmp_path / "straight", options)

    training_step = train.MitosisTask.training_step

    def signalled(self, batch, batch_idx):  # SIGTERM (as scontrol requeue sends it) during that step
        if self.global_step == step:
            os.kill(os.getpid(), signal.SIGTERM)
        return training_step(self, batch, batch_idx)

    monkeypatch.setattr(train.MitosisTask, "training_step", signalled)
    with pytest.raises(SystemExit) as stop:
        train.train_fold(fold, data, masks, recipe, tmp_path / "stopped", options)
    assert stop.value.code == 128 + signal.SIGTERM
    assert ("SIGTERM: saved" if step == 4 else "SIGTERM: stopped after epoch 1") in capsys.readouterr().out
    monkeypatch.setattr(train.MitosisTask, "training_step", training_step)
    resumed = train.train_fold(fold, data, masks, recipe, tmp_path / "stopped", replace(options, resume=True))

    a, b = load_file(straight / WEIGHTS_FILE), load_file(resumed / WEIGHTS_FILE)
    assert all(torch.equal(a[k], b[k]) for k in a)
    rows = [[{k: v for k, v in r.items() if not k.startswith("perf/")} for r in csv.DictReader(f.open())]
            for f in (straight / METRICS_FILE, resumed / METRICS_FILE)]
    assert rows[0] == rows[1] and len(rows[0]) == 6  # 3 epochs: a training row and a validation row each
    assert (json.loads((straight / "config.json").read_text())["selected_score"]
            == json.loads((resumed / "config.json").read_text())["selected_score"])
