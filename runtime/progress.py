"""A progress line that reads well in a terminal and in a log.

In a terminal the line is rewritten in place (a carriage return before each update). Written to a file or a pipe
(``nohup amf ... > run.log``, CI) each update that is shown is a line of its own: the first, then at most one
every ``interval`` seconds, and the last. Written here rather than taken from tqdm: the runtime installs numpy,
SimpleITK and onnxruntime only, and tqdm writes carriage returns into files too.
"""

from __future__ import annotations

import sys
import time
from collections.abc import Iterator
from typing import TextIO

INTERVAL = 30.0  # seconds between two lines in a log


def is_terminal(stream: TextIO) -> bool:
    return bool(getattr(stream, "isatty", lambda: False)())


class Progress:
    """``update(text)`` as the work advances, ``close()`` (or the end of a ``with`` block) when it ends; ``stream``
    default sys.stdout at the time of the call."""

    def __init__(self, stream: TextIO | None = None, interval: float = INTERVAL) -> None:
        self.stream = stream or sys.stdout
        self.live = is_terminal(self.stream)
        self.interval = interval
        self._shown_at: float | None = None  # when the last line was written
        self._pending: str | None = None  # the latest update not written yet (log form)

    def update(self, text: str) -> None:
        now = time.monotonic()
        if self.live:
            print(f"\r{text}", end="", file=self.stream, flush=True)
            self._shown_at = now
        elif self._shown_at is None or now - self._shown_at >= self.interval:
            print(text, file=self.stream, flush=True)
            self._shown_at, self._pending = now, None
        else:
            self._pending = text

    def close(self) -> None:
        if self.live and self._shown_at is not None:
            print(file=self.stream, flush=True)  # end the live line
        elif self._pending is not None:
            print(self._pending, file=self.stream, flush=True)
        self._shown_at, self._pending = None, None

    def __enter__(self) -> Progress:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def progress_range(total: int, step: int, label: str, stream: TextIO | None = None) -> Iterator[int]:
    """``range(0, total, step)``, the batch starts of ``total`` patches, reporting ``label: done/total patches``
    as each batch ends (a :class:`Progress` on ``stream``)."""
    with Progress(stream) as progress:
        for start in range(0, total, step):
            yield start
            progress.update(f"{label}: {min(start + step, total)}/{total} patches")
