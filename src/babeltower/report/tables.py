"""The report's tables and curve panels: rows built from ``results.json``, shared by the
HTML sections and the Markdown summary (one source for both)."""

from __future__ import annotations

import math


def fmt_tokens(n: float) -> str:
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


def curve_panels(results: dict) -> tuple[dict, dict]:
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


ARM_LABELS = {"none": "", "replay": " (replay)", "replay_nofacts": " (replay, no fact docs)"}


def knowledge_panels(results: dict) -> tuple[dict, list[dict]]:
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
                                      "end 95% CI": ci(k["lo"][-1], k["hi"][-1])})
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
                              "end 95% CI (seeds)": ci(lo[-1], hi[-1])})
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


def specific_rows(results: dict) -> list[dict]:
    out = []
    for lang in results["config"]["new_languages"]:
        rows = results.get("cpt", {}).get(lang, {}).get("checkpoints", [])
        for label, r in (("start", rows[0] if rows else None), ("end", rows[-1] if rows else None)):
            spec = ((r or {}).get("lens_specific") or {}).get(lang)
            for span in (spec or {}).get("spans", []):
                out.append({"language": lang, "checkpoint": label, "span": span["span"],
                            "share": span.get("share"), "share CI": ci(span.get("share_ci_low"), span.get("share_ci_high")),
                            "control A": span.get("control_a"), "control B": span.get("control_b"),
                            "specific (A - share)": span.get("specific"), "CI": ci(span.get("ci_low"), span.get("ci_high")),
                            "specific new (share - B)": span.get("specific_new"),
                            "CI ": ci(span.get("specific_new_ci_low"), span.get("specific_new_ci_high")),
                            "counterpart margin (nats)": span.get("margin_specific"),
                            "CI  ": ci(span.get("margin_specific_ci_low"), span.get("margin_specific_ci_high")),
                            "prompts": span.get("n_prompts")})
    return out


def comp_row(t: dict) -> dict:
    return {"mixture": t["mixture"], "language": t["language"], "measure": t["measure"],
            "mean": t["mean"], "95% CI": ci(t["ci_low"], t["ci_high"]), "seeds": t["n_seeds"],
            "tokens": t["tokens"], "vs natural": t["diff_vs_natural"],
            "vs natural 95% CI": ci(t["diff_ci_low"], t["diff_ci_high"]),
            "simultaneous CI": ci(t.get("diff_ci_low_simultaneous"), t.get("diff_ci_high_simultaneous")),
            "p (paired t)": t.get("diff_p"), "p Holm": t.get("diff_p_holm"),
            "q BH": t.get("diff_q_bh")}


def ci(lo, hi) -> str:
    if lo is None or hi is None or not (math.isfinite(lo) and math.isfinite(hi)):
        return "–"
    return f"[{lo:.4g}, {hi:.4g}]"


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
                        "difference": d["estimate"], "95% CI": ci(d["lo95"], d["hi95"]),
                        "same wrong answer": sw["rate"], "null": sw["null_mean"],
                        "p (same wrong)": sw["p_value"], "Spearman": sp["rho"],
                        "95% CI ": ci(sp["lo95"], sp["hi95"])})
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
                        "never-taught CI": ci(n.get("never_taught_lo95"), n.get("never_taught_hi95"))})
    return out
