"""Progress lines (runtime/progress.py): rewritten in place in a terminal, separate plain lines in a log."""

from __future__ import annotations

import io

from runtime.progress import Progress, progress_range


class Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def shown(stream: io.StringIO, interval: float, steps: int) -> str:
    """What ``steps`` updates ("step 0", "step 1", ...) leave in ``stream``."""
    with Progress(stream, interval=interval) as progress:
        for i in range(steps):
            progress.update(f"step {i}")
    return stream.getvalue()


def test_in_a_log_each_shown_update_is_a_line_of_its_own():
    assert shown(io.StringIO(), 0, 3) == "step 0\nstep 1\nstep 2\n"


def test_in_a_log_a_long_interval_keeps_the_first_and_the_last():
    assert shown(io.StringIO(), 3600, 5) == "step 0\nstep 4\n"


def test_in_a_terminal_the_line_is_rewritten_and_ended():
    assert shown(Terminal(), 3600, 3) == "\rstep 0\rstep 1\rstep 2\n"


def test_progress_range_counts_the_patches_done():
    log = io.StringIO()
    assert list(progress_range(10, 4, "scored", log)) == [0, 4, 8]
    assert log.getvalue().splitlines() == ["scored: 4/10 patches", "scored: 10/10 patches"]
