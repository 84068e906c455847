"""The lens over a checkpoint series: ``LensMeasure`` through ``run_series``, ``run_lens``
(outputs, resume, provenance), summaries and layer tables."""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Sequence

from babeltower.checkpoints import convert_gguf
from babeltower.errors import BabelError
from babeltower.io import atomic_write_bytes, atomic_write_json, provenance, refuse_existing
from babeltower.probes.lens.items import aggregate_items, check_packing, lens_items
from babeltower.probes.suite import ATTRIBUTION, CheckedSuite, ProbeSuite, load_suite
from babeltower.series import (SeriesOptions, checkpoints_of, parquet_bytes, run_series,
                               state_dir_for, write_outputs)


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
    check_packing(packing)     # before any checkpoint is loaded
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
