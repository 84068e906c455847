"""A seekable, deterministic sampler of training sequences from a mixture.

How sequence ``i`` is chosen (all of it depends only on shards, spec, seq_len, seed,
split and ``i``, so the batch at step N is the same after a restart):

1. Each language's packed stream (its documents concatenated, each followed by EOS, see
   ``corpus/shards.py``) is cut into non-overlapping windows of ``seq_len + 1`` tokens,
   packing across document boundaries. The stream's tail shorter than a window is
   never used.
2. A language with budget ``b`` tokens gets ``max(1, floor(b / (seq_len + 1)))``
   windows (floor, so a budget is never exceeded; a window is counted as the
   ``seq_len + 1`` stream tokens it reads). Windows are drawn by a seeded permutation
   of that language's windows: a budget below the stream takes a random subset; with
   ``allow_repeat`` a budget above it takes whole permutations plus part of another
   (each pass a different permutation), so no window repeats before all have been used.
3. All languages' windows are interleaved by a seeded global permutation, so every
   part of training sees the mixture's proportions (in expectation).
4. ``len(sampler)`` is one pass over the budget. Index ``i >= len`` belongs to epoch
   ``i // len``: the same windows, in a different (seeded) order.

``spec.exclude_knowledge``: for each language named, the windows that overlap a token of
an injected knowledge document (the data dir's ``knowledge.jsonl``; a document's EOS
does not count) are removed before step 2, which then permutes the remaining
(*eligible*) windows: budgets count eligible windows only. Without the option step 2 is
exactly the code path it always was.

Distributed training: ``sampler.for_ddp(rank, world_size)`` is a view whose local
index ``k`` is global index ``k * world_size + rank``. Ranks read disjoint sequences,
and the union of the ranks' batch at step ``s`` (local indices ``s*B .. s*B+B-1``) is
exactly global indices ``s*B*W .. (s+1)*B*W - 1``: the same data a single process with
global batch ``B*W`` would read.
"""

from __future__ import annotations

import zlib
from collections import OrderedDict

import numpy as np
import torch

from babeltower.corpus.shards import TokenShards
from babeltower.errors import BabelError
from babeltower.io import sha256_json
from babeltower.mixture.spec import MixtureSpec

_EPOCH_STREAM = 0x5EED_E90C   # separates the interleaving seeds from the per-language ones


def available_tokens(shards: TokenShards, split: str = "train") -> dict[str, int]:
    """Tokens per language in ``split``'s packed stream (documents plus EOS separators).

    This is the unit budgets are counted in, so ``natural(available_tokens(s))`` uses
    every language completely.
    """
    out = {}
    for lang in shards.languages:
        if shards.has(lang, split):
            out[lang] = int(shards.split(lang, split).tokens.shape[0])
    return out


def _rng(*words: int) -> np.random.Generator:
    return np.random.Generator(np.random.PCG64(np.random.SeedSequence(list(words))))


def _lang_key(lang: str) -> int:
    # stable across processes and Python versions (unlike hash())
    return zlib.crc32(lang.encode())


def knowledge_windows(shards: TokenShards, language: str, window: int,
                      split: str = "train") -> np.ndarray:
    """Bool per window of ``window`` tokens of the language's stream: does it overlap a
    token of an injected knowledge document (EOS separators not counted)?

    BabelError if the data dir does not record its knowledge documents (packed before
    format /2) or ``language`` has none in ``split``: nothing could be excluded."""
    sp = shards.split(language, split)
    have = int(sp.tokens.shape[0]) // window
    kdocs = shards.knowledge_documents(language, split)
    if not kdocs:
        raise BabelError(f"exclude_knowledge: {language} has no injected knowledge documents "
                         f"in the {split!r} split of {shards.root}; nothing to exclude")
    rows = sp.docs[np.asarray([d["doc"] for d in kdocs], dtype=np.int64)]
    rows = rows[rows[:, 1] > 0]
    first = rows[:, 0] // window
    last = (rows[:, 0] + rows[:, 1] - 1) // window
    # +1 at a document's first window, -1 after its last: covered where the sum is > 0
    delta = np.zeros(have + 2, dtype=np.int64)
    np.add.at(delta, np.minimum(first, have), 1)
    np.add.at(delta, np.minimum(last + 1, have + 1), -1)
    return np.cumsum(delta)[:have] > 0


class MixtureSampler:
    """Sequence ``i`` of a mixture: ``(seq_len + 1,)`` int64 token ids and its language."""

    def __init__(self, shards: TokenShards, spec: MixtureSpec, seq_len: int, seed: int = 0,
                 split: str = "train"):
        if not isinstance(shards, TokenShards):
            shards = TokenShards(shards)
        spec = MixtureSpec.from_any(spec)
        if int(seq_len) < 1:
            raise BabelError(f"seq_len must be >= 1, got {seq_len}")
        self.shards, self.spec, self.seq_len = shards, spec, int(seq_len)
        self.seed, self.split = int(seed), split
        self.window = self.seq_len + 1

        available = available_tokens(shards, split)
        self.tokens_by_language: dict[str, int] = spec.resolve(available)
        self.languages: list[str] = sorted(self.tokens_by_language)
        self._streams = {lang: shards.split(lang, split).tokens for lang in self.languages}

        self.windows_by_language: dict[str, int] = {}
        self.available_windows: dict[str, int] = {}
        # per language with exclude_knowledge: windows left out / still eligible
        self.excluded_windows: dict[str, int] = {}
        self.eligible_windows: dict[str, int] = {}
        lang_ids, window_ids = [], []
        for li, lang in enumerate(self.languages):
            have = available[lang] // self.window
            if have == 0:
                raise BabelError(f"{lang} has {available[lang]} tokens in {split!r}, fewer than "
                                 f"one window of seq_len+1={self.window}")
            need = max(1, self.tokens_by_language[lang] // self.window)
            eligible = None
            if lang in spec.exclude_knowledge:
                eligible = np.flatnonzero(~knowledge_windows(shards, lang, self.window, split))
                self.excluded_windows[lang] = have - int(eligible.size)
                self.eligible_windows[lang] = int(eligible.size)
                if eligible.size == 0 or (need > eligible.size and not spec.allow_repeat):
                    raise BabelError(
                        f"{lang} needs {need} windows of {self.window} tokens but only "
                        f"{eligible.size} of its {have} avoid its knowledge documents "
                        f"(exclude_knowledge); lower its budget"
                        + (" or set allow_repeat: true" if eligible.size else ""))
            elif need > have and not spec.allow_repeat:
                # resolve() passed, so only rounding to whole windows can land here
                raise BabelError(f"{lang} needs {need} windows of {self.window} tokens but has "
                                 f"{have}; lower its budget or set allow_repeat: true")
            pool = have if eligible is None else int(eligible.size)
            passes = -(-need // pool)
            chosen = np.concatenate([
                _rng(self.seed, _lang_key(lang), p).permutation(pool) for p in range(passes)
            ])[:need]
            if eligible is not None:
                chosen = eligible[chosen]
            self.windows_by_language[lang] = need
            self.available_windows[lang] = have
            lang_ids.append(np.full(need, li, dtype=np.int16))
            window_ids.append(chosen)
        self._lang_of = np.concatenate(lang_ids)
        # int32 while it fits: 6 bytes per window plus 4 for the epoch's permutation
        self._window_of = np.concatenate(window_ids).astype(
            np.int32 if max(self.available_windows.values()) < 2**31 else np.int64)
        self._n = int(self._window_of.shape[0])
        self._orders: OrderedDict[int, np.ndarray] = OrderedDict()

    # ---- indexing -------------------------------------------------------------------
    def __len__(self) -> int:
        return self._n

    @property
    def tokens_per_pass(self) -> int:
        """Tokens trained on (predicted) in one pass: len x seq_len."""
        return self._n * self.seq_len

    def _order(self, epoch: int) -> np.ndarray:
        order = self._orders.get(epoch)
        if order is None:
            order = _rng(self.seed, _EPOCH_STREAM, epoch).permutation(self._n)
            if self._n < 2**31:
                order = order.astype(np.int32)
            self._orders[epoch] = order
            while len(self._orders) > 2:   # keep the current and the previous epoch
                self._orders.popitem(last=False)
        else:
            self._orders.move_to_end(epoch)
        return order

    def locate(self, index: int) -> tuple[str, int]:
        """(language, window number within that language's stream) of sequence ``index``."""
        index = int(index)
        if index < 0:
            raise IndexError(f"sequence index must be >= 0, got {index}")
        j = self._order(index // self._n)[index % self._n]
        return self.languages[int(self._lang_of[j])], int(self._window_of[j])

    def sequence(self, index: int) -> tuple[np.ndarray, str]:
        lang, w = self.locate(index)
        start = int(w) * self.window
        ids = np.asarray(self._streams[lang][start:start + self.window], dtype=np.int64)
        return ids, lang

    def batch(self, start: int, batch_size: int) -> tuple[torch.LongTensor, list[str]]:
        """Sequences ``start .. start+batch_size-1`` as a ``[B, seq_len+1]`` LongTensor."""
        return self.gather(np.arange(int(start), int(start) + int(batch_size)))

    def gather(self, indices) -> tuple[torch.LongTensor, list[str]]:
        """Any sequence indices at once (one vectorised read per language)."""
        idx = np.asarray(indices, dtype=np.int64).reshape(-1)
        if idx.size == 0:
            return torch.zeros((0, self.window), dtype=torch.long), []
        lang_ids, windows = self.locate_many(idx)
        out = np.empty((idx.size, self.window), dtype=np.int64)
        offsets = np.arange(self.window)
        for li in np.unique(lang_ids):
            sel = lang_ids == li
            starts = windows[sel].astype(np.int64) * self.window
            out[sel] = self._streams[self.languages[int(li)]][starts[:, None] + offsets]
        return torch.from_numpy(out), [self.languages[int(li)] for li in lang_ids]

    def locate_many(self, indices) -> tuple[np.ndarray, np.ndarray]:
        """``locate`` for many indices at once: (index into ``languages``, window number)."""
        idx = np.asarray(indices, dtype=np.int64).reshape(-1)
        if idx.size and idx.min() < 0:
            raise IndexError(f"sequence index must be >= 0, got {int(idx.min())}")
        epochs, pos = np.divmod(idx, self._n)
        j = np.empty_like(idx)
        for e in np.unique(epochs):
            sel = epochs == e
            j[sel] = self._order(int(e))[pos[sel]]
        return self._lang_of[j], self._window_of[j]

    def window_reads(self, n_sequences: int, start: int = 0,
                     chunk: int = 1 << 20) -> dict[str, np.ndarray]:
        """How often each window of each language is read by sequences ``start .. n-1``:
        an int64 array of ``available_windows[lang]`` counts per language."""
        out = {lang: np.zeros(self.available_windows[lang], dtype=np.int64)
               for lang in self.languages}
        for lo in range(int(start), int(n_sequences), chunk):
            lang_ids, windows = self.locate_many(
                np.arange(lo, min(int(n_sequences), lo + chunk)))
            for li in np.unique(lang_ids):
                lang = self.languages[int(li)]
                out[lang] += np.bincount(windows[lang_ids == li],
                                         minlength=self.available_windows[lang])
        return out

    def language_counts(self) -> dict[str, int]:
        """Windows per language in one pass (what the mixture actually delivers)."""
        return dict(self.windows_by_language)

    def for_ddp(self, rank: int, world_size: int) -> "RankView":
        return RankView(self, rank, world_size)

    # ---- resume ---------------------------------------------------------------------
    def data_fingerprint(self) -> str:
        """sha256 of the token files read (and of the knowledge index when it decides which
        windows are read); the same for a /1 and a /2 pack of one corpus."""
        d: dict = {lang: self.shards.token_sha256(lang, self.split) for lang in self.languages}
        if self.spec.exclude_knowledge:
            d["knowledge_index"] = self.shards.manifest["knowledge"]["sha256"]
        return sha256_json(d)

    def state_dict(self) -> dict:
        """What identifies this stream; ``load_state_dict`` refuses a different one."""
        return {"seed": self.seed, "seq_len": self.seq_len, "split": self.split,
                "spec_sha256": self.spec.fingerprint(), "len": self._n,
                "tokens_by_language": dict(self.tokens_by_language),
                "data_sha256": self.data_fingerprint()}

    def load_state_dict(self, state: dict) -> None:
        mine = self.state_dict()
        for key in ("seed", "seq_len", "split", "spec_sha256", "len", "data_sha256"):
            if key in state and state[key] != mine[key]:
                raise BabelError(f"cannot resume: the sampler's {key} differs from the saved one "
                                 f"({mine[key]!r} now, {state[key]!r} saved); the data stream "
                                 "would not be the same")


class RankView:
    """One rank's disjoint share of a ``MixtureSampler`` (local k -> global k*W + rank)."""

    def __init__(self, sampler: MixtureSampler, rank: int, world_size: int):
        if world_size < 1 or not 0 <= rank < world_size:
            raise BabelError(f"need 0 <= rank < world_size, got rank={rank}, "
                             f"world_size={world_size}")
        self.sampler, self.rank, self.world_size = sampler, int(rank), int(world_size)

    def __len__(self) -> int:
        return len(self.sampler) // self.world_size

    def global_index(self, index: int) -> int:
        return int(index) * self.world_size + self.rank

    def sequence(self, index: int) -> tuple[np.ndarray, str]:
        return self.sampler.sequence(self.global_index(index))

    def batch(self, start: int, batch_size: int) -> tuple[torch.LongTensor, list[str]]:
        local = np.arange(int(start), int(start) + int(batch_size))
        return self.sampler.gather(local * self.world_size + self.rank)

    def state_dict(self) -> dict:
        return {**self.sampler.state_dict(), "rank": self.rank, "world_size": self.world_size}

    def load_state_dict(self, state: dict) -> None:
        self.sampler.load_state_dict(state)
