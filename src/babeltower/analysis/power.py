"""Power of the stage test: how often it finds a given rise-then-drop, how often it
calls one where there is none, for a checkpoint schedule and an evaluation size.

Three mean curves on the schedule (x = fraction of continual pre-training, 0..1):

* **effect**: rises linearly from ``start`` to ``base`` at ``peak_at``, falls linearly
  over ``transition`` to the dropped level, then stays there;
* **monotone**: the same rise, then stays at ``base`` (no drop);
* **flat**: ``base`` throughout.

The dropped level is ``base x (1 - drop)`` for accuracies (binomial noise: ``drop`` is
relative to the peak) and ``base - drop x (base - start)`` for values with a standard
error (gaussian: relative to the rise). Each curve is drawn ``sims`` times with the
noise model and tested (``call_curves``); rates come with exact (Clopper-Pearson) 95%
intervals.
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import numpy as np
from scipy.stats import binomtest

from babeltower.analysis.stage_test import BINOMIAL
from babeltower.analysis.stages import BinomialNoise, GaussianNoise, Noise, StageOptions, call_curves
from babeltower.errors import BabelError

SCHEDULES = ("even", "dense-middle")


def schedule(kind: str, n_checkpoints: int, squeeze: float = 0.6) -> np.ndarray:
    """Checkpoint positions as fractions of CPT, first at 0 and last at 1.

    ``even``: evenly spaced. ``dense-middle``: x = u - squeeze sin(2 pi u) / (2 pi) on an
    even grid u, spacing (1 - squeeze) x the even one through the middle and (1 + squeeze)
    x at both ends - where a transition is expected to happen.
    """
    if n_checkpoints < 2:
        raise BabelError(f"a schedule needs >= 2 checkpoints, got {n_checkpoints}")
    u = np.linspace(0.0, 1.0, n_checkpoints)
    if kind == "even":
        return u
    if kind == "dense-middle":
        if not 0 <= squeeze < 1:
            raise BabelError(f"squeeze must be in [0, 1), got {squeeze}")
        return u - squeeze * np.sin(2 * np.pi * u) / (2 * np.pi)
    raise BabelError(f"schedule must be one of {', '.join(SCHEDULES)}, got {kind!r}")


def read_schedule(path: str | Path) -> np.ndarray:
    """Checkpoint positions (tokens or steps; one number a line, or a JSON list) as
    fractions of the last one."""
    p = Path(path)
    if not p.is_file():
        raise BabelError(f"schedule file not found: {p}")
    text = p.read_text().strip()
    try:
        values = json.loads(text) if text.startswith("[") else [float(v) for v in text.split()]
        xs = np.asarray(values, dtype=float)
    except (ValueError, TypeError, json.JSONDecodeError):
        raise BabelError(f"schedule file {p}: expected numbers (one a line) or a JSON list") from None
    if xs.ndim != 1 or xs.size < 2 or not np.all(np.isfinite(xs)) or np.any(np.diff(xs) <= 0) \
            or xs[-1] <= 0:
        raise BabelError(f"schedule file {p}: needs >= 2 finite, strictly increasing positions")
    return (xs - xs[0]) / (xs[-1] - xs[0])


@dataclass(frozen=True)
class Effect:
    peak_at: float = 0.2          # fraction of CPT where the curve peaks
    drop: float = 0.3             # see module doc
    base: float = 0.4             # peak level
    start: float | None = None    # level at the start of CPT (default base / 2)
    transition: float = 0.2       # fraction of CPT the decline takes

    def curves(self, x: np.ndarray, noise_kind: str) -> dict[str, np.ndarray]:
        if not 0 < self.peak_at < 1 or self.transition <= 0 or not 0 < self.drop <= 1:
            raise BabelError("the effect needs 0 < peak_at < 1, transition > 0 and "
                             f"0 < drop <= 1 (got {self.peak_at}, {self.transition}, {self.drop})")
        start = self.base / 2 if self.start is None else self.start
        low = self.base * (1 - self.drop) if noise_kind == BINOMIAL \
            else self.base - self.drop * (self.base - start)
        rise = start + (self.base - start) * np.minimum(x / self.peak_at, 1.0)
        fall = np.clip((x - self.peak_at) / self.transition, 0.0, 1.0)
        effect = np.where(x <= self.peak_at, rise, self.base - (self.base - low) * fall)
        curves = {"effect": effect, "monotone": rise, "flat": np.full_like(x, self.base)}
        if noise_kind == BINOMIAL and any(np.any((c < 0) | (c > 1)) for c in curves.values()):
            raise BabelError("accuracies of the effect must lie in [0, 1] (check --base/--start)")
        return curves


@dataclass
class Rate:
    hits: int
    sims: int

    @property
    def rate(self) -> float:
        return self.hits / self.sims

    @property
    def interval(self) -> tuple[float, float]:
        ci = binomtest(self.hits, self.sims).proportion_ci(0.95, method="exact")
        return float(ci.low), float(ci.high)

    def to_dict(self) -> dict:
        return {"hits": self.hits, "sims": self.sims, "rate": self.rate,
                "ci95": list(self.interval)}


@dataclass
class PowerResult:
    x: np.ndarray                 # checkpoint positions (fractions of CPT)
    noise: str
    scale: float                  # binomial trials or standard error
    effect: Effect
    detection: Rate               # effect curves called rise_then_drop
    false_positive_monotone: Rate
    false_positive_flat: Rate
    peak_within: Rate             # detections whose peak is within tolerance of peak_at
    tolerance: float
    options: StageOptions

    def meets(self, power: float = 0.9, max_fp: float = 0.05) -> bool:
        """Point estimates meet the target (detection >= power, both false positives <= max_fp)."""
        return (self.detection.rate >= power and self.false_positive_monotone.rate <= max_fp
                and self.false_positive_flat.rate <= max_fp)

    def to_dict(self) -> dict:
        return {"n_checkpoints": len(self.x), "x": self.x.tolist(), "noise": self.noise,
                "scale": self.scale, "effect": dataclasses.asdict(self.effect),
                "detection": self.detection.to_dict(),
                "false_positive_monotone": self.false_positive_monotone.to_dict(),
                "false_positive_flat": self.false_positive_flat.to_dict(),
                "peak_within_tolerance": self.peak_within.to_dict(), "tolerance": self.tolerance,
                "options": dataclasses.asdict(self.options)}


def stage_power(x: Sequence[float], noise: Noise, effect: Effect = Effect(), sims: int = 500,
                options: StageOptions = StageOptions(n_bootstrap=99), seed: int = 0
                ) -> PowerResult:
    """Detection and false-positive rates of the stage test (module doc).

    A detection is "located" when the last checkpoint before the drop lies inside the
    true decline, [peak_at, peak_at + transition], give or take one checkpoint gap.
    """
    xs = np.asarray(x, dtype=float)
    if sims < 1:
        raise BabelError(f"sims must be >= 1, got {sims}")
    scale = float(np.mean(noise.scale(len(xs), "the power simulation")))
    rng = np.random.default_rng(seed)
    out = {}
    for name, mean in effect.curves(xs, noise.kind).items():
        draws = _draw(noise, mean, sims, rng)
        opts = dataclasses.replace(options, seed=int(rng.integers(2 ** 31)))
        out[name] = call_curves(xs, draws, noise, options=opts, name=f"simulated {name} curve")
    hit = out["effect"].call == "rise_then_drop"
    tol = float(np.max(np.diff(xs)))
    at = xs[out["effect"].split]
    located = (at >= effect.peak_at - tol) & (at <= effect.peak_at + effect.transition + tol)
    return PowerResult(xs, noise.kind, scale, effect, Rate(int(hit.sum()), sims),
                       Rate(int((out["monotone"].call == "rise_then_drop").sum()), sims),
                       Rate(int((out["flat"].call == "rise_then_drop").sum()), sims),
                       Rate(int((hit & located).sum()), max(1, int(hit.sum()))), tol, options)


def _draw(noise: Noise, mean: np.ndarray, sims: int, rng: np.random.Generator) -> np.ndarray:
    scale = noise.scale(len(mean), "the power simulation")
    if noise.kind == BINOMIAL:
        n = scale.astype(np.int64)
        return rng.binomial(n, np.tile(mean, (sims, 1))) / n
    return mean + scale * rng.standard_normal((sims, len(mean)))


def find_design(effect: Effect, checkpoints: Sequence[int], sizes: Sequence[float],
                kind: str = "even", noise_kind: str = BINOMIAL, sims: int = 200,
                options: StageOptions = StageOptions(n_bootstrap=99), seed: int = 0,
                power: float = 0.9, max_fp: float = 0.05) -> list[PowerResult]:
    """``stage_power`` over a grid of checkpoint counts and eval sizes (binomial trials,
    or standard errors for gaussian), cheapest first (fewest checkpoints x trials, or
    checkpoints / se^2); stops at the first design that meets the target."""
    def cost(n_ck, size):
        return n_ck * size if noise_kind == BINOMIAL else n_ck / size ** 2

    grid = sorted(((int(c), float(s)) for c in checkpoints for s in sizes), key=lambda t: cost(*t))
    results = []
    for n_ck, size in grid:
        noise = BinomialNoise(int(size)) if noise_kind == BINOMIAL else GaussianNoise(size)
        r = stage_power(schedule(kind, n_ck), noise, effect, sims, options, seed)
        results.append(r)
        if r.meets(power, max_fp):
            break
    return results


def describe(r: PowerResult) -> str:
    """One line: design, detection and false-positive rates with their intervals."""
    def fmt(rate: Rate) -> str:
        lo, hi = rate.interval
        return f"{rate.rate:.3f} [{lo:.3f}, {hi:.3f}]"

    size = f"n={int(r.scale)}" if r.noise == BINOMIAL else f"se={r.scale:g}"
    return (f"{len(r.x)} checkpoints, {size}: detection {fmt(r.detection)}, false positives "
            f"monotone {fmt(r.false_positive_monotone)}, flat {fmt(r.false_positive_flat)} "
            f"({r.detection.sims} sims each; drop located in the true decline in "
            f"{r.peak_within.rate:.2f} of detections)")

