"""Export trained fold checkpoints as one compact int8 ONNX ensemble for the container.

    amf export runs/amibr-mtl --out weights --manifest ../shared/data/amibr/manifest.csv
    amf export runs/run1 runs/run2 --vote mean-then-vote --out weights --manifest ...   # two members per fold

Steps: fold checkpoints -> pruned networks (encoder + classifier) -> one float graph on a shared uint8 NHWC
input (scaling and normalisation inside) with outputs ``prob`` and ``logit`` [N, F] -> int8 (training/quantize.py:
static by default, calibrated on a fixed, seeded sample of the manifest's training split) -> the accuracy guard
(per fold, int8 vs float balanced accuracy on its own validation part of that split, scored through the per-fold
CPU graphs: training/cpu_graph.py) and parity (probabilities vs the float model; CPU graphs vs standard graph) -> the
ensemble spec ``ensemble.json``. What is written, and how the runtime reads it:
runtime/contract.py. Several runs of the same folds give several members per fold: each member is a column of the
one graph and a CPU graph of its own (the weights stored once, in the standard graph), named ``run/fold`` in the
spec with its fold as ``group``; the spec's ``vote`` names the rule (runtime/vote.py).

A source that is an exported ensemble (a folder with ``ensemble.json``) is re-quantised from its own graph, its
int8 weights expanded to float first: for when the fold checkpoints are not at hand.
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
import torch
from torch import nn

from runtime.contract import (
    CPU_MODEL_FILES,
    INPUT_NAME,
    LOGIT_OUTPUT,
    MAJORITY,
    MODEL_FILE,
    PATCH_SIZE,
    PROB_OUTPUT,
    SPEC_FILE,
    is_exported,
    make_spec,
)
from runtime.errors import ModelError
from runtime.version import __version__
from training.checkpoint import load_pruned, member_names, selected_score
from training.choices import CALIBRATION_METHOD, CALIBRATION_PATCHES
from training.cpu_graph import write_cpu_graphs
from training.data import PatchSet, load
from training.guard import carry_training_rows
from training.network import to_input
from training.quantize import (
    accuracy_guard,
    calibration_sample,
    expand_weights,
    fold_probabilities,
    quantize,
    validation_ba,
)
from training.run_files import find_fold_checkpoints

OPSET = 18
CPU_GRAPH_CHECK = 272  # the last patches of the guard's run (16 random pages among them), scored by both
CALIBRATION_SEED = 0


class EnsembleGraph(nn.Module):
    """uint8 [N,H,W,3] RGB -> (prob, logit), each float32 [N, F] with one column per fold model."""

    def __init__(self, nets: list[nn.Module]) -> None:
        super().__init__()
        self.nets = nn.ModuleList(nets)

    def forward(self, image: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        x = to_input(image)
        logit = torch.stack([net(x) for net in self.nets], dim=1)
        return torch.sigmoid(logit), logit


class GuardError(ModelError):
    """The int8 graph loses more validation accuracy than the guard allows (exit 4; ``--no-guard`` writes it anyway)."""


def export_onnx(graph: EnsembleGraph, path: Path) -> None:
    example = torch.zeros(2, PATCH_SIZE, PATCH_SIZE, 3, dtype=torch.uint8)
    batch = torch.export.Dim("batch", min=1, max=4096)
    program = torch.onnx.export(graph.eval(), (example,), dynamo=True, opset_version=OPSET,
                                input_names=[INPUT_NAME], output_names=[PROB_OUTPUT, LOGIT_OUTPUT],
                                dynamic_shapes=({0: batch},), external_data=False, optimize=True)
    program.save(str(path))


FloatGraph = tuple[onnx.ModelProto, list[dict], list[str]]  # a float graph, its members' spec entries, files read


def float_graph(sources: list[str | Path]) -> FloatGraph:
    """(float graph, the spec entries of its members, source folders): from fold checkpoints, from exported
    ensembles with their weights expanded (their int8 weights exactly; re-quantised with the rest), or from both:
    the graphs side by side (:func:`side_by_side`), members named ``SOURCE/fold`` where two would share a name."""
    exported = [s for s in sources if is_exported(s)]
    runs = [s for s in sources if not is_exported(s)]
    graphs = [_expanded(s) for s in exported] + ([_from_checkpoints(runs)] if runs else [])
    if len(graphs) == 1:
        return graphs[0]
    members = [entry for _, entries, _ in graphs for entry in entries]
    if len({m["name"] for m in members}) < len(members):  # e.g. weights/ and a run of the same folds
        labels = [Path(s).name for s in exported] + [None]
        members = [{**entry, "group": entry.get("group", entry["name"]),
                    "name": f"{label}/{entry['name']}" if label else entry["name"]}
                   for (_, entries, _), label in zip(graphs, labels) for entry in entries]
    return side_by_side([model for model, _, _ in graphs]), members, [used for _, _, read in graphs for used in read]


def _expanded(source: str | Path) -> FloatGraph:
    spec = json.loads((Path(source) / SPEC_FILE).read_text())
    model_file = Path(source) / spec["model_file"]
    return expand_weights(onnx.load(str(model_file))), spec["folds"], [str(model_file)]


def _from_checkpoints(runs: list[str | Path]) -> FloatGraph:
    folders = [f for r in runs for f in find_fold_checkpoints(r)]
    nets, members = [], []
    for folder, name in zip(folders, member_names(folders)):
        net, config = load_pruned(folder)
        nets.append(net)
        members.append({"name": name, **({"group": folder.name} if name != folder.name else {}),
                        "threshold": float(config.get("threshold", 0.5)),
                        "network": config["network"], "fold": config.get("fold"),
                        "selected_epoch": config.get("selected_epoch"), "selected_on": config.get("selected_on"),
                        "selected_score": selected_score(config),
                        "selected_weights": config.get("selected_weights", "raw")})
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "float.onnx"
        export_onnx(EnsembleGraph(nets).eval(), path)
        return onnx.load(str(path)), members, [str(f) for f in folders]


def side_by_side(models: list[onnx.ModelProto]) -> onnx.ModelProto:
    """Ensemble graphs of the same uint8 input as one graph: each model's nodes and tensors under a prefix of its
    own, reading the shared input, and their probability and logit columns concatenated in order."""
    graphs = [onnx.compose.add_prefix(m, f"source{k}/").graph for k, m in enumerate(models)]
    nodes, initializers, value_info = [], [], []
    for k, graph in enumerate(graphs):
        for node in graph.node:
            node.input[:] = [INPUT_NAME if name == f"source{k}/{INPUT_NAME}" else name for name in node.input]
            nodes.append(node)
        initializers += graph.initializer
        value_info += graph.value_info
    outputs = []
    for name in (PROB_OUTPUT, LOGIT_OUTPUT):
        nodes.append(onnx.helper.make_node("Concat", [f"source{k}/{name}" for k in range(len(graphs))], [name], axis=1))
        outputs.append(onnx.helper.make_tensor_value_info(name, onnx.TensorProto.FLOAT, ["batch", None]))
    graph = onnx.helper.make_graph(nodes, "ensemble", [models[0].graph.input[0]], outputs, initializers,
                                   value_info=value_info)
    model = onnx.helper.make_model(graph, opset_imports=models[0].opset_import, ir_version=models[0].ir_version,
                                   functions=[f for m in models[:1] for f in m.functions])
    onnx.checker.check_model(model)
    return model


def parity(reference: np.ndarray, got: np.ndarray) -> dict:
    """max |delta P(atypical)| and class agreement (at 0.5) of two [N, F] probability arrays."""
    return {"patches": int(len(got)), "max_abs_prob_delta": float(np.abs(reference - got).max()),
            "class_agreement": float(((reference >= 0.5) == (got >= 0.5)).mean())}


def export_ensemble(sources: list[str | Path], out: str | Path, data: PatchSet, *, tta: str = "none",
                    vote: str = MAJORITY, mode: str = "static", method: str = CALIBRATION_METHOD,
                    patches: int = CALIBRATION_PATCHES, seed: int = CALIBRATION_SEED,
                    enforce_guard: bool = True) -> dict:
    """Write ``<out>/ensemble.onnx``, its per-fold CPU graphs ``ensemble.cpu.<fold>.onnx`` (when they hold no
    weights of their own: training/cpu_graph.py) and ``ensemble.json``. ``data``:
    labelled training patches, which calibrate (static mode) and hold each fold's validation part for the
    accuracy guard. The guard scores the CPU graphs, as the container runs them, per member; nothing is written
    when it fails. ``vote``: the rule the spec names."""
    out = Path(out)
    reference, members, sources_used = float_graph(sources)
    sample = calibration_sample(data.images, patches, seed)
    model = quantize(onnx.ModelProto.FromString(reference.SerializeToString()), mode, sample, method)
    random = np.random.default_rng(0).integers(0, 256, (16, PATCH_SIZE, PATCH_SIZE, 3), dtype=np.uint8)
    images = np.concatenate([data.images, random])  # one session per graph: the data, then 16 random pages
    out.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=out) as tmp:
        model_path = Path(tmp) / MODEL_FILE
        onnx.save(model, str(model_path))
        cpu_paths = write_cpu_graphs(model_path)
        (float_probs, float_random), (int8_probs, int8_random) = (
            np.split(probs, [len(data)]) for probs in (fold_probabilities(reference, images, label="float graph"),
                                                       _probabilities(model_path, cpu_paths, images)))
        guard = accuracy_guard(validation_ba(float_probs, data, members), validation_ba(int8_probs, data, members))
        if enforce_guard and not guard["holds"]:
            raise GuardError(f"int8 vs float validation BA outside the guard: {guard_table(members, guard)} "
                             "(--no-guard writes the graph anyway)")
        cpu_graphs = None
        if cpu_paths:  # the standard graph (CUDA's) answers as the CPU graphs do
            cpu_graphs = parity(np.concatenate([int8_probs, int8_random])[-CPU_GRAPH_CHECK:],
                                fold_probabilities(model_path, images[-CPU_GRAPH_CHECK:], label="int8 graph"))
            if cpu_graphs["max_abs_prob_delta"] > 1e-4:
                raise GuardError(f"the CPU graphs and the standard graph disagree: {cpu_graphs}")
        for stale in out.glob(CPU_MODEL_FILES.format("*")):  # an earlier export's
            stale.unlink()
        for path in (model_path, *cpu_paths):
            path.replace(out / path.name)
    model_path = out / MODEL_FILE
    checks = {"random": parity(float_random, int8_random), "real": parity(float_probs, int8_probs)}
    spec = make_spec(members, tta, cpu_graphs=bool(cpu_paths), vote=vote, provenance={
        "sources": sources_used, "git_commit": _git_commit(), "amf_version": __version__,
        "model_sha256": hashlib.sha256(model_path.read_bytes()).hexdigest(), "model_bytes": model_path.stat().st_size,
        "quantization": {"mode": mode, **({"method": method, "calibration_patches": int(len(sample)),
                                           "calibration_seed": seed} if mode == "static" else {}),
                         "data": f"{len(data)} labelled patches (calibration sample and validation parts)"},
        "accuracy_guard": guard, "parity_vs_float": checks, "cpu_graphs_vs_standard": cpu_graphs,
    })
    (out / SPEC_FILE).write_text(json.dumps(spec, indent=2) + "\n")
    return spec


def _probabilities(model_path: Path, cpu_paths: list[Path], images: np.ndarray) -> np.ndarray:
    """[N, F] from the CPU graphs, one column each, as the container runs them (else the standard graph)."""
    if not cpu_paths:
        return fold_probabilities(model_path, images, label="int8 graph")
    return np.concatenate([fold_probabilities(p, images, label=f"int8 {p.name}") for p in cpu_paths], axis=1)


def guard_table(members: list[dict], guard: dict) -> str:
    rows = [f"{m['name']}: {r if r is None else round(r, 4)} -> {q if q is None else round(q, 4)}"
            for m, r, q in zip(members, guard["float_ba"], guard["int8_ba"])]
    return "; ".join(rows) + f"; mean delta {guard['mean_delta']:+.4f} ({'holds' if guard['holds'] else 'fails'})"


def _git_commit() -> str | None:
    try:
        return subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True, check=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return None


def run(args: argparse.Namespace) -> None:
    """``amf export`` (arguments and their defaults: cli/main.py)."""
    data = load(args.data, args.split)
    doc = export_ensemble(args.runs, args.out, data, tta=args.tta, vote=args.vote, mode=args.quantize,
                          method=args.calibration,
                          patches=args.calibration_patches, enforce_guard=not args.no_guard)
    carried = carry_training_rows(args.runs, Path(args.out))
    prov = doc["provenance"]
    print(f"wrote {Path(args.out) / MODEL_FILE}: {len(doc['folds'])} fold models, {prov['model_bytes'] / 1e6:.1f} MB, "
          f"{args.quantize} int8, vote {doc['vote']}")
    print(f"accuracy guard: {guard_table(doc['folds'], prov['accuracy_guard'])}")
    print(f"training rows recorded beside it: {carried}" if carried else "no training rows recorded by the sources: "
          "amf evaluate of this export cannot warn of overlap")
    cpu_graphs = {"CPU graphs vs standard": prov["cpu_graphs_vs_standard"]} if prov["cpu_graphs_vs_standard"] else {}
    for name, c in {**prov["parity_vs_float"], **cpu_graphs}.items():
        print(f"parity {name}: {c['patches']} patches, max |dP| = {c['max_abs_prob_delta']:.4g}, "
              f"class agreement = {c['class_agreement']:.4f}")
