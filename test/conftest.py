"""Shared fixtures: a tiny torch-free ONNX ensemble in the export format, and GC-layout inputs."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper
from PIL import Image

HERE = Path(__file__).resolve().parent
SOCKET = "stacked-histopathology-roi-cropouts"


def make_tiny_ensemble(folder: Path, offsets=(0.0, 0.2, -0.2, 0.4), tta: str = "none") -> Path:
    """ONNX model with the shipped interface: uint8 'image' [N,128,128,3] -> 'prob'/'logit' [N,F], where
    logit = (mean intensity - 128) / 16 + offset per fold (NaN offsets give non-finite outputs)."""
    nodes = [
        helper.make_node("Cast", ["image"], ["x"], to=TensorProto.FLOAT),
        helper.make_node("ReduceMean", ["x", "axes"], ["m"], keepdims=0),
        helper.make_node("Unsqueeze", ["m", "one"], ["m1"]),
        helper.make_node("Sub", ["m1", "centre"], ["c"]),
        helper.make_node("Div", ["c", "scale"], ["z"]),
        helper.make_node("Add", ["z", "offsets"], ["logit"]),
        helper.make_node("Sigmoid", ["logit"], ["prob"]),
    ]
    inits = [numpy_helper.from_array(np.array([1, 2, 3], np.int64), "axes"),
             numpy_helper.from_array(np.array([1], np.int64), "one"),
             numpy_helper.from_array(np.array(128.0, np.float32), "centre"),
             numpy_helper.from_array(np.array(16.0, np.float32), "scale"),
             numpy_helper.from_array(np.array([offsets], np.float32), "offsets")]
    graph = helper.make_graph(nodes, "tiny", [helper.make_tensor_value_info("image", TensorProto.UINT8, ["N", 128, 128, 3])],
                              [helper.make_tensor_value_info("prob", TensorProto.FLOAT, ["N", len(offsets)]),
                               helper.make_tensor_value_info("logit", TensorProto.FLOAT, ["N", len(offsets)])], inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)])
    model.ir_version = 9
    onnx.checker.check_model(model)
    folder.mkdir(parents=True, exist_ok=True)
    onnx.save(model, str(folder / "ensemble.onnx"))
    (folder / "ensemble.json").write_text(json.dumps({
        "format": "amf-mtl-ensemble", "version": 1, "model_file": "ensemble.onnx", "input_name": "image",
        "output_name": "prob", "patch_size": 128, "vote": "majority", "tie": "mean-probability",
        "confidence": "mean-probability", "tta": tta,
        "folds": [{"name": f"fold{i}", "threshold": 0.5} for i in range(len(offsets))]}))
    return folder


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


def save_tiff(path: Path, pages: list[np.ndarray] | list[Image.Image]) -> Path:
    images = [p if isinstance(p, Image.Image) else Image.fromarray(p) for p in pages]
    images[0].save(path, save_all=True, append_images=images[1:], compression="tiff_deflate")
    return path


def real_pages(n: int = 4) -> list[np.ndarray]:
    files = sorted((HERE / "fixtures" / "amibr" / "patches").glob("*/*.png"))
    return [np.asarray(Image.open(files[i % len(files)]).convert("RGB")) for i in range(n)]


@pytest.fixture
def tiny_weights(tmp_path) -> Path:
    return make_tiny_ensemble(tmp_path / "weights")


@pytest.fixture
def gc_input(tmp_path) -> Path:
    """A copy of the committed 16-page test input."""
    return Path(shutil.copytree(HERE / "input", tmp_path / "input"))
