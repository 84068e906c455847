"""The report's words: the paragraphs that read the numbers of ``results.json`` - what
was measured, with which test and power, and where it agrees or disagrees with the
paper. Plain functions of the results dict; no figures, no tables."""

from __future__ import annotations

import math

from babeltower.report.tables import ci, fmt_tokens


def _holm_settled(t: dict) -> bool:
    p = t.get("diff_p_holm")
    return p is not None and math.isfinite(p) and p < 0.05


def answer_text(r: dict) -> str:
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
                     f"{ci(opt['diff_ci_low'], opt['diff_ci_high'])}, simultaneous "
                     f"{ci(opt.get('diff_ci_low_simultaneous'), opt.get('diff_ci_high_simultaneous'))}, "
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


def setup_text(r: dict) -> str:
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


def stages_text(r: dict) -> str:
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


def knowledge_text(r: dict) -> str:
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


def lens_text(r: dict) -> str:
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


def neuron_text(r: dict) -> str:
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


def alg_text(r: dict) -> str:
    return ("Eq. 1: P(loss) = (alpha - loss)/(alpha - beta), alpha = loss at the start of "
            "continual pre-training, beta = the converged loss, a fitted asymptote of the CPT "
            "loss curve with its standard error carried into P* and eta_t as intervals. Guard "
            "rails: a language whose stage call is not rise_then_drop, or whose drop p-value is "
            "above the threshold, keeps all its data; c* lies inside the detected translation "
            "stage; no language falls below the configured floor. The calibration table checks "
            "whether the loss-derived P tracks the measured working-language share, next to the "
            "same statistic for the primary language's bpb and monotone null curves (a high r "
            "that any saturating curve reaches is not evidence).")


def mixture_text(r: dict) -> str:
    return ("natural = the train split's distribution; uniform; temperature tau (p ∝ n^tau); "
            "UniMax (uniform budget, capped at one epoch, leftovers redistributed); optimized = "
            "Algorithm 1; regmix = the regression's predicted best over Dirichlet proxy runs.")


def comparison_text(r: dict) -> str:
    return ("Every mixture is trained from scratch with the same model and the same number of "
            "tokens (equal tokens), and natural vs optimized also at one epoch of their own "
            "corpus (equal epochs, the paper's second protocol). Scores are on the held-out test "
            "split. Intervals are Student-t over seeds, paired against natural by seed; p-values "
            "are adjusted with Holm (and Benjamini-Hochberg) over every mixture x language x "
            "measure of a protocol, with simultaneous (Bonferroni) intervals next to them.")


def paper_text(r: dict) -> str:
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
        switch.append(f"{lang}: output layer at {fmt_tokens(top) if top is not None else 'never'}, "
                      f"layer 1 at {fmt_tokens(low) if low is not None else 'never'}")
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
