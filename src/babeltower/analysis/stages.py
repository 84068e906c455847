"""Stage detection on a per-checkpoint curve: translation, transition, stabilization.

The paper (Babel Tower, arXiv 2412.07298) draws the stage boundaries by eye on the
performance curve and states no numeric rule. **[ours]** This module's rule, every
threshold a parameter:

1. **Coordinate.** Points are sorted by x and smoothed over their checkpoint ORDER,
   which for log-spaced checkpoints (0, 1k, 2k, 4k, ...) is log-x and for evenly spaced
   ones is x. Boundaries are reported both as indices and as x values.
2. **Smoothing.** A running median of ``window`` points (robust to single bad
   checkpoints) followed by a 3-point running mean; ends use shrunken windows.
3. **Noise.** sigma = 1.4826 x MAD(second differences of y) / sqrt(6): the robust
   standard deviation of white noise around a trend that is locally linear between
   neighbouring checkpoints (second differences cancel the trend even when checkpoints
   are sparse, MAD ignores the few kinks and jumps).
4. **Kind.**
   * ``"flat"``: the smoothed curve's range is below ``k_noise x sigma``.
   * ``"three-stage"``: the smoothed curve rises from its start to a peak by more than
     ``k_noise x sigma`` AND then drops after the peak by more than
     ``k_noise x sigma`` and by more than ``min_relative_drop`` of the rise. The peak
     boundary is the best raw checkpoint within ``window // 2`` of the smoothed peak
     (smoothing flattens a sharp peak and can shift it toward the slower side).
   * ``"monotone"``: it rises but does not drop that much after its peak (the paper's
     C++: "no dependence on the primary language").
   * ``"undetermined"``: too few points (< ``min_points``), or no rise (the curve only
     falls from the start).
5. **Boundaries.** translation = [start, peak]; transition = [peak, t_s]; stabilization
   = [t_s, end], where t_s is the first checkpoint after which the smoothed curve stays
   within a tolerance band of its final level (median of the last ``tail`` smoothed
   points); the band is ``max(2 sigma / sqrt(window), stable_fraction x change)``.
   For a monotone curve the stages are rise = [start, t_s] and plateau = [t_s, end].
6. **Confidence** (in [0, 1]): a residual bootstrap. The residuals y - smoothed are
   resampled with replacement onto the smoothed curve ``n_bootstrap`` times and the
   rule re-applied; confidence is the share of resamples that give the same kind and,
   for three-stage/monotone, a peak/plateau boundary within ``tolerance`` checkpoints
   (default max(1, n // 10)). Residuals of a smoother slightly understate the noise, so
   the confidence is optimistic for very short curves; use it to rank, not as a p-value.

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

from babeltower.errors import BabelError

KINDS = ("three-stage", "monotone", "flat", "undetermined")


@dataclass
class Segment:
    name: str
    start_index: int
    end_index: int
    start_x: float
    end_x: float


@dataclass
class StageResult:
    kind: str
    confidence: float
    x: np.ndarray                 # sorted x
    y: np.ndarray                 # y in "higher is better" orientation, sorted by x
    smoothed: np.ndarray
    noise_sigma: float
    peak_index: int | None = None          # end of translation (three-stage)
    stable_index: int | None = None        # start of stabilization (three-stage, monotone)
    rise: float = 0.0
    drop: float = 0.0
    segments: list[Segment] = field(default_factory=list)
    params: dict[str, Any] = field(default_factory=dict)
    reason: str = ""

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
    def drop_to_noise(self) -> float:
        return self.drop / self.noise_sigma if self.noise_sigma > 0 else math.inf

    def segment(self, name: str) -> Segment | None:
        return next((s for s in self.segments if s.name == name), None)

    def to_dict(self) -> dict:
        return {
            "kind": self.kind, "confidence": self.confidence, "reason": self.reason,
            "peak_index": self.peak_index, "peak_x": self.peak_x,
            "stable_index": self.stable_index, "stable_x": self.stable_x,
            "boundaries": self.boundaries, "boundary_indices": self.boundary_indices,
            "rise": self.rise, "drop": self.drop, "noise_sigma": self.noise_sigma,
            "drop_to_noise": None if not math.isfinite(self.drop_to_noise) else self.drop_to_noise,
            "segments": [dataclasses.asdict(s) for s in self.segments],
            "x": self.x.tolist(), "y": self.y.tolist(), "smoothed": self.smoothed.tolist(),
            "params": self.params,
        }


# ---- pieces -------------------------------------------------------------------------
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


def noise_sigma(y: np.ndarray) -> float:
    """Robust white-noise sigma from second differences: 1.4826 MAD(d2) / sqrt(6).

    Second differences cancel any locally linear trend (first differences would count
    the slope between sparse checkpoints as noise); for white noise var(d2) = 6 sigma^2.
    """
    y = np.asarray(y, dtype=float)
    d = np.diff(y, n=2) if y.size >= 3 else np.diff(y)
    if d.size == 0:
        return 0.0
    scale = math.sqrt(6) if y.size >= 3 else math.sqrt(2)
    return float(1.4826 * np.median(np.abs(d - np.median(d))) / scale)


def default_window(n: int) -> int:
    return max(3, (n // 8) | 1)


def _classify(y: np.ndarray, s: np.ndarray, sigma: float, window: int, k_noise: float,
              min_relative_drop: float, stable_fraction: float, tail: int) -> dict:
    """The rule on a curve ``y`` and its smoothed ``s`` (shared by the fit and the bootstrap)."""
    n = len(s)
    span = float(s.max() - s.min())
    floor = k_noise * sigma
    peak = int(np.argmax(s))
    rise = float(s[peak] - s[0])
    after = s[peak:]
    trough = peak + int(np.argmin(after))
    drop = float(s[peak] - s[trough])
    out = {"peak": peak, "trough": trough, "rise": rise, "drop": drop, "stable": None}
    if span <= floor or span == 0:
        return {**out, "kind": "flat", "reason": f"range {span:.4g} <= {k_noise:g} x noise {sigma:.4g}"}
    if rise <= floor:
        return {**out, "kind": "undetermined",
                "reason": f"no rise from the start (rise {rise:.4g} <= {k_noise:g} x noise)"}
    three = drop > floor and drop > min_relative_drop * rise
    final = float(np.median(s[-tail:]))
    change = drop if three else rise
    band = max(2 * sigma / math.sqrt(window), stable_fraction * change)
    outside = np.nonzero(np.abs(s[peak if three else 0:] - final) > band)[0]
    start = peak if three else 0
    stable = start + (int(outside[-1]) + 1 if outside.size else 0)
    stable = min(max(stable, peak + 1 if three else 1), n - 1)
    if three:
        # the smoother flattens a sharp peak and can shift its argmax by a checkpoint
        # toward the slower side: the boundary is the best RAW checkpoint within
        # window//2 of the smoothed peak (local, so a far outlier cannot move it)
        lo, hi = max(0, peak - window // 2), min(n, peak + window // 2 + 1)
        out["peak"] = peak = lo + int(np.argmax(y[lo:hi]))
        stable = min(max(stable, peak + 1), n - 1)
        return {**out, "kind": "three-stage", "stable": stable,
                "reason": f"rise {rise:.4g} then drop {drop:.4g} (> {k_noise:g} x noise "
                          f"{sigma:.4g} and > {min_relative_drop:g} x rise)"}
    return {**out, "kind": "monotone", "stable": stable,
            "reason": f"rise {rise:.4g}, no drop after the peak above {k_noise:g} x noise "
                      f"{sigma:.4g} / {min_relative_drop:g} x rise (drop {drop:.4g})"}


@dataclass(frozen=True)
class StageOptions:
    """The rule's thresholds (docs/stages.md); ``sigma`` overrides the noise estimate."""

    window: int | None = None
    k_noise: float = 3.0
    min_relative_drop: float = 0.1
    stable_fraction: float = 0.15
    tail: int | None = None
    min_points: int = 6
    n_bootstrap: int = 200
    tolerance: int | None = None
    seed: int = 0
    sigma: float | None = None


def detect_stages(x: Sequence[float], y: Sequence[float], higher_is_better: bool = True,
                  options: StageOptions = StageOptions()) -> StageResult:
    """Translation / transition / stabilization on one per-checkpoint curve (rule above).

    ``sigma`` overrides the noise estimate (e.g. a known evaluation standard error).
    """
    o = options
    window, k_noise, min_relative_drop = o.window, o.k_noise, o.min_relative_drop
    stable_fraction, tail, min_points = o.stable_fraction, o.tail, o.min_points
    n_bootstrap, tolerance, seed, sigma = o.n_bootstrap, o.tolerance, o.seed, o.sigma
    xs = np.asarray(x, dtype=float)
    ys = np.asarray(y, dtype=float)
    if xs.shape != ys.shape or xs.ndim != 1:
        raise BabelError(f"x and y must be 1-D of the same length (got {xs.shape} and {ys.shape})")
    if not (np.all(np.isfinite(xs)) and np.all(np.isfinite(ys))):
        raise BabelError("stage detection needs finite x and y (drop NaN checkpoints first)")
    order = np.argsort(xs, kind="stable")
    xs, ys = xs[order], ys[order] * (1.0 if higher_is_better else -1.0)
    n = len(xs)
    window = window or default_window(n)
    tail = tail or max(2, n // 10)
    tolerance = max(1, n // 10) if tolerance is None else tolerance
    params = dict(window=window, k_noise=k_noise, min_relative_drop=min_relative_drop,
                  stable_fraction=stable_fraction, tail=tail, min_points=min_points,
                  n_bootstrap=n_bootstrap, tolerance=tolerance, seed=seed,
                  higher_is_better=higher_is_better)
    if n < min_points:
        return StageResult("undetermined", 0.0, xs, ys, ys.copy(), 0.0, params=params,
                           reason=f"{n} checkpoints < min_points={min_points}")
    s = smooth(ys, window)
    sig = noise_sigma(ys) if sigma is None else float(sigma)
    # a perfectly clean curve would make every wiggle significant: floor sigma at 1e-9 x range
    sig = max(sig, 1e-9 * float(np.ptp(ys)) if np.ptp(ys) > 0 else 0.0)
    c = _classify(ys, s, sig, window, k_noise, min_relative_drop, stable_fraction, tail)

    # residual bootstrap for the confidence
    resid = ys - s
    rng = np.random.default_rng(seed)
    agree = 0
    for _ in range(n_bootstrap):
        yb = s + rng.choice(resid, size=n, replace=True)
        sb = smooth(yb, window)
        cb = _classify(yb, sb, noise_sigma(yb) if sigma is None else sig, window, k_noise,
                       min_relative_drop, stable_fraction, tail)
        if cb["kind"] != c["kind"]:
            continue
        if c["kind"] == "three-stage" and abs(cb["peak"] - c["peak"]) > tolerance:
            continue
        if c["kind"] in ("three-stage", "monotone") and abs(cb["stable"] - c["stable"]) > 2 * tolerance:
            continue
        agree += 1
    confidence = agree / n_bootstrap if n_bootstrap else float("nan")

    res = StageResult(c["kind"], confidence, xs, ys, s, sig, rise=c["rise"], drop=c["drop"],
                      params=params, reason=c["reason"])
    last = n - 1
    if c["kind"] == "three-stage":
        p, t = c["peak"], c["stable"]
        res.peak_index, res.stable_index = p, t
        res.segments = [Segment("translation", 0, p, float(xs[0]), float(xs[p])),
                        Segment("transition", p, t, float(xs[p]), float(xs[t])),
                        Segment("stabilization", t, last, float(xs[t]), float(xs[last]))]
    elif c["kind"] == "monotone":
        t = c["stable"]
        res.stable_index = t
        res.segments = [Segment("rise", 0, t, float(xs[0]), float(xs[t])),
                        Segment("plateau", t, last, float(xs[t]), float(xs[last]))]
    else:
        res.segments = [Segment(c["kind"], 0, last, float(xs[0]), float(xs[last]))]
    return res


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


def switch_point(x: Sequence[float], y: Sequence[float], window: int | None = None
                 ) -> tuple[float, str, float]:
    """x where the smoothed curve first crosses halfway between its start and end levels.

    Returns (x_switch, "rising"|"falling", total change). Linear interpolation between
    the checkpoints on either side of the crossing.
    """
    xs = np.asarray(x, dtype=float)
    ys = np.asarray(y, dtype=float)
    order = np.argsort(xs, kind="stable")
    xs, ys = xs[order], ys[order]
    n = len(xs)
    if n < 2:
        raise BabelError("a corroborating curve needs at least 2 checkpoints")
    s = smooth(ys, window or default_window(n))
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


def detect_stages_multi(curves: dict[str, tuple], performance: str | None = None,
                        options: StageOptions = StageOptions()) -> MultiStageResult:
    """Stages of the performance curve, corroborated by the other curves.

    ``curves``: name -> (x, y) or (x, y, higher_is_better). ``performance`` names the
    curve that defines the stages (default: the first). Every other curve's switch point
    is mapped onto the performance curve's checkpoint index (by interpolating x, in log
    space when all x > 0) and agrees if it lies in [peak - tol, stabilization + tol].
    """
    if not curves:
        raise BabelError("detect_stages_multi needs at least one curve")
    name = performance or next(iter(curves))
    if name not in curves:
        raise BabelError(f"no curve named {name!r} (have: {', '.join(curves)})")
    perf_curve = curves[name]
    hib = perf_curve[2] if len(perf_curve) > 2 else True
    perf = detect_stages(perf_curve[0], perf_curve[1], hib, options)
    tol = perf.params["tolerance"]
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
        xs, direction_change = curve[0], switch_point(curve[0], curve[1])
        sx, direction, change = direction_change
        idx = to_index(sx)
        agrees = None
        if perf.kind == "three-stage":
            agrees = bool(perf.peak_index - tol <= idx <= perf.stable_index + tol)
        out[cname] = Corroboration(cname, idx, sx, direction, change, agrees)
    checked = [c.agrees for c in out.values() if c.agrees is not None]
    agreement = sum(checked) / len(checked) if checked else None
    return MultiStageResult(perf, out, agreement)
