"""The stage test on item trajectories: the same items scored at every checkpoint, in one
or more runs (seeds).

Why not the binomial model. A knowledge or cloze curve scores the SAME items at every
checkpoint, so nothing is redrawn between checkpoints: the wiggles of the curve are
training churn (items learned and forgotten), which is persistent (an item wrong now is
likelier wrong next time), shared by items that look alike (one answer token, one
template) and, across runs, partly common to a whole run (a seed's data order). A test
that treats each checkpoint as a fresh binomial draw mistakes that churn for signal
(issue 19 measured 0.10-0.90 false positives at alpha 0.05 on curves whose mean is
exactly monotone). Here the noise model is the data's own: whole item trajectories are
resampled.

A series is ``values`` (S seeds, I items, K checkpoints) over per-item ``units`` (I,):
the curve of seed s is ``sum_i values[s, i, k] / sum_i units[i]`` - an accuracy (values
0/1, units 1) or bits per byte (values = a document's nats / ln 2, units = its bytes),
so one ratio estimator serves both. ``clusters`` (I,) labels items that share a source
of churn (answer token, template, package); resampling is by cluster.

**Per-run test** (one seed). Residual curves come from a cluster bootstrap of items
(B replicates, every replicate re-weights whole trajectories, so persistence and
cluster-shared churn are kept), centred on the observed curve and scaled by
sqrt(C / (C - 1)) (the bootstrap's variance is short by that factor with C clusters).
The drop statistic is the likelihood ratio of ``stage_test`` under a Gaussian model with
the bootstrap's per-checkpoint standard errors; its null distribution is the statistic
of ``flat level + residual`` (the least favourable non-decreasing mean, as in the
binomial test) over the B replicates: a centred (residual) bootstrap. Statistics:
``jump`` (one downward jump after a running maximum; a dip that recovers is a jump and a
second rise), ``umbrella`` (a non-decreasing then non-increasing fit: a gradual
decline), or ``max`` of the two (default; each replicate takes the same max, so the
p-value stays calibrated).

**Pooled test** (S seeds). The curve is the mean over seeds. Two p-values, and the
drop is called only when both are small (an intersection-union test: its level is the
larger of the two levels, so it holds wherever either test's assumptions hold):

* ``p_items``: the per-run test on the mean curve, with one item resampling shared by
  every seed (items are the same in every run). Valid when runs differ only by item
  churn; a seed-level shock (a dip common to all items of one run) defeats it.
* ``p_seeds``: the seed as the unit (S >= 3), split-sample. The first
  L = max(1, S // 3) seeds (in the series' order, fixed before any data is seen) only
  LOCATE the drop: the top block of the rise and the trough after it on their mean curve.
  Each of the other S - L seeds is only SCORED there: its own drop D_s = mean over the
  top block - mean over the trough. Under a non-decreasing expected curve E[D_s] <= 0
  for any such location (every top-block checkpoint precedes every trough checkpoint),
  and given the location the D_s are independent draws (independent runs), so a
  one-sided t-test of the D_s (S - L - 1 degrees of freedom) is valid with run-level
  shocks. (Reading each seed where the OTHER seeds locate it - cross-fitting - uses every
  seed for both but makes the drops positively correlated, r ~ 0.2: measured 0.077-0.118
  false positives at alpha 0.05 over 3-10 seeds, so it is not used; docs/stages.md.)

With fewer than 3 seeds the pooled call rests on ``p_items`` alone and says so.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
from scipy import stats as sps
from scipy.optimize import isotonic_regression

from babeltower.analysis.stage_test import (GAUSSIAN, bootstrap_p, prefix_loglik,
                                            rise_statistic, sufficient)
from babeltower.analysis.statistics import t_half_widths
from babeltower.errors import BabelError

STATISTICS = ("jump", "umbrella", "max")


@dataclass
class ItemSeries:
    """Item trajectories of one curve over ``x`` (module doc for the shapes)."""

    x: np.ndarray
    values: np.ndarray            # (S, I, K)
    units: np.ndarray             # (I,)
    clusters: np.ndarray          # (I,)
    higher_is_better: bool = True
    name: str = "curve"

    def __post_init__(self):
        self.x = np.asarray(self.x, dtype=float)
        v = np.asarray(self.values, dtype=float)
        if v.ndim == 2:
            v = v[None]
        if v.ndim != 3:
            raise BabelError(f"item test on {self.name}: values must be (seeds, items, "
                             f"checkpoints), got shape {v.shape}")
        self.values = v
        s, i, k = v.shape
        self.units = np.broadcast_to(np.asarray(self.units, dtype=float), (i,)).copy()
        self.clusters = np.asarray(self.clusters).reshape(-1)
        if self.x.shape != (k,):
            raise BabelError(f"item test on {self.name}: {self.x.size} checkpoint positions "
                             f"for {k} checkpoints")
        if self.clusters.shape != (i,):
            raise BabelError(f"item test on {self.name}: {self.clusters.size} cluster labels "
                             f"for {i} items")
        if i < 2 or not np.all(np.isfinite(v)) or np.any(self.units <= 0):
            raise BabelError(f"item test on {self.name}: needs >= 2 items, finite values and "
                             "positive units")
        if np.any(np.diff(self.x) <= 0):
            raise BabelError(f"item test on {self.name}: x must be strictly increasing")
        if np.unique(self.clusters).size < 2:
            raise BabelError(f"item test on {self.name}: needs >= 2 clusters to resample")

    @property
    def n_seeds(self) -> int:
        return self.values.shape[0]

    @property
    def n_clusters(self) -> int:
        return int(np.unique(self.clusters).size)

    def curves(self) -> np.ndarray:
        """(S, K) per-seed curves, "higher is better" orientation."""
        c = self.values.sum(axis=1) / self.units.sum()
        return c if self.higher_is_better else -c

    def pooled(self) -> np.ndarray:
        return self.curves().mean(axis=0)


def cluster_weights(clusters: np.ndarray, reps: int, rng: np.random.Generator) -> np.ndarray:
    """(reps, I) item weights of a cluster bootstrap: each cluster drawn with replacement
    C times; an item's weight is its cluster's count."""
    _, inverse = np.unique(clusters, return_inverse=True)
    c = int(inverse.max()) + 1
    counts = rng.multinomial(c, np.full(c, 1.0 / c), size=reps)
    return counts[:, inverse].astype(float)


def residuals(series: ItemSeries, reps: int, rng: np.random.Generator,
              seeds: list[int] | None = None) -> np.ndarray:
    """(reps, K) centred bootstrap deviations of the mean curve over ``seeds`` (default:
    all), one item resampling shared by the seeds, scaled by sqrt(C / (C - 1))."""
    idx = list(range(series.n_seeds)) if seeds is None else list(seeds)
    w = cluster_weights(series.clusters, reps, rng)
    num = np.einsum("bi,sik->bk", w, series.values[idx]) / len(idx)
    rep = num / (w @ series.units)[:, None]
    if not series.higher_is_better:
        rep = -rep
    observed = series.curves()[idx].mean(axis=0)
    c = series.n_clusters
    return (rep - observed) * np.sqrt(c / (c - 1))


def standard_errors(resid: np.ndarray) -> np.ndarray:
    """Per-checkpoint se from residual replicates, floored at a tenth of the median
    positive se (a checkpoint where every item agrees, e.g. all wrong at step 0, has a
    bootstrap se of 0, which would give it infinite weight)."""
    se = np.asarray(resid, dtype=float).std(axis=0, ddof=1)
    pos = se[se > 0]
    floor = 0.1 * float(np.median(pos)) if pos.size else 1e-6
    return np.maximum(se, floor)


def drop_statistics(y: np.ndarray, se: np.ndarray, statistic: str = "max"
                    ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(statistic, split, which) for rows of ``y`` (R, K) with standard errors ``se``
    (K,) or (R, K): the likelihood ratio of the best two-piece fit against the
    non-decreasing fit of the whole curve, and its split m (last point of the rising
    part). ``jump``: non-decreasing on [0..m] and on [m+1..end] (``stage_test``'s drop
    statistic); ``umbrella``: non-decreasing on [0..m], non-increasing after; ``max``:
    the larger. ``which`` is 1 where the umbrella gave the value, else 0."""
    if statistic not in STATISTICS:
        raise BabelError(f"statistic must be one of {', '.join(STATISTICS)}, got {statistic!r}")
    y = np.atleast_2d(y)
    s1, s0 = sufficient(GAUSSIAN, y, np.broadcast_to(se, y.shape))
    pre = prefix_loglik(GAUSSIAN, s1, s0, increasing=True)
    r1, r0 = s1[:, ::-1], s0[:, ::-1]
    lrs = []
    if statistic in ("jump", "max"):
        # a non-decreasing suffix is a non-increasing fit of the reversed prefix
        suf = prefix_loglik(GAUSSIAN, r1, r0, increasing=False)[:, ::-1]
        lrs.append(np.maximum(2 * (pre[:, :-1] + suf[:, 1:] - pre[:, -1:]), 0.0))
    if statistic in ("umbrella", "max"):
        dec = prefix_loglik(GAUSSIAN, r1, r0, increasing=True)[:, ::-1]
        lrs.append(np.maximum(2 * (pre[:, :-1] + dec[:, 1:] - pre[:, -1:]), 0.0))
    rows = np.arange(len(y))
    splits = [np.argmax(lr, axis=1) for lr in lrs]
    values = [lr[rows, sp] for lr, sp in zip(lrs, splits)]
    if len(lrs) == 1:
        which = np.full(len(y), 1 if statistic == "umbrella" else 0, dtype=np.int64)
        return values[0], splits[0], which
    pick = values[1] > values[0]
    return np.where(pick, values[1], values[0]), np.where(pick, splits[1], splits[0]), \
        pick.astype(np.int64)


@dataclass(frozen=True)
class ItemTestOptions:
    alpha: float = 0.05
    n_bootstrap: int = 999
    statistic: str = "max"          # jump | umbrella | max
    seed: int = 0

    def __post_init__(self):
        if not 0 < self.alpha < 1:
            raise BabelError(f"alpha must be in (0, 1), got {self.alpha}")
        if self.n_bootstrap < 19:
            raise BabelError(f"n_bootstrap must be >= 19, got {self.n_bootstrap}")
        if self.statistic not in STATISTICS:
            raise BabelError(f"statistic must be one of {', '.join(STATISTICS)}, "
                             f"got {self.statistic!r}")


@dataclass
class ItemCall:
    """One test's outcome (a seed's, or the pooled one)."""

    call: str
    drop_p: float
    drop_statistic: float
    split: int
    rise_p: float
    rise_statistic: float
    se: np.ndarray
    y: np.ndarray
    which: str = "jump"
    extra: dict = field(default_factory=dict)

    def to_dict(self) -> dict:
        return {"call": self.call, "drop_p": self.drop_p, "drop_statistic": self.drop_statistic,
                "split": self.split, "drop_shape": self.which, "rise_p": self.rise_p,
                "rise_statistic": self.rise_statistic, "y": self.y.tolist(),
                "se": self.se.tolist(), **self.extra}


def _call(dropped: bool, rose: bool) -> str:
    if dropped:
        return "rise_then_drop" if rose else "undetermined"
    return "monotone" if rose else "flat"


def call_item_curves(y: np.ndarray, resid: np.ndarray, options: ItemTestOptions
                ) -> tuple[np.ndarray, ...]:
    """The per-run test on many curves at once: ``y`` (R, K), ``resid`` (R, B, K).

    Returns (drop_p, drop_stat, split, which, rise_p, rise_stat, se) arrays over rows."""
    y = np.atleast_2d(np.asarray(y, dtype=float))
    r, k = y.shape
    b = resid.shape[1]
    se = np.stack([standard_errors(resid[i]) for i in range(r)])
    stat, split, which = drop_statistics(y, se, options.statistic)
    w = 1.0 / se ** 2
    level = (y * w).sum(1) / w.sum(1)
    null = level[:, None, None] + resid
    nstat, _, _ = drop_statistics(null.reshape(r * b, k), np.repeat(se, b, axis=0),
                                  options.statistic)
    drop_p = bootstrap_p(stat, nstat.reshape(r, b))
    # rise: before the split where the drop is significant, else over the whole curve;
    # the null is a constant at that stretch's weighted level plus the same residuals
    end = np.where(drop_p <= options.alpha, split, k - 1)
    s1, s0 = sufficient(GAUSSIAN, y, se)
    rise = rise_statistic(GAUSSIAN, s1, s0, end)
    c1, c0 = np.cumsum(s1, axis=1), np.cumsum(s0, axis=1)
    lev = c1[np.arange(r), end] / c0[np.arange(r), end]
    rnull = lev[:, None, None] + resid
    rs1, rs0 = sufficient(GAUSSIAN, rnull.reshape(r * b, k), np.repeat(se, b, axis=0))
    rstat = rise_statistic(GAUSSIAN, rs1, rs0, np.repeat(end, b))
    rise_p = np.where(end == 0, 1.0, bootstrap_p(rise, rstat.reshape(r, b)))
    return drop_p, stat, split, which, rise_p, rise, se


def _one(y: np.ndarray, resid: np.ndarray, options: ItemTestOptions) -> ItemCall:
    dp, ds, sp, wh, rp, rs, se = call_item_curves(y[None], resid[None], options)
    return ItemCall(_call(dp[0] <= options.alpha, rp[0] <= options.alpha), float(dp[0]),
                    float(ds[0]), int(sp[0]), float(rp[0]), float(rs[0]), se[0], y,
                    "umbrella" if wh[0] else "jump")


def drop_blocks(y: np.ndarray, se: np.ndarray, statistic: str = "max"
                ) -> list[tuple[np.ndarray, np.ndarray]]:
    """Per row of ``y`` (R, K): checkpoint indices of the top block before the drop and
    of the trough after it - the pooled top block of the non-decreasing fit of [0..m],
    and the lowest block of the fit after m (non-decreasing for a jump: its first block;
    non-increasing for an umbrella: its last)."""
    y = np.atleast_2d(y)
    se = np.broadcast_to(se, y.shape)
    _, split, which = drop_statistics(y, se, statistic)
    out = []
    for row, m, umbrella, s in zip(y, split, which, se):
        m, w = int(m), 1.0 / s ** 2
        before = isotonic_regression(row[:m + 1], weights=w[:m + 1]).x
        top = np.nonzero(np.isclose(before, before[-1], rtol=0, atol=1e-12))[0]
        after = isotonic_regression(row[m + 1:], weights=w[m + 1:], increasing=not umbrella).x
        trough = m + 1 + np.nonzero(np.isclose(after, after.min(), rtol=0, atol=1e-12))[0]
        out.append((top, trough))
    return out


def locating_seeds(n_seeds: int) -> int:
    """How many of S seeds locate the drop for the split-sample seed test (module doc)."""
    return max(1, n_seeds // 3)


def seed_drops(curves: np.ndarray, se: np.ndarray, statistic: str = "max") -> np.ndarray:
    """(R, S - L) split-sample drops of per-seed curves (R, S, K): the first L seeds'
    mean curve locates the top block and the trough (``locating_seeds``), each other
    seed's mean over the top block minus its mean over the trough is its drop (module
    doc). ``se`` (R, K) only weights the locating fit."""
    curves = np.asarray(curves, dtype=float)
    r, s, k = curves.shape
    n_loc = locating_seeds(s)
    if s - n_loc < 2:
        raise BabelError(f"the seed test needs >= 3 seeds, got {s}")
    blocks = drop_blocks(curves[:, :n_loc].mean(axis=1), np.broadcast_to(se, (r, k)), statistic)
    scored = curves[:, n_loc:]
    return np.stack([scored[j][:, top].mean(axis=1) - scored[j][:, trough].mean(axis=1)
                     for j, (top, trough) in enumerate(blocks)])


def seed_t(drops: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(t, one-sided p) over seeds for rows of split-sample drops (R, S - L)."""
    d = np.atleast_2d(drops)
    s = d.shape[1]
    mean, sd = d.mean(axis=1), d.std(axis=1, ddof=1)
    with np.errstate(divide="ignore", invalid="ignore"):
        t = np.where(sd > 0, mean / (sd / np.sqrt(s)), np.where(mean > 0, np.inf, 0.0))
    return t, np.where(np.isinf(t), 0.0, sps.t.sf(t, s - 1))


def seed_replication(curves: np.ndarray, se: np.ndarray, statistic: str = "max") -> dict:
    """The split-sample seed-as-unit test (module doc) on one curve's per-seed curves
    (S, K). ``seed_drops`` lists every seed's drop, None for the locating seeds."""
    curves = np.asarray(curves, dtype=float)
    n_loc = locating_seeds(len(curves))
    d = seed_drops(curves[None], np.asarray(se)[None], statistic)[0]
    t, p = seed_t(d[None])
    s = d.size
    mean, sd = float(d.mean()), float(d.std(ddof=1))
    half = float(t_half_widths(sd, s))
    return {"seed_drops": [None] * n_loc + d.tolist(), "locating_seeds": list(range(n_loc)),
            "mean_drop": mean, "mean_drop_ci95": [mean - half, mean + half],
            "t": float(t[0]), "df": s - 1, "p_seeds": float(p[0]),
            "seed_test": "split-sample: the first seeds locate the drop, the others are "
                         "scored there"}


@dataclass
class ItemStageResult:
    """Per-seed calls and the pooled call of one curve."""

    name: str
    x: np.ndarray
    per_seed: list[ItemCall]
    pooled: ItemCall
    options: ItemTestOptions

    def to_dict(self) -> dict:
        return {"name": self.name, "x": self.x.tolist(), "pooled": self.pooled.to_dict(),
                "per_seed": [c.to_dict() for c in self.per_seed],
                "n_seeds": len(self.per_seed), "options": vars(self.options).copy()}


def item_stage_test(series: ItemSeries, options: ItemTestOptions = ItemTestOptions()
                    ) -> ItemStageResult:
    """Per-seed tests and the pooled call (module doc)."""
    rng = np.random.default_rng(options.seed)
    curves = series.curves()
    per_seed = [_one(curves[s], residuals(series, options.n_bootstrap, rng, [s]), options)
                for s in range(series.n_seeds)]
    pooled = _one(series.pooled(), residuals(series, options.n_bootstrap, rng), options)
    p_items = pooled.drop_p
    extra: dict = {"p_items": p_items}
    if series.n_seeds >= 3:
        rep = seed_replication(curves, pooled.se, options.statistic)
        extra.update(rep)
        p = max(p_items, rep["p_seeds"])
        extra["basis"] = "items and seeds (intersection-union: both p-values <= alpha)"
    else:
        p = p_items
        extra["basis"] = (f"items only ({series.n_seeds} seed(s); a seed-level shock is not "
                          "covered: >= 3 seeds are needed for the seed-as-unit test)")
    pooled.extra = extra
    if p != pooled.drop_p:
        pooled.drop_p = p
        # the rise is read before the split only when the drop is called
        if p > options.alpha and pooled.call in ("rise_then_drop", "undetermined"):
            pooled = _recall_without_drop(series, pooled, options, rng)
        else:
            pooled.call = _call(p <= options.alpha, pooled.rise_p <= options.alpha)
    return ItemStageResult(series.name, series.x, per_seed, pooled, options)


def _recall_without_drop(series: ItemSeries, pooled: ItemCall, options: ItemTestOptions,
                         rng: np.random.Generator) -> ItemCall:
    """The pooled call when the seed test vetoes the drop: the rise over the whole curve."""
    y, se = pooled.y, pooled.se
    resid = residuals(series, options.n_bootstrap, rng)
    s1, s0 = sufficient(GAUSSIAN, y[None], se[None])
    end = np.array([len(y) - 1])
    rise = rise_statistic(GAUSSIAN, s1, s0, end)
    lev = s1.sum() / s0.sum()
    rs1, rs0 = sufficient(GAUSSIAN, lev + resid, np.broadcast_to(se, resid.shape))
    rstat = rise_statistic(GAUSSIAN, rs1, rs0, np.repeat(end, len(resid)))
    rise_p = float(bootstrap_p(rise, rstat[None])[0])
    pooled.rise_p, pooled.rise_statistic = rise_p, float(rise[0])
    pooled.call = _call(False, rise_p <= options.alpha)
    return pooled

