"""Export trained fold checkpoints as one compact ONNX ensemble for the container.

    ./export.sh runs/amibr-mtl --out weights [--manifest ../shared/data/amibr/manifest.csv --split test]

Steps: fold checkpoints -> pruned networks (encoder + classifier) -> one graph on a shared uint8 NHWC
input (scaling and normalisation inside) with outputs ``prob`` and ``logit`` [N, F] -> Conv/Gemm/MatMul
weights stored as int8 with one scale per output channel (DequantizeLinear; standard ONNX that the CPU
and CUDA providers run) -> parity against PyTorch on random and real patches -> the ensemble spec
``ensemble.json``. What is written, and how the runtime reads it: runtime/contract.py.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import subprocess
import tempfile
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import torch
from onnx import helper, numpy_helper
from torch import nn

from runtime.contract import (
    INPUT_NAME,
    LOGIT_OUTPUT,
    MODEL_FILE,
    PATCH_SIZE,
    PROB_OUTPUT,
    SPEC_FILE,
    TTA_MODES,
    make_spec,
)
from training.checkpoint import find_fold_checkpoints, load_pruned
from training.data import FORMATS, load_patches
from training.network import to_input

OPSET = 18
QUANTIZED_OPS = {"Conv": 1, "Gemm": 1, "MatMul": 1}  # op -> index of its weight input


class EnsembleGraph(nn.Module):
    """uint8 [N,H,W,3] RGB -> (prob, logit), each float32 [N, F] with one column per fold model."""

    def __init__(self, nets: list[nn.Module]) -> None:
        super().__init__()
        self.nets = nn.ModuleList(nets)

    def forward(self, image: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        x = to_input(image)
        logit = torch.stack([net(x) for net in self.nets], dim=1)
        return torch.sigmoid(logit), logit


def export_onnx(graph: EnsembleGraph, path: Path) -> None:
    example = torch.zeros(2, PATCH_SIZE, PATCH_SIZE, 3, dtype=torch.uint8)
    batch = torch.export.Dim("batch", min=1, max=4096)
    program = torch.onnx.export(graph.eval(), (example,), dynamo=True, opset_version=OPSET,
                                input_names=[INPUT_NAME], output_names=[PROB_OUTPUT, LOGIT_OUTPUT],
                                dynamic_shapes=({0: batch},), external_data=False, optimize=True)
    program.save(str(path))


def quantize_weights(model: onnx.ModelProto) -> onnx.ModelProto:
    """Weight-only int8: each float weight of Conv/Gemm/MatMul becomes int8 + per-output-channel scale."""
    graph = model.graph
    inits = {t.name: t for t in graph.initializer}
    consumers: dict[str, list[onnx.NodeProto]] = {}
    for node in graph.node:
        for name in node.input:
            consumers.setdefault(name, []).append(node)
    new_nodes = []
    for name, tensor in list(inits.items()):
        users = consumers.get(name, [])
        if not users or any(list(u.input).index(name) != QUANTIZED_OPS.get(u.op_type) for u in users):
            continue  # only tensors used solely as the weight input of Conv/Gemm/MatMul
        w = numpy_helper.to_array(tensor)
        if w.dtype != np.float32 or w.ndim < 2:
            continue
        axis = _output_axis(users[0], w.ndim)
        reduce = tuple(i for i in range(w.ndim) if i != axis)
        scale = np.abs(w).max(axis=reduce) / 127.0
        scale = np.where(scale > 0, scale, 1.0).astype(np.float32)
        shape = [1] * w.ndim
        shape[axis] = -1
        q = np.clip(np.round(w / scale.reshape(shape)), -127, 127).astype(np.int8)
        graph.initializer.remove(tensor)
        graph.initializer.extend([
            numpy_helper.from_array(q, f"{name}_q"),
            numpy_helper.from_array(scale, f"{name}_scale"),
            numpy_helper.from_array(np.zeros_like(scale, dtype=np.int8), f"{name}_zero"),
        ])
        new_nodes.append(helper.make_node("DequantizeLinear", [f"{name}_q", f"{name}_scale", f"{name}_zero"],
                                          [name], name=f"{name}_dequantize", axis=axis))
    nodes = new_nodes + list(graph.node)
    del graph.node[:]
    graph.node.extend(nodes)
    onnx.checker.check_model(model)
    return model


def _output_axis(node: onnx.NodeProto, ndim: int) -> int:
    if node.op_type == "Gemm":
        trans_b = next((a.i for a in node.attribute if a.name == "transB"), 0)
        return 0 if trans_b else 1
    if node.op_type == "MatMul":
        return ndim - 1
    return 0  # Conv: [out, in, kh, kw]


def parity(graph: EnsembleGraph, model_path: Path, batches: dict[str, np.ndarray]) -> dict[str, dict]:
    """max |delta logit| and class agreement (at 0.5) between PyTorch fp32 and onnxruntime on CPU."""
    session = ort.InferenceSession(str(model_path), providers=["CPUExecutionProvider"])
    report = {}
    for name, images in batches.items():
        with torch.inference_mode():
            ref = graph(torch.from_numpy(images))[1].numpy()
        got = session.run([LOGIT_OUTPUT], {INPUT_NAME: images})[0]
        report[name] = {"patches": int(len(images)), "max_abs_logit_delta": float(np.abs(ref - got).max()),
                        "class_agreement": float(((ref >= 0) == (got >= 0)).mean())}
    return report


def parity_batches(manifest: str | None, fmt: str, split: str | None, n: int = 64) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(0)
    batches = {"random": rng.integers(0, 256, (16, PATCH_SIZE, PATCH_SIZE, 3), dtype=np.uint8)}
    if manifest:
        data = load_patches(manifest, fmt)
        if split:
            data = data.where(split=split)
        batches["real"] = data.images[np.sort(rng.choice(len(data), min(n, len(data)), replace=False))]
    return batches


def export_ensemble(run_or_folds: list[str | Path], out: str | Path, *, tta: str = "none",
                    manifest: str | None = None, fmt: str = "amibr", split: str | None = None) -> dict:
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    folders = [f for r in run_or_folds for f in find_fold_checkpoints(r)]
    nets, folds = [], []
    for folder in folders:
        net, config = load_pruned(folder)
        nets.append(net)
        folds.append({"name": folder.name, "threshold": float(config.get("threshold", 0.5)),
                      "network": config["network"], "fold": config.get("fold"),
                      "selected_epoch": config.get("selected_epoch"), "selected_on": config.get("selected_on"),
                      "selected_score": config.get("selected_score")})
    graph = EnsembleGraph(nets).eval()
    with tempfile.TemporaryDirectory() as tmp:
        fp32 = Path(tmp) / "fp32.onnx"
        export_onnx(graph, fp32)
        model = quantize_weights(onnx.load(str(fp32)))
    model_path = out / MODEL_FILE
    onnx.save(model, str(model_path))
    checks = parity(graph, model_path, parity_batches(manifest, fmt, split))
    spec = make_spec(folds, tta, provenance={
        "sources": [str(f) for f in folders], "git_commit": _git_commit(),
        "model_sha256": hashlib.sha256(model_path.read_bytes()).hexdigest(),
        "model_bytes": model_path.stat().st_size, "weights": "int8 per-output-channel (DequantizeLinear)",
        "parity_vs_pytorch_fp32": checks,
    })
    (out / SPEC_FILE).write_text(json.dumps(spec, indent=2) + "\n")
    return spec


def _git_commit() -> str | None:
    try:
        return subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True, check=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return None


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("runs", nargs="+", help="run folder(s) with fold checkpoints, or fold folders")
    p.add_argument("--out", default="weights")
    p.add_argument("--tta", default="none", choices=TTA_MODES, help="test-time augmentation in the container")
    p.add_argument("--manifest", help="labelled manifest for the real-patch parity check")
    p.add_argument("--format", default="amibr", choices=list(FORMATS))
    p.add_argument("--split", help="manifest split for the parity patches (e.g. test)")
    args = p.parse_args(argv)
    doc = export_ensemble(args.runs, args.out, tta=args.tta, manifest=args.manifest, fmt=args.format, split=args.split)
    prov = doc["provenance"]
    print(f"wrote {Path(args.out) / MODEL_FILE}: {len(doc['folds'])} fold models, {prov['model_bytes'] / 1e6:.1f} MB")
    for name, c in prov["parity_vs_pytorch_fp32"].items():
        print(f"parity {name}: {c['patches']} patches, max |dlogit| = {c['max_abs_logit_delta']:.4g}, "
              f"class agreement = {c['class_agreement']:.4f}")


if __name__ == "__main__":
    main()
