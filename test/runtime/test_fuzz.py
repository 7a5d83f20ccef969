"""Fuzz the stack reader (test/fuzz_stack.py) in a subprocess: a hang, a crash in native code (ITK, libtiff)
or any exception but InputError fails this test. About 3 s for 400 cases on 2 cores."""

import subprocess
import sys
from pathlib import Path


def test_stack_reader_fuzz_raises_only_input_errors_and_never_hangs_or_crashes():
    script = Path(__file__).parent / "fuzz_stack.py"
    proc = subprocess.run([sys.executable, str(script), "400"], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0 and "fuzz: ok" in proc.stdout, (
        f"exit {proc.returncode} (negative: killed by signal)\n{proc.stdout[-3000:]}{proc.stderr[-3000:]}")
