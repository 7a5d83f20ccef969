"""Shared fixtures for the tests (runtime/ and training/) (numpy, SimpleITK, onnx, onnxruntime only; no torch,
no Pillow): a tiny ONNX ensemble in the export format, GC-layout inputs, and stack writers."""

from __future__ import annotations

import json
import shutil
import struct
from pathlib import Path

import numpy as np
import onnx
import pytest
import SimpleITK as sitk
from onnx import TensorProto, helper, numpy_helper

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
SOCKET = "stacked-histopathology-roi-cropouts"
AMIBR_FIXTURE = HERE / "fixtures" / "amibr"  # 16 AMi-Br patches and their manifest
GC_SAMPLE = ROOT.parent / "shared" / "data" / "gc-sample" / "stack_5.tiff"  # optional, beside the repo
GC_SAMPLE_2PAGES = HERE / "fixtures" / "gc_sample_2pages.tiff"  # committed: test/fixtures/make_gc_sample_fixture.py


def make_tiny_ensemble(folder: Path, offsets=(0.0, 0.2, -0.2, 0.4), tta: str = "none", corner: int | None = None,
                       thresholds=None) -> Path:
    """ONNX model with the shipped interface: uint8 'image' [N,128,128,3] -> 'prob'/'logit' [N,F], where
    logit = (mean intensity - 128) / 16 + offset per fold (NaN offsets give non-finite outputs). With
    ``corner`` the mean is over the top-left corner x corner pixels only (not rotation invariant)."""
    nodes = [helper.make_node("Cast", ["image"], ["x"], to=TensorProto.FLOAT)]
    inits = [numpy_helper.from_array(np.array([1, 2, 3], np.int64), "axes"),
             numpy_helper.from_array(np.array([1], np.int64), "one"),
             numpy_helper.from_array(np.array(128.0, np.float32), "centre"),
             numpy_helper.from_array(np.array(16.0, np.float32), "scale"),
             numpy_helper.from_array(np.array([offsets], np.float32), "offsets")]
    if corner:
        nodes.append(helper.make_node("Slice", ["x", "starts", "ends", "slice_axes"], ["xc"]))
        inits += [numpy_helper.from_array(np.array([0, 0], np.int64), "starts"),
                  numpy_helper.from_array(np.array([corner, corner], np.int64), "ends"),
                  numpy_helper.from_array(np.array([1, 2], np.int64), "slice_axes")]
    nodes += [
        helper.make_node("ReduceMean", ["xc" if corner else "x", "axes"], ["m"], keepdims=0),
        helper.make_node("Unsqueeze", ["m", "one"], ["m1"]),
        helper.make_node("Sub", ["m1", "centre"], ["c"]),
        helper.make_node("Div", ["c", "scale"], ["z"]),
        helper.make_node("Add", ["z", "offsets"], ["logit"]),
        helper.make_node("Sigmoid", ["logit"], ["prob"]),
    ]
    graph = helper.make_graph(nodes, "tiny",
                              [helper.make_tensor_value_info("image", TensorProto.UINT8, ["N", 128, 128, 3])],
                              [helper.make_tensor_value_info("prob", TensorProto.FLOAT, ["N", len(offsets)]),
                               helper.make_tensor_value_info("logit", TensorProto.FLOAT, ["N", len(offsets)])], inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)])
    model.ir_version = 9
    onnx.checker.check_model(model)
    folder.mkdir(parents=True, exist_ok=True)
    onnx.save(model, str(folder / "ensemble.onnx"))
    thresholds = [0.5] * len(offsets) if thresholds is None else thresholds
    (folder / "ensemble.json").write_text(json.dumps({
        "format": "amf-mtl-ensemble", "version": 1, "model_file": "ensemble.onnx", "input_name": "image",
        "output_name": "prob", "patch_size": 128, "vote": "majority", "tie": "mean-probability",
        "confidence": "mean-probability", "tta": tta,
        "folds": [{"name": f"fold{i}", "threshold": t} for i, t in enumerate(thresholds)]}))
    return folder


def tiny_model_probs(pages: np.ndarray, offsets=(0.0, 0.2, -0.2, 0.4), corner: int | None = None) -> np.ndarray:
    """What make_tiny_ensemble's model computes, in numpy: float [N, F]."""
    region = pages[:, :corner, :corner] if corner else pages
    mean = region.reshape(len(pages), -1).mean(axis=1, dtype=np.float64)
    return 1 / (1 + np.exp(-((mean[:, None] - 128) / 16 + np.asarray(offsets)[None])))


def write_inputs(root: Path, image_name: str | None = "stack.tif", slug: str = SOCKET,
                 relative_path: str = f"images/{SOCKET}") -> Path:
    """inputs.json in GC layout; returns the socket folder (created)."""
    root.mkdir(parents=True, exist_ok=True)
    (root / "inputs.json").write_text(json.dumps([{
        "file": None, "image": {"name": image_name}, "value": None,
        "interface": {"slug": slug, "kind": "Image", "super_kind": "Image", "relative_path": relative_path}}]))
    folder = root / relative_path
    folder.mkdir(parents=True, exist_ok=True)
    return folder


def save_stack(path: Path, pages: np.ndarray | list[np.ndarray]) -> Path:
    """SimpleITK writer: [N, H, W] or [N, H, W, C] -> multi-page TIFF (deflate) or MetaImage, by suffix."""
    pages = np.stack(pages) if isinstance(pages, list) else pages
    image = sitk.GetImageFromArray(pages, isVector=pages.ndim == 4)
    if path.suffix.lower() == ".mha":
        sitk.WriteImage(image, str(path), useCompression=True)
    else:
        sitk.WriteImage(image, str(path), useCompression=True, compressor="Deflate")
    return path


def write_tiff(path: Path, pages: list[np.ndarray], colormap: np.ndarray | list[np.ndarray] | None = None) -> Path:
    """A plain uncompressed little-endian TIFF, one strip per page, written byte by byte: pages [H, W]
    (gray, or palette indices with ``colormap`` uint16 [3, 2 ** bits], or a list of one per page) or
    [H, W, C] (RGB, RGBA, gray + alpha), 8 or 16 bits; pages may differ. For what SimpleITK cannot write."""
    out = bytearray(b"II*\x00\x00\x00\x00\x00")
    link = 4  # where the offset of the next page directory goes
    maps = colormap if isinstance(colormap, list) else [colormap] * len(pages)
    for page, colormap in zip(pages, maps):
        page = np.ascontiguousarray(page, dtype=page.dtype.newbyteorder("<"))
        height, width = page.shape[:2]
        samples = 1 if page.ndim == 2 else page.shape[2]
        strip = len(out)
        out += page.tobytes() + b"\x00" * (page.nbytes % 2)
        photometric = 3 if colormap is not None else 1 if samples <= 2 else 2
        entries = [(256, 4, [width]), (257, 4, [height]), (258, 3, [page.itemsize * 8] * samples), (259, 3, [1]),
                   (262, 3, [photometric]), (273, 4, [strip]), (277, 3, [samples]), (278, 4, [height]),
                   (279, 4, [page.nbytes]), (284, 3, [1])]
        if samples in (2, 4):
            entries.append((338, 3, [2]))  # ExtraSamples: unassociated alpha
        if colormap is not None:
            entries.append((320, 3, np.asarray(colormap, np.uint16).ravel().tolist()))
        ifd = len(out)
        values = ifd + 2 + 12 * len(entries) + 4
        directory, extra = struct.pack("<H", len(entries)), bytearray()
        for tag, typ, items in entries:
            packed = struct.pack(f"<{len(items)}{'H' if typ == 3 else 'I'}", *items)
            if len(packed) <= 4:
                directory += struct.pack("<HHI", tag, typ, len(items)) + packed.ljust(4, b"\x00")
            else:
                directory += struct.pack("<HHII", tag, typ, len(items), values + len(extra))
                extra += packed
        struct.pack_into("<I", out, link, ifd)
        link = ifd + len(directory)
        out += directory + b"\x00\x00\x00\x00" + extra
    path.write_bytes(bytes(out))
    return path


def real_pages(n: int = 4) -> np.ndarray:
    """n real 128x128 RGB patches (the committed AMi-Br fixture, cycled): uint8 [n, 128, 128, 3]."""
    files = sorted((AMIBR_FIXTURE / "patches").glob("*/*.png"))
    return np.stack([sitk.GetArrayFromImage(sitk.ReadImage(str(files[i % len(files)])))[..., :3] for i in range(n)])


@pytest.fixture
def tiny_weights(tmp_path) -> Path:
    return make_tiny_ensemble(tmp_path / "weights")


@pytest.fixture
def gc_input(tmp_path) -> Path:
    """A copy of the committed 16-page test input."""
    return Path(shutil.copytree(HERE / "input", tmp_path / "input"))
