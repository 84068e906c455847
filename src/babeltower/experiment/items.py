"""Item trajectories out of measured runs: the input of the item-level stage test.

Every knowledge checkpoint row holds each validation query's outcome in one fixed order
(``measure.knowledge_order``); ``results["knowledge_items"]`` says once what each item
is (class, query language, target, form, answer, key). Loss rows hold each held-out
document's bits (``doc_bits``) and bytes. A curve over several seeds is then an
``ItemSeries`` (seeds x items x checkpoints) without scoring anything again.

Pure functions over results.json's plain dicts (usable from a notebook).
"""

from __future__ import annotations

import numpy as np

from babeltower.analysis.item_test import ItemSeries
from babeltower.analysis.statistics import t_half_widths
from babeltower.errors import BabelError


# what "every class" means for a performance signal: the taught classes, through taught
# keys (never-taught facts and decoy queries are controls, read on their own)
CONTROL_CLASSES = ("never-taught",)
CONTROL_KEYS = ("decoy",)


def select_items(meta: list[dict], lang: str, cls: str | None = None,
                 query_language: str | None = None, key: str | None = None,
                 form: str | None = None) -> np.ndarray:
    """Indices of the items of one class (None: every taught class) asked in
    ``query_language`` (default: the new language ``lang``) that belong to ``lang`` (its
    own classes and the pools that serve every new language), through ``key`` (None:
    every taught key; "decoy" only when asked for), in query ``form`` (None: any)."""
    q = query_language or lang
    return np.array([i for i, m in enumerate(meta)
                     if m["language"] == q
                     and (m["class"] == cls if cls is not None else m["class"] not in CONTROL_CLASSES)
                     and m.get("target") in (lang, None)
                     and (m.get("key", "same") == key if key is not None
                          else m.get("key", "same") not in CONTROL_KEYS)
                     and (form is None or m.get("form") == form)], dtype=np.int64)


def knowledge_rows(meta: list[dict], items: dict, answers: list[str]) -> list[dict]:
    """One checkpoint's stored per-item outcomes back as ``knowledge_items``-style rows
    (query, fact, class, key, language, answer, predicted, correct, margin, log-prob):
    what ``evaluate.knowledge.fact_agreement`` reads."""
    out = []
    for i, m in enumerate(meta):
        if items["correct"][i] < 0:          # not scored at this checkpoint
            continue
        out.append({"query": m["id"], "fact": m["fact"], "class": m["class"],
                    "target": m.get("target"), "key": m.get("key", "same"),
                    "language": m["language"], "side": m.get("side"), "form": m.get("form"),
                    "answer": m["answer"], "predicted": answers[items["predicted"][i]],
                    "correct": items["correct"][i], "margin": items["margin"][i],
                    "logprob_answer_set": items["logprob_answer_set"][i]})
    return out


def knowledge_series(seed_runs: list[dict], meta: list[dict], lang: str, cls: str | None = None,
                     query_language: str | None = None, key: str | None = None,
                     name: str = "knowledge", cluster_by: str = "answer",
                     form: str | None = None) -> ItemSeries | None:
    """(seeds, items, checkpoints) 0/1 outcomes of one knowledge curve; clusters are the
    items' answers (flips cluster by answer token: issue 19). None when the runs did not
    record per-item outcomes or hold no such item."""
    idx = select_items(meta, lang, cls, query_language, key, form)
    if idx.size < 2:
        return None
    mats, xs = [], None
    for run in seed_runs:
        rows = [r for r in run["checkpoints"] if ((r.get("knowledge") or {}).get("items"))]
        if len(rows) != len(run["checkpoints"]) or not rows:
            return None
        x = [float(r["tokens"]) for r in rows]
        if xs is None:
            xs = x
        elif x != xs:
            raise BabelError(f"{name}: the seeds' checkpoints differ ({len(x)} vs {len(xs)})")
        m = np.array([np.asarray(r["knowledge"]["items"]["correct"], dtype=float)[idx]
                      for r in rows]).T
        if np.any(m < 0):        # a seed that scored these items at its ends only
            continue
        mats.append(m)
    if not mats:
        return None
    clusters = np.array([str(meta[i].get(cluster_by)) for i in idx])
    if np.unique(clusters).size < 2:
        clusters = idx.astype(str)
    return ItemSeries(np.asarray(xs), np.stack(mats), np.ones(idx.size), clusters, True, name)


def bpb_series(seed_runs: list[dict], lang: str, name: str = "bpb") -> ItemSeries | None:
    """(seeds, documents, checkpoints) bits per document over its bytes, from the
    checkpoints where loss was read in EVERY seed (documents are paired items: the same
    held-out documents at every checkpoint); lower is better. None without doc_bits."""
    per = []
    for run in seed_runs:
        per.append({float(r["tokens"]): r for r in run["checkpoints"]
                    if ((r.get("doc_bits") or {}).get(lang)) is not None})
    common = sorted(set.intersection(*(set(p) for p in per))) if per else []
    if len(common) < 2:
        return None
    mats = [np.array([p[x]["doc_bits"][lang] for x in common], dtype=float).T for p in per]
    units = np.asarray(per[0][common[0]]["doc_bytes"][lang], dtype=float)
    if any(m.shape[0] != units.size for m in mats):
        raise BabelError(f"{name}: the seeds scored different documents")
    return ItemSeries(np.asarray(common), np.stack(mats), units, np.arange(units.size), False, name)


def across_seeds(series: ItemSeries) -> dict:
    """Per-seed curves and their mean with a Student-t 95% interval over seeds at every
    checkpoint (seed as the unit), plus the mean's item-bootstrap se (items as the unit,
    one seed's view). Orientation of the measure (accuracy, or bits per byte)."""
    c = series.curves() if series.higher_is_better else -series.curves()
    s = c.shape[0]
    mean = c.mean(axis=0)
    out = {"x": series.x.tolist(), "per_seed": c.tolist(), "mean": mean.tolist(),
           "n_seeds": s, "n_items": int(series.values.shape[1])}
    if s >= 2:
        half = t_half_widths(c.std(axis=0, ddof=1), s)
        out["ci95"] = [(mean - half).tolist(), (mean + half).tolist()]
        out["between_seed_sd"] = c.std(axis=0, ddof=1).tolist()
    return out

