"""The hash-locked requirements, their bills of materials and the image labels (scripts/lock.sh,
scripts/locks.py, scripts/image_labels.py): the committed files agree with their sources, the checks catch a
broken lock, and pip itself refuses a changed hash and an unlocked dependency (offline, on wheels made here)."""

from __future__ import annotations

import base64
import hashlib
import json
import re
import subprocess
import sys
import tomllib
import venv
import zipfile
from pathlib import Path

import pytest
from conftest import ROOT

from runtime.contract import read_spec
from runtime.version import __version__
from scripts.image_labels import OCI, WEIGHTS_LABEL, label_problems, labels
from scripts.locks import freeze_problems, lock_problems, read_lock, read_pins, sbom_problems


def text(name: str) -> str:
    return (ROOT / name).read_text()


def train_sources() -> dict[str, str]:
    extras = tomllib.loads(text("pyproject.toml"))["project"]["optional-dependencies"]
    return {**read_pins(text("requirements-cpu.txt")), **read_pins("\n".join(extras["train"] + extras["test"]))}


@pytest.mark.parametrize("lock, sources", [
    ("requirements.lock", lambda: read_pins(text("requirements.txt"))),
    ("requirements-cpu.lock", lambda: read_pins(text("requirements-cpu.txt"))),
    ("requirements-train.lock", train_sources)])
def test_each_lock_pins_its_sources_with_hashes_and_names_no_index(lock, sources):
    assert lock_problems(sources(), text(lock)) == []
    assert not re.search(r"^\s*(-i|-f|--index-url|--extra-index-url|--find-links)\b|://", text(lock), re.M)


def test_the_gpu_lock_is_the_cpu_one_with_onnxruntime_gpu_and_its_cuda_wheels():
    gpu, cpu = read_lock(text("requirements.lock")), read_lock(text("requirements-cpu.lock"))
    cuda = {name for name in gpu if name.startswith("nvidia-") and name.endswith("-cu12")}
    assert len(cuda) == 7 and set(gpu) - set(cpu) == {"onnxruntime-gpu", *cuda}
    assert set(cpu) - set(gpu) == {"onnxruntime"}
    assert all(gpu[name] == cpu[name] for name in set(gpu) & set(cpu))


def test_the_lock_check_fails_on_a_missing_or_changed_pin_an_unhashed_entry_or_an_index_line():
    lock, sources = text("requirements-cpu.lock"), read_pins(text("requirements-cpu.txt"))
    without_onnxruntime = re.sub(r"^onnxruntime==.*?(?=^\S)", "", lock, flags=re.M | re.S)
    assert lock_problems(sources, without_onnxruntime) == ["onnxruntime==1.26.0 is not in the lock"]
    assert lock_problems(sources, lock.replace("numpy==2.4.6", "numpy==2.4.5")) == [
        "numpy==2.4.6 in the source, numpy==2.4.5 in the lock"]
    unhashed = re.sub(r"^(flatbuffers==\S+) \\\n(\s+--hash=\S+\n)+", r"\1\n", lock, flags=re.M)
    assert lock_problems(sources, unhashed) == ["flatbuffers: no sha256 hash"]
    assert lock_problems(sources, "--extra-index-url file:///somewhere\n" + lock)
    assert lock_problems({**sources, "pillow": "13.0.0"}, lock) == ["pillow==13.0.0 is not in the lock"]


@pytest.mark.parametrize("name", ["requirements", "requirements-cpu"])
def test_each_bill_of_materials_lists_its_lock_with_the_picked_wheels_hash(name):
    lock, sbom = text(f"{name}.lock"), json.loads(text(f"{name}.cdx.json"))
    assert sbom["specVersion"] == "1.6" and sbom["metadata"]["component"]["name"] == "amf-mtl"
    assert sbom["metadata"]["component"]["version"] == __version__
    assert sbom_problems(lock, sbom) == []
    assert "://" not in json.dumps(sbom["components"])  # no index address
    tampered = json.loads(json.dumps(sbom))
    tampered["components"][0]["hashes"][0]["content"] = "0" * 64
    assert sbom_problems(lock, tampered) == [f"{tampered['components'][0]['name']}: the bill of materials' sha256 "
                                             "is not one of the lock's"]
    del tampered["components"][1]
    dropped = sbom["components"][1]["name"]
    assert f"{dropped} is in the lock, not in the bill of materials" in sbom_problems(lock, tampered)


def test_the_freeze_check_names_what_is_installed_but_not_locked_and_the_reverse():
    lock = text("requirements-cpu.lock")
    freeze = "".join(f"{name}=={version}\n" for name, (version, _) in read_lock(lock).items())
    assert freeze_problems(lock, freeze.replace("simpleitk", "SimpleITK")) == []
    assert freeze_problems(lock, freeze + "requests==2.0\n") == ["requests==2.0 is installed, not locked"]
    assert freeze_problems(lock, freeze.replace("numpy==2.4.6\n", "")) == ["numpy==2.4.6 is locked, not installed"]
    assert freeze_problems(lock, freeze.replace("numpy==2.4.6", "numpy==2.4.5")) == [
        "numpy: 2.4.5 installed, 2.4.6 locked"]


def make_wheel(folder: Path, name: str, requires: str = "") -> tuple[str, str]:
    """A pure-Python wheel ``name-1.0``; returns its file name and sha256."""
    dist = f"{name}-1.0.dist-info"
    files = {f"{name}/__init__.py": "",
             f"{dist}/METADATA": f"Metadata-Version: 2.1\nName: {name}\nVersion: 1.0\n"
                                 + (f"Requires-Dist: {requires}\n" if requires else ""),
             f"{dist}/WHEEL": "Wheel-Version: 1.0\nGenerator: test\nRoot-Is-Purelib: true\nTag: py3-none-any\n"}
    record = [f"{path},sha256={base64.urlsafe_b64encode(hashlib.sha256(body.encode()).digest()).rstrip(b'=').decode()},"
              f"{len(body.encode())}" for path, body in files.items()] + [f"{dist}/RECORD,,"]
    wheel = folder / f"{name}-1.0-py3-none-any.whl"
    with zipfile.ZipFile(wheel, "w") as z:
        for path, body in {**files, f"{dist}/RECORD": "\n".join(record) + "\n"}.items():
            z.writestr(path, body)
    return wheel.name, hashlib.sha256(wheel.read_bytes()).hexdigest()


def pip(env: Path, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "pip", "--python", str(env / "bin" / "python"), *args],
                          capture_output=True, text=True, timeout=120)


def test_pip_refuses_a_changed_hash_and_pip_check_an_unlocked_dependency(tmp_path):
    """The Dockerfile's install (--require-hashes --no-deps, then pip check), offline on two wheels: amf_a
    needs amf_b."""
    wheels = tmp_path / "wheels"
    wheels.mkdir()
    _, hash_a = make_wheel(wheels, "amf_a", requires="amf_b")
    _, hash_b = make_wheel(wheels, "amf_b")
    env = tmp_path / "env"
    venv.create(env, with_pip=False)
    install = ("install", "--no-index", "--find-links", str(wheels), "--require-hashes", "--no-deps", "-r")

    good = f"amf-a==1.0 --hash=sha256:{hash_a}\namf-b==1.0 --hash=sha256:{hash_b}\n"
    (tmp_path / "changed.lock").write_text(good.replace(hash_a, hash_a[::-1]))
    proc = pip(env, *install, str(tmp_path / "changed.lock"))
    assert proc.returncode != 0 and "THESE PACKAGES DO NOT MATCH THE HASHES" in proc.stderr, proc.stderr

    (tmp_path / "unlocked.lock").write_text(f"amf-a==1.0 --hash=sha256:{hash_a}\n")
    assert pip(env, *install, str(tmp_path / "unlocked.lock")).returncode == 0
    proc = pip(env, "check")
    assert proc.returncode != 0 and "amf-a 1.0 requires amf-b, which is not installed" in proc.stdout, proc.stdout

    (tmp_path / "good.lock").write_text(good)
    assert pip(env, *install, str(tmp_path / "good.lock")).returncode == 0
    assert pip(env, "check").returncode == 0


def test_the_labels_name_the_checkout_the_version_and_the_weights_hashes():
    found = labels()
    assert found[OCI + "version"] == __version__
    assert re.fullmatch(r"[0-9a-f]{40}(-dirty)?|unknown", found[OCI + "revision"])
    spec = json.loads(text("weights/ensemble.json"))
    for name in ("ensemble.json", spec["model_file"], *spec["cpu_model_files"]):
        assert found[WEIGHTS_LABEL + name] == hashlib.sha256((ROOT / "weights" / name).read_bytes()).hexdigest()
    assert label_problems(found) == []
    wrong = {**found, WEIGHTS_LABEL + "ensemble.onnx": "0" * 64, OCI + "created": "yesterday"}
    del wrong[OCI + "revision"]
    assert label_problems(wrong) == [f"no {OCI}revision label", f"{OCI}created=yesterday: not an RFC 3339 UTC time",
                                     f"{WEIGHTS_LABEL}ensemble.onnx={'0' * 64}, this checkout's is "
                                     f"{found[WEIGHTS_LABEL + 'ensemble.onnx']}"]


def test_the_model_line_names_the_shipped_graphs_recorded_hash_and_commit(tmp_path):
    spec = read_spec(ROOT / "weights")
    assert spec.provenance["model_sha256"] == hashlib.sha256(spec.model_file.read_bytes()).hexdigest()
    assert spec.identity() == (f"sha256 {spec.provenance['model_sha256'][:12]}, "
                               f"commit {spec.provenance['git_commit'][:12]}")
    doc = json.loads(text("weights/ensemble.json"))
    del doc["provenance"]
    (tmp_path / "ensemble.json").write_text(json.dumps(doc))
    assert read_spec(tmp_path).identity() == "sha256 unrecorded, commit unrecorded"


def test_the_labels_name_an_unknown_revision_and_source_where_git_is_missing(monkeypatch):
    monkeypatch.setenv("PATH", "")
    monkeypatch.delenv("SOURCE_URL", raising=False)
    found = labels()
    assert found[OCI + "revision"] == "unknown" and found[OCI + "source"] == "unknown"
    assert found[OCI + "version"] == __version__
