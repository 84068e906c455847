"""Built-in cloze accuracy per language pair: the probe suite used as a benchmark.

Every usable prompt of a probe suite (``babeltower.probes.suite``) ends where an
identifier should follow (PHP ``$n = `` -> ``strlen``). At the model's FINAL layer we read:

* ``top1`` - **first-token attribution**: the argmax next token is the identifier's first
  token (what a logit lens reads; coarse with BPE - ``array`` starts several PHP
  built-ins - so every table carries ``attribution = "first-token"``);
* ``exact`` - every token of the identifier is the argmax under teacher forcing (the whole
  identifier would be produced greedily);
* ``logprob`` - the full-sequence log-probability of the identifier's tokens (nats; also
  per token), which does not depend on how the tokenizer splits it;
* ``beats_counterpart`` - the identifier's first token is more likely than the other
  language's counterpart's first token after the same prompt.

Side ``new`` is the benchmark proper (new-language prompts); side ``primary`` is the
mirrored set (the same pairs seen from the primary language), reported alongside.
Items whose two identifiers share their first token are scored too (cloze accuracy does
not need to tell the two apart) and flagged ``shared_first_token``.
"""

from __future__ import annotations

import json

from babeltower.batching import pad_batch
from babeltower.errors import BabelError
from babeltower.io import atomic_write_json, provenance
from babeltower.probes.suite import ProbeSuite, load_suite
from babeltower.series import SeriesOptions, run_series, state_dir_for

ATTRIBUTION = "first-token"


def _as_suites(suites) -> list:
    out = []
    for s in ([suites] if isinstance(suites, (str, tuple, ProbeSuite)) else suites):
        if isinstance(s, ProbeSuite):
            out.append(s)
        elif isinstance(s, tuple):
            out.append(load_suite(*s))
        elif isinstance(s, str) and "-" in s:
            p, n = s.split("-", 1)
            out.append(load_suite(p, n))
        else:
            raise BabelError(f"not a probe suite: {s!r} (use 'primary-new', e.g. python-php)")
    return out


def score_items(model, items, batch_size: int = 16) -> list[dict]:
    """Per-item cloze scores at the final layer (see the module docstring)."""
    import torch

    device = next(model.parameters()).device
    rows = []
    for b in range(0, len(items), batch_size):
        batch = items[b:b + batch_size]
        seqs = [list(it.prompt_ids) + list(it.target_ids[:-1]) for it in batch]
        inp, att = pad_batch(seqs, 0, "right")   # positions of real tokens unchanged
        with torch.no_grad():
            logp = torch.log_softmax(
                model(input_ids=inp.to(device), attention_mask=att.to(device)).logits.float(), -1)
        for r, it in enumerate(batch):
            p0 = len(it.prompt_ids) - 1
            tgt = list(it.target_ids)
            pos = torch.arange(p0, p0 + len(tgt))
            lp = logp[r, pos]                                     # (len(tgt), V)
            tok_lp = lp[torch.arange(len(tgt)), torch.tensor(tgt)]
            first = lp[0]
            rows.append({
                "pair_id": it.pair_id, "kind": it.kind, "side": it.side,
                "language": it.language, "prompt": it.prompt, "target": it.target,
                "counterpart": it.counterpart,
                "top1": bool(int(first.argmax()) == it.target_first_id),
                "exact": bool((lp.argmax(-1) == torch.tensor(tgt)).all()),
                "logprob": float(tok_lp.sum()),
                "logprob_per_token": float(tok_lp.mean()),
                "target_tokens": len(tgt),
                "beats_counterpart": bool(first[it.target_first_id] > first[it.counterpart_first_id]),
                "rank_first": int((first > first[it.target_first_id]).sum()),
                "shared_first_token": bool(it.shared_first_token),
            })
    return rows


def aggregate(items_df):
    """Per suite, side and kind: n, top1 / exact / beats-counterpart rates, mean log-probs."""
    if items_df.empty:
        return items_df
    import pandas as pd

    keys = [k for k in ("checkpoint", "step", "suite", "side", "kind") if k in items_df]
    rows = []
    # every kind on its own, then all kinds together (kind = "all")
    both = pd.concat([items_df, items_df.assign(kind="all")], ignore_index=True)
    for key, g in both.groupby(keys, dropna=False, sort=False):
        rows.append({**dict(zip(keys, key if isinstance(key, tuple) else (key,))),
                     "n": len(g), "top1_acc": g.top1.mean(), "exact_acc": g.exact.mean(),
                     "beats_counterpart": g.beats_counterpart.mean(),
                     "mean_logprob": g.logprob.mean(),
                     "mean_logprob_per_token": g.logprob_per_token.mean(),
                     "attribution": ATTRIBUTION})
    return pd.DataFrame(rows)


def evaluate_cloze(model, tokenizer, suites, batch_size: int = 16, items: bool = False):
    """Cloze accuracy of one model on probe suites -> DataFrame (per suite/side/kind).

    ``suites``: ProbeSuite objects, ``(primary, new)`` tuples, or ``"python-php"`` names.
    ``items=True`` returns ``(aggregate, per_item)``.
    """
    import pandas as pd

    frames = []
    for suite in _as_suites(suites):
        checked = suite.check(tokenizer)
        its = checked.items + checked.shared
        if not its:
            raise BabelError(f"probe suite {suite.name}: no prompt is usable with this tokenizer")
        df = pd.DataFrame(score_items(model, its, batch_size))
        df.insert(0, "suite", suite.name)
        frames.append(df)
    per_item = pd.concat(frames, ignore_index=True)
    agg = aggregate(per_item)
    return (agg, per_item) if items else agg


class ClozeMeasure:
    """Cloze accuracy as a series measure (``babeltower.series``): ``aggregate`` rows."""

    name = "cloze"

    def __init__(self, suites, batch_size: int = 16):
        self.suites, self.batch_size = _as_suites(suites), batch_size

    def config(self) -> dict:
        return {"suites": [s.model_dump(mode="json", exclude={"source"}) for s in self.suites]}

    def measure(self, model, tokenizer, ref) -> list[dict]:
        return json.loads(evaluate_cloze(model, tokenizer, self.suites, self.batch_size)
                          .to_json(orient="records"))


def evaluate_cloze_series(source, suites, out=None, batch_size: int = 16,
                          progress: bool = True, series: SeriesOptions | None = None):
    """Cloze accuracy for every checkpoint of a source; rows carry checkpoint, step and
    the weights/config hashes.

    With ``out`` (JSON): aggregate rows + provenance; a rerun resumes past checkpoints
    already finished in ``<out>.partial/``.
    """
    import pandas as pd

    cloze = ClozeMeasure(suites, batch_size)
    res = run_series(source, [cloze], state=state_dir_for(out),
                     options=series or SeriesOptions(progress=progress))
    rows = res.rows["cloze"]
    if out is not None and res.is_writer:
        atomic_write_json(out, {
            "metric": "cloze accuracy at the final layer per suite/side/kind",
            "attribution": ATTRIBUTION,
            "rows": rows,
            "provenance": provenance(source=str(source), suites=[s.name for s in cloze.suites],
                                     suite_files=[s.source for s in cloze.suites],
                                     config={"batch_size": batch_size},
                                     weights_sha256=res.weights),
        })
        res.close()
    return pd.DataFrame(rows)
