"""What the experiment computes from measured checkpoints: stages, Algorithm 1, the
calibration of Eq. 1, the mixtures to compare, and the final comparison with intervals.

Pure functions over plain dicts (the rows of ``measure.measure_series``) so each can be
re-run from ``results.json`` in a notebook.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from typing import Any

import numpy as np

from babeltower.analysis.item_power import ChurnModel, ItemDesign, fit_churn, item_power
from babeltower.analysis.item_test import ItemSeries, ItemTestOptions, item_stage_test
from babeltower.analysis.power import Effect, stage_power
from babeltower.analysis.stages import (BinomialNoise, GaussianNoise, StageOptions, detect_stages,
                                        detect_stages_multi, stage_result_from_items)
from babeltower.analysis.statistics import (benjamini_hochberg, correlation_with_controls, holm,
                                            paired_t, t_interval)
from babeltower.errors import BabelError
from babeltower.experiment.config import ExperimentConfig
from babeltower.experiment.items import (across_seeds, bpb_series, knowledge_rows,
                                         knowledge_series)
from babeltower.mixture.calibration import calibration_table
from babeltower.mixture.curves import CPTCurve
from babeltower.mixture.optimize import Algorithm1Options, algorithm1


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
    # "every class" is every TAUGHT class: the never-taught facts are the measured chance
    hits = [(int(c["k"]), int(c["n"])) for c in (row.get("knowledge") or {}).get("curves", [])
            if (c["class"] == cls if cls is not None else c["class"] != "never-taught")
            and c["language"] == q and c["target"] in (lang, "all")]
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


@dataclass
class PerformanceCurve:
    """The per-checkpoint performance signal and its noise model, chosen together so
    that nothing re-derives the noise from the label later. ``noise`` is None when the
    measurement did not record the uncertainty behind the curve."""

    x: list
    y: list
    label: str
    measure: str                    # "knowledge" | "cloze" | "bpb"
    noise: BinomialNoise | GaussianNoise | None


def _bpb_curve(rows: list[dict], lang: str, label: str) -> PerformanceCurve:
    rows_b = [r for r in rows if (r.get("bpb") or {}).get(lang) is not None]
    x, y = curve(rows_b, "bpb", lang)
    # the document bootstrap's se of every checkpoint (evaluate.loss: Estimate.ratio_bootstrap)
    se = per_checkpoint(rows_b, "bpb_se", lang)
    return PerformanceCurve(x, [-v for v in y], label, "bpb",
                            None if se is None else GaussianNoise(se))


def performance_curve(cfg: ExperimentConfig, rows: list[dict], lang: str) -> PerformanceCurve:
    """The per-checkpoint performance signal chosen in the config (higher is better),
    with its noise model: binomial over the knowledge queries or the cloze prompts, or
    the bits per byte's document-bootstrap standard errors.

    ``cloze`` falls back to negative bits-per-byte when the stage test calls the cloze
    curve flat or undetermined (a tiny model rarely gets an identifier right, so the
    curve is a floor with single-prompt blips), or when the prompt counts behind it were
    not recorded; the label says which signal was used.
    """
    if cfg.evaluation.performance == "knowledge":
        # every class asked in the new language: the paper's "performance in the new
        # language", with n = all validation facts (the stage test's power needs n ~150);
        # the transfer curve (primary-only facts) is tested on its own in the report
        x, y, ns = knowledge_curve(rows, lang, cls=None)
        noise = BinomialNoise(ns) if ns else None
        return PerformanceCurve(x, y, KNOWLEDGE_LABEL.format(lang=lang), "knowledge", noise)
    if cfg.evaluation.performance == "cloze":
        rows_c = [r for r in rows if (r.get("cloze_new") or {}).get(lang) is not None]
        x, y = curve(rows_c, "cloze_new", lang)
        trials = cloze_trials(rows_c, lang)
        call = None
        if trials is not None and len(x) >= StageOptions().min_points:
            call = detect_stages(x, y, BinomialNoise(trials), options=StageOptions(n_bootstrap=99),
                                 name=f"{lang} cloze").call
        if call not in (None, "flat", "undetermined"):
            return PerformanceCurve(x, y, f"cloze accuracy ({lang} prompts, first-token)",
                                    "cloze", BinomialNoise(trials))
        why = "cloze was flat" if call else "cloze untested: no prompt counts"
        return _bpb_curve(rows, lang, f"-bits per byte ({lang}, validation; {why})")
    return _bpb_curve(rows, lang, f"-bits per byte ({lang}, validation)")


_CORROBORATING = (("working-language share (last layer)", "lens_new_share_last", True),
                  ("working-language share (mean over layers)", "lens_new_share_mean", True),
                  ("transferring-neuron ratio |T|/|S_new|", "transfer_ratio", False))


def _stages(rows: list[dict], lang: str, pc: PerformanceCurve):
    """(stage dict for results.json, StageResult or None) of one language's CPT run."""
    x, perf, label, noise = pc.x, pc.y, pc.label, pc.noise
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


def seed_runs(run: dict) -> list[dict]:
    """Every seed's run of one arm and language (older results: the one run)."""
    return run.get("seeds") or [{"seed": run.get("seed", 0), "run": run.get("run"),
                                 "checkpoints": run["checkpoints"]}]


ITEM_TEST = ItemTestOptions()


def _item_stages(cfg: ExperimentConfig, run: dict, lang: str, meta: list[dict]) -> dict | None:
    """The item-level stage test of the performance signal (every class asked in the new
    language) pooled over the seeds, corroborated by the first seed's probes; None when
    the runs hold no per-item outcomes."""
    seeds = seed_runs(run)
    series = knowledge_series(seeds, meta, lang, None,
                              name=f"{lang} knowledge (every class, {len(seeds)} seeds)")
    if series is None:
        return None
    ires = item_stage_test(series, ITEM_TEST)
    st = stage_result_from_items(ires)
    rows = run["checkpoints"]
    multi: dict[str, tuple] = {"performance": (list(series.x), list(series.pooled()), True)}
    for name, key, hib in _CORROBORATING:
        cx, cy = curve(rows, key, lang)
        if len(cx) >= 2 and len(set(cy)) > 1:
            multi[name] = (cx, cy, hib)
    res = detect_stages_multi(multi, None, performance="performance", performance_result=st)
    label = KNOWLEDGE_LABEL.format(lang=lang) + f", mean of {len(seeds)} seeds, item-level test"
    return {"stages": {**res.to_dict(), "performance_measure": label,
                       "item_test": ires.to_dict()},
            "result": st, "series": series, "label": label}


def item_power_at(series: ItemSeries, sims: int, seed: int = 0) -> dict | None:
    """What this design could have seen under the run's OWN churn: the churn model fitted
    to the items (``item_power.fit_churn``), then a 30% drop after a peak at 20% of CPT at
    the observed peak level, and monotone / flat curves for false positives, per run and
    pooled over the seeds."""
    if sims <= 0 or series.values.shape[0] < 1:
        return None
    fit = fit_churn(series.values, series.clusters, seed=seed)
    model = ChurnModel(**fit["model"])
    x = (series.x - series.x[0]) / max(1e-9, series.x[-1] - series.x[0])
    pooled = series.pooled()
    base = float(np.clip(pooled.max(), 0.1, 0.9))
    start = float(np.clip(pooled[0], 0.0, base))
    design = ItemDesign(x, n_items=series.values.shape[1], n_clusters=series.n_clusters,
                        n_seeds=series.n_seeds)
    r = item_power(design, model, Effect(peak_at=0.2, drop=0.3, base=base, start=start),
                   sims=sims, options=ItemTestOptions(n_bootstrap=99), seed=seed)
    return {"fitted_churn": fit, **r}


def analyse_cpt(cfg: ExperimentConfig, cpt: dict[str, dict], corpus0: dict[str, int],
                items_meta: list[dict] | None = None) -> dict:
    """Stages per language, Algorithm 1 on the original corpus, and Eq. 1 calibration.

    With per-item knowledge outcomes (``items_meta``) the call is the item-level test
    pooled over the continual seeds (docs/stages.md); the binomial test on the first
    seed is kept next to it with its assumption stated."""
    stages, curves, perf_label, calibration, stage_objs = {}, {}, {}, {}, {}
    for lang, run in cpt.items():
        rows = run["checkpoints"]
        pc = performance_curve(cfg, rows, lang)
        x, perf, label = pc.x, pc.y, pc.label
        binom, st = _stages(rows, lang, pc)
        items = _item_stages(cfg, run, lang, items_meta) if items_meta else None
        if items is not None:
            stages[lang] = items["stages"]
            stages[lang]["binomial_model"] = {
                "assumption": "every checkpoint an independent binomial draw of n items "
                              "(false: the same items are re-scored; docs/stages.md)",
                "seed": run.get("seed", 0), "call": binom["performance"].get("call"),
                "p_value": binom["performance"].get("p_value")}
            st, label = items["result"], items["label"]
            perf = list(items["series"].pooled())
            stages[lang]["power"] = item_power_at(items["series"], cfg.evaluation.power_sims,
                                                  seed=cfg.seed)
        else:
            stages[lang] = binom
            stages[lang]["power"] = stage_power_at(x, pc.noise, perf)
        perf_label[lang] = label
        if st is not None:
            stage_objs[lang] = st
        lrows = [r for r in rows if (r.get("loss") or {}).get(lang) is not None]
        lx, loss = curve(lrows, "loss", lang)
        curves[lang] = CPTCurve(tokens=lx, loss=loss,
                                performance=perf if len(perf) == len(lx) else None,
                                steps=[r["step"] for r in lrows])
        calibration[lang] = _calibration(cfg, rows, lang, curves[lang])
        if cfg.corpus.knowledge is not None:
            stages[lang]["transfer"] = _transfer_call(run, lang, f"{lang} transfer", items_meta)
        bpb = bpb_series(seed_runs(run)[:1], lang, name=f"{lang} bpb (first seed, paired documents)")
        if bpb is not None and len(bpb.x) >= StageOptions().min_points:
            stages[lang]["bpb_item_test"] = item_stage_test(bpb, ITEM_TEST).to_dict()
    # a language without a stage result keeps all its data (the reason says why)
    a = cfg.algorithm1
    alg = algorithm1(curves, corpus0, cfg.primary, stages=stage_objs, options=Algorithm1Options(
        beta=a.beta, p_threshold=a.p_threshold, floor_fraction=a.floor_fraction))
    return {"stages": stages, "performance_measure": perf_label,
            "algorithm1": alg.to_dict(), "calibration": calibration}


def all_seed_curves(cfg: ExperimentConfig, arms: dict[str, dict], meta: list[dict] | None) -> dict:
    """{arm: {lang: knowledge_seed_curves}} for every continual arm ({} without items)."""
    if not meta:
        return {}
    return {arm: {lang: knowledge_seed_curves(cfg, run, lang, meta) for lang, run in runs.items()}
            for arm, runs in arms.items()}


def knowledge_seed_curves(cfg: ExperimentConfig, run: dict, lang: str, meta: list[dict]) -> dict:
    """Per-seed knowledge curves with their across-seed mean and interval: every class in
    both query languages, per query form in the new language, and per key variant
    where the benchmark has more than one."""
    seeds = seed_runs(run)
    out: dict[str, dict] = {}
    classes = sorted({m["class"] for m in meta})
    forms = sorted({m["form"] for m in meta if "form" in m})
    keys = sorted({m.get("key", "same") for m in meta})
    for q in (lang, cfg.primary):
        for cls in classes:
            # the taught keys pooled, then each key variant (decoys included) on its own
            for key in [None] + (keys if len(keys) > 1 else []):
                ser = knowledge_series(seeds, meta, lang, cls, q, key=key)
                if ser is not None:
                    name = f"{cls} asked in {q}" + (f" ({key} key)" if key else "")
                    out[name] = {"class": cls, "query_language": q, "key": key,
                                 **across_seeds(ser)}
    for form in forms:
        ser = knowledge_series(seeds, meta, lang, None, lang, form=form)
        if ser is not None:
            out[f"every class asked in {lang}, {form} form"] = {
                "class": None, "query_language": lang, "form": form, **across_seeds(ser)}
    return out


AGREEMENT_CLASSES = ("primary-only", "shared", "new-only")


def knowledge_controls(cfg: ExperimentConfig, run: dict, lang: str, meta: list[dict],
                       answers: list[str], n_resamples: int = 200) -> dict:
    """From the first seed's stored per-item outcomes: the per-fact agreement between the
    primary and the new language at every checkpoint (per taught class and key:
    P(right in new | right / wrong in primary) with a Newcombe interval, the
    same-wrong-answer rate against a within-answer permutation null, Spearman of the
    answer log-probs with a bootstrap interval; ``evaluate.knowledge.fact_agreement``) -
    the evidence of transfer is this link, not a count - and the nulls (never-taught
    class, shuffled answers) at the first, best and last checkpoints."""
    from babeltower.evaluate.knowledge import fact_agreement, knowledge_nulls

    rows_by_ck = [(r["checkpoint"], r["step"], r["tokens"],
                   knowledge_rows(meta, r["knowledge"]["items"], answers))
                  for r in run["checkpoints"] if (r.get("knowledge") or {}).get("items")]
    if not rows_by_ck:
        return {}
    keys = sorted({m.get("key", "same") for m in meta} - {"decoy"})
    agreement = []
    for name, step, tokens, rows in rows_by_ck:
        for key in keys:
            for cls in AGREEMENT_CLASSES:
                ag = fact_agreement(rows, cfg.primary, lang, classes=[cls], key=key,
                                    n_boot=n_resamples, n_perm=n_resamples, seed=cfg.seed)
                if ag["facts"]:
                    agreement.append({"checkpoint": name, "step": step, "tokens": tokens, **ag})
    acc = [float(np.mean([r["correct"] for r in rows if r["language"] == lang
                          and r["class"] != "never-taught" and r["key"] != "decoy"] or [0]))
           for _, _, _, rows in rows_by_ck]
    picks = sorted({0, int(np.argmax(acc)), len(rows_by_ck) - 1})
    nulls = []
    for i in picks:
        name, step, tokens, rows = rows_by_ck[i]
        df = knowledge_nulls([(name, step, rows)], len(answers), n_perm=n_resamples * 2,
                             seed=cfg.seed)
        for rec in json.loads(df.to_json(orient="records")):
            nulls.append({**rec, "tokens": tokens})
    return {"agreement": agreement, "nulls": nulls, "null_checkpoints": picks}


def cuts_anything(alg: dict) -> bool:
    """Whether Algorithm 1 down-sampled any language (else optimised = original)."""
    return any(d["target_tokens"] < d["available"] for d in (alg.get("languages") or {}).values())


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
                    mean, lo, hi = t_interval(vals)
                    dm, dlo, dhi = t_interval([d for d in diffs if d is not None])
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
def _transfer_call(run: dict, lang: str, name: str, meta: list[dict] | None = None) -> dict:
    """The stage test on the transfer curve (primary-only facts asked in the new
    language): item-level and pooled over seeds when per-item outcomes exist, else the
    binomial test on the one run."""
    seeds = seed_runs(run)
    ser = knowledge_series(seeds, meta, lang, "primary-only", lang, name=name) if meta else None
    if ser is not None:
        try:
            res = item_stage_test(ser, ITEM_TEST)
        except BabelError as e:
            return {"call": "undetermined", "reason": str(e)}
        st = stage_result_from_items(res)
        return {"call": st.call, "p_value": st.p_value, "rise_p_value": st.rise_p_value,
                "peak_x": st.peak_x, "reason": st.reason, "test": "items",
                "per_seed": [{"seed": s["seed"], "call": c.call, "drop_p": c.drop_p}
                             for s, c in zip(seeds, res.per_seed)],
                **{k: v for k, v in res.pooled.extra.items()}}
    x, y, n = knowledge_curve(run["checkpoints"], lang)
    try:
        res = detect_stages(x, y, BinomialNoise(n), options=StageOptions(), name=name)
    except BabelError as e:
        return {"call": "undetermined", "reason": str(e)}
    return {"call": res.call, "p_value": res.p_value, "rise_p_value": res.rise_p_value,
            "peak_x": res.peak_x, "reason": res.reason, "test": "binomial"}


def _seed_end_rates(run: dict, lang: str, cls: str, query_language: str) -> list[float]:
    out = []
    for s in seed_runs(run):
        kn = knowledge_counts(s["checkpoints"][-1], lang, cls, query_language)
        if kn is not None and kn[1] > 0:
            out.append(kn[0] / kn[1])
    return out


def _over_seeds(values: list[float]) -> dict | None:
    if not values:
        return None
    m, lo, hi = t_interval(values)
    return {"mean": m, "ci_low": lo, "ci_high": hi, "per_seed": values, "n_seeds": len(values)}


def _paired_by_seed(a: list[float], b: list[float]) -> dict | None:
    """a - b paired by seed index (the same data-order seed in both arms), with a
    Student-t interval and p-value over seeds."""
    n = min(len(a), len(b))
    if n < 2:
        return None
    d = [x - y for x, y in zip(a[:n], b[:n])]
    t = paired_t(d)
    return {"difference": float(np.mean(d)), "ci_low": t["ci_low"], "ci_high": t["ci_high"],
            "p": t["p"], "per_seed": d, "n_seeds": n}


ARM_NAMES = {"replay": "replay", "replay_nofacts": "replay without the fact documents"}


def replay_contrast(cfg: ExperimentConfig, cpt: dict[str, dict], arms: dict[str, dict],
                    items_meta: list[dict] | None = None) -> dict:
    """Per new language: is a drop of transferred knowledge a switch of systems or plain
    forgetting? The item-level stage test on the transfer curve of every arm (no replay,
    replay, replay without the fact documents), and at the last checkpoint each arm's
    transfer and primary-side accuracies (mean and t-interval over seeds) with their
    differences from the no-replay arm paired by seed, Holm-corrected over the family.
    Replay without the fact documents separates retention (kept without being shown
    again) from re-exposure."""
    out = {}
    for lang, run in cpt.items():
        per_arm = {"no_replay": run, **{a: r[lang] for a, r in arms.items() if lang in r}}
        table = {}
        for arm, r in per_arm.items():
            t_end = _seed_end_rates(r, lang, "primary-only", lang)
            p_end = _seed_end_rates(r, lang, "primary-only", cfg.primary)
            table[arm] = {"transfer_stage": _transfer_call(r, lang, f"{lang} transfer ({arm})",
                                                           items_meta),
                          "transfer_end": _over_seeds(t_end), "primary_side_end": _over_seeds(p_end),
                          "primary_bpb_end": (r["checkpoints"][-1].get("bpb") or {}).get(cfg.primary),
                          "_t": t_end, "_p": p_end}
        diffs = {}
        for arm in per_arm:
            if arm == "no_replay":
                continue
            for what, key in (("transfer", "_t"), ("primary_side", "_p")):
                diffs[f"{arm}: {what}"] = _paired_by_seed(table[arm][key], table["no_replay"][key])
        ps = [d["p"] if d else float("nan") for d in diffs.values()]
        for d, ph in zip(diffs.values(), holm(ps)):
            if d:
                d["p_holm"] = ph
        for arm in table.values():
            arm.pop("_t"), arm.pop("_p")
        out[lang] = {**table, "share": cfg.continual.replay_share, "differences": diffs,
                     "reading": _replay_reading(table)}
    return out


def _replay_reading(arms: dict) -> str:
    drop = {a: arms[a]["transfer_stage"]["call"] == "rise_then_drop" for a in arms}
    if drop.get("no_replay") and all(drop.values()):
        return ("the transferred knowledge rises then drops with and without replay: the drop "
                "is not explained by forgetting the primary facts (a switch of systems)")
    if drop.get("no_replay"):
        return ("the drop appears without replay only: it tracks forgetting of the primary "
                "facts, not a switch of systems")
    if any(drop.values()):
        return "a drop only with replay: no reading (see the curves)"
    return "no significant drop in any arm (pooled over seeds): nothing to attribute"
