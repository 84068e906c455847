"""Language-specific and language-transferring neurons (LAPE, Tang et al. 2024).

For each MLP neuron and language: the probability that its activation is > 0 over N
tokens of that language, counted with forward hooks (streaming: memory does not grow
with N). Where the activation is read is ``point`` (``babeltower.architectures``):
``"act_fn"`` (default, Tang et al.'s point: ``act_fn(gate_proj(x))`` in a gated MLP, the
GELU output in a GPT-2-style MLP) or ``"down_proj_input"`` (``act(gate) * up``, the
tensor the down-projection reads; for a gated MLP its sign is the product of two signs,
a near coin flip, which is why it is not the default).

``lape_select`` with ``assign="tang"`` (default) is Tang et al.'s rule (their
``identify.py``), every threshold a parameter:

1. normalise each neuron's probabilities over languages and take their entropy;
2. the filter bar is the ``filter_rate`` quantile (0.95) of ALL probabilities (the k-th
   smallest, k = round(N * filter_rate)); a neuron none of whose probabilities is
   strictly above it is dropped;
3. keep the ``top_rate`` (1%; 1-5% in the paper) lowest-entropy remaining neurons
   (k = round(n_neurons * top_rate); ties in stable index order);
4. the assignment bar is the ``activation_bar_ratio`` quantile (0.95) of ALL
   probabilities; a kept neuron belongs to every language whose probability is strictly
   above it.

(Tang's ``topk`` fills up with dropped neurons when fewer than k pass step 2; those have
no probability above the filter bar, so with ``activation_bar_ratio >= filter_rate`` they
are never assigned: the sets are the same, and ``n_kept`` counts only passing neurons.)

Other assignments, by name: ``assign="filter"`` uses the step-2 bar (the same as
``"tang"`` when the two ratios are equal); ``assign="selected"`` (**ours, not Tang's**;
this toolkit's earlier default) takes the ``activation_bar_ratio`` quantile of the KEPT
neurons' probabilities with ``>=``, and when step 2 drops every neuron (saturated
probabilities) lets ties at the filter bar pass. Every output records ``point`` and
``assign``.

**[ours]** Transferring neurons of a new language t: T = S_primary ∩ S_t, reported
as |T| and |T|/|S_t| per layer and in total, per checkpoint.
"""

from __future__ import annotations

import os
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Literal, Mapping, Sequence

import numpy as np
from pydantic import BaseModel, ConfigDict, Field, model_validator

from babeltower.architectures import neuron_modules
from babeltower.corpus.shards import TokenShards
from babeltower.errors import BabelError
from babeltower.io import (atomic_write_bytes, atomic_write_json, provenance, read_json,
                           refuse_existing, sha256_file)
from babeltower.languages import canonical
from babeltower.probes.lape_applicability import (  # noqa: F401 (re-exported)
    LAPE_MAX_MEDIAN_ENTROPY, LAPE_MIN_LANGUAGES, entropy_summary, lape_applicability,
    normalised_entropy)
from babeltower.textfiles import TextFiles, walk_text
from babeltower.series import (SeriesOptions, checkpoints_of, parquet_bytes,
                               run_series, safe_name, state_dir_for, write_outputs)

# --------------------------------------------------------------------------- model

def n_neurons(model) -> int:
    """Width of the MLP intermediate activation."""
    cfg = model.config
    for attr in ("intermediate_size", "n_inner", "ffn_dim"):
        v = getattr(cfg, attr, None)
        if v:
            return int(v)
    return 4 * int(getattr(cfg, "hidden_size", getattr(cfg, "n_embd", 0)))


# --------------------------------------------------------------------------- counting

@dataclass
class NeuronStats:
    """Streaming counts: how often each neuron (layer, index) was > 0, per language."""

    n_layers: int
    width: int
    counts: dict[str, np.ndarray] = field(default_factory=dict)   # lang -> (layers, width) int64
    tokens: dict[str, int] = field(default_factory=dict)

    def add(self, language: str, positives: np.ndarray, n_tokens: int) -> None:
        if language not in self.counts:
            self.counts[language] = np.zeros((self.n_layers, self.width), dtype=np.int64)
            self.tokens[language] = 0
        self.counts[language] += positives
        self.tokens[language] += int(n_tokens)

    @property
    def languages(self) -> list[str]:
        return list(self.counts)

    def probabilities(self, languages: Sequence[str] | None = None) -> np.ndarray:
        """(n_languages, n_layers, width) activation probabilities."""
        langs = list(languages or self.languages)
        missing = [l for l in langs if l not in self.counts or self.tokens[l] == 0]
        if missing:
            raise BabelError(f"no tokens counted for {', '.join(missing)}")
        return np.stack([self.counts[l] / self.tokens[l] for l in langs])

    def save(self, path: str | os.PathLike) -> None:
        import io

        buf = io.BytesIO()
        langs = self.languages
        np.savez(buf, languages=np.array(langs), tokens=np.array([self.tokens[l] for l in langs]),
                 counts=np.stack([self.counts[l] for l in langs]) if langs
                 else np.zeros((0, self.n_layers, self.width), dtype=np.int64))
        atomic_write_bytes(path, buf.getvalue())

    @classmethod
    def load(cls, path: str | os.PathLike) -> "NeuronStats":
        try:
            z = np.load(path)
            counts = z["counts"]
            st = cls(n_layers=counts.shape[1], width=counts.shape[2])
            for lang, tok, c in zip(z["languages"].tolist(), z["tokens"].tolist(), counts):
                st.counts[str(lang)] = c.astype(np.int64)
                st.tokens[str(lang)] = int(tok)
            return st
        except (OSError, KeyError, ValueError) as e:
            raise BabelError(f"corrupt neuron statistics {path}: {e}") from e


@contextmanager
def count_positive(model, point: str = "act_fn"):
    """Hooks that add each layer's per-neuron count of activations > 0 into ``sink``.

    Yields ``sink``: a dict with "positives" -> (n_layers, width) int64 tensor and
    "mask" (set by the caller: (batch, seq) bool of positions to count, or None).
    """
    import torch

    mods = neuron_modules(model, point)
    sink: dict = {"positives": None, "mask": None}
    handles = []

    def make(i: int, kind: str):
        def count(act):
            pos = act > 0
            m = sink["mask"]
            if m is not None:
                pos = pos & m.unsqueeze(-1)
            c = pos.reshape(-1, pos.shape[-1]).sum(dim=0)
            if sink["positives"] is None:
                sink["positives"] = torch.zeros((len(mods), c.shape[0]), dtype=torch.long)
            sink["positives"][i] += c

        if kind == "pre":
            return lambda mod, args: count(args[0])
        return lambda mod, args, out: count(out)

    for i, (mod, kind) in enumerate(mods):
        h = (mod.register_forward_pre_hook(make(i, kind)) if kind == "pre"
             else mod.register_forward_hook(make(i, kind)))
        handles.append(h)
    try:
        yield sink
    finally:
        for h in handles:
            h.remove()


def collect_stats(model, windows: Mapping[str, np.ndarray], batch_size: int = 8,
                  point: str = "act_fn", stats: NeuronStats | None = None,
                  progress: bool = False) -> NeuronStats:
    """Count positive activations per language over token windows (lang -> (n, seq) ids)."""
    import torch
    from tqdm.auto import tqdm

    n_layers = len(neuron_modules(model, point))
    stats = stats or NeuronStats(n_layers=n_layers, width=0)
    vocab = int(model.config.vocab_size)
    decoder = model.base_model
    with count_positive(model, point) as sink, torch.inference_mode():
        for lang, win in windows.items():
            win = np.asarray(win)
            if win.size and int(win.max()) >= vocab:
                raise BabelError(f"{lang} data has token id {int(win.max())} >= model vocabulary "
                                 f"{vocab}: the data was packed with a different tokenizer")
            sink["positives"] = None
            bar = tqdm(range(0, len(win), batch_size), desc=f"LAPE {lang}", unit="batch",
                       disable=None if progress else True, leave=False)
            for b in bar:
                ids = torch.as_tensor(win[b:b + batch_size].astype(np.int64))
                # the decoder alone: LAPE needs no LM head (a large share of a small
                # model's compute at long contexts)
                decoder(input_ids=ids, use_cache=False)
            if sink["positives"] is None:
                continue
            pos = sink["positives"].numpy()
            if stats.width == 0:
                stats.width = pos.shape[1]
            stats.add(lang, pos, int(win.size))
    return stats


# --------------------------------------------------------------------------- data

def windows_from_ids(ids: np.ndarray, n_tokens: int, seq_len: int) -> np.ndarray:
    """First ``n_tokens`` tokens cut into (n, seq_len) windows (one shorter window if the
    data is smaller than ``seq_len``)."""
    ids = np.asarray(ids)
    if ids.size == 0:
        raise BabelError("no tokens to count")
    if ids.size < seq_len:
        return ids.reshape(1, -1).astype(np.int64)
    n = max(1, min(n_tokens, ids.size) // seq_len)
    return np.asarray(ids[:n * seq_len], dtype=np.int64).reshape(n, seq_len)


def walk_language_text(data: Mapping, languages: Sequence[str]) -> TextFiles:
    """The text files of each language in ``{lang: file | dir | [files]}`` (in a directory,
    the files of that language; C/C++ headers with ``.h`` or no extension count as the
    named one - ``babeltower.textfiles``), with the dropped files counted by reason."""
    data = {canonical(k): v for k, v in data.items()}
    inputs = [(lang, p) for lang in languages for p in
              ([data.get(lang, [])] if isinstance(data.get(lang), (str, os.PathLike))
               else data.get(lang, []))]
    walked = walk_text(inputs, languages)
    for lang in languages:
        if lang in data and not walked.kept.get(lang):
            raise BabelError(f"no {lang} files in {data[lang]} ({walked.summary()})")
    return walked


def load_windows(data, languages: Sequence[str], tokenizer=None, n_tokens: int = 65536,
                 seq_len: int = 256, split: str = "validation",
                 used_files: dict | None = None) -> dict[str, np.ndarray]:
    """Token windows per language from a packed DATA dir (``TokenShards``, ``split``) or
    from raw text (``{lang: file | dir | [files]}``; in a directory, the files of that
    language), tokenised with ``tokenizer``. ``used_files`` collects the files read."""
    out: dict[str, np.ndarray] = {}
    if isinstance(data, Mapping):
        if tokenizer is None:
            raise BabelError("raw text needs the model's tokenizer")
        data = {canonical(k): v for k, v in data.items()}
        eos = getattr(tokenizer, "eos_token_id", None)
        walked = walk_language_text(data, languages)
        for lang in languages:
            if lang not in data:
                raise BabelError(f"no text given for {lang} (have: {', '.join(data)})")
            ids: list[int] = []
            for f in walked.kept.get(lang, []):
                text = f.read_text(encoding="utf-8")   # walk_text kept UTF-8 files only
                ids.extend(tokenizer(text, add_special_tokens=False)["input_ids"])
                if used_files is not None:
                    used_files.setdefault(lang, []).append(str(f))
                if eos is not None:
                    ids.append(int(eos))
                if len(ids) >= n_tokens:
                    break
            out[lang] = windows_from_ids(np.asarray(ids, dtype=np.int64), n_tokens, seq_len)
        return out
    shards = TokenShards(data)
    for lang in languages:
        sp = shards.split(lang, split)
        out[lang] = windows_from_ids(np.asarray(sp.tokens[:n_tokens]), n_tokens, seq_len)
    return out


# --------------------------------------------------------------------------- selection

@dataclass
class LapeSelection:
    """Language-specific neuron sets: ``sets[lang]`` is an (k, 2) array of (layer, index)."""

    languages: list[str]
    n_layers: int
    width: int
    sets: dict[str, np.ndarray]
    filter_threshold: float
    activation_bar: float
    n_kept: int
    assign: str = "tang"
    #: the kept neurons (n_kept, 2) (layer, index), lowest entropy first, and their
    #: normalised entropy (0 = one language, 1 = equal on all); None in old records
    kept: np.ndarray | None = None
    kept_entropy: np.ndarray | None = None

    def entropy_summary(self) -> dict | None:
        """n, median, quartiles of the kept neurons' normalised entropy, overall and per
        language set (``lape_applicability.entropy_summary``)."""
        return entropy_summary(self)

    def per_layer(self, lang: str) -> np.ndarray:
        return np.bincount(self.sets[lang][:, 0], minlength=self.n_layers)

    def as_masks(self) -> dict[str, np.ndarray]:
        masks = {}
        for lang, s in self.sets.items():
            m = np.zeros((self.n_layers, self.width), dtype=bool)
            m[s[:, 0], s[:, 1]] = True
            masks[lang] = m
        return masks

    def transfer(self, primary: str, new: str) -> np.ndarray:
        """T = S_primary ∩ S_new as (k, 2) (layer, index)."""
        m = self.as_masks()
        both = m[primary] & m[new]
        return np.argwhere(both)

    def to_json(self) -> dict:
        return {"languages": self.languages, "n_layers": self.n_layers, "width": self.width,
                "filter_threshold": self.filter_threshold, "activation_bar": self.activation_bar,
                "n_kept": self.n_kept, "assign": self.assign,
                "sets": {l: _layer_dict(s, self.n_layers) for l, s in self.sets.items()},
                **({} if self.kept is None else {
                    "kept": self.kept.tolist(),
                    "kept_entropy": [float(e) for e in self.kept_entropy],
                    "entropy": self.entropy_summary()})}

    @classmethod
    def from_json(cls, rec: dict) -> "LapeSelection":
        sets = {}
        for lang, by_layer in rec["sets"].items():
            pairs = [(int(k), int(i)) for k, idx in by_layer.items() for i in idx]
            sets[lang] = (np.array(sorted(pairs), dtype=np.int64).reshape(-1, 2))
        kept = rec.get("kept")
        return cls(list(rec["languages"]), int(rec["n_layers"]), int(rec["width"]), sets,
                   float(rec["filter_threshold"]), float(rec["activation_bar"]),
                   int(rec["n_kept"]), rec.get("assign", "selected"),
                   None if kept is None else np.array(kept, dtype=np.int64).reshape(-1, 2),
                   None if kept is None else np.array(rec["kept_entropy"], dtype=np.float64))


def _layer_dict(pairs: np.ndarray, n_layers: int) -> dict[str, list[int]]:
    return {str(k): sorted(int(i) for i in pairs[pairs[:, 0] == k, 1]) for k in range(n_layers)}


ASSIGN = ("tang", "filter", "selected")


def _kth_smallest(values: np.ndarray, ratio: float) -> float:
    """``torch.kthvalue(round(n * ratio))`` as in Tang's code (1-based, Python rounding)."""
    flat = np.sort(values.ravel())
    return float(flat[max(1, int(round(flat.size * ratio))) - 1])


def _entropy(probs: np.ndarray) -> np.ndarray:
    """Entropy of each neuron's probabilities normalised over languages (0 if all zero)."""
    total = probs.sum(axis=0, keepdims=True)
    with np.errstate(divide="ignore", invalid="ignore"):
        normed = np.where(total > 0, probs / total, 0.0)
        logn = np.where(normed > 0, np.log(normed), 0.0)
    return -(normed * logn).sum(axis=0)                          # (layers, width)


def lape_select(probs: np.ndarray, languages: Sequence[str], top_rate: float = 0.01,
                filter_rate: float = 0.95, activation_bar_ratio: float = 0.95,
                assign: str = "tang") -> LapeSelection:
    """LAPE selection on (n_languages, n_layers, width) probabilities (module docstring).
    The result also carries the kept neurons (``kept``, lowest entropy first) and their
    normalised entropy (``kept_entropy``; ``entropy_summary()``: median and quartiles per
    language set); ``lape_applicability(sel)`` says whether the sets can mean
    "language-specific" at all."""
    probs = np.asarray(probs, dtype=np.float64)
    if probs.ndim != 3 or probs.shape[0] != len(languages):
        raise BabelError("probabilities must be (n_languages, n_layers, width)")
    if not 0 < top_rate <= 1 or not 0 < filter_rate < 1 or not 0 < activation_bar_ratio < 1:
        raise BabelError("top_rate in (0, 1], filter_rate and activation_bar_ratio in (0, 1)")
    if assign not in ASSIGN:
        raise BabelError(f"assign must be one of {', '.join(ASSIGN)}, not {assign!r}")
    n_lang, n_layers, width = probs.shape
    entropy = _entropy(probs)
    filter_thr = _kth_smallest(probs, filter_rate)
    passes = (probs > filter_thr).any(axis=0)
    if assign == "selected" and not passes.any():
        passes = (probs >= filter_thr).any(axis=0)   # ours: ties pass when nothing else does
    entropy = np.where(passes, entropy, np.inf)
    n_keep = min(int(round(entropy.size * top_rate)), int(passes.sum()))
    order = np.argsort(entropy.ravel(), kind="stable")[:n_keep]
    rows, cols = np.unravel_index(order, entropy.shape)
    sel = probs[:, rows, cols]                                    # (n_lang, n_keep)
    if assign == "tang":
        bar = _kth_smallest(probs, activation_bar_ratio)
        hit = sel > bar
    elif assign == "filter":
        bar = filter_thr
        hit = sel > bar
    else:
        bar = _kth_smallest(sel, activation_bar_ratio) if sel.size else filter_thr
        hit = (sel >= bar) & (sel > 0)
    sets = {}
    for li, lang in enumerate(languages):
        j = np.flatnonzero(hit[li])
        pairs = np.stack([rows[j], cols[j]], axis=1).astype(np.int64) if j.size else \
            np.zeros((0, 2), dtype=np.int64)
        sets[lang] = pairs[np.lexsort((pairs[:, 1], pairs[:, 0]))] if len(pairs) else pairs
    kept = np.stack([rows, cols], axis=1).astype(np.int64).reshape(-1, 2)
    return LapeSelection(list(languages), n_layers, width, sets, filter_thr, bar, n_keep,
                         assign, kept, normalised_entropy(entropy[rows, cols], n_lang))


def neuron_table(sel: LapeSelection, primary: str) -> "pd.DataFrame":  # noqa: F821
    """Tidy table (layer, language, measure, value): n_specific per language; for every
    other language t also n_transfer = |S_primary ∩ S_t| and transfer_ratio = |T|/|S_t|;
    per language (after those rows, when the selection carries its entropies)
    entropy_median, entropy_q1, entropy_q3: the normalised entropy of the neurons in
    S_lang (0 = one language, 1 = equal on all; NaN for an empty set).
    ``layer`` is <NA> for the total over layers."""
    import pandas as pd

    if primary not in sel.languages:
        raise BabelError(f"primary language {primary} is not among {', '.join(sel.languages)}")
    rows = []
    for lang in sel.languages:
        per = sel.per_layer(lang)
        layers = list(range(sel.n_layers)) + [None]
        spec = list(per) + [int(per.sum())]
        for layer, v in zip(layers, spec):
            rows.append((layer, lang, "n_specific", float(v)))
        if lang == primary:
            continue
        t = np.bincount(sel.transfer(primary, lang)[:, 0], minlength=sel.n_layers)
        for layer, tv, sv in zip(layers, list(t) + [int(t.sum())], spec):
            rows.append((layer, lang, "n_transfer", float(tv)))
            rows.append((layer, lang, "transfer_ratio", tv / sv if sv else float("nan")))
    summ = sel.entropy_summary()
    for lang, q in (summ["sets"].items() if summ else ()):
        for k in ("median", "q1", "q3"):
            rows.append((None, lang, f"entropy_{k}",
                         float("nan") if q[k] is None else q[k]))
    df = pd.DataFrame(rows, columns=["layer", "language", "measure", "value"])
    df["layer"] = df["layer"].astype("Int64")
    return df


# --------------------------------------------------------------------------- series

class LapeOptions(BaseModel):
    """What LAPE counts and how it selects (recorded with every output)."""

    model_config = ConfigDict(extra="forbid")

    languages: list[str]
    primary: str = "python"
    n_tokens: int = Field(65536, ge=1)      # tokens per language
    seq_len: int = Field(256, ge=2)
    batch_size: int = Field(8, ge=1)
    split: str = "validation"
    point: Literal["act_fn", "down_proj_input"] = "act_fn"
    top_rate: float = Field(0.01, gt=0, le=1)
    filter_rate: float = Field(0.95, gt=0, lt=1)
    activation_bar_ratio: float = Field(0.95, gt=0, lt=1)
    assign: Literal["tang", "filter", "selected"] = "tang"
    # the applicability rule (``lape_applicability``): a reading of the selection that
    # changes no count or set, so it is left out of the measure's config hash
    min_languages: int = Field(LAPE_MIN_LANGUAGES, ge=2)
    max_median_entropy: float = Field(LAPE_MAX_MEDIAN_ENTROPY, gt=0, le=1)

    @model_validator(mode="after")
    def _languages(self) -> "LapeOptions":
        langs = [canonical(l) for l in self.languages]
        self.primary = canonical(self.primary)
        if self.primary not in langs:
            langs = [self.primary] + langs
        if len(langs) < 2:
            raise ValueError("LAPE needs at least two languages")
        self.languages = langs
        return self


def _describe(data) -> str | dict:
    if isinstance(data, Mapping):
        return {k: [str(p) for p in v] if isinstance(v, (list, tuple)) else str(v)
                for k, v in data.items()}
    return str(data)


#: LapeOptions that only read a selection (what counts and what is selected stays the same)
_READING_OPTIONS = ("min_languages", "max_median_entropy")


def _applicability(record: dict, options: "LapeOptions") -> dict:
    return lape_applicability(LapeSelection.from_json(record), options.min_languages,
                              options.max_median_entropy)


class NeuronsMeasure:
    """LAPE as a series measure: one row per checkpoint holding its neuron-set record
    (``<checkpoint>.neurons.json``: sets, transfer sets, bars, tokens counted, point)."""

    name = "lape"

    def __init__(self, data, options: LapeOptions):
        self.data, self.opt = data, options
        # bad data fails before any model is loaded
        self.packed = (None if isinstance(data, Mapping) else
                       load_windows(data, options.languages, None, options.n_tokens,
                                    options.seq_len, options.split))
        self.walked = (walk_language_text(data, options.languages)
                       if isinstance(data, Mapping) else None)
        self.files = ([str(f) for fs in self.walked.kept.values() for f in fs]
                      if self.walked is not None else [])

    def config(self) -> dict:
        return {**self.opt.model_dump(exclude=set(_READING_OPTIONS)),
                "data": _describe(self.data)}

    def data_hashes(self) -> dict:
        return _data_hashes(self.data, self.files)

    def measure(self, model, tokenizer, ref) -> list[dict]:
        o = self.opt
        windows = self.packed if self.packed is not None else load_windows(
            self.data, o.languages, tokenizer, o.n_tokens, o.seq_len, o.split)
        stats = collect_stats(model, windows, batch_size=o.batch_size, point=o.point)
        sel = lape_select(stats.probabilities(o.languages), o.languages, top_rate=o.top_rate,
                          filter_rate=o.filter_rate, activation_bar_ratio=o.activation_bar_ratio,
                          assign=o.assign)
        rec = sel.to_json()
        rec["point"] = o.point
        rec["tokens_counted"] = stats.tokens
        rec["transfer"] = {l: _layer_dict(sel.transfer(o.primary, l), sel.n_layers)
                           for l in o.languages if l != o.primary}
        return [{"tokens": ref.tokens, "point": o.point, "assign": o.assign, "record": rec}]


def neurons_frame(rows: list[dict], primary: str, options: "LapeOptions | None" = None):
    """The tidy table of ``run_neurons`` from the measure's per-checkpoint rows; with
    ``options``, every row also carries its checkpoint's applicability
    (``lape_applicable``, ``lape_reason``, ``kept_entropy_median``)."""
    import pandas as pd

    frames = []
    for r in rows:
        sel = LapeSelection.from_json(r["record"])
        t = neuron_table(sel, primary)
        for i, k in enumerate(("checkpoint", "step", "tokens")):
            t.insert(i, k, r[k])
        for k in ("point", "assign", "weights_sha256", "config_sha256", "data_sha256"):
            t[k] = r[k]
        if options is not None:
            app = _applicability(r["record"], options)
            t["lape_applicable"] = app["applicable"]
            t["lape_reason"] = app["reason"] or ""
            t["kept_entropy_median"] = (float("nan") if app["kept_entropy_median"] is None
                                        else app["kept_entropy_median"])
        frames.append(t)
    return pd.concat(frames, ignore_index=True)


def run_neurons(source, data, options: LapeOptions, *, revisions: list[str] | None = None,
                out: str | os.PathLike | None = None, series: SeriesOptions | None = None,
                steps: list[int] | None = None,
                on_checkpoint: Callable[[str], None] | None = None):
    """LAPE over every checkpoint of ``source``: a tidy DataFrame (checkpoint, step, tokens,
    layer, language, measure, value, point, assign, hashes) with n_specific, n_transfer,
    transfer_ratio (layer <NA> = all layers).

    ``data``: a packed DATA dir (token ids used as they are) or ``{lang: text paths}``
    (tokenised with each checkpoint's tokenizer). With ``out``: ``neurons.parquet``/``.csv``,
    ``summary.csv``, ``provenance.json`` and ``checkpoints/<name>.neurons.json``, written as
    one unit; an interrupted run resumes from ``<out>.partial/``.
    """
    series = series or SeriesOptions()
    refs = checkpoints_of(source, revisions, steps)     # a wrong source is named first
    refuse_existing(out, series.overwrite)
    lape = NeuronsMeasure(data, options)
    res = run_series(refs, [lape], state=state_dir_for(out), options=series,
                     on_checkpoint=on_checkpoint)
    df = neurons_frame(res.rows["lape"], options.primary, options)
    if lape.walked is not None:   # the CLI prints it: what was kept and dropped, and why
        df.attrs["text_files"] = lape.walked.summary()
    if out is not None:
        def write(d: Path) -> None:
            for r in res.rows["lape"]:
                rec = {**r["record"], "checkpoint": r["checkpoint"], "step": r["step"],
                       "weights_sha256": r["weights_sha256"],
                       "applicability": _applicability(r["record"], options)}
                atomic_write_json(d / "checkpoints" / f"{safe_name(r['checkpoint'])}.neurons.json",
                                  rec)
            atomic_write_bytes(d / "neurons.parquet", parquet_bytes(df))
            atomic_write_bytes(d / "neurons.csv", df.to_csv(index=False).encode())
            atomic_write_bytes(d / "summary.csv",
                               summarize_neurons(df).to_csv(index=False).encode())
            atomic_write_json(d / "provenance.json", provenance(
                config=options.model_dump(), data=_describe(data),
                data_hashes=lape.data_hashes(), source=str(source), revisions=revisions,
                text_files=lape.walked.record() if lape.walked else None,
                checkpoints=[r.name for r in res.refs], weights_sha256=res.weights))
        write_outputs(out, write, res, overwrite=True)
    return df


def _data_hashes(data, files_used: list[str]) -> dict:
    """sha256 of every text file read (raw text; files of cached checkpoints are not
    re-read), or of the packed data's manifest (which hashes every shard)."""
    if isinstance(data, Mapping):
        return {f: sha256_file(f) for f in files_used}
    mf = Path(data) / "manifest.json"
    return {"manifest.json": sha256_file(mf)} if mf.exists() else {}


def summarize_neurons(df):
    """One row per (checkpoint, new language): |S_new|, |S_primary|, |T|, |T|/|S_new| over
    all layers; where recorded, the median normalised entropy of S_new's neurons
    (``entropy_median``), of all kept neurons (``kept_entropy_median``) and whether LAPE
    applies (``applicable``, ``not_applicable_reason``; ``lape_applicability``)."""
    import pandas as pd

    tot = df[df.layer.isna()]
    rows = []
    for (ck, step, tokens), g in tot.groupby(["checkpoint", "step", "tokens"], sort=False,
                                            dropna=False):
        primary_langs = set(g.language) - set(g[g.measure == "n_transfer"].language)
        p = next(iter(primary_langs)) if primary_langs else None
        n_p = g[(g.language == p) & (g.measure == "n_specific")].value
        for lang in g[g.measure == "n_transfer"].language.unique():
            def val(m):
                v = g[(g.language == lang) & (g.measure == m)].value
                return float(v.iloc[0]) if len(v) else float("nan")
            rows.append({"checkpoint": ck, "step": step, "tokens": tokens, "language": lang,
                         "primary": p,
                         "n_primary": float(n_p.iloc[0]) if len(n_p) else float("nan"),
                         "n_specific": val("n_specific"), "n_transfer": val("n_transfer"),
                         "transfer_ratio": val("transfer_ratio"),
                         **({"entropy_median": val("entropy_median")}
                            if (g.measure == "entropy_median").any() else {}),
                         **({"kept_entropy_median": float(g.kept_entropy_median.iloc[0]),
                             "applicable": bool(g.lape_applicable.iloc[0]),
                             "not_applicable_reason": g.lape_reason.iloc[0]}
                            if "lape_applicable" in g else {})})
    return pd.DataFrame(rows)


def read_neuron_sets(path: str | os.PathLike) -> dict:
    """A ``<checkpoint>.neurons.json`` file written by ``run_neurons``."""
    return read_json(path, "neuron set file")
