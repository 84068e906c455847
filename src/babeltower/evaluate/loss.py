"""Held-out loss (nats/token) and bits-per-byte per language, for a model or a series.

Bits-per-byte is tokenizer-independent: ``total nats / ln 2 / total UTF-8 bytes`` of the
documents scored, so models with different tokenizers (or a tokenizer change between
runs) compare on the same scale. Loss per token is only comparable under one tokenizer.

**What is scored.** Whole documents. Each document is scored on its own, preceded by one
EOS token - exactly the context it had in packed training, where documents are
separated by EOS - so its first token is predicted too; the closing EOS is not scored
(its bytes are zero). An external model's raw text uses its BOS token (else EOS) the
same way.

**Windowing.** A document longer than the context is cut into windows of ``context``
input tokens that advance by ``stride`` (default ``stride = context``: non-overlapping
windows, every token scored once with 0..context-1 tokens of its own document as
context). With ``stride < context`` each window after the first scores only its last
``stride`` targets, so every target sees at least ``context - stride`` tokens of context
(the sliding-window evaluation of the HF perplexity guide). Default ``context`` = the
model's ``max_position_embeddings`` capped at 1024; it is recorded in every row.

**Uncertainty.** Every row carries a 95% interval for loss and bits-per-byte from a
bootstrap over *documents* (1000 resamples, fixed seed): tokens of one file are
correlated, documents are the independent units.

**Budget.** Per language, documents are taken in their stored order until
``max_tokens_per_language`` is reached (the document that crosses the budget is
included whole; ``max_docs`` caps the count): deterministic, the same documents for
every checkpoint.

Inputs: a packed DATA dir (``TokenShards``, split ``validation`` or ``test``; the model
must use the data's tokenizer - checked on vocabulary size), or, for an external model
with its own tokenizer, raw text files (one file = one document, language from the file
name, or from ``LANG=PATH``; ``babeltower.textfiles.walk_text`` says what it kept and dropped).
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass

import numpy as np
from pydantic import Field

from babeltower.analysis.statistics import Estimate
from babeltower.batching import pad_batch
from babeltower.config import Config
from babeltower.errors import BabelError
from babeltower.corpus.shards import TokenShards
from babeltower.io import atomic_write_json, provenance
from babeltower.languages import canonical
from babeltower.series import SeriesOptions, run_series, state_dir_for
from babeltower.textfiles import TextFiles, parse_text_args, walk_text

LN2 = math.log(2.0)


class LossConfig(Config):
    """How held-out loss is measured (recorded with every result)."""

    split: str = "validation"
    languages: list[str] | None = None        # None = every language of the data
    max_tokens_per_language: int = Field(50_000, ge=1)
    max_docs: int | None = Field(None, ge=1)
    context: int | None = Field(None, ge=2)    # None = min(model max positions, 1024)
    stride: int | None = Field(None, ge=1)     # None = context (non-overlapping windows)
    batch_size: int = Field(8, ge=1)
    max_logits_elements: int = Field(1 << 27, ge=1)  # bound B*T*V to keep memory in check


@dataclass
class Document:
    language: str
    tokens: np.ndarray      # token ids of the document (no EOS/BOS)
    n_bytes: int


# --------------------------------------------------------------------------- documents
def select_documents(docs: np.ndarray, max_tokens: int, max_docs: int | None = None
                     ) -> list[int]:
    """Indices of the first documents whose tokens reach ``max_tokens`` (see module doc)."""
    out: list[int] = []
    total = 0
    for i in range(docs.shape[0]):
        if total >= max_tokens or (max_docs is not None and len(out) >= max_docs):
            break
        if docs[i, 1] == 0:
            continue
        out.append(i)
        total += int(docs[i, 1])
    return out


def documents_from_shards(data, languages: list[str] | None, split: str, max_tokens: int,
                          max_docs: int | None = None) -> dict[str, list[Document]]:
    shards = data if isinstance(data, TokenShards) else TokenShards(data)
    langs = [canonical(x) for x in languages] if languages else shards.languages
    out: dict[str, list[Document]] = {}
    for lang in langs:
        sp = shards.split(lang, split)
        idx = select_documents(sp.docs, max_tokens, max_docs)
        out[lang] = [Document(lang, np.asarray(sp.document(i), dtype=np.int64),
                              int(sp.docs[i, 2])) for i in idx]
    return out


def text_inputs(text) -> list[tuple[str | None, str]]:
    """``text`` as given to ``evaluate_loss`` (a path, ``LANG=PATH``, a list of them, or
    ``(lang, path)`` pairs) -> ``(language or None, path)`` pairs for ``walk_text``."""
    items = [text] if isinstance(text, (str, os.PathLike, tuple)) else list(text)
    pairs = [t for t in items if isinstance(t, tuple)]
    return pairs + parse_text_args([t for t in items if not isinstance(t, tuple)])


def documents_from_text(walked: TextFiles, tokenizer, max_tokens: int,
                        max_docs: int | None = None) -> dict[str, list[Document]]:
    """The walked raw text files tokenized with the model's own tokenizer, whole files in
    path order until a language's token budget (or ``max_docs``) is reached."""
    out: dict[str, list[Document]] = {}
    budget: dict[str, int] = {}
    for lang, files in walked.kept.items():
        for f in files:
            if budget.get(lang, 0) >= max_tokens or (max_docs and len(out.get(lang, [])) >= max_docs):
                break
            text = f.read_text(encoding="utf-8")   # walk_text kept UTF-8 files only
            ids = tokenizer(text, add_special_tokens=False)["input_ids"]
            if not ids:
                continue
            out.setdefault(lang, []).append(Document(lang, np.asarray(ids, dtype=np.int64),
                                                     len(text.encode("utf-8"))))
            budget[lang] = budget.get(lang, 0) + len(ids)
    if not out:
        raise BabelError("no text files of a known language found")
    return out


def walk_loss_text(text, languages: list[str] | None) -> TextFiles:
    """Walk ``text`` once, before any model is loaded: a missing path, or a requested
    language with no file, fails here."""
    walked = walk_text(text_inputs(text), languages)
    if languages:
        missing = sorted({canonical(x) for x in languages} - set(walked.kept))
        if missing:
            raise BabelError(f"no text files for: {', '.join(missing)} ({walked.summary()})")
    if not walked.kept:
        raise BabelError(f"no text files of a known language found ({walked.summary()})")
    return walked


# --------------------------------------------------------------------------- scoring
def windows(n_targets: int, context: int, stride: int) -> list[tuple[int, int, int]]:
    """(begin, end, n_new) over a sequence of ``n_targets + 1`` tokens (prefix + document).

    Inputs are ``seq[begin:end]``, labels ``seq[begin+1:end+1]``; only the last ``n_new``
    labels are scored. Every target 1..n_targets is scored exactly once.
    """
    out = []
    prev_end = 0
    begin = 0
    while prev_end < n_targets:
        end = min(begin + context, n_targets)
        out.append((begin, end, end - prev_end))
        prev_end = end
        begin += stride
        if begin >= n_targets:
            break
    return out


def score_documents(model, docs: list[Document], prefix_id: int, context: int,
                    stride: int | None = None, batch_size: int = 8,
                    max_logits_elements: int = 1 << 27, progress=None) -> dict:
    """Sum of negative log-likelihood (nats) over every document token, and counts."""
    import torch
    import torch.nn.functional as F

    stride = stride or context
    if stride > context:
        raise BabelError(f"stride {stride} is larger than the context {context}")
    vocab = int(model.get_output_embeddings().weight.shape[0])
    device = next(model.parameters()).device
    items = []  # (input ids, n_new, document index)
    n_tokens = n_bytes = 0
    for di, d in enumerate(docs):
        if d.tokens.size and int(d.tokens.max()) >= vocab:
            raise BabelError(f"token id {int(d.tokens.max())} >= the model's vocabulary {vocab}: "
                             "the data was tokenized with another tokenizer")
        seq = np.concatenate([[prefix_id], d.tokens])
        for b, e, new in windows(len(d.tokens), context, stride):
            items.append((seq[b:e + 1], new, di))
        n_tokens += int(d.tokens.size)
        n_bytes += d.n_bytes
    items.sort(key=lambda x: -len(x[0]))  # similar lengths share a batch: less padding
    doc_nats = np.zeros(len(docs), dtype=np.float64)
    scored = 0
    i = 0
    while i < len(items):
        longest = len(items[i][0]) - 1
        bs = max(1, min(batch_size, max_logits_elements // max(1, longest * vocab)))
        batch = items[i:i + bs]
        i += bs
        inp, att = pad_batch([np.asarray(ids[:-1], dtype=np.int64) for ids, _, _ in batch], 0,
                             "right")
        lab = torch.full(inp.shape, -100, dtype=torch.long)
        for r, (ids, new, _) in enumerate(batch):
            L = len(ids) - 1      # only the window's new tokens are scored
            lab[r, L - new:L] = torch.as_tensor(np.asarray(ids[1:], dtype=np.int64)[L - new:])
        with torch.no_grad():
            logits = model(input_ids=inp.to(device), attention_mask=att.to(device)).logits
            # flattened (B*T, V): the class dimension contiguous is ~3x faster on CPU
            # than cross_entropy over the transposed (B, V, T) view, and more exact: the
            # transposed view came out biased low by 1.4e-4 nats/token at SmolLM2's 49k
            # vocabulary, this one is 1.9e-5 from float64 (tests/test_smollm2_gguf.py)
            per_tok = F.cross_entropy(logits.float().reshape(-1, logits.shape[-1]),
                                      lab.to(device).reshape(-1), ignore_index=-100,
                                      reduction="none").view(lab.shape)   # (B, T)
        for r, (_, _, di) in enumerate(batch):
            doc_nats[di] += float(per_tok[r].double().sum())
        scored += int((lab != -100).sum())
        if progress is not None:
            progress(len(batch))
    assert scored == n_tokens, (scored, n_tokens)  # every document token exactly once
    return {"nats": float(doc_nats.sum()), "tokens": n_tokens, "bytes": n_bytes,
            "documents": len(docs), "doc_nats": doc_nats,
            "doc_tokens": np.array([d.tokens.size for d in docs], dtype=np.float64),
            "doc_bytes": np.array([d.n_bytes for d in docs], dtype=np.float64)}


def loss_row(stats: dict) -> dict:
    """Point estimates with document-bootstrap 95% intervals (loss and bits-per-byte) and
    the bpb's standard error (the replicates' sd): documents, not tokens, are the
    independent units (tokens of one file are correlated), so the interval says how much
    the number would move with another held-out sample."""
    t, b = stats["tokens"], stats["bytes"]
    row = {k: v for k, v in stats.items() if not k.startswith("doc_")}
    row["loss"] = stats["nats"] / t if t else float("nan")
    row["bits_per_byte"] = stats["nats"] / LN2 / b if b else float("nan")
    if "doc_nats" in stats:
        loss = Estimate.ratio_bootstrap(stats["doc_nats"], stats["doc_tokens"])
        row["loss_lo95"], row["loss_hi95"] = loss.lo, loss.hi
        bpb = Estimate.ratio_bootstrap(stats["doc_nats"] / LN2, stats["doc_bytes"])
        row["bpb_lo95"], row["bpb_hi95"], row["bpb_se"] = bpb.lo, bpb.hi, bpb.se
    return row


def _default_context(model, cap: int = 1024) -> int:
    n = getattr(model.config, "max_position_embeddings", None) or getattr(model.config, "n_positions", None)
    return int(min(n or cap, cap))


def _prefix_id(tokenizer, fallback: int | None) -> int:
    for attr in ("bos_token_id", "eos_token_id"):
        v = getattr(tokenizer, attr, None) if tokenizer is not None else None
        if v is not None:
            return int(v)
    if fallback is None:
        raise BabelError("the tokenizer has neither a BOS nor an EOS token to start documents with")
    return int(fallback)


def evaluate_model_loss(model, docs_by_lang: dict[str, list[Document]], prefix_id: int,
                        cfg: LossConfig, progress: bool = True,
                        per_document: bool = False) -> list[dict]:
    """One row per language for one model. ``per_document``: each row also holds every
    document's nats and bytes (``doc_nats``, ``doc_bytes``): the same documents at every
    checkpoint are paired items for the item-level stage test (``analysis.item_test``)."""
    from tqdm.auto import tqdm

    context = cfg.context or _default_context(model)
    stride = cfg.stride or context
    rows = []
    for lang, docs in docs_by_lang.items():
        if not docs:
            raise BabelError(f"{lang}: no documents to score in this split")
        n_win = sum(len(windows(len(d.tokens), context, stride)) for d in docs)
        with tqdm(total=n_win, desc=f"loss {lang}", unit="win", disable=not progress,
                  leave=False) as bar:
            st = score_documents(model, docs, prefix_id, context, stride, cfg.batch_size,
                                 cfg.max_logits_elements, progress=bar.update)
        row = {"language": lang, **loss_row(st), "context": context, "stride": stride}
        if per_document:
            row["doc_nats"] = [float(v) for v in st["doc_nats"]]
            row["doc_bytes"] = [int(v) for v in st["doc_bytes"]]
        rows.append(row)
    return rows


def evaluate_loss(source_or_model, data=None, languages: list[str] | None = None,
                  max_tokens_per_language: int | None = None, *, text=None,
                  config: LossConfig | None = None, tokenizer=None, out=None,
                  progress: bool = True, series: SeriesOptions | None = None,
                  revisions: list[str] | None = None, **overrides):
    """Held-out loss and bits-per-byte per language -> a pandas DataFrame.

    ``source_or_model``: a checkpoint source (``list_checkpoints``: run dir, model dir,
    .gguf, ``hub:ORG/NAME`` with ``revisions``, ...) - every checkpoint is scored in
    training order - or a loaded model.
    ``data``: a packed DATA dir (uses its tokenizer's ids), or ``text``: raw files scored
    with the model's own tokenizer. ``out``: a JSON file with rows + provenance; a rerun
    resumes past checkpoints already finished in ``<out>.partial/``.
    Columns: checkpoint, step, tokens_seen, language, loss, bits_per_byte, nats, tokens,
    bytes, documents, context, stride.
    """
    import pandas as pd

    cfg = (config or LossConfig()).model_copy(update={k: v for k, v in dict(
        languages=languages, max_tokens_per_language=max_tokens_per_language, **overrides
    ).items() if v is not None})
    if (data is None) == (text is None):
        raise BabelError("give exactly one of --data (packed shards) or --text (raw files)")
    if cfg.split not in ("validation", "test", "train"):
        raise BabelError(f"unknown split {cfg.split!r} (validation, test)")

    shard_docs, data_hashes, eos = None, {}, None
    if data is not None:
        shards = data if isinstance(data, TokenShards) else TokenShards(data)
        shard_docs = documents_from_shards(shards, cfg.languages, cfg.split,
                                           cfg.max_tokens_per_language, cfg.max_docs)
        eos = shards.eos_id
        data_hashes = {lang: shards.manifest["languages"][lang][cfg.split].get("sha256")
                       for lang in shard_docs}
    loss = LossMeasure(cfg, shard_docs, eos, text, data_hashes, progress)
    if hasattr(source_or_model, "forward"):   # one loaded model: no series
        rows = [{"checkpoint": "model", "step": None, **r}
                for r in loss.measure(source_or_model, tokenizer, None)]
        res = None
    else:
        res = run_series(source_or_model, [loss], state=state_dir_for(out),
                         options=series or SeriesOptions(progress=progress),
                         revisions=revisions)
        rows = res.rows["loss"]
    df = pd.DataFrame(rows)
    if loss.walked is not None:   # the CLI prints it: what was kept and dropped, and why
        df.attrs["text_files"] = loss.walked.summary()
    if out is not None and (res is None or res.is_writer):
        atomic_write_json(out, {
            "metric": "held-out loss (nats/token) and bits-per-byte per language",
            "rows": rows,
            "provenance": provenance(config=cfg, data_hashes=data_hashes or None,
                                     source=str(source_or_model) if res is not None else "model",
                                     revisions=revisions,
                                     data=str(data) if data is not None else None,
                                     text=[str(t) for t in ([text] if isinstance(text, (str, os.PathLike)) else (text or []))],
                                     text_files=loss.walked.record() if loss.walked else None,
                                     weights_sha256=res.weights if res is not None else None),
        })
        if res is not None:
            res.close()
    return df


class LossMeasure:
    """Held-out loss as a series measure (``babeltower.series``): one row per language."""

    name = "loss"

    def __init__(self, cfg: LossConfig, shard_docs: dict | None, eos: int | None, text,
                 data_hashes: dict, progress: bool = False, per_document: bool = False):
        self.cfg, self.shard_docs, self.eos, self.text = cfg, shard_docs, eos, text
        self.hashes, self.progress, self.per_document = data_hashes, progress, per_document
        self.walked = walk_loss_text(text, cfg.languages) if text is not None else None

    def config(self) -> dict:
        return {**self.cfg.model_dump(mode="json"),
                "text": None if self.text is None else [str(t) for t in (
                    [self.text] if isinstance(self.text, (str, os.PathLike)) else self.text)]}

    def data_hashes(self) -> dict:
        return self.hashes

    def measure(self, model, tokenizer, ref) -> list[dict]:
        if self.shard_docs is not None:
            docs, prefix = self.shard_docs, self.eos
        else:
            if tokenizer is None:
                raise BabelError("scoring raw text needs the model's tokenizer")
            docs = documents_from_text(self.walked, tokenizer,
                                       self.cfg.max_tokens_per_language, self.cfg.max_docs)
            prefix = _prefix_id(tokenizer, None)
        meta = {"tokens_seen": getattr(ref, "tokens", None)}
        return [{**meta, **r} for r in evaluate_model_loss(model, docs, prefix, self.cfg,
                                                           self.progress, self.per_document)]
