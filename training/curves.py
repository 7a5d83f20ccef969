"""Learning curves of a training run: one picture and one table from its folds' ``metrics.csv``.

Works on a finished run and on one still training (each epoch's row is written as it ends). Per fold: the
validation balanced accuracy of the raw weights and, with ``weight_averaging``, of the averaged ones; the
training and validation losses; the selected epoch from ``config.json`` once the fold has finished. Needs no
torch: ``amf curves`` is quick beside a training run.
"""

from __future__ import annotations

import argparse
import csv
import json
import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from runtime.errors import InputError
from training.run_files import CONFIG_FILE, CURVES_FILE, EARLIER_METRICS, METRICS_FILE, atomic_path

RAW, AVERAGED = "val/ba", "val_avg/ba"
LOSSES = (("train/loss", "training"), ("val/loss", "validation"))
TAIL = 10  # epochs in the "mean of the last epochs" column


class CurvesError(InputError):
    """A run folder without any fold's metrics.csv: one line for the command line (exit 2)."""


@dataclass(frozen=True)
class FoldCurves:
    name: str
    epochs: np.ndarray  # the epochs with a validation row, ascending
    series: dict[str, np.ndarray]  # metric -> value per epoch in ``epochs`` (NaN where not logged)
    config: dict | None  # config.json once the fold has finished

    def best(self, metric: str) -> tuple[int, float] | None:
        values = self.series.get(metric)
        if values is None or np.isnan(values).all():
            return None
        i = int(np.nanargmax(values))  # the first epoch at the maximum
        return int(self.epochs[i]), float(values[i])

    def selected(self) -> tuple[int, str, float] | None:
        """Once the fold has finished: the selected epoch, its weights (raw | ema), and their validation BA there
        (the selection score itself when selecting on BA, not on the loss)."""
        if self.config is None or self.config.get("selected_epoch") not in self.epochs:
            return None
        epoch, weights = self.config["selected_epoch"], self.config.get("selected_weights", "raw")
        values = self.series.get(AVERAGED if weights == "ema" else RAW)
        return (epoch, weights, float(values[list(self.epochs).index(epoch)])) if values is not None else None

    def tail_mean(self, metric: str, n: int = TAIL) -> float | None:
        values = self.series.get(metric)
        if values is None:
            return None
        values = values[~np.isnan(values)][-n:]
        return float(values.mean()) if len(values) else None


def read_metrics(folder: Path) -> tuple[np.ndarray, dict[str, np.ndarray]]:
    """A fold's Lightning CSV logs (training and validation rows apart; a resumed fold's earlier part first) ->
    the epochs with a validation row, and per metric its value at each of them (the last value logged)."""
    per_epoch: dict[int, dict[str, float]] = {}
    rows = []
    for name in (EARLIER_METRICS, METRICS_FILE):
        if (folder / name).is_file():
            with open(folder / name, newline="") as f:
                rows += list(csv.DictReader(f))
    for row in rows:
        if not row.get("epoch"):
            continue
        values = per_epoch.setdefault(int(float(row["epoch"])), {})
        values.update({k: float(v) for k, v in row.items() if k not in ("epoch", "step") and v not in ("", None)})
    epochs = np.array(sorted(e for e, v in per_epoch.items() if RAW in v), dtype=int)
    names = sorted({k for e in epochs for k in per_epoch[e]})
    series = {k: np.array([per_epoch[e].get(k, math.nan) for e in epochs], dtype=float) for k in names}
    return epochs, series


def read_run(run: Path) -> list[FoldCurves]:
    """The folds under ``run`` (or ``run`` itself when it is a fold folder), in name order."""
    folders = [run] if (run / METRICS_FILE).is_file() else sorted(p.parent for p in run.glob(f"*/{METRICS_FILE}"))
    if not folders:
        raise CurvesError(f"{run}: no {METRICS_FILE} in it or in its sub-folders (not a training run)")
    folds = []
    for folder in folders:
        epochs, series = read_metrics(folder)
        config = folder / CONFIG_FILE
        folds.append(FoldCurves(folder.name, epochs, series,
                                json.loads(config.read_text()) if config.is_file() else None))
    return folds


def _fmt(best: tuple[int, float] | None) -> str:
    return f"{best[1]:.4f} (epoch {best[0]})" if best else "-"


def table(folds: list[FoldCurves]) -> str:
    """Markdown: per fold the epochs logged, best raw and averaged validation BA, the mean of the last epochs,
    and the selected model's validation BA (``config.json``) or ``training``; the last row is their mean."""
    lines = ["| fold | epochs | best raw | best averaged | last-10 mean raw / averaged | selected |",
             "|---|---|---|---|---|---|"]
    selected = []
    for f in folds:
        tails = [f.tail_mean(m) for m in (RAW, AVERAGED)]
        tail = " / ".join(f"{t:.4f}" if t is not None else "-" for t in tails)
        pick = f.selected()
        selected += [pick[2]] if pick else []
        chosen = f"**{pick[2]:.4f}** (epoch {pick[0]}, {pick[1]})" if pick else "training"
        lines.append(f"| {f.name} | {len(f.epochs)} | {_fmt(f.best(RAW))} | {_fmt(f.best(AVERAGED))} | {tail} "
                     f"| {chosen} |")
    if selected:
        n = len(folds)
        done = f"{len(selected)} of {n} folds" if len(selected) < n else f"{n} fold{'s' * (n > 1)}"
        lines.append(f"| mean selected ({done}) | | | | | **{np.mean(selected):.4f}** |")
    return "\n".join(lines)


def plot(folds: list[FoldCurves], out: Path, title: str) -> Path:
    """One column per fold: validation BA (raw solid, averaged dashed, the selected epoch starred) above the
    training and validation losses."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(2, len(folds), figsize=(4.2 * len(folds), 6.4), squeeze=False, sharex="col")
    for (top, bottom), f in zip(axes.T, folds):
        for metric, label, style in ((RAW, "raw", {"color": "#2b5db8"}),
                                     (AVERAGED, "averaged", {"color": "#c0392b", "ls": "--"})):
            if metric in f.series:
                top.plot(f.epochs, f.series[metric], label=label, **style)
        subtitle = f"training: {len(f.epochs)} epochs validated"
        pick = f.selected()
        if pick is not None:
            top.plot([pick[0]], [pick[2]], marker="*", ms=14, color="#e6a700", ls="none", label="selected")
            subtitle = f"selected: epoch {pick[0]}, {pick[1]}, {pick[2]:.3f}"
        top.set_title(f"{f.name}\n{subtitle}", fontsize=9)
        top.set_ylim(0.45, 1.0)
        top.grid(alpha=0.3)
        for metric, label in LOSSES:
            if metric in f.series:
                bottom.plot(f.epochs, f.series[metric], label=label)
        bottom.set_xlabel("epoch")
        bottom.grid(alpha=0.3)
    axes[0, 0].set_ylabel("validation balanced accuracy")
    axes[1, 0].set_ylabel("loss")
    axes[0, 0].legend(fontsize=8, loc="lower right")
    axes[1, 0].legend(fontsize=8)
    fig.suptitle(title, fontsize=11)
    fig.tight_layout()
    out.parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(out) as partial:  # folds finishing together (SLURM array tasks) each redraw it
        fig.savefig(partial, dpi=110, format="png")  # whatever the name ends in
    plt.close(fig)
    return out


def run(args: argparse.Namespace) -> None:
    folds = read_run(args.run)
    out = args.out or args.run / CURVES_FILE
    plot(folds, out, str(args.run))
    print(table(folds))
    print(f"wrote {out}")
