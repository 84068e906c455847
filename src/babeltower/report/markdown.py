"""The report's key tables as Markdown (``summary.md``; for docs/results.md and issue
threads), from the same row builders as the HTML (``report.tables``)."""

from __future__ import annotations

from babeltower.report.html import fmt_cell
from babeltower.report.sections import replay_section
from babeltower.report.tables import comp_row, knowledge_panels, specific_rows, stage_rows


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
                 + _md_table(knowledge_panels(results)[1]))
    parts.append("### Controlled lens (first and last CPT checkpoint)\n\n"
                 + _md_table(specific_rows(results)))
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
        rows = [comp_row(t) for t in comp.get(protocol) or [] if t["measure"] == "bpb"]
        if rows:
            parts.append(f"### From scratch, {protocol.replace('_', ' ')}: test bits per byte "
                         "(mean over seeds, 95% t-interval; paired difference vs natural)\n\n"
                         + _md_table(rows))
    return "\n".join(parts)
