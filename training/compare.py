"""Compare sources of the same folds (runs, exported ensembles) as candidate ensembles on the validation parts:
each alone, all together, and per fold the better source. The first source (e.g. the shipped ensemble) is the
baseline, replaced only by a gain of at least SHIP_MIN_GAIN mean validation BA (``amf calibrate`` with several
sources; its ``comparison``, and ``comparison.md``).
"""

from __future__ import annotations

from sklearn.metrics import balanced_accuracy_score

from runtime.contract import MAJORITY
from training.choose import choose_vote, fold_vote, score_votes
from training.validation import Scores, by_fold

SHIP_MIN_GAIN = 0.005  # mean validation BA a candidate ensemble must gain over the baseline (the first source)


def missing_folds(records: list[dict], sources: list[str]) -> str | None:
    """Why ``sources`` cannot be compared as ensembles (one lacks a fold the others have), or None."""
    names = sorted({record["fold"] for record in records})
    for source in sources:
        lacking = [n for n in names if not any(r["fold"] == n and r["source"] == source for r in records)]
        if lacking:
            return f"{source} has no model of fold(s) {', '.join(lacking)}: compare sources of the same folds"
    return None


def compare_sources(records: list[dict], scores: list[Scores], sources: list[str]) -> dict:
    """``records``: the members' records (training/validation.py), ``scores`` their (labels, probabilities) on their
    validation parts. Scored on validation: each source alone, all together, and per fold the source whose members
    score the higher BA there (majority at 0.5: chosen on the very patches it is then scored on, so optimistic).
    Per candidate and vote rule: the best shared threshold, the mean and per-fold BA there, and per fold the paired
    difference from the first source under majority (the baseline, e.g. the shipped ensemble). ``decision``: the
    candidate with the highest mean BA under its rule (:func:`training.choose.choose_vote`) replaces the baseline
    only if it gains at least SHIP_MIN_GAIN. A source that lacks a fold: ``{"skipped": why}``."""
    lacking = missing_folds(records, sources)
    if lacking:
        return {"skipped": lacking}
    names = sorted({record["fold"] for record in records})
    alone = {s: dict(sorted(by_fold(records, scores, lambda r, s=s: r["source"] == s).items())) for s in sources}
    better = {n: max(sources, key=lambda s: (balanced_accuracy_score(alone[s][n][0], fold_vote(alone[s][n][1], 0.5)),
                                             -sources.index(s))) for n in names}
    candidates = {**{f"alone: {s}": alone[s] for s in sources},
                  "all together": dict(sorted(by_fold(records, scores).items())),
                  "the better source per fold": {n: alone[better[n]][n] for n in names}}
    scored = {name: score_votes(per_fold) for name, per_fold in candidates.items()}
    baseline = scored[f"alone: {sources[0]}"][MAJORITY]
    for votes in scored.values():
        for v in votes.values():
            v["diff_vs_baseline"] = {n: v["ba"][n] - baseline["ba"][n] for n in names}
    best_vote = {name: choose_vote({vote: v["mean_ba"] for vote, v in votes.items()}) for name, votes in scored.items()}
    best = max(scored, key=lambda name: scored[name][best_vote[name]]["mean_ba"])
    gain = scored[best][best_vote[best]]["mean_ba"] - baseline["mean_ba"]
    ships = best != f"alone: {sources[0]}" and round(gain, 12) >= SHIP_MIN_GAIN
    return {"baseline": sources[0], "better_source_per_fold": better, "candidates": scored,
            "decision": {"best": best, "vote": best_vote[best], "gain": gain, "min_gain": SHIP_MIN_GAIN,
                         "ship": ships}}


def comparison_table(comparison: dict) -> str:
    """The comparison as a Markdown table: one row per candidate and vote rule, per-fold BA and paired
    differences."""
    names = sorted(next(iter(next(iter(comparison["candidates"].values())).values()))["ba"])
    lines = ["| candidate | vote | threshold | mean BA | " + " | ".join(names) + " |",
             "|---|---|---|---|" + "---|" * len(names)]
    for candidate, votes in comparison["candidates"].items():
        for vote, v in votes.items():
            cells = [f"{v['ba'][n]:.4f} ({v['diff_vs_baseline'][n]:+.4f})" for n in names]
            lines.append(f"| {candidate} | {vote} | {v['threshold']:.2f} | {v['mean_ba']:.4f} | "
                         + " | ".join(cells) + " |")
    d = comparison["decision"]
    lines.append(f"\nbest: {d['best']} ({d['vote']}), {d['gain']:+.4f} mean BA against {comparison['baseline']} "
                 f"(majority); {'ship it' if d['ship'] else 'keep the baseline'} (the rule: a gain of at least "
                 f"{d['min_gain']})")
    return "\n".join(lines)
