"""The ways of running an exported ensemble's graphs, one class each. A runner's one job: uint8 pages
[N, S, S, 3] in, float32 [N, members] probabilities out (``run``); ``provider`` and ``layout`` say where and how;
``close`` ends what it started.

- :class:`InProcess`: onnxruntime sessions in this process, on the CPU: the spec's per-member CPU graphs (else the
  standard graph), their outputs side by side.
- :class:`Forked`: the same CPU graphs in forked worker processes (runtime/forked.py), the members split between
  them: their session builds and runs overlap, which threads in one process cannot (onnxruntime holds the GIL
  while it builds a session). Only a process that has not loaded PyTorch and has built no onnxruntime session may
  fork them (:func:`runtime.forked.fork_is_safe`).
- :class:`CudaGraph`: the standard graph in one session on onnxruntime's CUDA provider.

:func:`open_runner` picks one: CUDA where runtime/device.py says so and it starts, else the CPU graphs, forked
when the caller allows it (``fork``) and there are at least two CPUs and two graphs.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from runtime.contract import EnsembleSpec
from runtime.device import CPU, cpu_threads, cuda_session, wants_cuda
from runtime.errors import ModelError
from runtime.forked import SessionWorker, fork_is_safe
from runtime.session import CPU_IMAGES_PER_RUN, build_session, load_onnxruntime, run_sessions


class InProcess:
    """One CPU session per graph in this process, ``threads`` intra-op threads each (``prefused``:
    runtime/session.py)."""

    def __init__(self, files: list[Path], input_name: str, output_name: str, threads: int,
                 prefused: bool = False) -> None:
        self._names = input_name, output_name
        self._sessions = [build_session(f, [CPU], threads, input_name, output_name, prefused) for f in files]
        self.provider = CPU
        self.layout = f"{len(files)} graphs in this process" if len(files) > 1 else "one graph"

    def run(self, batch: np.ndarray) -> np.ndarray:
        return run_sessions(self._sessions, batch, *self._names, CPU_IMAGES_PER_RUN)

    def close(self) -> None:
        self._sessions = []


class CudaGraph:
    """The standard graph in one CUDA session, as :func:`runtime.device.cuda_session` started it."""

    def __init__(self, session, input_name: str, output_name: str) -> None:
        self._session, self._names = session, (input_name, output_name)
        self.provider = session.get_providers()[0]
        self.layout = "one graph"

    def run(self, batch: np.ndarray) -> np.ndarray:
        return run_sessions([self._session], batch, *self._names)

    def close(self) -> None:
        self._session = None


class Forked:
    """The graphs split in order between ``n_workers`` forked :class:`SessionWorker` processes, ``threads`` CPU
    threads shared out between them. A call sends the batch to every worker and reads every reply before it
    raises the first error, so that no reply is left for the next call to read; a worker that ended is started
    again at the next call. onnxruntime is imported here, before the workers are forked: they inherit it instead of
    each importing it after the fork (process.py's cold start is shorter: docs/performance.md), and with
    no session built it runs no thread that a fork could cut off."""

    def __init__(self, files: list[Path], input_name: str, output_name: str, threads: int, n_workers: int,
                 prefused: bool = False) -> None:
        if not fork_is_safe():
            raise RuntimeError("worker processes are forked only by a process that has not loaded PyTorch and has "
                               "built no onnxruntime session (open the ensemble with fork=False)")
        load_onnxruntime()
        self._groups = [list(g) for g in np.array_split(np.array(files, dtype=object), n_workers)]
        self._args = max(1, threads // n_workers), input_name, output_name, prefused
        self._workers: list[SessionWorker] = []
        self.provider = CPU
        self.layout = f"{len(files)} graphs in {n_workers} worker processes"
        self._start(range(n_workers))

    @property
    def pids(self) -> list[int]:
        return [w.pid for w in self._workers]

    def _start(self, slots) -> None:
        """(Re)start the workers of these slots and wait until each has built its sessions."""
        slots = list(slots)
        for i in slots:
            worker = SessionWorker(self._groups[i], *self._args)
            if i < len(self._workers):
                self._workers[i] = worker
            else:
                self._workers.append(worker)
        try:
            self._collect(lambda w: w.wait_ready(), [self._workers[i] for i in slots])
        except ModelError:
            self.close()
            raise

    def run(self, batch: np.ndarray) -> np.ndarray:
        if not self._workers:
            raise RuntimeError("the runner is closed")
        ended = [i for i, w in enumerate(self._workers) if w.ended]
        if ended:
            for i in ended:
                self._workers[i].close()
            self._start(ended)
        sent, failures = [], []
        for worker in self._workers:
            try:
                worker.submit(batch)
                sent.append(worker)
            except ModelError as exc:
                failures.append(exc)
        parts = self._collect(lambda w: w.result(), sent, failures)
        return np.concatenate(parts, axis=1)

    @staticmethod
    def _collect(answer, workers: list[SessionWorker], failures: list[ModelError] | None = None) -> list:
        """``answer(worker)`` for every worker, all of them read; then the first failure is raised, if any."""
        failures = list(failures or [])
        answers = []
        for worker in workers:
            try:
                answers.append(answer(worker))
            except ModelError as exc:
                failures.append(exc)
        if failures:
            raise failures[0]
        return answers

    def close(self) -> None:
        for worker in self._workers:
            worker.close()
        self._workers = []


Runner = InProcess | Forked | CudaGraph


def open_runner(spec: EnsembleSpec, fork: bool = False, n_pages: int | None = None) -> tuple[Runner, str | None]:
    """The runner for ``spec`` and, when CUDA was wanted but cannot start, why (else None). ``fork``: the caller
    allows worker processes (:func:`runtime.forked.fork_is_safe` must hold); ``n_pages``: the stack's size, for
    the device choice (runtime/device.py)."""
    threads = cpu_threads()
    note = None
    if wants_cuda(n_pages):
        session, note = cuda_session(spec.model_file, spec.input_name, spec.output_name, threads)
        if session is not None:
            return CudaGraph(session, spec.input_name, spec.output_name), None
        fork = False  # that try may have built a session here, whose threads' locks a forked worker must not inherit
    files, prefused = spec.cpu_model_files or [spec.model_file], bool(spec.cpu_model_files)
    n_workers = min(threads, len(files))
    if fork and n_workers > 1:
        return Forked(files, spec.input_name, spec.output_name, threads, n_workers, prefused), note
    return InProcess(files, spec.input_name, spec.output_name, threads, prefused), note
