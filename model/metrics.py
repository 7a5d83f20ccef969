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


def evaluate_models(labels: np.ndarray, domains: np.ndarray, results: dict[str, tuple[np.ndarray, np.ndarray]]) -> dict:
    """results: model name -> (probability, predicted class). Returns {model: {"all" | domain: metrics}}."""
    table = {}
    for name, (probs, pred) in results.items():
        table[name] = {"all": binary_metrics(labels, probs, pred)}
        for d in sorted(set(domains)):
            keep = domains == d
            table[name][str(d)] = binary_metrics(labels[keep], probs[keep], pred[keep])
    return table


def markdown_table(table: dict, metric: str = "balanced_accuracy") -> str:
    columns = list(next(iter(table.values())))
    lines = [f"| model | {' | '.join(columns)} |", "|---" * (len(columns) + 1) + "|"]
    for name, row in table.items():
        lines.append(f"| {name} | " + " | ".join(f"{row[c][metric]:.4f}" for c in columns) + " |")
    return "\n".join(lines)


def write_report(table: dict, labels: np.ndarray, results: dict[str, tuple[np.ndarray, np.ndarray]], out: str | Path,
                 title: str) -> None:
    """report.json, report.md (BA, sensitivity, specificity, AUROC tables), roc.png, confusion.png."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "report.json").write_text(json.dumps({"title": title, "models": table}, indent=2) + "\n")
    md = [f"# {title}", ""]
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

    fig, axes = plt.subplots(1, len(results), figsize=(2.6 * len(results), 2.8), squeeze=False)
    for ax, (name, _) in zip(axes[0], results.items()):
        c = table[name]["all"]["confusion"]
        cm = np.array([[c["tn"], c["fp"]], [c["fn"], c["tp"]]])
        ax.imshow(cm, cmap="Blues")
        for (i, j), v in np.ndenumerate(cm):
            ax.text(j, i, str(v), ha="center", va="center", color="black")
        ax.set(xticks=[0, 1], yticks=[0, 1], xticklabels=["normal", "atypical"], yticklabels=["normal", "atypical"],
               xlabel="predicted", ylabel="true", title=name[:28])
        ax.title.set_fontsize(7)
    fig.tight_layout()
    fig.savefig(out / "confusion.png", dpi=120)
    plt.close(fig)
