"""Grand Challenge Track-2 I/O: find the input stack from ``inputs.json``; write the result atomically.

Input: ``<input>/inputs.json`` lists sockets; ours has ``interface.slug ==
"stacked-histopathology-roi-cropouts"`` and ``interface.relative_path`` (a folder under ``<input>``) that
holds exactly one ``.tif``/``.tiff``/``.mha`` (suffix case ignored, hidden files ignored; a missing
``relative_path`` means the standard ``images/<slug>``; one leading outside ``<input>``, also through a
symlink, is refused). Output: ``<output>/multiple-mitotic-figure-classification.json``,
a list with one ``{"class": "atypical" | "normal", "confidence": float}`` per page, in page order, written
to a temporary file and renamed, so that a reader never sees a partial file.
"""

from __future__ import annotations

import contextlib
import json
import os
import tempfile
from pathlib import Path

import numpy as np

from runtime.errors import InputError, OutputError
from runtime.stack import SUFFIXES

SOCKET = "stacked-histopathology-roi-cropouts"
OUTPUT_FILE = "multiple-mitotic-figure-classification.json"
CLASSES = ("normal", "atypical")


def find_stack(input_dir: str | Path) -> Path:
    """The one image file of our socket, checked to lie inside ``input_dir``."""
    input_dir = Path(input_dir)
    spec = input_dir / "inputs.json"
    try:
        entries = json.loads(spec.read_text())
    except FileNotFoundError:
        raise InputError(f"{spec}: missing") from None
    except OSError as exc:
        raise InputError(f"{spec}: cannot be read ({exc.strerror or exc})") from None
    except ValueError as exc:  # also UnicodeDecodeError
        raise InputError(f"{spec}: not valid JSON ({exc})") from None
    if not isinstance(entries, list):
        raise InputError(f"{spec}: expected a list of sockets, got {type(entries).__name__}")
    interfaces = [e["interface"] for e in entries if isinstance(e, dict) and isinstance(e.get("interface"), dict)]
    sockets = [i for i in interfaces if i.get("slug") == SOCKET]
    if len(sockets) != 1:
        found = [i.get("slug") for i in interfaces]
        raise InputError(f"{spec}: expected one socket {SOCKET!r}, found {len(sockets)} (sockets: {found})")
    relative = sockets[0].get("relative_path") or f"images/{SOCKET}"
    if not isinstance(relative, str):
        raise InputError(f"{spec}: relative_path must be a string, got {relative!r}")
    root = input_dir.resolve()
    folder = (input_dir / relative).resolve()
    if not folder.is_relative_to(root):
        raise InputError(f"{spec}: relative_path {relative!r} leads outside {input_dir}")
    if not folder.is_dir():
        raise InputError(f"{folder}: socket folder missing")
    try:
        images = sorted(p for p in folder.iterdir()
                        if p.suffix.lower() in SUFFIXES and not p.name.startswith(".") and p.is_file())
    except OSError as exc:
        raise InputError(f"{folder}: cannot list the socket folder ({exc.strerror or exc})") from None
    if len(images) != 1:
        raise InputError(f"{folder}: expected exactly one .tif/.tiff/.mha stack, found {len(images)} "
                         f"({[p.name for p in images][:5]})")
    if not images[0].resolve().is_relative_to(root):
        raise InputError(f"{images[0]}: links outside {input_dir}")
    return images[0]


def results_json(atypical: np.ndarray, confidence: np.ndarray) -> list[dict]:
    """One {"class", "confidence"} per page; confidence is P(atypical), always a Python float."""
    return [{"class": CLASSES[bool(a)], "confidence": float(c)} for a, c in zip(atypical.tolist(), confidence.tolist())]


def validate_results(results: object, n_pages: int | None = None) -> None:
    """The official evaluator's checks: a list, one dict per page, both keys, class one of two strings,
    confidence a float (a JSON integer fails); we also require a finite confidence in [0, 1]."""
    if not isinstance(results, list):
        raise ValueError(f"results must be a list, got {type(results).__name__}")
    if n_pages is not None and len(results) != n_pages:
        raise ValueError(f"{len(results)} results for {n_pages} pages")
    for i, r in enumerate(results):
        if not isinstance(r, dict) or set(r) != {"class", "confidence"}:
            raise ValueError(f"entry {i}: expected a dict with keys class and confidence, got {r!r}")
        if r["class"] not in CLASSES:
            raise ValueError(f"entry {i}: class {r['class']!r} not in {CLASSES}")
        c = r["confidence"]
        if not isinstance(c, float) or not 0.0 <= c <= 1.0:
            raise ValueError(f"entry {i}: confidence {c!r} is not a float in [0, 1]")


def write_results(output_dir: str | Path, results: list[dict], n_pages: int | None = None) -> Path:
    """Validate (one entry per page when ``n_pages`` is given), then write atomically (temporary file in
    the same folder, fsync, rename)."""
    validate_results(results, n_pages)
    output_dir = Path(output_dir)
    target = output_dir / OUTPUT_FILE
    text = json.dumps(results, indent=2, allow_nan=False) + "\n"
    try:
        output_dir.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=".result-", suffix=".json", dir=output_dir)
    except OSError as exc:
        raise OutputError(f"{output_dir}: cannot write the output ({exc.strerror or exc})") from None
    try:
        with os.fdopen(fd, "w") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, 0o644)
        os.replace(tmp, target)
        _fsync_dir(output_dir)
    except OSError as exc:
        Path(tmp).unlink(missing_ok=True)
        raise OutputError(f"{target}: cannot write the output ({exc.strerror or exc})") from None
    return target


def _fsync_dir(folder: Path) -> None:
    """Make the rename durable (where the file system lets a folder be opened and synced)."""
    with contextlib.suppress(OSError):
        fd = os.open(folder, os.O_RDONLY | os.O_DIRECTORY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
