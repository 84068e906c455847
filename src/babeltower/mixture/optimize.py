"""Algorithm 1 of the Babel Tower paper: down-sample a new language to its best stage.

The paper's two assumptions (see docs/mixtures.md):

* Eq. 1 - during continual pre-training (CPT) on language t, the loss tracks the share
  of t's own "system" linearly: P(loss) = (alpha - loss) / (alpha - beta), alpha = loss at
  the start of CPT, beta = converged loss. **[ours]** clipped to [0, 1].
* Eq. 2 - in a mixed corpus the stabilised own-system share of t is about its token
  share against the primary language: P = eta_t / (eta_t + eta_p).

Procedure per new language t: take the best-performing CPT checkpoint c*, compute
P* = P(loss(c*)), solve eta_t = eta_p * P* / (1 - P*), and down-sample t to eta_t
(never above what is available).

**[ours] guard rails** (``Algorithm1Options``):

* the stage test (``babeltower.analysis.stages``, with the evaluation's own noise) must
  call ``rise_then_drop`` with p <= ``p_threshold``; ``monotone``/``flat``/
  ``undetermined``, a weaker call, or a curve without per-checkpoint uncertainty keep
  all data, and the decision says which;
* c* is the best raw checkpoint INSIDE the detected translation stage, not the global
  argmax (a rise-dip-recover curve's recovery is not the translation peak);
* no language falls below ``floor_fraction`` of its available tokens (nor
  ``min_tokens``); the decision says when the floor bound;
* beta is the asymptote of a fitted saturating curve loss(t) = a + b exp(-c t)
  (``beta="fit_exp"``, scipy's curve_fit) with its standard error from the fit's
  covariance, or the mean of a constant-learning-rate tail (``beta="tail"``, checkpoints
  from ``beta_tail_from`` tokens on); ``last_k`` and ``min`` remain for comparison (the
  mean of the last checkpoints of a cosine-decayed run is flattened by the learning
  rate, not converged, and biases P* up). beta's 95% interval is carried to P* and
  eta_t (both monotone in beta).
"""

from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np

from babeltower.analysis.stages import StageOptions, StageResult, detect_stages
from babeltower.errors import BabelError
from babeltower.languages import canonical
from babeltower.mixture.curves import (BETA_METHODS, P_ONE, BetaEstimate, CPTCurve, estimate_beta,
                                       system_proportion)
from babeltower.mixture.spec import MixtureSpec

KEEP_ALL_CALLS = ("monotone", "flat", "undetermined")


@dataclass
class LanguageDecision:
    language: str
    available: int
    target_tokens: int
    reason: str
    alpha: float | None = None
    beta: float | None = None
    beta_se: float | None = None
    beta_method: str | None = None
    best_index: int | None = None          # c*, inside the translation stage
    best_tokens: float | None = None
    best_step: int | None = None
    best_performance: float | None = None
    best_loss: float | None = None
    p_star: float | None = None
    p_star_interval: list[float] | None = None     # from beta's 95% interval
    eta_p: int | None = None
    eta_t_unclipped: float | None = None
    target_interval: list[int] | None = None       # eta_t over P*'s interval, clipped
    floor_tokens: int = 0
    floor_bound: bool = False
    stage_call: str | None = None
    stage_p_value: float | None = None
    stage_boundaries: list[float] = field(default_factory=list)
    # sensitivity [ours]: eta_t if the best checkpoint were one of its neighbours
    # (c*-1, c*+1): how much the target hangs on one evaluation
    target_range: list[int] | None = None

    @property
    def stage_kind(self) -> str | None:
        return self.stage_call


@dataclass(frozen=True)
class Algorithm1Options:
    beta: str = "fit_exp"                  # fit_exp | tail | last_k | min (module doc)
    beta_k: int = 3                        # last_k
    beta_tail_from: float | None = None    # tail: tokens where the constant-LR tail starts
    p_threshold: float = 0.05              # a stage call with a larger p-value keeps all
    floor_fraction: float = 0.05           # no language below this share of its tokens
    min_tokens: int = 0                    # ... nor below this many tokens
    keep_all_calls: tuple[str, ...] = KEEP_ALL_CALLS
    stage: StageOptions = StageOptions()

    def __post_init__(self):
        if self.beta not in BETA_METHODS:
            raise BabelError(f"beta must be one of {', '.join(BETA_METHODS)}, got {self.beta!r}")
        if not 0 <= self.floor_fraction <= 1:
            raise BabelError(f"floor_fraction must be in [0, 1], got {self.floor_fraction}")
        if not 0 < self.p_threshold <= 1:
            raise BabelError(f"p_threshold must be in (0, 1], got {self.p_threshold}")


@dataclass
class Algorithm1Result:
    primary: str
    primary_tokens: int
    decisions: dict[str, LanguageDecision]
    params: dict[str, Any]
    stages: dict[str, StageResult] = field(default_factory=dict, repr=False)

    @property
    def budgets(self) -> dict[str, int]:
        return {k: d.target_tokens for k, d in self.decisions.items()}

    def to_dict(self) -> dict:
        return {"primary": self.primary, "primary_tokens": self.primary_tokens,
                "params": self.params, "budgets": self.budgets,
                "languages": {k: _decision_dict(d) for k, d in self.decisions.items()},
                "stages": {k: s.to_dict() for k, s in self.stages.items()}}

    def to_dataframe(self):
        import pandas as pd

        return pd.DataFrame([asdict(d) for d in self.decisions.values()]).set_index("language")

    def to_mixture(self, name: str = "optimized") -> MixtureSpec:
        budgets = {k: v for k, v in self.budgets.items() if v > 0}
        meta = {"generator": "algorithm1", "primary": self.primary,
                "primary_tokens": self.primary_tokens, "params": self.params,
                "languages": {k: _decision_dict(d) for k, d in self.decisions.items()}}
        return MixtureSpec(name=name, budgets=budgets, allow_repeat=False,
                           meta=json.loads(json.dumps(meta, default=float)))


def _decision_dict(d: LanguageDecision) -> dict:
    # stage_kind: the name the report read before the stage test had calls
    return {**asdict(d), "stage_kind": d.stage_call}


def algorithm1(cpt_runs: dict[str, CPTCurve], available: dict[str, int], primary: str,
               primary_tokens: int | None = None,
               options: Algorithm1Options = Algorithm1Options(),
               stages: dict[str, StageResult] | None = None) -> Algorithm1Result:
    """Target tokens per language from CPT curves (paper's Algorithm 1 with guard rails;
    every number in the result).

    ``available``: tokens per language in the corpus (e.g. ``available_tokens(shards)``).
    ``primary_tokens`` (eta_p) defaults to all of the primary language. ``stages`` may
    pass precomputed stage results; otherwise the stage test runs on each curve with its
    own noise (``CPTCurve.performance_noise``). Languages in ``available`` without a CPT
    run keep all their data.
    """
    avail = {canonical(k): int(v) for k, v in available.items()}
    primary = canonical(primary)
    eta_p = _eta_p(avail, primary, primary_tokens)
    runs = {canonical(k): v for k, v in cpt_runs.items()}
    for lang in runs:
        if lang not in avail:
            raise BabelError(f"CPT run for {lang} but no {lang} in the available data")
        if lang == primary:
            raise BabelError(f"{primary} is the primary language; it has no CPT run of its own")
    stages = {canonical(k): v for k, v in (stages or {}).items()}
    decisions: dict[str, LanguageDecision] = {
        primary: LanguageDecision(primary, avail[primary], eta_p, "primary language")}
    for lang in sorted(avail):
        if lang == primary:
            continue
        if lang not in runs:
            decisions[lang] = LanguageDecision(lang, avail[lang], avail[lang],
                                               "no CPT run: keeps all data")
            continue
        curve = runs[lang] if isinstance(runs[lang], CPTCurve) else CPTCurve(**runs[lang])
        st = stages.get(lang) or _stage(curve, lang, options.stage)
        if st is not None:
            stages[lang] = st
        decisions[lang] = _decide(lang, curve, st, avail[lang], eta_p, options)
    params = {**asdict(options), "keep_all_calls": list(options.keep_all_calls)}
    return Algorithm1Result(primary, eta_p, decisions, params, stages)


def _eta_p(avail: dict[str, int], primary: str, primary_tokens: int | None) -> int:
    if primary not in avail:
        raise BabelError(f"primary language {primary} is not among the available languages "
                         f"({', '.join(sorted(avail))})")
    eta_p = avail[primary] if primary_tokens is None else int(primary_tokens)
    if eta_p <= 0:
        raise BabelError(f"primary_tokens must be > 0, got {eta_p}")
    if eta_p > avail[primary]:
        raise BabelError(f"primary_tokens {eta_p} exceeds the {avail[primary]} available "
                         f"{primary} tokens")
    return eta_p


def _stage(curve: CPTCurve, lang: str, options: StageOptions) -> StageResult | None:
    noise = curve.performance_noise()
    if noise is None:
        return None
    return detect_stages(curve.tokens, curve.performance, noise, options=options,
                         name=f"{lang} performance")


def _decide(lang: str, curve: CPTCurve, st: StageResult | None, available: int, eta_p: int,
            o: Algorithm1Options) -> LanguageDecision:
    """One new language's decision: the guards first, then Eq. 1 and Eq. 2."""
    floor = min(available, max(int(o.min_tokens), math.ceil(o.floor_fraction * available)))
    d = LanguageDecision(lang, available, available, "", alpha=curve.alpha(), eta_p=eta_p,
                         floor_tokens=floor)
    if st is None:
        d.reason = ("no per-checkpoint uncertainty for the performance curve: the stage test "
                    "did not run; keeps all data")
        return d
    d.stage_call, d.stage_p_value, d.stage_boundaries = st.call, st.p_value, st.boundaries
    if st.call in o.keep_all_calls:
        d.reason = f"stage test says {st.call} ({st.reason}): keeps all data"
        return d
    if st.call != "rise_then_drop" or st.peak_index is None:
        d.reason = f"stage call {st.call} has no translation stage: keeps all data"
        return d
    if st.p_value > o.p_threshold:
        d.reason = (f"stage call {st.call} with p = {st.p_value:.3g} > p_threshold "
                    f"{o.p_threshold:g}: not trusted, keeps all data")
        return d
    try:
        b = estimate_beta(curve, o.beta, o.beta_k, o.beta_tail_from)
    except BabelError as e:
        d.reason = f"{e}: keeps all data"
        return d
    d.beta, d.beta_method = b.value, b.method
    d.beta_se = b.se if math.isfinite(b.se) else None     # JSON-safe: None, not nan
    i = int(np.argmax(curve.performance[:st.peak_index + 1]))   # c* inside translation
    d.best_index, d.best_tokens = i, float(curve.tokens[i])
    d.best_step = None if curve.steps is None else int(curve.steps[i])
    d.best_performance, d.best_loss = float(curve.performance[i]), float(curve.loss[i])
    if not d.alpha > b.value:
        d.reason = (f"loss did not fall during CPT (alpha {d.alpha:.4g} <= beta {b.value:.4g}): "
                    "Eq. 1 is undefined, keeps all data")
        return d
    d.p_star = system_proportion(d.best_loss, d.alpha, b.value)
    d.target_range = _target_range(curve, i, d.alpha, b.value, eta_p, available, floor)
    d.p_star_interval, d.target_interval = _intervals(d, b, eta_p, available, floor)
    _target(d, eta_p, available, floor)
    return d


def _p_at(loss: float, alpha: float, beta: float) -> float:
    return 1.0 if beta >= alpha else system_proportion(loss, alpha, beta)


def _intervals(d: LanguageDecision, b: BetaEstimate, eta_p: int, available: int, floor: int
               ) -> tuple[list[float] | None, list[int] | None]:
    """P* and eta_t at beta's 95% interval ends (P* rises with beta, eta_t with P*)."""
    if not math.isfinite(b.se):
        return None, None
    lo, hi = b.interval
    p = [_p_at(d.best_loss, d.alpha, lo), _p_at(d.best_loss, d.alpha, hi)]
    return p, [_eta_t(v, eta_p, available, floor) for v in p]


def _target(d: LanguageDecision, eta_p: int, available: int, floor: int) -> None:
    if d.p_star >= P_ONE:
        d.eta_t_unclipped = math.inf
        d.reason = "P* = 1 (best checkpoint at the converged loss): keeps all data"
        return
    d.eta_t_unclipped = eta_p * d.p_star / (1 - d.p_star)
    target = int(round(d.eta_t_unclipped))
    if target >= available:
        d.reason = (f"eta_t = eta_p P*/(1-P*) = {d.eta_t_unclipped:.4g} >= available: "
                    "keeps all data (never up-sampled)")
        return
    d.reason = (f"down-sampled to eta_t = eta_p P*/(1-P*) = {eta_p} x {d.p_star:.4f}"
                f"/{1 - d.p_star:.4f}")
    if target < floor:
        d.floor_bound = True
        d.reason += f"; the floor bound: {target} raised to {floor} tokens"
        target = floor
    d.target_tokens = target


def _eta_t(p: float, eta_p: int, available: int, floor: int) -> int:
    if p >= P_ONE:
        return available
    return min(available, max(int(floor), int(round(eta_p * p / (1 - p)))))


def _target_range(curve: CPTCurve, i: int, alpha: float, beta: float, eta_p: int,
                  available: int, floor: int) -> list[int]:
    """[min, max] target over the best checkpoint and its neighbours."""
    idx = [j for j in (i - 1, i, i + 1) if 0 <= j < len(curve.loss)]
    t = [_eta_t(system_proportion(curve.loss[j], alpha, beta), eta_p, available, floor)
         for j in idx]
    return [min(t), max(t)]


# ---- the reviewers' missing check: Eq. 1 against the measured share ----------------------


# ---- reading per-checkpoint metrics ------------------------------------------------------


