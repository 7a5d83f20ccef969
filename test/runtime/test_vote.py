"""The vote (runtime/vote.py) with per-fold thresholds other than 0.5, by hand, and through the ensemble and
process.py with a spec whose folds have their own thresholds; the other rules (mean-probability, mean-then-vote
with several models per fold), by hand, and as the spec names them through the ensemble, process.py and
``amf predict``."""

from __future__ import annotations

import csv
import json

import numpy as np
import pytest
from conftest import make_tiny_ensemble, save_stack, tiny_model_probs, write_inputs

import process
from cli.main import main as amf
from runtime.contract import MAJORITY, MEAN_PROBABILITY, MEAN_THEN_VOTE
from runtime.ensemble import Ensemble
from runtime.errors import ModelError
from runtime.grand_challenge import OUTPUT_FILE
from runtime.vote import vote

THRESHOLDS = [0.3, 0.7, 0.5, 0.9]  # mean 0.6: the tie-break threshold

# probs per fold -> votes (p >= its fold's threshold), by hand -> class
HAND = [
    ([0.35, 0.65, 0.55, 0.95], "Y N Y Y", True),  # 3 of 4
    ([0.32, 0.20, 0.52, 0.95], "Y N Y Y", True),  # 3 of 4 although the mean (0.4975) is below 0.5 and 0.6
    ([0.30, 0.70, 0.10, 0.10], "Y Y N N", False),  # a probability equal to its threshold votes; tie, mean 0.3 < 0.6
    ([0.29, 0.75, 0.49, 0.95], "N Y N Y", True),  # tie, mean 0.62 >= 0.6
    ([0.60, 0.60, 0.60, 0.55], "Y N Y N", False),  # tie, mean 0.5875 < 0.6 (0.5 everywhere: 4 votes)
    ([0.40, 0.60, 0.45, 0.85], "Y N N N", False),  # 1 of 4 (0.5 everywhere: a tie won at mean 0.575)
    ([0.20, 0.69, 0.49, 0.89], "N N N N", False),  # none (0.5 everywhere: a tie won at mean 0.5675)
    ([0.31, 0.71, 0.51, 0.91], "Y Y Y Y", True),
]


def test_vote_with_per_fold_thresholds_matches_the_hand_count():
    probs = np.array([row for row, _, _ in HAND])
    for row, votes, _ in HAND:  # the hand count itself
        assert " ".join("Y" if p >= t else "N" for p, t in zip(row, THRESHOLDS)) == votes
    atypical, confidence = vote(probs, THRESHOLDS)
    assert atypical.tolist() == [expected for _, _, expected in HAND]
    np.testing.assert_allclose(confidence, probs.mean(axis=1))
    # the thresholds belong to their folds: reversed, row 2 gets 1 vote of 4
    assert vote(probs[1:2], THRESHOLDS[::-1])[0].tolist() == [False]
    # and they matter: with 0.5 everywhere rows 2, 5, 6 and 7 (from 1) would go the other way
    assert vote(probs, [0.5] * 4)[0].tolist() == [True, False, False, True, True, True, True, True]


def test_odd_fold_count_with_thresholds_has_no_ties():
    thresholds = [0.2, 0.8, 0.6]
    probs = np.array([[0.25, 0.50, 0.65],  # Y N Y
                      [0.25, 0.85, 0.55],  # Y Y N
                      [0.15, 0.85, 0.55],  # N Y N
                      [0.19, 0.79, 0.59]])  # N N N
    assert vote(probs, thresholds)[0].tolist() == [True, True, False, False]


# uniform pages: the tiny model's weighted mean is the page value v, so fold f's probability is
# sigmoid((v - 128) / 16 + offset_f) with the default offsets (0, 0.2, -0.2, 0.4)
UNIFORM = {
    100: False,  # probs 0.15 0.18 0.13 0.21: no vote
    120: False,  # 0.38 0.43 0.33 0.48: fold 0 only
    128: False,  # 0.50 0.55 0.45 0.60: fold 0 only (0.5 everywhere: 3 votes, atypical)
    132: False,  # 0.56 0.61 0.51 0.66: folds 0 and 2, tie, mean 0.586 < 0.6 (0.5 everywhere: atypical)
    136: True,  # 0.62 0.67 0.57 0.71: folds 0 and 2, tie, mean 0.644 >= 0.6
    150: True,  # 0.80 0.83 0.76 0.86: folds 0, 1, 2
    160: True,  # 0.88 0.90 0.86 0.92: all four
}


def uniform_pages() -> np.ndarray:
    return np.stack([np.full((128, 128, 3), v, np.uint8) for v in UNIFORM])


def test_uniform_pages_vote_as_computed_by_hand():
    probs = tiny_model_probs(uniform_pages())
    np.testing.assert_allclose(probs[list(UNIFORM).index(132)], [0.5622, 0.6106, 0.5125, 0.6570], atol=1e-4)
    assert vote(probs, THRESHOLDS)[0].tolist() == list(UNIFORM.values())


def test_the_ensemble_votes_with_the_thresholds_of_its_spec(tmp_path):
    ens = Ensemble(make_tiny_ensemble(tmp_path / "w", thresholds=THRESHOLDS))
    assert list(ens.thresholds) == THRESHOLDS
    prediction = ens.predict(uniform_pages())
    assert prediction.atypical.tolist() == list(UNIFORM.values())
    np.testing.assert_allclose(prediction.confidence, tiny_model_probs(uniform_pages()).mean(axis=1), atol=1e-6)
    plain = Ensemble(make_tiny_ensemble(tmp_path / "plain"))
    assert plain.predict(uniform_pages()).atypical.tolist() == [False, False, True, True, True, True, True]


@pytest.mark.parametrize("thresholds, expected", [
    (THRESHOLDS, list(UNIFORM.values())),
    ([0.5] * 4, [False, False, True, True, True, True, True]),
])
def test_process_writes_the_classes_of_the_specs_thresholds(thresholds, expected, tmp_path, capsys):
    save_stack(write_inputs(tmp_path / "in") / "stack.tif", uniform_pages())
    weights = make_tiny_ensemble(tmp_path / "w", thresholds=thresholds)
    code = process.main(["--input", str(tmp_path / "in"), "--output", str(tmp_path / "out"), "--weights", str(weights)])
    assert code == 0, capsys.readouterr().err
    result = json.loads((tmp_path / "out" / OUTPUT_FILE).read_text())
    assert [r["class"] for r in result] == ["atypical" if a else "normal" for a in expected]


# --- the other rules ---------------------------------------------------------------------------------------------

def test_mean_probability_compares_the_mean_with_the_mean_threshold():
    probs = np.array([row for row, _, _ in HAND])
    # means by hand: 0.625 0.4975 0.3 0.62 0.5875 0.575 0.5675 0.61, against 0.6 (the thresholds' mean)
    atypical, confidence = vote(probs, THRESHOLDS, MEAN_PROBABILITY)
    assert atypical.tolist() == [True, False, False, True, False, False, False, True]  # row 1: majority says yes
    np.testing.assert_allclose(confidence, probs.mean(axis=1))
    # 0.5 everywhere: all but rows 1 (0.4975) and 2 (0.3); a mean equal to the threshold is atypical
    assert vote(probs, [0.5] * 4, MEAN_PROBABILITY)[0].tolist() == [True, False, False, True, True, True, True, True]
    assert vote([[0.25, 0.75], [0.25, 0.74]], [0.5, 0.5], MEAN_PROBABILITY)[0].tolist() == [True, False]


MEMBERS = ["a", "a", "b", "b", "c", "c"]  # three folds, two members each, at 0.5
GROUPED = np.array([
    [0.9, 0.1, 0.6, 0.45, 0.2, 0.2],  # fold means 0.5 Y, 0.525 Y, 0.2 N; 2 of 6 models; mean 0.408
    [0.9, 0.9, 0.45, 0.45, 0.45, 0.45],  # 0.9 Y, 0.45 N, 0.45 N; 2 of 6; mean 0.6
    [0.6, 0.6, 0.6, 0.6, 0.0, 0.0],  # Y Y N; 4 of 6; mean 0.4
])


def test_mean_then_vote_averages_within_each_fold_then_takes_the_folds_majority():
    assert vote(GROUPED, [0.5] * 6, MEAN_THEN_VOTE, MEMBERS)[0].tolist() == [True, False, True]
    assert vote(GROUPED, [0.5] * 6, MAJORITY, MEMBERS)[0].tolist() == [False, False, True]
    assert vote(GROUPED, [0.5] * 6, MEAN_PROBABILITY, MEMBERS)[0].tolist() == [False, True, False]
    # the folds are named, not placed: interleaved columns give the same answers
    order = [0, 2, 4, 1, 3, 5]
    assert vote(GROUPED[:, order], [0.5] * 6, MEAN_THEN_VOTE, [MEMBERS[i] for i in order])[0].tolist() == [
        True, False, True]


def test_mean_then_vote_uses_each_folds_mean_threshold_breaks_ties_and_counts_each_fold_once():
    thresholds = [0.3, 0.5, 0.7, 0.9, 0.5, 0.5]  # per fold 0.4, 0.8, 0.5
    row = np.array([[0.45, 0.4, 0.85, 0.95, 0.2, 0.2]])  # means 0.425 Y (N at 0.5), 0.9 Y, 0.2 N
    assert vote(row, thresholds, MEAN_THEN_VOTE, MEMBERS)[0].tolist() == [True]
    assert vote(row, [0.5] * 6, MEAN_THEN_VOTE, MEMBERS)[0].tolist() == [False]
    # two folds, one vote each: the tie goes to the mean of the folds' means against their mean threshold
    two = np.array([[0.9, 0.7, 0.3, 0.4],  # 0.8 Y, 0.35 N, mean 0.575
                    [0.6, 0.5, 0.1, 0.2]])  # 0.55 Y, 0.15 N, mean 0.35
    assert vote(two, [0.5] * 4, MEAN_THEN_VOTE, ["a", "a", "b", "b"])[0].tolist() == [True, False]
    # confidence: the folds' means averaged, each fold once (0.8 and 0.2), not the three models' mean (0.6)
    atypical, confidence = vote([[0.9, 0.7, 0.2]], [0.5] * 3, MEAN_THEN_VOTE, ["a", "a", "b"])
    np.testing.assert_allclose(confidence, [0.5])
    assert atypical.tolist() == [True]  # a tie of two folds, 0.5 >= 0.5


def test_mean_then_vote_with_one_model_per_fold_is_the_majority_exactly():
    probs = np.random.default_rng(0).random((500, 4))
    thresholds = [0.3, 0.45, 0.5, 0.7]
    expected = vote(probs, thresholds)
    for folds in (None, ["w", "x", "y", "z"]):
        got = vote(probs, thresholds, MEAN_THEN_VOTE, folds)
        assert np.array_equal(got[0], expected[0]) and np.array_equal(got[1], expected[1])


def test_unknown_rules_and_mismatched_folds_are_refused():
    with pytest.raises(ValueError, match="unknown vote rule 'minority'"):
        vote(GROUPED, [0.5] * 6, "minority")
    with pytest.raises(ValueError, match="5 fold names for 6 models"):
        vote(GROUPED, [0.5] * 6, MEAN_THEN_VOTE, MEMBERS[:5])


# uniform pages 100, 128, 160 with offsets making three models agree and one far below: fold probabilities
# 0.19 0.19 0.19 0.00 | 0.57 0.57 0.57 0.00 | 0.91 0.91 0.91 0.02
SPLIT_OFFSETS = (0.3, 0.3, 0.3, -6.0)
SPLIT_PAGES = np.stack([np.full((128, 128, 3), v, np.uint8) for v in (100, 128, 160)])
BY_RULE = {MAJORITY: [False, True, True],  # 128: 3 of 4
           MEAN_PROBABILITY: [False, False, True],  # 128: mean 0.43
           MEAN_THEN_VOTE: [False, False, True]}  # folds a (0.57 Y) and b (0.29 N) at 128: a tie, mean 0.43


@pytest.mark.parametrize("rule", list(BY_RULE))
def test_the_ensemble_votes_by_the_rule_its_spec_names(rule, tmp_path):
    weights = make_tiny_ensemble(tmp_path / "w", offsets=SPLIT_OFFSETS, vote=rule, groups=["a", "a", "b", "b"])
    ens = Ensemble(weights)
    assert ens.vote == rule and ens.spec.member_of == ["a", "a", "b", "b"]
    prediction = ens.predict(SPLIT_PAGES)
    assert prediction.atypical.tolist() == BY_RULE[rule]
    expected = vote(tiny_model_probs(SPLIT_PAGES, SPLIT_OFFSETS), [0.5] * 4, rule, ["a", "a", "b", "b"])
    np.testing.assert_allclose(prediction.confidence, expected[1], atol=1e-6)


def test_a_spec_without_a_vote_is_majority_and_the_rule_can_be_overridden(tmp_path):
    weights = make_tiny_ensemble(tmp_path / "w", offsets=SPLIT_OFFSETS, vote=None)
    assert "vote" not in json.loads((weights / "ensemble.json").read_text())
    ens = Ensemble(weights)
    assert ens.vote == MAJORITY and ens.predict(SPLIT_PAGES).atypical.tolist() == BY_RULE[MAJORITY]
    other = Ensemble(weights, vote=MEAN_PROBABILITY)
    assert other.predict(SPLIT_PAGES).atypical.tolist() == BY_RULE[MEAN_PROBABILITY]
    with pytest.raises(ModelError, match="unknown vote rule 'minority'"):
        Ensemble(weights, vote="minority")
    spec = json.loads((weights / "ensemble.json").read_text())
    (weights / "ensemble.json").write_text(json.dumps({**spec, "vote": "minority"}))
    with pytest.raises(ModelError, match="ensemble.json: unknown vote rule 'minority'"):
        Ensemble(weights)


@pytest.mark.parametrize("rule", [MAJORITY, MEAN_PROBABILITY])
def test_process_writes_the_classes_of_the_specs_vote(rule, tmp_path, capsys):
    save_stack(write_inputs(tmp_path / "in") / "stack.tif", SPLIT_PAGES)
    weights = make_tiny_ensemble(tmp_path / "w", offsets=SPLIT_OFFSETS, vote=rule)
    code = process.main(["--input", str(tmp_path / "in"), "--output", str(tmp_path / "out"), "--weights", str(weights)])
    assert code == 0, capsys.readouterr().err
    result = json.loads((tmp_path / "out" / OUTPUT_FILE).read_text())
    assert [r["class"] for r in result] == ["atypical" if a else "normal" for a in BY_RULE[rule]]


def test_amf_predict_writes_the_classes_of_the_specs_vote_or_of_vote(tmp_path):
    stack = save_stack(tmp_path / "stack.tif", SPLIT_PAGES)
    weights = make_tiny_ensemble(tmp_path / "w", offsets=SPLIT_OFFSETS, vote=MEAN_PROBABILITY)
    for extra, rule in (([], MEAN_PROBABILITY), (["--vote", MAJORITY], MAJORITY)):
        out = tmp_path / f"{rule}.csv"
        assert amf(["predict", str(stack), "--out", str(out), "--weights", str(weights), *extra]) == 0
        assert [r["class"] == "atypical" for r in csv.DictReader(out.open())] == BY_RULE[rule]
