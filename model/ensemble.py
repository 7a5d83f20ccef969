"""The exported fold ensemble at run time: one onnxruntime session, optional D4 TTA, majority vote.

Reads ``ensemble.json`` + its ONNX model (docs/INTERFACE.md). Provider: CUDA when a GPU is visible and
onnxruntime offers the CUDA provider (TF32 off and heuristic cuDNN algorithm choice, so that answers match
the CPU's and repeat exactly), else CPU; onnxruntime itself falls back to CPU if CUDA fails to start.
``AMF_DEVICE=cpu|cuda`` overrides the GPU check, ``AMF_THREADS`` the CPU thread count.
numpy + onnxruntime only (no torch).
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from model.errors import ModelError
from model.vote import vote

MANIFEST_FILE = "ensemble.json"
MAX_PAGES_PER_RUN = 64  # a 16-page stack is one run; longer stacks run in batches (bounded memory)
MAX_IMAGES_PER_RUN = 128  # with D4 TTA each page is 8 images: 16 pages per run
CUDA_OPTIONS = {"use_tf32": "0", "cudnn_conv_algo_search": "HEURISTIC"}


@dataclass
class Prediction:
    atypical: np.ndarray  # bool [N]
    confidence: np.ndarray  # float [N], P(atypical) of the ensemble
    fold_probs: np.ndarray  # float32 [N, F]


def gpu_present() -> bool:
    """A GPU is visible to this process (NVIDIA device nodes), unless AMF_DEVICE says otherwise."""
    wanted = os.environ.get("AMF_DEVICE", "auto").lower()
    if wanted in ("cpu", "cuda"):
        return wanted == "cuda"
    return any(Path("/dev").glob("nvidia[0-9]*"))


def default_providers(ort) -> list:
    """CUDA first when a GPU is present and onnxruntime has the provider (its CUDA/cuDNN libraries come from
    the nvidia-* wheels, preloaded here), then CPU."""
    if gpu_present() and "CUDAExecutionProvider" in ort.get_available_providers():
        if hasattr(ort, "preload_dlls"):
            ort.preload_dlls()
        return [("CUDAExecutionProvider", CUDA_OPTIONS), "CPUExecutionProvider"]
    return ["CPUExecutionProvider"]


def _session_options(ort, expand_weights: bool):
    so = ort.SessionOptions()
    if expand_weights:  # fold the int8 -> float dequantisation into the weights once, at load
        so.add_session_config_entry("session.disable_quant_qdq", "1")
    so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
    so.intra_op_num_threads = int(os.environ.get("AMF_THREADS", 0)) or cores  # the CPUs this process may use
    so.inter_op_num_threads = 1
    so.log_severity_level = 3
    return so


class Ensemble:
    """``expand_weights``: turn the int8 weights into float once when the session is created (about a
    second more to load, about a quarter less time per inference): for long runs such as
    ``model.score``; the container's single-stack run (process.py) loads faster without it."""

    def __init__(self, weights_dir: str | Path, providers: list | None = None, expand_weights: bool = False) -> None:
        import onnxruntime as ort

        self.dir = Path(weights_dir)
        manifest = self.dir / MANIFEST_FILE
        try:
            self.spec = json.loads(manifest.read_text())
            self.model_file = self.dir / self.spec["model_file"]
            self.thresholds = np.array([f["threshold"] for f in self.spec["folds"]], np.float64)
            self.tta = self.spec.get("tta", "none")
            self.patch_size = int(self.spec.get("patch_size", 128))
            self.input_name = self.spec.get("input_name", "image")
            self.output_name = self.spec.get("output_name", "prob")
        except (OSError, ValueError, KeyError, TypeError) as exc:
            raise ModelError(f"{manifest}: unusable ensemble manifest ({exc})") from None
        if self.tta not in ("none", "d4"):
            raise ModelError(f"{manifest}: unknown tta {self.tta!r} (none | d4)")
        if not len(self.thresholds):
            raise ModelError(f"{manifest}: no folds")
        providers = default_providers(ort) if providers is None else providers
        try:
            self.session = ort.InferenceSession(str(self.model_file), _session_options(ort, expand_weights),
                                                providers=providers)
        except Exception as exc:  # noqa: BLE001 - onnxruntime raises several unrelated types
            raise ModelError(f"{self.model_file}: cannot load the ONNX ensemble ({exc})") from None
        names = ([i.name for i in self.session.get_inputs()], [o.name for o in self.session.get_outputs()])
        if self.input_name not in names[0] or self.output_name not in names[1]:
            raise ModelError(f"{self.model_file}: expected input {self.input_name!r} and output {self.output_name!r}, "
                             f"the graph has inputs {names[0]} and outputs {names[1]}")
        self.provider = self.session.get_providers()[0]
        first_choice = providers[0] if isinstance(providers[0], str) else providers[0][0]
        self.fell_back = self.provider != first_choice  # e.g. CUDA asked for but failed to start

    def probabilities(self, pages: np.ndarray) -> np.ndarray:
        """uint8 [N, S, S, 3] -> float32 [N, F]: P(atypical) per fold (with D4 TTA: the mean over 8 views)."""
        if pages.dtype != np.uint8 or pages.shape[1:] != (self.patch_size, self.patch_size, 3):
            raise ModelError(f"{self.model_file}: the model takes uint8 [N, {self.patch_size}, {self.patch_size}, 3] "
                             f"pages, got {pages.dtype} {list(pages.shape)}")
        views = 8 if self.tta == "d4" else 1
        step = min(MAX_PAGES_PER_RUN, MAX_IMAGES_PER_RUN // views)
        probs = np.empty((len(pages), len(self.thresholds)), np.float32)
        for start in range(0, len(pages), step):
            chunk = pages[start:start + step]
            if views == 8:  # rotations of the chunk and of its mirror image, as one batch
                batch = np.concatenate([np.rot90(v, k, axes=(1, 2)) for v in (chunk, chunk[:, :, ::-1]) for k in range(4)])
                probs[start:start + len(chunk)] = self._run(batch, 8 * len(chunk)).reshape(8, len(chunk), -1).mean(axis=0)
            else:
                probs[start:start + len(chunk)] = self._run(np.ascontiguousarray(chunk), len(chunk))
        if not np.isfinite(probs).all() or (probs < 0).any() or (probs > 1).any():
            raise ModelError(f"{self.model_file}: the model produced non-finite or out-of-range probabilities")
        return probs

    def _run(self, batch: np.ndarray, n: int) -> np.ndarray:
        out = self.session.run([self.output_name], {self.input_name: batch})[0]
        if out.shape != (n, len(self.thresholds)):
            raise ModelError(f"{self.model_file}: output {self.output_name!r} has shape {list(out.shape)}, expected "
                             f"[{n}, {len(self.thresholds)}] (pages x folds)")
        return out

    def predict(self, pages: np.ndarray) -> Prediction:
        probs = self.probabilities(pages)
        atypical, confidence = vote(probs, self.thresholds)
        return Prediction(atypical, confidence, probs)

    def classify(self, pages: np.ndarray) -> list[dict]:
        """The GC Track-2 answer for each page, in order (see ``results_json``)."""
        return results_json(self.predict(pages))


def results_json(prediction: Prediction) -> list[dict]:
    """One {"class", "confidence"} per page; confidence is P(atypical), always a Python float."""
    return [{"class": "atypical" if a else "normal", "confidence": float(c)}
            for a, c in zip(prediction.atypical.tolist(), prediction.confidence.tolist())]
