import subprocess
import sys
from pathlib import Path


def test_stack_reader_fuzz_raises_only_input_errors_and_never_hangs():
    script = Path(__file__).parent / "fuzz_stack.py"
    proc = subprocess.run([sys.executable, str(script), "400"], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0 and "fuzz: ok" in proc.stdout, proc.stdout[-3000:] + proc.stderr[-3000:]
