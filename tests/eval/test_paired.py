"""Paired differences over seeds, against numbers worked out by hand."""

from __future__ import annotations

import math

import pytest

from tokenflow.eval.paired import paired


def test_difference_standard_error_and_signs_by_hand():
    # diffs 2, 4, 6: mean 4, sample std 2, se 2 / sqrt(3) = 1.1547
    p = paired({0: 12.0, 1: 14.0, 2: 16.0}, {0: 10.0, 1: 10.0, 2: 10.0})
    assert p.diffs == {0: 2.0, 1: 4.0, 2: 6.0}
    assert p.mean == pytest.approx(4.0)
    assert p.se == pytest.approx(2 / math.sqrt(3))
    assert (p.positive, p.n) == (3, 3)
    assert p.verdict == "beats"  # 4 > 2 * 1.155 and every seed positive


def test_claim_rule_needs_every_seed_and_two_standard_errors():
    # a large mean with one negative seed is level: diffs 10, 12, -1
    assert paired({0: 20, 1: 22, 2: 9}, {0: 10, 1: 10, 2: 10}).verdict == "level"
    # every seed positive but noisy: diffs 0.5, 0.5, 9 -> mean 3.33, se 2.83; 3.33 < 5.67
    p = paired({0: 10.5, 1: 10.5, 2: 19}, {0: 10, 1: 10, 2: 10})
    assert p.positive == 3 and p.mean < 2 * p.se and p.verdict == "level"
    # the mirror image trails
    assert paired({0: 8, 1: 6, 2: 4}, {0: 10, 1: 10, 2: 10}).verdict == "trails"
    # a tie on one seed is not positive
    assert paired({0: 10, 1: 14, 2: 16}, {0: 10, 1: 10, 2: 10}).positive == 2


def test_one_seed_claims_nothing_and_pairs_only_shared_seeds():
    one = paired({3: 50.0}, {3: 10.0})
    assert math.isnan(one.se) and one.verdict == "level"
    p = paired({0: 5.0, 1: 6.0, 7: 1.0}, {1: 4.0, 0: 1.0})
    assert p.diffs == {0: 4.0, 1: 2.0}
    with pytest.raises(ValueError, match="no common seeds"):
        paired({0: 1.0}, {1: 1.0})
    d = p.to_dict()
    assert d["n"] == 2 and d["positive"] == 2 and d["diffs"] == {"0": 4.0, "1": 2.0}
