"""Algorithm 1 of the Babel Tower paper: down-sample a new language to its best stage.

The paper's two assumptions (see docs/mixtures.md):

* Eq. 1 - during continual pre-training (CPT) on language t, the loss tracks the share
  of t's own "system" linearly: P(loss) = (alpha - loss) / (alpha - beta), alpha = loss at
  the start of CPT, beta = converged loss. **[ours]** clipped to [0, 1].
* Eq. 2 - in a mixed corpus the stabilised own-system share of t is about its token
  share against the primary language: P = eta_t / (eta_t + eta_p).

Procedure per new language t: take the best-performing CPT checkpoint c*, compute
P* = P(loss(c*)), solve eta_t = eta_p * P* / (1 - P*), and down-sample t to eta_t
(never above what is available). A language whose performance only rises (stage
detection says "monotone"/"flat": no translation-stage peak) keeps all its data, and so
does one with P* -> 1.

**[ours]** beta: ``beta="last_k"`` (default) is the mean loss of the last ``k``
checkpoints; ``beta="min"`` the lowest loss seen. The best checkpoint is the argmax of
the raw performance (``best="raw"``, the paper) or of its smoothed curve
(``best="smoothed"``, robust to one lucky evaluation).
"""

from __future__ import annotations

import csv
import json
import math
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from babeltower.errors import BabelError
from babeltower.io import read_text_file
from babeltower.languages import canonical
from babeltower.mixture.spec import MixtureSpec
from babeltower.report.stages import StageResult, detect_stages

KEEP_ALL_KINDS = ("monotone", "flat")
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
    (e.g. cloze accuracy, pass@1, or -loss when nothing else is measured).
    """

    tokens: Sequence[float]
    loss: Sequence[float]
    performance: Sequence[float] | None = None
    steps: Sequence[int] | None = None

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
        order = np.argsort(t, kind="stable")
        self.tokens, self.loss, self.performance = t[order], lo[order], perf[order]
        if self.steps is not None:
            self.steps = np.asarray(self.steps)[order]

    def alpha(self) -> float:
        """Loss at the start of CPT (the first checkpoint)."""
        return float(self.loss[0])

    def beta(self, method: str = "last_k", k: int = 3) -> float:
        if method == "last_k":
            return float(np.mean(self.loss[-max(1, min(k, len(self.loss))):]))
        if method == "min":
            return float(np.min(self.loss))
        raise BabelError(f"beta method must be last_k or min, got {method!r}")


@dataclass
class LanguageDecision:
    language: str
    available: int
    target_tokens: int
    reason: str
    alpha: float | None = None
    beta: float | None = None
    best_index: int | None = None
    best_tokens: float | None = None
    best_step: int | None = None
    best_performance: float | None = None
    best_loss: float | None = None
    p_star: float | None = None
    eta_p: int | None = None
    eta_t_unclipped: float | None = None
    stage_kind: str | None = None
    stage_confidence: float | None = None
    stage_boundaries: list[float] = field(default_factory=list)
    # sensitivity [ours]: eta_t if the best checkpoint were one of its neighbours
    # (c*-1, c*+1): how much the target hangs on one evaluation
    target_range: list[int] | None = None


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
                "languages": {k: asdict(d) for k, d in self.decisions.items()},
                "stages": {k: s.to_dict() for k, s in self.stages.items()}}

    def to_dataframe(self):
        import pandas as pd

        return pd.DataFrame([asdict(d) for d in self.decisions.values()]).set_index("language")

    def to_mixture(self, name: str = "optimized") -> MixtureSpec:
        budgets = {k: v for k, v in self.budgets.items() if v > 0}
        meta = {"generator": "algorithm1", "primary": self.primary,
                "primary_tokens": self.primary_tokens, "params": self.params,
                "languages": {k: {kk: vv for kk, vv in asdict(d).items()}
                              for k, d in self.decisions.items()}}
        return MixtureSpec(name=name, budgets=budgets, allow_repeat=False,
                           meta=json.loads(json.dumps(meta, default=float)))


def algorithm1(cpt_runs: dict[str, CPTCurve], available: dict[str, int], primary: str,
               primary_tokens: int | None = None, *, beta: str = "last_k", beta_k: int = 3,
               best: str = "raw", keep_all_kinds: Sequence[str] = KEEP_ALL_KINDS,
               stages: dict[str, StageResult] | None = None, min_tokens: int = 0,
               stage_kwargs: dict | None = None) -> Algorithm1Result:
    """Target tokens per language from CPT curves (paper's Algorithm 1; numbers in the result).

    ``available``: tokens per language in the corpus (e.g. ``available_tokens(shards)``).
    ``primary_tokens`` (eta_p) defaults to all of the primary language. ``stages`` may
    pass precomputed stage results; otherwise ``detect_stages(tokens, performance)`` runs
    per language. Languages in ``available`` without a CPT run keep all their data.
    """
    avail = {canonical(k): int(v) for k, v in available.items()}
    primary = canonical(primary)
    if primary not in avail:
        raise BabelError(f"primary language {primary} is not among the available languages "
                         f"({', '.join(sorted(avail))})")
    eta_p = avail[primary] if primary_tokens is None else int(primary_tokens)
    if eta_p <= 0:
        raise BabelError(f"primary_tokens must be > 0, got {eta_p}")
    if eta_p > avail[primary]:
        raise BabelError(f"primary_tokens {eta_p} exceeds the {avail[primary]} available "
                         f"{primary} tokens")
    if best not in ("raw", "smoothed"):
        raise BabelError(f"best must be raw or smoothed, got {best!r}")
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
        st = stages.get(lang) or detect_stages(curve.tokens, curve.performance,
                                               **(stage_kwargs or {}))
        stages[lang] = st
        a, b = curve.alpha(), curve.beta(beta, beta_k)
        perf = st.smoothed if best == "smoothed" and len(st.smoothed) == len(curve.tokens) \
            else curve.performance
        i = int(np.argmax(perf))
        d = LanguageDecision(
            lang, avail[lang], avail[lang], "", alpha=a, beta=b, best_index=i,
            best_tokens=float(curve.tokens[i]),
            best_step=None if curve.steps is None else int(curve.steps[i]),
            best_performance=float(curve.performance[i]), best_loss=float(curve.loss[i]),
            eta_p=eta_p, stage_kind=st.kind, stage_confidence=st.confidence,
            stage_boundaries=st.boundaries)
        if not a > b:
            d.reason = (f"loss did not fall during CPT (alpha {a:.4g} <= beta {b:.4g}): Eq. 1 "
                        "is undefined, keeps all data")
            decisions[lang] = d
            continue
        d.p_star = system_proportion(d.best_loss, a, b)
        d.target_range = _target_range(curve, i, a, b, eta_p, avail[lang], min_tokens)
        if st.kind in keep_all_kinds:
            d.reason = f"stage detection says {st.kind} (no translation-stage peak): keeps all data"
        elif d.p_star >= P_ONE:
            d.eta_t_unclipped = math.inf
            d.reason = "P* = 1 (best checkpoint at the converged loss): keeps all data"
        else:
            d.eta_t_unclipped = eta_p * d.p_star / (1 - d.p_star)
            target = max(int(min_tokens), int(round(d.eta_t_unclipped)))
            if target >= avail[lang]:
                d.reason = (f"eta_t = eta_p P*/(1-P*) = {d.eta_t_unclipped:.4g} >= available: "
                            "keeps all data (never up-sampled)")
            else:
                d.target_tokens = target
                d.reason = (f"down-sampled to eta_t = eta_p P*/(1-P*) = {eta_p} x {d.p_star:.4f}"
                            f"/{1 - d.p_star:.4f}")
        decisions[lang] = d
    params = dict(beta=beta, beta_k=beta_k, best=best, keep_all_kinds=list(keep_all_kinds),
                  min_tokens=min_tokens, stage_kwargs=stage_kwargs or {})
    return Algorithm1Result(primary, eta_p, decisions, params, stages)


def _eta_t(p: float, eta_p: int, available: int, min_tokens: int) -> int:
    if p >= P_ONE:
        return available
    return min(available, max(int(min_tokens), int(round(eta_p * p / (1 - p)))))


def _target_range(curve: CPTCurve, i: int, alpha: float, beta: float, eta_p: int,
                  available: int, min_tokens: int) -> list[int]:
    """[min, max] target over the best checkpoint and its neighbours."""
    idx = [j for j in (i - 1, i, i + 1) if 0 <= j < len(curve.loss)]
    t = [_eta_t(system_proportion(curve.loss[j], alpha, beta), eta_p, available, min_tokens)
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


def _corr(a: np.ndarray, b: np.ndarray) -> float | None:
    if len(a) < 2 or np.std(a) == 0 or np.std(b) == 0:
        return None
    return float(np.corrcoef(a, b)[0, 1])


def calibration_table(cpt_curve: CPTCurve, measured_share: Sequence[float] | dict,
                      beta: str = "last_k", beta_k: int = 3) -> CalibrationTable:
    """Loss-derived P (Eq. 1) next to the measured own-language share per checkpoint.

    ``measured_share``: one value per checkpoint (in the curve's token order), or a dict
    tokens -> share (checkpoints without a measurement are left out). The share is e.g.
    the logit-lens share of prompts/layers that resolve to the new language's token.
    Reports Pearson and Spearman correlation and the RMSE of P against the share.
    """
    import pandas as pd

    c = cpt_curve if isinstance(cpt_curve, CPTCurve) else CPTCurve(**cpt_curve)
    a, b = c.alpha(), c.beta(beta, beta_k)
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
    return CalibrationTable(rows, _corr(p, meas), _corr(rank(p), rank(meas)),
                            float(np.sqrt(np.mean((p - meas) ** 2))), a, b)


# ---- reading per-checkpoint metrics ------------------------------------------------------
METRICS_FORMAT = """\
CSV with a header: language, tokens, loss [, performance] [, step] - one row per
checkpoint of each language's CPT run (performance defaults to -loss). Or JSON:
{"runs": {"php": {"tokens": [...], "loss": [...], "performance": [...], "steps": [...]}}}
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
                                            d.get("steps"))
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
            d = rows.setdefault(lang, {"tokens": [], "loss": [], "performance": [], "steps": []})
            try:
                d["tokens"].append(float(r["tokens"]))
                d["loss"].append(float(r["loss"]))
                if r.get("performance") not in (None, ""):
                    d["performance"].append(float(r["performance"]))
                if r.get("step") not in (None, ""):
                    d["steps"].append(int(float(r["step"])))
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
        out[lang] = CPTCurve(d["tokens"], d["loss"], perf, steps)
    return out
