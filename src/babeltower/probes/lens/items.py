"""Scoring a checked probe suite with the lens: batching (length buckets, padded rows or
prefix trees), per-item measures at every layer, and their aggregation."""

from __future__ import annotations

from typing import Callable, Sequence

from babeltower.batching import pad_batch
from babeltower.errors import BabelError
from babeltower.probes.lens.decode import (MEASURES, PAIRWISE_MEASURES, SEQUENCE_MEASURES,
                                          VOCAB_MODES, LogitLens, position_ids_for)
from babeltower.probes.prefix_tree import build_tree, tree_batches, tree_inputs, tree_refusal
from babeltower.probes.suite import ATTRIBUTION, CheckedItem, CheckedSuite


def _pad_id(tokenizer) -> int:
    for attr in ("pad_token_id", "eos_token_id", "unk_token_id"):
        v = getattr(tokenizer, attr, None)
        if v is not None:
            return int(v)
    return 0



def sequence_logprobs(model, contexts: Sequence[Sequence[int]],
                      continuations: Sequence[Sequence[int]], pad_id: int = 0,
                      batch_size: int = 16):
    """log p(continuation | context) summed over all continuation tokens, read from the
    model's own output (the last layer): one float per (context, continuation)."""
    import numpy as np
    import torch

    lens = LogitLens(model)
    out = np.zeros(len(contexts))
    order = sorted(range(len(contexts)), key=lambda i: len(contexts[i]) + len(continuations[i]))
    for b in range(0, len(order), batch_size):
        idx = order[b:b + batch_size]
        seqs = [list(contexts[i]) + list(continuations[i]) for i in idx]
        ids, mask = pad_batch(seqs, pad_id, "right")
        with torch.inference_mode():
            h = lens.decoder(input_ids=ids, attention_mask=mask,
                             position_ids=position_ids_for(mask), use_cache=False)[0]
            for j, i in enumerate(idx):
                c, t = len(contexts[i]), list(continuations[i])
                logits = lens.logits(h[j, c - 1:c - 1 + len(t)])
                lp = torch.log_softmax(logits.float(), dim=-1)
                out[i] = float(lp[torch.arange(len(t)), torch.tensor(t)].sum())
    return out



def _item_rows(it: CheckedItem, full_sequence: bool):
    """Token rows one item runs, and which row scores which whole identifier.

    Whole identifiers are scored by teacher forcing inside the lens's own forward: a
    multi-token identifier's row is the prompt plus all but its last token. Attention is
    causal, so the prompt position of that row has exactly the prompt's own states (the
    lens reads it there), and the positions after it give the identifier's other tokens.
    A single-token identifier needs no row of its own. -> (rows, {"primary"|"new": row})."""
    if not full_sequence:
        return [list(it.prompt_ids)], {}
    rows, where = [], {}
    for which, ids in (("primary", it.primary_ids), ("new", it.new_ids)):
        if len(ids) > 1:
            where[which] = len(rows)
            rows.append(list(it.prompt_ids) + list(ids[:-1]))
    return (rows or [list(it.prompt_ids)]), where



def _item_measures(score, top, it: CheckedItem, n_l: int) -> dict:
    """Per-layer measures of one item from ``score`` ((n_l, K) log-probs or logits, read
    through ``score(token_ids)``) - the pairwise ones use differences only, so logits and
    log-probs give the same values - and, with ``top`` (n_l,), the full-vocabulary ones."""
    import torch

    s_p, s_n = score([it.primary_first_id])[:, 0], score([it.new_first_id])[:, 0]
    nan = torch.full((n_l,), float("nan"))
    out = {"logp_diff": s_n - s_p, "prefers_new": (s_n > s_p).float()}
    if it.control_ids:
        ctrl = score(it.control_ids)                                  # (n_l, k)
        out["primary_vs_control"] = s_p - ctrl.mean(-1)
        out["prefers_new_vs_unrelated"] = (s_n[:, None] > ctrl).float().mean(-1)
        out["logp_new_vs_unrelated"] = s_n - ctrl.mean(-1)
    else:
        for k in ("primary_vs_control", "prefers_new_vs_unrelated", "logp_new_vs_unrelated"):
            out[k] = nan
    if it.control_kind_ids:
        ctrl_k = score(it.control_kind_ids)
        out["primary_vs_control_kind"] = s_p - ctrl_k.mean(-1)
        out["prefers_new_vs_unrelated_kind"] = (s_n[:, None] > ctrl_k).float().mean(-1)
        out["logp_new_vs_unrelated_kind"] = s_n - ctrl_k.mean(-1)
    else:
        for k in ("primary_vs_control_kind", "prefers_new_vs_unrelated_kind",
                  "logp_new_vs_unrelated_kind"):
            out[k] = nan
    if it.control_new_ids:
        ctrl_new = score(it.control_new_ids)
        out["other_new_prefers"] = (ctrl_new > s_p[:, None]).float().mean(-1)
        out["logp_other_new_vs_primary"] = ctrl_new.mean(-1) - s_p
        out["new_vs_other_new"] = s_n - ctrl_new.mean(-1)
    else:
        out["other_new_prefers"] = out["logp_other_new_vs_primary"] = nan
        out["new_vs_other_new"] = nan
    if top is not None:
        out.update({"top1_primary": (top == it.primary_first_id).float(),
                    "top1_new": (top == it.new_first_id).float(),
                    "top1_target": (top == it.target_first_id).float(),
                    "p_primary": s_p.exp(), "p_new": s_n.exp()})
    return out



def _layer_scores(lens: LogitLens, states, chunk: list[CheckedItem], vocab: str):
    """-> (per-item score functions token ids -> (n_l, k), argmax tokens (n_l, B) or None)."""
    import torch

    if vocab == "full":
        logp = torch.log_softmax(lens.decode(states).float(), dim=-1)     # (n_l, B, V)
        top = logp.argmax(dim=-1)
        return [lambda ids, j=j: logp[:, j, ids] for j in range(len(chunk))], top
    need = sorted({t for it in chunk for t in (it.primary_first_id, it.new_first_id,
                                                *it.control_ids, *it.control_new_ids,
                                                *it.control_kind_ids)})
    col = {t: c for c, t in enumerate(need)}
    logits = lens.decode_rows(states, need).float()                     # (n_l, B, R)
    return [lambda ids, j=j: logits[:, j, [col[t] for t in ids]]
            for j in range(len(chunk))], None



def _sequence_scores(lens: LogitLens, last_hidden, chunk: list[CheckedItem], first: list[int],
                     where: list[dict], at: Callable[[int, int], tuple[int, int]]
                     ) -> list[tuple[float, float]]:
    """log p(whole primary identifier), log p(whole new identifier) per item, read from the
    model's own output (last layer) at the prompt and teacher-forced positions; ``at(row,
    k)`` is where row's k-th token sits in ``last_hidden`` (batch index, sequence index)."""
    import torch

    slots: dict[tuple[int, int], int] = {}
    picks = []   # (slot, token, item, which)
    for j, it in enumerate(chunk):
        p0 = len(it.prompt_ids) - 1
        for w, ids in enumerate((it.primary_ids, it.new_ids)):
            r = where[j].get(("primary", "new")[w], first[j])
            for k, t in enumerate(ids):
                slot = slots.setdefault(at(r, p0 + k), len(slots))
                picks.append((slot, t, j, w))
    rows = torch.tensor([rp[0] for rp in slots])
    pos = torch.tensor([rp[1] for rp in slots])
    with torch.inference_mode():
        logp = torch.log_softmax(lens.logits(last_hidden[rows, pos]).float(), dim=-1)
    tok_lp = logp[torch.tensor([p[0] for p in picks]), torch.tensor([p[1] for p in picks])]
    sums = [[0.0, 0.0] for _ in chunk]
    for (_, _, j, w), v in zip(picks, tok_lp.tolist()):
        sums[j][w] += v
    return [(a, b) for a, b in sums]



PACKINGS = ("auto", "tree", "padded")


#: tokens (tree nodes) per tree forward: the linear layers' matmuls reach their rate at a
#: few hundred rows, while the tree mask's attention grows with the square of the nodes
MAX_TREE_NODES = 256



def check_packing(packing: str) -> None:
    if packing not in PACKINGS:
        raise BabelError(f"packing must be one of {', '.join(PACKINGS)}, not {packing!r}")



def _use_tree(model, packing: str, max_depth: int) -> bool:
    check_packing(packing)
    refusal = tree_refusal(model, max_depth)
    if packing == "tree" and refusal:
        raise BabelError(f"packing='tree' cannot run this model: {refusal}; use 'padded'")
    return refusal is None and packing != "padded"


#: a forward's fixed cost in token positions: SmolLM2-135M on one CPU thread took ~50 ms
#: for one token and ~3.5 ms per further token position (one forward of 16 x 8 tokens:
#: 0.44 s); the fixed part (reading every weight once, per-layer overhead) scales with
#: the model as the per-token part does
FORWARD_COST_TOKENS = 16



def _length_batches(item_rows: list[list[list[int]]], batch_size: int) -> list[list[int]]:
    """Item indices per forward: items sorted by length (identical prompts next to each
    other, so a batch runs them once) and cut into runs of at most ``batch_size`` items
    where the padded work is least: each forward costs FORWARD_COST_TOKENS plus its
    distinct rows x its longest row (dynamic programming over the cut points)."""
    order = sorted(range(len(item_rows)), key=lambda i: (max(map(len, item_rows[i])),
                                                         item_rows[i]))
    best, cut = [0.0] + [float("inf")] * len(order), [0] * (len(order) + 1)
    for j in range(1, len(order) + 1):
        distinct: set[tuple] = set()
        width = max(map(len, item_rows[order[j - 1]]))       # sorted: the run's longest
        for i in range(j - 1, max(0, j - batch_size) - 1, -1):
            distinct.update(map(tuple, item_rows[order[i]]))
            cost = best[i] + FORWARD_COST_TOKENS + len(distinct) * width
            if cost < best[j]:
                best[j], cut[j] = cost, i
    runs, j = [], len(order)
    while j:
        runs.append(order[cut[j]:j])
        j = cut[j]
    return runs[::-1]



def _lens_batch(lens: LogitLens, chunk: list[CheckedItem], pad: int, padding_side: str,
                vocab: str, full_sequence: bool, tree: bool):
    """One forward for a batch of items -> (per-item measure dicts, per-item (lp_p, lp_n)).
    The batch's token rows run as a prefix tree (``tree``: every shared prefix once, one
    sequence) or as a padded batch."""
    import torch

    index: dict[tuple, int] = {}     # token row -> its row in the batch
    first, where = [], []
    for it in chunk:
        r, w = _item_rows(it, full_sequence)
        # identical token rows (one prompt written for several targets) run once
        at_rows = [index.setdefault(tuple(x), len(index)) for x in r]
        first.append(at_rows[0])
        where.append({k: at_rows[v] for k, v in w.items()})
    rows = [list(x) for x in index]
    if tree:
        packed = build_tree(rows)
        hs = lens.hidden_states(**tree_inputs(lens.model, packed))

        def at(r: int, k: int) -> tuple[int, int]:
            return 0, packed.node[r][k]
    else:
        ids, mask = pad_batch(rows, pad, padding_side)
        hs = lens.hidden_states(ids, mask)
        offset = [ids.shape[1] - len(r) if padding_side == "left" else 0 for r in rows]

        def at(r: int, k: int) -> tuple[int, int]:
            return r, offset[r] + k
    where_prompt = [at(first[j], len(it.prompt_ids) - 1) for j, it in enumerate(chunk)]
    b_idx = torch.tensor([b for b, _ in where_prompt])
    p_idx = torch.tensor([p for _, p in where_prompt])
    states = torch.stack([h[b_idx, p_idx] for h in hs])                 # (n_l, B, H)
    scores, top = _layer_scores(lens, states, chunk, vocab)
    vals = [_item_measures(scores[j], None if top is None else top[:, j], it, len(hs))
            for j, it in enumerate(chunk)]
    seq = (_sequence_scores(lens, hs[-1], chunk, first, where, at) if full_sequence
           else None)
    return vals, seq



def lens_items(model, tokenizer, checked: CheckedSuite, batch_size: int = 16,
               padding_side: str = "left", items: list[CheckedItem] | None = None,
               full_sequence: bool = True, vocab: str = "full", packing: str = "auto",
               max_tree_nodes: int = MAX_TREE_NODES):
    """Per-prompt, per-layer measures for one model: a tidy DataFrame
    (pair_id, kind, side, pair_language, prompt, layer, measure, value, attribution).

    ``vocab="full"`` computes every measure in ``MEASURES`` (full-vocabulary logits at every
    layer); ``vocab="gathered"`` only the ``PAIRWISE_MEASURES`` (pair and controls), from the
    needed unembedding rows - the same values, a fraction of the work on a large vocabulary.

    With ``full_sequence``, the output layer is also scored with the full token sequence
    of both identifiers (``seq_logp_diff`` = log p(new identifier) - log p(primary
    identifier), ``seq_prefers_new``, ``seq_logp_target``), attribution "full-sequence":
    multi-token identifiers (``array_push``) are then credited as a whole. This happens in
    the lens's own forward (teacher forcing, see ``_item_rows``), not in extra passes.

    ``packing="tree"`` runs each forward over a prefix tree of the prompts (every shared
    prefix once, ``max_tree_nodes`` tokens a forward, see ``prefix_tree``); ``"padded"``
    over length-sorted padded batches of at most ``batch_size`` prompts; ``"auto"`` takes
    the tree where ``supports_tree`` allows it. Both give the same values (to float
    rounding, tested)."""
    import numpy as np
    import pandas as pd

    if vocab not in VOCAB_MODES:
        raise BabelError(f"vocab must be one of {', '.join(VOCAB_MODES)}, not {vocab!r}")
    lens = LogitLens(model)
    items = checked.items if items is None else items
    pad = _pad_id(tokenizer)
    n_l = lens.n_layers + 1
    measures = MEASURES if vocab == "full" else PAIRWISE_MEASURES
    cols: dict[str, list] = {k: [None] * len(items) for k in measures}
    seq = np.zeros((len(items), 2))
    meta_cols = ["pair_id", "kind", "side", "pair_language", "prompt"]
    meta = [(it.pair_id, it.kind, it.side, it.language, it.prompt) for it in items]
    item_rows = [_item_rows(it, full_sequence)[0] for it in items]
    tree = _use_tree(model, packing, max((len(r) for rs in item_rows for r in rs), default=0))
    batches = (tree_batches(item_rows, max_tree_nodes) if tree
               else _length_batches(item_rows, batch_size))
    for idx in batches:
        vals, sq = _lens_batch(lens, [items[i] for i in idx], pad, padding_side, vocab,
                               full_sequence, tree)
        for j, i in enumerate(idx):
            for k in measures:
                cols[k][i] = vals[j][k].numpy()
            if sq is not None:
                seq[i] = sq[j]
    if not meta:
        return pd.DataFrame(columns=meta_cols + ["layer", "measure", "value", "attribution"])
    frames = []
    base = pd.DataFrame(meta, columns=meta_cols)
    base = base.loc[base.index.repeat(n_l)].reset_index(drop=True)
    base["layer"] = np.tile(np.arange(n_l), len(meta))
    for k in measures:
        frames.append(base.assign(measure=k, value=np.concatenate(cols[k]).astype(np.float64),
                                  attribution=ATTRIBUTION))
    if full_sequence:
        lp_p, lp_n = seq[:, 0], seq[:, 1]
        lp_t = np.where([it.side == "new" for it in items], lp_n, lp_p)
        last = pd.DataFrame(meta, columns=meta_cols).assign(layer=n_l - 1)
        for k, v in zip(SEQUENCE_MEASURES, (lp_n - lp_p, (lp_n > lp_p) * 1.0, lp_t)):
            frames.append(last.assign(measure=k, value=v.astype(np.float64),
                                      attribution="full-sequence"))
    return pd.concat(frames, ignore_index=True)



def aggregate_items(item_df):
    """Mean over prompts per (side, pair_language, kind, layer, measure), also for kind
    "all"; with n and the standard error of the mean."""
    import pandas as pd

    keys = ["side", "pair_language", "layer", "measure"]
    if "attribution" in item_df:
        keys.append("attribution")
    both = pd.concat([item_df, item_df.assign(kind="all")], ignore_index=True)
    g = both.groupby(keys + ["kind"], sort=True)["value"]
    out = g.agg(value="mean", n="count", sem="sem").reset_index()
    return out
