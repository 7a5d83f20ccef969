"""Fuzz the stack reader with mutated real TIFF and MHA bytes: only InputError may escape.

Run by test_fuzz.py in a subprocess with a time limit, so that a hang (or a crash in ITK/libtiff) fails the
test instead of blocking or killing pytest; each case also has a hypothesis deadline.
    python test/fuzz_stack.py [examples]
"""

import atexit
import shutil
import sys
import tempfile
from datetime import timedelta
from pathlib import Path

import numpy as np
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

TEST = Path(__file__).resolve().parents[1]  # test/, beside the runtime package
sys.path[:0] = [str(TEST.parent), str(TEST)]
from conftest import GC_SAMPLE_2PAGES, real_pages, save_stack, write_tiff  # noqa: E402

from runtime.stack import InputError, read_stack  # noqa: E402

WORK = Path(tempfile.mkdtemp(prefix="amf-fuzz-"))  # kept after a crash: the last case*.* is the culprit
atexit.register(shutil.rmtree, WORK, ignore_errors=True)
small = real_pages(3)[:, 48:80, 40:88]  # 32 x 48 pages keep each case fast
SEEDS = {
    "gc.tiff": GC_SAMPLE_2PAGES.read_bytes(),  # GC's own encoder: deflate, one strip per page
    "itk.tif": save_stack(WORK / "itk.tif", small).read_bytes(),
    "palette.tif": write_tiff(WORK / "palette.tif", list(small[..., 0]),
                              np.tile(np.arange(256) * 257, (3, 1))).read_bytes(),
    "zip.mha": save_stack(WORK / "zip.mha", small).read_bytes(),
    "raw.mha": save_stack(WORK / "raw.mha", small[:, :, :, 0].astype(np.uint16)).read_bytes(),
}

mutation = st.tuples(st.sampled_from(["set", "cut", "insert", "zero"]), st.integers(0, 2 ** 20), st.integers(0, 255))


@settings(max_examples=int(sys.argv[1]) if len(sys.argv) > 1 else 300, deadline=timedelta(seconds=5), database=None,
          suppress_health_check=list(HealthCheck))
@given(seed=st.sampled_from(sorted(SEEDS)), mutations=st.lists(mutation, min_size=1, max_size=6))
def fuzz(seed: str, mutations: list) -> None:
    data = bytearray(SEEDS[seed])
    for kind, at, value in mutations:
        at %= max(1, len(data))
        if kind == "set" and data:
            data[at] = value
        elif kind == "cut":
            del data[at:]
        elif kind == "insert":
            data[at:at] = bytes([value]) * 16
        elif kind == "zero":
            data[at:at + 64] = bytes(len(data[at:at + 64]))
    path = WORK / f"case{Path(seed).suffix}"
    path.write_bytes(bytes(data))
    try:
        pages = read_stack(path)
    except InputError:
        return
    assert pages.dtype == np.uint8 and pages.ndim == 4 and pages.shape[1:] == (128, 128, 3) and len(pages) >= 1


if __name__ == "__main__":
    fuzz()
    print("fuzz: ok")
