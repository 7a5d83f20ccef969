"""Score fold models and their vote on a labelled manifest: fold checkpoints, or an exported ensemble.

    amf evaluate runs/amibr-mtl --manifest ../shared/data/amibr/manifest.csv --split test --out reports/amibr-mtl
    amf evaluate weights --manifest ../shared/data/amibr/manifest.csv --split test --out reports/shipped
    amf evaluate weights other/weights --manifest ... --out reports/compare   # A vs B, paired interval

A source is an exported ensemble when it holds ``ensemble.json``: it runs through ``runtime.ensemble.Ensemble``,
the container's own code (onnxruntime, TTA, vote). Any other source is a run folder or fold folder: its
checkpoints run in PyTorch, with the same TTA (runtime/tta.py) and vote (runtime/vote.py; ``--vote``, default
majority; the members of a fold are the checkpoints in folders of its name). The checkpoint sources together
form one ensemble; each exported ensemble is one more. With two or more, they are named A,
B, ... and each vote after A is compared with A's: the paired bootstrap interval of the BA difference.

When a run folder recorded the rows it trained on (training/guard.py) and evaluation rows are among them or show
their figures, the report says so (``warning`` in report.json, a line in report.md and report.html).

Writes report.json, report.md (balanced accuracy, sensitivity, specificity, AUROC; overall and per domain;
each fold model and the vote), roc.png, confusion.png and report.html (training/report.py: all of it in one
page, with the most confident errors per domain).
"""

from __future__ import annotations

import argparse
import json
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from runtime import tta as test_time
from runtime import vote as voting
from runtime.contract import MAJORITY, TTA_VIEWS, is_exported
from runtime.progress import progress_range
from training.data import load
from training.guard import evaluation_warning
from training.metrics import bootstrap_note, evaluate_models, markdown_table, vote_difference, write_report
from training.report import write_html
from training.run_files import find_fold_checkpoints

EXPORTED_CHUNK = 256  # patches per progress step of an exported ensemble (Ensemble runs 64 pages at a time)


@dataclass
class Scored:
    """One ensemble's fold models and their vote on the same patches."""

    source: str  # the folder(s) it came from
    short: str  # their names, for titles
    kind: str  # what ran it, for the report
    members: list[str]  # the models' names, one per column
    member_of: list[str]  # the fold each model belongs to
    probs: np.ndarray  # float [N, F], P(atypical) of each fold model
    thresholds: np.ndarray  # float [F]
    atypical: np.ndarray  # bool [N], the vote (runtime/vote.py)
    confidence: np.ndarray  # float [N], the ensemble's P(atypical)
    tta: str
    vote: str
    key: str = ""  # A, B, ... when several ensembles are compared
    extra: dict = field(default_factory=dict)

    @property
    def vote_name(self) -> str:
        folds = len(set(self.member_of))
        size = f"{folds} folds" if folds == len(self.members) else f"{len(self.members)} models, {folds} folds"
        return self._prefixed(f"vote ({size}{'' if self.vote == MAJORITY else ', ' + self.vote})")

    def _prefixed(self, name: str) -> str:
        return f"{self.key}: {name}" if self.key else name

    def results(self, with_vote: bool = True) -> dict[str, tuple[np.ndarray, np.ndarray]]:
        """name -> (probability, predicted class): each fold model at its threshold, then the vote (when
        ``with_vote`` and there is more than one fold)."""
        out = {self._prefixed(m): (self.probs[:, i], self.probs[:, i] >= self.thresholds[i])
               for i, m in enumerate(self.members)}
        if with_vote and len(self.members) > 1:
            out[self.vote_name] = (self.confidence, self.atypical)
        return out


def predict(net, images: np.ndarray, batch_size: int = 64, tta: str = "none", device: str = "cpu",
            label: str = "predicted") -> np.ndarray:
    """P(atypical) of a PyTorch network for uint8 [N,H,W,3] patches, fp32; ``tta``: the container's test-time
    augmentation mode (runtime/tta.py; d4: the mean over the 8 views); ``device``: auto | cpu | cuda; progress on
    stdout as ``label: done/total patches``."""
    import torch

    from training.network import to_input

    step = max(1, batch_size // TTA_VIEWS[tta])
    target = torch.device("cuda" if device == "cuda" or (device == "auto" and torch.cuda.is_available()) else "cpu")
    net = net.to(target)
    probs = []
    with torch.inference_mode():
        for start in progress_range(len(images), step, label):
            chunk = images[start:start + step]
            views = torch.from_numpy(test_time.views(chunk, tta)).to(target)
            probs.append(test_time.mean_over_views(torch.sigmoid(net(to_input(views))).cpu().numpy(), len(chunk)))
    return np.concatenate(probs)


def score_checkpoints(runs: list[str | Path], images: np.ndarray, tta: str = "none", batch_size: int = 64,
                      device: str = "cpu", vote: str = MAJORITY) -> Scored:
    """The fold checkpoints of run folders (or fold folders) as one ensemble, voting by ``vote``. Fold models
    are named by their folder, or ``run/fold`` where folders of several runs share a name (members of a fold)."""
    from training.checkpoint import load_pruned, member_names

    folders = [f for r in runs for f in find_fold_checkpoints(r)]
    columns, thresholds, test_domains = [], [], []
    for folder in folders:
        net, config = load_pruned(folder)
        columns.append(predict(net, images, batch_size, tta, device, label=str(folder)))
        thresholds.append(float(config.get("threshold", 0.5)))
        test_domains.append((config.get("fold") or {}).get("test_domain"))
    probs, member_of, names = np.stack(columns, 1), [f.name for f in folders], member_names(folders)
    atypical, confidence = voting.vote(probs, thresholds, vote, member_of)
    held_out = {name: domain for name, domain in zip(names, test_domains) if domain}  # amf train --hold-out-test
    return Scored(", ".join(str(r) for r in runs), ", ".join(Path(r).name for r in runs),
                  "fold checkpoints (PyTorch, fp32)", names, member_of, probs,
                  np.asarray(thresholds), atypical, confidence, tta, vote,
                  extra={"test_domains": held_out} if held_out else {})


def score_exported(folder: str | Path, images: np.ndarray, tta: str | None = None, vote: str | None = None) -> Scored:
    """An exported ensemble exactly as the container runs it (runtime.ensemble.Ensemble); ``tta`` and ``vote``
    override the spec's."""
    from runtime.ensemble import Ensemble

    ensemble = Ensemble(folder, tta=tta, vote=vote)
    start = time.perf_counter()
    chunks = [ensemble.predict(images[i:i + EXPORTED_CHUNK])  # in chunks, for the progress line
              for i in progress_range(len(images), EXPORTED_CHUNK, str(folder))]
    probs, atypical, confidence = (np.concatenate([getattr(c, name) for c in chunks])
                                   for name in ("member_probs", "atypical", "confidence"))
    seconds = time.perf_counter() - start
    print(f"{folder}: {len(images)} patches, {ensemble.provider}, {seconds:.1f} s "
          f"({len(images) / max(seconds, 1e-9):.1f} patches/s)")
    quant = (json.loads(ensemble.spec.path.read_text()).get("provenance") or {}).get("quantization") or {}
    kind = "exported ensemble (onnxruntime" + (f", int8 {quant['mode']}" if "mode" in quant else "") + ")"
    return Scored(str(folder), Path(folder).name, kind, list(ensemble.spec.member_names), list(ensemble.spec.member_of),
                  probs, np.asarray(ensemble.thresholds, float), atypical, confidence, ensemble.tta, ensemble.vote,
                  extra={"provider": ensemble.provider})


def score_sources(sources: list[str | Path], images: np.ndarray, tta: str | None = None, batch_size: int = 64,
                  device: str = "auto", vote: str | None = None) -> list[Scored]:
    """Each exported ensemble, and all checkpoint sources together, in the order given; named A, B, ... when
    there are several. ``tta`` and ``vote`` None: the spec's mode and vote for an exported ensemble, none and
    majority for checkpoints."""
    runs = [s for s in sources if not is_exported(s)]
    scored = []
    for s in sources:
        if is_exported(s):
            scored.append(score_exported(s, images, tta, vote))
        elif s == runs[0]:
            scored.append(score_checkpoints(runs, images, tta or "none", batch_size, device, vote or MAJORITY))
    if len(scored) > 1:
        for key, one in zip("ABCDEFGHIJKLMNOPQRSTUVWXYZ", scored):
            one.key = key
    return scored


def held_out_note(scored: list[Scored], table: dict) -> str:
    """The fold models trained with ``--hold-out-test``, each on the domain its fold kept out of training and
    validation (the per-domain column of its row), as lines; empty when there are none."""
    lines = []
    for one in scored:
        for name, domain in one.extra.get("test_domains", {}).items():
            row = table.get(one._prefixed(name), {}).get(domain)
            got = f"BA {row['balanced_accuracy']:.4f} on {row['n']} patches" if row else "no patch of it here"
            lines.append(f"held-out test domain of {one._prefixed(name)}: {domain}, {got}")
    return "\n".join(lines)


def run(args: argparse.Namespace) -> None:
    """``amf evaluate`` (arguments: cli/main.py)."""
    data = load(args.data, args.split)
    warning = evaluation_warning(args.runs, data)
    if warning:
        print(warning)
    scored = score_sources(args.runs, data.images, args.tta, args.batch_size, args.device, args.vote)
    results = {name: r for one in scored for name, r in one.results(not args.no_vote).items()}
    table = evaluate_models(data.labels, data.domains, results, data.slides, args.bootstrap)
    title = f"{' vs '.join(one.short for one in scored)} on {' + '.join(Path(d.manifest).name for d in args.data)}"
    title += f" ({args.split})" if args.split else ""
    note = "\n".join(filter(None, [bootstrap_note(data.slides, args.bootstrap), held_out_note(scored, table)]))
    comparison = {}
    if not args.no_vote and len(scored) > 1:
        a = scored[0]
        for b in scored[1:]:
            comparison[f"vote {a.key} - vote {b.key}"] = vote_difference(
                data.labels, data.domains, a.atypical, b.atypical, data.slides, args.bootstrap or 2000)
    sources = [{"key": s.key, "source": s.source, "kind": s.kind, "folds": s.members,
                "thresholds": [float(t) for t in s.thresholds], "tta": s.tta, "vote": s.vote, **s.extra}
               for s in scored]
    write_report(table, data.labels, results, args.out, title, note, sources, comparison, warning)
    galleries = [] if args.no_vote else scored
    write_html(Path(args.out) / "report.html", title, note, table, sources, comparison, data, galleries,
               args.gallery, warning)
    print(markdown_table(table), note, sep="\n")
    if comparison:
        print("", "paired difference of the votes' balanced accuracy (95 % bootstrap interval):",
              *(f"  {k}: " + ", ".join(f"{c} {v['difference']:+.4f} ({v['ci'][0]:+.3f} to {v['ci'][1]:+.3f})"
                                       for c, v in row.items()) for k, row in comparison.items()), sep="\n")
    print(f"report: {Path(args.out) / 'report.html'}")
