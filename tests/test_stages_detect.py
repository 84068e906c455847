"""Stage detection on synthetic curves with known change points plus noise."""

import numpy as np
import pytest

from babeltower.errors import BabelError
from babeltower.analysis.stages import (StageOptions, detect_stages, detect_stages_multi, noise_sigma, smooth)


def three_stage(n=40, peak=12, trough=20, noise=0.02, seed=0, top=0.5, low=0.25):
    """Rise linearly to `top` at `peak`, fall to `low` at `trough`, then flat."""
    i = np.arange(n)
    y = np.where(i <= peak, top * i / peak,
                 np.where(i <= trough, top - (top - low) * (i - peak) / (trough - peak), low))
    x = np.concatenate([[0], 1000 * 2.0 ** np.arange(n - 1)])   # log-spaced, starts at 0
    return x, y + np.random.default_rng(seed).normal(0, noise, n)


@pytest.mark.parametrize("seed", range(4))
@pytest.mark.parametrize("peak, trough", [(12, 20), (8, 25)])
def test_three_stage_boundaries_recovered(seed, peak, trough):
    x, y = three_stage(peak=peak, trough=trough, seed=seed)
    r = detect_stages(x, y, options=StageOptions(n_bootstrap=60))
    assert r.kind == "three-stage"
    assert abs(r.peak_index - peak) <= 2
    assert abs(r.stable_index - trough) <= 3
    assert r.boundaries == [x[r.peak_index], x[r.stable_index]]
    assert [s.name for s in r.segments] == ["translation", "transition", "stabilization"]
    assert r.confidence > 0.5
    assert r.drop_to_noise > 3


def test_loss_orientation_and_unsorted_input():
    x, y = three_stage(seed=9)
    perm = np.random.default_rng(0).permutation(len(x))
    r = detect_stages(x[perm], -y[perm], higher_is_better=False, options=StageOptions(n_bootstrap=20))
    assert r.kind == "three-stage" and abs(r.peak_index - 12) <= 2
    assert np.all(np.diff(r.x) > 0)


@pytest.mark.parametrize("seed", range(4))
def test_rise_then_plateau_is_monotone(seed):
    i = np.arange(40)
    y = 1 - np.exp(-i / 6) + np.random.default_rng(seed).normal(0, 0.02, 40)
    r = detect_stages(i * 4096, y, options=StageOptions(n_bootstrap=60))
    assert r.kind == "monotone"
    # 1 - exp(-i/6) is within 15% of its change from i = 6 ln(1/0.15) ~ 11.4
    assert 9 <= r.stable_index <= 15
    assert r.confidence > 0.8


def test_pure_noise_is_rarely_three_stage():
    hits = 0
    for seed in range(20):
        y = np.random.default_rng(100 + seed).normal(0, 1, 40)
        hits += detect_stages(np.arange(40), y, options=StageOptions(n_bootstrap=0)).kind == "three-stage"
    assert hits <= 2


def test_flat_short_and_bad_input():
    assert detect_stages(np.arange(20), np.full(20, 0.3), options=StageOptions(n_bootstrap=5)).kind == "flat"
    r = detect_stages([0, 1, 2], [0.1, 0.5, 0.2])
    assert r.kind == "undetermined" and r.confidence == 0.0
    with pytest.raises(BabelError):
        detect_stages([0, 1, 2], [0.1, 0.5])
    with pytest.raises(BabelError):
        detect_stages([0, 1, 2], [0.1, float("nan"), 0.2])


def test_smoother_and_noise_estimate():
    rng = np.random.default_rng(0)
    y = np.linspace(0, 5, 400) + rng.normal(0, 0.3, 400)
    assert noise_sigma(y) == pytest.approx(0.3, rel=0.15)   # the trend does not inflate it
    spike = np.zeros(21)
    spike[10] = 9.0
    assert np.allclose(smooth(spike, 5), 0.0)                # one bad checkpoint is ignored


def test_multi_corroboration_agrees_and_disagrees():
    x, y = three_stage(seed=1)
    i = np.arange(len(x))
    # working-language share switches from python to the new language around index 16
    share = 1 / (1 + np.exp(-(i - 16) / 1.5))
    early = 1 / (1 + np.exp(-(i - 3) / 1.0))   # switches long before the peak
    m = detect_stages_multi({"performance": (x, y), "own_share": (x, share),
                             "neuron_ratio": (x, 1 - share), "early": (x, early)},
                            options=StageOptions(n_bootstrap=20))
    assert m.performance.kind == "three-stage"
    assert m.corroborating["own_share"].agrees and m.corroborating["neuron_ratio"].agrees
    assert m.corroborating["own_share"].direction == "rising"
    assert m.corroborating["neuron_ratio"].direction == "falling"
    assert abs(m.corroborating["own_share"].switch_index - 16) < 1.0
    assert m.corroborating["early"].agrees is False
    assert m.agreement == pytest.approx(2 / 3)
    assert m.to_dict()["performance"]["kind"] == "three-stage"


def test_confidence_grows_with_the_drop():
    """A drop of 2 sigma is not a stage; bigger drops are found with rising confidence."""
    def mean_conf(low):
        confs = []
        for seed in range(5):
            r = detect_stages(*three_stage(seed=seed, low=low), options=StageOptions(n_bootstrap=60))
            confs.append(r.confidence if r.kind == "three-stage" else 0.0)
        return float(np.mean(confs))

    tiny, small, large = mean_conf(0.46), mean_conf(0.42), mean_conf(0.25)
    assert tiny < 0.2 < small < large


@pytest.mark.parametrize("seed", range(6))
def test_short_log_spaced_series_like_a_cpt_run(seed):
    """14 checkpoints (0 and powers of two): the usual CPT schedule at our scale."""
    x, y = three_stage(n=14, peak=5, trough=9, seed=seed)
    r = detect_stages(x, y, options=StageOptions(n_bootstrap=40))
    assert r.kind == "three-stage"
    assert r.peak_index == 5 and abs(r.stable_index - 9) <= 1
