"""The stage test on curves whose truth is known by construction.

Each detection test has its false-positive counterpart (a monotone or flat curve of the
same size and eval size that must not be called rise_then_drop). The curves below are the
cases the earlier smoothing rule got wrong (issue 11): a one-checkpoint peak (a running
median removes it), a rise-dip-recover curve whose recovery ends above the first peak
(the global argmax called it monotone), and quantised accuracies of 0-10 of 112 prompts
(second differences made the noise ~0)."""

import numpy as np
import pytest
from scipy.optimize import isotonic_regression
from scipy.special import xlogy

from babeltower.analysis import stage_test
from babeltower.analysis.stages import (BinomialNoise, GaussianNoise, StageOptions,
                                        call_curves, detect_stages, detect_stages_multi, smooth)
from babeltower.errors import BabelError

N = 40
I = np.arange(N)
X = I * 4096.0
OPTS = StageOptions(n_bootstrap=99)


def draws(mean, trials, reps=40, seed=12345):
    return np.random.default_rng(seed).binomial(trials, np.tile(mean, (reps, 1))) / trials


def rate(mean, trials, call="rise_then_drop"):
    """Share of 40 noisy draws of ``mean`` that the test calls ``call`` (one batch)."""
    c = call_curves(X, draws(mean, trials), BinomialNoise(trials), options=OPTS)
    return float(np.mean(c.call == call))


def peaks(mean, trials, seeds=range(4)):
    """detect_stages on a few draws: the located peaks of those called rise_then_drop."""
    return [r.peak_index for r in (detect_stages(X, y, BinomialNoise(trials), options=OPTS)
                                   for y in draws(mean, trials, len(seeds)))
            if r.call == "rise_then_drop"]


# ---- the statistics against independent computations -----------------------------------
def test_prefix_loglik_equals_the_isotonic_fits_likelihood():
    rng = np.random.default_rng(0)
    n = rng.integers(50, 200, size=12).astype(float)
    k = rng.binomial(n.astype(int), rng.uniform(0.05, 0.6, 12)).astype(float)
    pre = stage_test.prefix_loglik("binomial", k[None], n[None])[0]
    for m in range(12):
        fit = isotonic_regression(k[:m + 1] / n[:m + 1], weights=n[:m + 1]).x
        ll = np.sum(xlogy(k[:m + 1], fit) + xlogy(n[:m + 1] - k[:m + 1], 1 - fit))
        assert pre[m] == pytest.approx(ll, abs=1e-8)
    y, se = rng.normal(0, 1, 12), rng.uniform(0.5, 2, 12)
    w = 1 / se ** 2
    pre = stage_test.prefix_loglik("gaussian", (y * w)[None], w[None])[0]
    fit = isotonic_regression(y, weights=w).x
    # block log-likelihood S1^2/(2 S0) = (sum w y^2 - weighted SSE) / 2
    assert pre[-1] == pytest.approx(0.5 * np.sum(w * y ** 2) - 0.5 * np.sum(w * (y - fit) ** 2))


def test_drop_statistic_by_hand():
    # y = 0, 1, 0 with se 1: the isotonic fit (0, .5, .5) has SSE 0.5; a jump after
    # checkpoint 1 fits exactly, so T = 0.5 at split 1; a non-decreasing curve has T = 0
    st = stage_test.curve_statistics("gaussian", np.array([[0.0, 1.0, 0.0], [0.0, 1.0, 2.0]]),
                                     np.ones((2, 3)))
    assert st.drop[0] == pytest.approx(0.5) and st.split[0] == 1
    assert st.drop[1] == pytest.approx(0.0)


# ---- detection and its false-positive counterparts --------------------------------------
def test_one_checkpoint_peak_and_its_counterparts():
    spike = np.where(I < 8, 0.1 + 0.3 * I / 8, 0.28)
    spike[8] = 0.40                                  # the peak is one checkpoint
    assert rate(spike, 400) >= 0.9
    assert all(abs(p - 8) <= 1 for p in peaks(spike, 400)) and peaks(spike, 400)
    assert rate(np.where(I <= 8, 0.1 + 0.3 * I / 8, 0.40), 400) <= 0.1
    assert rate(np.full(N, 0.3), 400) <= 0.1


def test_rise_dip_recover_above_the_first_peak():
    curve = np.interp(I, [0, 8, 14, 30, 39], [0.10, 0.35, 0.22, 0.45, 0.45])
    assert rate(curve, 400) >= 0.9
    found = peaks(curve, 400)
    assert found and all(6 <= p <= 10 for p in found)
    staircase = np.interp(I, [0, 8, 14, 30, 39], [0.10, 0.35, 0.35, 0.45, 0.45])
    assert rate(staircase, 400) <= 0.1


def test_quantised_binomial_curves_of_112_prompts():
    peaked = np.interp(I, [0, 8, 14, 39], [0.0, 10 / 112, 3 / 112, 3 / 112])
    assert rate(peaked, 112) >= 0.8
    assert rate(np.interp(I, [0, 8, 39], [0.0, 10 / 112, 10 / 112]), 112) <= 0.1
    flat = np.full(N, 3 / 112)
    assert rate(flat, 112) <= 0.1 and rate(flat, 112, "flat") >= 0.8


def test_segments_of_a_rise_then_drop_curve():
    curve = np.interp(I, [0, 10, 18, 39], [0.1, 0.45, 0.30, 0.30])
    y = np.random.default_rng(3).binomial(1000, curve) / 1000
    r = detect_stages(X, y, BinomialNoise(1000), options=OPTS, name="php cloze")
    assert r.call == "rise_then_drop" and r.p_value <= 0.05 and r.rise_p_value <= 0.05
    assert abs(r.peak_index - 10) <= 1 and abs(r.stable_index - 18) <= 3
    assert [s.name for s in r.segments] == ["translation", "transition", "stabilization"]
    assert r.translation.end_index == r.peak_index
    assert r.boundaries == [X[r.peak_index], X[r.stable_index]]
    assert r.drop == pytest.approx(0.15, abs=0.03)
    d = r.to_dict()
    assert d["call"] == "rise_then_drop" and d["noise"] == "binomial" and len(d["fitted"]) == N


def test_bpb_with_standard_errors_lower_is_better():
    bpb = np.interp(I, [0, 8, 16, 39], [3.0, 2.0, 2.4, 2.4])      # falls, then rises back
    rng = np.random.default_rng(5)
    y = bpb + rng.normal(0, 0.03, N)
    r = detect_stages(X, y, GaussianNoise(0.03), higher_is_better=False, options=OPTS)
    assert r.call == "rise_then_drop" and abs(r.peak_index - 8) <= 1
    mono = np.interp(I, [0, 8, 39], [3.0, 2.0, 2.0]) + rng.normal(0, 0.03, N)
    assert detect_stages(X, mono, GaussianNoise(0.03), False, OPTS).call == "monotone"


def test_a_curve_that_only_falls_is_not_a_rise_then_drop():
    y = np.random.default_rng(2).binomial(400, np.linspace(0.4, 0.2, N)) / 400
    r = detect_stages(X, y, BinomialNoise(400), options=OPTS)
    assert r.call == "undetermined" and r.p_value <= 0.05 and "without a preceding rise" in r.reason


def test_p_value_is_not_a_ranking_a_noise_free_curve_is_certain():
    curve = np.interp(I, [0, 8, 14, 39], [0.1, 0.4, 0.28, 0.28])
    r = detect_stages(X, curve, BinomialNoise(400), options=OPTS)
    assert r.call == "rise_then_drop" and r.p_value == pytest.approx(1 / 100)


# ---- bad input: one line naming the curve -----------------------------------------------
@pytest.mark.parametrize("x, y, noise, msg", [
    (X[:4], np.full(4, 0.2), BinomialNoise(100), "4 checkpoints, the test needs at least 6"),
    (X, np.where(I == 3, np.nan, 0.2), BinomialNoise(100), "finite"),
    (X[::-1], np.full(N, 0.2), BinomialNoise(100), "strictly increasing"),
    (np.where(I == 5, X[4], X), np.full(N, 0.2), BinomialNoise(100), "strictly increasing"),
    (X, np.full(N, 0.2), BinomialNoise(0), "zero eval size"),
    (X, np.full(N, 0.2), GaussianNoise(np.zeros(N)), "zero eval size"),
    (X, np.full(N, 0.2), BinomialNoise([100] * 3), "3 trials values for 40 checkpoints"),
    (X, np.full(N, 1.2), BinomialNoise(100), "proportions"),
])
def test_bad_input_names_the_curve(x, y, noise, msg):
    with pytest.raises(BabelError, match=msg) as e:
        detect_stages(x, y, noise, options=OPTS, name="go cloze")
    assert "go cloze" in str(e.value) and "\n" not in str(e.value)


# ---- corroboration -----------------------------------------------------------------------
def test_multi_corroboration_agrees_and_disagrees():
    curve = np.interp(I, [0, 12, 20, 39], [0.05, 0.5, 0.25, 0.25])
    y = np.random.default_rng(1).binomial(400, curve) / 400
    share = 1 / (1 + np.exp(-(I - 16) / 1.5))
    early = 1 / (1 + np.exp(-(I - 3) / 1.0))    # switches long before the peak
    m = detect_stages_multi({"performance": (X, y), "own_share": (X, share),
                             "neuron_ratio": (X, 1 - share), "early": (X, early)},
                            BinomialNoise(400), options=OPTS)
    assert m.performance.call == "rise_then_drop"
    assert m.corroborating["own_share"].agrees and m.corroborating["neuron_ratio"].agrees
    assert m.corroborating["neuron_ratio"].direction == "falling"
    assert abs(m.corroborating["own_share"].switch_index - 16) < 1.0
    assert m.corroborating["early"].agrees is False
    assert m.agreement == pytest.approx(2 / 3)


def test_smoother_ignores_one_bad_checkpoint():
    spike = np.zeros(21)
    spike[10] = 9.0
    assert np.allclose(smooth(spike, 5), 0.0)
