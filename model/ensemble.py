"""The exported fold ensemble at run time: one onnxruntime session, optional D4 TTA, majority vote.

Reads ``ensemble.json`` + ``ensemble.onnx`` (docs/INTERFACE.md). Uses the CUDA execution provider when
onnxruntime offers it and it starts, else the CPU one. numpy + onnxruntime only (no torch).
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from model.vote import vote

MANIFEST_FILE = "ensemble.json"
MAX_BATCH = 64  # pages per run: bounds memory on long stacks (a 16-page stack is one run)


class ModelError(RuntimeError):
    """The shipped model is missing, unreadable, or produced unusable output."""


@dataclass
class Prediction:
    atypical: np.ndarray  # bool [N]
    confidence: np.ndarray  # float [N], P(atypical) of the ensemble
    fold_probs: np.ndarray  # float [N, F]


def gpu_present() -> bool:
    """A GPU is visible to this process (NVIDIA device nodes), unless AMF_DEVICE says otherwise."""
    wanted = os.environ.get("AMF_DEVICE", "auto").lower()
    if wanted in ("cpu", "cuda"):
        return wanted == "cuda"
    return any(Path("/dev").glob("nvidia[0-9]*"))


def default_providers(ort) -> list[str]:
    """CUDA first when a GPU is present and onnxruntime has the provider (its CUDA/cuDNN libraries from the
    nvidia-* wheels are preloaded); onnxruntime falls back to the CPU provider if CUDA fails to start."""
    if gpu_present() and "CUDAExecutionProvider" in ort.get_available_providers():
        if hasattr(ort, "preload_dlls"):
            ort.preload_dlls()
        return ["CUDAExecutionProvider", "CPUExecutionProvider"]
    return ["CPUExecutionProvider"]


def _session_options(ort):
    so = ort.SessionOptions()
    so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    so.intra_op_num_threads = int(os.environ.get("AMF_THREADS", 0)) or (os.cpu_count() or 1)
    so.inter_op_num_threads = 1
    so.log_severity_level = 3
    return so


class Ensemble:
    def __init__(self, weights_dir: str | Path, providers: list[str] | None = None) -> None:
        import onnxruntime as ort

        self.dir = Path(weights_dir)
        manifest = self.dir / MANIFEST_FILE
        try:
            self.spec = json.loads(manifest.read_text())
            model_file = self.dir / self.spec["model_file"]
            self.thresholds = np.array([f["threshold"] for f in self.spec["folds"]], np.float64)
            self.tta = self.spec.get("tta", "none")
            self.patch_size = int(self.spec.get("patch_size", 128))
        except (OSError, ValueError, KeyError, TypeError) as exc:
            raise ModelError(f"{manifest}: unusable ensemble manifest ({exc})") from exc
        if self.tta not in ("none", "d4"):
            raise ModelError(f"{manifest}: unknown tta {self.tta!r} (none | d4)")
        if providers is None:
            providers = default_providers(ort)
        try:
            self.session = ort.InferenceSession(str(model_file), _session_options(ort), providers=providers)
        except Exception as exc:  # noqa: BLE001 - onnxruntime raises several unrelated types
            raise ModelError(f"{model_file}: cannot load the ONNX ensemble ({exc})") from exc
        self.provider = self.session.get_providers()[0]
        self.input_name = self.spec.get("input_name", "image")
        self.output_name = self.spec.get("output_name", "prob")

    def fold_probabilities(self, pages: np.ndarray) -> np.ndarray:
        """uint8 [N, S, S, 3] -> float32 [N, F] P(atypical) per fold (averaged over D4 views with TTA)."""
        out = []
        for start in range(0, len(pages), MAX_BATCH):
            chunk = np.ascontiguousarray(pages[start:start + MAX_BATCH])
            if self.tta == "d4":
                views = np.concatenate([np.rot90(v, k, axes=(1, 2)) for v in (chunk, chunk[:, :, ::-1]) for k in range(4)])
                probs = self._run(np.ascontiguousarray(views)).reshape(8, len(chunk), -1).mean(axis=0)
            else:
                probs = self._run(chunk)
            out.append(probs)
        probs = np.concatenate(out) if out else np.zeros((0, len(self.thresholds)), np.float32)
        if not np.isfinite(probs).all() or probs.min(initial=0) < 0 or probs.max(initial=0) > 1:
            raise ModelError(f"{self.dir / self.spec['model_file']}: the model produced non-finite or out-of-range output")
        return probs

    def _run(self, batch: np.ndarray) -> np.ndarray:
        return self.session.run([self.output_name], {self.input_name: batch})[0]

    def predict(self, pages: np.ndarray) -> Prediction:
        probs = self.fold_probabilities(pages)
        atypical, confidence = vote(probs, self.thresholds)
        return Prediction(atypical, confidence, probs)


def results_json(prediction: Prediction) -> list[dict]:
    """The GC Track-2 output: one {"class", "confidence"} per page; confidence is always a float."""
    return [{"class": "atypical" if a else "normal", "confidence": float(c)}
            for a, c in zip(prediction.atypical.tolist(), prediction.confidence.tolist())]
