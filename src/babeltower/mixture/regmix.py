"""A small RegMix-style mixture search (Liu et al. 2024, "RegMix").

1. ``sample_dirichlet_mixtures``: draw n mixture-weight vectors from a Dirichlet.
2. Train one small proxy model per mixture and score it (e.g. mean -loss over
   languages) - that part is the experiment's, not this module's.
3. ``fit_regression``: regress the score on the weights. **[ours]** RegMix uses
   LightGBM; we use closed-form ridge regression (numpy only) on polynomial features of
   the weights - ``"linear"`` (w), ``"quadratic"`` (w and all products w_i w_j, default:
   it can represent an interior optimum) or ``"loglinear"`` (log(w + eps), diminishing
   returns). Features are standardised; the intercept is not penalised.
4. ``predict_best``: score many Dirichlet candidates with the model and return the mean
   of the ``top_k`` best (RegMix averages the top 100 for robustness), optionally
   subject to per-language caps (e.g. available tokens x max epochs / total tokens).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Sequence

import numpy as np

from babeltower.errors import BabelError
from babeltower.languages import canonical
from babeltower.mixture.spec import MixtureSpec, largest_remainder

FEATURE_KINDS = ("linear", "quadratic", "loglinear")
LOG_EPS = 1e-3


def _alpha_vector(alpha: float | Sequence[float], n_lang: int) -> np.ndarray:
    a = np.full(n_lang, float(alpha)) if np.isscalar(alpha) else np.asarray(alpha, dtype=float)
    if a.shape != (n_lang,) or not np.all(a > 0):
        raise BabelError(f"Dirichlet alpha must be > 0, scalar or one per language ({n_lang})")
    return a


def sample_dirichlet_mixtures(languages: Sequence[str], n: int, alpha: float | Sequence[float] = 1.0,
                              seed: int = 0) -> np.ndarray:
    """``(n, len(languages))`` mixture weights, each row summing to 1.

    ``alpha`` is the Dirichlet concentration: scalar (1.0 = uniform over the simplex,
    < 1 favours corners, > 1 the centre) or one value per language (e.g. a prior such as
    ``c x natural shares``).
    """
    if n < 1 or not languages:
        raise BabelError("need n >= 1 mixtures over at least one language")
    a = _alpha_vector(alpha, len(languages))
    return np.random.default_rng(seed).dirichlet(a, size=n)


def _features(w: np.ndarray, kind: str) -> np.ndarray:
    if kind == "linear":
        return w
    if kind == "loglinear":
        return np.log(w + LOG_EPS)
    if kind == "quadratic":
        i, j = np.triu_indices(w.shape[1])
        return np.concatenate([w, w[:, i] * w[:, j]], axis=1)
    raise BabelError(f"regression kind must be one of {', '.join(FEATURE_KINDS)}, got {kind!r}")


@dataclass
class MixtureRegression:
    languages: list[str]
    kind: str
    ridge: float
    coef: np.ndarray                # on standardised features
    intercept: float
    feature_mean: np.ndarray
    feature_std: np.ndarray
    r2: float                       # in-sample
    n_samples: int
    extra: dict = field(default_factory=dict)

    def predict(self, weights: np.ndarray) -> np.ndarray:
        w = np.atleast_2d(np.asarray(weights, dtype=float))
        if w.shape[1] != len(self.languages):
            raise BabelError(f"weights have {w.shape[1]} columns for {len(self.languages)} "
                             "languages")
        f = (_features(w, self.kind) - self.feature_mean) / self.feature_std
        return f @ self.coef + self.intercept


def fit_regression(mixture_weights: np.ndarray, scores: Sequence[float],
                   languages: Sequence[str] | None = None, kind: str = "quadratic",
                   ridge: float = 1e-3) -> MixtureRegression:
    """Ridge regression of ``scores`` (higher is better) on the mixture weights."""
    w = np.asarray(mixture_weights, dtype=float)
    y = np.asarray(scores, dtype=float)
    if w.ndim != 2 or y.shape != (w.shape[0],):
        raise BabelError(f"need weights (n, L) and n scores, got {w.shape} and {y.shape}")
    if not (np.all(np.isfinite(w)) and np.all(np.isfinite(y))):
        raise BabelError("mixture weights and scores must be finite")
    if ridge < 0:
        raise BabelError(f"ridge must be >= 0, got {ridge}")
    langs = list(languages) if languages is not None else [f"lang{i}" for i in range(w.shape[1])]
    if len(langs) != w.shape[1]:
        raise BabelError(f"{len(langs)} language names for {w.shape[1]} weight columns")
    f = _features(w, kind)
    mean, std = f.mean(axis=0), f.std(axis=0)
    std[std == 0] = 1.0
    z = (f - mean) / std
    y_mean = y.mean()
    # ridge normal equations on centred data: the intercept is y's mean, unpenalised
    a = z.T @ z + ridge * len(y) * np.eye(z.shape[1])
    coef = np.linalg.solve(a, z.T @ (y - y_mean))
    pred = z @ coef + y_mean
    ss_tot = float(np.sum((y - y_mean) ** 2))
    r2 = 1 - float(np.sum((y - pred) ** 2)) / ss_tot if ss_tot > 0 else float("nan")
    return MixtureRegression(langs, kind, ridge, coef, float(y_mean), mean, std, r2, len(y))


def predict_best(model: MixtureRegression, languages: Sequence[str] | None = None,
                 n_candidates: int = 10000, seed: int = 0, *, alpha: float | Sequence[float] = 1.0,
                 top_k: int = 100, caps: dict[str, float] | None = None) -> dict[str, float]:
    """Mixture weights (language -> weight, summing to 1) that the model scores highest.

    ``caps``: maximum weight per language (candidates above a cap are discarded). Returns
    the mean of the ``top_k`` best candidates, which stays inside the caps (convex).
    """
    langs = list(languages) if languages is not None else model.languages
    if list(langs) != list(model.languages):
        raise BabelError(f"model was fit on {model.languages}, not {list(langs)}")
    cand = sample_dirichlet_mixtures(langs, n_candidates, alpha, seed)
    if caps:
        cap = np.array([float(caps.get(lang, 1.0)) for lang in langs])
        if cap.sum() < 1 - 1e-9:
            raise BabelError(f"the caps sum to {cap.sum():.4g} < 1: no mixture can meet them")
        cand = cand[np.all(cand <= cap + 1e-12, axis=1)]
        if len(cand) == 0:
            raise BabelError("no candidate mixture satisfies the caps; raise n_candidates "
                             "or loosen the caps")
    pred = model.predict(cand)
    k = max(1, min(int(top_k), len(cand)))
    best = cand[np.argsort(-pred, kind="stable")[:k]].mean(axis=0)
    best = best / best.sum()
    return {lang: float(v) for lang, v in zip(langs, best)}


def weights_to_mixture(weights: dict[str, float], total_tokens: int, name: str = "regmix",
                       available: dict[str, int] | None = None, meta: dict | None = None
                       ) -> MixtureSpec:
    """Absolute budgets (largest remainder, exact total) from weights; ``allow_repeat``
    is set only if some budget exceeds the ``available`` tokens."""
    w = {canonical(k): float(v) for k, v in weights.items() if v > 0}
    s = sum(w.values())
    if s <= 0:
        raise BabelError("all mixture weights are 0")
    budgets = largest_remainder({k: total_tokens * v / s for k, v in w.items()}, int(total_tokens))
    avail = {canonical(k): int(v) for k, v in (available or {}).items()}
    repeat = any(budgets[k] > avail.get(k, budgets[k]) for k in budgets)
    return MixtureSpec(name=name, budgets={k: v for k, v in budgets.items() if v > 0},
                       total_tokens=int(total_tokens), allow_repeat=repeat,
                       meta={"generator": "regmix", "weights": w, **(meta or {})})
