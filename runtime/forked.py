"""An array read in a forked child process while this process goes on.

process.py reads the input stack on one core while the other loads the model: onnxruntime holds the GIL while it
builds a session, so a thread could not overlap the two; a second process can. The child's answer comes back
through a pipe: one JSON line (time taken, dtype and shape, or the error), then the array's bytes. No pickle.
"""

from __future__ import annotations

import json
import os
import time
import traceback
from collections.abc import Callable
from typing import Any

import numpy as np

from runtime.errors import InputError


class ForkedRead:
    """``ForkedRead(fn, *args).result()`` gives ``(fn(*args), seconds it took)``; an InputError of ``fn`` is raised
    here with its message, any other exception as a RuntimeError carrying the child's traceback. ``fn`` returns
    a numpy array. Call ``result`` once."""

    def __init__(self, fn: Callable[..., np.ndarray], *args: Any) -> None:
        self._read, write = os.pipe()
        self._pid = os.fork()
        if self._pid:
            os.close(write)
            return
        os.close(self._read)  # the child: answer, then end without running the parent's exit handlers
        try:
            with os.fdopen(write, "wb") as pipe:
                _answer(pipe, fn, args)
        finally:
            os._exit(0)

    def result(self) -> tuple[np.ndarray, float]:
        with os.fdopen(self._read, "rb") as pipe:
            header, payload = pipe.readline(), pipe.read()
        _, status = os.waitpid(self._pid, 0)
        if not header:
            raise RuntimeError(f"the child process ended without an answer (wait status {status})")
        answer = json.loads(header)
        if answer.get("input_error") is not None:
            raise InputError(answer["input_error"])
        if answer.get("traceback") is not None:
            raise RuntimeError(f"in the child process: {answer['traceback']}")
        return np.frombuffer(bytearray(payload), np.dtype(answer["dtype"])).reshape(answer["shape"]), answer["seconds"]


def _answer(pipe, fn: Callable[..., np.ndarray], args: tuple) -> None:
    start = time.perf_counter()
    try:
        array = np.asarray(fn(*args))
    except InputError as exc:
        pipe.write(json.dumps({"input_error": str(exc)}).encode() + b"\n")
        return
    except Exception:  # noqa: BLE001 - our bug, told to the parent with its traceback
        pipe.write(json.dumps({"traceback": traceback.format_exc()}).encode() + b"\n")
        return
    header = {"seconds": time.perf_counter() - start, "dtype": array.dtype.str, "shape": array.shape}
    pipe.write(json.dumps(header).encode() + b"\n")
    pipe.write(np.ascontiguousarray(array).data)
