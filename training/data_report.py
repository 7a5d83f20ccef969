"""``amf data``: what the data options select, per dataset and domain, and the figures shown twice (within a dataset
or across two).

    amf data --manifest amibr.csv --format amibr --split train --manifest midog25.csv --format midog25 --out DIR

The table counts the rows ``--split`` keeps: rows, atypical, slides (named ones; "-": none), votes known,
patches cropped or padded to 128 x 128. The duplicates are looked for among every row of every dataset (a
figure the split holds out included), as ``amf train``'s guard does (training/overlap.py), and the search's time
is printed. Rows that repeat an earlier row exactly are dropped as the manifest is read (training/data.py), with a
count. ``--out DIR`` writes ``DIR/data.json``: ``datasets`` (the table) and ``duplicates`` (each: both rows as
{dataset, path, split} and ``match``, slide-position | pixels).
"""

from __future__ import annotations

import argparse
import json
import time

import numpy as np

from training import overlap
from training.data import PatchSet, load_every_row
from training.guard import EXAMPLES

COLUMNS = ("dataset", "domain", "rows", "atypical", "slides", "votes known", "resized")


def table(data: PatchSet) -> list[dict]:
    """One row per dataset and domain (domains without their ``dataset:`` prefix), then one per dataset."""
    out = []
    for name in dict.fromkeys(data.datasets):
        for domain in [*sorted(set(data.domains[data.datasets == name])), None]:
            keep = (data.datasets == name) & (True if domain is None else data.domains == domain)
            out.append({
                "dataset": str(name), "domain": "all" if domain is None else str(domain).removeprefix(f"{name}:"),
                "rows": int(keep.sum()), "atypical": int(data.labels[keep].sum()),
                "slides": len(set(data.slide_files[keep]) - {""}) or None if data.slide_files is not None else None,
                "votes known": 0 if data.votes is None else int(np.isfinite(data.votes[keep]).sum()),
                "resized": int(data.resized[keep].sum()) if data.resized is not None else 0})
    return out


def duplicates(everything: PatchSet) -> list[dict]:
    def row(i: int) -> dict:
        split = everything.splits[i] if everything.splits is not None else ""
        return {"dataset": str(everything.datasets[i]), "path": everything.paths[i], **({"split": str(split)}
                                                                                          if split else {})}

    return [{"a": row(m.i), "b": row(m.j), "match": m.kind} for m in overlap.find_overlaps(everything)]


def render(rows: list[dict], found: list[dict], seconds: float | None = None) -> str:
    cells = [list(COLUMNS)] + [["-" if r[c] is None else str(r[c]) for c in COLUMNS] for r in rows]
    widths = [max(len(line[k]) for line in cells) for k in range(len(COLUMNS))]
    lines = ["  ".join(v.ljust(w) if k < 2 else v.rjust(w) for k, (v, w) in enumerate(zip(line, widths)))
             for line in cells]
    kinds = {kind: sum(d["match"] == kind for d in found) for kind in (overlap.SLIDE_POSITION, overlap.PIXELS)}
    within = sum(d["a"]["dataset"] == d["b"]["dataset"] for d in found)
    took = f"; searched in {seconds:.1f} s" if seconds is not None else ""
    lines += ["", f"figures shown twice: {len(found)} pair(s), {within} within a dataset" + (
        " (" + ", ".join(f"{n} {kind}" for kind, n in kinds.items()) + ")" if found else "") + took]
    side = lambda r: f"{r['dataset']} {r['path']}" + (f" [{r['split']}]" if "split" in r else "")  # noqa: E731
    for kind in kinds:  # the first examples of each kind
        lines += [f"  {side(d['a'])} = {side(d['b'])} ({kind})" for d in found if d["match"] == kind][:EXAMPLES]
    shown = sum(min(n, EXAMPLES) for n in kinds.values())
    lines += [f"  ... and {len(found) - shown} more (--out DIR: all of them in DIR/data.json)"] \
        if len(found) > shown else []
    return "\n".join(lines)


def run(args: argparse.Namespace) -> None:
    """``amf data`` (arguments: cli/main.py)."""
    everything, chosen = load_every_row(args.data, args.split)
    start = time.perf_counter()
    rows, found = table(everything.subset(np.flatnonzero(chosen))), duplicates(everything)
    print(render(rows, found, time.perf_counter() - start))
    if args.out is not None:
        args.out.mkdir(parents=True, exist_ok=True)
        (args.out / "data.json").write_text(json.dumps({"split": args.split, "datasets": rows, "duplicates": found},
                                                       indent=2) + "\n")
        print(f"wrote {args.out / 'data.json'}")
