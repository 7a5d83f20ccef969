"""Classification figures (atypical = positive) and the report files: JSON, Markdown, ROC and confusion PNGs."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
from sklearn.metrics import balanced_accuracy_score, confusion_matrix, roc_auc_score, roc_curve


def binary_metrics(labels: np.ndarray, probs: np.ndarray, pred: np.ndarray) -> dict:
    """Balanced accuracy, sensitivity, specificity, AUROC (from ``probs``), accuracy, counts."""
    labels, pred = np.asarray(labels).astype(bool), np.asarray(pred).astype(bool)
    tn, fp, fn, tp = confusion_matrix(labels, pred, labels=[False, True]).ravel()
    both = 0 < labels.sum() < len(labels)
    return {
        "n": int(len(labels)), "n_atypical": int(labels.sum()),
        "balanced_accuracy": float(balanced_accuracy_score(labels, pred)) if both else float("nan"),
        "sensitivity": float(tp / (tp + fn)) if tp + fn else float("nan"),
        "specificity": float(tn / (tn + fp)) if tn + fp else float("nan"),
        "auroc": float(roc_auc_score(labels, probs)) if both else float("nan"),
        "accuracy": float((tp + tn) / len(labels)),
        "confusion": {"tn": int(tn), "fp": int(fp), "fn": int(fn), "tp": int(tp)},
    }


def _bootstrap_bas(labels: np.ndarray, preds: list[np.ndarray], groups: np.ndarray | None, n: int,
                   seed: int) -> np.ndarray:
    """Balanced accuracy of each prediction vector on the same ``n`` bootstrap resamples of whole ``groups``
    (or of single patches) -> [len(preds), resamples]. Resamples that lack a class are dropped."""
    labels = np.asarray(labels).astype(bool)
    units = np.unique(np.asarray(groups), return_inverse=True)[1] if groups is not None else np.arange(len(labels))
    k = units.max() + 1
    per_unit = lambda w: np.bincount(units, w, minlength=k)  # noqa: E731
    draws = np.random.default_rng(seed).multinomial(k, np.full(k, 1 / k), size=n)  # [n, k]: times each unit is drawn
    pos, neg = draws @ per_unit(labels), draws @ per_unit(~labels)
    ok = (pos > 0) & (neg > 0)
    out = []
    for pred in preds:
        pred = np.asarray(pred).astype(bool)
        tp, tn = draws @ per_unit(labels & pred), draws @ per_unit(~labels & ~pred)
        out.append(0.5 * (tp[ok] / pos[ok] + tn[ok] / neg[ok]))
    return np.array(out)


def _interval(samples: np.ndarray, level: float) -> tuple[float, float]:
    if not len(samples):
        return float("nan"), float("nan")
    lo, hi = np.quantile(samples, [(1 - level) / 2, (1 + level) / 2])
    return float(lo), float(hi)


def bootstrap_ba(labels: np.ndarray, pred: np.ndarray, groups: np.ndarray | None = None, n: int = 2000,
                 seed: int = 0, level: float = 0.95) -> tuple[float, float]:
    """Percentile interval of balanced accuracy over ``n`` bootstrap resamples of whole ``groups`` (e.g.
    slides: patches of one slide are not independent), or of single patches when ``groups`` is None."""
    return _interval(_bootstrap_bas(labels, [pred], groups, n, seed)[0], level)


def bootstrap_ba_difference(labels: np.ndarray, pred_a: np.ndarray, pred_b: np.ndarray,
                            groups: np.ndarray | None = None, n: int = 2000, seed: int = 0,
                            level: float = 0.95) -> tuple[float, float]:
    """Paired interval of BA(a) - BA(b): both models scored on the same resamples."""
    a, b = _bootstrap_bas(labels, [pred_a, pred_b], groups, n, seed)
    return _interval(a - b, level)


def vote_difference(labels: np.ndarray, domains: np.ndarray, pred_a: np.ndarray, pred_b: np.ndarray,
                    groups: np.ndarray | None = None, n: int = 2000) -> dict:
    """BA(a) - BA(b), overall and per domain, with its paired 95 % bootstrap interval (both scored on the same
    resamples of ``groups``): {"all" | domain: {"difference": d, "ci": [lo, hi]}}."""
    labels = np.asarray(labels).astype(bool)
    out = {}
    for d in ["all", *sorted(set(domains))]:
        keep = np.ones(len(labels), bool) if d == "all" else domains == d
        y, a, b = labels[keep], np.asarray(pred_a)[keep], np.asarray(pred_b)[keep]
        both = 0 < y.sum() < len(y)
        diff = balanced_accuracy_score(y, a) - balanced_accuracy_score(y, b) if both else float("nan")
        lo, hi = bootstrap_ba_difference(y, a, b, None if groups is None else groups[keep], n)
        out[str(d)] = {"difference": float(diff), "ci": [lo, hi]}
    return out


def difference_markdown(comparison: dict) -> str:
    """The rows of :func:`vote_difference` (label -> its result) as one Markdown table."""
    columns = list(next(iter(comparison.values())))
    lines = [f"| paired difference | {' | '.join(columns)} |", "|---" * (len(columns) + 1) + "|"]
    for name, row in comparison.items():
        lines.append(f"| {name} | " + " | ".join(f"{row[c]['difference']:+.4f} ({row[c]['ci'][0]:+.3f} to "
                                                 f"{row[c]['ci'][1]:+.3f})" for c in columns) + " |")
    return "\n".join(lines)


def evaluate_models(labels: np.ndarray, domains: np.ndarray, results: dict[str, tuple[np.ndarray, np.ndarray]],
                    groups: np.ndarray | None = None, bootstrap: int = 0) -> dict:
    """results: model name -> (probability, predicted class). Returns {model: {"all" | domain: metrics}};
    with ``bootstrap`` > 0 each cell also has ``balanced_accuracy_ci`` (95 %, resampling ``groups``)."""
    table = {}
    for name, (probs, pred) in results.items():
        table[name] = {}
        for d in ["all", *sorted(set(domains))]:
            keep = np.ones(len(labels), bool) if d == "all" else domains == d
            cell = binary_metrics(labels[keep], probs[keep], pred[keep])
            if bootstrap:
                cell["balanced_accuracy_ci"] = bootstrap_ba(labels[keep], pred[keep],
                                                            None if groups is None else groups[keep], bootstrap)
            table[name][str(d)] = cell
    return table


def markdown_table(table: dict, metric: str = "balanced_accuracy") -> str:
    columns = list(next(iter(table.values())))
    lines = [f"| model | {' | '.join(columns)} |", "|---" * (len(columns) + 1) + "|"]
    for name, row in table.items():
        lines.append(f"| {name} | " + " | ".join(_cell(row[c], metric) for c in columns) + " |")
    return "\n".join(lines)


def _cell(cell: dict, metric: str) -> str:
    ci = cell.get(f"{metric}_ci")
    return f"{cell[metric]:.4f}" + (f" ({ci[0]:.3f}-{ci[1]:.3f})" if ci else "")


def bootstrap_note(groups: np.ndarray | None, n: int) -> str:
    unit = "patches" if groups is None else f"{len(np.unique(groups))} slides"
    return f"In brackets: 95 % bootstrap interval of balanced accuracy ({n} resamples of the {unit})." if n else ""


def write_report(table: dict, labels: np.ndarray, results: dict[str, tuple[np.ndarray, np.ndarray]], out: str | Path,
                 title: str, note: str = "", sources: list[dict] | None = None, comparison: dict | None = None,
                 warning: str | None = None) -> None:
    """report.json, report.md (BA, sensitivity, specificity, AUROC tables; ``comparison``: the paired
    differences of :func:`vote_difference`, label -> result), roc.png, confusion.png. ``sources``: what was
    scored (free-form dicts, kept in report.json; listed in report.md by key, source and kind). ``warning``: a
    line about the evaluation rows (training/guard.py), in both files when given."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    doc = {"title": title, "note": note, "sources": sources or [], "models": table, "comparison": comparison or {},
           **({"warning": warning} if warning else {})}
    (out / "report.json").write_text(json.dumps(doc, indent=2) + "\n")
    md = [f"# {title}", ""] + ([f"**{warning}**", ""] if warning else [])
    md += [f"- {s['key'] + ': ' if s.get('key') else ''}`{s['source']}`: {s['kind']}, TTA {s['tta']}"
           for s in sources or []] + ([""] if sources else [])
    md += [note, ""] if note else []
    if comparison:
        md += ["## paired difference of the votes' balanced accuracy (95 % bootstrap interval)", "",
               difference_markdown(comparison), ""]
    for metric in ("balanced_accuracy", "sensitivity", "specificity", "auroc"):
        md += [f"## {metric.replace('_', ' ')}", "", markdown_table(table, metric), ""]
    (out / "report.md").write_text("\n".join(md))

    fig, ax = plt.subplots(figsize=(5, 5))
    for name, (probs, _) in results.items():
        fpr, tpr, _ = roc_curve(labels, probs)
        ax.plot(fpr, tpr, label=f"{name} (AUROC {table[name]['all']['auroc']:.3f})")
    ax.plot([0, 1], [0, 1], "k:", lw=0.8)
    ax.set(xlabel="1 - specificity", ylabel="sensitivity", title=title)
    ax.legend(fontsize=7, loc="lower right")
    fig.tight_layout()
    fig.savefig(out / "roc.png", dpi=120)
    plt.close(fig)

    cols = min(len(results), 3)
    rows = -(-len(results) // cols)
    fig, axes = plt.subplots(rows, cols, figsize=(2.6 * cols, 2.6 * rows), squeeze=False)
    for ax in axes.flat[len(results):]:
        ax.axis("off")
    for ax, (name, _) in zip(axes.flat, results.items()):
        c = table[name]["all"]["confusion"]
        cm = np.array([[c["tn"], c["fp"]], [c["fn"], c["tp"]]])
        ax.imshow(cm, cmap="Blues")
        for (i, j), v in np.ndenumerate(cm):
            ax.text(j, i, str(v), ha="center", va="center", color="white" if v > cm.max() / 2 else "black")
        ax.set(xticks=[0, 1], yticks=[0, 1], xticklabels=["normal", "atypical"], yticklabels=["normal", "atypical"],
               xlabel="predicted", ylabel="true", title=name[:32])
        ax.title.set_fontsize(8)
    fig.tight_layout()
    fig.savefig(out / "confusion.png", dpi=120)
    plt.close(fig)
