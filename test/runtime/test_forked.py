"""runtime/forked.py: an array read in a forked child comes back to the parent, or its error does."""

from __future__ import annotations

import os
import signal

import numpy as np
import pytest

from runtime.errors import InputError
from runtime.forked import ForkedRead, receive, send


def pages_of(n: int) -> np.ndarray:
    return np.arange(n * 12, dtype=np.uint8).reshape(n, 2, 2, 3)


def refuse(name: str) -> np.ndarray:
    raise InputError(f"{name}: not a TIFF stack")


def crash() -> np.ndarray:
    raise KeyError("deep in the reader")


def test_array_comes_back_from_another_process():
    pages, seconds = ForkedRead(lambda n: pages_of(n) + (os.getpid() != PARENT), 5).result()
    np.testing.assert_array_equal(pages, pages_of(5) + 1)  # + 1: computed in another process
    assert pages.dtype == np.uint8 and 0 <= seconds < 5


def test_input_error_is_raised_in_the_parent_with_its_message():
    with pytest.raises(InputError, match="stack.tif: not a TIFF stack"):
        ForkedRead(refuse, "stack.tif").result()


def test_other_exception_comes_back_with_the_child_traceback():
    with pytest.raises(RuntimeError, match=r"(?s)in the child process: Traceback.*KeyError: 'deep in the reader'"):
        ForkedRead(crash).result()


def test_child_that_dies_without_answering_is_an_error():
    with pytest.raises(RuntimeError, match="ended without an answer"):
        ForkedRead(lambda: os.kill(os.getpid(), signal.SIGKILL)).result()


PARENT = os.getpid()


def is_open(fd: int) -> bool:
    try:
        os.fstat(fd)
    except OSError:
        return False
    return True


def test_a_child_keeps_none_of_the_descriptors_it_inherited_but_its_own():
    """A pipe of the parent's left open in a child would hide the pipe's end from its reader (runtime/ensemble.py's
    workers, several ensembles in one process)."""
    read, write = os.pipe()
    try:
        in_child, _ = ForkedRead(lambda: np.array([is_open(read), is_open(write), is_open(2)])).result()
        assert in_child.tolist() == [False, False, True] and is_open(read) and is_open(write)
    finally:
        os.close(read)
        os.close(write)


def test_a_frame_cut_off_midway_reads_as_the_end():
    read, write = os.pipe()
    send(write, {"seconds": 0.1}, pages_of(2))
    os.close(write)
    whole = os.read(read, 1 << 16)
    os.close(read)
    for cut in (3, 20, len(whole) - 1):
        read, write = os.pipe()
        os.write(write, whole[:cut])
        os.close(write)
        assert receive(read) is None
        os.close(read)
    read, write = os.pipe()
    os.write(write, whole)
    os.close(write)
    header, array = receive(read)
    assert header["seconds"] == 0.1 and np.array_equal(array, pages_of(2)) and receive(read) is None
