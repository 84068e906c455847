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

import csv
import json
import math
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Sequence

import numpy as np
from scipy.optimize import curve_fit

from babeltower.analysis.stages import (BinomialNoise, GaussianNoise, StageOptions, StageResult,
                                        detect_stages)
from babeltower.analysis.statistics import pearson
from babeltower.errors import BabelError
from babeltower.io import read_text_file
from babeltower.languages import canonical
from babeltower.mixture.spec import MixtureSpec

KEEP_ALL_CALLS = ("monotone", "flat", "undetermined")
BETA_METHODS = ("fit_exp", "tail", "last_k", "min")
P_ONE = 1 - 1e-6
Z95 = 1.959963984540054


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
        return self.value - Z95 * self.se, self.value + Z95 * self.se


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
@dataclass
class CalibrationTable:
    rows: Any                 # pandas DataFrame: tokens, loss, p_loss, measured_share
    pearson: float | None
    spearman: float | None
    rmse: float
    alpha: float
    beta: float

    def to_dict(self) -> dict:
        return {"pearson": self.pearson, "spearman": self.spearman, "rmse": self.rmse,
                "alpha": self.alpha, "beta": self.beta,
                "rows": self.rows.to_dict(orient="records")}


def calibration_table(cpt_curve: CPTCurve, measured_share: Sequence[float] | dict,
                      beta: str = "fit_exp", beta_k: int = 3,
                      beta_tail_from: float | None = None) -> CalibrationTable:
    """Loss-derived P (Eq. 1) next to the measured own-language share per checkpoint.

    ``measured_share``: one value per checkpoint (in the curve's token order), or a dict
    tokens -> share (checkpoints without a measurement are left out). The share is e.g.
    the logit-lens share of prompts/layers that resolve to the new language's token.
    Reports Pearson and Spearman correlation and the RMSE of P against the share.
    """
    import pandas as pd

    c = cpt_curve if isinstance(cpt_curve, CPTCurve) else CPTCurve(**cpt_curve)
    a, b = c.alpha(), estimate_beta(c, beta, beta_k, beta_tail_from).value
    if isinstance(measured_share, dict):
        share = {float(k): float(v) for k, v in measured_share.items()}
        keep = [i for i, t in enumerate(c.tokens) if float(t) in share]
        if not keep:
            raise BabelError("no checkpoint of the CPT curve has a measured share")
        meas = np.array([share[float(c.tokens[i])] for i in keep])
    else:
        meas = np.asarray(measured_share, dtype=float)
        if len(meas) != len(c.tokens):
            raise BabelError(f"measured_share has {len(meas)} values for {len(c.tokens)} "
                             "checkpoints")
        keep = list(range(len(c.tokens)))
    p = np.array([system_proportion(c.loss[i], a, b) for i in keep])
    rows = pd.DataFrame({"tokens": c.tokens[keep], "loss": c.loss[keep], "p_loss": p,
                         "measured_share": meas})
    rank = lambda v: pd.Series(v).rank().to_numpy()  # noqa: E731
    return CalibrationTable(rows, pearson(p, meas), pearson(rank(p), rank(meas)),
                            float(np.sqrt(np.mean((p - meas) ** 2))), a, b)


# ---- reading per-checkpoint metrics ------------------------------------------------------
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
