"""The report's sections, one function each: a heading, the prose that reads the numbers
(``report.prose``), the tables (``report.tables``) and the figures it draws
(``report.figures``, plotting only)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from babeltower.report import figures
from babeltower.report.html import Section, Table
from babeltower.report.prose import (alg_text, answer_text, comparison_text, knowledge_text,
                                     lens_text, mixture_text, neuron_text, setup_text, stages_text)
from babeltower.report.tables import (agreement_rows, ci, comp_row, curve_panels, exposure_rows,
                                      fmt_tokens, knowledge_panels, null_rows, seed_rows,
                                      specific_rows, stage_rows)


def answer_section(results: dict) -> Section:
    comp = results.get("comparison", {})
    return Section("Answer: which mixture, and why", answer_text(results), tables=[
        Table("Equal tokens: mean test bits-per-byte over all languages (lower is better), "
              "95% t-interval over seeds; difference against natural paired by seed",
              [comp_row(t) for t in comp.get("equal_tokens", [])
               if t["language"] == "mean" and t["measure"] == "bpb"])])


def setup_section(results: dict) -> Section:
    corpus_rows = [{"language": lang, **info} for lang, info in results.get("corpus", {}).items()]
    return Section("Setup", setup_text(results), tables=[
        Table("Corpus (packed shards; tokens exclude EOS separators)", corpus_rows)])


def stages_section(results: dict, fig_dir: Path) -> Section:
    perf_curves, bpb_curves = curve_panels(results)
    figs = []
    if perf_curves:
        figs.append(("Performance of each new language over continual pre-training, "
                     "stages shaded (rule: docs/stages.md)",
                     figures.performance_curves(perf_curves, fig_dir / "cpt_performance.png",
                                                "Performance during continual pre-training")))
        figs.append(("Held-out bits per byte of the new language and of the primary language "
                     "(forgetting) over continual pre-training",
                     figures.performance_curves(bpb_curves, fig_dir / "cpt_bpb.png",
                                                "Bits per byte during continual pre-training")))
    tables = [Table("Stage test per new language (docs/stages.md)", stage_rows(results),
                    note="rise_then_drop = a translation-stage peak; monotone = no peak (the "
                         "paper's C++); power = detection of a 30% drop after a peak at 20% of "
                         "CPT on this schedule, item count and number of seeds, simulated at "
                         "item level with the churn fitted to this run's own items; FP = the "
                         "larger false-positive rate (monotone or flat mean).")]
    if seed_rows(results):
        tables.append(Table("One run is one draw: each seed's call beside the pooled one",
                            seed_rows(results),
                            note="per seed: the item-level test on that run alone (valid for "
                                 "item churn, not for a run-level shock); pooled: the mean over "
                                 "seeds, a drop called only if the item test AND the cross-"
                                 "fitted seed t-test both reject (docs/stages.md)."))
    return Section("Continual pre-training: the three stages", stages_text(results),
                   figures=figs, tables=tables)


def knowledge_section(results: dict, fig_dir: Path) -> Section:
    """Per-class knowledge curves over CPT, asked in the new language and in the primary,
    with the replay arm dashed."""
    panels, table = knowledge_panels(results)
    if not panels:
        return Section("Controlled knowledge", "No knowledge benchmark in this run (corpus.knowledge).")
    seeded = bool(results.get("seed_curves", {}).get("none"))
    band = ("the mean over seeds with its Student-t 95% band over seeds, each seed thin"
            if seeded else "Wilson 95% bands")
    figs = [(f"Knowledge per class over continual pre-training ({band}; dashed = replay arms; "
             "dotted = chance). Primary-only facts asked in the new language can only be "
             "answered by transfer from the primary language.",
             figures.band_curves(panels, fig_dir / "knowledge.png", "Controlled knowledge"))]
    tables = [Table("Knowledge accuracy: start, maximum, end (validation queries; chance = "
                    "1 / answers)", table)]
    if agreement_rows(results):
        tables.append(Table("Per-fact agreement, primary vs new language (first seed; Newcombe "
                            "interval for the difference, within-answer permutation null for "
                            "the same wrong answer, bootstrap over facts for Spearman)",
                            agreement_rows(results)))
    if null_rows(results):
        tables.append(Table("Each cell against its nulls: chance, the shuffled-answer null "
                            "(the model's own predictions against a permuted key) and the "
                            "never-taught class", null_rows(results)))
    if exposure_rows(results):
        tables.append(Table("Exposures: reads per fact by the end of each run, counted from "
                            "the run's own sampler (a read = one training window holding the "
                            "whole rendering; docs/mixtures.md)", exposure_rows(results)))
    return Section("Controlled knowledge: what transfers, and when", knowledge_text(results),
                   figures=figs, tables=tables)


def replay_section(results: dict) -> Section:
    rows = []
    for lang, r in (results.get("replay") or {}).items():
        for arm in [a for a in ("no_replay", "replay", "replay_nofacts") if a in r]:
            a = r[arm]
            te, pe = a.get("transfer_end") or {}, a.get("primary_side_end") or {}
            rows.append({"language": lang, "arm": arm.replace("_", " "),
                         "transfer call (pooled)": a["transfer_stage"].get("call"),
                         "transfer drop p": a["transfer_stage"].get("p_value"),
                         "transfer at end": te.get("mean", te.get("accuracy")),
                         "95% CI": ci(te.get("ci_low", te.get("lo95")), te.get("ci_high", te.get("hi95"))),
                         "primary-only asked in primary, end": pe.get("mean", pe.get("accuracy")),
                         "95% CI ": ci(pe.get("ci_low", pe.get("lo95")), pe.get("ci_high", pe.get("hi95"))),
                         "primary bpb, end": a.get("primary_bpb_end")})
        for name, d in (r.get("differences") or {}).items():
            d = d or {}
            rows.append({"language": lang, "arm": f"{name} minus no replay",
                         "transfer at end": d.get("difference"),
                         "95% CI": ci(d.get("ci_low"), d.get("ci_high")),
                         "transfer drop p": d.get("p_holm")})
    if not rows:
        return Section("Replay control", "No replay arm in this run (continual.replay_share = 0).")
    text = "\n\n".join(f"{lang}: {r['reading']}." for lang, r in results["replay"].items())
    return Section("Replay control: a switch of systems, or forgetting?",
                   "The same continual pre-training with a share of every batch replaying the "
                   "primary language, with and without the injected fact documents in the "
                   "replayed text. Replay with the facts re-shows them (retention and "
                   "re-exposure together); replay without them keeps only the language. If "
                   "transferred knowledge still drops with replay, the drop is not forgetting.\n\n"
                   + text,
                   tables=[Table("Every arm at the last checkpoint: mean over seeds with a "
                                 "Student-t 95% interval; differences paired by seed, their "
                                 "p-values Holm-adjusted over the family (the 'drop p' column of "
                                 "a difference row)", rows)])


def working_language_section(results: dict, fig_dir: Path) -> Section:
    primary = results["config"]["primary"]
    figs = []
    for lang in results["config"]["new_languages"]:
        rows = results.get("cpt", {}).get(lang, {}).get("checkpoints", [])
        layers = [(r.get("lens_layers") or {}).get(lang) for r in rows]
        if not rows or any(v is None for v in layers):
            continue
        cols = [fmt_tokens(r["tokens"]) for r in rows]
        m = np.array([v["new_pref_share"] for v in layers], dtype=float).T
        ylabels = [("emb" if i == 0 else f"L{i}") for i in range(m.shape[0])]
        figs.append((f"{primary} vs {lang}: share of prompts whose {lang} identifier outscores its "
                     f"{primary} counterpart, per layer (rows) and checkpoint (columns). "
                     "0.5 = no preference; below = the model 'thinks in' "
                     f"{primary} at that layer.",
                     figures.heatmap(m, fig_dir / f"working_language_{lang}.png",
                                     f"Working language: {lang} over {primary}", cols, ylabels,
                                     f"share preferring {lang}", vmin=0, vmax=1, center=None)))
        m2 = np.array([v["logit_diff"] for v in layers], dtype=float).T
        figs.append((f"Mean log-probability difference ({lang} identifier minus {primary} "
                     "counterpart) per layer and checkpoint; the control row set is in results.json.",
                     figures.heatmap(m2, fig_dir / f"logit_diff_{lang}.png",
                                     f"log p({lang}) - log p({primary})", cols, ylabels,
                                     "nats", center=0.0)))
    figs += _specific_figures(results, fig_dir)
    figs += _margin_figures(results, fig_dir)
    return Section("Working language per layer (logit lens)", lens_text(results), figures=figs,
                   tables=[Table("Controlled lens at the first and last checkpoint: the share "
                                 "preferring the new identifier, its two controls and the specific "
                                 "effects, with cluster-bootstrap 95% intervals over prompts",
                                 specific_rows(results))])


def _specific_figures(results: dict, fig_dir: Path) -> list:
    primary = results["config"]["primary"]
    figs = []
    for lang in results["config"]["new_languages"]:
        rows = results.get("cpt", {}).get(lang, {}).get("checkpoints", [])
        spec = [(r.get("lens_specific") or {}).get(lang) for r in rows]
        if not rows or any(v is None for v in spec):
            continue
        m = np.array([v["specific"] for v in spec], dtype=float).T
        figs.append((f"Specific counterpart effect per layer and checkpoint ({lang}): control A "
                     f"(the {lang} token against UNRELATED {primary} tokens) minus the true-pair "
                     f"share. Above 0: the true {primary} counterpart is preferred more than an "
                     "unrelated token - the translation reading; 0: no counterpart relation.",
                     figures.heatmap(m, fig_dir / f"specific_{lang}.png",
                                     f"Specific counterpart effect: {lang}",
                                     [fmt_tokens(r["tokens"]) for r in rows],
                                     [("emb" if i == 0 else f"L{i}") for i in range(m.shape[0])],
                                     "control A - share", center=0.0)))
    return figs


def _margin_figures(results: dict, fig_dir: Path) -> list:
    """The counterpart margin (nats) over checkpoints, per span, with its cluster-bootstrap
    band: unlike the shares it does not saturate near 0 or 1 (docs/probes.md)."""
    panels = {}
    for lang in results["config"]["new_languages"]:
        rows = results.get("cpt", {}).get(lang, {}).get("checkpoints", [])
        spans: dict[str, dict] = {}
        for r in rows:
            for sp in ((r.get("lens_specific") or {}).get(lang) or {}).get("spans", []):
                if sp.get("margin_specific") is None:
                    continue
                d = spans.setdefault(sp["span"], {"x": [], "y": [], "lo": [], "hi": []})
                d["x"].append(r["tokens"])
                d["y"].append(sp["margin_specific"])
                d["lo"].append(sp.get("margin_specific_ci_low"))
                d["hi"].append(sp.get("margin_specific_ci_high"))
        if spans:
            panels[f"{lang}: counterpart margin"] = {
                "x": next(iter(spans.values()))["x"],
                "x_by_series": {k: v["x"] for k, v in spans.items()},
                "series": {k: {"y": v["y"], "lo": v["lo"], "hi": v["hi"]} for k, v in spans.items()},
                "chance": 0.0, "ylabel": "nats"}
    if not panels:
        return []
    return [("Counterpart margin over continual pre-training: log p(true primary counterpart) "
             "minus the mean log p of unrelated primary tokens of the same kind, at each span "
             "of layers (cluster-bootstrap 95% bands over prompts; dotted = 0, no counterpart "
             "relation)", figures.band_curves(panels, fig_dir / "lens_margin.png",
                                              "Counterpart margin (nats)"))]


def neurons_section(results: dict, fig_dir: Path) -> Section:
    xs, ratio, count = {}, {}, {}
    for lang in results["config"]["new_languages"]:
        rows = results.get("cpt", {}).get(lang, {}).get("checkpoints", [])
        x, r_, c_ = [], [], []
        for r in rows:
            v = (r.get("transfer_ratio") or {}).get(lang)
            if v is None:
                continue
            x.append(r["tokens"])
            r_.append(v)
            c_.append((r.get("transfer_count") or {}).get(lang))
        if x:
            xs[lang], ratio[lang], count[lang] = x, r_, c_
    figs = []
    if xs:
        figs.append(("Transferring neurons T = S_primary ∩ S_new as a share of the new language's "
                     "specific neurons (LAPE), over continual pre-training",
                     figures.lines(xs, ratio, fig_dir / "transfer_ratio.png",
                                   "|T| / |S_new| over continual pre-training",
                                   "tokens of continual pre-training", "|T| / |S_new|")))
        figs.append(("Number of transferring neurons |T| over continual pre-training",
                     figures.lines(xs, count, fig_dir / "transfer_count.png", "|T|",
                                   "tokens of continual pre-training", "neurons")))
    return Section("Language-specific and transferring neurons (LAPE)", neuron_text(results),
                   figures=figs)


def algorithm1_section(results: dict, fig_dir: Path) -> Section:
    alg_rows = []
    for lang, d in results.get("algorithm1", {}).get("languages", {}).items():
        alg_rows.append({"language": lang, "available (original corpus)": d.get("available"),
                         "alpha": d.get("alpha"), "beta": d.get("beta"),
                         "beta se": d.get("beta_se"), "beta method": d.get("beta_method"),
                         "best checkpoint (tokens)": d.get("best_tokens"),
                         "loss at best": d.get("best_loss"), "P*": d.get("p_star"),
                         "P* 95% CI": ci(*(d.get("p_star_interval") or (None, None))),
                         "eta_p": d.get("eta_p"), "target tokens": d.get("target_tokens"),
                         "target 95% CI": ci(*(d.get("target_interval") or (None, None))),
                         "floor bound": d.get("floor_bound"), "stage call": d.get("stage_call"),
                         "stage p": d.get("stage_p_value"), "decision": d.get("reason")})
    cal_points, cal_rows = {}, []
    for lang, c in results.get("calibration", {}).items():
        if "rows" not in c:
            cal_rows.append({"language": lang, "note": c.get("error")})
            continue
        cal_points[lang] = ([r["p_loss"] for r in c["rows"]], [r["measured_share"] for r in c["rows"]])
        spec = c.get("specificity") or {}
        cal_rows.append({"language": lang, "pearson r": c.get("pearson"), "spearman": c.get("spearman"),
                         "RMSE": c.get("rmse"), "alpha": c.get("alpha"), "beta": c.get("beta"),
                         "checkpoints": len(c["rows"]),
                         "specificity": json.dumps({k: v for k, v in spec.items()
                                                    if not isinstance(v, (list, dict))} or None)})
    figs = []
    if cal_points:
        figs.append(("Calibration of Eq. 1: loss-derived own-system share P against the measured "
                     "share of prompts (averaged over layers) that prefer the new language",
                     figures.calibration(cal_points, fig_dir / "calibration.png", "Eq. 1 calibration")))
    return Section("Algorithm 1 and the calibration of Eq. 1", alg_text(results), figures=figs,
                   tables=[Table("Algorithm 1, every intermediate number", alg_rows),
                           Table("Calibration: P(loss) vs measured working-language share", cal_rows)])


def mixtures_section(results: dict, fig_dir: Path) -> Section:
    mixtures = results.get("mixtures", {})
    mix_rows = []
    for name, m in mixtures.items():
        row = {"mixture": name}
        row.update({f"{k} share": v for k, v in m["shares"].items()})
        row["corpus tokens (1 epoch)"] = sum(m["corpus_tokens"].values())
        mix_rows.append(row)
    figs = []
    if mixtures:
        figs.append(("Token share per language of every compared mixture",
                     figures.mixtures({k: v["shares"] for k, v in mixtures.items()},
                                      fig_dir / "mixtures.png", "Mixtures compared")))
    reg = mixtures.get("regmix", {}).get("meta", {})
    reg_rows = [{"proxy": i, **{f"{k}": round(v, 3) for k, v in p["shares"].items()},
                 "mean val bpb": p["mean_bpb"]} for i, p in enumerate(reg.get("proxies", []))]
    return Section("Mixtures", mixture_text(results), figures=figs, tables=[
        Table("Mixtures (shares of training tokens)", mix_rows),
        Table("RegMix proxy runs (Dirichlet mixtures) and their validation bpb", reg_rows,
              note=f"regression: {json.dumps(reg.get('regression', {}))}")])


def _comparison_figures(protocol: str, rows: list[dict], fig_dir: Path) -> list:
    tab: dict[str, dict[str, tuple]] = {}
    diff: dict[str, dict[str, tuple]] = {}
    for t in rows:
        if t["measure"] == "bpb":
            tab.setdefault(t["mixture"], {})[t["language"]] = (t["mean"], t["ci_low"], t["ci_high"])
            if t["mixture"] != "natural" and t["diff_vs_natural"] is not None:
                diff.setdefault(t["mixture"], {})[t["language"]] = (
                    t["diff_vs_natural"], t["diff_ci_low"], t["diff_ci_high"])
    name = protocol.replace("_", " ")
    figs = [(f"{name}: test bits per byte per language and mixture (mean over seeds, 95% t-interval)",
             figures.comparison(tab, fig_dir / f"comparison_{protocol}.png",
                                f"From scratch, {name}", "test bits per byte"))]
    if diff:
        figs.append((f"{name}: difference in test bits per byte against the natural mixture, "
                     "paired by seed (below 0 = better than natural; 95% t-interval)",
                     figures.comparison(diff, fig_dir / f"difference_{protocol}.png",
                                        f"vs natural, {name}", "Δ test bits per byte", zero_line=True)))
    return figs


def _scratch_tracking_figure(results: dict, fig_dir: Path) -> list:
    track = [r for r in results.get("scratch_runs", []) if len(r.get("checkpoints", [])) > 1]
    xs, ys = {}, {}
    for r in track:
        for lang in results["config"]["new_languages"]:
            pts = [(row["tokens"], (row.get("lens_new_share_mean") or {}).get(lang))
                   for row in r["checkpoints"]]
            pts = [(x, y) for x, y in pts if y is not None]
            if pts:
                xs[f"{r['mixture']}: {lang}"] = [x for x, _ in pts]
                ys[f"{r['mixture']}: {lang}"] = [y for _, y in pts]
    if not xs:
        return []
    return [("Internal states tracked in the from-scratch runs too: share of prompts "
             "preferring the new-language identifier (mean over layers)",
             figures.lines(xs, ys, fig_dir / "scratch_working_language.png",
                           "Working language in from-scratch runs", "training tokens",
                           "share preferring new language"))]


def comparison_section(results: dict, fig_dir: Path) -> Section:
    comp = results.get("comparison", {})
    figs, tables = [], []
    for protocol in ("equal_tokens", "equal_epochs"):
        rows = comp.get(protocol) or []
        if rows:
            figs += _comparison_figures(protocol, rows, fig_dir)
            tables.append(Table(f"From scratch, {protocol.replace('_', ' ')}: per language",
                                [comp_row(t) for t in rows]))
    figs += _scratch_tracking_figure(results, fig_dir)
    return Section("From-scratch comparison at equal compute", comparison_text(results),
                   figures=figs, tables=tables)


def provenance_section(results: dict) -> Section:
    prov = results.get("provenance", {})
    timing = results.get("timings_seconds", {})
    return Section("How this was made", tables=[
        Table("Provenance", [{"key": k, "value": json.dumps(v) if isinstance(v, (dict, list)) else v}
                             for k, v in prov.items() if k != "config"]),
        Table("Step timings (this invocation, seconds)",
              [{"step": k, "seconds": v} for k, v in timing.items()])])
