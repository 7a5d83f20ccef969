"""Building and running onnxruntime sessions, written once: for every runner (runtime/runners.py), the CUDA start
(runtime/device.py) and the training side's scoring and CPU-graph fusing (training/quantize.py, cpu_graph.py).

onnxruntime is imported through :func:`load_onnxruntime` only, with its telemetry off. :func:`build_session`
gives a session with the runtime's options on the providers asked for and checks that the graph has the input and
the output the caller will use; any failure is a ModelError naming the file (:class:`SessionError` when the session
could not be made at all, which the CUDA start turns into a fallback note). :func:`run_sessions` runs sessions
side by side, on the CPU CPU_IMAGES_PER_RUN images at a time. The module also knows whether this process may
still fork (:func:`onnxruntime_is_idle`): whether it imported onnxruntime first and has built no session.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path
from types import ModuleType

import numpy as np

from runtime.errors import ModelError

# A CPU session runs 4 images at a time, whatever the batch: a run's float activations (the residual stream
# around the int8 convolutions) then stay in the core's cache, and the answers are the same to the bit as one
# run over the batch (each image's computation is its own). Runs of 1, 2, 4, 8 and 16 images were measured
# (docs/performance.md, Candidates): 4 gave the fastest warm runs, its first run within the noise of the best.
CPU_IMAGES_PER_RUN = 4


class SessionError(ModelError):
    """onnxruntime could not make the session (unreadable graph, unknown operator, provider failure); the
    exception onnxruntime raised is its ``__cause__``."""


# What this process has done with onnxruntime, for runtime/forked.py's fork_is_safe: whether this module imported
# it first, and how many sessions build_session built.
_imported_here, _sessions_built = False, 0


def load_onnxruntime() -> ModuleType:
    """onnxruntime with telemetry off: releases after 1.26 write a device ID and a usage database under
    ~/.cache, look up Microsoft's event server, and warn on stderr when HOME is read-only, unless
    ORT_DISABLE_TELEMETRY is set before the first import. Its own log lines are silenced: failures reach us
    as exceptions."""
    global _imported_here
    os.environ["ORT_DISABLE_TELEMETRY"] = "1"
    _imported_here = _imported_here or "onnxruntime" not in sys.modules
    import onnxruntime

    onnxruntime.set_default_logger_severity(4)
    return onnxruntime


def onnxruntime_is_idle() -> bool:
    """onnxruntime is not loaded, or :func:`load_onnxruntime` loaded it and no session has been built here since:
    it then runs no thread of its own (tested), so a forked child inherits no lock another thread holds."""
    return "onnxruntime" not in sys.modules or (_imported_here and not _sessions_built)


def session_options(ort: ModuleType, threads: int, prefused: bool = False):
    """The runtime's session options: all graph optimisations (none for a ``prefused`` graph, one that
    onnxruntime optimised and saved at export: the CPU graphs), ``threads`` intra-op threads, quiet, and no CPU
    memory arena: with one, each session keeps its largest run's activations reserved after the run, for a cold
    start no faster within the noise (``amf predict`` over 1,000 patches in batches of 256: its process tree
    peaked at 560 MB with the arena, 475 MB without; docs/performance.md, Memory)."""
    options = ort.SessionOptions()
    level = ort.GraphOptimizationLevel
    options.graph_optimization_level = level.ORT_DISABLE_ALL if prefused else level.ORT_ENABLE_ALL
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    options.log_severity_level = 3
    options.enable_cpu_mem_arena = False
    return options


def build_session(model: str | Path | bytes, providers: list, threads: int, input_name: str, output_name: str,
                  prefused: bool = False, ort: ModuleType | None = None, label: str | None = None, **kwargs):
    """A session of ``model`` (a file, or a serialised graph with ``label`` naming it in errors) on
    ``providers`` with :func:`session_options`; ``kwargs`` go to ``InferenceSession`` (the CUDA start's
    ``enable_fallback=0``). ``ort``: the onnxruntime module (default :func:`load_onnxruntime`'s)."""
    global _sessions_built
    ort = ort or load_onnxruntime()
    _sessions_built += 1
    name = label or str(model)
    source = model if isinstance(model, bytes) else str(model)
    options = session_options(ort, threads, prefused)
    try:
        session = ort.InferenceSession(source, options, providers=providers, **kwargs)
    except Exception as exc:  # noqa: BLE001 - onnxruntime raises several unrelated types
        raise SessionError(f"{name}: cannot load the ONNX graph ({one_line(exc)})") from exc
    inputs, outputs = [i.name for i in session.get_inputs()], [o.name for o in session.get_outputs()]
    if input_name not in inputs or output_name not in outputs:
        raise ModelError(f"{name}: expected input {input_name!r} and output {output_name!r}, the graph has "
                         f"inputs {inputs} and outputs {outputs}")
    return session


def run_sessions(sessions: list, batch: np.ndarray, input_name: str, output_name: str,
                 images_per_run: int | None = None) -> np.ndarray:
    """Each session's ``output_name`` on ``batch``, side by side: [N, sum of their columns]. ``images_per_run``:
    each session runs on at most that many images at a time (CPU_IMAGES_PER_RUN on the CPU; None: the whole
    batch at once, as on a GPU). Each session runs all its chunks before the next session starts, so that its
    weights stay in the cache between them."""
    step = images_per_run or len(batch) or 1
    chunks = [batch[i:i + step] for i in range(0, len(batch), step)] or [batch]
    return np.concatenate([np.concatenate([s.run([output_name], {input_name: chunk})[0] for chunk in chunks])
                           for s in sessions], axis=1)


def one_line(exc: BaseException, limit: int = 300) -> str:
    """An onnxruntime exception's text on one line, at most ``limit`` characters."""
    return " ".join(str(exc).split())[:limit]
