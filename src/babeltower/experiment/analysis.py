"""What the experiment computes from measured checkpoints: stages, Algorithm 1, the
calibration of Eq. 1, the mixtures to compare, and the final comparison with intervals.

Pure functions over plain dicts (the rows of ``measure.measure_series``) so each can be
re-run from ``results.json`` in a notebook.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np

from babeltower.analysis.power import Effect, stage_power
from babeltower.analysis.stages import (BinomialNoise, GaussianNoise, StageOptions, detect_stages,
                                        detect_stages_multi)
from babeltower.analysis.statistics import (benjamini_hochberg, correlation_with_controls, holm,
                                            paired_t)
from babeltower.errors import BabelError
from babeltower.experiment.config import ExperimentConfig
from babeltower.evaluate.transfer import wilson_interval
from babeltower.mixture.optimize import Algorithm1Options, CPTCurve, algorithm1, calibration_table


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


def knowledge_counts(row: dict, lang: str, cls: str | None = "primary-only",
                     query_language: str | None = None) -> tuple[int, int] | None:
    """(k, n) of one knowledge class (None: every class) asked in ``query_language``
    (default: the new language ``lang``) at one checkpoint; the primary-only pool serves
    every new language, so its target is "all"."""
    q = query_language or lang
    hits = [(int(c["k"]), int(c["n"])) for c in (row.get("knowledge") or {}).get("curves", [])
            if (cls is None or c["class"] == cls) and c["language"] == q
            and c["target"] in (lang, "all")]
    if not hits:
        return None
    return sum(k for k, _ in hits), sum(n for _, n in hits)


def knowledge_curve(rows: list[dict], lang: str, cls: str | None = "primary-only",
                    query_language: str | None = None) -> tuple[list, list, list]:
    """(tokens, accuracy, n) over checkpoints of one class asked in one language."""
    xs, ys, ns = [], [], []
    for r in rows:
        kn = knowledge_counts(r, lang, cls, query_language)
        if kn is not None and kn[1] > 0:
            xs.append(float(r["tokens"]))
            ys.append(kn[0] / kn[1])
            ns.append(kn[1])
    return xs, ys, ns


TRANSFER_LABEL = "knowledge transfer: primary-only facts asked in {lang}"
KNOWLEDGE_LABEL = "knowledge: every fact asked in {lang} (validation queries)"


def performance_curve(cfg: ExperimentConfig, rows: list[dict], lang: str) -> tuple[list, list, str]:
    """The per-checkpoint performance signal chosen in the config (higher is better).

    ``cloze`` falls back to negative bits-per-byte when the stage test calls the cloze
    curve flat or undetermined (a tiny model rarely gets an identifier right, so the
    curve is a floor with single-prompt blips), or when the prompt counts behind it were
    not recorded; the returned label says which signal was used.
    """
    if cfg.evaluation.performance == "knowledge":
        # every class asked in the new language: the paper's "performance in the new
        # language", with n = all validation facts (the stage test's power needs n ~150);
        # the transfer curve (primary-only facts) is tested on its own in the report
        x, y, _ = knowledge_curve(rows, lang, cls=None)
        return x, y, KNOWLEDGE_LABEL.format(lang=lang)
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
    if label.startswith("knowledge"):
        _, _, n = knowledge_curve(rows, lang, cls=None)
        return BinomialNoise(n) if n else None
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


def stage_power_at(x: list, noise, y: list, sims: int = 200) -> dict | None:
    """What this run's stage test could have seen: detection of a 30% drop after a peak
    at 20% of CPT (at the curve's own peak level, and at 0.3) on this schedule and eval
    size, with false positives on monotone and flat curves (``analysis.power``)."""
    if noise is None or len(x) < StageOptions().min_points or noise.kind != "binomial":
        return None
    span = (np.asarray(x, dtype=float) - x[0]) / max(1e-9, x[-1] - x[0])
    out = {"eval_size": float(np.mean(noise.scale(len(x), "power"))), "checkpoints": len(x)}
    for name, base in (("at_observed_peak", float(np.clip(max(y), 0.1, 0.9))), ("at_0.3", 0.3)):
        r = stage_power(span, noise, Effect(peak_at=0.2, drop=0.3, base=base), sims=sims)
        out[name] = {"base": base, "detection": r.detection.to_dict(),
                     "false_positive_monotone": r.false_positive_monotone.to_dict(),
                     "false_positive_flat": r.false_positive_flat.to_dict()}
    return out


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
    p_loss = [row["p_loss"] for row in table["rows"]]
    # the primary's bpb may be read on every k-th checkpoint only (primary_loss_every):
    # then P(loss), the share and the control are compared on those checkpoints
    at = [i for i, r in enumerate(rows) if (r.get("bpb") or {}).get(cfg.primary) is not None]
    if len(rows) != len(c.tokens) or len(at) < 3:
        at = list(range(len(c.tokens)))
        controls = {}
    else:
        controls = {f"{cfg.primary} bpb (forgetting)": [rows[i]["bpb"][cfg.primary] for i in at]}
    table["specificity"] = correlation_with_controls([c.tokens[i] for i in at], [share[i] for i in at],
                                                     [p_loss[i] for i in at], controls)
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
        if cfg.corpus.knowledge is not None:
            stages[lang]["transfer"] = _transfer_call(rows, lang, f"{lang} transfer")
        stages[lang]["power"] = stage_power_at(x, performance_noise(rows, lang, label), perf)
    # a language without a stage result keeps all its data (the reason says why)
    a = cfg.algorithm1
    alg = algorithm1(curves, corpus0, cfg.primary, stages=stage_objs, options=Algorithm1Options(
        beta=a.beta, p_threshold=a.p_threshold, floor_fraction=a.floor_fraction))
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
    """natural, uniform, temperature (tau), UniMax over the experiment's languages.

    "natural" is the original corpus itself (``corpus0``, what Algorithm 1 cuts), so
    "optimized" differs from it exactly by Algorithm 1's cuts - and equals it when
    Algorithm 1 keeps everything. The other baselines re-weight the train split."""
    from babeltower.mixture import generators as g

    avail = {lang: available[lang] for lang in cfg.languages}
    total = cfg.scratch.tokens
    specs = {"natural": g.natural(corpus0, total), "uniform": g.uniform(avail, total),
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
                for measure in COMPARED:
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


# what the from-scratch comparison reads off each run's final checkpoint: test bpb, cloze,
# and knowledge transfer (primary-only facts asked in each new language)
COMPARED = ("bpb", "cloze_new", "transfer")


def _final_value(run: dict, measure: str, lang: str, cfg: ExperimentConfig) -> float | None:
    row = run["checkpoints"][-1]
    if measure == "transfer":
        if lang == cfg.primary:
            return None
        langs = cfg.new_languages if lang == "mean" else [lang]
        kn = [knowledge_counts(row, x) for x in langs]
        if any(v is None or v[1] == 0 for v in kn):
            return None
        return float(sum(k for k, _ in kn) / sum(n for _, n in kn))
    d = row.get(measure) or {}
    if lang == "mean":
        langs = cfg.languages if measure == "bpb" else cfg.new_languages
        vals = [d.get(x) for x in langs]
        if any(v is None for v in vals):
            return None
        return float(np.mean(vals))
    v = d.get(lang)
    return None if v is None else float(v)


# ------------------------------------------------------------------------ replay contrast
def _end_rate(rows: list[dict], lang: str, cls: str, query_language: str) -> dict | None:
    kn = knowledge_counts(rows[-1], lang, cls, query_language) if rows else None
    if kn is None or kn[1] == 0:
        return None
    lo, hi = wilson_interval(*kn)
    return {"k": kn[0], "n": kn[1], "accuracy": kn[0] / kn[1], "lo95": lo, "hi95": hi}


def _difference(a: dict | None, b: dict | None) -> dict | None:
    """a - b of two independent proportions with a Newcombe (Wilson-score) 95% interval."""
    if a is None or b is None:
        return None
    d = a["accuracy"] - b["accuracy"]
    lo = d - math.sqrt((a["accuracy"] - a["lo95"]) ** 2 + (b["hi95"] - b["accuracy"]) ** 2)
    hi = d + math.sqrt((a["hi95"] - a["accuracy"]) ** 2 + (b["accuracy"] - b["lo95"]) ** 2)
    return {"difference": d, "lo95": lo, "hi95": hi}


def _transfer_call(rows: list[dict], lang: str, name: str) -> dict:
    x, y, n = knowledge_curve(rows, lang)
    try:
        res = detect_stages(x, y, BinomialNoise(n), options=StageOptions(), name=name)
    except BabelError as e:
        return {"call": "undetermined", "reason": str(e)}
    return {"call": res.call, "p_value": res.p_value, "rise_p_value": res.rise_p_value,
            "peak_x": res.peak_x, "reason": res.reason}


def replay_contrast(cfg: ExperimentConfig, cpt: dict[str, dict], replay: dict[str, dict]) -> dict:
    """Per new language: is a drop of transferred knowledge a switch of systems or plain
    forgetting? The same stage test on the transfer curve with and without primary replay,
    and at the last checkpoint the transfer and primary-side accuracies of both arms with
    their difference (Newcombe interval). A drop that persists under replay, while replay
    keeps the primary facts, is not explained by forgetting them."""
    out = {}
    for lang, run in cpt.items():
        if lang not in replay:
            continue
        rows, rrows = run["checkpoints"], replay[lang]["checkpoints"]
        arms = {}
        for arm, rs in (("no_replay", rows), ("replay", rrows)):
            arms[arm] = {"transfer_stage": _transfer_call(rs, lang, f"{lang} transfer ({arm})"),
                         "transfer_end": _end_rate(rs, lang, "primary-only", lang),
                         "primary_side_end": _end_rate(rs, lang, "primary-only", cfg.primary),
                         "primary_bpb_end": (rs[-1].get("bpb") or {}).get(cfg.primary)}
        out[lang] = {**arms, "share": cfg.continual.replay_share,
                     "transfer_difference": _difference(arms["replay"]["transfer_end"],
                                                        arms["no_replay"]["transfer_end"]),
                     "primary_side_difference": _difference(arms["replay"]["primary_side_end"],
                                                            arms["no_replay"]["primary_side_end"]),
                     "reading": _replay_reading(arms)}
    return out


def _replay_reading(arms: dict) -> str:
    drop = {a: arms[a]["transfer_stage"]["call"] == "rise_then_drop" for a in arms}
    if drop["no_replay"] and drop["replay"]:
        return ("the transferred knowledge rises then drops with and without replay: the drop "
                "is not explained by forgetting the primary facts (a switch of systems)")
    if drop["no_replay"]:
        return ("the drop appears without replay only: it tracks forgetting of the primary "
                "facts, not a switch of systems")
    if drop["replay"]:
        return "a drop only with replay: no reading (see the curves)"
    return "no significant drop in either arm: nothing to attribute"
