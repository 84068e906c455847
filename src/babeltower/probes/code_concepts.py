"""Which language do a code LM's middle layers decode to while it translates code?

A reproduction, at our scale, of the logit-lens part of Kargaran et al. 2025 ("How
Programming Concepts and Neurons Are Shared in Code Language Models", ACL Findings 2025,
arXiv 2506.01074; code: github.com/cisnlp/code-specific-neurons, ``code-logitlens``).

**Task (the paper's).** Few-shot translation between two programming languages A -> B,
one concept a line, in the paper's format ``"A: <snippet A> - B: <snippet B>"``; the test
line ends after ``"B:"`` and the model's own continuation is the B snippet. The lens reads
the positions that predict the B snippet's tokens (teacher forcing: position p is read
with the true tokens before it, as the paper's ``generate_heatmap`` does from
``min_position`` on) and decodes every layer's state through the model's final norm and
unembedding (``lens.LogitLens``: norm recomputed per layer, last layer = the logits).
The paper keeps the top 10 tokens per (layer, position) (``num_beams=10, max_length=1``).

**Token classes** (``TokenClassifier``; a token's text is its decoded string with the
surrounding whitespace stripped, matching is case-sensitive for code and case-folded
for English):

===============  ==========================================================================
``english``      an ASCII word of >= 2 letters that is in the English word list (Debian's
                 ``wamerican``, ``/usr/share/dict/american-english``, its lower-case
                 entries: no proper names; the token is case-folded)
``english_only`` English, and no keyword or built-in of any language in the keyword file
``keyword_any``  a keyword or built-in of ANY language in ``keywords.yaml`` (10 languages)
``source``       a keyword or built-in of the source language A
``target``       a keyword or built-in of the target language B
``correct``      the token is the B snippet's true next token at that position
===============  ==========================================================================

The classes overlap on purpose (``for`` is English, a keyword of every language, source
and target): the paper's claim is "English (including PL keywords)", and
``english_only`` separates English that is not code. How the paper itself classified
tokens as English is not in its released code (its ``utils.update_top_values_with_majority``
only tags keyword/built-in matches per language); the word list is our choice.

**Measures** per (prompt, layer), each the mean over the prompt's read positions:
``share_<class>`` (the fraction of the top-k tokens in the class), ``prob_<class>`` (the
probability mass of those of the top-k tokens that are in the class: the paper's
"assigns high probability to English tokens"), ``top1_<class>`` (whether the top-1 token
is). ``layer_intervals`` gives per-layer means with a percentile bootstrap over prompts.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, Literal, Mapping, Sequence

import numpy as np
import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from babeltower.analysis.statistics import percentile_interval
from babeltower.errors import BabelError
from babeltower.io import read_text_file
from babeltower.languages import canonical, get_language

STUDY_DIR = Path(__file__).parent / "suites" / "kargaran2025"
CONCEPTS_FILE = STUDY_DIR / "concepts.yaml"
KEYWORDS_FILE = STUDY_DIR / "keywords.yaml"
#: Debian package ``wamerican``'s word list (installed or extracted with ``dpkg-deb -x``)
ENGLISH_WORDS_PATH = Path("usr/share/dict/american-english")

CLASSES = ("english", "english_only", "keyword_any", "source", "target", "correct")
MEASURE_KINDS = ("share", "prob", "top1")
MEASURES = tuple(f"{m}_{c}" for m in MEASURE_KINDS for c in CLASSES)


# --------------------------------------------------------------------------- data

class Concept(BaseModel):
    """One programming concept, one line of code per language."""

    model_config = ConfigDict(extra="allow")

    id: str = Field(min_length=1)
    kind: Literal["keyword", "identifier"]

    def snippet(self, language: str) -> str:
        s = (self.model_extra or {}).get(language)
        if not isinstance(s, str) or not s.strip():
            raise BabelError(f"concept {self.id!r} has no {language} snippet")
        return s


class ConceptSet(BaseModel):
    """The parallel concepts and the language pairs they are read in (concepts.yaml)."""

    model_config = ConfigDict(extra="forbid")

    languages: list[str] = Field(min_length=2)
    pairs: list[tuple[str, str]] = Field(min_length=1)
    concepts: list[Concept] = Field(min_length=2)

    @model_validator(mode="after")
    def _consistent(self) -> "ConceptSet":
        self.languages = [canonical(l) for l in self.languages]
        if len(set(self.languages)) != len(self.languages):
            raise ValueError("a language is listed twice")
        pairs, seen = [], set()
        for a, b in self.pairs:
            a, b = canonical(a), canonical(b)
            if a == b:
                raise ValueError(f"pair ({a}, {b}) translates a language into itself")
            if a not in self.languages or b not in self.languages:
                raise ValueError(f"pair ({a}, {b}) uses a language not in {self.languages}")
            if frozenset((a, b)) in seen:
                raise ValueError(f"pair ({a}, {b}) is listed twice")
            seen.add(frozenset((a, b)))
            pairs.append((a, b))
        self.pairs = pairs
        ids = [c.id for c in self.concepts]
        if len(set(ids)) != len(ids):
            raise ValueError("duplicate concept id")
        for c in self.concepts:
            extra = set(c.model_extra or {})
            missing = [l for l in self.languages if l not in extra]
            unknown = sorted(extra - set(self.languages))
            if missing or unknown:
                raise ValueError(f"concept {c.id!r}: missing {missing}, unknown {unknown}")
            for l in self.languages:
                s = c.snippet(l)
                if "\n" in s or s != s.strip():
                    raise ValueError(f"concept {c.id!r} ({l}): a snippet is one line "
                                     "without outer whitespace")
        return self


def load_concepts(path: str | os.PathLike | None = None) -> ConceptSet:
    """The concept file (default: the study's ``concepts.yaml``), validated."""
    p = Path(path) if path is not None else CONCEPTS_FILE
    text = read_text_file(p, "concept file")
    try:
        return ConceptSet.model_validate(yaml.safe_load(text))
    except yaml.YAMLError as e:
        raise BabelError(f"concept file {p} is not valid YAML: {e}".splitlines()[0]) from e
    except ValidationError as e:
        first = e.errors()[0]
        raise BabelError(f"concept file {p}: {first['msg']} at "
                         f"{'.'.join(str(x) for x in first['loc'])}") from e


def load_keywords(path: str | os.PathLike | None = None) -> dict[str, frozenset[str]]:
    """language -> its keywords and built-ins (keywords.yaml), every entry a string."""
    p = Path(path) if path is not None else KEYWORDS_FILE
    text = read_text_file(p, "keyword file")
    try:
        raw = yaml.safe_load(text)
    except yaml.YAMLError as e:
        raise BabelError(f"keyword file {p} is not valid YAML: {e}".splitlines()[0]) from e
    if not isinstance(raw, dict) or not raw:
        raise BabelError(f"keyword file {p} must map languages to keywords/builtins")
    out = {}
    for lang, entry in raw.items():
        name = canonical(lang)
        if not isinstance(entry, dict) or set(entry) - {"keywords", "builtins"}:
            raise BabelError(f"keyword file {p}: {lang} needs 'keywords' and 'builtins' lists")
        words = list(entry.get("keywords") or []) + list(entry.get("builtins") or [])
        # YAML reads a bare true/false/null as a bool/None: a keyword list must quote them
        bad = [w for w in words if not isinstance(w, str) or not w or w != w.strip()]
        if bad:
            raise BabelError(f"keyword file {p}: {lang} has non-word entries {bad[:5]} "
                             "(quote true/false/null)")
        out[name] = frozenset(words)
    return out


def load_english_words(path: str | os.PathLike) -> frozenset[str]:
    """The lower-case alphabetic words of a word list, one a line (``wamerican``):
    proper names (``Ed``, ``Al``: entries with a capital, which would make word pieces
    like ``ed`` count as English), possessives (``dog's``) and non-ASCII entries are
    left out. Tokens are matched case-folded (``TokenClassifier.is_english``)."""
    text = read_text_file(path, "English word list")
    words = frozenset(w.strip() for w in text.splitlines()
                      if w.strip().isascii() and w.strip().isalpha() and w.strip().islower())
    if len(words) < 1000:
        raise BabelError(f"English word list {path} has only {len(words)} words")
    return words


# --------------------------------------------------------------------------- tokens

class TokenClassifier:
    """Classes of decoded token texts (module docstring): English words, keywords and
    built-ins of each language."""

    def __init__(self, keywords: Mapping[str, Iterable[str]], english_words: Iterable[str]):
        self.keywords = {canonical(l): frozenset(ws) for l, ws in keywords.items()}
        self.any_keyword = frozenset().union(*self.keywords.values())
        self.english_words = frozenset(w.lower() for w in english_words)

    @staticmethod
    def word(text: str) -> str:
        return text.strip()

    def is_english(self, text: str) -> bool:
        w = self.word(text)
        return len(w) >= 2 and w.isascii() and w.isalpha() and w.lower() in self.english_words

    def is_keyword(self, text: str, language: str | None = None) -> bool:
        w = self.word(text)
        return w in (self.any_keyword if language is None
                     else self.keywords.get(canonical(language), frozenset()))

    def languages_of(self, text: str) -> list[str]:
        w = self.word(text)
        return sorted(l for l, ws in self.keywords.items() if w in ws)

    def vocabulary_table(self, texts: Sequence[str]) -> "VocabClasses":
        """Class membership of every vocabulary entry (texts[i] = token i decoded)."""
        eng = np.array([self.is_english(t) for t in texts], dtype=bool)
        kw = np.array([self.is_keyword(t) for t in texts], dtype=bool)
        per_lang = {l: np.array([self.word(t) in ws for t in texts], dtype=bool)
                    for l, ws in self.keywords.items()}
        return VocabClasses(eng, kw, per_lang)


@dataclass
class VocabClasses:
    """Boolean class arrays over a tokenizer's vocabulary (``TokenClassifier``)."""

    english: np.ndarray
    keyword_any: np.ndarray
    per_language: dict[str, np.ndarray]

    def of(self, cls: str, source: str, target: str) -> np.ndarray:
        if cls == "english":
            return self.english
        if cls == "english_only":
            return self.english & ~self.keyword_any
        if cls == "keyword_any":
            return self.keyword_any
        if cls in ("source", "target"):
            lang = source if cls == "source" else target
            if lang not in self.per_language:
                raise BabelError(f"no keyword list for {lang}")
            return self.per_language[lang]
        raise BabelError(f"unknown token class {cls!r} (known: {', '.join(CLASSES)})")


def decoded_vocabulary(tokenizer, size: int) -> list[str]:
    """Every token id < ``size`` decoded on its own (ids past the tokenizer's own
    vocabulary, e.g. padding rows of the embedding, decode to '')."""
    n = min(size, len(tokenizer))
    texts = [tokenizer.decode([i]) for i in range(n)]
    return texts + [""] * (size - n)


# --------------------------------------------------------------------------- prompts

@dataclass
class TranslationItem:
    """One test line of one language pair, tokenised."""

    source: str
    target: str
    concept: str
    kind: str
    shots: tuple[str, ...]
    text: str                  # the whole prompt, target snippet included
    input_ids: list[int]       # tokens of ``text``
    first: int                 # index of the first target-snippet token in input_ids
    n_read: int                # positions read: first-1 .. first-1+n_read-1
    prefix_len: int = 0        # leading tokens = the pair's few-shot block (0: not shared)


def translation_text(shots: Sequence[Concept], test: Concept, source: str,
                     target: str) -> tuple[str, str]:
    """(context, continuation) in the paper's format: one ``"A: a - B: b"`` line per shot,
    then ``"A: a - B:"``; the continuation is ``" b"``."""
    a, b = get_language(source).display, get_language(target).display
    lines = [f"{a}: {c.snippet(source)} - {b}: {c.snippet(target)}" for c in shots]
    context = "\n".join(lines + [f"{a}: {test.snippet(source)} - {b}:"])
    return context, " " + test.snippet(target)


def shot_ids(concepts: ConceptSet, n_shots: int, seed: int) -> list[int]:
    """The few-shot concepts, the same for every pair (as the paper's one fixed few-shot
    block): ``n_shots`` concepts in a seeded order, alternating the two kinds so both are
    shown. Every other concept is a test line."""
    if not 1 <= n_shots < len(concepts.concepts):
        raise BabelError(f"{n_shots} shots need 1 to {len(concepts.concepts) - 1} of "
                         f"{len(concepts.concepts)} concepts")
    rng = np.random.default_rng(seed)
    by_kind = {k: [i for i in rng.permutation(len(concepts.concepts))
                   if concepts.concepts[i].kind == k] for k in ("keyword", "identifier")}
    out = []
    while len(out) < n_shots:
        for k in ("keyword", "identifier"):
            if by_kind[k] and len(out) < n_shots:
                out.append(int(by_kind[k].pop(0)))
    return out


def build_items(concepts: ConceptSet, tokenizer, n_shots: int = 4, max_positions: int = 8,
                seed: int = 0, pairs: Sequence[tuple[str, str]] | None = None
                ) -> tuple[list[TranslationItem], list[dict]]:
    """Tokenised translation items for every (pair, test concept) -> (items, dropped).
    An item whose context does not end on a token boundary (the tokenizer merges the
    last context token with the continuation) is dropped with the reason. Where the
    few-shot block (its lines and the newline after them) tokenises as a prefix of the
    item, ``prefix_len`` says so and the lens computes that block once per pair."""
    shots_idx = shot_ids(concepts, n_shots, seed)
    shots = [concepts.concepts[j] for j in shots_idx]
    items, dropped = [], []
    for source, target in (pairs or concepts.pairs):
        block, _ = translation_text(shots[:-1], shots[-1], source, target)
        block = block + " " + shots[-1].snippet(target) + "\n"
        block_ids = tokenizer(block, add_special_tokens=False)["input_ids"]
        for ti, test in enumerate(concepts.concepts):
            if ti in shots_idx:
                continue
            context, cont = translation_text(shots, test, source, target)
            ctx = tokenizer(context, add_special_tokens=False)["input_ids"]
            full = tokenizer(context + cont, add_special_tokens=False)["input_ids"]
            if full[:len(ctx)] != ctx or len(full) <= len(ctx):
                dropped.append({"source": source, "target": target, "concept": test.id,
                                "reason": "the context's last token merges with the "
                                          "target snippet"})
                continue
            shared = len(block_ids) if (full[:len(block_ids)] == block_ids
                                        and len(block_ids) < len(ctx)) else 0
            n_read = min(max_positions, len(full) - len(ctx))
            items.append(TranslationItem(source, target, test.id, test.kind,
                                         tuple(s.id for s in shots), context + cont,
                                         list(full), len(ctx), n_read, shared))
    return items, dropped


# --------------------------------------------------------------------------- lens

def item_class_measures(top_ids: np.ndarray, top_probs: np.ndarray, true_next: np.ndarray,
                        classes: VocabClasses, source: str, target: str) -> dict[str, np.ndarray]:
    """Per-layer measures of one item from its top-k tokens.

    ``top_ids``/``top_probs``: (n_layers, n_positions, k), rank 0 first; ``true_next``:
    (n_positions,) the true next token at each read position. -> measure -> (n_layers,)
    values, each the mean over positions."""
    out = {}
    for cls in CLASSES:
        if cls == "correct":
            member = top_ids == true_next[None, :, None]
        else:
            member = classes.of(cls, source, target)[top_ids]
        out[f"share_{cls}"] = member.mean(axis=(1, 2))
        out[f"prob_{cls}"] = (member * top_probs).sum(axis=2).mean(axis=1)
        out[f"top1_{cls}"] = member[:, :, 0].mean(axis=1)
    return out


def read_states(lens, items, pad: int):
    """Hidden states at the read positions of ``items``, which share one prefix of
    ``items[0].prefix_len`` tokens: the prefix runs once (its KV cache is copied for the
    batch), the rest of every item right-padded after it. -> list of (n_layers+1, n_read,
    H) tensors. Equal to running each item whole (tested)."""
    import copy
    import inspect

    import torch

    from babeltower.batching import pad_batch

    plen = items[0].prefix_len
    cache = None
    # transformers 5 names the KV cache argument and output ``cache``, 4.x ``past_key_values``
    cache_kw = ("cache" if "cache" in inspect.signature(lens.decoder.forward).parameters
                else "past_key_values")
    if plen:
        prefix = torch.tensor([items[0].input_ids[:plen]])
        with torch.inference_mode():
            cache = getattr(lens.decoder(input_ids=prefix, use_cache=True), cache_kw)
    # right padding: a real token never attends to a pad, positions stay as they are
    ids, mask = pad_batch([it.input_ids[plen:] for it in items], pad, "right")
    pos = plen + torch.arange(ids.shape[1]).expand(ids.shape)
    full_mask = torch.cat([torch.ones((len(items), plen), dtype=mask.dtype), mask], dim=1)
    if cache is not None:
        cache = copy.deepcopy(cache)
        if len(items) > 1:
            cache.batch_repeat_interleave(len(items))
    with torch.inference_mode():
        out = lens.decoder(input_ids=ids, attention_mask=full_mask, position_ids=pos,
                           use_cache=cache is not None, **{cache_kw: cache},
                           output_hidden_states=True)
    hs = out.hidden_states
    res = []
    for j, it in enumerate(items):
        at = torch.arange(it.first - 1, it.first - 1 + it.n_read) - plen
        res.append(torch.stack([h[j, at] for h in hs]))
    return res


def concept_lens(model, tokenizer, items: Sequence[TranslationItem], classes: VocabClasses,
                 top_k: int = 10, batch_size: int = 8, progress: bool = False,
                 keep_top1: bool = True):
    """Run the lens over ``items`` -> (measures, top1): ``measures`` a tidy DataFrame
    (source, target, concept, kind, layer, measure, value), one value per item, layer and
    ``MEASURES`` entry; ``top1`` (if ``keep_top1``) the top-1 token id and probability per
    (item, layer, read position): (source, target, concept, layer, position, token_id, prob).
    Items of one pair share their few-shot block's forward (``prefix_len``)."""
    import pandas as pd
    import torch
    from tqdm.auto import tqdm

    from babeltower.probes.lens import LogitLens

    lens = LogitLens(model)
    n_l = lens.n_layers + 1
    rows, tops = [], []
    pad = getattr(tokenizer, "pad_token_id", None)
    pad = int(pad if pad is not None else (tokenizer.eos_token_id or 0))
    groups: dict[tuple, list[int]] = {}
    for i, it in enumerate(items):
        key = (tuple(it.input_ids[:it.prefix_len]),) if it.prefix_len else ("alone", i)
        groups.setdefault(key, []).append(i)
    batches = [g[b:b + batch_size] for g in groups.values()
               for b in range(0, len(g), batch_size)]
    for idx in tqdm(batches, desc="concept lens", unit="batch",
                    disable=None if progress else True, leave=False):
        batch = [items[i] for i in idx]
        for it, states in zip(batch, read_states(lens, batch, pad)):
            with torch.inference_mode():
                probs = torch.softmax(lens.decode(states).float(), dim=-1)
                p, t = probs.topk(top_k, dim=-1)
            t_np, p_np = t.numpy(), p.numpy()
            true_next = np.asarray(it.input_ids[it.first:it.first + it.n_read])
            vals = item_class_measures(t_np, p_np, true_next, classes, it.source, it.target)
            for m, v in vals.items():
                for layer in range(n_l):
                    rows.append((it.source, it.target, it.concept, it.kind, layer, m,
                                 float(v[layer])))
            if keep_top1:
                for layer in range(n_l):
                    for q in range(it.n_read):
                        tops.append((it.source, it.target, it.concept, layer, q,
                                     int(t_np[layer, q, 0]), float(p_np[layer, q, 0])))
    cols = ["source", "target", "concept", "kind", "layer", "measure", "value"]
    measures = pd.DataFrame(rows, columns=cols)
    top1 = pd.DataFrame(tops, columns=["source", "target", "concept", "layer", "position",
                                       "token_id", "prob"]) if keep_top1 else None
    return measures, top1


# --------------------------------------------------------------------------- statistics

def layer_intervals(measures, by: Sequence[str] = (), n_boot: int = 1000, seed: int = 0,
                    level: float = 0.95):
    """Per (group, measure, layer): the mean over prompts and a percentile bootstrap
    interval (prompts resampled with replacement, the same draw for every layer so the
    curve's shape is resampled as a whole). A prompt is one (source, target, concept).
    -> DataFrame (*by, measure, layer, mean, lo, hi, n)."""
    import pandas as pd

    rng = np.random.default_rng(seed)
    keys = list(by) + ["measure"]
    out = []
    for key, g in measures.groupby(keys, sort=True):
        wide = g.pivot_table(index=["source", "target", "concept"], columns="layer",
                             values="value")
        x = wide.to_numpy(dtype=float)                       # (n_prompts, n_layers)
        n = x.shape[0]
        draws = rng.integers(0, n, size=(n_boot, n))
        boot = np.nanmean(x[draws], axis=1)                   # (n_boot, n_layers)
        lo, hi = percentile_interval(boot, level, axis=0)
        mean = np.nanmean(x, axis=0)
        key = key if isinstance(key, tuple) else (key,)
        for li, layer in enumerate(wide.columns):
            out.append((*key, int(layer), float(mean[li]), float(lo[li]), float(hi[li]), n))
    return pd.DataFrame(out, columns=keys + ["layer", "mean", "lo", "hi", "n"])


def band_intervals(measures, bands: Mapping[str, tuple[int, int]], n_boot: int = 2000,
                   seed: int = 0, level: float = 0.95, pairs_of: Sequence[tuple[str, str]] = (
                       ("prob_target", "prob_source"),)):
    """Per band of layers (name -> (first, last), inclusive) and measure: the mean over
    prompts of each prompt's mean over the band's layers, with a percentile bootstrap
    over prompts; ``pairs_of`` adds differences (a minus b, per prompt) as measures
    ``"a-b"``. -> DataFrame (band, measure, mean, lo, hi, n)."""
    import pandas as pd

    rng = np.random.default_rng(seed)
    keys = ["source", "target", "concept"]
    wide = measures.pivot_table(index=keys + ["layer"], columns="measure", values="value")
    for a, b in pairs_of:
        if a in wide and b in wide:
            wide[f"{a}-{b}"] = wide[a] - wide[b]
    out = []
    for name, (lo, hi) in bands.items():
        sel = wide[(wide.index.get_level_values("layer") >= lo)
                   & (wide.index.get_level_values("layer") <= hi)]
        per_prompt = sel.groupby(level=keys).mean()
        x = per_prompt.to_numpy(dtype=float)                # (n_prompts, n_measures)
        n = x.shape[0]
        boot = np.nanmean(x[rng.integers(0, n, size=(n_boot, n))], axis=1)
        q = np.asarray(percentile_interval(boot, level, axis=0))
        for j, m in enumerate(per_prompt.columns):
            out.append((name, m, float(np.nanmean(x[:, j])), float(q[0, j]), float(q[1, j]), n))
    return pd.DataFrame(out, columns=["band", "measure", "mean", "lo", "hi", "n"])


def peak_layer(intervals, measure: str):
    """The layer where ``measure``'s mean peaks (ties: the first), with its row."""
    sel = intervals[intervals.measure == measure]
    if sel.empty:
        raise BabelError(f"no rows for measure {measure}")
    return sel.loc[sel["mean"].idxmax()]
