"""training/choose.py and training/compare.py: the shared decision threshold, the vote rule, and sources compared
as candidate ensembles."""

from __future__ import annotations

import numpy as np


def test_the_shared_threshold_maximises_mean_validation_balanced_accuracy():
    from training.choose import best_shared_threshold

    y = np.array([0, 0, 0, 1, 1, 1])
    a = (y, np.array([0.1, 0.3, 0.35, 0.4, 0.6, 0.9]))  # separable at any t in (0.35, 0.4]
    b = (y, np.array([0.2, 0.25, 0.3, 0.38, 0.7, 0.8]))  # separable at any t in (0.3, 0.38]
    t, score = best_shared_threshold([a, b])
    assert 0.35 < t <= 0.38 and score == 1.0
    t, _ = best_shared_threshold([(y, np.array([0.1, 0.1, 0.1, 0.9, 0.9, 0.9]))])
    assert t == 0.5  # a flat optimum keeps the default


def test_majority_stays_unless_another_rule_gains_at_least_the_minimum():
    from training.choose import choose_vote

    def scores(majority, mean, then_vote):
        return {"majority": majority, "mean-probability": mean, "mean-then-vote": then_vote}

    assert choose_vote(scores(0.80, 0.8049, 0.80)) == "majority"  # a gain under 0.005
    assert choose_vote(scores(0.80, 0.805, 0.80)) == "mean-probability"  # exactly the gain (0.805 - 0.8 in floats)
    assert choose_vote(scores(0.80, 0.805, 0.806)) == "mean-then-vote"  # the better of the two
    assert choose_vote(scores(0.80, 0.81, 0.81)) == "mean-probability"  # equals: the first rule
    assert choose_vote(scores(0.82, 0.81, 0.70)) == "majority"


def test_rules_are_scored_per_fold_on_that_folds_members_at_their_own_best_threshold():
    from training.choose import score_votes

    # fold a, three members: the normal patch has two confident members (majority calls it atypical at any
    # threshold that keeps the atypical one), but the lowest mean; fold b, one member, separable at (0.2, 0.8]
    a = (np.array([0, 1]), np.array([[0.9, 0.9, 0.0], [0.7, 0.7, 0.7]]))
    b = (np.array([0, 1]), np.array([[0.2], [0.8]]))
    rules = score_votes({"val-a": a, "val-b": b})
    assert rules["majority"]["ba"] == {"val-a": 0.5, "val-b": 1.0} and rules["majority"]["mean_ba"] == 0.75
    assert rules["majority"]["threshold"] == 0.5  # a flat optimum keeps the default
    for rule in ("mean-probability", "mean-then-vote"):  # within one fold, mean-then-vote is the mean
        assert rules[rule]["threshold"] == 0.61 and rules[rule]["mean_ba"] == 1.0, rule  # means 0.6 and 0.7
    one_each = score_votes({"val-a": (a[0], a[1][:, :1]), "val-b": b})
    assert len({(r["threshold"], r["mean_ba"]) for r in one_each.values()}) == 1  # one model per fold: alike


def _rows(source, scores):
    """Member records and their (labels, probabilities) of one source: fold name -> its member's P on [0, 0, 1, 1]."""
    y = np.array([0, 0, 1, 1])
    rows = [{"fold": name, "model": f"{source}/{name}", "source": source} for name in scores]
    return rows, [(y, np.array(p)) for p in scores.values()]


def test_sources_are_compared_alone_together_and_per_fold_against_the_first():
    from training.compare import compare_sources

    # A, the baseline, separates fold a and not b (at any threshold); B the reverse
    rows_a, scores_a = _rows("A", {"val-a": [0.1, 0.2, 0.8, 0.9], "val-b": [0.9, 0.1, 0.2, 0.8]})
    rows_b, scores_b = _rows("B", {"val-a": [0.9, 0.1, 0.2, 0.8], "val-b": [0.1, 0.2, 0.8, 0.9]})
    doc = compare_sources(rows_a + rows_b, scores_a + scores_b, ["A", "B"])
    assert doc["better_source_per_fold"] == {"val-a": "A", "val-b": "B"}
    base = doc["candidates"]["alone: A"]["majority"]
    assert base["ba"] == {"val-a": 1.0, "val-b": 0.5} and base["diff_vs_baseline"] == {"val-a": 0.0, "val-b": 0.0}
    assert base["threshold"] == 0.5 and base["mean_ba"] == 0.75
    per_fold = doc["candidates"]["the better source per fold"]["majority"]
    assert per_fold["ba"] == {"val-a": 1.0, "val-b": 1.0} and per_fold["diff_vs_baseline"] == {"val-a": 0, "val-b": 0.5}
    assert doc["candidates"]["alone: B"]["majority"]["diff_vs_baseline"] == {"val-a": -0.5, "val-b": 0.5}
    assert doc["decision"]["best"] == "the better source per fold" and doc["decision"]["ship"]
    assert doc["decision"]["gain"] == 0.25
    # the same source twice gains nothing: the baseline stays
    same = compare_sources(rows_a + [dict(r, source="A2") for r in rows_a], scores_a + scores_a, ["A", "A2"])
    assert not same["decision"]["ship"] and same["decision"]["gain"] == 0.0
    # a source better on one fold's last patch only: 0.0625 mean BA over 2 folds ships, 0.004 would not (below)
    rows_c, scores_c = _rows("C", {"val-a": [0.1, 0.2, 0.8, 0.9], "val-b": [0.9, 0.1, 0.2, 0.8]})
    assert not compare_sources(rows_a + rows_c, scores_a + scores_c, ["A", "C"])["decision"]["ship"]


def test_a_source_without_one_of_the_folds_is_not_compared_and_says_why():
    from training.compare import compare_sources

    rows_a, scores_a = _rows("A", {"val-a": [0.1, 0.2, 0.8, 0.9], "val-b": [0.1, 0.2, 0.8, 0.9]})
    rows_b, scores_b = _rows("B", {"val-a": [0.1, 0.2, 0.8, 0.9]})
    assert compare_sources(rows_a + rows_b, scores_a + scores_b, ["A", "B"]) == {
        "skipped": "B has no model of fold(s) val-b: compare sources of the same folds"}
