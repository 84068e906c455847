"""What the experiment computes from measured checkpoints: stages, Algorithm 1, the
calibration of Eq. 1, the mixtures to compare, and the final comparison with intervals.

Pure functions over plain dicts (the rows of ``measure.measure_series``) so each can be
re-run from ``results.json`` in a notebook.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np

from babeltower.experiment.config import ExperimentConfig


# ------------------------------------------------------------------- per-checkpoint curves
def curve(rows: list[dict], measure: str, language: str | None = None) -> tuple[list, list]:
    """(new-language tokens, values) of one measure over a run's checkpoints."""
    xs, ys = [], []
    for r in rows:
        v = r.get(measure)
        if isinstance(v, dict):
            v = v.get(language)
        if v is None or (isinstance(v, float) and not math.isfinite(v)):
            continue
        xs.append(float(r["tokens"]))
        ys.append(float(v))
    return xs, ys


def performance_curve(cfg: ExperimentConfig, rows: list[dict], lang: str) -> tuple[list, list, str]:
    """The per-checkpoint performance signal chosen in the config (higher is better).

    ``cloze`` falls back to negative bits-per-byte when the cloze curve carries no signal
    at this scale (stage detection calls it flat or undetermined: a tiny model rarely gets
    an identifier right, so the curve is a floor with single-prompt blips); the returned
    label says which signal was used.
    """
    from babeltower.analysis.stages import StageOptions, detect_stages

    if cfg.evaluation.performance == "cloze":
        x, y = curve(rows, "cloze_new", lang)
        if len(x) >= 2 and detect_stages(x, y, options=StageOptions(n_bootstrap=0)).kind not in ("flat", "undetermined"):
            return x, y, f"cloze accuracy ({lang} prompts, first-token)"
        x, y = curve(rows, "bpb", lang)
        return x, [-v for v in y], f"-bits per byte ({lang}, validation; cloze was flat)"
    x, y = curve(rows, "bpb", lang)
    return x, [-v for v in y], f"-bits per byte ({lang}, validation)"


def analyse_cpt(cfg: ExperimentConfig, cpt: dict[str, dict], corpus0: dict[str, int]) -> dict:
    """Stages per language, Algorithm 1 on the original corpus, and Eq. 1 calibration."""
    from babeltower.mixture.optimize import CPTCurve, algorithm1, calibration_table
    from babeltower.analysis.stages import detect_stages_multi

    stages, curves, perf_label, calibration = {}, {}, {}, {}
    for lang, run in cpt.items():
        rows = run["checkpoints"]
        x, perf, label = performance_curve(cfg, rows, lang)
        perf_label[lang] = label
        multi: dict[str, tuple] = {"performance": (x, perf, True)}
        for name, key, hib in (("working-language share (last layer)", "lens_new_share_last", True),
                               ("working-language share (mean over layers)", "lens_new_share_mean", True),
                               ("transferring-neuron ratio |T|/|S_new|", "transfer_ratio", False)):
            cx, cy = curve(rows, key, lang)
            if len(cx) >= 2 and len(set(cy)) > 1:
                multi[name] = (cx, cy, hib)
        res = detect_stages_multi(multi, performance="performance")
        stages[lang] = {**res.to_dict(), "performance_measure": label}
        lx, loss = curve(rows, "loss", lang)
        curves[lang] = CPTCurve(tokens=lx, loss=loss, performance=perf if len(perf) == len(lx) else None,
                                steps=[r["step"] for r in rows if r.get("loss", {}).get(lang) is not None])
        sx, share = curve(rows, "lens_new_share_mean", lang)
        if sx and len(sx) == len(lx):
            try:
                calibration[lang] = calibration_table(curves[lang], share).to_dict()
            except Exception as e:  # noqa: BLE001 - Eq. 1 undefined when loss never fell
                calibration[lang] = {"error": str(e)}
    from babeltower.analysis.stages import StageOptions, detect_stages

    stage_objs = {lang: detect_stages(curves[lang].tokens, curves[lang].performance)
                  for lang in curves}
    alg = algorithm1(curves, corpus0, cfg.primary, stages=stage_objs)
    return {"stages": stages, "performance_measure": perf_label,
            "algorithm1": alg.to_dict(), "calibration": calibration}


# ------------------------------------------------------------------------------ mixtures
def mixture_record(name: str, shares: dict[str, float], corpus0: dict[str, int], meta: dict,
                   corpus_tokens: dict[str, int] | None = None) -> dict:
    total = sum(corpus0.values())
    s = sum(shares.values())
    shares = {k: v / s for k, v in sorted(shares.items()) if v > 0}
    return {"name": name, "shares": shares,
            "tokens_at_equal_tokens": {k: int(round(v * total)) for k, v in shares.items()},
            "corpus_tokens": corpus_tokens or {k: int(round(v * total)) for k, v in shares.items()},
            "meta": meta}


def baseline_mixtures(cfg: ExperimentConfig, available: dict[str, int], corpus0: dict[str, int]) -> dict:
    """natural, uniform, temperature (tau), UniMax over the experiment's languages."""
    from babeltower.mixture import generators as g

    avail = {lang: available[lang] for lang in cfg.languages}
    total = cfg.scratch.tokens
    specs = {"natural": g.natural(avail, total), "uniform": g.uniform(avail, total),
             "temperature-0.3": g.temperature(avail, total, 0.3),
             "temperature-0.5": g.temperature(avail, total, 0.5),
             "unimax": g.unimax(avail, total, max_epochs=1)}
    out = {}
    for name, spec in specs.items():
        budgets = spec.absolute_budgets() if hasattr(spec, "absolute_budgets") else spec.budgets
        shares = {k: v / sum(budgets.values()) for k, v in budgets.items()}
        out[name] = mixture_record(name, shares, corpus0, spec.meta)
    return out


def optimized_mixture(alg: dict, corpus0: dict[str, int]) -> dict:
    budgets = {k: int(v) for k, v in alg["budgets"].items() if v > 0}
    shares = {k: v / sum(budgets.values()) for k, v in budgets.items()}
    return mixture_record("optimized", shares, corpus0, {"generator": "algorithm1"},
                          corpus_tokens=budgets)


# ---------------------------------------------------------------------------- comparison
def mean_ci(values: list[float], level: float = 0.95) -> tuple[float, float, float]:
    """Mean and a Student-t interval over seeds (wide for 2 seeds - honestly so)."""
    from scipy import stats

    v = np.asarray([x for x in values if x is not None and np.isfinite(x)], dtype=float)
    if v.size == 0:
        return (float("nan"),) * 3
    m = float(v.mean())
    if v.size < 2:
        return m, float("nan"), float("nan")
    half = float(stats.t.ppf(0.5 + level / 2, v.size - 1) * v.std(ddof=1) / math.sqrt(v.size))
    return m, m - half, m + half


def compare(cfg: ExperimentConfig, runs: list[dict]) -> dict:
    """Per protocol, mixture and language: test bpb and cloze, mean and 95% t-interval over
    seeds, plus the paired (same seed) difference against the natural mixture."""
    out: dict[str, Any] = {}
    for protocol in sorted({r["protocol"] for r in runs}):
        rs = [r for r in runs if r["protocol"] == protocol]
        mixtures = list(dict.fromkeys(r["mixture"] for r in rs))
        table = []
        for m in mixtures:
            for lang in [*cfg.languages, "mean"]:
                for measure in ("bpb", "cloze_new"):
                    vals, diffs = [], []
                    for r in (x for x in rs if x["mixture"] == m):
                        v = _final_value(r, measure, lang, cfg)
                        vals.append(v)
                        base = next((b for b in rs if b["mixture"] == "natural"
                                     and b["seed"] == r["seed"]), None)
                        if base is not None and v is not None:
                            bv = _final_value(base, measure, lang, cfg)
                            diffs.append(None if bv is None else v - bv)
                    if all(v is None for v in vals):
                        continue
                    mean, lo, hi = mean_ci(vals)
                    dm, dlo, dhi = mean_ci([d for d in diffs if d is not None])
                    table.append({"mixture": m, "language": lang, "measure": measure,
                                  "mean": mean, "ci_low": lo, "ci_high": hi,
                                  "n_seeds": sum(v is not None for v in vals),
                                  "tokens": next(x["tokens"] for x in rs if x["mixture"] == m),
                                  "diff_vs_natural": dm, "diff_ci_low": dlo, "diff_ci_high": dhi})
        out[protocol] = table
    eq = out.get("equal_tokens", [])
    ranked = sorted((t for t in eq if t["language"] == "mean" and t["measure"] == "bpb"),
                    key=lambda t: t["mean"])
    out["best_equal_tokens"] = ranked[0]["mixture"] if ranked else None
    out["ranking_equal_tokens"] = [t["mixture"] for t in ranked]
    return out


def _final_value(run: dict, measure: str, lang: str, cfg: ExperimentConfig) -> float | None:
    row = run["checkpoints"][-1]
    d = row.get(measure) or {}
    if lang == "mean":
        langs = cfg.languages if measure == "bpb" else cfg.new_languages
        vals = [d.get(x) for x in langs]
        if any(v is None for v in vals):
            return None
        return float(np.mean(vals))
    v = d.get(lang)
    return None if v is None else float(v)
