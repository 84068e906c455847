"""Stage test on a per-checkpoint curve: rise-then-drop, monotone, flat - with a p-value.

The paper (Babel Tower, arXiv 2412.07298) draws the stage boundaries by eye on the
performance curve and states no numeric rule. **[ours]** A test with a noise model and
known power (docs/stages.md; the statistics are in ``stage_test``):

1. **Noise** is the evaluation's own uncertainty, passed in with the curve, never read
   off the curve's wiggles: ``BinomialNoise(trials)`` for an accuracy that is k of n
   prompts per checkpoint, ``GaussianNoise(se)`` for loss/bpb with a per-checkpoint
   standard error (e.g. a document bootstrap).
2. **Drop test.** H0: the mean curve is non-decreasing (isotonic). Statistic: the largest
   likelihood-ratio gain from allowing one downward jump after any running maximum
   (isotonic fit of [0..m] plus isotonic fit of [m+1..end] against the isotonic fit of
   the whole curve). p-value: parametric bootstrap under a flat curve at the pooled
   level (``null="flat"``, the default: the least favourable monotone curve, since a
   drop is likeliest where nothing rises) or under the fitted isotonic curve
   (``null="isotonic"``: more power, but measured 6.0% [4.1, 8.5] false positives at
   alpha 0.05 on rise-then-plateau curves of 40 checkpoints, n = 400).
3. **Rise test.** H0: constant. Statistic: isotonic against constant fit, over the part
   before the drop (if the drop is significant) or the whole curve; bootstrap under the
   pooled constant.
4. **Call.** drop and rise significant at ``alpha``: ``rise_then_drop``; drop without
   a preceding rise (the curve falls from the start): ``undetermined``; no drop, a rise:
   ``monotone``; neither: ``flat``.
5. **Stages.** translation = [start, peak] (m = the last checkpoint before the drop; the
   peak is the best raw checkpoint of the pooled top block of the isotonic fit of
   [start, m]); transition = [peak, t_s]; stabilization = [t_s,
   end], t_s = the first checkpoint after which the non-increasing fit of the curve after
   m is within ``stable_fraction`` of the drop of its final level (the weighted mean of
   the last third of the points after m). A monotone curve has
   rise = [start, t_s] and plateau = [t_s, end] from its isotonic fit.

``detect_stages_multi`` adds corroborating curves (working-language share,
transferring-neuron ratio, ...): each one's switch point (where its smoothed curve has
made half of its total change) should fall between the performance peak and the start
of stabilization (within ``tolerance`` checkpoints); ``agreement`` is the share that do.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field
from typing import Any, Sequence

import numpy as np
from scipy.optimize import isotonic_regression

from babeltower.analysis.item_test import ItemStageResult
from babeltower.analysis.stage_test import (BINOMIAL, GAUSSIAN, BatchCalls, CallSettings,
                                            call_batch)
from babeltower.errors import BabelError

CALLS = ("rise_then_drop", "monotone", "flat", "undetermined")


@dataclass(frozen=True)
class BinomialNoise:
    """Accuracy = k of ``trials`` prompts per checkpoint (a number, or one per checkpoint)."""

    trials: float | Sequence[float]

    kind = BINOMIAL

    def scale(self, n: int, name: str) -> np.ndarray:
        t = _per_checkpoint(self.trials, n, name, "trials")
        if np.any(np.abs(t - np.rint(t)) > 1e-9):
            raise BabelError(f"stage test on {name}: binomial trials must be whole numbers")
        return t


@dataclass(frozen=True)
class GaussianNoise:
    """A value with a known standard error per checkpoint (a number, or one per checkpoint)."""

    se: float | Sequence[float]

    kind = GAUSSIAN

    def scale(self, n: int, name: str) -> np.ndarray:
        return _per_checkpoint(self.se, n, name, "standard error")


def _per_checkpoint(v, n: int, name: str, what: str) -> np.ndarray:
    a = np.asarray(v, dtype=float)
    a = np.full(n, float(a)) if a.ndim == 0 else a
    if a.shape != (n,):
        raise BabelError(f"stage test on {name}: {a.size} {what} values for {n} checkpoints")
    if not np.all(np.isfinite(a)) or np.any(a <= 0):
        raise BabelError(f"stage test on {name}: every {what} must be finite and > 0 "
                         f"(got {a.min():g}); a zero eval size has no information")
    return a


Noise = BinomialNoise | GaussianNoise


@dataclass(frozen=True)
class StageOptions:
    """The test's settings (docs/stages.md)."""

    alpha: float = 0.05            # significance level of the drop and rise tests
    n_bootstrap: int = 999         # parametric-bootstrap replicates per test
    null: str = "flat"             # drop test's null curve: "flat" or "isotonic"
    min_points: int = 6            # fewer checkpoints: an error
    stable_fraction: float = 0.15  # stabilization band, as a share of the drop (rise)
    tolerance: int | None = None   # corroboration tolerance, checkpoints (max(1, n//10))
    seed: int = 0

    def __post_init__(self):
        if not 0 < self.alpha < 1:
            raise BabelError(f"alpha must be in (0, 1), got {self.alpha}")
        if self.n_bootstrap < 19:
            raise BabelError(f"n_bootstrap must be >= 19 for a p-value, got {self.n_bootstrap}")
        if self.null not in ("isotonic", "flat"):
            raise BabelError(f"null must be isotonic or flat, got {self.null!r}")


@dataclass
class Segment:
    name: str
    start_index: int
    end_index: int
    start_x: float
    end_x: float


@dataclass
class StageResult:
    call: str                      # rise_then_drop | monotone | flat | undetermined
    p_value: float                 # the drop test's (the call's evidence for a drop)
    statistic: float               # the drop test's likelihood-ratio statistic
    rise_p_value: float
    rise_statistic: float
    x: np.ndarray
    y: np.ndarray                  # "higher is better" orientation
    fitted: np.ndarray             # isotonic fit, or the two pieces around the drop
    noise: str
    scale: np.ndarray              # trials or standard error per checkpoint
    name: str = "curve"
    drop_after_index: int | None = None    # m: last checkpoint before the drop
    peak_index: int | None = None          # best raw checkpoint in [0, m]
    stable_index: int | None = None        # start of stabilization / plateau
    rise: float = 0.0
    drop: float = 0.0
    segments: list[Segment] = field(default_factory=list)
    params: dict[str, Any] = field(default_factory=dict)
    reason: str = ""

    @property
    def kind(self) -> str:
        return self.call

    @property
    def boundary_indices(self) -> list[int]:
        return [s.end_index for s in self.segments[:-1]]

    @property
    def boundaries(self) -> list[float]:
        """x values of the stage boundaries (translation|transition, transition|stabilization)."""
        return [float(self.x[i]) for i in self.boundary_indices]

    @property
    def peak_x(self) -> float | None:
        return None if self.peak_index is None else float(self.x[self.peak_index])

    @property
    def stable_x(self) -> float | None:
        return None if self.stable_index is None else float(self.x[self.stable_index])

    @property
    def translation(self) -> Segment | None:
        return self.segment("translation")

    def segment(self, name: str) -> Segment | None:
        return next((s for s in self.segments if s.name == name), None)

    def to_dict(self) -> dict:
        return {
            "call": self.call, "kind": self.call, "p_value": self.p_value,
            "statistic": self.statistic, "rise_p_value": self.rise_p_value,
            "rise_statistic": self.rise_statistic, "reason": self.reason, "name": self.name,
            "drop_after_index": self.drop_after_index,
            "peak_index": self.peak_index, "peak_x": self.peak_x,
            "stable_index": self.stable_index, "stable_x": self.stable_x,
            "boundaries": self.boundaries, "boundary_indices": self.boundary_indices,
            "rise": self.rise, "drop": self.drop, "noise": self.noise,
            "scale": self.scale.tolist(),
            "segments": [dataclasses.asdict(s) for s in self.segments],
            "x": self.x.tolist(), "y": self.y.tolist(), "fitted": self.fitted.tolist(),
            "params": self.params,
        }


def _checked(x, y, noise: Noise, higher_is_better: bool, options: StageOptions, name: str):
    """(x, y in "higher is better" orientation, scale) or a one-line error naming the curve.

    ``y`` may be one curve (n,) or several on the same checkpoints (R, n)."""
    xs = np.asarray(x, dtype=float)
    ys = np.asarray(y, dtype=float)
    if xs.ndim != 1 or ys.shape[-1:] != xs.shape or ys.ndim not in (1, 2):
        raise BabelError(f"stage test on {name}: x and y must be 1-D of the same length "
                         f"(got {xs.shape} and {ys.shape})")
    if len(xs) < options.min_points:
        raise BabelError(f"stage test on {name}: {len(xs)} checkpoints, the test needs at "
                         f"least {options.min_points}")
    if not (np.all(np.isfinite(xs)) and np.all(np.isfinite(ys))):
        raise BabelError(f"stage test on {name}: x and y must be finite (drop NaN "
                         "checkpoints first)")
    if np.any(np.diff(xs) <= 0):
        raise BabelError(f"stage test on {name}: x must be strictly increasing "
                         "(sort the checkpoints, drop duplicates)")
    scale = noise.scale(len(xs), name)
    if noise.kind == BINOMIAL:
        if np.any(ys < 0) or np.any(ys > 1):
            raise BabelError(f"stage test on {name}: a binomial curve holds proportions in [0, 1]")
        return xs, ys if higher_is_better else 1.0 - ys, scale
    return xs, ys if higher_is_better else -ys, scale


def detect_stages(x: Sequence[float], y: Sequence[float], noise: Noise,
                  higher_is_better: bool = True, options: StageOptions = StageOptions(),
                  name: str = "curve") -> StageResult:
    """The stage test on one curve (module doc); ``name`` appears in every error."""
    xs, ys, scale = _checked(x, y, noise, higher_is_better, options, name)
    settings = CallSettings(options.alpha, options.n_bootstrap, options.null)
    c = call_batch(noise.kind, ys[None, :], scale[None, :], settings,
                   np.random.default_rng(options.seed))
    call, m = str(c.call[0]), int(c.split[0])
    res = StageResult(call, float(c.drop_p[0]), float(c.drop_statistic[0]),
                      float(c.rise_p[0]), float(c.rise_statistic[0]), xs, ys,
                      _isotonic(ys, noise.kind, scale), noise.kind, scale, name,
                      params={**dataclasses.asdict(options), "higher_is_better": higher_is_better,
                              "noise": noise.kind})
    if call == "rise_then_drop":
        _three_stages(res, m, noise.kind, options.stable_fraction)
    elif call == "monotone":
        _rise_plateau(res, options.stable_fraction)
    else:
        res.segments = [Segment(call, 0, len(xs) - 1, float(xs[0]), float(xs[-1]))]
    res.reason = _reason(res, m, options.alpha)
    return res


def stage_result_from_items(res: ItemStageResult, options: StageOptions = StageOptions()
                            ) -> StageResult:
    """The pooled call of an item-level test (``analysis.item_test``) as a StageResult:
    the same segments as ``detect_stages`` (peak, transition, stabilization), read off
    the mean curve with the bootstrap's per-checkpoint standard errors as weights."""
    c = res.pooled
    xs, ys, se = res.x, c.y, c.se
    out = StageResult(c.call, c.drop_p, c.drop_statistic, c.rise_p, c.rise_statistic, xs, ys,
                      _isotonic(ys, GAUSSIAN, se), "items", se, res.name,
                      params={**dataclasses.asdict(options), "noise": "items",
                              "item_test": vars(res.options).copy(), **c.extra})
    if c.call == "rise_then_drop":
        _three_stages(out, c.split, GAUSSIAN, options.stable_fraction)
    elif c.call == "monotone":
        _rise_plateau(out, options.stable_fraction)
    else:
        out.segments = [Segment(c.call, 0, len(xs) - 1, float(xs[0]), float(xs[-1]))]
    out.reason = _reason(out, c.split, options.alpha) + f"; {c.extra.get('basis', '')}"
    return out


def call_curves(x: Sequence[float], curves: np.ndarray, noise: Noise,
                higher_is_better: bool = True, options: StageOptions = StageOptions(),
                name: str = "curves") -> BatchCalls:
    """The test's call and p-values for many curves on the same checkpoints at once
    (rows of ``curves``; one noise model for all): what ``detect_stages`` decides, without
    the segments, at a fraction of the cost per curve (simulations, power)."""
    _, ys, scale = _checked(x, np.atleast_2d(curves), noise, higher_is_better, options, name)
    settings = CallSettings(options.alpha, options.n_bootstrap, options.null)
    return call_batch(noise.kind, ys, np.broadcast_to(scale, ys.shape).copy(), settings,
                      np.random.default_rng(options.seed))


def _weights(kind: str, scale: np.ndarray) -> np.ndarray:
    return scale if kind == BINOMIAL else 1.0 / scale ** 2   # "items": se, as gaussian


def _isotonic(y: np.ndarray, kind: str, scale: np.ndarray, increasing: bool = True) -> np.ndarray:
    if y.size == 0:
        return y.copy()
    return isotonic_regression(y, weights=_weights(kind, scale), increasing=increasing).x


def _final_level(y: np.ndarray, w: np.ndarray) -> float:
    k = max(3, len(y) // 3)
    return float(np.average(y[-k:], weights=w[-k:]))


def _three_stages(res: StageResult, m: int, kind: str, stable_fraction: float) -> None:
    """Segments of a rise-then-drop curve; the drop comes after checkpoint m."""
    xs, ys, n = res.x, res.y, len(res.x)
    before = _isotonic(ys[:m + 1], kind, res.scale[:m + 1])
    after = _isotonic(ys[m + 1:], kind, res.scale[m + 1:])
    res.fitted = np.concatenate([before, after])
    res.drop_after_index = m
    # the peak: best raw checkpoint of the pooled top block of the fit before the drop
    below = np.nonzero(before < before[-1] - 1e-12 * max(1.0, abs(before[-1])))[0]
    top = int(below[-1]) + 1 if below.size else 0
    p = res.peak_index = top + int(np.argmax(ys[top:m + 1]))
    res.rise = float(before[-1] - before[0])
    # drop: to the bottom of the pooled trough (the first block of the fit after m; the
    # non-increasing fit over that block ends at its lowest level)
    r = m + 1 + int(np.nonzero(np.isclose(after, after[0], rtol=0, atol=1e-12))[0][-1])
    res.drop = float(before[-1] - _isotonic(ys[m + 1:r + 1], kind, res.scale[m + 1:r + 1],
                                            increasing=False)[-1])
    # the decline after m, read from its non-increasing fit, settles near the curve's
    # final level (weighted mean of the last third after m: one low last point must not
    # define it)
    decline = _isotonic(ys[m + 1:], kind, res.scale[m + 1:], increasing=False)
    final = _final_level(ys[m + 1:], _weights(kind, res.scale[m + 1:]))
    band = stable_fraction * max(float(before[-1]) - final, 0.0)
    settled = np.nonzero(decline <= final + band)[0]
    t = min(m + 1 + (int(settled[0]) if settled.size else 0), n - 1)
    res.stable_index = t
    res.segments = [Segment("translation", 0, p, float(xs[0]), float(xs[p])),
                    Segment("transition", p, t, float(xs[p]), float(xs[t])),
                    Segment("stabilization", t, n - 1, float(xs[t]), float(xs[-1]))]


def _rise_plateau(res: StageResult, stable_fraction: float) -> None:
    f, xs, n = res.fitted, res.x, len(res.x)
    final = _final_level(res.y, _weights(res.noise, res.scale))
    res.rise = float(final - f[0])
    settled = np.nonzero(f >= final - stable_fraction * res.rise)[0]
    t = min(max(int(settled[0]) if settled.size else n - 1, 1), n - 1)
    res.stable_index = t
    res.segments = [Segment("rise", 0, t, float(xs[0]), float(xs[t])),
                    Segment("plateau", t, n - 1, float(xs[t]), float(xs[-1]))]


def _reason(res: StageResult, m: int, alpha: float) -> str:
    drop = f"drop test p = {res.p_value:.3g} (LR {res.statistic:.3g}"
    drop += f", after checkpoint {m})" if res.call in ("rise_then_drop", "undetermined") else ")"
    rise = f"rise test p = {res.rise_p_value:.3g}"
    return {"rise_then_drop": f"rise then drop: {drop}, {rise} before it (alpha {alpha:g})",
            "undetermined": f"a drop without a preceding rise: {drop}, {rise} > {alpha:g}",
            "monotone": f"no drop at alpha {alpha:g}: {drop}; rises: {rise}",
            "flat": f"neither a drop nor a rise at alpha {alpha:g}: {drop}, {rise}"}[res.call]


# ---- corroboration --------------------------------------------------------------------
@dataclass
class Corroboration:
    name: str
    switch_index: float      # on the performance curve's checkpoint index scale
    switch_x: float
    direction: str           # "rising" or "falling"
    change: float
    agrees: bool | None      # None when the performance curve has no transition


@dataclass
class MultiStageResult:
    performance: StageResult
    corroborating: dict[str, Corroboration]
    agreement: float | None  # share of corroborating curves that agree (None: nothing to check)

    def to_dict(self) -> dict:
        return {"performance": self.performance.to_dict(), "agreement": self.agreement,
                "corroborating": {k: dataclasses.asdict(v) for k, v in self.corroborating.items()}}


def running_median(y: np.ndarray, window: int) -> np.ndarray:
    h = window // 2
    n = len(y)
    return np.array([np.median(y[max(0, i - h):min(n, i + h + 1)]) for i in range(n)])


def smooth(y: np.ndarray, window: int) -> np.ndarray:
    """Running median of ``window`` points, then a 3-point running mean (shrunk at the ends)."""
    m = running_median(np.asarray(y, dtype=float), max(1, window))
    if len(m) < 3:
        return m
    out = m.copy()
    out[1:-1] = (m[:-2] + m[1:-1] + m[2:]) / 3
    out[0] = (m[0] + m[1]) / 2
    out[-1] = (m[-2] + m[-1]) / 2
    return out


def switch_point(x: Sequence[float], y: Sequence[float], window: int | None = None
                 ) -> tuple[float, str, float]:
    """x where the smoothed curve first crosses halfway between its start and end levels.

    Returns (x_switch, "rising"|"falling", total change). Linear interpolation between
    the checkpoints on either side of the crossing. (A switch point locates a change; it
    tests nothing, so a smoother is enough here.)
    """
    xs = np.asarray(x, dtype=float)
    ys = np.asarray(y, dtype=float)
    order = np.argsort(xs, kind="stable")
    xs, ys = xs[order], ys[order]
    n = len(xs)
    if n < 2:
        raise BabelError("a corroborating curve needs at least 2 checkpoints")
    s = smooth(ys, window or max(3, (n // 8) | 1))
    k = max(1, n // 10)
    start, end = float(np.median(s[:k])), float(np.median(s[-k:]))
    half = (start + end) / 2
    rising = end >= start
    crossed = np.nonzero(s >= half)[0] if rising else np.nonzero(s <= half)[0]
    i = int(crossed[0]) if crossed.size else n - 1
    if i == 0:
        return float(xs[0]), "rising" if rising else "falling", end - start
    a, b = s[i - 1] - half, s[i] - half
    f = 0.0 if a == b else a / (a - b)
    return float(xs[i - 1] + f * (xs[i] - xs[i - 1])), "rising" if rising else "falling", end - start


def detect_stages_multi(curves: dict[str, tuple], noise: Noise | None,
                        performance: str | None = None, options: StageOptions = StageOptions(),
                        performance_result: StageResult | None = None) -> MultiStageResult:
    """Stages of the performance curve, corroborated by the other curves.

    ``curves``: name -> (x, y) or (x, y, higher_is_better); ``noise`` belongs to the
    performance curve. ``performance`` names the curve that defines the stages (default:
    the first). ``performance_result``: its call already made (e.g. by the item-level
    test, ``stage_result_from_items``); then ``noise`` is not used. Every other curve's switch point is mapped onto the performance curve's
    checkpoint index (by interpolating x, in log space when all x > 0) and agrees if it
    lies in [end of translation - tol, start of stabilization + tol].
    """
    if not curves:
        raise BabelError("detect_stages_multi needs at least one curve")
    name = performance or next(iter(curves))
    if name not in curves:
        raise BabelError(f"no curve named {name!r} (have: {', '.join(curves)})")
    perf_curve = curves[name]
    hib = perf_curve[2] if len(perf_curve) > 2 else True
    perf = performance_result if performance_result is not None else \
        detect_stages(perf_curve[0], perf_curve[1], noise, hib, options, name=name)
    tol = max(1, len(perf.x) // 10) if options.tolerance is None else options.tolerance
    px = perf.x
    use_log = bool(np.all(px > 0))

    def to_index(xv: float) -> float:
        grid = np.log(px) if use_log else px
        v = math.log(xv) if use_log and xv > 0 else xv
        return float(np.interp(v, grid, np.arange(len(px))))

    out: dict[str, Corroboration] = {}
    for cname, curve in curves.items():
        if cname == name:
            continue
        sx, direction, change = switch_point(curve[0], curve[1])
        idx = to_index(sx)
        agrees = None
        if perf.call == "rise_then_drop":
            agrees = bool(perf.peak_index - tol <= idx <= perf.stable_index + tol)
        out[cname] = Corroboration(cname, idx, sx, direction, change, agrees)
    checked = [c.agrees for c in out.values() if c.agrees is not None]
    agreement = sum(checked) / len(checked) if checked else None
    return MultiStageResult(perf, out, agreement)
