"""The stage test's statistics on many curves at once: isotonic fits, likelihood ratios,
parametric-bootstrap p-values.

A curve is a row of per-checkpoint sufficient statistics under its noise model:

* **binomial** (accuracy = k of n prompts): S1 = k, S0 = n; a block of pooled
  checkpoints has log-likelihood K log(K/N) + (N-K) log(1-K/N) at its MLE K/N;
* **gaussian** (bpb with a known standard error se): S1 = y/se^2, S0 = 1/se^2; a block
  has log-likelihood S1^2 / (2 S0) (up to terms shared by every model of the curve).

The isotonic (non-decreasing) MLE under both models is the weighted least-squares
isotonic fit (Robertson, Wright & Dykstra 1988, exponential families), so one
pool-adjacent-violators pass gives it. It runs here on a batch of curves in lock step,
adding one checkpoint at a time, so one pass yields the log-likelihood of the isotonic
fit of EVERY prefix [0..m] of every curve. (Batched because the p-value and the power
simulation need hundreds of thousands of curves; a per-curve Python loop is ~100x
slower.)

Drop statistic: ``T = max_m 2 [LL_iso(0..m) + LL_iso(m+1..end) - LL_iso(0..end)]``: the
likelihood gained by allowing ONE downward jump after checkpoint m, i.e. the largest
drop after any running maximum (a one-checkpoint peak is a prefix ending at it; a
rise-dip-recover curve is a rise, a jump down and a second rise, whether or not the
recovery ends above the first peak). T = 0 for a curve that is already non-decreasing.

Rise statistic: ``2 [LL_iso(0..m) - LL_const(0..m)]``: non-decreasing against constant.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy.optimize import isotonic_regression
from scipy.special import xlogy

BINOMIAL, GAUSSIAN = "binomial", "gaussian"


def block_loglik(kind: str, s1: np.ndarray, s0: np.ndarray) -> np.ndarray:
    """Log-likelihood of a block of pooled checkpoints at its MLE (see module doc)."""
    if kind == BINOMIAL:
        return xlogy(s1, s1 / s0) + xlogy(s0 - s1, (s0 - s1) / s0)
    return s1 * s1 / (2 * s0)


def prefix_loglik(kind: str, s1: np.ndarray, s0: np.ndarray, increasing: bool = True
                  ) -> np.ndarray:
    """(R, n): log-likelihood of the isotonic fit of points [0..m] of each row, every m.

    ``increasing=False`` fits non-increasing curves (used on reversed rows for suffixes).
    """
    rows_n, n = s1.shape
    sign = 1.0 if increasing else -1.0
    # block stacks, flat (row r's block j at r * n + j): 1-D fancy indexing is ~2x faster
    b1, b0 = np.zeros(rows_n * n), np.zeros(rows_n * n)
    base = np.arange(rows_n) * n
    top = np.zeros(rows_n, dtype=np.int64)
    total = np.zeros(rows_n)
    out = np.empty((rows_n, n))
    for m in range(n):
        b1[base + top], b0[base + top] = s1[:, m], s0[:, m]
        total += block_loglik(kind, s1[:, m], s0[:, m])
        top += 1
        active = np.nonzero(top >= 2)[0]
        while active.size:
            last = base[active] + top[active] - 1
            p1, p0, q1, q0 = b1[last - 1], b0[last - 1], b1[last], b0[last]
            # previous block's mean above the last one's (cross-multiplied, s0 > 0)
            violates = sign * (p1 * q0 - q1 * p0) > 0
            if not violates.any():
                break
            active, last = active[violates], last[violates]
            p1, p0, q1, q0 = p1[violates], p0[violates], q1[violates], q0[violates]
            total[active] += (block_loglik(kind, p1 + q1, p0 + q0)
                              - block_loglik(kind, p1, p0) - block_loglik(kind, q1, q0))
            b1[last - 1], b0[last - 1] = p1 + q1, p0 + q0
            top[active] -= 1
        out[:, m] = total
    return out


@dataclass
class CurveStatistics:
    drop: np.ndarray          # (R,) drop statistic T
    split: np.ndarray         # (R,) m maximising it: last checkpoint before the drop
    prefix: np.ndarray        # (R, n) LL of the isotonic fit of every prefix
    cum1: np.ndarray          # (R, n) cumulative S1 (for constant fits of prefixes)
    cum0: np.ndarray

    def rise(self, kind: str, end: np.ndarray) -> np.ndarray:
        """Rise statistic of the prefix [0..end[r]] of each row."""
        r = np.arange(len(end))
        const = block_loglik(kind, self.cum1[r, end], self.cum0[r, end])
        return np.maximum(0.0, 2 * (self.prefix[r, end] - const))


def rise_statistic(kind: str, s1: np.ndarray, s0: np.ndarray, end: np.ndarray) -> np.ndarray:
    """Rise statistic of the prefix [0..end[r]] of each row (one isotonic pass)."""
    r = np.arange(len(end))
    pre = prefix_loglik(kind, s1, s0, increasing=True)[r, end]
    const = block_loglik(kind, np.cumsum(s1, axis=1)[r, end], np.cumsum(s0, axis=1)[r, end])
    return np.maximum(0.0, 2 * (pre - const))


def curve_statistics(kind: str, s1: np.ndarray, s0: np.ndarray) -> CurveStatistics:
    pre = prefix_loglik(kind, s1, s0, increasing=True)
    # suffix [m..end] non-decreasing == reversed prefix non-increasing
    suf = prefix_loglik(kind, s1[:, ::-1], s0[:, ::-1], increasing=False)[:, ::-1]
    lr = 2 * (pre[:, :-1] + suf[:, 1:] - pre[:, -1:])
    lr = np.maximum(lr, 0.0)
    split = np.argmax(lr, axis=1)
    return CurveStatistics(lr[np.arange(len(lr)), split], split, pre,
                           np.cumsum(s1, axis=1), np.cumsum(s0, axis=1))


def sufficient(kind: str, y: np.ndarray, scale: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(S1, S0) of curves ``y`` (proportions for binomial; values for gaussian).

    ``scale``: trials n (binomial) or standard errors se (gaussian), broadcastable to y.
    """
    scale = np.broadcast_to(np.asarray(scale, dtype=float), y.shape)
    if kind == BINOMIAL:
        return y * scale, scale.copy()
    w = 1.0 / scale ** 2
    return y * w, w


def simulate(kind: str, mean: np.ndarray, scale: np.ndarray, reps: int,
             rng: np.random.Generator) -> np.ndarray:
    """(reps * R, n) curves drawn around each row of ``mean`` (R, n), row-major by curve."""
    mu = np.repeat(np.atleast_2d(mean), reps, axis=0)
    sc = np.broadcast_to(np.asarray(scale, dtype=float), mu.shape) if np.ndim(scale) < 2 \
        else np.repeat(scale, reps, axis=0)
    if kind == BINOMIAL:
        n = np.rint(sc).astype(np.int64)
        return rng.binomial(n, np.clip(mu, 0.0, 1.0)) / n
    return mu + sc * rng.standard_normal(mu.shape)


def isotonic_means(kind: str, s1: np.ndarray, s0: np.ndarray) -> np.ndarray:
    """(R, n) fitted values of the non-decreasing fit of each row (weights S0)."""
    return np.stack([isotonic_regression(a / b, weights=b).x for a, b in zip(s1, s0)])


def bootstrap_p(observed: np.ndarray, null: np.ndarray) -> np.ndarray:
    """(1 + #{null >= observed}) / (B + 1) per row; ``null`` is (R, B)."""
    # a relative tolerance so a replicate equal to the observed value up to rounding counts
    ge = null >= observed[:, None] - 1e-9 * np.maximum(1.0, np.abs(observed[:, None]))
    return (1 + ge.sum(axis=1)) / (null.shape[1] + 1)


@dataclass(frozen=True)
class CallSettings:
    alpha: float = 0.05
    n_bootstrap: int = 999
    null: str = "flat"         # drop test's null curve: "flat" (pooled level) or "isotonic" fit


@dataclass
class BatchCalls:
    call: np.ndarray          # (R,) str: rise_then_drop | monotone | flat | undetermined
    drop_statistic: np.ndarray
    drop_p: np.ndarray
    split: np.ndarray         # last checkpoint before the drop (argmax of the statistic)
    rise_statistic: np.ndarray
    rise_p: np.ndarray        # rise before the split (drop significant) or over the curve


def _null_p(kind: str, observed: np.ndarray, null_mean: np.ndarray, scale: np.ndarray,
            settings: CallSettings, rng: np.random.Generator, statistic) -> np.ndarray:
    """Parametric-bootstrap p-value of ``statistic`` per row, simulated around ``null_mean``."""
    reps = settings.n_bootstrap
    sims = simulate(kind, null_mean, scale, reps, rng)
    sc = np.repeat(scale, reps, axis=0)
    null = statistic(*sufficient(kind, sims, sc), np.repeat(np.arange(len(observed)), reps))
    return bootstrap_p(observed, null.reshape(len(observed), reps))


def call_batch(kind: str, y: np.ndarray, scale: np.ndarray, settings: CallSettings,
               rng: np.random.Generator, chunk: int = 20000) -> BatchCalls:
    """The stage test on every row of ``y`` (R, n); ``scale`` (R, n): trials or se."""
    r_all, n = y.shape
    per = max(1, chunk // max(1, settings.n_bootstrap))
    parts = [_test_rows(kind, y[i:i + per], scale[i:i + per], settings, rng)
             for i in range(0, r_all, per)]
    return BatchCalls(*(np.concatenate([getattr(p, f) for p in parts])
                        for f in BatchCalls.__dataclass_fields__))


def _test_rows(kind: str, y: np.ndarray, scale: np.ndarray, settings: CallSettings,
               rng: np.random.Generator) -> BatchCalls:
    s1, s0 = sufficient(kind, y, scale)
    st = curve_statistics(kind, s1, s0)
    rows, n = y.shape
    pooled = (st.cum1[:, -1] / st.cum0[:, -1])[:, None] * np.ones((1, n))
    null_mean = isotonic_means(kind, s1, s0) if settings.null == "isotonic" else pooled
    drop_p = _null_p(kind, st.drop, null_mean, scale, settings, rng,
                     lambda a, b, _: curve_statistics(kind, a, b).drop)
    dropped = drop_p <= settings.alpha
    # rise: before the split where the drop is significant, else over the whole curve;
    # the null is a constant at the pooled level of that stretch
    end = np.where(dropped, st.split, n - 1)
    rise = st.rise(kind, end)
    level = st.cum1[np.arange(rows), end] / st.cum0[np.arange(rows), end]
    rise_p = _null_p(kind, rise, level[:, None] * np.ones((1, n)), scale, settings, rng,
                     lambda a, b, idx: rise_statistic(kind, a, b, end[idx]))
    rise_p = np.where(end == 0, 1.0, rise_p)
    rose = rise_p <= settings.alpha
    call = np.where(dropped, np.where(rose, "rise_then_drop", "undetermined"),
                    np.where(rose, "monotone", "flat"))
    return BatchCalls(call, st.drop, drop_p, st.split, rise, rise_p)
