"""The Babel Tower experiment's report: ``report.html``, ``summary.md`` and PNG figures
from the experiment's ``results.json`` dict, one function per section.

Figures are drawn by ``babeltower.report.figures`` (plotting only); this module decides
what goes in the report and writes the text that reads the numbers - including where
they agree or disagree with the paper.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import numpy as np

from babeltower.report import figures
from babeltower.io import atomic_write_text
from babeltower.report.html import Section, Table, fmt_cell, render


def _fmt_tokens(n: float) -> str:
    n = float(n)
    if n >= 1e6:
        return f"{n / 1e6:.2f}M"
    if n >= 1e3:
        return f"{n / 1e3:.0f}k"
    return f"{n:.0f}"


def _series(rows: list[dict], key: str, lang: str) -> list[float]:
    out = []
    for r in rows:
        v = (r.get(key) or {}).get(lang)
        out.append(float("nan") if v is None else float(v))
    return out


def _segments(stage: dict) -> list[dict]:
    perf = stage.get("performance", stage)
    return [{"name": s["name"], "x_start": s["start_x"], "x_end": s["end_x"]}
            for s in perf.get("segments", [])]


def write_report(results: dict, workdir: str | Path) -> Path:
    """Write report.html, summary.md and figures/*.png for one experiment's results."""
    wd = Path(workdir)
    fig_dir = wd / "figures"
    sections = [answer_section(results), setup_section(results),
                stages_section(results, fig_dir), knowledge_section(results, fig_dir),
                replay_section(results), working_language_section(results, fig_dir),
                neurons_section(results, fig_dir), algorithm1_section(results, fig_dir),
                mixtures_section(results, fig_dir), comparison_section(results, fig_dir),
                Section("Where this agrees or disagrees with the paper", _paper_text(results)),
                provenance_section(results)]
    cfg = results["config"]
    subtitle = (f"{results.get('name')} - primary {cfg['primary']}; new {', '.join(cfg['new_languages'])}; "
                f"model preset {cfg['model']['preset']}; seeds {cfg['scratch']['seeds']}. "
                "Every number is in results.json next to this file.")
    atomic_write_text(wd / "summary.md", f"# {results.get('name')}: key tables\n\n{subtitle}\n\n"
                      + markdown_summary(results))
    return render("babeltower: the Babel Tower experiment", subtitle, sections, wd / "report.html")


# ---------------------------------------------------------------------------- sections
def answer_section(results: dict) -> Section:
    comp = results.get("comparison", {})
    return Section("Answer: which mixture, and why", _answer_text(results), tables=[
        Table("Equal tokens: mean test bits-per-byte over all languages (lower is better), "
              "95% t-interval over seeds; difference against natural paired by seed",
              [_comp_row(t) for t in comp.get("equal_tokens", [])
               if t["language"] == "mean" and t["measure"] == "bpb"])])


def setup_section(results: dict) -> Section:
    corpus_rows = [{"language": lang, **info} for lang, info in results.get("corpus", {}).items()]
    return Section("Setup", _setup_text(results), tables=[
        Table("Corpus (packed shards; tokens exclude EOS separators)", corpus_rows)])


def _curve_panels(results: dict) -> tuple[dict, dict]:
    """Per new language: the performance curve and the bpb curves, with stages shaded."""
    primary = results["config"]["primary"]
    cpt, stages = results.get("cpt", {}), results.get("stages", {})
    perf_curves, bpb_curves = {}, {}
    for lang in results["config"]["new_languages"]:
        rows = cpt.get(lang, {}).get("checkpoints", [])
        if not rows:
            continue
        x = [r["tokens"] for r in rows]
        st = stages.get(lang, {})
        perf = st.get("performance", {})
        label = results.get("performance_measure", {}).get(lang, "performance")
        perf_curves[lang] = {"x": perf.get("x", x), "series": {label: perf.get("y", []),
                                                               "fitted (test's model)": perf.get("fitted", [])},
                             "segments": _segments(st), "kind": perf.get("kind", ""),
                             "ylabel": label.split(" (")[0]}
        bpb_curves[lang] = {"x": x, "series": {f"{lang} bpb": _series(rows, "bpb", lang),
                                               f"{primary} bpb": _series(rows, "bpb", primary)},
                            "segments": _segments(st), "kind": perf.get("kind", ""),
                            "ylabel": "bits per byte (validation)"}
    return perf_curves, bpb_curves


def stages_section(results: dict, fig_dir: Path) -> Section:
    perf_curves, bpb_curves = _curve_panels(results)
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
    return Section("Continual pre-training: the three stages", _stages_text(results),
                   figures=figs, tables=tables)


def _power_cell(p: dict | None, key: str) -> str:
    """Detection (and the larger false-positive rate) of one design, either shape."""
    if not p:
        return "–"
    if "effect" in p:            # item-level simulation at the run's own fitted churn
        d = p["effect"][key]
        fp = max(p[c][key]["rate"] for c in ("monotone", "flat") if c in p)
        return f"{d['rate']:.2f} [{d['ci95'][0]:.2f}, {d['ci95'][1]:.2f}] (FP <= {fp:.2f})"
    if key not in p:
        return "–"
    d = p[key]["detection"]
    fp = max(p[key]["false_positive_monotone"]["rate"], p[key]["false_positive_flat"]["rate"])
    return f"{d['rate']:.2f} [{d['ci95'][0]:.2f}, {d['ci95'][1]:.2f}] (FP <= {fp:.2f}, peak {p[key]['base']:.2f})"


def stage_rows(results: dict) -> list[dict]:
    rows = []
    for lang, st in results.get("stages", {}).items():
        perf = st.get("performance", {})
        tr = st.get("transfer") or {}
        pooled = (st.get("item_test") or {}).get("pooled") or {}
        power = st.get("power") or {}
        item = "effect" in power
        rows.append({
            "language": lang, "signal": st.get("performance_measure"), "call": perf.get("call"),
            "drop p-value": perf.get("p_value"), "p (items)": pooled.get("p_items"),
            "p (seeds)": pooled.get("p_seeds"), "rise p-value": perf.get("rise_p_value"),
            "calls per seed": ", ".join(c["call"] for c in (st.get("item_test") or {}).get("per_seed", [])),
            "binomial-model call (first seed)": (st.get("binomial_model") or {}).get("call"),
            "end of translation (tokens)": perf.get("peak_x"),
            "start of stabilization (tokens)": perf.get("stable_x"),
            ("power per run, fitted churn" if item else "power (own peak)"):
                _power_cell(power, "per_run" if item else "at_observed_peak"),
            ("power pooled over seeds" if item else "power (peak 0.3)"):
                _power_cell(power, "pooled" if item else "at_0.3"),
            "transfer curve call": tr.get("call"), "transfer drop p": tr.get("p_value"),
            "corroboration agreement": st.get("agreement"), "reason": perf.get("reason")})
    return rows


def seed_rows(results: dict) -> list[dict]:
    """Each seed's own calls (performance and transfer) next to the pooled one."""
    rows = []
    for lang, st in results.get("stages", {}).items():
        it = st.get("item_test") or {}
        tr = (st.get("transfer") or {}).get("per_seed") or []
        seeds = [s["seed"] for s in (results.get("cpt", {}).get(lang, {}).get("seeds") or [])]
        for i, c in enumerate(it.get("per_seed", [])):
            t = tr[i] if i < len(tr) else {}
            rows.append({"language": lang, "seed": seeds[i] if i < len(seeds) else i,
                         "performance call": c["call"], "drop p": c["drop_p"],
                         "drop shape": c.get("drop_shape"),
                         "transfer call": t.get("call"), "transfer drop p": t.get("drop_p"),
                         "seed drop (split test)": ((it.get("pooled") or {}).get("seed_drops") or [None] * (i + 1))[i]})
        if it:
            p = it["pooled"]
            rows.append({"language": lang, "seed": "pooled", "performance call": p["call"],
                         "drop p": st["performance"].get("p_value"), "drop shape": p.get("drop_shape"),
                         "transfer call": (st.get("transfer") or {}).get("call"),
                         "transfer drop p": (st.get("transfer") or {}).get("p_value"),
                         "seed drop (split test)": p.get("mean_drop")})
    return rows


def _knowledge_series(rows: list[dict], lang: str, cls: str | None, query: str) -> dict:
    """{x, y, lo, hi} of one class asked in one language over checkpoints (Wilson bands)."""
    x, y, lo, hi = [], [], [], []
    for r in rows:
        hits = [c for c in (r.get("knowledge") or {}).get("curves", [])
                if (cls is None or c["class"] == cls) and c["language"] == query
                and c["target"] in (lang, "all")]
        if len(hits) != 1:
            continue
        c = hits[0]
        x.append(r["tokens"])
        y.append(c["accuracy"])
        lo.append(c["lo95"])
        hi.append(c["hi95"])
    return {"x": x, "y": y, "lo": lo, "hi": hi}


def knowledge_section(results: dict, fig_dir: Path) -> Section:
    """Per-class knowledge curves over CPT, asked in the new language and in the primary,
    with the replay arm dashed."""
    panels, table = _knowledge_panels(results)
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
    return Section("Controlled knowledge: what transfers, and when", _knowledge_text(results),
                   figures=figs, tables=tables)


ARM_LABELS = {"none": "", "replay": " (replay)", "replay_nofacts": " (replay, no fact docs)"}


def _knowledge_panels(results: dict) -> tuple[dict, list[dict]]:
    """The figure's panels (one per new language x query language, and the transfer curve
    across arms) and the table rows; mean over seeds with its t-interval and each seed
    thin where the run has seeds, Wilson bands of the one run otherwise."""
    if results.get("seed_curves", {}).get("none"):
        return _seed_knowledge_panels(results)
    primary = results["config"]["primary"]
    panels, chance, table = {}, None, []
    for lang in results["config"]["new_languages"]:
        arms = {"": results.get("cpt", {}).get(lang), " (replay)": results.get("cpt_replay", {}).get(lang)}
        for query in (lang, primary):
            series, xs = {}, {}
            for suffix, run in arms.items():
                rows = (run or {}).get("checkpoints", [])
                for cls in ("primary-only", "shared", "new-only"):
                    k = _knowledge_series(rows, lang, cls, query)
                    if k["x"]:
                        label = f"{cls}{suffix}"
                        series[label] = {"y": k["y"], "lo": k["lo"], "hi": k["hi"], "dashed": bool(suffix)}
                        xs[label] = k["x"]
                        chance = (rows[0].get("knowledge") or {}).get("chance", chance)
                        table.append({"new language": lang, "asked in": query, "class": cls,
                                      "arm": "replay" if suffix else "no replay",
                                      "start": k["y"][0], "max": max(k["y"]), "end": k["y"][-1],
                                      "end 95% CI": _ci(k["lo"][-1], k["hi"][-1])})
            if series:
                first = next(iter(xs.values()))
                panels[f"{lang} CPT: facts asked in {query}"] = {
                    "x": first, "x_by_series": xs, "series": series, "chance": chance,
                    "ylabel": "accuracy (answer set)"}
    return panels, table


def _band(c: dict, dashed: bool = False) -> dict:
    lo, hi = (c.get("ci95") or [None, None])
    return {"y": c["mean"], "lo": lo, "hi": hi, "dashed": dashed, "per_seed": c["per_seed"]}


def _seed_knowledge_panels(results: dict) -> tuple[dict, list[dict]]:
    primary = results["config"]["primary"]
    chance = 1 / ((results["config"].get("corpus") or {}).get("knowledge") or {}).get("n_answers", 20)
    panels, table = {}, []
    for lang in results["config"]["new_languages"]:
        for arm, curves in results["seed_curves"].items():
            for name, c in (curves.get(lang) or {}).items():
                if c.get("form") is not None:
                    continue
                lo, hi = c.get("ci95") or [[None], [None]]
                table.append({"new language": lang, "arm": arm, "curve": name,
                              "seeds": c["n_seeds"], "items": c["n_items"],
                              "start": c["mean"][0], "max": max(c["mean"]), "end": c["mean"][-1],
                              "end 95% CI (seeds)": _ci(lo[-1], hi[-1])})
        none = results["seed_curves"]["none"].get(lang) or {}
        for query in (lang, primary):
            series = {n.split(" asked")[0]: _band(c) for n, c in none.items()
                      if c.get("query_language") == query and c.get("form") is None}
            if series:
                panels[f"{lang} CPT: facts asked in {query}"] = {
                    "x": next(iter(none.values()))["x"], "series": series, "chance": chance,
                    "ylabel": "accuracy (answer set)"}
        across = {}
        for arm, curves in results["seed_curves"].items():
            c = (curves.get(lang) or {}).get(f"primary-only asked in {lang}")
            if c:
                across[f"transfer{ARM_LABELS.get(arm, arm)}"] = _band(c, dashed=arm != "none")
        if across:
            panels[f"{lang}: primary-only facts asked in {lang}, every arm"] = {
                "x": next(iter(none.values()))["x"] if none else [], "series": across,
                "chance": chance, "ylabel": "accuracy (answer set)"}
        forms = {c["form"]: _band(c) for c in none.values() if c.get("form")}
        if forms:
            panels[f"{lang}: every class asked in {lang}, per query form"] = {
                "x": next(iter(none.values()))["x"], "series": forms, "chance": chance,
                "ylabel": "accuracy (answer set)"}
    return panels, table


def exposure_rows(results: dict) -> list[dict]:
    """Reads per fact from each run's own sampler (median [min, max]) per arm x seed."""
    rows = []
    prim = results.get("primary_exposures") or {}
    for key, st in (prim.get("by_language_class") or {}).items():
        rows.append({"run": "primary phase", "seed": results["config"].get("seed"),
                     "facts": key, "median": st.get("median"),
                     "range": f"[{st.get('min')}, {st.get('max')}]"})
    for arm in ("cpt", "cpt_replay", "cpt_replay_nofacts"):
        for lang, run in (results.get(arm) or {}).items():
            for s in run.get("seeds") or []:
                for key, st in ((s.get("exposures") or {}).get("by_language_class") or {}).items():
                    rows.append({"run": f"{arm} {lang}", "seed": s["seed"], "facts": key,
                                 "median": st.get("median"),
                                 "range": f"[{st.get('min')}, {st.get('max')}]"})
    return rows


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
                         "95% CI": _ci(te.get("ci_low", te.get("lo95")), te.get("ci_high", te.get("hi95"))),
                         "primary-only asked in primary, end": pe.get("mean", pe.get("accuracy")),
                         "95% CI ": _ci(pe.get("ci_low", pe.get("lo95")), pe.get("ci_high", pe.get("hi95"))),
                         "primary bpb, end": a.get("primary_bpb_end")})
        for name, d in (r.get("differences") or {}).items():
            d = d or {}
            rows.append({"language": lang, "arm": f"{name} minus no replay",
                         "transfer at end": d.get("difference"),
                         "95% CI": _ci(d.get("ci_low"), d.get("ci_high")),
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
        cols = [_fmt_tokens(r["tokens"]) for r in rows]
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
    return Section("Working language per layer (logit lens)", _lens_text(results), figures=figs,
                   tables=[Table("Controlled lens at the first and last checkpoint: the share "
                                 "preferring the new identifier, its two controls and the specific "
                                 "effects, with cluster-bootstrap 95% intervals over prompts",
                                 _specific_rows(results))])


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
                                     [_fmt_tokens(r["tokens"]) for r in rows],
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


def _specific_rows(results: dict) -> list[dict]:
    out = []
    for lang in results["config"]["new_languages"]:
        rows = results.get("cpt", {}).get(lang, {}).get("checkpoints", [])
        for label, r in (("start", rows[0] if rows else None), ("end", rows[-1] if rows else None)):
            spec = ((r or {}).get("lens_specific") or {}).get(lang)
            for span in (spec or {}).get("spans", []):
                out.append({"language": lang, "checkpoint": label, "span": span["span"],
                            "share": span.get("share"), "share CI": _ci(span.get("share_ci_low"), span.get("share_ci_high")),
                            "control A": span.get("control_a"), "control B": span.get("control_b"),
                            "specific (A - share)": span.get("specific"), "CI": _ci(span.get("ci_low"), span.get("ci_high")),
                            "specific new (share - B)": span.get("specific_new"),
                            "CI ": _ci(span.get("specific_new_ci_low"), span.get("specific_new_ci_high")),
                            "counterpart margin (nats)": span.get("margin_specific"),
                            "CI  ": _ci(span.get("margin_specific_ci_low"), span.get("margin_specific_ci_high")),
                            "prompts": span.get("n_prompts")})
    return out


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
    return Section("Language-specific and transferring neurons (LAPE)", _neuron_text(results),
                   figures=figs)


def algorithm1_section(results: dict, fig_dir: Path) -> Section:
    alg_rows = []
    for lang, d in results.get("algorithm1", {}).get("languages", {}).items():
        alg_rows.append({"language": lang, "available (original corpus)": d.get("available"),
                         "alpha": d.get("alpha"), "beta": d.get("beta"),
                         "beta se": d.get("beta_se"), "beta method": d.get("beta_method"),
                         "best checkpoint (tokens)": d.get("best_tokens"),
                         "loss at best": d.get("best_loss"), "P*": d.get("p_star"),
                         "P* 95% CI": _ci(*(d.get("p_star_interval") or (None, None))),
                         "eta_p": d.get("eta_p"), "target tokens": d.get("target_tokens"),
                         "target 95% CI": _ci(*(d.get("target_interval") or (None, None))),
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
    return Section("Algorithm 1 and the calibration of Eq. 1", _alg_text(results), figures=figs,
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
    return Section("Mixtures", _mixture_text(results), figures=figs, tables=[
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
                                [_comp_row(t) for t in rows]))
    figs += _scratch_tracking_figure(results, fig_dir)
    return Section("From-scratch comparison at equal compute", _comparison_text(results),
                   figures=figs, tables=tables)


def provenance_section(results: dict) -> Section:
    prov = results.get("provenance", {})
    timing = results.get("timings_seconds", {})
    return Section("How this was made", tables=[
        Table("Provenance", [{"key": k, "value": json.dumps(v) if isinstance(v, (dict, list)) else v}
                             for k, v in prov.items() if k != "config"]),
        Table("Step timings (this invocation, seconds)",
              [{"step": k, "seconds": v} for k, v in timing.items()])])


def _comp_row(t: dict) -> dict:
    return {"mixture": t["mixture"], "language": t["language"], "measure": t["measure"],
            "mean": t["mean"], "95% CI": _ci(t["ci_low"], t["ci_high"]), "seeds": t["n_seeds"],
            "tokens": t["tokens"], "vs natural": t["diff_vs_natural"],
            "vs natural 95% CI": _ci(t["diff_ci_low"], t["diff_ci_high"]),
            "simultaneous CI": _ci(t.get("diff_ci_low_simultaneous"), t.get("diff_ci_high_simultaneous")),
            "p (paired t)": t.get("diff_p"), "p Holm": t.get("diff_p_holm"),
            "q BH": t.get("diff_q_bh")}


def _ci(lo, hi) -> str:
    if lo is None or hi is None or not (math.isfinite(lo) and math.isfinite(hi)):
        return "–"
    return f"[{lo:.4g}, {hi:.4g}]"


# ---------------------------------------------------------------------------- the words
def _holm_settled(t: dict) -> bool:
    p = t.get("diff_p_holm")
    return p is not None and math.isfinite(p) and p < 0.05


def _answer_text(r: dict) -> str:
    comp = r.get("comparison", {})
    rows = {(t["mixture"], t["measure"]): t for t in comp.get("equal_tokens", [])
            if t["language"] == "mean"}
    if not rows:
        return "No from-scratch comparison was run."
    lines = []
    runs = r.get("scratch_runs", [])
    by_name = {x["name"]: x for x in runs if not x.get("same_run_as")}
    opt_runs = [x for x in runs if x["mixture"] == "optimized"]
    if opt_runs and all(by_name.get(x.get("same_run_as"), {}).get("mixture") == "natural"
                        for x in opt_runs):
        # the same runs on both sides: a difference of exactly 0 is no finding
        lines.append("!Optimised = natural: Algorithm 1 kept the original corpus as it is, so "
                     "both sides of the comparison are the same runs and there is nothing to "
                     "compare (the stage test's call and power say why; the table shows the "
                     "natural corpus's own scores).")
        rows = {}
    for measure, what, better in (("bpb", "mean test bits per byte", "lower"),
                                  ("transfer", "knowledge transfer (primary-only facts asked in "
                                               "the new languages, test queries)", "higher")):
        opt, nat = rows.get(("optimized", measure)), rows.get(("natural", measure))
        if not (opt and nat):
            continue
        verdict = ("the difference survives Holm's correction over every mixture x language x "
                   "measure compared" if _holm_settled(opt) else
                   "the difference does not survive Holm's correction: not established")
        lines.append(f"!Optimised vs natural, {what} ({better} is better): {opt['mean']:.4f} vs "
                     f"{nat['mean']:.4f}; paired difference {opt['diff_vs_natural']:+.4f} (95% CI "
                     f"{_ci(opt['diff_ci_low'], opt['diff_ci_high'])}, simultaneous "
                     f"{_ci(opt.get('diff_ci_low_simultaneous'), opt.get('diff_ci_high_simultaneous'))}, "
                     f"Holm p {_p(opt.get('diff_p_holm'))}, {opt['n_seeds']} seeds): {verdict}.")
    trained = {x["name"]: x["mixture"] for x in runs if not x.get("same_run_as")}
    shared = sorted({f"{x['mixture']} = {trained.get(x['same_run_as'])}" for x in runs
                     if x.get("same_run_as") and trained.get(x["same_run_as"]) != x["mixture"]})
    if shared:
        lines.append("Identical mixtures share their runs (same shares, seed and tokens): "
                     + ", ".join(shared) + ".")
    alg = r.get("algorithm1", {}).get("languages", {})
    cut = [f"{k} to {v['target_tokens']:,} of {v['available']:,} tokens"
           for k, v in alg.items() if v.get("target_tokens") is not None
           and v.get("available") and v["target_tokens"] < v["available"]]
    lines.append("Algorithm 1 down-sampled " + ("; ".join(cut) if cut else "nothing (every "
                 "language kept all its data; the table in its section says why)") + ".")
    return "\n\n".join(lines)


def _p(v) -> str:
    return "–" if v is None or not math.isfinite(v) else f"{v:.3g}"


def _setup_text(r: dict) -> str:
    c = r["config"]
    return (f"Primary language {c['primary']}; new languages {', '.join(c['new_languages'])}. "
            f"Model preset '{c['model']['preset']}', context {c['model']['seq_len']}. "
            f"Primary-only pre-training: {c['primary_phase']['tokens']:,} tokens at lr "
            f"{c['primary_phase']['lr']}. Continual pre-training per new language: "
            f"{c['continual']['tokens']:,} tokens at lr {c['continual']['lr']} "
            f"(warmup {c['continual']['warmup_tokens']} tokens, min lr ratio "
            f"{c['continual'].get('min_lr_ratio')}), checkpoints {c['continual'].get('checkpoints')} "
            f"({c['continual'].get('n_checkpoints')}); primary replay arm "
            f"{c['continual'].get('replay_share', 0):.0%}. "
            f"From scratch: {c['scratch']['tokens']:,} tokens per mixture, seeds {c['scratch']['seeds']}; "
            f"original corpus shares {c['scratch'].get('original') or 'natural'}. "
            f"Performance signal for stages and Algorithm 1: {c['evaluation']['performance']} "
            "(at CPU scale pass@k is zero; see docs/results.md).")


def _stages_text(r: dict) -> str:
    parts = []
    item = False
    for lang, st in r.get("stages", {}).items():
        p = st.get("performance", {})
        item = item or "item_test" in st
        parts.append(f"{lang}: {p.get('call')} (drop p {_p(p.get('p_value'))}, rise p "
                     f"{_p(p.get('rise_p_value'))}; {p.get('reason', '')}).")
    if item:
        return ("The same items are scored at every checkpoint, so the curve's wiggles are "
                "training churn, not fresh draws: the stage test resamples whole item "
                "trajectories (clusters of items sharing an answer), and a drop is called on "
                "the mean over the continual seeds only when that item-level test AND a "
                "seed-as-unit test (the first seed locates the drop, the others' drops are read "
                "there: a split sample) "
                "both reject. The binomial-model call is kept beside it with its assumption "
                "stated. The power columns say what this design could have detected under the "
                "churn fitted to this run's items (docs/stages.md). " + " ".join(parts))
    return ("A stage test with the evaluation's own noise model (binomial counts per "
            "checkpoint): a monotone (isotonic) fit against one that allows a drop after any "
            "running maximum, p-value from a parametric bootstrap under a flat curve; a rise "
            "test before the drop. The power columns say what this schedule and eval size could "
            "have detected (docs/stages.md). " + " ".join(parts))


def _knowledge_text(r: dict) -> str:
    k = (r["config"].get("corpus") or {}).get("knowledge") or {}
    keys = k.get("keys") or ["same"]
    return (f"Synthetic facts injected into the corpus ({k.get('facts_per_class')} per class, "
            f"{k.get('exposures')} renderings each, answers from a set of {k.get('n_answers')}; "
            "docs/knowledge.md): primary-only facts appear only in the primary corpus, shared in "
            "both, new-only only in the new language's, never-taught nowhere (their accuracy is "
            "the measured chance). Every fact is asked with a query form its training text "
            "never used and that mirrors no other language's form, in the new language's own "
            "syntax and in the primary's, after the EOS that precedes every training document. "
            + (f"Key variants: {', '.join(keys)} - a 'mapped' fact has a different identifier "
               "in each language, bound by a declared map, so answering it in the new language "
               "needs more than matching the primary's string; a 'decoy' query puts the primary "
               "key in the new language's slot with a map to a name taught nowhere. "
               if "mapped" in keys else "")
            + "A primary-only fact answered in the new language is knowledge carried over from "
            "the primary language; the per-fact agreement table says whether the SAME facts are "
            "known in both languages (the evidence of transfer is that link, not a count).")


def agreement_rows(results: dict) -> list[dict]:
    """Per-fact agreement (primary vs new language) at the first, best and last
    checkpoints of the first seed, per key and taught class."""
    out = []
    for lang, kc in (results.get("knowledge_controls") or {}).items():
        ag = kc.get("agreement") or []
        cks = list(dict.fromkeys(a["checkpoint"] for a in ag))
        picks = {cks[i] for i in (kc.get("null_checkpoints") or []) if i < len(cks)}
        for a in ag:
            if a["checkpoint"] not in picks:
                continue
            d, sw, sp = a["difference"], a["same_wrong"], a["spearman"]
            out.append({"language": lang, "tokens": a.get("tokens"), "class": ",".join(a["classes"] or []),
                        "key": a.get("key"), "facts": a["facts"],
                        "P(right new | right primary)": a["p_b_given_right_a"]["rate"],
                        "P(right new | wrong primary)": a["p_b_given_wrong_a"]["rate"],
                        "difference": d["estimate"], "95% CI": _ci(d["lo95"], d["hi95"]),
                        "same wrong answer": sw["rate"], "null": sw["null_mean"],
                        "p (same wrong)": sw["p_value"], "Spearman": sp["rho"],
                        "95% CI ": _ci(sp["lo95"], sp["hi95"])})
    return out


def null_rows(results: dict) -> list[dict]:
    """Each cell's accuracy next to chance, the shuffled-answer null and the never-taught
    class in the same language and key (first, best, last checkpoint of the first seed)."""
    out = []
    for lang, kc in (results.get("knowledge_controls") or {}).items():
        for n in kc.get("nulls") or []:
            if n.get("class") == "never-taught":
                continue
            out.append({"language": lang, "tokens": n.get("tokens"), "class": n.get("class"),
                        "asked in": n.get("language"), "key": n.get("key"),
                        "accuracy": n.get("accuracy"), "n": n.get("n"), "chance": n.get("chance"),
                        "shuffled null": n.get("shuffled_expected"),
                        "p above shuffled": n.get("p_above_shuffled"),
                        "never-taught": n.get("never_taught_accuracy"),
                        "never-taught CI": _ci(n.get("never_taught_lo95"), n.get("never_taught_hi95"))})
    return out


def _lens_text(r: dict) -> str:
    return ("Each layer's hidden state at the prediction position is decoded through the "
            "model's own final norm (recomputed for that layer) and unembedding (first-token "
            "attribution at every layer; whole identifiers at the output layer in the span "
            "table). The share preferring the new identifier over its primary counterpart "
            "is read against two controls: A, the new token against UNRELATED primary tokens; "
            "B, other pairs' new tokens against this primary token. Only the difference from "
            "the controls (the specific effect, with a cluster-bootstrap interval over prompts) "
            "is evidence of a counterpart relation - a low raw share alone is also what an "
            "unseen new-language token gives. Prompts sharing a text count once; layer 0 "
            "(embeddings) is reported apart.")


def _neuron_text(r: dict) -> str:
    return (_lape_applicability_text(r) + "LAPE as Tang et al. (2024) define it: for every MLP neuron and language, the "
            "probability that act_fn(gate_proj(x)) is positive over >= 64k held-out tokens from "
            ">= 20 documents; the lowest-entropy neurons (top_rate) above the 95th percentile of "
            "ALL probabilities are language-specific, assigned to each language whose "
            "probability exceeds that bar. Transferring neurons are specific to both the primary "
            "and the new language. The paper reports their number falling over training.")


def _lape_applicability_text(r: dict) -> str:
    """Whether LAPE means anything here: languages read and the kept neurons' entropy."""
    out = []
    for lang in r["config"]["new_languages"]:
        rows = [x for x in r.get("cpt", {}).get(lang, {}).get("checkpoints", [])
                if "lape_applicable" in x]
        if not rows:
            continue
        last = rows[-1]
        ent = ((last.get("lape_entropy") or {}).get("kept") or {}).get("median")
        verdict = "applicable" if last["lape_applicable"] else f"NOT applicable: {last['lape_reason']}"
        out.append(f"LAPE over {', '.join(last.get('lape_languages') or [])} at the last "
                   f"checkpoint: {verdict} (kept neurons' median normalised entropy "
                   f"{_p(ent)}; 1 = the same firing rate in every language). ")
    return "".join(out)


def _alg_text(r: dict) -> str:
    return ("Eq. 1: P(loss) = (alpha - loss)/(alpha - beta), alpha = loss at the start of "
            "continual pre-training, beta = the converged loss, a fitted asymptote of the CPT "
            "loss curve with its standard error carried into P* and eta_t as intervals. Guard "
            "rails: a language whose stage call is not rise_then_drop, or whose drop p-value is "
            "above the threshold, keeps all its data; c* lies inside the detected translation "
            "stage; no language falls below the configured floor. The calibration table checks "
            "whether the loss-derived P tracks the measured working-language share, next to the "
            "same statistic for the primary language's bpb and monotone null curves (a high r "
            "that any saturating curve reaches is not evidence).")


def _mixture_text(r: dict) -> str:
    return ("natural = the train split's distribution; uniform; temperature tau (p ∝ n^tau); "
            "UniMax (uniform budget, capped at one epoch, leftovers redistributed); optimized = "
            "Algorithm 1; regmix = the regression's predicted best over Dirichlet proxy runs.")


def _comparison_text(r: dict) -> str:
    return ("Every mixture is trained from scratch with the same model and the same number of "
            "tokens (equal tokens), and natural vs optimized also at one epoch of their own "
            "corpus (equal epochs, the paper's second protocol). Scores are on the held-out test "
            "split. Intervals are Student-t over seeds, paired against natural by seed; p-values "
            "are adjusted with Holm (and Benjamini-Hochberg) over every mixture x language x "
            "measure of a protocol, with simultaneous (Bonferroni) intervals next to them.")


def _paper_text(r: dict) -> str:
    st = r.get("stages", {})
    kinds = {lang: s.get("performance", {}).get("call") for lang, s in st.items()}
    three = [k for k, v in kinds.items() if v == "rise_then_drop"]
    mono = [k for k, v in kinds.items() if v == "monotone"]
    out = [f"Stages: the paper finds a translation-stage peak for PHP and C# and none for C++. "
           f"Here: rise_then_drop for {', '.join(three) or 'no language'}; monotone for "
           f"{', '.join(mono) or 'no language'} (the stage table gives each call's p-value and "
           "the power this run had)."]
    switch = []
    for lang, run in r.get("cpt", {}).items():
        rows = run.get("checkpoints", [])

        def first_over_half(layer: int):
            for row in rows:
                share = ((row.get("lens_layers") or {}).get(lang) or {}).get("new_pref_share") or []
                if len(share) > abs(layer) and share[layer] > 0.5:
                    return row["tokens"]
            return None
        top, low = first_over_half(-1), first_over_half(1)
        switch.append(f"{lang}: output layer at {_fmt_tokens(top) if top is not None else 'never'}, "
                      f"layer 1 at {_fmt_tokens(low) if low is not None else 'never'}")
    if switch:
        out.append("Working language (the paper: the new language first runs through the primary "
                   "language's system). Tokens of continual pre-training until most new-language "
                   "prompts prefer the new identifier over its primary counterpart: "
                   + "; ".join(switch) + ". A later switch in the lower layers is the "
                   "Babel-like ordering.")
    cal = r.get("calibration", {})
    rs = {k: v.get("pearson") for k, v in cal.items() if v.get("pearson") is not None}
    if rs:
        out.append("Eq. 1 calibration (never checked in the paper): Pearson r between P(loss) and "
                   "the measured share " + ", ".join(f"{k} {v:.2f}" for k, v in rs.items()) + ".")
    out.append("Scale: the paper trains 1.3B/6.7B models on tens of billions of tokens and scores "
               "pass@1; this run is a CPU-scale reproduction, so its performance signal is cloze "
               "accuracy or bits per byte, and negative results are reported as measured.")
    return "\n\n".join(out)


# ---------------------------------------------------------------------------- markdown
def _md_table(rows: list[dict]) -> str:
    if not rows:
        return "(no rows)\n"
    cols: list[str] = []
    for r in rows:
        cols += [c for c in r if c not in cols]
    out = ["| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
    out += ["| " + " | ".join(fmt_cell(r.get(c)) for c in cols) + " |" for r in rows]
    return "\n".join(out) + "\n"


def markdown_summary(results: dict) -> str:
    """The report's key tables as Markdown (for docs/results.md and issue threads)."""
    parts = []
    parts.append("### Stages (stage test with p-values and this run's power)\n\n"
                 + _md_table(stage_rows(results)))
    parts.append("### Controlled knowledge (start, maximum, end of CPT)\n\n"
                 + _md_table(_knowledge_panels(results)[1]))
    parts.append("### Controlled lens (first and last CPT checkpoint)\n\n"
                 + _md_table(_specific_rows(results)))
    rep = replay_section(results)
    if rep.tables:
        parts.append("### Replay control\n\n" + rep.text.replace("\n\n", " ") + "\n\n"
                     + _md_table(rep.tables[0].rows))
    cpt_rows = []
    for lang, run in results.get("cpt", {}).items():
        rows = run["checkpoints"]
        first, last = rows[0], rows[-1]
        prim = results["config"]["primary"]

        def g(r, k, l=lang):
            return (r.get(k) or {}).get(l)
        cpt_rows.append({"language": lang, "checkpoints": len(rows), "tokens": last["tokens"],
                         "new bpb start": g(first, "bpb"), "new bpb end": g(last, "bpb"),
                         f"{prim} bpb start": g(first, "bpb", prim), f"{prim} bpb end": g(last, "bpb", prim),
                         "cloze start": g(first, "cloze_new"), "cloze end": g(last, "cloze_new"),
                         "prefers new (last layer) start": g(first, "lens_new_share_last"),
                         "prefers new (last layer) end": g(last, "lens_new_share_last"),
                         "prefers new (layer mean) start": g(first, "lens_new_share_mean"),
                         "prefers new (layer mean) end": g(last, "lens_new_share_mean"),
                         "|T| start": g(first, "transfer_count"), "|T| end": g(last, "transfer_count")})
    parts.append("### Continual pre-training, first vs last checkpoint\n\n" + _md_table(cpt_rows))
    alg = results.get("algorithm1", {}).get("languages", {})
    parts.append("### Algorithm 1\n\n" + _md_table([
        {"language": k, "available": d.get("available"), "alpha": d.get("alpha"), "beta": d.get("beta"),
         "best (tokens)": d.get("best_tokens"), "P*": d.get("p_star"), "target": d.get("target_tokens"),
         "decision": d.get("reason")} for k, d in alg.items()]))
    cal = results.get("calibration", {})
    parts.append("### Eq. 1 calibration (P from loss vs measured share, per checkpoint)\n\n" + _md_table([
        {"language": k, "pearson": c.get("pearson"), "spearman": c.get("spearman"), "rmse": c.get("rmse"),
         "checkpoints": len(c.get("rows", []))} for k, c in cal.items()]))
    comp = results.get("comparison", {})
    for protocol in ("equal_tokens", "equal_epochs"):
        rows = [_comp_row(t) for t in comp.get(protocol) or [] if t["measure"] == "bpb"]
        if rows:
            parts.append(f"### From scratch, {protocol.replace('_', ' ')}: test bits per byte "
                         "(mean over seeds, 95% t-interval; paired difference vs natural)\n\n"
                         + _md_table(rows))
    return "\n".join(parts)
