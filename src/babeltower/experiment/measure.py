"""Measure every checkpoint of a run: loss / bpb per language, cloze, logit lens, LAPE.

Each checkpoint is loaded once and every measure is taken on it
(``babeltower.series.run_series`` with three measures: loss, lens + cloze, LAPE). The rows are plain dicts, one per checkpoint, so they go into results.json
as they are:

    {"checkpoint", "step", "tokens",
     "loss": {lang: nats/token}, "bpb": {lang: bits/byte},
     "cloze_new": {lang: acc}, "cloze_primary": {lang: acc},      # final layer = model's logits
     "lens_new_share_last": {lang}, "lens_new_share_mean": {lang}, # share preferring new id
     "lens_layers": {lang: {"new_pref_share": [...], "logit_diff": [...], "control": [...],
                            "top1_new": [...], "top1_primary": [...]}},
     "specific_count": {lang: |S_lang|}, "transfer_count": {lang: |T|},
     "transfer_ratio": {lang: |T|/|S_new|}, "transfer_by_layer": {lang: [...]},
     "lape_point", "lape_assign",                                  # LAPE variant used
     "lape_tokens": {lang}, "lape_documents": {lang},              # what LAPE read
     "weights_sha256"}                                             # the weights measured

Cloze accuracy is read at the lens's last layer, which reproduces the model's own
logits (tested to 1e-4), so the experiment needs one forward for both.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np

from babeltower.checkpoints import list_checkpoints
from babeltower.corpus.shards import TokenShards
from babeltower.evaluate.knowledge import KnowledgeMeasure, knowledge_curves, transfer_shares
from babeltower.evaluate.loss import LN2, LossConfig, LossMeasure, documents_from_shards
from babeltower.experiment.config import ExperimentConfig
from babeltower.probes.lens import lens_controls, lens_controls_summary, lens_items
from babeltower.probes.lens_controls import MARGIN_COLUMNS
from babeltower.probes.neurons import (collect_stats, lape_applicability, lape_select,
                                       windows_from_ids)
from babeltower.probes.suite import load_suite
from babeltower.series import META, SeriesOptions, run_series


def corpus_summary(shards) -> dict:
    out = {}
    for lang in shards.languages:
        info = shards.manifest["languages"][lang]
        row = {}
        for split in ("train", "validation", "test"):
            if split in info:
                row[f"{split} tokens"] = info[split].get("tokens")
                row[f"{split} docs"] = info[split].get("documents")
        row["train bytes"] = info.get("train", {}).get("bytes")
        out[lang] = row
    return out


def _lens_row(item_df) -> dict:
    """Per-layer working-language measures of one suite: on its new-language prompts,
    plus cloze accuracy on both sides (the primary side is the mirrored prompt set)."""
    new = item_df[item_df.side == "new"]
    prim = item_df[item_df.side == "primary"]
    by = new.groupby(["measure", "layer"])["value"].mean()

    def per_layer(m):
        return [float(v) for v in by.loc[m].sort_index().to_numpy()] if m in by.index.levels[0] else []

    layers = {"new_pref_share": per_layer("prefers_new"), "logit_diff": per_layer("logp_diff"),
              "control": per_layer("primary_vs_control"), "top1_new": per_layer("top1_new"),
              "top1_primary": per_layer("top1_primary"), "n_prompts": int(new.prompt.nunique())}
    last_layer = int(item_df.layer.max())
    cloze_p = prim[(prim.measure == "top1_target") & (prim.layer == last_layer)]["value"]
    cloze_n = new[(new.measure == "top1_target") & (new.layer == last_layer)]["value"]
    # per prompt, in the suite's order: the cloze curve's items for the item-level test
    last = new[(new.measure == "top1_target") & (new.layer == last_layer)]
    cloze_items = [int(v) for v in last.sort_values(["prompt", "pair_id"], kind="stable")["value"]]
    return {"layers": layers,
            "share_last": layers["new_pref_share"][-1] if layers["new_pref_share"] else None,
            "share_mean": float(np.mean(layers["new_pref_share"])) if layers["new_pref_share"] else None,
            "cloze_new": float(cloze_n.mean()) if len(cloze_n) else None,
            "cloze_new_n": int(len(cloze_n)), "cloze_items": cloze_items,
            "cloze_primary": float(cloze_p.mean()) if len(cloze_p) else None}


_CHECKED: dict[tuple, object] = {}


def checked_suite(primary: str, lang: str, tokenizer):
    """The probe suite tokenized for ``tokenizer`` (cached: every run of an experiment
    shares the data's tokenizer, and alignment costs seconds per suite)."""
    key = (primary, lang, getattr(tokenizer, "name_or_path", None), len(tokenizer))
    if key not in _CHECKED:
        _CHECKED[key] = load_suite(primary, lang).check(tokenizer)
    return _CHECKED[key]


class _Loss:
    """Loss and bits-per-byte per language (one row per checkpoint)."""

    def __init__(self, docs, eos: int, cfg, name: str = "loss"):
        self.docs, self.eos, self.cfg, self.name = docs, eos, cfg, name
        self.loss = LossMeasure(cfg, docs, eos, text=None, data_hashes={}, per_document=True)

    def config(self) -> dict:
        return {**self.cfg.model_dump(mode="json"), "languages": sorted(self.docs)}

    def measure(self, model, tokenizer, ref) -> list[dict]:
        lrows = self.loss.measure(model, tokenizer, ref)
        # the document bootstrap's standard error (the Gaussian stage test's noise); the
        # per-document bits are the paired items of the item-level test (the same
        # documents at every checkpoint)
        return [{"loss": {r["language"]: r["loss"] for r in lrows},
                 "doc_bits": {r["language"]: [round(v / LN2, 4) for v in r["doc_nats"]]
                              for r in lrows},
                 "doc_bytes": {r["language"]: r["doc_bytes"] for r in lrows},
                 "bpb": {r["language"]: r["bits_per_byte"] for r in lrows},
                 "bpb_se": {r["language"]: r["bpb_se"] for r in lrows
                            if r.get("bpb_se") is not None},
                 "eval_documents": {lang: len(ds) for lang, ds in self.docs.items()},
                 "eval_tokens": {lang: int(sum(d.tokens.size for d in ds))
                                 for lang, ds in self.docs.items()}}]


class _LensCloze:
    """Cloze accuracy (the lens's last layer) and, with ``lens``, the lens measures."""

    name = "lens"

    def __init__(self, primary: str, pair_languages: list[str], lens: bool):
        self.primary, self.langs, self.lens = primary, pair_languages, lens

    def config(self) -> dict:
        return {"primary": self.primary, "languages": self.langs, "lens": self.lens}

    def measure(self, model, tokenizer, ref) -> list[dict]:
        row: dict = {k: {} for k in ("cloze_new", "cloze_primary", "cloze_new_n", "cloze_items",
                                     "lens_new_share_last",
                                     "lens_new_share_mean", "lens_layers", "lens_specific")}
        for lang in self.langs:
            checked = checked_suite(self.primary, lang, tokenizer)
            items = lens_items(model, tokenizer, checked, batch_size=32)
            lr = _lens_row(items)
            row["cloze_new"][lang] = lr["cloze_new"]
            row["cloze_primary"][lang] = lr["cloze_primary"]
            row["cloze_new_n"][lang] = lr["cloze_new_n"]
            row["cloze_items"][lang] = lr["cloze_items"]
            if self.lens:
                row["lens_new_share_last"][lang] = lr["share_last"]
                row["lens_new_share_mean"][lang] = lr["share_mean"]
                row["lens_layers"][lang] = lr["layers"]
                row["lens_specific"][lang] = lens_specific(items)
        return [row]


def lens_specific(items) -> dict:
    """The working-language share with its two controls and the specific effect, per
    layer and per span (layer 0, layers 1-L, layer L, full identifiers), each with a
    cluster-bootstrap interval over prompts (``probes.lens.lens_controls``)."""
    per_layer = lens_controls(items, n_boot=1000)
    spans = lens_controls_summary(items, n_boot=1000)
    cols = ["share", "share_ci_low", "share_ci_high", "control_a", "control_b", "specific",
            "ci_low", "ci_high", "specific_new", "specific_new_ci_low", "specific_new_ci_high"]
    # the margins in nats do not saturate near a share of 0 or 1 (docs/probes.md)
    cols += [f"{m}{s}" for m in MARGIN_COLUMNS for s in ("", "_ci_low", "_ci_high")]
    out = {c: [_num(v) for v in per_layer[c]] for c in cols if c in per_layer}
    out["control"] = per_layer.attrs.get("control")
    out["n_prompts"] = int(per_layer["n_prompts"].max()) if len(per_layer) else 0
    out["spans"] = [{k: (_num(v) if k != "span" else v) for k, v in r.items()}
                    for r in spans.to_dict("records")]
    return out


def _num(v):
    v = float(v)
    return v if np.isfinite(v) else None


def knowledge_order(facts: dict, split: str) -> list[str]:
    """Query ids of one split in facts.json's order: the order of every per-item list."""
    return [q["id"] for q in facts["queries"] if q["split"] == split]


def knowledge_item_meta(facts: dict, split: str) -> list[dict]:
    """What each item of ``knowledge_order`` is (query, fact, class, target, language,
    form, answer and, where the benchmark has them, its key variant): recorded once per
    run next to the per-checkpoint outcomes."""
    keep = ("id", "fact", "class", "target", "language", "side", "form", "answer", "key")
    return [{k: q[k] for k in keep if k in q} for q in facts["queries"] if q["split"] == split]


class _Knowledge:
    """Controlled-knowledge accuracy per class x query language (k of n, Wilson interval)
    and the knowledge-transfer share, on one split of the held-out queries."""

    name = "knowledge"

    def __init__(self, facts: dict, split: str, scope: set[str] | None = None,
                 everything_at: set[str] = frozenset()):
        self.facts, self.split = facts, split
        self.scope = scope
        self.items = KnowledgeMeasure(facts, batch_size=128, split=split, queries=scope,
                                      everything_at=everything_at)

    def config(self) -> dict:
        return {"facts": self.facts.get("config_sha256"), "split": self.split,
                "scope": None if self.scope is None else len(self.scope)}

    def measure(self, model, tokenizer, ref) -> list[dict]:
        items = self.items.measure(model, tokenizer, ref)
        series = [(ref.name, ref.step, items)]
        # every item's outcome at this checkpoint, in a fixed order (``knowledge_order``):
        # the item-level stage test and the per-fact agreement are computed from these
        # without re-scoring
        # (an item outside this checkpoint's scope: correct and predicted -1, no margin)
        order = {r["query"]: r for r in items}
        ids = knowledge_order(self.facts, self.split)
        answers = {a: i for i, a in enumerate(self.facts["answers"])}
        none = {"correct": -1, "predicted": None, "margin": None, "logprob_answer_set": None}
        got = [order.get(q) for q in ids]
        per_item = {"correct": [int(r["correct"]) if r else -1 for r in got],
                    "predicted": [answers[r["predicted"]] if r else -1 for r in got],
                    "margin": [round(float(r["margin"]), 4) if r else none["margin"] for r in got],
                    "logprob_answer_set": [round(float(r["logprob_answer_set"]), 4) if r else None
                                           for r in got]}
        n_answers = len(self.facts["answers"])
        curves = knowledge_curves(series, n_answers)
        shares = transfer_shares(series)
        keep = ["class", "target", "language", "side", "k", "n", "accuracy", "lo95", "hi95"]
        return [{"knowledge": {
            "split": self.split, "chance": 1 / n_answers, "items": per_item,
            "eos": all(bool(r.get("eos")) for r in items),
            "curves": json.loads(curves[keep].to_json(orient="records")),
            "transfer": json.loads(shares.drop(columns=["checkpoint", "step"]).to_json(orient="records"))}}]


class _Lape:
    """LAPE (Tang et al.'s rule) on fixed held-out windows (one row per checkpoint)."""

    name = "lape"

    def __init__(self, shards, cfg: ExperimentConfig, pair_languages: list[str]):
        self.windows, self.counted = _lape_inputs(shards, cfg)
        self.cfg, self.langs = cfg, pair_languages

    def config(self) -> dict:
        return {"top_rate": self.cfg.probes.top_rate, "primary": self.cfg.primary,
                "languages": self.langs, "counted": self.counted}

    def measure(self, model, tokenizer, ref) -> list[dict]:
        row = _neuron_row(model, self.windows, self.cfg, self.langs)
        row["lape_tokens"] = {l: c["tokens"] for l, c in self.counted.items()}
        row["lape_documents"] = {l: c["documents"] for l, c in self.counted.items()}
        row["lape_splits"] = {l: c["split"] for l, c in self.counted.items()}
        return [row]


def measure_series(run: str | Path, data_dir: str | Path, cfg: ExperimentConfig, *,
                   pair_languages: list[str], loss_languages: list[str], split: str,
                   final_only: bool = False, probes: bool = True, facts: dict | None = None,
                   lape_every: int = 1, loss_every: int | dict[str, int] = 1,
                   state: str | Path | None = None, knowledge_scope: str = "all") -> list[dict]:
    """One row per checkpoint of ``run`` (all checkpoints, or the last one), each
    checkpoint loaded once for every measure (``babeltower.series``). ``facts``: the
    controlled-knowledge benchmark (queries of ``split``'s side: validation for curves,
    test for the comparison). ``lape_every``: LAPE on every k-th checkpoint (and the
    last), a measure whose cost grows with the tokens it reads; ``loss_every``: the same
    for loss / bpb, one interval for every language or one per language (the new
    language's loss at every checkpoint for Algorithm 1, the primary's forgetting curve
    on every k-th; the replay arm reads its primary bpb at the ends only). ``state``: a
    directory where finished checkpoints are kept, so an interrupted measurement
    resumes there. ``knowledge_scope``: "all" queries at every checkpoint, or
    "new_language" (the new language's taught items; everything at the ends)."""
    refs = list_checkpoints(run)
    if final_only:
        refs = refs[-1:]
    shards = TokenShards(data_dir)
    ev = cfg.evaluation
    docs = eval_documents(shards, loss_languages, split, ev.val_tokens_per_language)
    # score in windows of the training context: longer windows would test length
    # extrapolation (RoPE) rather than the language, and cost quadratically more
    loss_cfg = LossConfig(split=split, max_tokens_per_language=ev.val_tokens_per_language,
                          context=cfg.model.seq_len, batch_size=16)
    every_of = {lang: max(1, loss_every.get(lang, 1) if isinstance(loss_every, dict) else loss_every)
                for lang in docs}
    losses = {k: _Loss({lang: docs[lang] for lang in docs if every_of[lang] == k}, shards.eos_id,
                       loss_cfg, name="loss" if k == 1 else f"loss_every_{k}")
              for k in sorted(set(every_of.values()))}
    measures: list = [losses[1]] if 1 in losses else []
    if pair_languages:
        measures.append(_LensCloze(cfg.primary, pair_languages, probes and cfg.probes.lens))
    if facts is not None:
        ksplit = "test" if split == "test" else "validation"
        scope = None
        if knowledge_scope == "new_language":
            # the performance and transfer curves' items at every checkpoint; every item
            # (the primary side, controls) at the first and last checkpoints only
            scope = {q["id"] for q in facts["queries"] if q["split"] == ksplit
                     and q["language"] != cfg.primary and q["class"] != "never-taught"
                     and q.get("key", "same") != "decoy"}
        measures.append(_Knowledge(facts, ksplit, scope, {refs[0].name, refs[-1].name}))
    sub = (lambda name: Path(state) / name) if state is not None else (lambda name: None)
    rows = _run(refs, measures, sub("every")) if measures else _bare_rows(refs)
    sparse = [(k, m) for k, m in losses.items() if k > 1]
    if pair_languages and probes and cfg.probes.neurons:
        sparse.append((lape_every, _Lape(shards, cfg, pair_languages)))
    for every, m in sparse:
        some = [r for i, r in enumerate(refs) if i % max(1, every) == 0 or i == len(refs) - 1]
        got = dict(zip([r.name for r in some], _run(some, [m], sub(m.name))))
        for row in rows:
            _merge(row, got.get(row["checkpoint"], {}))
    if state is not None:
        shutil.rmtree(state, ignore_errors=True)   # the caller records the rows
    return rows


def _merge(row: dict, more: dict) -> None:
    """Add one sparse measure's row: per-language dicts are merged, not replaced."""
    for k, v in more.items():
        if k in ("checkpoint", "step", "tokens", "tokens_by_language", "weights_sha256"):
            continue
        if isinstance(v, dict) and isinstance(row.get(k), dict):
            row[k] = {**row[k], **v}
        else:
            row[k] = v


def _bare_rows(refs) -> list[dict]:
    return [{"checkpoint": r.name, "step": r.step, "tokens": int(r.manifest.get("tokens_seen") or 0),
             "tokens_by_language": r.manifest.get("tokens_by_language")} for r in refs]


def _run(refs, measures, state: Path | None = None) -> list[dict]:
    """run_series over ``refs``: one merged row per checkpoint (a progress bar on a
    terminal; finished checkpoints kept in ``state`` for a resume)."""
    res = run_series(refs, measures, state=state, options=SeriesOptions(progress=True))
    rows = []
    for i, (ref, row) in enumerate(zip(refs, _bare_rows(refs))):
        for m in measures:
            row.update({k: v for k, v in res.rows[m.name][i].items() if k not in META})
        row["weights_sha256"] = res.weights[ref.name]
        rows.append(row)
    return rows


# held-out scoring reads at least this many documents per language (fewer only when the
# split holds fewer; the row records how many documents and tokens were read)
EVAL_MIN_DOCUMENTS = 20


def eval_documents(shards, languages: list[str], split: str, tokens: int) -> dict:
    """Documents to score per language: the first ones up to ``tokens`` tokens, and more
    (whatever their tokens) until at least EVAL_MIN_DOCUMENTS, so a few long files never
    stand for a whole language."""
    docs = documents_from_shards(shards, languages, split, tokens)
    few = [lang for lang, ds in docs.items() if len(ds) < EVAL_MIN_DOCUMENTS]
    if few:
        more = documents_from_shards(shards, few, split, 1 << 62, EVAL_MIN_DOCUMENTS)
        docs.update({lang: ds for lang, ds in more.items() if len(ds) > len(docs[lang])})
    return docs


# LAPE reads at least this many tokens from at least this many documents per language
# (fewer only when the split is smaller; the row then says how many were read)
LAPE_MIN_TOKENS = 65536
LAPE_MIN_DOCUMENTS = 20


def _lape_inputs(shards, cfg: ExperimentConfig) -> tuple[dict[str, np.ndarray], dict]:
    """Fixed held-out token windows per language for LAPE, and per language the tokens
    and documents they hold: the validation split of the trained languages, and the
    train split of ``probes.lape_languages`` (never trained on, so all of it is held
    out)."""
    n = max(cfg.probes.neuron_tokens_per_language, LAPE_MIN_TOKENS)
    text_only = [x for x in cfg.probes.lape_languages if x not in cfg.languages]
    docs = {}
    for langs, split in ((cfg.languages, "validation"), (text_only, "train")):
        if not langs:
            continue
        got = documents_from_shards(shards, langs, split, n)
        few = [lang for lang, ds in got.items() if len(ds) < LAPE_MIN_DOCUMENTS]
        if few:   # long documents: take more of them, whatever their tokens add up to
            more = documents_from_shards(shards, few, split, 1 << 62, LAPE_MIN_DOCUMENTS)
            got.update({lang: ds for lang, ds in more.items() if len(ds) > len(got[lang])})
        docs.update(got)
    windows, counted = {}, {}
    for lang, ds in docs.items():
        ids = np.concatenate([d.tokens for d in ds])
        windows[lang] = windows_from_ids(ids, ids.size, cfg.model.seq_len)
        counted[lang] = {"tokens": int(windows[lang].size), "documents": len(ds),
                         "split": "train (never trained on)" if lang in text_only else "validation"}
    return windows, counted


def _neuron_row(model, windows: dict, cfg: ExperimentConfig, pair_languages: list[str]) -> dict:
    """LAPE on one model: |S_l| per language, T = S_primary ∩ S_new per new language."""
    stats = collect_stats(model, windows, batch_size=16, point="act_fn")
    langs = list(windows)
    sel = lape_select(stats.probabilities(langs), langs, top_rate=cfg.probes.top_rate,
                      assign="tang")
    app = lape_applicability(sel)
    out = {"specific_count": {lang: int(len(sel.sets[lang])) for lang in langs},
           "transfer_count": {}, "transfer_ratio": {}, "transfer_by_layer": {},
           "lape_point": "act_fn", "lape_assign": "tang", "lape_languages": langs,
           # LAPE over two languages is degenerate; the kept neurons' entropy says whether
           # the "language-specific" neurons are (docs/probes.md)
           "lape_applicable": app["applicable"], "lape_reason": app["reason"],
           "lape_entropy": sel.entropy_summary()}
    for lang in pair_languages:
        t = sel.transfer(cfg.primary, lang)
        n_new = len(sel.sets[lang])
        out["transfer_count"][lang] = int(len(t))
        out["transfer_ratio"][lang] = float(len(t) / n_new) if n_new else None
        out["transfer_by_layer"][lang] = np.bincount(t[:, 0], minlength=sel.n_layers).tolist() \
            if len(t) else [0] * sel.n_layers
    return out
