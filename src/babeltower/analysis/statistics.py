"""Statistics for comparisons of several mixtures x languages: multiplicity-adjusted
p-values and intervals, and how specific a correlation is.

* ``holm``: Holm's step-down adjusted p-values (controls the family-wise error rate).
* ``benjamini_hochberg``: BH step-up adjusted p-values (false discovery rate).
* ``paired_t``: mean difference over seeds with its t-test p-value and a t-interval at a
  given level; with ``family_size`` m the interval is at level 1 - (1 - level)/m
  (Bonferroni: simultaneous over the family; Holm's step-down has no interval of its
  own, and its adjusted p-value <= alpha exactly when the Bonferroni interval of the
  first-ranked comparison excludes zero).
* ``correlation_with_controls``: Pearson/Spearman of a curve against a measured share,
  next to the same statistics for control curves and for a family of monotone nulls
  (saturating curves of the same checkpoints): a correlation is only specific if it
  beats them.
"""

from __future__ import annotations

import math
from typing import Sequence

import numpy as np
from scipy import stats


def _finite(p: Sequence[float]) -> tuple[np.ndarray, np.ndarray]:
    a = np.asarray([np.nan if v is None else v for v in p], dtype=float)
    return a, np.isfinite(a)


def holm(pvalues: Sequence[float]) -> list[float]:
    """Holm-adjusted p-values, in the input order. NaN/None stay NaN and do not count
    towards the family size m."""
    p, ok = _finite(pvalues)
    out = np.full(p.shape, np.nan)
    idx = np.nonzero(ok)[0]
    m = idx.size
    order = idx[np.argsort(p[idx], kind="stable")]
    running = 0.0
    for rank, i in enumerate(order):
        running = max(running, min(1.0, (m - rank) * p[i]))
        out[i] = running
    return out.tolist()


def benjamini_hochberg(pvalues: Sequence[float]) -> list[float]:
    """BH-adjusted p-values (q-values), in the input order; NaN/None as in ``holm``."""
    p, ok = _finite(pvalues)
    out = np.full(p.shape, np.nan)
    idx = np.nonzero(ok)[0]
    m = idx.size
    order = idx[np.argsort(p[idx], kind="stable")][::-1]       # largest first
    running = 1.0
    for k, i in enumerate(order):
        rank = m - k
        running = min(running, p[i] * m / rank)
        out[i] = min(1.0, running)
    return out.tolist()


def paired_t(diffs: Sequence[float], level: float = 0.95, family_size: int = 1) -> dict:
    """Mean of paired differences, t-test p-value (H0: mean 0) and a t-interval.

    ``family_size`` m > 1 widens the interval to level 1 - (1 - level)/m (Bonferroni).
    With fewer than 2 differences, or no spread, p and the interval are NaN.
    """
    d = np.asarray([v for v in diffs if v is not None and np.isfinite(v)], dtype=float)
    out = {"mean": float(d.mean()) if d.size else math.nan, "n": int(d.size),
           "p": math.nan, "ci_low": math.nan, "ci_high": math.nan,
           "level": 1 - (1 - level) / max(1, family_size)}
    if d.size < 2:
        return out
    sd = float(d.std(ddof=1))
    if sd == 0:
        return out
    se = sd / math.sqrt(d.size)
    t = out["mean"] / se
    out["p"] = float(2 * stats.t.sf(abs(t), d.size - 1))
    half = float(stats.t.ppf(0.5 + out["level"] / 2, d.size - 1) * se)
    out["ci_low"], out["ci_high"] = out["mean"] - half, out["mean"] + half
    return out


def _corr(a: np.ndarray, b: np.ndarray) -> tuple[float | None, float | None]:
    if len(a) < 3 or np.std(a) == 0 or np.std(b) == 0:
        return None, None
    return float(np.corrcoef(a, b)[0, 1]), float(stats.spearmanr(a, b).statistic)


def fisher_interval(r: float | None, n: int, level: float = 0.95) -> list[float] | None:
    """Fisher-z interval of a Pearson r over n points (assumes independent points:
    checkpoints of one run are not, so it is optimistic)."""
    if r is None or n < 4 or abs(r) >= 1:
        return None
    z, half = math.atanh(r), stats.norm.ppf(0.5 + level / 2) / math.sqrt(n - 3)
    return [math.tanh(z - half), math.tanh(z + half)]


def correlation_with_controls(x: Sequence[float], share: Sequence[float], curve: Sequence[float],
                              controls: dict[str, Sequence[float]] | None = None,
                              n_null: int = 25) -> dict:
    """Pearson r (with a Fisher interval) and Spearman rho of ``curve`` against the
    measured ``share``, the same for every control curve, and for the monotone null: the
    saturating curves 1 - exp(-x / tau) with tau log-spaced over the checkpoints' range
    (``n_null`` of them; any rising curve shares the share's ranks when the share rises,
    so the null's Spearman rho is that of x itself). Reported: the null family's median
    and maximum Pearson r, and whether ``curve`` beats the null's maximum."""
    xs = np.asarray(x, dtype=float)
    sh = np.asarray(share, dtype=float)

    def row(values) -> dict:
        r, rho = _corr(np.asarray(values, dtype=float), sh)
        return {"pearson": r, "pearson_ci95": fisher_interval(r, len(sh)), "spearman": rho}

    out = {"n_checkpoints": int(len(sh)), "curve": row(curve),
           "controls": {k: row(v) for k, v in (controls or {}).items()}}
    span = xs - xs.min()
    positive = span[span > 0]
    if positive.size >= 2:
        taus = np.geomspace(positive.min(), positive.max() * 2, n_null)
        rs = [r for r in (_corr(1 - np.exp(-span / tau), sh)[0] for tau in taus) if r is not None]
    else:
        rs = []
    best = max(rs) if rs else None
    out["monotone_null"] = {"pearson_median": float(np.median(rs)) if rs else None,
                            "pearson_max": best, "spearman": _corr(span, sh)[1],
                            "n_curves": len(rs)}
    r = out["curve"]["pearson"]
    out["specific"] = None if r is None or best is None else bool(r > best)
    return out
