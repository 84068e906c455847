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
=====================  ====================================================================
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Sequence

from babeltower.architectures import final_norm, unembedding
from babeltower.errors import BabelError
from babeltower.io import atomic_write_bytes, atomic_write_json, provenance
from babeltower.checkpoints import convert_gguf
from babeltower.probes.suite import (ATTRIBUTION, CheckedItem, CheckedSuite, ProbeSuite,
                                     load_suite)
from babeltower.series import (SeriesOptions, checkpoints_of, parquet_bytes, refuse_existing,
                               run_series, state_dir_for, write_outputs)

MEASURES = ("top1_primary", "top1_new", "top1_target", "p_primary", "p_new", "logp_diff",
            "prefers_new", "primary_vs_control")


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

    def layer_states(self, input_ids, attention_mask=None, positions=None):
        """Hidden states at ``positions`` for every layer: (n_layers + 1, batch, hidden)."""
        import torch

        if attention_mask is None:
            attention_mask = torch.ones_like(input_ids)
        if positions is None:
            positions = last_positions(attention_mask)
        with torch.no_grad():
            # the decoder alone: the LM head over every position is the costliest part of a
            # forward on short prompts, and the lens unembeds the prediction positions itself
            out = self.decoder(input_ids=input_ids, attention_mask=attention_mask,
                               position_ids=position_ids_for(attention_mask),
                               output_hidden_states=True, use_cache=False)
        rows = torch.arange(input_ids.shape[0], device=input_ids.device)
        hs = out.hidden_states
        if len(hs) != self.n_layers + 1:
            raise BabelError(f"model returned {len(hs)} hidden states for {self.n_layers} layers")
        return torch.stack([h[rows, positions] for h in hs])

    def decode(self, states):
        """Logits for stacked states (n_layers + 1, ...): the norm is applied to every layer
        but the last, whose HF hidden state already went through the final norm."""
        import torch

        with torch.no_grad():
            normed = torch.cat([self.norm(states[:-1]), states[-1:]], dim=0)
            return self.unembed(normed)

    def layer_logits(self, input_ids, attention_mask=None, positions=None):
        """(n_layers + 1, batch, vocab) logits at ``positions`` (default: last real token)."""
        return self.decode(self.layer_states(input_ids, attention_mask, positions))


# --------------------------------------------------------------------------- batching

def pad_batch(seqs: Sequence[Sequence[int]], pad_id: int, side: str = "left"):
    """(input_ids, attention_mask) tensors for a list of token id lists."""
    import torch

    if side not in ("left", "right"):
        raise BabelError(f"padding side must be 'left' or 'right', not {side!r}")
    width = max(len(s) for s in seqs)
    ids = torch.full((len(seqs), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(seqs), width), dtype=torch.long)
    for i, s in enumerate(seqs):
        if side == "left":
            ids[i, width - len(s):] = torch.tensor(s)
            mask[i, width - len(s):] = 1
        else:
            ids[i, :len(s)] = torch.tensor(s)
            mask[i, :len(s)] = 1
    return ids, mask


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
        with torch.no_grad():
            h = lens.decoder(input_ids=ids, attention_mask=mask,
                             position_ids=position_ids_for(mask), use_cache=False)[0]
            for j, i in enumerate(idx):
                c, t = len(contexts[i]), list(continuations[i])
                logits = lens.unembed(h[j, c - 1:c - 1 + len(t)])
                lp = torch.log_softmax(logits.float(), dim=-1)
                out[i] = float(lp[torch.arange(len(t)), torch.tensor(t)].sum())
    return out


def lens_items(model, tokenizer, checked: CheckedSuite, batch_size: int = 16,
               padding_side: str = "left", items: list[CheckedItem] | None = None,
               full_sequence: bool = True):
    """Per-prompt, per-layer measures for one model: a tidy DataFrame
    (pair_id, kind, side, pair_language, prompt, layer, measure, value, attribution).

    With ``full_sequence``, the output layer is also scored with the full token sequence
    of both identifiers (``seq_logp_diff`` = log p(new identifier) - log p(primary
    identifier), ``seq_prefers_new``, ``seq_logp_target``), attribution "full-sequence":
    multi-token identifiers (``array_push``) are then credited as a whole."""
    import numpy as np
    import pandas as pd
    import torch

    lens = LogitLens(model)
    items = checked.items if items is None else items
    pad = _pad_id(tokenizer)
    n_l = lens.n_layers + 1
    cols: dict[str, list] = {k: [None] * len(items) for k in MEASURES}
    meta: list[tuple] = [(it.pair_id, it.kind, it.side, it.language, it.prompt) for it in items]
    # batches of similar length waste little on padding; results go back to item order
    order = sorted(range(len(items)), key=lambda i: len(items[i].prompt_ids))
    for b in range(0, len(order), batch_size):
        idx = order[b:b + batch_size]
        chunk = [items[i] for i in idx]
        ids, mask = pad_batch([it.prompt_ids for it in chunk], pad, padding_side)
        logp = torch.log_softmax(lens.layer_logits(ids, mask).float(), dim=-1)  # (L+1, B, V)
        top = logp.argmax(dim=-1)                                               # (L+1, B)
        for j, it in enumerate(chunk):
            lp = logp[:, j]
            p_id, n_id = it.primary_first_id, it.new_first_id
            lp_p, lp_n = lp[:, p_id], lp[:, n_id]
            ctrl = (lp[:, it.control_ids].mean(dim=-1) if it.control_ids
                    else torch.full((n_l,), float("nan")))
            vals = {
                "top1_primary": (top[:, j] == p_id).float(),
                "top1_new": (top[:, j] == n_id).float(),
                "top1_target": (top[:, j] == it.target_first_id).float(),
                "p_primary": lp_p.exp(), "p_new": lp_n.exp(),
                "logp_diff": lp_n - lp_p,
                "prefers_new": (lp_n > lp_p).float(),
                "primary_vs_control": lp_p - ctrl,
            }
            for k in MEASURES:
                cols[k][idx[j]] = vals[k].numpy()
    if not meta:
        return pd.DataFrame(columns=["pair_id", "kind", "side", "pair_language", "prompt",
                                     "layer", "measure", "value", "attribution"])
    n = len(meta)
    frames = []
    base = pd.DataFrame(meta, columns=["pair_id", "kind", "side", "pair_language", "prompt"])
    base = base.loc[base.index.repeat(n_l)].reset_index(drop=True)
    base["layer"] = np.tile(np.arange(n_l), n)
    for k in MEASURES:
        f = base.copy()
        f["measure"] = k
        f["value"] = np.concatenate(cols[k]).astype(np.float64)
        f["attribution"] = ATTRIBUTION
        frames.append(f)
    if full_sequence:
        ctx = [it.prompt_ids for it in items]
        lp_p = sequence_logprobs(model, ctx, [it.primary_ids for it in items], pad, batch_size)
        lp_n = sequence_logprobs(model, ctx, [it.new_ids for it in items], pad, batch_size)
        lp_t = np.where([it.side == "new" for it in items], lp_n, lp_p)
        last = pd.DataFrame(meta, columns=["pair_id", "kind", "side", "pair_language", "prompt"])
        last["layer"] = n_l - 1
        for k, v in (("seq_logp_diff", lp_n - lp_p), ("seq_prefers_new", (lp_n > lp_p) * 1.0),
                     ("seq_logp_target", lp_t)):
            f = last.copy()
            f["measure"] = k
            f["value"] = v.astype(np.float64)
            f["attribution"] = "full-sequence"
            frames.append(f)
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

    def config(self) -> dict:
        # batch size and padding side do not change the numbers (tested), so not here
        return {"suite": self.suite.model_dump(mode="json", exclude={"source"}),
                "add_bos": self.add_bos, "full_sequence": self.full_sequence}

    def measure(self, model, tokenizer, ref) -> list[dict]:
        checked = self.suite.check(tokenizer, add_bos=self.add_bos)
        self.tokenizer_check[ref.name] = checked.summary()
        if not checked.items:
            raise BabelError(f"no usable probe prompts for {ref.name}'s tokenizer "
                             f"({len(checked.dropped)} dropped, {len(checked.shared)} shared)")
        items = lens_items(model, tokenizer, checked, self.batch_size, self.padding_side,
                           full_sequence=self.full_sequence)
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
             options: SeriesOptions | None = None, steps: list[int] | None = None):
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
    lens = LensMeasure(suite, batch_size, padding_side, add_bos, full_sequence)
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
                        "full_sequence": full_sequence},
                source=str(source) if not isinstance(source, list) else [r.path for r in res.refs],
                revisions=revisions, checkpoints=[r.name for r in res.refs],
                weights_sha256=res.weights, attribution=ATTRIBUTION,
                tokenizer_check=lens.tokenizer_check))
        write_outputs(out, write, res, overwrite=True)
    return df


def summarize_lens(df):
    """One row per checkpoint, read on the NEW-language prompts (all kinds):
    share_new_last / share_primary_last (top-1 share at the output layer),
    prefers_new_last, logp_diff_last, and the same averaged over all layers (``*_mean``),
    plus the control margin at the output layer and cloze accuracy on both sides."""
    import pandas as pd

    rows = []
    for (ck, step, tokens), g in df.groupby(["checkpoint", "step", "tokens"], sort=False,
                                            dropna=False):
        new_side = g[(g.side == "new") & (g.kind == "all")]
        last = new_side[new_side.layer == new_side.layer.max()]

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
            "share_new_mean": at(new_side, "top1_new"),
            "share_primary_mean": at(new_side, "top1_primary"),
            "prefers_new_mean": at(new_side, "prefers_new"),
            "logp_diff_mean": at(new_side, "logp_diff"),
            "control_margin_last": at(last, "primary_vs_control"),
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
