"""Controlled-knowledge accuracy per checkpoint, per class, key variant and query language,
its nulls, per-fact agreement between languages, and the paper's knowledge-transfer share
computed exactly (facts from ``babeltower.corpus.knowledge``; docs/knowledge.md).

* ``knowledge_items(model, tokenizer, facts, batch_size, split, eos=True)`` -> one row per
  query (``ROW_SCHEMA``): the model's next-token distribution after EOS + the query
  prefix, restricted to the answer set (chance = 1 / |answers|); ``correct`` = the right
  answer is the top-1 among the answer tokens; ``logprob`` = its log-probability over the
  whole vocabulary (nats), ``logprob_answer_set`` = over the answer set only, ``margin`` =
  ``logprob_answer_set`` minus the best other answer's (> 0 iff correct, ties aside).
* ``knowledge_curves(rows_by_checkpoint, n_answers, by=...)`` -> accuracy per
  checkpoint x class x new language (``target``) x query language (the key variants
  pooled, decoys left out: v1's cells), with counts k/n and a Wilson 95% interval;
  ``by=CURVE_BY`` adds the key variant, ``by=CURVE_BY + ("form",)`` the query form.
* ``knowledge_nulls`` -> each cell next to chance, its shuffled-answer null and the
  never-taught class's accuracy in the same language and key.
* ``fact_agreement(rows, lang_a, lang_b, classes, key)`` -> per-fact agreement between two
  query languages at one checkpoint (conditional rates, same-wrong-answer rate against a
  permutation null, rank correlation), all with intervals; ``agreement_table`` at every
  checkpoint.
* ``transfer_shares(rows_by_checkpoint)`` -> per checkpoint, new language t and key: among
  the facts answered correctly in t, the share of the primary-only class, with a Wilson
  interval, and the share a model guessing at chance would have.
* ``knowledge_summary(rows, n_answers, primary)``: one checkpoint's curves, per-form
  curves, nulls, shares and agreement as JSON-ready lists (what an experiment stores).
* ``evaluate_knowledge_series(source, facts, out)``: all of them for every checkpoint.

``rows_by_checkpoint``: a mapping {checkpoint: rows} or a sequence of
``(checkpoint, step, rows)`` / ``(checkpoint, rows)``; rows are dicts or a DataFrame.
"""

from __future__ import annotations

import json
import os
from typing import Mapping

from babeltower.analysis.statistics import (newcombe_interval, percentile_interval,
                                            wilson_interval)
from babeltower.batching import pad_batch
from babeltower.corpus.knowledge import TAUGHT_CLASSES, encode_queries, load_facts
from babeltower.errors import BabelError
from babeltower.io import atomic_write_json, provenance
from babeltower.series import SeriesOptions, run_series, state_dir_for

ROW_KEYS = ("query", "fact", "class", "target", "key", "language", "side", "form", "split")
# one row per query (``knowledge_items``); a stable schema, documented in docs/knowledge.md
ROW_SCHEMA = ROW_KEYS + ("answer", "predicted", "correct", "logprob", "logprob_answer_set",
                         "margin", "eos")
POOLED_BY = ("class", "target", "language", "side")   # v1's cells: key variants pooled
CURVE_BY = POOLED_BY + ("key",)                        # v2's cells: per key variant
TAUGHT_KEYS = ("same", "mapped")


def _as_facts(facts) -> dict:
    return facts if isinstance(facts, dict) else load_facts(facts)


_ENCODED: dict[tuple, tuple] = {}


def _encoded(tokenizer, facts: dict, eos: bool) -> tuple:
    """``encode_queries`` once per (tokenizer, facts, eos): a checkpoint series re-loads the
    same tokenizer at every checkpoint, and encoding every query is seconds each time."""
    key = (getattr(tokenizer, "name_or_path", None), len(tokenizer),
           facts.get("config_sha256"), len(facts["queries"]), bool(eos))
    if key[0] is None or key[2] is None:
        return encode_queries(tokenizer, facts, eos=eos)
    if key not in _ENCODED:
        if len(_ENCODED) > 8:
            _ENCODED.clear()
        _ENCODED[key] = encode_queries(tokenizer, facts, eos=eos)
    return _ENCODED[key]


def knowledge_items(model, tokenizer, facts, batch_size: int = 32,
                    split: str | None = None, eos: bool = True,
                    queries: set[str] | None = None) -> list[dict]:
    """One row per query (``ROW_SCHEMA``; see the module docstring); ``split`` keeps one
    query split, ``queries`` a set of query ids; ``eos`` puts the tokenizer's EOS before
    each prompt, as before every document of the packed training stream (recorded in each
    row). Rows come in facts.json's order; prompts are batched by length and only the
    last position of each is unembedded."""
    import torch

    facts = _as_facts(facts)
    answer_ids, prompts, targets = _encoded(tokenizer, facts, eos)
    answers = torch.tensor(answer_ids)
    qs = facts["queries"]
    keep = [i for i, q in enumerate(qs) if (split is None or q["split"] == split)
            and (queries is None or q["id"] in queries)]
    if not keep:
        raise BabelError(f"no knowledge queries in split {split!r}")
    device = next(model.parameters()).device
    by_len = sorted(keep, key=lambda i: len(prompts[i]))     # similar lengths share a batch
    out: dict[int, dict] = {}
    for b in range(0, len(by_len), batch_size):
        idx = by_len[b:b + batch_size]
        # right padding: positions of real tokens unchanged
        inp, att = pad_batch([prompts[i] for i in idx], 0, "right")
        ends = att.sum(1) - 1
        with torch.inference_mode():
            last = _last_logits(model, inp.to(device), att.to(device), ends.to(device)).float().cpu()
        logp = torch.log_softmax(last, -1)
        on_set = torch.log_softmax(last[:, answers], -1)
        for r, i in enumerate(idx):
            q, right = qs[i], answer_ids.index(targets[i])
            best = int(on_set[r].argmax())
            others = torch.cat([on_set[r, :right], on_set[r, right + 1:]])
            out[i] = {"query": q["id"], **{k: q[k] for k in ROW_KEYS[1:]},
                      "answer": q["answer"], "predicted": facts["answers"][best],
                      "correct": int(best == right),
                      "logprob": float(logp[r, targets[i]]),
                      "logprob_answer_set": float(on_set[r, right]),
                      "margin": float(on_set[r, right] - others.max()),
                      "eos": bool(eos)}
    return [out[i] for i in keep]


def _last_logits(model, inp, att, ends):
    """(B, V) logits at each row's last real position. Hugging Face causal LMs take
    ``logits_to_keep`` (the positions to unembed): only the distinct last positions of
    the batch go through the head; a model without it gets the full logits."""
    import torch

    rows = torch.arange(len(ends), device=ends.device)
    keep = torch.unique(ends)
    try:
        logits = model(input_ids=inp, attention_mask=att, logits_to_keep=keep).logits
    except TypeError:
        return model(input_ids=inp, attention_mask=att).logits[rows, ends]
    if logits.shape[1] != keep.numel():       # the model ignored the argument
        return logits[rows, ends]
    return logits[rows, torch.searchsorted(keep, ends)]


def _series(rows_by_checkpoint) -> list[tuple[str, int | None, list[dict]]]:
    import pandas as pd

    items = rows_by_checkpoint.items() if isinstance(rows_by_checkpoint, Mapping) \
        else rows_by_checkpoint
    out = []
    for item in items:
        name, step, rows = item if len(item) == 3 else (item[0], None, item[1])
        if isinstance(rows, pd.DataFrame):
            rows = rows.to_dict("records")
        out.append((str(name), step, list(rows)))
    return out


def _rate(k: int, n: int) -> dict:
    lo, hi = wilson_interval(k, n)
    return {"k": k, "n": n, "accuracy": k / n if n else None, "lo95": lo, "hi95": hi}


def knowledge_curves(rows_by_checkpoint, n_answers: int | None = None, split: str | None = None,
                     by=POOLED_BY):
    """Accuracy per checkpoint x cell (k, n, Wilson 95%); cells are ``by``: by default
    v1's class x target x query language x side, the same and mapped keys pooled (decoy
    queries left out: they are not a class's accuracy); ``CURVE_BY`` adds the key
    variant (decoys then a cell of their own), ``CURVE_BY + ("form",)`` per query form.

    ``target`` is the new language a class belongs to ("all" for the primary-only and
    never-taught pools); ``chance`` = 1 / n_answers when given.
    """
    import pandas as pd

    by = tuple(by)
    out = []
    for name, step, rows in _series(rows_by_checkpoint):
        groups: dict[tuple, list[int]] = {}
        for r in rows:
            if (split is not None and r["split"] != split) or \
                    ("key" not in by and r.get("key") == "decoy"):
                continue
            groups.setdefault(_cell(r, by), []).append(int(r["correct"]))
        for key, hits in sorted(groups.items()):
            out.append({"checkpoint": name, "step": step, **dict(zip(by, key)),
                        **_rate(sum(hits), len(hits)),
                        "chance": 1 / n_answers if n_answers else None})
    return pd.DataFrame(out)


def _cell(r: dict, by) -> tuple:
    return tuple((r.get("target") or "all") if k == "target" else r.get(k, "same") if k == "key"
                 else r[k] for k in by)


def transfer_shares(rows_by_checkpoint, split: str | None = None):
    """Per checkpoint, new language and key variant (same / mapped): solved (facts
    answered correctly in it), of them primary-only, the share with a Wilson 95%
    interval, and the share at chance. Only the three taught classes count (never-taught
    facts and decoy queries are not part of the paper's share)."""
    import pandas as pd

    out = []
    for name, step, rows in _series(rows_by_checkpoint):
        by_lang: dict[tuple, list[dict]] = {}
        for r in rows:
            if (r["side"] == "new" and (split is None or r["split"] == split)
                    and r["class"] in TAUGHT_CLASSES and r.get("key", "same") in TAUGHT_KEYS):
                by_lang.setdefault((r["language"], r.get("key", "same")), []).append(r)
        for (lang, key), rs in sorted(by_lang.items()):
            solved = [r for r in rs if int(r["correct"])]
            inside = sum(r["class"] == "primary-only" for r in solved)
            lo, hi = wilson_interval(inside, len(solved))
            out.append({"checkpoint": name, "step": step, "language": lang, "key": key,
                        "queries": len(rs), "solved": len(solved),
                        "solved_primary_only": inside,
                        "share": inside / len(solved) if solved else None,
                        "share_lo95": lo, "share_hi95": hi,
                        "share_at_chance": sum(r["class"] == "primary-only" for r in rs) / len(rs)})
    return pd.DataFrame(out)


# ------------------------------------------------------------------ nulls


def shuffled_null(rows, n_perm: int = 1000, seed: int = 0) -> dict:
    """The accuracy of the same items scored against a permuted answer key: what a model
    with these predictions (its answer-prior bias included) scores without knowing which
    fact has which answer.

    ``expected`` is exact: for a uniformly random permutation of the key over the n items,
    E[accuracy] = sum over answers a of n_predicted(a) x n_key(a) / n^2. ``lo95``/``hi95``
    are the 2.5/97.5% quantiles of ``n_perm`` permutations, ``p_above`` the permutation
    p-value of the observed accuracy (one-sided, (1 + #{null >= observed}) / (1 + n_perm))."""
    import numpy as np

    rows = list(rows)
    n = len(rows)
    if n == 0:
        return {"n": 0, "observed": None, "expected": None, "lo95": None, "hi95": None,
                "p_above": None}
    labels = sorted({r["predicted"] for r in rows} | {r["answer"] for r in rows})
    code = {a: i for i, a in enumerate(labels)}
    pred = np.array([code[r["predicted"]] for r in rows])
    key = np.array([code[r["answer"]] for r in rows])
    observed = float(np.mean(pred == key))
    expected = float(np.bincount(pred, minlength=len(labels))
                     @ np.bincount(key, minlength=len(labels))) / n ** 2
    rng = np.random.default_rng(seed)
    perms = np.argsort(rng.random((n_perm, n)), axis=1)   # n_perm uniform permutations
    null = (pred[None, :] == key[perms]).mean(axis=1)
    lo, hi = percentile_interval(null)
    return {"n": n, "observed": observed, "expected": expected,
            "lo95": float(lo), "hi95": float(hi),
            "p_above": float((1 + np.sum(null >= observed - 1e-12)) / (1 + n_perm))}


def knowledge_nulls(rows_by_checkpoint, n_answers: int | None = None, split: str | None = None,
                    by=("class", "target", "language", "key"), n_perm: int = 1000,
                    seed: int = 0):
    """Per checkpoint x cell: the accuracy (k, n, Wilson 95%) next to its three nulls -
    ``chance`` (1 / n_answers), the shuffled-answer null of the cell's own predictions
    (``shuffled_expected`` exact, ``shuffled_lo95``/``hi95`` permutation range,
    ``p_above_shuffled``) and the never-taught class's accuracy in the same query language
    and key (``never_taught_k``/``_n``/``_accuracy``/``_lo95``/``_hi95``): the measured
    chance of a name the model has never seen."""
    import pandas as pd

    by = tuple(by)
    out = []
    for name, step, rows in _series(rows_by_checkpoint):
        rows = [r for r in rows if split is None or r["split"] == split]
        cells: dict[tuple, list[dict]] = {}
        never: dict[tuple, list[int]] = {}
        for r in rows:
            cells.setdefault(_cell(r, by), []).append(r)
            if r["class"] == "never-taught":
                never.setdefault((r["language"], r.get("key", "same")), []).append(int(r["correct"]))
        for cell, rs in sorted(cells.items()):
            d = dict(zip(by, cell))
            k = sum(int(r["correct"]) for r in rs)
            sh = shuffled_null(rs, n_perm, seed)
            lang, key = rs[0]["language"], rs[0].get("key", "same")
            nv = never.get((lang, key), []) if "language" in by and "key" in by else []
            nk, nn = sum(nv), len(nv)
            nlo, nhi = wilson_interval(nk, nn)
            out.append({"checkpoint": name, "step": step, **d, **_rate(k, len(rs)),
                        "chance": 1 / n_answers if n_answers else None,
                        "shuffled_expected": sh["expected"], "shuffled_lo95": sh["lo95"],
                        "shuffled_hi95": sh["hi95"], "p_above_shuffled": sh["p_above"],
                        "never_taught_k": nk if nn else None, "never_taught_n": nn,
                        "never_taught_accuracy": nk / nn if nn else None,
                        "never_taught_lo95": nlo, "never_taught_hi95": nhi})
    return pd.DataFrame(out)


# ------------------------------------------------------------------ per-fact agreement


def _spearman(x, y):
    import numpy as np
    from scipy.stats import rankdata

    rx, ry = rankdata(x), rankdata(y)
    if np.std(rx) == 0 or np.std(ry) == 0:
        return None
    return float(np.corrcoef(rx, ry)[0, 1])


def fact_agreement(rows, lang_a: str, lang_b: str, classes=None, key: str | None = None,
                   n_boot: int = 1000, n_perm: int = 1000, seed: int = 0) -> dict:
    """Does knowing a fact in ``lang_a`` go with knowing it in ``lang_b``? Over the facts
    with a query in both languages (one checkpoint's rows; ``classes`` and ``key`` filter;
    decoy queries never count):

    * ``p_b_given_right_a`` / ``p_b_given_wrong_a``: P(right in B | right / wrong in A),
      each {k, n, rate, lo95, hi95} (Wilson), and ``difference`` = the first minus the
      second with Newcombe's hybrid score 95% interval (independent proportions);
    * ``same_wrong``: among the facts wrong in both, the share whose two wrong answers are
      the same, against a permutation null that permutes B's predictions among those
      facts *within the same right answer* (so the null keeps each language's answer
      bias and any dependence of wrong answers on the right one; a fact alone in its
      answer stratum keeps its own pairing, which makes the null conservative): observed
      {k, n, rate, lo95, hi95}, ``null_mean``, ``null_lo95``/``null_hi95``, one-sided
      ``p_value`` = (1 + #{null >= observed}) / (1 + n_perm), ``n_permutable``;
    * ``spearman``: rank correlation over facts of the right answer's log-probability
      on the answer set (``logprob_answer_set``) in A and in B, with a percentile
      bootstrap 95% interval over facts (``n_boot`` resamples).
    """
    import numpy as np

    classes = None if classes is None else ({classes} if isinstance(classes, str) else set(classes))

    def pick(lang):
        out = {}
        for r in rows:
            if (r["language"] == lang and r.get("key", "same") != "decoy"
                    and (key is None or r.get("key", "same") == key)
                    and (classes is None or r["class"] in classes)):
                if r["fact"] in out:
                    raise BabelError(f"fact_agreement: fact {r['fact']} has two {lang} rows "
                                     "(pass one checkpoint's rows)")
                out[r["fact"]] = r
        return out

    a, b = pick(lang_a), pick(lang_b)
    facts = sorted(set(a) & set(b))
    ra = np.array([int(a[f]["correct"]) for f in facts], dtype=bool)
    rb = np.array([int(b[f]["correct"]) for f in facts], dtype=bool)

    def rate(k, n):
        lo, hi = wilson_interval(int(k), int(n))
        return {"k": int(k), "n": int(n), "rate": k / n if n else None, "lo95": lo, "hi95": hi}

    k1, n1, k2, n2 = int(rb[ra].sum()), int(ra.sum()), int(rb[~ra].sum()), int((~ra).sum())
    lo, hi = newcombe_interval(k1, n1, k2, n2)
    out = {"lang_a": lang_a, "lang_b": lang_b, "key": key,
           "classes": None if classes is None else sorted(classes), "facts": len(facts),
           "p_b_given_right_a": rate(k1, n1), "p_b_given_wrong_a": rate(k2, n2),
           "difference": {"estimate": k1 / n1 - k2 / n2 if n1 and n2 else None,
                          "lo95": lo, "hi95": hi}}
    rng = np.random.default_rng(seed)
    wrong = [f for f, x, y in zip(facts, ra, rb) if not x and not y]
    out["same_wrong"] = _same_wrong(a, b, wrong, n_perm, rng)
    la = np.array([a[f]["logprob_answer_set"] for f in facts])
    lb = np.array([b[f]["logprob_answer_set"] for f in facts])
    out["spearman"] = _spearman_boot(la, lb, n_boot, rng)
    return out


def _same_wrong(a: dict, b: dict, wrong: list, n_perm: int, rng) -> dict:
    """Same-wrong-answer rate among ``wrong`` facts against the within-answer permutation
    null (see ``fact_agreement``)."""
    import numpy as np

    # sorted by right answer, so each stratum is one block
    wrong = sorted(wrong, key=lambda f: a[f]["answer"])
    pa = np.array([a[f]["predicted"] for f in wrong])
    pb = np.array([b[f]["predicted"] for f in wrong])
    strata: dict[str, list[int]] = {}
    for i, f in enumerate(wrong):
        strata.setdefault(a[f]["answer"], []).append(i)
    observed = int((pa == pb).sum())
    lo, hi = wilson_interval(observed, len(wrong))
    same = {"k": observed, "n": len(wrong), "rate": observed / len(wrong) if wrong else None,
            "lo95": lo, "hi95": hi, "null_mean": None, "null_lo95": None,
            "null_hi95": None, "p_value": None,
            "n_permutable": sum(len(v) for v in strata.values() if len(v) > 1)}
    if wrong:
        # n_perm permutations within strata at once: random sort keys offset by the
        # stratum's index keep every fact inside its (contiguous) block
        block = np.concatenate([np.full(len(v), i) for i, v in enumerate(strata.values())])
        perms = np.argsort(rng.random((n_perm, len(wrong))) + 2.0 * block[None, :], axis=1)
        null = (pa[None, :] == pb[perms]).mean(axis=1)
        nlo, nhi = percentile_interval(null)
        same.update(null_mean=float(null.mean()), null_lo95=float(nlo), null_hi95=float(nhi),
                    p_value=float((1 + np.sum(null >= observed / len(wrong) - 1e-12)) / (1 + n_perm)))
    return same


def _spearman_boot(la, lb, n_boot: int, rng) -> dict:
    import numpy as np

    from scipy.stats import rankdata

    rho = _spearman(la, lb) if len(la) >= 3 else None
    boot = np.array([])
    if rho is not None:
        i = rng.integers(0, len(la), (n_boot, len(la)))        # resampled facts
        rx, ry = rankdata(la[i], axis=1), rankdata(lb[i], axis=1)
        rx, ry = rx - rx.mean(1, keepdims=True), ry - ry.mean(1, keepdims=True)
        den = np.sqrt((rx ** 2).sum(1) * (ry ** 2).sum(1))
        ok = den > 0                                            # a constant resample has no rho
        boot = (rx * ry).sum(1)[ok] / den[ok]
    lo, hi = percentile_interval(boot) if boot.size else (None, None)
    return {"rho": rho, "n": len(la), "lo95": None if lo is None else float(lo),
            "hi95": None if hi is None else float(hi)}


def agreement_table(rows_by_checkpoint, primary: str, classes_sets=None, keys=TAUGHT_KEYS,
                    n_boot: int = 1000, n_perm: int = 1000, seed: int = 0) -> list[dict]:
    """``fact_agreement`` (primary vs each new language) at every checkpoint, per key
    variant and class set (default: each taught class on its own); a list of dicts."""
    out = []
    classes_sets = classes_sets or [[c] for c in TAUGHT_CLASSES]
    for name, step, rows in _series(rows_by_checkpoint):
        for lang in sorted({r["language"] for r in rows} - {primary}):
            for key in keys:
                for classes in classes_sets:
                    ag = fact_agreement(rows, primary, lang, classes=classes, key=key,
                                        n_boot=n_boot, n_perm=n_perm, seed=seed)
                    if ag["facts"]:
                        out.append({"checkpoint": name, "step": step, **ag})
    return out


def knowledge_summary(rows, n_answers: int, primary: str, agreement: bool = True,
                      n_boot: int = 500, n_perm: int = 500, seed: int = 0) -> dict:
    """One checkpoint's knowledge results, JSON-ready: ``curves`` (class x target x
    language x side x key), ``form_curves`` (+ form), ``nulls``, ``transfer`` (shares per
    language and key) and, with ``agreement``, ``agreement`` (primary vs each new
    language, per key and taught class). ``rows``: ``knowledge_items`` of one checkpoint.
    What an experiment stores per checkpoint next to the rows themselves."""
    series = [("_", None, list(rows))]
    out = {"chance": 1 / n_answers, "eos": all(bool(r.get("eos")) for r in rows)}
    for name, df in (("curves", knowledge_curves(series, n_answers, by=CURVE_BY)),
                     ("form_curves", knowledge_curves(series, n_answers, by=CURVE_BY + ("form",))),
                     ("nulls", knowledge_nulls(series, n_answers, n_perm=n_perm, seed=seed)),
                     ("transfer", transfer_shares(series))):
        out[name] = json.loads(df.drop(columns=["checkpoint", "step"], errors="ignore")
                               .to_json(orient="records"))
    if agreement:
        out["agreement"] = [{k: v for k, v in a.items() if k not in ("checkpoint", "step")}
                            for a in agreement_table(series, primary, n_boot=n_boot,
                                                     n_perm=n_perm, seed=seed)]
    return out


class KnowledgeMeasure:
    """Knowledge items as a series measure (``babeltower.series``): one row per held-out
    query (``knowledge_items``). ``queries``: score only these ids, except at checkpoints
    named in ``everything_at`` (every query there)."""

    name = "knowledge"

    def __init__(self, facts, batch_size: int = 32, split: str | None = None, eos: bool = True,
                 queries: set[str] | None = None, everything_at=frozenset()):
        self.facts = _as_facts(facts)
        self.batch_size, self.split, self.eos = batch_size, split, eos
        self.queries, self.everything_at = queries, set(everything_at)

    def config(self) -> dict:
        return {"facts": self.facts.get("config_sha256"), "split": self.split, "eos": self.eos,
                "queries": None if self.queries is None else len(self.queries),
                "everything_at": sorted(self.everything_at)}

    def data_hashes(self) -> dict:
        return {"facts": self.facts.get("config_sha256")}

    def measure(self, model, tokenizer, ref) -> list[dict]:
        scope = None if ref.name in self.everything_at else self.queries
        return knowledge_items(model, tokenizer, self.facts, self.batch_size, self.split,
                               eos=self.eos, queries=scope)


def evaluate_knowledge_series(source: str | os.PathLike, facts, out=None,
                              batch_size: int = 32, split: str | None = None,
                              progress: bool = True, eos: bool = True,
                              series: SeriesOptions | None = None) -> dict:
    """Items, curves (per key, and per key x form), transfer shares, nulls and per-fact
    agreement for every checkpoint of ``source`` (``KnowledgeMeasure`` through
    ``run_series``: one load per checkpoint, torchrun-split, resumable).

    With ``out`` (JSON): all of them + provenance; a rerun resumes past checkpoints already
    in ``<out>.partial/``. Returns {"items", "curves", "form_curves", "shares", "nulls"}
    (DataFrames) and "agreement" (a list of dicts).
    """
    import pandas as pd

    measure = KnowledgeMeasure(facts, batch_size, split, eos)
    fobj = measure.facts
    res = run_series(source, [measure], state=state_dir_for(out),
                     options=series or SeriesOptions(progress=progress))
    by_ckpt: dict[str, list[dict]] = {}
    for r in res.rows["knowledge"]:
        by_ckpt.setdefault(r["checkpoint"], []).append(r)
    series_rows = [(ref.name, ref.step, by_ckpt.get(ref.name, [])) for ref in res.refs]
    n_answers = len(fobj["answers"])
    primary = fobj["config"]["primary"]
    result = {"items": pd.DataFrame([r for _, _, rows in series_rows for r in rows]),
              "curves": knowledge_curves(series_rows, n_answers, by=CURVE_BY),
              "form_curves": knowledge_curves(series_rows, n_answers, by=CURVE_BY + ("form",)),
              "shares": transfer_shares(series_rows),
              "nulls": knowledge_nulls(series_rows, n_answers)}
    agreement = agreement_table(series_rows, primary)
    if out is not None and res.is_writer:
        atomic_write_json(out, {
            "metric": "top-1 among the answer set after held-out knowledge queries",
            "chance": 1 / n_answers, "row_schema": list(ROW_SCHEMA),
            **{k: json.loads(v.to_json(orient="records")) for k, v in result.items()},
            "agreement": agreement,
            "provenance": provenance(source=str(source), config={
                "batch_size": batch_size, "split": split, "eos": eos,
                "facts_config_sha256": fobj.get("config_sha256")},
                weights_sha256=res.weights),
        })
        res.close()
    result["agreement"] = agreement
    return result
