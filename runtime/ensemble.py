"""The exported fold ensemble at run time: one onnxruntime session, optional test-time augmentation, the vote.

Reads the ensemble spec and its ONNX model (runtime/contract.py); the device choice is runtime/device.py's.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from runtime import tta
from runtime.contract import TTA_VIEWS, read_spec
from runtime.device import CPU, cpu_threads, create_session, load_onnxruntime, wants_cuda
from runtime.errors import ModelError
from runtime.vote import vote

MAX_IMAGES_PER_RUN = 128  # bounded memory: 64 pages per run, or 16 pages of 8 views with D4 TTA
MAX_PAGES_PER_RUN = 64


@dataclass
class Prediction:
    atypical: np.ndarray  # bool [N]
    confidence: np.ndarray  # float [N], P(atypical) of the ensemble
    fold_probs: np.ndarray  # float32 [N, F]


def _session_options(ort):
    so = ort.SessionOptions()
    so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    so.intra_op_num_threads = cpu_threads()
    so.inter_op_num_threads = 1
    so.log_severity_level = 3
    return so


class Ensemble:
    """``tta`` overrides the spec's mode; ``providers`` the device choice of runtime/device.py, which
    ``n_pages`` (the stack's size) informs. ``device_note`` says why CUDA was wanted but does not run (None
    otherwise)."""

    def __init__(self, weights_dir: str | Path, providers: list | None = None, tta: str | None = None,
                 n_pages: int | None = None) -> None:
        ort = load_onnxruntime()
        self.spec = read_spec(weights_dir)
        self.model_file, self.thresholds = self.spec.model_file, self.spec.thresholds
        if tta is not None and tta not in TTA_VIEWS:  # the spec's own mode is checked by read_spec
            raise ModelError(f"unknown tta {tta!r} ({' | '.join(TTA_VIEWS)})")
        self.tta = tta or self.spec.tta
        options = _session_options(ort)
        self.device_note: str | None = None
        try:
            if providers is None:
                self.session, self.device_note = create_session(ort, self.model_file, options, wants_cuda(n_pages),
                                                                self.spec.cpu_model_file)
            else:
                on_cpu = providers[0] == CPU and self.spec.cpu_model_file
                self.session = ort.InferenceSession(str(self.spec.cpu_model_file if on_cpu else self.model_file),
                                                    options, providers=providers)
        except Exception as exc:  # noqa: BLE001 - onnxruntime raises several unrelated types
            raise ModelError(f"{self.model_file}: cannot load the ONNX ensemble ({exc})") from None
        inputs, outputs = [i.name for i in self.session.get_inputs()], [o.name for o in self.session.get_outputs()]
        if self.spec.input_name not in inputs or self.spec.output_name not in outputs:
            raise ModelError(f"{self.model_file}: expected input {self.spec.input_name!r} and output "
                             f"{self.spec.output_name!r}, the graph has inputs {inputs} and outputs {outputs}")
        self.provider = self.session.get_providers()[0]
        if self.provider == CPU and self.spec.cpu_model_file:
            self.model_file = self.spec.cpu_model_file

    def probabilities(self, pages: np.ndarray) -> np.ndarray:
        """uint8 [N, S, S, 3] -> float32 [N, F]: P(atypical) per fold (with TTA: the mean over the views)."""
        size = self.spec.patch_size
        if pages.dtype != np.uint8 or pages.shape[1:] != (size, size, 3):
            raise ModelError(f"{self.model_file}: the model takes uint8 [N, {size}, {size}, 3] pages, "
                             f"got {pages.dtype} {list(pages.shape)}")
        step = min(MAX_PAGES_PER_RUN, MAX_IMAGES_PER_RUN // TTA_VIEWS[self.tta])
        probs = np.empty((len(pages), len(self.thresholds)), np.float32)
        for start in range(0, len(pages), step):
            chunk = pages[start:start + step]
            probs[start:start + len(chunk)] = tta.mean_over_views(self._run(tta.views(chunk, self.tta)), len(chunk))
        if not np.isfinite(probs).all() or (probs < 0).any() or (probs > 1).any():
            raise ModelError(f"{self.model_file}: the model produced non-finite or out-of-range probabilities")
        return probs

    def _run(self, batch: np.ndarray) -> np.ndarray:
        out = self.session.run([self.spec.output_name], {self.spec.input_name: batch})[0]
        if out.shape != (len(batch), len(self.thresholds)):
            raise ModelError(f"{self.model_file}: output {self.spec.output_name!r} has shape {list(out.shape)}, "
                             f"expected [{len(batch)}, {len(self.thresholds)}] (pages x folds)")
        return out

    def predict(self, pages: np.ndarray) -> Prediction:
        probs = self.probabilities(pages)
        atypical, confidence = vote(probs, self.thresholds)
        return Prediction(atypical, confidence, probs)
