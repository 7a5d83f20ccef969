"""Work in forked child processes: the stack read beside the model load, and the member graphs' workers.

onnxruntime holds the GIL while it builds a session, so threads cannot overlap a session build with anything;
processes can. Parent and child talk through pipes in frames: a JSON header (what follows: dtype and shape, or
an error) and an array's raw bytes. No pickle. Every child starts by closing the descriptors it inherited but its
own pipe ends (:func:`fork_keeping`).
"""

from __future__ import annotations

import json
import os
import struct
import sys
import time
import traceback
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from runtime.device import CPU
from runtime.errors import InputError, ModelError
from runtime.session import CPU_IMAGES_PER_RUN, build_session, one_line, onnxruntime_is_idle, run_sessions

_SIZES = struct.Struct("<II")  # header bytes, payload bytes


def send(fd: int, header: dict, array: np.ndarray | None = None) -> None:
    """One frame: ``header`` (with the array's dtype and shape added), then the array's bytes."""
    payload = b"" if array is None else np.ascontiguousarray(array).tobytes()
    if array is not None:
        header = {**header, "dtype": array.dtype.str, "shape": list(array.shape)}
    data = json.dumps(header).encode()
    view = memoryview(_SIZES.pack(len(data), len(payload)) + data + payload)
    while view:
        view = view[os.write(fd, view):]


def receive(fd: int) -> tuple[dict, np.ndarray | None] | None:
    """The next frame's (header, array or None); None at the end of the stream or of a cut-off frame."""
    sizes = _read_exactly(fd, _SIZES.size)
    if sizes is None:
        return None
    n_header, n_payload = _SIZES.unpack(sizes)
    text, payload = _read_exactly(fd, n_header), _read_exactly(fd, n_payload)
    if text is None or payload is None:
        return None
    header = json.loads(text)
    if "dtype" not in header:
        return header, None
    return header, np.frombuffer(bytearray(payload), np.dtype(header["dtype"])).reshape(header["shape"])


def _read_exactly(fd: int, n: int) -> bytes | None:
    chunks, left = [], n
    while left:
        chunk = os.read(fd, min(left, 1 << 20))
        if not chunk:
            return None
        chunks.append(chunk)
        left -= len(chunk)
    return b"".join(chunks)


def fork_keeping(*keep: int) -> int:
    """``os.fork()``, and in the child every inherited descriptor closed but stdin, stdout, stderr and ``keep``.
    A fork copies all of the parent's descriptors (close-on-exec does not act on a fork), and a pipe's reader
    sees its end only when every copy of the write end is closed: a worker holding the request pipe of another
    worker, of its own ensemble or of another one in this process, would keep that worker, and the ``close``
    that waits for it, waiting forever. Closing everything else, as ``subprocess`` does (``close_fds``), also
    covers descriptors this module does not know of."""
    pid = os.fork()
    if pid == 0:
        start = 3
        for fd in sorted(keep):
            os.closerange(start, fd)
            start = fd + 1
        os.closerange(start, os.sysconf("SC_OPEN_MAX"))
    return pid


class ForkedRead:
    """``ForkedRead(fn, *args).result()`` gives ``(fn(*args), seconds it took)``; an InputError of ``fn`` is raised
    here with its message, any other exception as a RuntimeError carrying the child's traceback. ``fn`` returns
    a numpy array. Call ``result`` once."""

    def __init__(self, fn: Callable[..., np.ndarray], *args: Any) -> None:
        self._read, write = os.pipe()
        self._pid = fork_keeping(write)
        if self._pid:
            os.close(write)
            return
        try:  # the child: answer, then end without running the parent's exit handlers
            start = time.perf_counter()
            try:
                array = np.asarray(fn(*args))
            except InputError as exc:
                send(write, {"input_error": str(exc)})
            except Exception:  # noqa: BLE001 - our bug, told to the parent with its traceback
                send(write, {"traceback": traceback.format_exc()})
            else:
                send(write, {"seconds": time.perf_counter() - start}, array)
        finally:
            os._exit(0)

    def result(self) -> tuple[np.ndarray, float]:
        answer = receive(self._read)
        os.close(self._read)
        _, status = os.waitpid(self._pid, 0)
        if answer is None:
            raise RuntimeError(f"the child process ended without an answer (wait status {status})")
        header, array = answer
        if "input_error" in header:
            raise InputError(header["input_error"])
        if "traceback" in header:
            raise RuntimeError(f"in the child process: {header['traceback']}")
        return array, header["seconds"]


def fork_is_safe() -> bool:
    """Whether this process may fork :class:`SessionWorker` processes: it has not loaded PyTorch, and onnxruntime
    is idle here (:func:`runtime.session.onnxruntime_is_idle`: not loaded, or loaded without a session), since
    a forked child must not inherit their threads' locks. True in a fresh ``process.py`` or ``amf predict``, also
    once a forked runner has loaded onnxruntime for its workers; false in ``amf evaluate``, ``amf calibrate`` and
    the tests' own process."""
    return "torch" not in sys.modules and onnxruntime_is_idle()


class SessionWorker:
    """A forked child that loads member graphs (one onnxruntime CPU session each, ``threads`` threads; ``prefused``:
    runtime/session.py) and answers batches with their probabilities side by side, [N, len(files)], until the
    parent closes the pipes. A failed batch is answered with an error frame, so the pipes stay in step; ``ended``
    is set once the child is gone (its pipe broken or closed), after which the worker answers nothing more."""

    def __init__(self, files: list[Path], threads: int, input_name: str, output_name: str,
                 prefused: bool = False) -> None:
        self.files, self.ended = files, False
        parent_read, child_write = os.pipe()
        child_read, parent_write = os.pipe()
        self._pid = fork_keeping(child_read, child_write)
        if self._pid:
            os.close(child_read)
            os.close(child_write)
            self._read, self._write = parent_read, parent_write
            return
        try:
            _serve(files, threads, input_name, output_name, prefused, child_read, child_write)
        finally:
            os._exit(0)

    @property
    def pid(self) -> int:
        return self._pid

    def wait_ready(self) -> None:
        self._answer()

    def submit(self, batch: np.ndarray) -> None:
        try:
            send(self._write, {}, batch)
        except OSError:  # the child is gone (EPIPE)
            self.ended = True
            raise ModelError(self._ended_message()) from None

    def result(self) -> np.ndarray:
        return self._answer()

    def close(self) -> None:
        if self._pid:
            os.close(self._write)
            os.close(self._read)
            os.waitpid(self._pid, 0)
            self._pid = 0

    def _answer(self) -> np.ndarray | None:
        answer = receive(self._read)
        if answer is None:
            self.ended = True
            raise ModelError(self._ended_message())
        header, array = answer
        if "error" in header:
            raise ModelError(header["error"])
        return array

    def _ended_message(self) -> str:
        return f"{self.files[0]}: the worker process for {len(self.files)} member graph(s) ended"


def _serve(files: list[Path], threads: int, input_name: str, output_name: str, prefused: bool, read: int,
           write: int) -> None:
    try:
        sessions = [build_session(f, [CPU], threads, input_name, output_name, prefused) for f in files]
    except ModelError as exc:
        send(write, {"error": str(exc)})
        return
    send(write, {"ready": True})
    while (request := receive(read)) is not None:
        try:
            probs = run_sessions(sessions, request[1], input_name, output_name, CPU_IMAGES_PER_RUN)
        except Exception as exc:  # noqa: BLE001 - onnxruntime raises several unrelated types
            send(write, {"error": f"{files[0]}: the member graphs failed on a batch ({one_line(exc)})"})
            continue
        send(write, {}, probs)
