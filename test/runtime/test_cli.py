"""The ``amf`` command (cli/): every subcommand parses without torch; errors are one line and exit 2.

Runs in the runtime-only venv too: nothing here needs torch or the training side (test/training/test_cli_train.py
checks the training commands themselves).
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from importlib.metadata import version
from pathlib import Path

import pytest
from conftest import ROOT

from cli.main import COMMANDS, main
from runtime.version import __version__

DATA = {"data", "train", "pick", "calibrate", "evaluate", "export", "masks", "augment"}  # the data options
SHARED = {  # option -> the commands that must offer it
    **{option: DATA for option in ("--manifest", "--format", "--root", "--name", "--domain-column", "--columns",
                                   "--split")},
    "--out": set(COMMANDS),
    "--tta": {"calibrate", "evaluate", "export", "predict"},
    "--vote": {"calibrate", "evaluate", "export", "predict"},
    "--batch-size": {"train", "pick", "calibrate", "evaluate", "predict"},
    "--device": {"train", "pick", "calibrate", "evaluate", "predict"},
    "--weights": {"predict"},
}


def run_amf(*args: str, modules: str = "") -> subprocess.CompletedProcess:
    """``amf ARGS`` in a fresh interpreter; ``modules``: names made unimportable first (as if not installed)."""
    code = (f"import sys\nfor m in {modules.split()!r}: sys.modules[m] = None\n"
            f"from cli.main import main\nsys.exit(main({list(args)!r}))")
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, timeout=120)


@pytest.mark.parametrize("command", sorted(COMMANDS))
def test_every_command_has_help_with_the_shared_options(command, capsys):
    with pytest.raises(SystemExit) as exit_:
        main([command, "--help"])
    assert exit_.value.code == 0
    text = capsys.readouterr().out
    for option, commands in SHARED.items():
        assert (option in text) == (command in commands), (command, option)
    if "--format" in text:
        assert "folders" in text and "midog25" in text
    if "--tta" in text:
        assert "none | d4" in text
    if "--vote" in text:
        assert "majority | mean-probability | mean-then-vote" in text


def test_top_level_help_lists_every_command(capsys):
    with pytest.raises(SystemExit) as exit_:
        main(["--help"])
    assert exit_.value.code == 0
    text = capsys.readouterr().out
    assert all(f"  {name} " in text for name in COMMANDS)


def test_version_is_the_package_metadata(capsys):
    with pytest.raises(SystemExit) as exit_:
        main(["--version"])
    assert exit_.value.code == 0
    assert capsys.readouterr().out == f"amf-mtl {version('amf-mtl')}\n"
    assert version("amf-mtl") == __version__  # pyproject.toml reads runtime/version.py


def test_help_imports_neither_torch_nor_the_training_side():
    """Of the training side only its names (training/choices.py: the standard library alone) load."""
    code = ("import sys\nfrom cli.main import main\n"
            "for command in ('train', 'calibrate', 'evaluate', 'export', 'predict'):\n"
            "    try:\n        main([command, '--help'])\n    except SystemExit:\n        pass\n"
            "heavy = sorted(m for m in sys.modules if m.split('.')[0] in ('torch', 'lightning', 'timm', 'training', "
            "'onnxruntime', 'onnx') and m not in ('training', 'training.choices'))\n"
            "assert not heavy, heavy")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, timeout=60)
    assert proc.returncode == 0, proc.stderr


def test_the_installed_console_script_answers_help_quickly():
    amf = Path(sys.executable).parent / "amf"
    if not amf.exists():
        pytest.skip("amf not installed in this venv (pip install -e .)")
    start = time.perf_counter()
    proc = subprocess.run([str(amf), "train", "--help"], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0 and "--manifest" in proc.stdout, proc.stderr
    assert time.perf_counter() - start < 5  # about 0.3 s; generous for a loaded CI machine


def test_an_unknown_command_or_choice_exits_2():
    proc = run_amf("frobnicate")
    assert proc.returncode == 2 and "invalid choice: 'frobnicate'" in proc.stderr
    proc = run_amf("evaluate", "run", "--manifest", "m.csv", "--out", "r", "--tta", "d8")
    assert proc.returncode == 2 and "argument --tta" in proc.stderr
    proc = run_amf("train", "--manifest", "m.csv", "--out", "r", "--preset", "nope")
    assert proc.returncode == 2 and "argument --preset" in proc.stderr


def test_the_train_extra_is_read_from_the_package_metadata():
    from cli.checks import train_extra

    assert {"torch", "lightning", "timm", "psutil", "peft"} <= set(train_extra())
    assert "pytest" not in train_extra()  # the test extra's


def test_a_bad_precision_is_one_line_and_exit_2_before_anything_loads():
    start = time.perf_counter()
    proc = run_amf("train", "--manifest", "m.csv", "--out", "r", "--precision", "bogus")
    assert proc.returncode == 2 and proc.stderr.count("\n") == 1, proc.stderr
    assert proc.stderr.startswith("amf train: error: argument --precision: invalid choice: 'bogus'")
    assert time.perf_counter() - start < 3  # parsed before the data, the masks and torch (it was 11 s)


def test_a_training_command_without_the_train_extra_is_one_line_and_exit_2(tmp_path):
    proc = run_amf("train", "--manifest", "m.csv", "--out", str(tmp_path / "run"),
                   modules="torch lightning torchvision timm")
    assert proc.returncode == 2, proc.stderr
    assert proc.stderr.count("\n") == 1 and proc.stderr.startswith("amf train: error: needs the train extra (")
    assert "pip install -e '.[train]'" in proc.stderr and not (tmp_path / "run").exists()


def test_predict_runs_without_the_training_side(tmp_path, tiny_weights):
    stack = next((ROOT / "test" / "input").rglob("*.tif"))
    code = ("import sys\nsys.modules['torch'] = None\nfrom cli.main import main\ncode = main(sys.argv[1:])\n"
            "side = sorted(m for m in sys.modules if m.startswith('training') and m not in ('training', "
            "'training.choices'))\nassert not side, side\nsys.exit(code)")  # of the training side, its names only
    proc = subprocess.run([sys.executable, "-c", code, "predict", str(stack),
                           "--out", str(tmp_path / "p.csv"), "--weights", str(tiny_weights), "--device", "cpu"],
                          capture_output=True, text=True, cwd=ROOT, timeout=120,
                          env={**os.environ, "AMF_DEVICE": "cuda"})  # --device overrides $AMF_DEVICE
    assert proc.returncode == 0, proc.stderr
    assert "CPUExecutionProvider" in proc.stderr and "CUDA not used" not in proc.stderr
    assert len((tmp_path / "p.csv").read_text().splitlines()) == 17


def test_an_import_error_mid_command_names_the_train_extra_only_when_it_is_incomplete(monkeypatch, capsys):
    from cli import checks
    from cli import main as cli

    def needs(module: str):
        def implementation(args):
            raise ModuleNotFoundError(f"No module named {module!r}", name=module)
        return implementation

    arguments, _, summary, description = cli.COMMANDS["curves"]
    monkeypatch.setitem(cli.COMMANDS, "curves", (arguments, needs("onnxscript"), summary, description))
    assert cli.main(["curves", "run"]) == 2  # a module of the extra (named by its package where installed)
    err = capsys.readouterr().err
    assert err.startswith("amf curves: error: needs the train extra (") and err.endswith("pip install -e '.[train]'\n")
    monkeypatch.setitem(cli.COMMANDS, "curves", (arguments, needs("nosuchmodule"), summary, description))
    monkeypatch.setattr(checks, "missing_train_package", lambda: "torch")  # the extra is incomplete
    assert cli.main(["curves", "run"]) == 2 and "needs the train extra (torch" in capsys.readouterr().err
    monkeypatch.setattr(checks, "missing_train_package", lambda: None)  # complete: a bug, with its traceback
    with pytest.raises(ModuleNotFoundError, match="nosuchmodule"):
        cli.main(["curves", "run"])
