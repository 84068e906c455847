"""The paper's two equations and the curves they read: Eq. 1 (system share from loss),
Eq. 2 (share in a mixed corpus), a CPT run's per-checkpoint curve with its own uncertainty
(``CPTCurve``), the converged loss beta (``estimate_beta``) and reading curves from a
metrics file (``read_cpt_runs``). Algorithm 1 (``mixture.optimize``) and the Eq. 1
calibration (``mixture.calibration``) build on them."""

from __future__ import annotations

import csv
import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Sequence

import numpy as np
from scipy.optimize import curve_fit

from babeltower.analysis.stages import BinomialNoise, GaussianNoise
from babeltower.analysis.statistics import normal_interval
from babeltower.errors import BabelError
from babeltower.io import read_text_file
from babeltower.languages import canonical

BETA_METHODS = ("fit_exp", "tail", "last_k", "min")
P_ONE = 1 - 1e-6


def system_proportion(loss: float, alpha: float, beta: float) -> float:
    """Eq. 1: P = (alpha - loss) / (alpha - beta), clipped to [0, 1]."""
    if not alpha > beta:
        raise BabelError(f"Eq. 1 needs the start loss alpha ({alpha:.4g}) above the converged "
                         f"loss beta ({beta:.4g}); did the loss fall during CPT?")
    return float(min(1.0, max(0.0, (alpha - loss) / (alpha - beta))))


def mixed_corpus_share(eta_t: float, eta_p: float) -> float:
    """Eq. 2: stabilised own-system share of t in a mixed corpus, eta_t / (eta_t + eta_p).

    Compare it with the measured working-language share of a from-scratch run on that
    mixture (the paper never did)."""
    if eta_t < 0 or eta_p < 0 or eta_t + eta_p == 0:
        raise BabelError(f"Eq. 2 needs non-negative token counts, not both 0 (got {eta_t}, {eta_p})")
    return float(eta_t / (eta_t + eta_p))


@dataclass
class CPTCurve:
    """Per-checkpoint metrics of one continual-pre-training run on a new language.

    ``tokens``: new-language tokens seen at each checkpoint (first = CPT start);
    ``loss``: validation loss of the new language; ``performance``: higher is better
    (e.g. cloze accuracy, pass@1, or -loss when nothing else is measured). The
    evaluation's uncertainty, for the stage test: ``trials`` (binomial n per checkpoint,
    or one number) when performance is an accuracy, ``performance_se`` when it is a value
    with a standard error; ``loss_se`` is the loss's (used when performance is -loss).
    """

    tokens: Sequence[float]
    loss: Sequence[float]
    performance: Sequence[float] | None = None
    steps: Sequence[int] | None = None
    trials: Sequence[float] | float | None = None
    performance_se: Sequence[float] | float | None = None
    loss_se: Sequence[float] | float | None = None

    def __post_init__(self):
        t = np.asarray(self.tokens, dtype=float)
        lo = np.asarray(self.loss, dtype=float)
        perf = -lo if self.performance is None else np.asarray(self.performance, dtype=float)
        if not (t.ndim == lo.ndim == perf.ndim == 1 and len(t) == len(lo) == len(perf)):
            raise BabelError(f"a CPT curve needs tokens, loss and performance of equal length "
                             f"(got {len(t)}, {len(lo)}, {len(perf)})")
        if len(t) < 2:
            raise BabelError("a CPT curve needs at least 2 checkpoints")
        if not (np.all(np.isfinite(t)) and np.all(np.isfinite(lo)) and np.all(np.isfinite(perf))):
            raise BabelError("a CPT curve has non-finite tokens, loss or performance")
        if self.performance is None and self.performance_se is None and self.loss_se is not None:
            self.performance_se = self.loss_se
        order = np.argsort(t, kind="stable")
        self.tokens, self.loss, self.performance = t[order], lo[order], perf[order]
        if self.steps is not None:
            self.steps = np.asarray(self.steps)[order]
        for name in ("trials", "performance_se", "loss_se"):
            v = getattr(self, name)
            if v is not None and np.ndim(v) == 1:
                if len(v) != len(t):
                    raise BabelError(f"a CPT curve has {len(v)} {name} values for {len(t)} "
                                     "checkpoints")
                setattr(self, name, np.asarray(v, dtype=float)[order])

    def performance_noise(self) -> BinomialNoise | GaussianNoise | None:
        """The stage test's noise model, or None when no uncertainty was measured."""
        if self.trials is not None:
            return BinomialNoise(self.trials)
        if self.performance_se is not None:
            return GaussianNoise(self.performance_se)
        return None

    def alpha(self) -> float:
        """Loss at the start of CPT (the first checkpoint)."""
        return float(self.loss[0])


@dataclass
class BetaEstimate:
    value: float
    se: float            # standard error (nan when the method gives none)
    method: str
    detail: dict = field(default_factory=dict)

    @property
    def interval(self) -> tuple[float, float]:
        return normal_interval(self.value, self.se)


def _saturating(u, a, b, c):
    return a + b * np.exp(-c * u)


def estimate_beta(curve: CPTCurve, method: str = "fit_exp", k: int = 3,
                  tail_from: float | None = None) -> BetaEstimate:
    """The converged loss beta of Eq. 1 (methods: module doc)."""
    loss, tokens = np.asarray(curve.loss), np.asarray(curve.tokens)
    if method == "fit_exp":
        if len(loss) < 4:
            raise BabelError(f"beta=fit_exp needs >= 4 checkpoints, got {len(loss)}")
        u = (tokens - tokens[0]) / (tokens[-1] - tokens[0])
        sigma = None if curve.loss_se is None else np.broadcast_to(curve.loss_se, loss.shape)
        p0 = (float(loss.min()), float(max(loss[0] - loss.min(), 1e-6)), 3.0)
        try:
            popt, pcov = curve_fit(_saturating, u, loss, p0=p0, sigma=sigma,
                                   absolute_sigma=sigma is not None,
                                   bounds=([-np.inf, 0.0, 1e-3], [np.inf, np.inf, 1e3]))
        except (RuntimeError, ValueError) as e:
            raise BabelError(f"beta=fit_exp: the saturating fit failed ({e})") from None
        se = float(np.sqrt(pcov[0, 0])) if np.isfinite(pcov[0, 0]) else math.inf
        return BetaEstimate(float(popt[0]), se, method,
                            {"a": float(popt[0]), "b": float(popt[1]), "c_per_cpt": float(popt[2])})
    if method == "tail":
        if tail_from is None:
            raise BabelError("beta=tail needs beta_tail_from (tokens where the constant-LR "
                             "tail starts)")
        tail = loss[tokens >= tail_from]
        if len(tail) < 2:
            raise BabelError(f"beta=tail: {len(tail)} checkpoints from {tail_from:g} tokens on; "
                             "need >= 2")
        return BetaEstimate(float(tail.mean()), float(tail.std(ddof=1) / math.sqrt(len(tail))),
                            method, {"tail_from": tail_from, "n": len(tail)})
    if method == "last_k":
        return BetaEstimate(float(np.mean(loss[-max(1, min(k, len(loss))):])), math.nan, method,
                            {"k": k})
    if method == "min":
        return BetaEstimate(float(np.min(loss)), math.nan, method)
    raise BabelError(f"beta method must be one of {', '.join(BETA_METHODS)}, got {method!r}")


UNCERTAINTY = ("trials", "performance_se", "loss_se")   # CPTCurve's field order


METRICS_FORMAT = """\
CSV with a header: language, tokens, loss [, performance] [, step] [, trials]
[, performance_se] [, loss_se] - one row per checkpoint of each language's CPT run
(performance defaults to -loss; trials = binomial n of an accuracy, performance_se /
loss_se = standard errors: the stage test needs one of them). Or JSON:
{"runs": {"php": {"tokens": [...], "loss": [...], "performance": [...], "steps": [...],
"trials": [...] or n, "performance_se": [...], "loss_se": [...]}}}
(the top-level "runs" key may be omitted).
"""


def read_cpt_runs(path: str | Path) -> dict[str, CPTCurve]:
    """Per-language CPT curves from a metrics CSV or JSON (format: ``METRICS_FORMAT``)."""
    p = Path(path)
    read_text_file(p, "metrics file")  # missing, a directory, binary or non-UTF-8: one line
    rows: dict[str, dict[str, list]] = {}
    if p.suffix.lower() == ".json":
        try:
            data = json.loads(p.read_text())
        except json.JSONDecodeError as e:
            raise BabelError(f"metrics file {p} is not valid JSON: {e.msg} (line {e.lineno})") from None
        data = data.get("runs", data) if isinstance(data, dict) else None
        if not isinstance(data, dict) or not data:
            raise BabelError(f"metrics file {p}: expected {{'runs': {{language: {{tokens, loss, ...}}}}}}")
        out = {}
        for lang, d in data.items():
            if not isinstance(d, dict) or "tokens" not in d or "loss" not in d:
                raise BabelError(f"metrics file {p}: run {lang!r} needs 'tokens' and 'loss' lists")
            out[canonical(lang)] = CPTCurve(d["tokens"], d["loss"], d.get("performance"),
                                            d.get("steps"), *(d.get(k) for k in UNCERTAINTY))
        return out
    with open(p, newline="") as f:
        reader = csv.DictReader(f)
        cols = set(reader.fieldnames or [])
        missing = {"language", "tokens", "loss"} - cols
        if missing:
            raise BabelError(f"metrics file {p} lacks column(s) {', '.join(sorted(missing))} "
                             f"(has: {', '.join(sorted(cols)) or 'nothing'})")
        for n, r in enumerate(reader, start=2):
            lang = canonical(r["language"])
            d = rows.setdefault(lang, {"tokens": [], "loss": [], "performance": [], "steps": [],
                                       **{k: [] for k in UNCERTAINTY}})
            try:
                d["tokens"].append(float(r["tokens"]))
                d["loss"].append(float(r["loss"]))
                if r.get("performance") not in (None, ""):
                    d["performance"].append(float(r["performance"]))
                if r.get("step") not in (None, ""):
                    d["steps"].append(int(float(r["step"])))
                for k in UNCERTAINTY:
                    if r.get(k) not in (None, ""):
                        d[k].append(float(r[k]))
            except ValueError:
                raise BabelError(f"metrics file {p} line {n}: not a number in {dict(r)}") from None
    if not rows:
        raise BabelError(f"metrics file {p} has no rows")
    out = {}
    for lang, d in rows.items():
        perf = d["performance"] or None
        if perf is not None and len(perf) != len(d["tokens"]):
            raise BabelError(f"metrics file {p}: {lang} has performance on only some rows")
        steps = d["steps"] if len(d["steps"]) == len(d["tokens"]) else None
        for k in UNCERTAINTY:
            if d[k] and len(d[k]) != len(d["tokens"]):
                raise BabelError(f"metrics file {p}: {lang} has {k} on only some rows")
        out[lang] = CPTCurve(d["tokens"], d["loss"], perf, steps,
                             *(d[k] or None for k in UNCERTAINTY))
    return out
