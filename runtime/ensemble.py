"""The exported fold ensemble at run time: onnxruntime sessions, optional test-time augmentation, the vote.

Reads the ensemble spec and its ONNX model (runtime/contract.py); the device choice is runtime/device.py's.
"""

from __future__ import annotations

import sys
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from runtime import tta
from runtime.contract import TTA_VIEWS, VOTE_RULES, read_spec
from runtime.device import CPU, cpu_threads, cuda_session, load_onnxruntime, session_options, wants_cuda
from runtime.errors import ModelError
from runtime.forked import SessionWorker
from runtime.vote import vote

MAX_IMAGES_PER_RUN = 128  # bounded memory: 64 pages per run, or 16 pages of 8 views with D4 TTA
MAX_PAGES_PER_RUN = 64
THREADED_LIBRARIES = {"onnxruntime", "torch"}  # once loaded, worker processes are not forked (see Ensemble)


@dataclass
class Prediction:
    atypical: np.ndarray  # bool [N]
    confidence: np.ndarray  # float [N], P(atypical) of the ensemble
    fold_probs: np.ndarray  # float32 [N, F]


class Ensemble:
    """``tta`` and ``vote`` override the spec's test-time augmentation and vote rule; ``providers`` the device
    choice of runtime/device.py, which ``n_pages`` (the stack's size) informs. ``device_note`` says why CUDA was
    wanted but does not run (None otherwise).

    On the CPU, the spec's per-fold CPU graphs run when it has them (else the standard graph): in worker
    processes, one per CPU up to one per fold, when this process has loaded neither onnxruntime nor PyTorch
    (process.py, ``amf predict``: the builds and the element-wise steps then use every core; a forked child must
    not inherit those libraries' threads and locks), else one session per fold in this process. ``layout`` says
    which. ``close`` ends the workers."""

    def __init__(self, weights_dir: str | Path, providers: list | None = None, tta: str | None = None,
                 n_pages: int | None = None, vote: str | None = None) -> None:
        self.spec = read_spec(weights_dir)
        self.model_file, self.thresholds = self.spec.model_file, self.spec.thresholds
        if tta is not None and tta not in TTA_VIEWS:  # the spec's own mode and rule are checked by read_spec
            raise ModelError(f"unknown tta {tta!r} ({' | '.join(TTA_VIEWS)})")
        if vote is not None and vote not in VOTE_RULES:
            raise ModelError(f"unknown vote rule {vote!r} ({' | '.join(VOTE_RULES)})")
        self.tta, self.vote = tta or self.spec.tta, vote or self.spec.vote
        self.device_note: str | None = None
        self._sessions: list = []
        self._workers: list[SessionWorker] = []
        first = None if providers is None else (providers[0] if isinstance(providers[0], str) else providers[0][0])
        session = None
        if (first is None and wants_cuda(n_pages)) or first not in (None, CPU):
            ort = load_onnxruntime()
            options = session_options(ort, cpu_threads())
            if providers is None:
                session, self.device_note = cuda_session(ort, self.model_file, options)
            else:
                session = self._load(ort, self.model_file, options, providers)
        if session is not None:
            self._sessions, self.layout = [session], "one graph"
        elif self.spec.cpu_model_files:
            self._start_cpu_graphs(self.spec.cpu_model_files)
        else:
            ort = load_onnxruntime()
            self._sessions = [self._load(ort, self.model_file, session_options(ort, cpu_threads()), [CPU])]
            self.layout = "one graph"
        self.provider = self._sessions[0].get_providers()[0] if self._sessions else CPU

    def _start_cpu_graphs(self, files: list[Path]) -> None:
        threads = cpu_threads()
        n_workers = min(threads, len(files))
        if n_workers > 1 and not THREADED_LIBRARIES & sys.modules.keys():
            groups = [list(g) for g in np.array_split(np.array(files, dtype=object), n_workers)]
            for group in groups:
                self._workers.append(SessionWorker(group, max(1, threads // n_workers), self.spec.input_name,
                                                   self.spec.output_name))
            for worker in self._workers:
                worker.wait_ready()
            self.layout = f"{len(files)} fold graphs in {n_workers} worker processes"
            return
        ort = load_onnxruntime()
        options = session_options(ort, threads)
        self._sessions = [self._load(ort, f, options, [CPU]) for f in files]
        self.layout = f"{len(files)} fold graphs"

    def _load(self, ort, model_file: Path, options, providers: list):
        try:
            session = ort.InferenceSession(str(model_file), options, providers=providers)
        except Exception as exc:  # noqa: BLE001 - onnxruntime raises several unrelated types
            raise ModelError(f"{model_file}: cannot load the ONNX ensemble ({exc})") from None
        inputs, outputs = [i.name for i in session.get_inputs()], [o.name for o in session.get_outputs()]
        if self.spec.input_name not in inputs or self.spec.output_name not in outputs:
            raise ModelError(f"{model_file}: expected input {self.spec.input_name!r} and output "
                             f"{self.spec.output_name!r}, the graph has inputs {inputs} and outputs {outputs}")
        return session

    def close(self) -> None:
        for worker in self._workers:
            worker.close()
        self._workers = []

    def __del__(self) -> None:
        if getattr(self, "_workers", None):
            self.close()

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
        for worker in self._workers:
            worker.submit(batch)
        parts = [w.result() for w in self._workers] or [
            s.run([self.spec.output_name], {self.spec.input_name: batch})[0] for s in self._sessions]
        out = np.concatenate(parts, axis=1)
        if out.shape != (len(batch), len(self.thresholds)):
            raise ModelError(f"{self.model_file}: output {self.spec.output_name!r} has shape {list(out.shape)}, "
                             f"expected [{len(batch)}, {len(self.thresholds)}] (pages x folds)")
        return out

    def predict(self, pages: np.ndarray) -> Prediction:
        probs = self.probabilities(pages)
        atypical, confidence = vote(probs, self.thresholds, self.vote, self.spec.member_of)
        return Prediction(atypical, confidence, probs)
