"""Controlled-knowledge accuracy per checkpoint, per class and query language, and the
paper's knowledge-transfer share computed exactly (facts from ``babeltower.corpus.knowledge``).

* ``knowledge_items(model, tokenizer, facts, batch_size)`` -> one row per query: the
  model's next-token distribution after the query prefix, restricted to the answer set
  (chance = 1 / |answers|); ``correct`` = the right answer is the top-1 among the answer
  tokens; ``logprob`` = its log-probability over the whole vocabulary (nats),
  ``logprob_answer_set`` = over the answer set only.
* ``knowledge_curves(rows_by_checkpoint)`` -> accuracy per checkpoint x class x new
  language (``target``) x query language, with counts k/n and a Wilson 95% interval.
* ``transfer_shares(rows_by_checkpoint)`` -> per checkpoint and new language t: among
  the facts answered correctly in t, the share of the primary-only class (facts only the
  primary corpus taught; the paper's "primary-specific subset", here known by
  construction), with a Wilson interval, and the share a model guessing at chance
  would have (the primary-only fraction of t's queries).
* ``evaluate_knowledge_series(source, facts, out)``: all three for every checkpoint.

``rows_by_checkpoint``: a mapping {checkpoint: rows} or a sequence of
``(checkpoint, step, rows)`` / ``(checkpoint, rows)``; rows are dicts or a DataFrame.
"""

from __future__ import annotations

import json
import os
from typing import Mapping

from babeltower.checkpoints import list_checkpoints
from babeltower.corpus.knowledge import encode_queries, load_facts
from babeltower.errors import BabelError
from babeltower.evaluate.transfer import wilson_interval
from babeltower.io import PartialRows, atomic_write_json, provenance

ROW_KEYS = ("query", "fact", "class", "target", "language", "side", "form", "split")


def _as_facts(facts) -> dict:
    return facts if isinstance(facts, dict) else load_facts(facts)


def knowledge_items(model, tokenizer, facts, batch_size: int = 32,
                    split: str | None = None) -> list[dict]:
    """One row per query (see the module docstring); ``split`` keeps one query split."""
    import torch

    facts = _as_facts(facts)
    answer_ids, prompts, targets = encode_queries(tokenizer, facts)
    answers = torch.tensor(answer_ids)
    queries = facts["queries"]
    keep = [i for i, q in enumerate(queries) if split is None or q["split"] == split]
    if not keep:
        raise BabelError(f"no knowledge queries in split {split!r}")
    device = next(model.parameters()).device
    rows = []
    for b in range(0, len(keep), batch_size):
        idx = keep[b:b + batch_size]
        T = max(len(prompts[i]) for i in idx)
        inp = torch.zeros((len(idx), T), dtype=torch.long)
        att = torch.zeros((len(idx), T), dtype=torch.long)
        for r, i in enumerate(idx):  # right padding: positions of real tokens unchanged
            inp[r, :len(prompts[i])] = torch.tensor(prompts[i])
            att[r, :len(prompts[i])] = 1
        with torch.no_grad():
            logits = model(input_ids=inp.to(device), attention_mask=att.to(device)).logits
        last = logits[torch.arange(len(idx)), att.sum(1).to(device) - 1].float().cpu()
        logp = torch.log_softmax(last, -1)
        on_set = torch.log_softmax(last[:, answers], -1)
        for r, i in enumerate(idx):
            q, right = queries[i], answer_ids.index(targets[i])
            best = int(on_set[r].argmax())
            rows.append({"query": q["id"], **{k: q[k] for k in ROW_KEYS[1:]},
                         "answer": q["answer"], "predicted": facts["answers"][best],
                         "correct": int(best == right),
                         "logprob": float(logp[r, targets[i]]),
                         "logprob_answer_set": float(on_set[r, right])})
    return rows


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


def knowledge_curves(rows_by_checkpoint, n_answers: int | None = None, split: str | None = None):
    """Accuracy per checkpoint x class x target x query language (k, n, Wilson 95%).

    ``target`` is the new language a class belongs to ("all" for the primary-only pool);
    ``chance`` = 1 / n_answers when given.
    """
    import pandas as pd

    out = []
    for name, step, rows in _series(rows_by_checkpoint):
        groups: dict[tuple, list[int]] = {}
        for r in rows:
            if split is not None and r["split"] != split:
                continue
            key = (r["class"], r["target"] or "all", r["language"], r["side"])
            groups.setdefault(key, []).append(int(r["correct"]))
        for (cls, target, lang, side), hits in sorted(groups.items()):
            out.append({"checkpoint": name, "step": step, "class": cls, "target": target,
                        "language": lang, "side": side, **_rate(sum(hits), len(hits)),
                        "chance": 1 / n_answers if n_answers else None})
    return pd.DataFrame(out)


def transfer_shares(rows_by_checkpoint, split: str | None = None):
    """Per checkpoint and new language: solved (facts answered correctly in it), of them
    primary-only, the share with a Wilson 95% interval, and the share at chance."""
    import pandas as pd

    out = []
    for name, step, rows in _series(rows_by_checkpoint):
        by_lang: dict[str, list[dict]] = {}
        for r in rows:
            if r["side"] == "new" and (split is None or r["split"] == split):
                by_lang.setdefault(r["language"], []).append(r)
        for lang, rs in sorted(by_lang.items()):
            solved = [r for r in rs if int(r["correct"])]
            inside = sum(r["class"] == "primary-only" for r in solved)
            lo, hi = wilson_interval(inside, len(solved))
            out.append({"checkpoint": name, "step": step, "language": lang,
                        "queries": len(rs), "solved": len(solved),
                        "solved_primary_only": inside,
                        "share": inside / len(solved) if solved else None,
                        "share_lo95": lo, "share_hi95": hi,
                        "share_at_chance": sum(r["class"] == "primary-only" for r in rs) / len(rs)})
    return pd.DataFrame(out)


def evaluate_knowledge_series(source: str | os.PathLike, facts, out=None,
                              batch_size: int = 32, split: str | None = None,
                              progress: bool = True) -> dict:
    """Items, curves and transfer shares for every checkpoint of ``source``.

    With ``out`` (JSON): all three + provenance; a rerun resumes past checkpoints already
    in ``<out>.partial.jsonl``. Returns {"items", "curves", "shares"} (DataFrames).
    """
    import pandas as pd
    from tqdm.auto import tqdm

    fobj = _as_facts(facts)
    refs = list_checkpoints(source)
    partial = PartialRows(str(out) + ".partial.jsonl" if out is not None else None, "checkpoint")
    done = partial.done
    series: list[tuple[str, int | None, list[dict]]] = []
    for ref in tqdm(refs, desc="knowledge", unit="ckpt", disable=not progress):
        if ref.name in done:
            rows = done[ref.name]
        else:
            model, tok = ref.load()
            rows = [{"checkpoint": ref.name, "step": ref.step, **r}
                    for r in knowledge_items(model, tok, fobj, batch_size, split)]
            partial.append(rows)
        series.append((ref.name, ref.step, rows))
    n_answers = len(fobj["answers"])
    result = {"items": pd.DataFrame([r for _, _, rows in series for r in rows]),
              "curves": knowledge_curves(series, n_answers),
              "shares": transfer_shares(series)}
    if out is not None:
        atomic_write_json(out, {
            "metric": "top-1 among the answer set after held-out knowledge queries",
            "chance": 1 / n_answers,
            **{k: json.loads(v.to_json(orient="records")) for k, v in result.items()},
            "provenance": provenance(source=str(source), config={
                "batch_size": batch_size, "split": split,
                "facts_config_sha256": fobj.get("config_sha256")}),
        })
        partial.close()
    return result

