"""The hash-locked requirements (scripts/lock.sh writes them): read a lock, check it against its sources, and
check what an image installed (``pip freeze``) and the bill of materials it holds against its lock.

    python3 scripts/locks.py image LOCK FREEZE SBOM    (test/run_container.sh: exit 1 naming each difference)

Standard library only, so that a build host's python3 runs it outside any venv. It reads the files uv writes
(one ``name==version`` requirement per entry, with ``--hash`` options on continuation lines), not every form
pip accepts.
"""

from __future__ import annotations

import json
import re
import sys
from pathlib import Path

PIN = re.compile(r"([A-Za-z0-9][A-Za-z0-9._-]*)(?:\[[^\]]*\])?==([^\s;]+)")
HASH = re.compile(r"--hash=sha256:([0-9a-f]{64})")
FREEZE_SKIPS = {"pip", "setuptools", "wheel", "distribute"}  # what `pip freeze` leaves out of its list


def normalize(name: str) -> str:
    """A distribution name in PEP 503 form (``SimpleITK`` -> ``simpleitk``)."""
    return re.sub(r"[-_.]+", "-", name).lower()


def entries(text: str) -> list[str]:
    """The requirement-file lines, continuations joined and comments dropped, blank lines left out."""
    joined = re.sub(r"\\\n", " ", text)
    lines = (re.sub(r"(^|\s)#.*", "", line).strip() for line in joined.splitlines())
    return [line for line in lines if line]


def read_pins(text: str) -> dict[str, str]:
    """``name -> version`` of a list of exact pins (a .txt source or ``pip freeze``); anything else is an error."""
    pins = {}
    for line in entries(text):
        m = PIN.match(line)
        if not m:
            raise ValueError(f"not an exact pin: {line!r}")
        pins[normalize(m.group(1))] = m.group(2)
    return pins


def read_lock(text: str) -> dict[str, tuple[str, set[str]]]:
    """``name -> (version, sha256 hashes)`` of a lock; an option line (an index, find-links) is an error."""
    lock = {}
    for line in entries(text):
        m = PIN.match(line)
        rest = line[m.end():].strip() if m else ""
        if not m or rest and not rest.startswith("--hash"):
            raise ValueError(f"not a pinned requirement: {line[:80]!r}")
        lock[normalize(m.group(1))] = (m.group(2), set(HASH.findall(line)))
    return lock


def lock_problems(sources: dict[str, str], lock_text: str) -> list[str]:
    """What is wrong with a lock for its direct pins ``sources``: unreadable lines, an entry without a hash, a
    direct pin missing or of another version."""
    try:
        lock = read_lock(lock_text)
    except ValueError as exc:
        return [str(exc)]
    problems = [f"{name}: no sha256 hash" for name, (_, hashes) in lock.items() if not hashes]
    for name, version in sources.items():
        if name not in lock:
            problems.append(f"{name}=={version} is not in the lock")
        elif lock[name][0] != version:
            problems.append(f"{name}=={version} in the source, {name}=={lock[name][0]} in the lock")
    return problems


def sbom_problems(lock_text: str, sbom: dict) -> list[str]:
    """Differences between a lock and its CycloneDX bill of materials: the same packages and versions, each
    component's sha256 one of its lock entry's."""
    lock = read_lock(lock_text)
    if sbom.get("bomFormat") != "CycloneDX":
        return ["not a CycloneDX document"]
    listed = {normalize(c["name"]): c for c in sbom.get("components", [])}
    problems = [f"{name} is in the lock, not in the bill of materials" for name in sorted(set(lock) - set(listed))]
    problems += [f"{name} is in the bill of materials, not in the lock" for name in sorted(set(listed) - set(lock))]
    for name in sorted(set(lock) & set(listed)):
        version, hashes = lock[name]
        part = listed[name]
        digests = {h["content"] for h in part.get("hashes", []) if h.get("alg") == "SHA-256"}
        if part.get("version") != version:
            problems.append(f"{name}: {part.get('version')} in the bill of materials, {version} in the lock")
        if not digests or not digests <= hashes:
            problems.append(f"{name}: the bill of materials' sha256 is not one of the lock's")
    return problems


def freeze_problems(lock_text: str, freeze_text: str) -> list[str]:
    """Differences between what ``pip freeze`` lists and the lock (pip's own tools aside)."""
    locked = {name: version for name, (version, _) in read_lock(lock_text).items() if name not in FREEZE_SKIPS}
    installed = read_pins(freeze_text)
    problems = [f"{name}=={locked[name]} is locked, not installed" for name in sorted(set(locked) - set(installed))]
    problems += [f"{name}=={installed[name]} is installed, not locked" for name in sorted(set(installed) - set(locked))]
    problems += [f"{name}: {installed[name]} installed, {locked[name]} locked"
                 for name in sorted(set(locked) & set(installed)) if installed[name] != locked[name]]
    return problems


def main(argv: list[str]) -> int:
    if len(argv) != 4 or argv[0] != "image":
        print(__doc__, file=sys.stderr)
        return 2
    lock_text, freeze_text, sbom_text = (Path(p).read_text() for p in argv[1:])
    problems = freeze_problems(lock_text, freeze_text) + sbom_problems(lock_text, json.loads(sbom_text))
    for problem in problems:
        print(f"{argv[1]}: {problem}", file=sys.stderr)
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
