"""Logit lens over checkpoint series: which language does each layer "think" in?

For every checkpoint and every layer (embeddings + each block) the hidden state at the
prediction position is decoded through the model's OWN final norm and unembedding.
The norm is recomputed for that layer's state (not the final layer's cached scale -
the TransformerLens issue 1076 pitfall), and HF's last hidden state, which already
has the final norm applied, is unembedded as it is. So the last lens layer reproduces
the model's own logits exactly (tested to 1e-4).

One forward with ``output_hidden_states=True`` per batch; only the prediction positions
are gathered and unembedded, which is what makes this cheap next to a run-with-cache.
Left or right padding both work: explicit ``position_ids`` make the padded result
identical to the unpadded one.

Measures per prompt and layer (first-token attribution, see ``suite.ATTRIBUTION``):

=====================  ====================================================================
``top1_primary``       1 if the top-1 token is the primary identifier's first token
``top1_new``           1 if the top-1 token is the new identifier's first token
``top1_target``        1 if the top-1 token is this prompt's own identifier (cloze accuracy)
``p_primary``/``p_new``  probability mass on each first token
``logp_diff``          log p(new) - log p(primary)
``prefers_new``        1 if log p(new) > log p(primary)
``primary_vs_control`` log p(primary) - mean log p(other pairs' primary first tokens): the
                       control - is the TRUE counterpart favoured, or Python tokens in general?
``prefers_new_vs_unrelated``  control A of ``prefers_new``: the share of UNRELATED primary
                       tokens (other pairs' primary first tokens) that the new token beats
``other_new_prefers``  control B: the share of OTHER pairs' new first tokens that beat this
                       prompt's primary token
``logp_new_vs_unrelated``, ``logp_other_new_vs_primary``  the same two controls as log-prob
                       margins (mean over the control tokens)
``primary_vs_control_kind``, ``prefers_new_vs_unrelated_kind``, ``logp_new_vs_unrelated_kind``
                       the same with the unrelated primary tokens of pairs of the SAME kind
                       (keyword | builtin) only: the kind-matched control A
``new_vs_other_new``   log p(new) - mean log p(other pairs' new first tokens)
=====================  ====================================================================

``prefers_new`` and the controls are differences of logits at one position, so the
normaliser cancels: ``vocab="gathered"`` computes them from the needed unembedding rows
only (norm each layer's state, matmul with W_U[rows]); the top-1 and probability measures
need the full vocabulary. ``lens_controls`` (module ``lens_controls``, re-exported here)
turns the per-prompt rows into the specific effects (true pair minus control), as shares
and as margins in nats, with a bootstrap interval over clusters of prompt texts.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Sequence

from babeltower.batching import pad_batch
from babeltower.architectures import final_norm, unembedding
from babeltower.errors import BabelError
from babeltower.io import atomic_write_bytes, atomic_write_json, provenance, refuse_existing
from babeltower.checkpoints import convert_gguf
from babeltower.probes.lens_controls import (CONTROL_MEASURES, CONTROLS, lens_controls,
                                             lens_controls_summary)
from babeltower.probes.prefix_tree import build_tree, supports_tree, tree_batches
from babeltower.probes.suite import (ATTRIBUTION, CheckedItem, CheckedSuite, ProbeSuite,
                                     load_suite)
from babeltower.series import (SeriesOptions, checkpoints_of, parquet_bytes,
                               run_series, state_dir_for, write_outputs)

#: measures that need the full-vocabulary distribution at every layer (argmax, probabilities)
FULL_VOCAB_MEASURES = ("top1_primary", "top1_new", "top1_target", "p_primary", "p_new")
#: measures that are logit differences at one position: a few unembedding rows suffice
PAIRWISE_MEASURES = ("logp_diff", "prefers_new", "primary_vs_control",
                     "prefers_new_vs_unrelated", "other_new_prefers",
                     "logp_new_vs_unrelated", "logp_other_new_vs_primary",
                     # control A with the unrelated primary tokens drawn from pairs of the
                     # same kind only (``CheckedItem.control_kind_ids``), and the margin
                     # analogue of specific_new
                     "primary_vs_control_kind", "prefers_new_vs_unrelated_kind",
                     "logp_new_vs_unrelated_kind", "new_vs_other_new")
MEASURES = FULL_VOCAB_MEASURES + PAIRWISE_MEASURES
#: per-prompt measures at the output layer scored with whole identifiers ("full-sequence")
SEQUENCE_MEASURES = ("seq_logp_diff", "seq_prefers_new", "seq_logp_target")
VOCAB_MODES = ("full", "gathered")


def position_ids_for(attention_mask):
    """Positions that ignore padding on either side (0 for the first real token)."""
    return (attention_mask.long().cumsum(-1) - 1).clamp(min=0)


def last_positions(attention_mask):
    """Index of the last real token of every row, for left or right padding."""
    import torch

    idx = torch.arange(attention_mask.shape[1], device=attention_mask.device)
    return (attention_mask.long() * (idx + 1)).argmax(dim=1)


class LogitLens:
    """Decode every layer's hidden state through the model's own final norm + unembedding."""

    def __init__(self, model):
        self.model = model
        self.norm = final_norm(model)
        self.unembed = unembedding(model)
        self.n_layers = int(model.config.num_hidden_layers)
        self.decoder = model.base_model

    def hidden_states(self, input_ids, attention_mask, position_ids=None):
        """Every layer's hidden states at every position: a tuple of n_layers + 1 tensors
        (batch, seq, hidden), the last one already through the final norm (HF). They are
        inference tensors (read them, copy them with ``.clone()`` to modify in place).
        ``attention_mask`` is a 2D padding mask, or a 4D additive mask (a prefix tree's,
        see ``prefix_tree``) with its ``position_ids``."""
        import torch

        if position_ids is None:
            if attention_mask.dim() != 2:
                raise BabelError("a 4D attention mask needs its position_ids")
            position_ids = position_ids_for(attention_mask)

        # inference mode, not just no_grad: no autograd bookkeeping (version counters,
        # view tracking) on any tensor of the forward - 5-9% of a SmolLM2 forward on CPU
        with torch.inference_mode():
            # the decoder alone: the LM head over every position is the costliest part of a
            # forward on short prompts, and the lens unembeds the positions it reads itself
            out = self.decoder(input_ids=input_ids, attention_mask=attention_mask,
                               position_ids=position_ids, output_hidden_states=True,
                               use_cache=False)
        hs = out.hidden_states
        if len(hs) != self.n_layers + 1:
            raise BabelError(f"model returned {len(hs)} hidden states for {self.n_layers} layers")
        return hs

    def layer_states(self, input_ids, attention_mask=None, positions=None):
        """Hidden states at ``positions`` for every layer: (n_layers + 1, batch, hidden)."""
        import torch

        if attention_mask is None:
            attention_mask = torch.ones_like(input_ids)
        if positions is None:
            positions = last_positions(attention_mask)
        hs = self.hidden_states(input_ids, attention_mask)
        rows = torch.arange(input_ids.shape[0], device=input_ids.device)
        return torch.stack([h[rows, positions] for h in hs])

    def normed(self, states):
        """The final norm applied to every layer's state but the last (already normed)."""
        import torch

        with torch.inference_mode():
            return torch.cat([self.norm(states[:-1]), states[-1:]], dim=0)

    def decode_rows(self, states, token_ids):
        """Logits of ``token_ids`` only, for stacked states (n_layers + 1, ..., hidden):
        the normed states times the gathered unembedding rows W_U[token_ids] (+ bias), so a
        pairwise measure costs len(token_ids) dot products per state instead of the vocabulary.
        Equal to ``decode(states)[..., token_ids]`` (tested to 1e-4)."""
        import torch

        idx = torch.as_tensor(token_ids, dtype=torch.long, device=states.device)
        weight = getattr(self.unembed, "weight", None)
        if not isinstance(self.unembed, torch.nn.Linear) or weight is None:
            return self.decode(states)[..., idx]   # an unusual head: take the exact path
        with torch.inference_mode():
            out = self.normed(states) @ weight[idx].T
            if self.unembed.bias is not None:
                out = out + self.unembed.bias[idx]
            return out

    def decode(self, states):
        """Logits for stacked states (n_layers + 1, ...): the norm is applied to every layer
        but the last, whose HF hidden state already went through the final norm."""
        import torch

        with torch.inference_mode():
            return self.unembed(self.normed(states))

    def layer_logits(self, input_ids, attention_mask=None, positions=None):
        """(n_layers + 1, batch, vocab) logits at ``positions`` (default: last real token)."""
        return self.decode(self.layer_states(input_ids, attention_mask, positions))


# --------------------------------------------------------------------------- batching


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
                logits = lens.unembed(h[j, c - 1:c - 1 + len(t)])
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
        logp = torch.log_softmax(lens.unembed(last_hidden[rows, pos]).float(), dim=-1)
    tok_lp = logp[torch.tensor([p[0] for p in picks]), torch.tensor([p[1] for p in picks])]
    sums = [[0.0, 0.0] for _ in chunk]
    for (_, _, j, w), v in zip(picks, tok_lp.tolist()):
        sums[j][w] += v
    return [(a, b) for a, b in sums]


PACKINGS = ("auto", "tree", "padded")
#: tokens (tree nodes) per tree forward: the linear layers' matmuls reach their rate at a
#: few hundred rows, while the tree mask's attention grows with the square of the nodes
MAX_TREE_NODES = 256


def _check_packing(packing: str) -> None:
    if packing not in PACKINGS:
        raise BabelError(f"packing must be one of {', '.join(PACKINGS)}, not {packing!r}")


def _use_tree(model, packing: str, max_depth: int) -> bool:
    _check_packing(packing)
    ok = supports_tree(model, max_depth)
    if packing == "tree" and not ok:
        cfg = model.config
        raise BabelError(f"packing='tree' needs eager or SDPA attention on a tested "
                         f"architecture ({cfg.model_type}, "
                         f"{getattr(cfg, '_attn_implementation', None)}); use 'padded'")
    return ok and packing != "padded"


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
        param = next(lens.model.parameters())
        inputs = packed.inputs(dtype=param.dtype, device=param.device)
        hs = lens.hidden_states(**inputs)

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


# --------------------------------------------------------------------------- series

def _as_suite(suite, primary: str | None, new: str | None) -> ProbeSuite:
    if isinstance(suite, ProbeSuite):
        return suite
    if isinstance(suite, CheckedSuite):
        return suite.suite
    if primary is None or new is None:
        raise BabelError("give a ProbeSuite or both primary and new languages")
    return load_suite(primary, new, path=suite)


LENS_COLUMNS = ["checkpoint", "step", "tokens", "layer", "n_layers", "side", "pair_language",
                "kind", "measure", "value", "n", "sem", "attribution", "suite",
                "weights_sha256", "config_sha256", "data_sha256"]


@dataclass
class LensMeasure:
    """The logit lens as a series measure (``babeltower.series``): per checkpoint the
    prompt means of ``aggregate_items``, one row per (layer, side, kind, measure)."""

    suite: ProbeSuite
    batch_size: int = 16
    padding_side: str = "left"
    add_bos: bool | None = None
    full_sequence: bool = True
    name: str = "lens"
    tokenizer_check: dict = field(default_factory=dict)
    packing: str = "auto"

    def config(self) -> dict:
        # batch size, padding side and packing do not change the numbers (tested), so not here
        return {"suite": self.suite.model_dump(mode="json", exclude={"source"}),
                "add_bos": self.add_bos, "full_sequence": self.full_sequence}

    def measure(self, model, tokenizer, ref) -> list[dict]:
        checked = self.suite.check(tokenizer, add_bos=self.add_bos)
        self.tokenizer_check[ref.name] = checked.summary()
        if not checked.items:
            raise BabelError(f"no usable probe prompts for {ref.name}'s tokenizer "
                             f"({len(checked.dropped)} dropped, {len(checked.shared)} shared)")
        items = lens_items(model, tokenizer, checked, self.batch_size, self.padding_side,
                           full_sequence=self.full_sequence, packing=self.packing)
        agg = aggregate_items(items)
        agg.insert(0, "tokens", ref.tokens)
        agg["n_layers"] = int(model.config.num_hidden_layers)
        agg["suite"] = self.suite.name
        return json.loads(agg.to_json(orient="records"))


def run_lens(source, suite: ProbeSuite | str | os.PathLike | None = None, *,
             primary: str | None = None, new: str | None = None,
             revisions: list[str] | None = None, out: str | os.PathLike | None = None,
             batch_size: int = 16, padding_side: str = "left", add_bos: bool | None = None,
             full_sequence: bool = True, progress: bool = True, overwrite: bool = False,
             on_checkpoint: Callable[[str], None] | None = None,
             options: SeriesOptions | None = None, steps: list[int] | None = None,
             packing: str = "auto"):
    """Logit lens over every checkpoint of ``source``: a tidy DataFrame with columns
    ``LENS_COLUMNS`` (checkpoint, step, tokens, layer, n_layers, side, pair_language, kind,
    measure, value, n, sem, attribution, suite, and the weights/config/data hashes).

    ``suite``: a ProbeSuite, or a suite file/dir (with ``primary``/``new``), or None for the
    built-in suite of (primary, new). With ``out``, an interrupted run resumes from
    ``<out>.partial/`` and the finished directory (``lens.parquet`` + ``lens.csv`` +
    ``summary.csv`` + ``provenance.json``) appears as one unit.
    """
    suite = _as_suite(suite, primary, new)
    refs = checkpoints_of(source, revisions, steps)     # a wrong source is named first
    opts = options or SeriesOptions(progress=progress, overwrite=overwrite)
    refuse_existing(out, opts.overwrite)
    _check_packing(packing)     # before any checkpoint is loaded
    lens = LensMeasure(suite, batch_size, padding_side, add_bos, full_sequence,
                       packing=packing)
    res = run_series(refs, [lens], state=state_dir_for(out), options=opts,
                     on_checkpoint=on_checkpoint)
    df = res.frame("lens")[LENS_COLUMNS]
    if out is not None:
        def write(d: Path) -> None:
            atomic_write_bytes(d / "lens.parquet", parquet_bytes(df))
            atomic_write_bytes(d / "lens.csv", df.to_csv(index=False).encode())
            atomic_write_bytes(d / "summary.csv",
                               summarize_lens(df).to_csv(index=False).encode())
            atomic_write_json(d / "provenance.json", provenance(
                config={"suite": suite.model_dump(mode="json"), "batch_size": batch_size,
                        "padding_side": padding_side, "add_bos": add_bos,
                        "full_sequence": full_sequence, "packing": packing},
                source=str(source) if not isinstance(source, list) else [r.path for r in res.refs],
                revisions=revisions, checkpoints=[r.name for r in res.refs],
                weights_sha256=res.weights, attribution=ATTRIBUTION,
                tokenizer_check=lens.tokenizer_check))
        write_outputs(out, write, res, overwrite=True)
    return df


def summarize_lens(df):
    """One row per checkpoint, read on the NEW-language prompts (all kinds):
    share_new_last / share_primary_last (top-1 share at the output layer),
    prefers_new_last, logp_diff_last, the same averaged over the blocks (``*_mean``, layers
    1..L: the embedding layer is reported apart as ``*_layer0``), the control margin and
    the two controls of ``prefers_new`` at the output layer (``control_a_last``: the new
    token against unrelated primary tokens; ``control_b_last``: other pairs' new tokens
    against the primary token; ``specific_last`` = control_a_last - prefers_new_last; the
    interval needs the per-prompt rows, see ``lens_controls``), the same with the
    kind-matched control A (``control_margin_kind_last``, ``control_a_kind_last``,
    ``specific_kind_last``), the counterpart margin averaged over the blocks
    (``control_margin_mean``, ``control_margin_kind_mean``; nats), and cloze accuracy on
    both sides. Results written before the kind-matched measures existed give NaN there."""
    import pandas as pd

    rows = []
    for (ck, step, tokens), g in df.groupby(["checkpoint", "step", "tokens"], sort=False,
                                            dropna=False):
        new_side = g[(g.side == "new") & (g.kind == "all")]
        last = new_side[new_side.layer == new_side.layer.max()]
        blocks, layer0 = new_side[new_side.layer > 0], new_side[new_side.layer == 0]

        def at(frame, m):
            v = frame.loc[frame.measure == m, "value"]
            return float(v.mean()) if len(v) else float("nan")

        prim = g[(g.side == "primary") & (g.kind == "all")]
        prim_last = prim[prim.layer == prim.layer.max()]
        rows.append({
            "checkpoint": ck, "step": step, "tokens": tokens,
            "share_new_last": at(last, "top1_new"),
            "share_primary_last": at(last, "top1_primary"),
            "prefers_new_last": at(last, "prefers_new"),
            "logp_diff_last": at(last, "logp_diff"),
            "share_new_mean": at(blocks, "top1_new"),
            "share_primary_mean": at(blocks, "top1_primary"),
            "prefers_new_mean": at(blocks, "prefers_new"),
            "logp_diff_mean": at(blocks, "logp_diff"),
            "prefers_new_layer0": at(layer0, "prefers_new"),
            "logp_diff_layer0": at(layer0, "logp_diff"),
            "control_margin_last": at(last, "primary_vs_control"),
            "control_a_last": at(last, "prefers_new_vs_unrelated"),
            "control_b_last": at(last, "other_new_prefers"),
            "specific_last": at(last, "prefers_new_vs_unrelated") - at(last, "prefers_new"),
            # kind-matched control A (unrelated primary tokens of the pair's own kind) and
            # the counterpart margin in nats over the blocks (see lens_controls)
            "control_margin_kind_last": at(last, "primary_vs_control_kind"),
            "control_a_kind_last": at(last, "prefers_new_vs_unrelated_kind"),
            "specific_kind_last": (at(last, "prefers_new_vs_unrelated_kind")
                                   - at(last, "prefers_new")),
            "control_margin_mean": at(blocks, "primary_vs_control"),
            "control_margin_kind_mean": at(blocks, "primary_vs_control_kind"),
            "cloze_new_last": at(last, "top1_target"),
            "cloze_primary_last": at(prim_last, "top1_target"),
            "attribution": ATTRIBUTION,
            # the output layer scored with whole identifiers (attribution "full-sequence")
            "seq_prefers_new_last": at(last, "seq_prefers_new"),
            "seq_logp_diff_last": at(last, "seq_logp_diff"),
        })
    return pd.DataFrame(rows)


def layer_table(df, checkpoint: str | None = None, side: str = "new", kind: str = "all",
                measures: Sequence[str] = ("top1_primary", "top1_new", "prefers_new",
                                           "logp_diff", "primary_vs_control")):
    """Layers x measures for one checkpoint (default: the last one), one side and kind."""
    if checkpoint is None:
        checkpoint = df.checkpoint.iloc[-1]
    sel = df[(df.checkpoint == checkpoint) & (df.side == side) & (df.kind == kind)
             & df.measure.isin(list(measures))]
    if sel.empty:
        raise BabelError(f"no lens rows for checkpoint={checkpoint} side={side} kind={kind}")
    return sel.pivot_table(index="layer", columns="measure", values="value")[list(measures)]


def load_tokenizer(path: str):
    """A tokenizer from a tokenizer/model directory, a packed DATA dir, or a .gguf file."""
    from transformers import AutoTokenizer

    p = Path(path)
    if p.is_file() and p.suffix.lower() == ".gguf":
        p = convert_gguf(p)
    elif (p / "tokenizer").is_dir() and (p / "manifest.json").exists():
        p = p / "tokenizer"
    if not p.exists():
        raise BabelError(f"tokenizer not found: {p}")
    try:
        return AutoTokenizer.from_pretrained(p)
    except (OSError, ValueError) as e:
        raise BabelError(f"cannot load tokenizer from {p}: {e}".splitlines()[0]) from e
