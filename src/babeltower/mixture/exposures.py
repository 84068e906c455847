"""How often a run actually reads each injected fact: exposures from the run's own sampler.

The knowledge benchmark injects every fact ``exposures`` times into each corpus it
belongs to, but a run reads only the windows its mixture's sampler delivers (continual
pre-training reads a fraction of a language's stream; replay reads a fraction of the
primary's). ``fact_exposures`` replays the sampler of a run (same data, mixture,
``seq_len``, seed, split) and counts; ``exposure_curve`` counts at many points (each
checkpoint) in one pass.

Counting rule (``COUNTING_RULE``):

* A run that trains ``tokens`` tokens reads sequences ``0 .. N-1`` of its sampler with
  ``N = ceil(tokens / seq_len)`` (the training loop reads ``steps x global batch``
  sequences: pass the run's tokens seen, ``steps x batch x seq_len``, or ``sequences``).
  Sequences past one pass are later epochs (see ``mixture/sampler.py``).
* An *occurrence* of a fact is one rendering of it in one injected document; its tokens
  are the span recorded by ``corpus pack`` (``knowledge.jsonl``'s ``fact_spans``: every
  token overlapping the rendering's text, name through answer).
* An occurrence is *read* once for each delivered sequence whose window
  (``seq_len + 1`` stream tokens) holds all of its tokens: the model then sees the
  whole rendering in one context, the answer as a target after the name. Windows do
  not overlap, so an occurrence lies inside at most one window; a window delivered
  twice (epochs, ``allow_repeat``) counts twice.
* An occurrence that a delivered window holds only partly (cut by the window's edge) is
  not read; it is reported separately as ``cut`` (once per delivered window it
  overlaps), so the size of the edge effect is visible.
"""

from __future__ import annotations

import math
from collections import defaultdict

import numpy as np

from babeltower.corpus.shards import TokenShards
from babeltower.errors import BabelError
from babeltower.mixture.sampler import MixtureSampler
from babeltower.mixture.spec import MixtureSpec

COUNTING_RULE = ("an occurrence (one rendering of a fact in one injected document) is read "
                 "once per delivered sequence whose seq_len+1-token window holds all of its "
                 "tokens; one cut by a window's edge is not read and is counted as cut")


def class_key(doc: dict) -> str:
    """``class`` or ``class-target`` (the corpus manifest's ``documents_by_language_class``
    naming, e.g. ``shared-php``)."""
    return doc["class"] + (f"-{doc['target']}" if doc.get("target") else "")


def _stats(values: list[int]) -> dict:
    a = np.asarray(values, dtype=np.int64)
    if a.size == 0:
        return {"facts": 0}
    return {"facts": int(a.size), "min": int(a.min()), "median": float(np.median(a)),
            "max": int(a.max()), "mean": float(a.mean()), "total": int(a.sum())}


def _occurrences(shards: TokenShards, split: str, index: dict[str, int]) -> dict[str, dict]:
    """Per language: absolute token [start, end) of every occurrence and its fact's
    position in ``index``."""
    out: dict[str, dict] = {}
    for d in shards.knowledge_documents(split=split):
        if d.get("fact_spans") is None:
            raise BabelError(f"knowledge document {d['path']} in {shards.root} has no fact "
                             "spans (its text is not one rendering per fact separated by blank "
                             "lines); exposures cannot be counted per fact")
        lang = d["language"]
        rec = out.setdefault(lang, {"start": [], "end": [], "fact": []})
        doc_start = int(shards.split(lang, split).docs[d["doc"], 0])
        for fact, (a, b) in zip(d["facts"], d["fact_spans"]):
            rec["start"].append(doc_start + int(a))
            rec["end"].append(doc_start + int(b))
            rec["fact"].append(index[fact])
    return {lang: {"start": np.asarray(r["start"], dtype=np.int64),
                   "end": np.asarray(r["end"], dtype=np.int64),
                   "fact": np.asarray(r["fact"], dtype=np.int64)}
            for lang, r in out.items()}


def count_exposures(sampler: MixtureSampler, sequences: int) -> dict:
    """Exposures of every injected fact in the first ``sequences`` sequences of
    ``sampler`` (see the module docstring for the rule and ``fact_exposures`` for the
    result's keys)."""
    return exposure_curve(sampler, [sequences])[0]


def exposure_curve(sampler: MixtureSampler, sequences) -> list[dict]:
    """``count_exposures`` at each of ``sequences`` (e.g. the sequences read by each
    checkpoint: step x global batch), sharing the work: one result per entry, in order."""
    points = [int(n) for n in sequences]
    if any(n < 0 for n in points):
        raise BabelError(f"sequences must be >= 0, got {min(points)}")
    shards, split, window = sampler.shards, sampler.split, sampler.window
    docs = shards.knowledge_documents(split=split)
    if not docs:
        raise BabelError(f"{shards.root} has no injected knowledge documents in {split!r}: "
                         "no exposures to count")
    fact_class = {}
    for d in docs:
        key = class_key(d)
        for f in d["facts"]:
            fact_class[f] = key
    occurrences = _occurrences(shards, split, {f: i for i, f in enumerate(sorted(fact_class))})
    reads = {lang: np.zeros(n, dtype=np.int64) for lang, n in sampler.available_windows.items()}
    done, out = 0, {}
    for n in sorted(set(points)):           # reads grow with n: add sequences done .. n-1
        for lang, r in sampler.window_reads(n, start=done).items():
            reads[lang] += r
        done = n
        out[n] = _tally(sampler, n, reads, fact_class, occurrences)
    return [out[n] for n in points]


def _tally(sampler: MixtureSampler, n: int, reads: dict[str, np.ndarray],
           fact_class: dict[str, str], occurrences: dict[str, dict]) -> dict:
    window = sampler.window
    facts = sorted(fact_class)
    read: dict[str, np.ndarray] = {}      # per language: reads / cuts / occurrences per fact
    cut: dict[str, np.ndarray] = {}
    occ_count: dict[str, np.ndarray] = {}
    for lang, occ in occurrences.items():
        r = reads.get(lang)
        n_windows = int(sampler.shards.split(lang, sampler.split).tokens.shape[0]) // window + 2
        counts = np.zeros(n_windows, dtype=np.int64)   # windows never delivered read 0
        if r is not None:
            counts[:r.size] = r
        first, last = occ["start"] // window, (occ["end"] - 1) // window
        whole = first == last
        full = np.where(whole, counts[first], 0)
        csum = np.concatenate([[0], np.cumsum(counts)])
        partial = np.where(whole, 0, csum[last + 1] - csum[first])
        read[lang] = np.bincount(occ["fact"], weights=full, minlength=len(facts)).astype(np.int64)
        cut[lang] = np.bincount(occ["fact"], weights=partial,
                                minlength=len(facts)).astype(np.int64)
        occ_count[lang] = np.bincount(occ["fact"], minlength=len(facts))
    zero = np.zeros(len(facts), dtype=np.int64)
    total_a = sum(read.values(), zero)
    cut_a = sum(cut.values(), zero)
    total = dict(zip(facts, total_a.tolist()))
    total_cut = dict(zip(facts, cut_a.tolist()))
    at = {f: i for i, f in enumerate(facts)}
    by_class: dict[str, list[str]] = defaultdict(list)
    for f in facts:
        by_class[fact_class[f]].append(f)
    summary_class = {c: {**_stats([total[f] for f in fs]),
                         "cut_total": int(sum(total_cut[f] for f in fs))}
                     for c, fs in sorted(by_class.items())}
    summary_lang_class = {}
    for lang in sorted(read):
        for c, fs in sorted(by_class.items()):
            ix = [at[f] for f in fs if occ_count[lang][at[f]] > 0]
            if ix:
                summary_lang_class[f"{lang}/{c}"] = {
                    **_stats(read[lang][ix].tolist()),
                    "cut_total": int(cut[lang][ix].sum()),
                    "occurrences_per_fact": _stats(occ_count[lang][ix].tolist())}
    return {
        "rule": COUNTING_RULE,
        "sequences": n, "tokens": n * sampler.seq_len,
        "seq_len": sampler.seq_len, "seed": sampler.seed, "split": sampler.split,
        "mixture_sha256": sampler.spec.fingerprint(), "data_sha256": sampler.data_fingerprint(),
        "tokens_by_language": {lang: int(r.sum()) * sampler.seq_len
                               for lang, r in sorted(reads.items())},
        "facts": total,
        "cut": total_cut,
        "by_language": {lang: {f: int(read[lang][i]) for i, f in enumerate(facts)
                               if occ_count[lang][i] > 0}
                        for lang in sorted(read)},
        "summary": {"by_class": summary_class, "by_language_class": summary_lang_class},
    }


def fact_exposures(data, spec, seq_len: int, seed: int = 0, tokens: int | None = None, *,
                   sequences: int | None = None, split: str = "train") -> dict:
    """How many times each injected fact is read by a run that trains ``tokens`` tokens
    (or ``sequences`` sequences) of mixture ``spec`` on ``data`` with ``seq_len`` and
    ``seed`` (the training run's own sampler: ``MixtureSampler(data, spec, seq_len, seed,
    split)``).

    Returns a JSON-ready dict: ``facts`` {fact id: reads, all languages}, ``cut`` {fact id:
    occurrences cut by a delivered window's edge}, ``by_language`` {language: {fact id:
    reads}} (facts with documents in that language, 0 included), ``summary``:
    ``by_class`` {class: facts, min, median, max, mean, total, cut_total} over ``facts``
    and ``by_language_class`` {"python/primary-only": ... plus occurrences_per_fact}, and
    the run's identity (sequences, tokens, seq_len, seed, split, mixture_sha256,
    data_sha256, tokens_by_language) and ``rule``. Every fact in the data's knowledge
    index is listed, so a fact the run never reads shows 0.
    """
    if (tokens is None) == (sequences is None):
        raise BabelError("fact_exposures: give tokens or sequences (one of them)")
    if tokens is not None:
        if int(tokens) < 0:
            raise BabelError(f"tokens must be >= 0, got {tokens}")
        sequences = math.ceil(int(tokens) / int(seq_len)) if int(seq_len) > 0 else 0
    shards = data if isinstance(data, TokenShards) else TokenShards(data)
    sampler = MixtureSampler(shards, MixtureSpec.from_any(spec), seq_len, seed=seed, split=split)
    return count_exposures(sampler, int(sequences))
