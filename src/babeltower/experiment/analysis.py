"""What the experiment computes from measured checkpoints: stages, Algorithm 1, the
calibration of Eq. 1, the mixtures to compare, and the final comparison with intervals.

Pure functions over plain dicts (the rows of ``measure.measure_series``) so each can be
re-run from ``results.json`` in a notebook.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np

from babeltower.analysis.stages import (BinomialNoise, GaussianNoise, StageOptions, detect_stages,
                                        detect_stages_multi)
from babeltower.analysis.statistics import (benjamini_hochberg, correlation_with_controls, holm,
                                            paired_t)
from babeltower.errors import BabelError
from babeltower.experiment.config import ExperimentConfig
from babeltower.mixture.optimize import CPTCurve, algorithm1, calibration_table


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


def per_checkpoint(rows: list[dict], measure: str, language: str) -> list | None:
    """One value per row of ``measure`` for ``language``, or None if any row lacks it."""
    vals = [(r.get(measure) or {}).get(language) for r in rows]
    return None if any(v is None for v in vals) else [float(v) for v in vals]


def cloze_trials(rows: list[dict], lang: str) -> list | None:
    """Prompts behind each checkpoint's cloze accuracy (its binomial n): the measurement's
    ``cloze_new_n``, else the lens's ``n_prompts``; None when neither was recorded."""
    n = per_checkpoint(rows, "cloze_new_n", lang)
    if n is None:
        n = [((r.get("lens_layers") or {}).get(lang) or {}).get("n_prompts") for r in rows]
        n = None if any(v is None for v in n) else [float(v) for v in n]
    return n


def performance_curve(cfg: ExperimentConfig, rows: list[dict], lang: str) -> tuple[list, list, str]:
    """The per-checkpoint performance signal chosen in the config (higher is better).

    ``cloze`` falls back to negative bits-per-byte when the stage test calls the cloze
    curve flat or undetermined (a tiny model rarely gets an identifier right, so the
    curve is a floor with single-prompt blips), or when the prompt counts behind it were
    not recorded; the returned label says which signal was used.
    """
    if cfg.evaluation.performance == "cloze":
        rows_c = [r for r in rows if (r.get("cloze_new") or {}).get(lang) is not None]
        x, y = curve(rows_c, "cloze_new", lang)
        trials = cloze_trials(rows_c, lang)
        call = None
        if trials is not None and len(x) >= StageOptions().min_points:
            call = detect_stages(x, y, BinomialNoise(trials), options=StageOptions(n_bootstrap=99),
                                 name=f"{lang} cloze").call
        if call not in (None, "flat", "undetermined"):
            return x, y, f"cloze accuracy ({lang} prompts, first-token)"
        why = "cloze was flat" if call else "cloze untested: no prompt counts"
        x, y = curve(rows, "bpb", lang)
        return x, [-v for v in y], f"-bits per byte ({lang}, validation; {why})"
    x, y = curve(rows, "bpb", lang)
    return x, [-v for v in y], f"-bits per byte ({lang}, validation)"


def performance_noise(rows: list[dict], lang: str, label: str):
    """The stage test's noise model for the curve ``performance_curve`` chose: binomial
    over the cloze prompts, or the bpb standard errors (``bpb_se``, from the measurement's
    document bootstrap); None when the measurement did not record them."""
    if label.startswith("cloze"):
        rows_c = [r for r in rows if (r.get("cloze_new") or {}).get(lang) is not None]
        trials = cloze_trials(rows_c, lang)
        return None if trials is None else BinomialNoise(trials)
    se = per_checkpoint([r for r in rows if (r.get("bpb") or {}).get(lang) is not None],
                        "bpb_se", lang)
    return None if se is None else GaussianNoise(se)


_CORROBORATING = (("working-language share (last layer)", "lens_new_share_last", True),
                  ("working-language share (mean over layers)", "lens_new_share_mean", True),
                  ("transferring-neuron ratio |T|/|S_new|", "transfer_ratio", False))


def _stages(rows: list[dict], lang: str, x: list, perf: list, label: str):
    """(stage dict for results.json, StageResult or None) of one language's CPT run."""
    noise = performance_noise(rows, lang, label)
    if noise is None:
        return ({"performance": {"call": "undetermined", "kind": "undetermined",
                                 "reason": "no per-checkpoint uncertainty recorded for "
                                           f"{label}: stage test not run"},
                 "performance_measure": label}, None)
    multi: dict[str, tuple] = {"performance": (x, perf, True)}
    for name, key, hib in _CORROBORATING:
        cx, cy = curve(rows, key, lang)
        if len(cx) >= 2 and len(set(cy)) > 1:
            multi[name] = (cx, cy, hib)
    try:
        res = detect_stages_multi(multi, noise, performance="performance")
    except BabelError as e:      # too few checkpoints, ...: recorded, Algorithm 1 keeps all
        return ({"performance": {"call": "undetermined", "kind": "undetermined",
                                 "reason": str(e)}, "performance_measure": label}, None)
    return {**res.to_dict(), "performance_measure": label}, res.performance


def _calibration(cfg: ExperimentConfig, rows: list[dict], lang: str, c: CPTCurve) -> dict:
    """Eq. 1 against the measured share, next to the same statistics for the primary
    language's bpb over the same checkpoints and for a family of monotone null curves."""
    sx, share = curve(rows, "lens_new_share_mean", lang)
    if not sx or len(sx) != len(c.tokens):
        return {"error": "no measured working-language share at every checkpoint"}
    try:
        table = calibration_table(c, share).to_dict()
    except BabelError as e:      # Eq. 1 undefined when the loss never fell
        return {"error": str(e)}
    primary_bpb = per_checkpoint(rows, "bpb", cfg.primary)
    controls = {} if primary_bpb is None else {f"{cfg.primary} bpb (forgetting)": primary_bpb}
    p_loss = [row["p_loss"] for row in table["rows"]]
    table["specificity"] = correlation_with_controls(c.tokens, share, p_loss, controls)
    return table


def analyse_cpt(cfg: ExperimentConfig, cpt: dict[str, dict], corpus0: dict[str, int]) -> dict:
    """Stages per language, Algorithm 1 on the original corpus, and Eq. 1 calibration."""
    stages, curves, perf_label, calibration, stage_objs = {}, {}, {}, {}, {}
    for lang, run in cpt.items():
        rows = run["checkpoints"]
        x, perf, label = performance_curve(cfg, rows, lang)
        perf_label[lang] = label
        stages[lang], st = _stages(rows, lang, x, perf, label)
        if st is not None:
            stage_objs[lang] = st
        lrows = [r for r in rows if (r.get("loss") or {}).get(lang) is not None]
        lx, loss = curve(lrows, "loss", lang)
        curves[lang] = CPTCurve(tokens=lx, loss=loss,
                                performance=perf if len(perf) == len(lx) else None,
                                steps=[r["step"] for r in lrows])
        calibration[lang] = _calibration(cfg, rows, lang, curves[lang])
    # a language without a stage result keeps all its data (the reason says why)
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
                                  "diff_vs_natural": dm, "diff_ci_low": dlo, "diff_ci_high": dhi,
                                  "diffs": [d for d in diffs if d is not None]})
        out[protocol] = adjust_family(table)
    eq = out.get("equal_tokens", [])
    ranked = sorted((t for t in eq if t["language"] == "mean" and t["measure"] == "bpb"),
                    key=lambda t: t["mean"])
    out["best_equal_tokens"] = ranked[0]["mixture"] if ranked else None
    out["ranking_equal_tokens"] = [t["mixture"] for t in ranked]
    return out


def adjust_family(table: list[dict], level: float = 0.95) -> list[dict]:
    """Multiplicity over one protocol's family: every (mixture != natural, language,
    measure) difference against natural. Adds the paired t-test p-value, its Holm and
    Benjamini-Hochberg adjustments, and a simultaneous (Bonferroni) interval at level
    1 - (1 - level)/m, m = number of differences with a p-value (docs/mixtures.md)."""
    family = [t for t in table if t["mixture"] != "natural" and len(t["diffs"]) >= 2]
    tests = [paired_t(t["diffs"], level) for t in family]
    m = sum(math.isfinite(x["p"]) for x in tests)
    for t, x, ph, q in zip(family, tests, holm([x["p"] for x in tests]),
                           benjamini_hochberg([x["p"] for x in tests])):
        wide = paired_t(t["diffs"], level, family_size=max(1, m))
        t.update({"diff_p": x["p"], "diff_p_holm": ph, "diff_q_bh": q, "family_size": m,
                  "diff_ci_low_simultaneous": wide["ci_low"],
                  "diff_ci_high_simultaneous": wide["ci_high"]})
    for t in table:
        t.pop("diffs")
    return table


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
