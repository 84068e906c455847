"""Every interval and standard error of the toolkit, and the comparisons built on them:
an ``Estimate`` (value, standard error, interval, n and the kind of noise it comes from)
that measures produce and the stage test, Algorithm 1, results.json and the report
consume - so no one re-derives a noise model from an interval or a label -,
multiplicity-adjusted p-values, and how specific a correlation is.

* ``Estimate`` with constructors ``binomial`` (Wilson interval), ``ratio_bootstrap``
  (documents resampled: percentile interval, se = the replicates' sd), ``over_seeds``
  (Student-t interval) and ``from_replicates``; ``wilson_interval``,
  ``newcombe_interval`` (difference of two proportions), ``t_interval`` and
  ``percentile_interval`` are the only places an interval is computed
  (tests/test_import_graph.py checks that).

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
from dataclasses import asdict, dataclass
from typing import Sequence

import numpy as np

KINDS = ("binomial", "bootstrap", "seeds")


def _stats():
    """scipy.stats, imported on first use: the measures that only need an interval of
    replicates (pass@k, the sandbox's callers) must not pull scipy in."""
    from scipy import stats

    return stats
Z95 = 1.96   # the conventional rounding: intervals stay identical to earlier results


def wilson_interval(k: int, n: int, level: float = 0.95
                    ) -> tuple[float, float] | tuple[None, None]:
    """Wilson score interval of k successes in n trials ((None, None) for n = 0)."""
    if n == 0:
        return None, None
    z = Z95 if level == 0.95 else float(_stats().norm.ppf(0.5 + level / 2))
    p = k / n
    den = 1 + z * z / n
    mid = (p + z * z / (2 * n)) / den
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / den
    return max(0.0, mid - half), min(1.0, mid + half)


def newcombe_interval(k1: int, n1: int, k2: int, n2: int, level: float = 0.95
                      ) -> tuple[float, float] | tuple[None, None]:
    """Newcombe's hybrid score interval for p1 - p2 (his method 10: Wilson intervals of
    each proportion combined), independent samples."""
    if n1 == 0 or n2 == 0:
        return None, None
    p1, p2 = k1 / n1, k2 / n2
    l1, u1 = wilson_interval(k1, n1, level)
    l2, u2 = wilson_interval(k2, n2, level)
    d = p1 - p2
    return (d - math.sqrt((p1 - l1) ** 2 + (u2 - p2) ** 2),
            d + math.sqrt((u1 - p1) ** 2 + (p2 - l2) ** 2))


def normal_interval(value: float, se: float, level: float = 0.95) -> tuple[float, float]:
    """value -/+ z * se (a Wald interval from a standard error)."""
    z = float(_stats().norm.ppf(0.5 + level / 2))
    return value - z * se, value + z * se


def t_interval(values: Sequence[float], level: float = 0.95) -> tuple[float, float, float]:
    """Mean and Student-t interval of independent values (e.g. one per seed; wide for 2
    seeds - honestly so). None and non-finite values are dropped; NaN bounds below 2."""
    v = np.asarray([x for x in values if x is not None and np.isfinite(x)], dtype=float)
    if v.size == 0:
        return (float("nan"),) * 3
    m = float(v.mean())
    if v.size < 2:
        return m, float("nan"), float("nan")
    half = float(_stats().t.ppf(0.5 + level / 2, v.size - 1) * v.std(ddof=1) / math.sqrt(v.size))
    return m, m - half, m + half


def t_half_widths(sd: np.ndarray, n: int, level: float = 0.95) -> np.ndarray:
    """Half-widths of Student-t intervals of means of n values with sample sd ``sd``."""
    return _stats().t.ppf(0.5 + level / 2, n - 1) * np.asarray(sd) / math.sqrt(n)


def percentile_interval(replicates, level: float = 0.95, axis=None):
    """Percentile interval of bootstrap (or null) replicates, NaNs ignored."""
    a = (1 - level) / 2
    lo, hi = np.nanquantile(np.asarray(replicates, dtype=float), [a, 1 - a], axis=axis)
    return lo, hi


@dataclass(frozen=True)
class Estimate:
    """A measured number with its uncertainty and where that uncertainty comes from.

    ``kind``: ``binomial`` (``n`` independent trials: se = sqrt(p(1-p)/n), Wilson
    interval), ``bootstrap`` (``n`` resampled units - documents, prompts: se = the
    replicates' sd, percentile interval) or ``seeds`` (``n`` runs: se = sd/sqrt(n),
    t-interval). The stage test's noise models take an Estimate's ``n`` (binomial
    trials) or ``se`` (Gaussian) per checkpoint (``analysis.stages``)."""

    value: float
    se: float | None
    lo: float | None
    hi: float | None
    n: int
    kind: str
    level: float = 0.95

    def __post_init__(self):
        if self.kind not in KINDS:
            raise ValueError(f"Estimate kind must be one of {KINDS}, got {self.kind!r}")

    @classmethod
    def binomial(cls, k: int, n: int, level: float = 0.95) -> "Estimate":
        p = k / n if n else float("nan")
        lo, hi = wilson_interval(k, n, level)
        return cls(p, math.sqrt(p * (1 - p) / n) if n else None, lo, hi, int(n), "binomial",
                   level)

    @classmethod
    def from_replicates(cls, value: float, replicates, n: int, level: float = 0.95
                        ) -> "Estimate":
        r = np.asarray(replicates, dtype=float)
        if r.size < 2:
            return cls(float(value), None, float(value), float(value), int(n), "bootstrap", level)
        lo, hi = percentile_interval(r, level)
        return cls(float(value), float(np.nanstd(r, ddof=1)), float(lo), float(hi), int(n),
                   "bootstrap", level)

    @classmethod
    def ratio_bootstrap(cls, numerators, denominators, n_boot: int = 1000, seed: int = 0,
                        level: float = 0.95) -> "Estimate":
        """sum(numerators) / sum(denominators) over units (documents) resampled with
        replacement: the units, not the tokens inside them, are independent."""
        num = np.asarray(numerators, dtype=float)
        den = np.asarray(denominators, dtype=float)
        n = len(num)
        value = float(num.sum() / den.sum()) if n else float("nan")
        if n < 2:
            return cls(value, None, value, value, n, "bootstrap", level)
        idx = np.random.default_rng(seed).integers(0, n, size=(n_boot, n))
        ratios = num[idx].sum(1) / np.maximum(den[idx].sum(1), 1e-12)
        return cls.from_replicates(value, ratios, n, level)

    @classmethod
    def over_seeds(cls, values: Sequence[float], level: float = 0.95) -> "Estimate":
        v = [x for x in values if x is not None and np.isfinite(x)]
        m, lo, hi = t_interval(v, level)
        se = float(np.std(v, ddof=1) / math.sqrt(len(v))) if len(v) >= 2 else None
        return cls(m, se, lo, hi, len(v), "seeds", level)

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> "Estimate":
        return cls(**{k: d[k] for k in ("value", "se", "lo", "hi", "n", "kind") if k in d},
                   level=d.get("level", 0.95))


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
    out["p"] = float(2 * _stats().t.sf(abs(t), d.size - 1))
    half = float(_stats().t.ppf(0.5 + out["level"] / 2, d.size - 1) * se)
    out["ci_low"], out["ci_high"] = out["mean"] - half, out["mean"] + half
    return out


def pearson(a, b) -> float | None:
    """Pearson r of two equal-length sequences; None below 2 points or without spread."""
    a, b = np.asarray(a, dtype=float), np.asarray(b, dtype=float)
    if len(a) < 2 or np.std(a) == 0 or np.std(b) == 0:
        return None
    return float(np.corrcoef(a, b)[0, 1])


def _corr(a: np.ndarray, b: np.ndarray) -> tuple[float | None, float | None]:
    if len(a) < 3:
        return None, None
    r = pearson(a, b)
    return (None, None) if r is None else (r, float(_stats().spearmanr(a, b).statistic))


def fisher_interval(r: float | None, n: int, level: float = 0.95) -> list[float] | None:
    """Fisher-z interval of a Pearson r over n points (assumes independent points:
    checkpoints of one run are not, so it is optimistic)."""
    if r is None or n < 4 or abs(r) >= 1:
        return None
    z, half = math.atanh(r), _stats().norm.ppf(0.5 + level / 2) / math.sqrt(n - 3)
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
