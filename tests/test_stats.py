"""Paired intervals (analysis/stats.py) against values computed by hand."""

from __future__ import annotations

import math

import pytest

from selective_backprop.analysis.stats import Interval, paired_difference, paired_ratio, t_interval, verdict


def test_paired_ratio_is_the_geometric_mean_with_a_t_interval_on_logs():
    # logs 0, ln 1.2, ln 1.5: mean 0.195929, sd 0.203074, se 0.117245, t(0.95, 2) = 2.919986
    i = paired_ratio([1.0, 1.2, 1.5], [1.0, 1.0, 1.0])
    assert (i.estimate, i.low, i.high, i.n) == pytest.approx((1.21644, 0.86379, 1.71306, 3), abs=5e-5)
    assert verdict(i, 1.0) == "indistinguishable"
    assert i.format(suffix="×") == "1.22× [0.86, 1.71]"


def test_paired_difference_and_its_verdict():
    # d = 0.01, 0.02, 0, 0.03: mean 0.015, sd 0.0129099, t(0.95, 3) = 2.353363 -> half 0.0151909
    i = paired_difference([0.13, 0.14, 0.12, 0.15], [0.12] * 4)
    assert (i.estimate, i.low, i.high) == pytest.approx((0.015, -0.0001909, 0.0301909), abs=1e-6)
    assert verdict(i, 0.0, higher_is_better=False) == "indistinguishable"
    j = paired_difference([0.13, 0.14, 0.13, 0.14], [0.12] * 4)      # every seed worse by 1-2 points
    assert verdict(j, 0.0, higher_is_better=False) == "worse"
    assert verdict(j, 0.0, higher_is_better=True) == "better"
    assert verdict(paired_ratio([2.0, 2.2, 1.9], [1.0] * 3), 1.0, words=("faster", "slower")) == "faster"
    assert verdict(paired_ratio([0.5, 0.6, 0.55], [1.0] * 3), 1.0, words=("faster", "slower")) == "slower"


def test_unpaired_and_single_seeds_give_no_interval():
    i = paired_ratio([2.0, math.nan, 3.0], [1.0, 1.0, math.nan])   # only the first pair is complete
    assert i.n == 1 and i.estimate == 2.0 and math.isnan(i.low) and math.isnan(i.high)
    assert verdict(i, 1.0) == "indistinguishable" and i.format() == "2.00"
    assert t_interval([]).n == 0 and Interval(math.nan, math.nan, math.nan, 0).format() == "–"
    with pytest.raises(ValueError, match="equal lengths"):
        paired_difference([1.0], [1.0, 2.0])
    with pytest.raises(ValueError, match="positive"):
        paired_ratio([0.0, 1.0], [1.0, 1.0])
