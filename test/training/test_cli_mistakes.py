"""Everyday mistakes with every ``amf`` command: each ends in one ``amf COMMAND: error: ...`` line on stderr and a
non-zero exit (2 a bad argument or input, 3 an output that cannot be written, 4 an unusable model), never in a
traceback and never in exit 0, and before any training or export work starts.

To add a case: one row in CASES, ``(command line, exit code, words the line must hold)``. In a command line, M is
the 16-patch AMi-Br fixture's manifest, MA and MM test/fixtures/multi's AMi-Br (train and test rows) and
MIDOG 2025 manifests (figures planted in both), W an exported ensemble (the tiny test model), RUN a run folder with one
finished fold, EMPTY an empty folder, FILE a plain file, CORRUPT a run whose checkpoint is garbage, BADSPEC a folder
whose ensemble.json is garbage, and OUT a fresh path under the test's folder.
"""

from __future__ import annotations

import errno
import json
import shlex
import time
from pathlib import Path

import lightning
import pytest
from conftest import AMIBR_FIXTURE, MULTI_FIXTURE, make_tiny_ensemble

from cli import main as cli
from runtime.errors import EXIT_INPUT, EXIT_MODEL, EXIT_OUTPUT

CASES = [
    # the examples
    ("train --manifest M --split Train --out OUT", EXIT_INPUT, "--split 'Train': no row of", "train (16 rows)"),
    ("evaluate W --manifest M --split tset --out OUT", EXIT_INPUT, "--split 'tset'", "its splits: train"),
    ("export W --out OUT --manifest M --split trian", EXIT_INPUT, "--split 'trian'"),
    ("train --manifest M --out OUT --epochs 0", EXIT_INPUT, "argument --epochs: '0' is not a positive integer"),
    ("train --manifest M --out OUT --pretrained /missing.bin", EXIT_INPUT, "--pretrained /missing.bin: not found",
     "'hub'"),
    ("pick W --manifest M --split train --out OUT", EXIT_INPUT, "is an exported ensemble (ensemble.json), not a run",
     "a run folder of amf train"),
    ("train --manifest M --out OUT --folds nosuch", EXIT_INPUT, "--folds: no fold 'nosuch'", "val-tupac16"),
    # train
    ("train --manifest M --out OUT --folds tupac16,val-nosuch", EXIT_INPUT, "no fold 'val-nosuch'"),
    ("train --manifest M --out OUT --set epochs=0", EXIT_INPUT, "epochs 0: expected a positive whole number"),
    ("train --manifest M --out OUT --lr -1", EXIT_INPUT, "argument --lr: '-1' is not a positive number"),
    ("train --manifest M --out OUT --lr nan", EXIT_INPUT, "argument --lr: 'nan' is not a positive number"),
    ("train --manifest M --out OUT --set lr=0", EXIT_INPUT, "lr 0: expected a positive learning rate"),
    ("train --manifest M --out OUT --batch-size -4", EXIT_INPUT, "argument --batch-size: '-4' is not a positive"),
    ("train --manifest M --out OUT --set batch_size=0", EXIT_INPUT, "batch_size 0: expected a positive whole"),
    ("train --manifest M --out OUT --max-steps 0", EXIT_INPUT, "argument --max-steps"),
    ("train --manifest M --out OUT --limit-val-batches 0", EXIT_INPUT, "argument --limit-val-batches"),
    ("train --manifest M --out OUT --jobs 0", EXIT_INPUT, "argument --jobs"),
    ("train --manifest M --out FILE/run", EXIT_OUTPUT, "--out", "is a file, not a folder"),
    ("train --manifest M --out FILE", EXIT_OUTPUT, "a file is there, not a folder"),
    ("train --manifest M --out OUT --init /missing-run", EXIT_INPUT, "--init /missing-run: not found"),
    ("train --manifest M --out OUT --masks /missing-masks", EXIT_INPUT, "--masks /missing-masks: no such folder"),
    ("train --manifest /missing.csv --out OUT", EXIT_INPUT, "/missing.csv: manifest not found"),
    ("train --manifest M --root /missing-root --out OUT", EXIT_INPUT, "--root /missing-root: not a folder"),
    ("train --manifest M --format folders --out OUT", EXIT_INPUT, "not a folder (--format folders"),
    ("train --manifest M --format midog25 --split train --out OUT", EXIT_INPUT, "has no split column"),
    ("train --manifest M", EXIT_INPUT, "the following arguments are required: --out", "amf train --help"),
    ("train --manifest M --out OUT --set nosuch=1", EXIT_INPUT, "--set nosuch: no such field"),
    # evaluate
    ("evaluate EMPTY --manifest M --out OUT", EXIT_INPUT, "no fold checkpoints in it", "or an exported ensemble"),
    ("evaluate /missing-run --manifest M --out OUT", EXIT_INPUT, "/missing-run: no such folder"),
    ("evaluate W --manifest M --out OUT --bootstrap -5", EXIT_INPUT, "argument --bootstrap: '-5' is negative"),
    ("evaluate W --manifest M --out OUT --gallery -1", EXIT_INPUT, "argument --gallery"),
    ("evaluate W --manifest M --out OUT --batch-size 0", EXIT_INPUT, "argument --batch-size"),
    ("evaluate W --manifest M --out OUT --tta d8", EXIT_INPUT, "argument --tta: invalid choice: 'd8'"),
    ("evaluate W --manifest M --out FILE", EXIT_OUTPUT, "a file is there, not a folder"),
    ("evaluate CORRUPT --manifest M --out OUT", EXIT_MODEL, "unusable fold checkpoint"),
    ("evaluate BADSPEC --manifest M --out OUT", EXIT_MODEL, "ensemble.json: unusable ensemble spec"),
    # calibrate, pick
    ("calibrate RUN --manifest M --split tset", EXIT_INPUT, "--split 'tset'"),
    ("calibrate EMPTY --manifest M", EXIT_INPUT, "no fold checkpoints in it or its sub-folders"),
    ("pick W --manifest M --split train --out OUT", EXIT_INPUT, "is an exported ensemble (ensemble.json), not a run"),
    ("pick RUN --manifest M --split train --out FILE", EXIT_OUTPUT, "a file is there, not a folder"),
    # export
    ("export EMPTY --manifest M --out OUT", EXIT_INPUT, "no fold checkpoints in it", "or an exported ensemble"),
    ("export W W --manifest M --out OUT", EXIT_INPUT, "is given twice: each source once"),
    ("export W --manifest M --out OUT --calibration-patches 0", EXIT_INPUT, "argument --calibration-patches"),
    ("export W --manifest M --out FILE/weights", EXIT_OUTPUT, "is a file, not a folder"),
    # predict
    ("predict /missing.tif --out OUT", EXIT_INPUT, "/missing.tif: no such file or folder"),
    ("predict M --out OUT --batch-size 0", EXIT_INPUT, "argument --batch-size: '0' is not a positive integer"),
    ("predict M --out FILE/p.csv", EXIT_OUTPUT, "is a file, not a folder"),
    ("predict M --out EMPTY", EXIT_OUTPUT, "a folder is there; give a file name"),
    ("predict M --out OUT --weights EMPTY", EXIT_MODEL, "ensemble.json: unusable ensemble spec"),
    # masks, augment, curves
    ("masks --manifest M --split tarin --out OUT", EXIT_INPUT, "--split 'tarin'"),
    ("masks --manifest M --out OUT --per-class 3", EXIT_INPUT, "--per-class 3: some domain has only 2"),
    ("masks --manifest M --out EMPTY", EXIT_OUTPUT, "a folder is there"),
    ("augment --manifest M --split x --out OUT", EXIT_INPUT, "--split 'x'"),
    ("augment --manifest M --out OUT --views 0", EXIT_INPUT, "argument --views"),
    ("curves /missing-run", EXIT_INPUT, "/missing-run: no metrics.csv"),
    ("curves RUN --out FILE/c.png", EXIT_OUTPUT, "is a file, not a folder"),
    ("frobnicate", EXIT_INPUT, "invalid choice: 'frobnicate'"),
    # several datasets: the data options repeated, and the overlap guard
    ("data --manifest M --manifest M --format amibr --format amibr --format amibr", EXIT_INPUT,
     "--format given 3 time(s) for 2 --manifest", "belongs to the --manifest it follows"),
    ("train --name a --manifest M --manifest M --out OUT", EXIT_INPUT, "--name before the first --manifest"),
    ("data --manifest M --format amibr --columns path=a,label=b --manifest MM --format csv", EXIT_INPUT,
     "--columns given 1 time(s) for 1 --format csv dataset(s)"),
    ("data --manifest M --format csv", EXIT_INPUT, "--format csv", "--columns path=...,label=..."),
    ("data --manifest M --columns path=a,label=b", EXIT_INPUT, "--columns: names the columns of a --format csv"),
    ("evaluate W --manifest M --format csv --columns nope --out OUT", EXIT_INPUT, "--columns 'nope': expected KEY"),
    ("data --manifest M --split tset", EXIT_INPUT, "--split 'tset'"),
    ("data --manifest M --out FILE", EXIT_OUTPUT, "a file is there, not a folder"),
    ("data --manifest MM --format midog25 --domain-column Organ", EXIT_INPUT, "missing column(s) ['Organ']"),
    ("train --format midog25 --manifest MM --manifest MM --split train --out OUT", EXIT_INPUT,
     "none of the 2 datasets has a split column"),
    ("train --manifest MA --manifest MM --format amibr --format midog25 --split train --out OUT", EXIT_INPUT,
     "2 training row(s) show a figure that --split holds out", "--drop-overlap", "--allow-overlap"),
    ("train --manifest M --out OUT --drop-overlap --allow-overlap", EXIT_INPUT, "not allowed with argument"),
]

# Options that would do nothing with the others given, and bad values the parser alone cannot see: each is refused
# before any work (one line, exit 2; the no-op test below also times it and checks that no image was read).
NO_OPS = [
    ("train --manifest M --out OUT --jobs 2 --fold-index 0", EXIT_INPUT, "--jobs: trains several folds side by side",
     "--fold-index picks one"),
    ("train --manifest M --out OUT --num-nodes 2", EXIT_INPUT, "--num-nodes 2: nodes join one model"),
    ("train --manifest M --out OUT --preset seed002-efficientnetv2-m --hold-out-test", EXIT_INPUT,
     "--hold-out-test: holds a domain out of leave-one-domain-out folds", "folds are slide-kfold"),
    ("train --manifest M --out OUT --set cv=slide-kfold --hold-out-test", EXIT_INPUT, "--hold-out-test"),
    ("train --manifest M --out OUT --preset seed002-efficientnetv2-m --single-task", EXIT_INPUT,
     "--single-task: switches the multi-task network's decoders off", "(timm) has none"),
    ("train --manifest M --out OUT --single-task --masks EMPTY", EXIT_INPUT, "trains without decoders"),
    ("train --manifest M --out OUT --single-task --cache EMPTY", EXIT_INPUT, "--cache", "trains without decoders"),
    ("train --manifest M --out OUT --masks EMPTY --cache EMPTY", EXIT_INPUT, "--cache",
     "--masks gives the masks"),
    ("train --manifest M --out OUT --precision bogus", EXIT_INPUT, "argument --precision: invalid choice: 'bogus'"),
    ("train --manifest M --out OUT --devices 0", EXIT_INPUT, "argument --devices: '0': expected auto, a count"),
    ("train --manifest M --out OUT --devices two", EXIT_INPUT, "argument --devices: 'two'"),
    ("train --manifest M --out OUT --device cpu --devices 0,1", EXIT_INPUT, "device indexes choose GPUs"),
    ("calibrate W --manifest M --split train --batch-size 8", EXIT_INPUT,
     "--batch-size 8: the PyTorch batch of fold checkpoints", "every source is an exported ensemble"),
    ("calibrate W --manifest M --split train --write", EXIT_INPUT, "--write: writes the threshold into run folders"),
    ("calibrate W --manifest M --device gpu", EXIT_INPUT, "argument --device: invalid choice: 'gpu'"),
    ("evaluate W --manifest M --out OUT --batch-size 8", EXIT_INPUT, "every source is an exported ensemble"),
    ("evaluate W --manifest M --out OUT --no-vote --vote majority", EXIT_INPUT, "--vote: shows the vote"),
    ("evaluate W --manifest M --out OUT --no-vote --gallery 3", EXIT_INPUT, "--gallery: shows the vote"),
    ("export W --manifest M --out OUT --quantize weights --calibration entropy", EXIT_INPUT,
     "--calibration: calibrates the int8 activations of --quantize static"),
    ("export W --manifest M --out OUT --quantize weights --calibration-patches 64", EXIT_INPUT,
     "--calibration-patches"),
    ("export W --manifest M --out OUT --quantize float", EXIT_INPUT, "argument --quantize: invalid choice"),
    ("pick RUN --manifest M --split train --out OUT --batch-size 0", EXIT_INPUT, "argument --batch-size"),
    ("predict M --out OUT --device gpu", EXIT_INPUT, "argument --device: invalid choice: 'gpu'"),
    ("predict M --out OUT --vote best", EXIT_INPUT, "argument --vote: invalid choice: 'best'"),
    ("data --manifest M --manifest MM --name a --name b --name c", EXIT_INPUT, "--name given 3 time(s) for 2"),
    ("data --manifest M --format folders --split train", EXIT_INPUT, "--format folders"),
    ("masks --manifest M --out OUT --per-class 0", EXIT_INPUT, "argument --per-class"),
    ("augment --manifest M --out OUT --preset nope", EXIT_INPUT, "argument --preset: invalid choice: 'nope'"),
    ("augment --manifest M --out OUT --set augment.nosuch=1", EXIT_INPUT, "--set augment.nosuch: no such field"),
    ("curves RUN --out EMPTY", EXIT_OUTPUT, "a folder is there; give a file name"),
]


@pytest.fixture(scope="module")
def places(tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("mistakes")
    run = root / "run" / "val-tupac16"
    run.mkdir(parents=True)
    (run / "model.safetensors").write_bytes(b"")  # a finished fold, as far as the checks look
    corrupt = root / "corrupt" / "val-tupac16"
    corrupt.mkdir(parents=True)
    (corrupt / "model.safetensors").write_bytes(b"not a safetensors file")
    (corrupt / "config.json").write_text(json.dumps({"network": {"backbone": "resnetv2_18"}, "fold": {}}))
    (root / "badspec").mkdir()
    (root / "badspec" / "ensemble.json").write_text("{not json")
    (root / "empty").mkdir()
    (root / "file").write_text("")
    return {"M": AMIBR_FIXTURE / "manifest.csv", "MA": MULTI_FIXTURE / "amibr.csv",
            "MM": MULTI_FIXTURE / "midog25" / "midog25.csv", "W": make_tiny_ensemble(root / "weights"),
            "RUN": run.parent,
            "EMPTY": root / "empty", "FILE": root / "file", "CORRUPT": corrupt.parent, "BADSPEC": root / "badspec"}


@pytest.fixture(autouse=True)
def no_training(monkeypatch):
    def refuse(*args, **kwargs):
        raise AssertionError("a mistake got as far as training")

    monkeypatch.setattr(lightning.Trainer, "fit", refuse)


def no_images(*args, **kwargs):
    raise AssertionError("a refused option got as far as reading images")


def amf(line: str, places: dict[str, Path], out: Path) -> int:
    """Run ``amf LINE`` in this process, the names of places replaced by their paths; its exit code."""
    places = {**places, "OUT": out}
    words = [str(places[w]) if w in places else w for w in shlex.split(line)]
    words = [w.replace("FILE", str(places["FILE"]), 1) if w.startswith("FILE/") else w for w in words]
    try:
        return cli.main(words)
    except SystemExit as exit_:  # argparse
        return exit_.code


@pytest.mark.parametrize(("line", "code", "words"), [(c[0], c[1], c[2:]) for c in CASES], ids=[c[0] for c in CASES])
def test_a_mistake_is_one_line_and_its_exit_code(line, code, words, places, tmp_path, capsys):
    got = amf(line, places, tmp_path / "out")
    err = capsys.readouterr().err
    command = line.split()[0]
    assert got == code, err
    assert err.count("\n") == 1 and err.startswith(f"amf {command}: error: " if command in cli.COMMANDS
                                                   else "amf: error: "), err
    assert all(w in err for w in words), err
    assert not (tmp_path / "out").exists()  # nothing was written


def test_every_command_has_mistakes_in_the_table():
    assert {line.split()[0] for line, *_ in CASES} >= set(cli.COMMANDS)
    assert {line.split()[0] for line, *_ in NO_OPS} >= set(cli.COMMANDS)


@pytest.mark.parametrize(("line", "code", "words"), [(c[0], c[1], c[2:]) for c in NO_OPS], ids=[c[0] for c in NO_OPS])
def test_an_option_that_would_do_nothing_is_refused_before_any_work(line, code, words, places, tmp_path, capsys,
                                                                    monkeypatch):
    from training import data

    monkeypatch.setattr(data, "_load_patches", no_images)
    start = time.perf_counter()
    got = amf(line, places, tmp_path / "out")
    seconds = time.perf_counter() - start
    err = capsys.readouterr().err
    assert got == code and err.count("\n") == 1 and err.startswith(f"amf {line.split()[0]}: error: "), err
    assert all(w in err for w in words), err
    assert seconds < 3, f"{seconds:.1f} s: checked after some work"
    assert not (tmp_path / "out").exists()


def test_a_full_disk_mid_work_is_one_line_and_the_output_code(places, monkeypatch, capsys):
    from training import curves

    def full(args):
        raise OSError(errno.ENOSPC, "No space left on device", str(args.out))

    monkeypatch.setattr(curves, "run", full)
    assert cli.main(["curves", str(places["RUN"]), "--out", "/tmp/c.png"]) == EXIT_OUTPUT
    assert capsys.readouterr().err == "amf curves: error: /tmp/c.png: No space left on device\n"


def test_an_internal_error_keeps_its_traceback(places, monkeypatch):
    from training import curves

    def bug(args):
        raise KeyError("a bug")

    monkeypatch.setattr(curves, "run", bug)
    with pytest.raises(KeyError, match="a bug"):
        cli.main(["curves", str(places["RUN"])])
    monkeypatch.setattr(curves, "run", lambda args: (_ for _ in ()).throw(OSError(errno.EIO, "I/O error")))
    with pytest.raises(OSError, match="I/O error"):  # only a full or read-only disk is an output error
        cli.main(["curves", str(places["RUN"])])
