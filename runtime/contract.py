"""The exported ensemble: what ``training/export.py`` writes and the runtime reads, defined once here.

``<weights>/ensemble.json``, the ensemble spec::

    {"format": "amf-mtl-ensemble", "version": 1,
     "model_file": "ensemble.onnx",   # beside the spec: standard ONNX, int8 in QDQ form (any provider)
     "cpu_model_files": ["ensemble.cpu.0.onnx", ...],  # optional, one per member in column order: its
                                      # network with the CPU provider's fusions applied, output [N, 1]; their
                                      # tensors are read from model_file's bytes (training/cpu_graph.py)
     "input_name": "image",           # uint8 [N, 128, 128, 3] RGB, NHWC, N dynamic
     "output_name": "prob",           # float32 [N, M]: P(atypical) per member (the graph also has "logit")
     "patch_size": 128,
     "folds": [{"name": "val-tupac16", "threshold": 0.5, ...}],  # the members: one output column each, in
                                      # this order; each a member of the fold "group" (optional; default its
                                      # name): several members of one fold (two runs' models) share it
     "vote": "majority" | "mean-probability" | "mean-then-vote",  # runtime/vote.py; default majority
     "tie": "mean-probability", "confidence": "mean-probability",  # what majority does with them
     "tta": "none" | "d4",            # runtime/tta.py
     "provenance": {...}}             # free-form: sources, git_commit, amf_version, model_sha256, parity

Scaling to [0, 1], normalisation and layout live inside the ONNX graph: the runtime feeds the uint8 pages as
read, so it cannot preprocess differently from training. The files are one unit: export writes them together,
and the CPU graphs read their weights from the bytes of ``model_file``.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from runtime.errors import ModelError

SPEC_FILE = "ensemble.json"
MODEL_FILE = "ensemble.onnx"
CPU_MODEL_FILES = "ensemble.cpu.{}.onnx"  # formatted with the fold's column
FORMAT, VERSION = "amf-mtl-ensemble", 1
PATCH_SIZE = 128
INPUT_NAME = "image"
PROB_OUTPUT, LOGIT_OUTPUT = "prob", "logit"
TTA_VIEWS = {"none": 1, "d4": 8}  # test-time augmentation modes -> views per page (runtime/tta.py)
TTA_MODES = tuple(TTA_VIEWS)
MAJORITY, MEAN_PROBABILITY, MEAN_THEN_VOTE = "majority", "mean-probability", "mean-then-vote"
VOTE_RULES = (MAJORITY, MEAN_PROBABILITY, MEAN_THEN_VOTE)  # runtime/vote.py; majority: seed 001's, the default
GC_MODEL_DIR = Path("/opt/ml/model")  # where Grand Challenge extracts an uploaded model tarball
SHIPPED_WEIGHTS = Path(__file__).resolve().parents[1] / "weights"


@dataclass(frozen=True)
class EnsembleSpec:
    """A checked ensemble spec: the model files, one threshold per member (in output column order), TTA mode."""

    path: Path
    model_file: Path
    cpu_model_files: list[Path]  # one per member; empty: CPU sessions load model_file too
    member_names: list[str]  # one per output column: its model's name
    member_of: list[str]  # one per output column: the fold its model belongs to (its "group")
    thresholds: np.ndarray
    tta: str
    vote: str
    patch_size: int
    input_name: str
    output_name: str
    provenance: dict = field(default_factory=dict)

    def identity(self) -> str:
        """``sha256 <12 hex>, commit <12 hex>[, amf-mtl <version>]``: model_file's hash, the commit and the release
        that exported it, as the provenance records them (``unrecorded`` where it does not; the release only where
        recorded: exports made before releases were versioned lack it)."""
        found = [f"{label} {str(self.provenance.get(key) or 'unrecorded')[:12]}"
                 for label, key in (("sha256", "model_sha256"), ("commit", "git_commit"))]
        if self.provenance.get("amf_version"):
            found.append(f"amf-mtl {self.provenance['amf_version']}")
        return ", ".join(found)


def make_spec(folds: list[dict], tta: str, provenance: dict, cpu_graphs: bool = True, vote: str = MAJORITY) -> dict:
    """The spec export writes: ``folds`` are dicts with at least ``name`` and ``threshold`` (and ``group``
    where a fold has several members), one per output column; ``cpu_graphs``: one CPU_MODEL_FILES per column
    is written beside MODEL_FILE."""
    if tta not in TTA_MODES:
        raise ValueError(f"unknown tta {tta!r} ({' | '.join(TTA_MODES)})")
    if vote not in VOTE_RULES:
        raise ValueError(f"unknown vote rule {vote!r} ({' | '.join(VOTE_RULES)})")
    return {"format": FORMAT, "version": VERSION, "model_file": MODEL_FILE,
            **({"cpu_model_files": [CPU_MODEL_FILES.format(i) for i in range(len(folds))]} if cpu_graphs else {}),
            "input_name": INPUT_NAME, "output_name": PROB_OUTPUT, "patch_size": PATCH_SIZE, "folds": folds,
            "vote": vote, "tie": MEAN_PROBABILITY, "confidence": MEAN_PROBABILITY, "tta": tta,
            "provenance": provenance}


def read_spec(folder: str | Path) -> EnsembleSpec:
    """Read and check ``<folder>/ensemble.json``; any problem is a ModelError naming the file."""
    path = Path(folder) / SPEC_FILE
    try:
        doc = json.loads(path.read_text())
        spec = EnsembleSpec(
            path=path, model_file=path.parent / doc["model_file"],
            cpu_model_files=[path.parent / f for f in doc.get("cpu_model_files", [])],
            member_names=[f["name"] for f in doc["folds"]], member_of=[f.get("group", f["name"]) for f in doc["folds"]],
            thresholds=np.array([f["threshold"] for f in doc["folds"]], np.float64), tta=doc.get("tta", "none"),
            vote=doc.get("vote", MAJORITY),
            patch_size=int(doc.get("patch_size", PATCH_SIZE)), input_name=doc.get("input_name", INPUT_NAME),
            output_name=doc.get("output_name", PROB_OUTPUT), provenance=dict(doc.get("provenance") or {}))
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise ModelError(f"{path}: unusable ensemble spec ({exc})") from None
    if spec.tta not in TTA_MODES:
        raise ModelError(f"{path}: unknown tta {spec.tta!r} ({' | '.join(TTA_MODES)})")
    if spec.vote not in VOTE_RULES:
        raise ModelError(f"{path}: unknown vote rule {spec.vote!r} ({' | '.join(VOTE_RULES)})")
    if not spec.member_names:
        raise ModelError(f"{path}: no members (\"folds\" is empty)")
    if spec.cpu_model_files and len(spec.cpu_model_files) != len(spec.member_names):
        raise ModelError(f"{path}: {len(spec.cpu_model_files)} CPU graphs for {len(spec.member_names)} members")
    return spec


def is_exported(folder: str | Path) -> bool:
    """Whether ``folder`` is an exported ensemble (it holds the spec)."""
    return (Path(folder) / SPEC_FILE).is_file()


def default_weights() -> Path:
    """``$AMF_WEIGHTS``, else Grand Challenge's model folder when it holds a spec, else the shipped ``weights/``."""
    if os.environ.get("AMF_WEIGHTS"):
        return Path(os.environ["AMF_WEIGHTS"])
    if is_exported(GC_MODEL_DIR):
        return GC_MODEL_DIR
    return SHIPPED_WEIGHTS
