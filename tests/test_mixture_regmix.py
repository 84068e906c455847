"""RegMix-style search recovers the optimum of known synthetic functions from noisy samples."""

import numpy as np
import pytest

from babeltower.errors import BabelError
from babeltower.mixture.regmix import (fit_regression, predict_best, sample_dirichlet_mixtures,
                                       weights_to_mixture)

LANGS = ["python", "php", "go", "cpp"]


def test_dirichlet_samples_are_mixtures_and_seeded():
    w = sample_dirichlet_mixtures(LANGS, 50, alpha=0.5, seed=3)
    assert w.shape == (50, 4) and np.allclose(w.sum(axis=1), 1) and np.all(w >= 0)
    assert np.array_equal(w, sample_dirichlet_mixtures(LANGS, 50, alpha=0.5, seed=3))
    assert not np.array_equal(w, sample_dirichlet_mixtures(LANGS, 50, alpha=0.5, seed=4))
    with pytest.raises(BabelError):
        sample_dirichlet_mixtures(LANGS, 5, alpha=[1, 1])


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_recovers_interior_optimum_of_noisy_quadratic(seed):
    target = np.array([0.4, 0.3, 0.2, 0.1])
    rng = np.random.default_rng(seed)
    w = sample_dirichlet_mixtures(LANGS, 200, seed=seed)
    scores = -10 * np.sum((w - target) ** 2, axis=1) + rng.normal(0, 0.05, len(w))
    model = fit_regression(w, scores, LANGS, kind="quadratic")
    assert model.r2 > 0.8
    best = predict_best(model, n_candidates=20000, seed=seed + 10)
    assert sum(best.values()) == pytest.approx(1.0)
    assert max(abs(best[lang] - t) for lang, t in zip(LANGS, target)) < 0.06
    # the linear model cannot represent an interior optimum: it is visibly worse
    lin = fit_regression(w, scores, LANGS, kind="linear")
    assert lin.r2 < model.r2


def test_linear_score_with_caps():
    # score increases with python then php weights; python capped at 0.5
    w = sample_dirichlet_mixtures(LANGS, 150, seed=5)
    scores = w @ np.array([3.0, 2.0, 0.5, 0.0]) + np.random.default_rng(5).normal(0, 0.02, 150)
    model = fit_regression(w, scores, LANGS, kind="linear")
    best = predict_best(model, n_candidates=20000, top_k=20, caps={"python": 0.5})
    assert best["python"] <= 0.5 + 1e-9
    # the constrained optimum is python 0.5, php 0.5 (the next best language)
    assert best["python"] > 0.4 and best["php"] > 0.4
    assert best["go"] + best["cpp"] < 0.1
    with pytest.raises(BabelError, match="caps sum"):
        predict_best(model, caps={lang: 0.2 for lang in LANGS})


def test_loglinear_and_to_mixture():
    w = sample_dirichlet_mixtures(LANGS, 100, seed=1)
    scores = np.log(w + 1e-3) @ np.array([1.0, 1.0, 1.0, 1.0])   # balanced is best
    model = fit_regression(w, scores, LANGS, kind="loglinear")
    best = predict_best(model, seed=2)
    assert max(best.values()) - min(best.values()) < 0.12
    spec = weights_to_mixture(best, 10007, available={lang: 5000 for lang in LANGS})
    assert sum(spec.budgets.values()) == 10007 and not spec.allow_repeat
    with pytest.raises(BabelError):
        fit_regression(w, scores[:-1], LANGS)
