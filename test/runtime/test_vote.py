"""The vote (runtime/vote.py) with per-fold thresholds other than 0.5, by hand, and through the ensemble and
process.py with a spec whose folds have their own thresholds."""

from __future__ import annotations

import json

import numpy as np
import pytest
from conftest import make_tiny_ensemble, save_stack, tiny_model_probs, write_inputs

import process
from runtime.ensemble import Ensemble
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
    ens = Ensemble(make_tiny_ensemble(tmp_path / "w", thresholds=THRESHOLDS), providers=["CPUExecutionProvider"])
    assert list(ens.thresholds) == THRESHOLDS
    prediction = ens.predict(uniform_pages())
    assert prediction.atypical.tolist() == list(UNIFORM.values())
    np.testing.assert_allclose(prediction.confidence, tiny_model_probs(uniform_pages()).mean(axis=1), atol=1e-6)
    plain = Ensemble(make_tiny_ensemble(tmp_path / "plain"), providers=["CPUExecutionProvider"])
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
