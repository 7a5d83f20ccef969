"""The image's labels, one ``KEY=VALUE`` a line: build.sh passes each as ``--label``; ``check`` reads a built
image's labels (a JSON object on stdin) and fails, naming them, on those missing or not of this checkout.

    python3 scripts/image_labels.py
    docker inspect --format '{{json .Config.Labels}}' amf-mtl | python3 scripts/image_labels.py check

- org.opencontainers.image.revision: the commit checked out (``-dirty`` when tracked files differ from it)
- org.opencontainers.image.source: $SOURCE_URL, else the ``origin`` remote (credentials left out)
- org.opencontainers.image.version: the release version (runtime/version.py)
- org.opencontainers.image.created: now (or $SOURCE_DATE_EPOCH), RFC 3339, UTC
- amf-mtl.weights.sha256.FILE: the sha256 of weights/ensemble.json and of each graph it names

Standard library only (any python3 on the build host); ``unknown`` where git has no answer.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
WEIGHTS = ROOT / "weights"
OCI = "org.opencontainers.image."
WEIGHTS_LABEL = "amf-mtl.weights.sha256."


def git(*args: str) -> str | None:
    """git's answer, or None where it fails or is not installed (a slim build image)."""
    try:
        proc = subprocess.run(["git", "-C", str(ROOT), *args], capture_output=True, text=True)
    except OSError:
        return None
    return proc.stdout.strip() if proc.returncode == 0 else None


def revision() -> str:
    head = git("rev-parse", "HEAD")
    if head is None:
        return "unknown"
    return head + ("-dirty" if git("status", "--porcelain", "--untracked-files=no") else "")


def source() -> str:
    url = os.environ.get("SOURCE_URL") or git("remote", "get-url", "origin") or "unknown"
    return re.sub(r"^([a-z+]+://)[^/@]*@", r"\1", url)  # https://user:token@host/... -> https://host/...


def version() -> str:
    return re.search(r'^__version__ = "([^"]+)"', (ROOT / "runtime" / "version.py").read_text(), re.M).group(1)


def created() -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(int(os.environ.get("SOURCE_DATE_EPOCH") or time.time())))


def weight_files() -> list[str]:
    spec = json.loads((WEIGHTS / "ensemble.json").read_text())
    return ["ensemble.json", spec["model_file"], *spec.get("cpu_model_files", [])]


def labels() -> dict[str, str]:
    found = {OCI + "revision": revision(), OCI + "source": source(), OCI + "version": version(),
             OCI + "created": created()}
    for name in weight_files():
        found[WEIGHTS_LABEL + name] = hashlib.sha256((WEIGHTS / name).read_bytes()).hexdigest()
    return found


def label_problems(found: dict[str, str]) -> list[str]:
    """How an image's labels differ from this checkout's (``created`` only has to be an RFC 3339 UTC time)."""
    problems = []
    for key, value in labels().items():
        if key not in found:
            problems.append(f"no {key} label")
        elif key == OCI + "created":
            if not re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ", found[key]):
                problems.append(f"{key}={found[key]}: not an RFC 3339 UTC time")
        elif found[key] != value:
            problems.append(f"{key}={found[key]}, this checkout's is {value}")
    return problems


if __name__ == "__main__":
    if sys.argv[1:] == ["check"]:
        problems = label_problems(json.load(sys.stdin) or {})
        for problem in problems:
            print(f"image label: {problem}", file=sys.stderr)
        sys.exit(1 if problems else 0)
    for key, value in labels().items():
        print(f"{key}={value}")
