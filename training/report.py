"""report.html: an evaluation in one self-contained page (``amf evaluate`` writes it beside report.md).

Sections: what was scored; balanced accuracy per domain with its bootstrap interval (sensitivity, specificity
and AUROC folded away below it); the paired difference of two ensembles' votes, when compared; the ROC and
confusion plots; and per ensemble and domain a gallery of the vote's most confident errors: the patch, its
true label, the ensemble's P(atypical) and each fold model's probability and call at its threshold.
Images are embedded as base64 data URIs and the style is inline: the page fetches nothing.
"""

from __future__ import annotations

import base64
import io
from html import escape
from pathlib import Path

import numpy as np
from PIL import Image

CLASSES = ("normal", "atypical")
CSS = """
body{font:14px/1.45 system-ui,-apple-system,"Segoe UI",Roboto,sans-serif;color:#1d2330;background:#f5f6f8;margin:0}
main{max-width:1320px;margin:0 auto;padding:20px 28px 40px}
h1{font-size:22px;margin:4px 0 6px}h2{font-size:17px;margin:28px 0 8px;border-bottom:1px solid #d9dde3;
padding-bottom:4px}h3{font-size:15px;margin:18px 0 6px}
.muted{color:#5b6472}.small{font-size:12px}
ul.sources{margin:6px 0;padding-left:20px}code{font:12px ui-monospace,Menlo,Consolas,monospace}
table{border-collapse:collapse;background:#fff;margin:6px 0 4px;box-shadow:0 1px 2px rgba(0,0,0,.06)}
th,td{padding:5px 10px;border-bottom:1px solid #e6e8ec;text-align:right;white-space:nowrap}
th{background:#eef0f4;font-weight:600;vertical-align:bottom}th:first-child,td:first-child{text-align:left}
th small{display:block;font-weight:400;color:#5b6472}td small{color:#5b6472;margin-left:4px}
tr.vote td{font-weight:700;background:#f1f6ff}
details{margin:8px 0}summary{cursor:pointer;color:#2b5db8}
.plots{display:flex;flex-wrap:wrap;gap:16px;align-items:flex-start}
.plots figure{margin:0;background:#fff;padding:8px;box-shadow:0 1px 2px rgba(0,0,0,.06);flex:1 1 560px}
.plots figure.roc{flex:0 1 500px}
.plots img{display:block;max-width:100%;height:auto}
.grid{display:grid;grid-template-columns:repeat(auto-fill,minmax(400px,1fr));gap:10px}
.card{display:flex;gap:10px;background:#fff;border-radius:6px;padding:8px;border-left:4px solid #c0392b;
box-shadow:0 1px 2px rgba(0,0,0,.08);margin:0}
.card.fn{border-left-color:#d68910}
.card img{width:112px;height:112px;flex:none;border-radius:3px;image-rendering:auto}
.card figcaption{min-width:0;flex:1;font-size:12.5px}
.card .call{font-size:13px}.card .p{font-weight:700}
.folds{list-style:none;margin:4px 0 0;padding:0;font:11.5px ui-monospace,Menlo,Consolas,monospace}
.folds li{display:flex;gap:6px}.folds .n{flex:1;overflow:hidden;text-overflow:ellipsis;white-space:nowrap}
.ok{color:#1e8449}.bad{color:#c0392b;font-weight:700}
.file{color:#5b6472;font-size:11px;overflow:hidden;text-overflow:ellipsis;white-space:nowrap;margin-top:3px}
"""


def data_uri(png: bytes) -> str:
    return "data:image/png;base64," + base64.b64encode(png).decode("ascii")


def patch_png(image: np.ndarray) -> bytes:
    """A uint8 [H, W, 3] patch as PNG bytes."""
    buffer = io.BytesIO()
    Image.fromarray(np.ascontiguousarray(image)).save(buffer, format="PNG", optimize=True)
    return buffer.getvalue()


def confident_errors(labels: np.ndarray, domains: np.ndarray, atypical: np.ndarray, confidence: np.ndarray,
                     thresholds: np.ndarray, k: int) -> dict[str, tuple[np.ndarray, int]]:
    """Per domain: (indices of the vote's ``k`` most confident errors, most confident first; number of
    errors). An error's confidence: how far the ensemble's P(atypical) lies from the mean fold threshold on
    the side of its wrong call."""
    wrong = np.asarray(atypical, bool) != np.asarray(labels, bool)
    margin = np.where(atypical, confidence - np.mean(thresholds), np.mean(thresholds) - confidence)
    out = {}
    for d in sorted(set(domains)):
        idx = np.flatnonzero(wrong & (domains == d))
        out[str(d)] = (idx[np.argsort(-margin[idx], kind="stable")][:k], len(idx))
    return out


def _table(table: dict, metric: str, domains: list[str], counts: dict, vote_rows: set[str]) -> str:
    head = "".join(f"<th>{escape(c)}<small>{counts[c][0]} patches, {counts[c][1]} atypical</small></th>"
                   for c in domains)
    rows = []
    for name, row in table.items():
        cells = []
        for c in domains:
            cell, ci = row[c], row[c].get(f"{metric}_ci")
            value = "–" if np.isnan(cell[metric]) else f"{cell[metric]:.3f}"
            if ci and not np.isnan(ci[0]):
                value += f"<small>{ci[0]:.3f}–{ci[1]:.3f}</small>"
            cells.append(f"<td>{value}</td>")
        rows.append(f'<tr{" class=vote" if name in vote_rows else ""}><td>{escape(name)}</td>{"".join(cells)}</tr>')
    return f"<table><thead><tr><th>model</th>{head}</tr></thead><tbody>{''.join(rows)}</tbody></table>"


def _comparison(comparison: dict) -> str:
    columns = list(next(iter(comparison.values())))
    rows = "".join(f"<tr><td>{escape(name)}</td>" + "".join(
        f"<td>{row[c]['difference']:+.3f}<small>{row[c]['ci'][0]:+.3f} to {row[c]['ci'][1]:+.3f}</small></td>"
        for c in columns) + "</tr>" for name, row in comparison.items())
    head = "".join(f"<th>{escape(c)}</th>" for c in columns)
    return f"<table><thead><tr><th>paired difference</th>{head}</tr></thead><tbody>{rows}</tbody></table>"


def _card(i: int, data, one) -> str:
    truth, called = bool(data.labels[i]), bool(one.atypical[i])
    agree = int(((one.probs[i] >= one.thresholds) == called).sum())
    folds = []
    for name, p, t in zip(one.members, one.probs[i], one.thresholds):
        right = (p >= t) == truth
        mark = '<span class="ok">✓</span>' if right else '<span class="bad">✗</span>'
        folds.append(f'<li><span class="n" title="{escape(name)}">{escape(name)}</span>'
                     f'<span>{p:.2f}{" ≥ " if p >= t else " &lt; "}{t:.2f}</span>{mark}</li>')
    experts = ""
    if getattr(data, "votes", None) is not None and not np.isnan(data.votes[i]):
        experts = f'<div class="muted">experts: {round(float(data.votes[i]) * 3)} of 3 say atypical</div>'
    name = Path(data.paths[i]).name
    return (f'<figure class="card {"fn" if truth else "fp"}"><img src="{data_uri(patch_png(data.images[i]))}" '
            f'alt="{escape(name)}" width="112" height="112"><figcaption>'
            f'<div class="call">true <b>{CLASSES[truth]}</b>, called <b>{CLASSES[called]}</b></div>{experts}'
            f'<div>P(atypical) <span class="p">{one.confidence[i]:.3f}</span> · {agree}/{len(one.members)} folds</div>'
            f'<ul class="folds">{"".join(folds)}</ul>'
            f'<div class="file" title="{escape(str(data.paths[i]))}">{escape(name)}</div>'
            f"</figcaption></figure>")


def _gallery(data, one, k: int) -> str:
    label = f"{one.key}: " if one.key else ""
    parts = [f"<h2>{escape(label)}Most confident errors of the vote, per domain</h2>",
             '<p class="muted small">Red edge: normal called atypical; amber edge: atypical called normal. '
             "P(atypical): the ensemble's confidence (mean of the folds); each fold: its probability against its "
             "threshold, ✓ when its own call is right, ✗ when wrong. Ordered by how far P(atypical) lies on the "
             "wrong side of the mean threshold.</p>"]
    for domain, (idx, n_errors) in confident_errors(data.labels, data.domains, one.atypical, one.confidence,
                                                    one.thresholds, k).items():
        keep = data.domains == domain
        fp = int((one.atypical[keep] & ~data.labels[keep].astype(bool)).sum())
        shown = f"the {len(idx)} most confident" if len(idx) < n_errors else "all"
        parts.append(f'<section class="domain"><h3>{escape(domain)} <span class="muted small">{n_errors} errors '
                     f"of {int(keep.sum())} patches ({fp} normal called atypical, {n_errors - fp} atypical called "
                     f"normal){'; ' + shown if n_errors else ''}</span></h3>")
        if len(idx):
            parts.append('<div class="grid">' + "".join(_card(i, data, one) for i in idx) + "</div>")
        parts.append("</section>")
    return "\n".join(parts)


def render(title: str, note: str, table: dict, sources: list[dict], comparison: dict, data, galleries: list,
           k: int, plots: dict[tuple[str, str], bytes], warning: str | None = None) -> str:
    """The page as a string. ``data``: the PatchSet scored (images, labels, domains, paths, votes);
    ``galleries``: the ensembles (training.evaluate.Scored) whose vote errors are shown; ``plots``: (CSS class,
    caption) -> PNG bytes."""
    columns = list(next(iter(table.values())))
    labels = np.asarray(data.labels, bool)
    counts = {c: (int(len(labels)), int(labels.sum())) if c == "all" else
              (int((data.domains == c).sum()), int(labels[data.domains == c].sum())) for c in columns}
    vote_rows = {one.vote_name for one in galleries}
    src = "".join(f"<li>{escape(s['key'] + ': ') if s.get('key') else ''}<code>{escape(s['source'])}</code> "
                  f"{escape(s['kind'])}, {len(s['folds'])} fold models, TTA {escape(s['tta'])}, "
                  f"vote {escape(s['vote'])}"
                  + (f", {escape(s['provider'])}" if s.get("provider") else "") + "</li>" for s in sources)
    body = [f"<h1>{escape(title)}</h1>", *([f'<p class="bad">{escape(warning)}</p>'] if warning else []),
            f'<ul class="sources">{src}</ul>',
            "<h2>Balanced accuracy per domain</h2>",
            f'<p class="muted small">{escape(note.replace("In brackets: ", "In small type: "))} Atypical is the '
            "positive class; each fold model at its own threshold; the vote: each source's rule "
            "(runtime/vote.py).</p>",
            _table(table, "balanced_accuracy", columns, counts, vote_rows),
            "<details><summary>Sensitivity, specificity, AUROC</summary>",
            *(f"<h3>{m}</h3>" + _table(table, key, columns, counts, vote_rows)
              for m, key in (("Sensitivity", "sensitivity"), ("Specificity", "specificity"), ("AUROC", "auroc"))),
            "</details>"]
    if comparison:
        body += ["<h2>Paired difference of the votes' balanced accuracy</h2>",
                 '<p class="muted small">Both votes scored on the same bootstrap resamples; in small type the 95 % '
                 "interval of the difference.</p>", _comparison(comparison)]
    body += ["<h2>ROC and confusion</h2>", '<div class="plots">',
             *(f'<figure class="{css}"><img src="{data_uri(png)}" alt="{escape(caption)}"></figure>'
               for (css, caption), png in plots.items()), "</div>"]
    body += [_gallery(data, one, k) for one in galleries]
    return (f'<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8"><title>{escape(title)}</title>'
            f'<meta name="viewport" content="width=device-width,initial-scale=1"><style>{CSS}</style></head>\n'
            f"<body><main>\n" + "\n".join(body) + "\n</main></body></html>\n")


def write_html(path: str | Path, title: str, note: str, table: dict, sources: list[dict], comparison: dict, data,
               galleries: list, k: int = 6, warning: str | None = None) -> Path:
    """Write report.html; embeds roc.png and confusion.png from its folder (metrics.write_report's); ``warning``:
    a line about the evaluation rows, shown under the title."""
    path = Path(path)
    plots = {(css, caption): (path.parent / file).read_bytes() for css, caption, file in
             (("roc", "ROC curves", "roc.png"), ("cm", "confusion matrices", "confusion.png"))
             if (path.parent / file).is_file()}
    path.write_text(render(title, note, table, sources, comparison, data, galleries, k, plots, warning),
                    encoding="utf-8")
    return path
