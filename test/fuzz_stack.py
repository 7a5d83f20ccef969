"""Fuzz the stack reader with mutated real TIFF and MHA bytes: only InputError may escape.

Run by test_fuzz.py in a subprocess with a time limit, so that a hang fails the test instead of blocking it.
    python test/fuzz_stack.py [examples]
"""

import sys
import tempfile
from pathlib import Path

import numpy as np
import SimpleITK as sitk
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from model.stack import InputError, read_stack  # noqa: E402

HERE = Path(__file__).resolve().parent
WORK = Path(tempfile.mkdtemp(prefix="amf-fuzz-"))
pages = [np.asarray(Image.open(p).convert("RGB"))[:32, :32] for p in sorted((HERE / "fixtures/amibr/patches").glob("*/*.png"))[:3]]
Image.fromarray(pages[0]).save(WORK / "seed.tif", save_all=True, append_images=[Image.fromarray(p) for p in pages[1:]],
                               compression="tiff_deflate")
sitk.WriteImage(sitk.GetImageFromArray(np.stack(pages), isVector=True), str(WORK / "seed.mha"))
SEEDS = {".tif": (WORK / "seed.tif").read_bytes(), ".mha": (WORK / "seed.mha").read_bytes()}

mutation = st.one_of(
    st.tuples(st.just("flip"), st.integers(0, 10_000), st.integers(0, 255)),
    st.tuples(st.just("cut"), st.integers(0, 10_000), st.integers(0, 0)),
    st.tuples(st.just("insert"), st.integers(0, 10_000), st.integers(0, 255)),
)


@settings(max_examples=int(sys.argv[1]) if len(sys.argv) > 1 else 300, deadline=None, database=None,
          suppress_health_check=list(HealthCheck))
@given(suffix=st.sampled_from(sorted(SEEDS)), mutations=st.lists(mutation, min_size=1, max_size=6))
def fuzz(suffix: str, mutations: list) -> None:
    data = bytearray(SEEDS[suffix])
    for kind, at, value in mutations:
        at %= max(1, len(data))
        if kind == "flip" and data:
            data[at] = value
        elif kind == "cut":
            del data[at:]
        elif kind == "insert":
            data[at:at] = bytes([value]) * 16
    path = WORK / f"case{suffix}"
    path.write_bytes(bytes(data))
    try:
        out = read_stack(path)
    except InputError:
        return
    assert out.dtype == np.uint8 and out.ndim == 4 and out.shape[1:] == (128, 128, 3) and len(out) >= 1


if __name__ == "__main__":
    fuzz()
    print("fuzz: ok")
