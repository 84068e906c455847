"""Multiplicity adjustments and the specificity of a correlation, against hand-computed
values."""

import math

import numpy as np
import pytest

from babeltower.analysis.statistics import (benjamini_hochberg, correlation_with_controls,
                                            fisher_interval, holm, paired_t)


def test_holm_by_hand():
    # sorted 0.005, 0.01, 0.03, 0.04 -> x4, x3, x2, x1 = 0.02, 0.03, 0.06, 0.04 -> running
    # max 0.02, 0.03, 0.06, 0.06
    assert holm([0.01, 0.04, 0.03, 0.005]) == pytest.approx([0.03, 0.06, 0.06, 0.02])
    assert holm([0.5, 0.6]) == pytest.approx([1.0, 1.0])         # capped at 1
    out = holm([0.01, float("nan"), 0.04])                        # NaN: not in the family
    assert out[0] == pytest.approx(0.02) and math.isnan(out[1]) and out[2] == pytest.approx(0.04)


def test_benjamini_hochberg_by_hand():
    # p m / rank = 0.02, 0.02, 0.04, 0.04 -> running min from the largest: the same
    assert benjamini_hochberg([0.01, 0.04, 0.03, 0.005]) == pytest.approx([0.02, 0.04, 0.04, 0.02])
    assert benjamini_hochberg([0.02, 0.5]) == pytest.approx([0.04, 0.5])


def test_paired_t_and_its_simultaneous_interval_by_hand():
    # diffs 1, 2, 3: mean 2, se 1/sqrt(3), t = sqrt(12), 2 degrees of freedom; for df = 2
    # the t CDF is 1/2 + t / (2 sqrt(t^2 + 2)) and the quantile (2u-1)/sqrt(2u(1-u))
    r = paired_t([1.0, 2.0, 3.0])
    t = math.sqrt(12)
    assert r["p"] == pytest.approx(2 * (0.5 - t / (2 * math.sqrt(t * t + 2))))
    q = lambda u: (2 * u - 1) / math.sqrt(2 * u * (1 - u))  # noqa: E731
    assert r["ci_high"] - 2 == pytest.approx(q(0.975) / math.sqrt(3))
    wide = paired_t([1.0, 2.0, 3.0], family_size=4)
    assert wide["level"] == pytest.approx(0.9875)
    assert wide["ci_high"] - 2 == pytest.approx(q(1 - 0.0125 / 2) / math.sqrt(3))
    assert math.isnan(paired_t([0.1, 0.1])["p"]) and math.isnan(paired_t([1.0])["ci_low"])


def test_a_monotone_share_is_matched_by_the_monotone_null():
    x = np.arange(14) * 1000.0
    share = 1 - np.exp(-x / 3000)
    forgetting = 2 + 0.5 * (1 - np.exp(-x / 5000))
    out = correlation_with_controls(x, share, 1 - np.exp(-x / 4000),
                                    {"python bpb": forgetting})
    assert out["curve"]["pearson"] > 0.98
    assert out["controls"]["python bpb"]["pearson"] > 0.95     # forgetting correlates too
    assert out["monotone_null"]["pearson_max"] > out["curve"]["pearson"]
    assert out["specific"] is False
    assert out["monotone_null"]["spearman"] == pytest.approx(1.0)


def test_a_non_monotone_share_tracked_by_the_curve_is_specific():
    x = np.arange(20) * 1000.0
    share = np.sin(np.linspace(0, np.pi, 20))        # rises then falls
    out = correlation_with_controls(x, share, share + 0.01 * np.cos(np.arange(20)))
    assert out["curve"]["pearson"] > 0.99 and out["specific"] is True
    lo, hi = out["curve"]["pearson_ci95"]
    assert lo < out["curve"]["pearson"] < hi
    assert fisher_interval(0.5, 3) is None


def test_estimate_binomial_has_the_wilson_interval_and_the_binomial_se():
    from babeltower.analysis.statistics import Estimate

    e = Estimate.binomial(30, 100)
    # Wilson 95% for 30/100 (z = 1.96): 0.2189 to 0.3958 (textbook value)
    assert e.kind == "binomial" and e.n == 100 and e.value == 0.3
    assert abs(e.lo - 0.2189) < 5e-4 and abs(e.hi - 0.3958) < 5e-4
    assert abs(e.se - (0.3 * 0.7 / 100) ** 0.5) < 1e-12
    assert Estimate.from_dict(e.to_dict()) == e


def test_newcombe_interval_matches_newcombe_1998():
    from babeltower.analysis.statistics import newcombe_interval

    # Newcombe (1998), Stat Med 17:873, example (56/70 vs 48/80), method 10: 0.0524 to 0.3339
    lo, hi = newcombe_interval(56, 70, 48, 80)
    assert abs(lo - 0.0524) < 5e-4 and abs(hi - 0.3339) < 5e-4


def test_estimate_over_seeds_is_a_student_t_interval():
    from babeltower.analysis.statistics import Estimate

    e = Estimate.over_seeds([1.0, 2.0, 3.0, None])
    # sd 1, n 3: se 1/sqrt(3); t(0.975, 2) = 4.302653
    assert e.n == 3 and e.kind == "seeds" and e.value == 2.0
    assert abs(e.se - 3 ** -0.5) < 1e-12
    assert abs((e.hi - e.value) - 4.302653 / 3 ** 0.5) < 1e-5
    with pytest.raises(ValueError):
        Estimate(0.5, None, None, None, 1, "guess")
