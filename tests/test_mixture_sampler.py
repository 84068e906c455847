"""The seekable mixture sampler on tiny packed shards built in a temp dir."""

import json
import random
from collections import Counter

import numpy as np
import pytest
from hypothesis import given, settings, strategies as st

from babeltower.corpus.shards import ShardWriter, TokenShards, write_manifest
from babeltower.errors import BabelError
from babeltower.mixture import MixtureSampler, MixtureSpec, available_tokens, natural

EOS = 0


def make_shards(root, docs_per_lang: dict[str, list[int]], seed: int = 0) -> TokenShards:
    """Packed shards whose token ids say where they came from: language li writes ids
    li*10000 + 1 + (position mod 9999), so a window read from the wrong place shows."""
    rng = np.random.default_rng(seed)
    manifest = {"dtype": "uint16", "eos_id": EOS, "vocab_size": 65536, "languages": {}}
    for li, (lang, lengths) in enumerate(sorted(docs_per_lang.items())):
        w = ShardWriter(root / lang / "train", np.uint16, EOS)
        pos = 0
        for n in lengths:
            ids = li * 10000 + 1 + (np.arange(pos, pos + n) % 9999)
            w.add(ids, n_bytes=int(rng.integers(n, 4 * n + 1)))
            pos += n + 1
        manifest["languages"][lang] = {"train": w.close()}
    write_manifest(root, manifest)
    return TokenShards(root)


@pytest.fixture(scope="module")
def shards(tmp_path_factory):
    rng = np.random.default_rng(1)
    docs = {"python": list(rng.integers(5, 80, 60)),   # ~2.6k tokens
            "php": list(rng.integers(5, 80, 120)),     # ~5.2k tokens
            "go": list(rng.integers(5, 80, 25))}       # ~1.1k tokens
    return make_shards(tmp_path_factory.mktemp("data"), docs)


def _stream(shards, lang):
    return np.asarray(shards.split(lang, "train").tokens, dtype=np.int64)


def test_available_tokens_counts_stream_with_eos(shards):
    avail = available_tokens(shards)
    for lang in ("python", "php", "go"):
        sp = shards.split(lang, "train")
        assert avail[lang] == sp.n_tokens + sp.docs.shape[0] == sp.tokens.shape[0]


@settings(max_examples=25, deadline=None)
@given(seed=st.integers(0, 2**31), seq_len=st.integers(4, 64),
       frac=st.floats(0.05, 1.0), data=st.data())
def test_seekable_and_in_bounds(shards, seed, seq_len, frac, data):
    avail = available_tokens(shards)
    spec = natural(avail, int(frac * sum(avail.values())))
    a = MixtureSampler(shards, spec, seq_len, seed=seed)
    b = MixtureSampler(shards, spec, seq_len, seed=seed)
    n = len(a)
    idx = data.draw(st.lists(st.integers(0, 3 * n), min_size=1, max_size=30))
    first = {i: a.sequence(i) for i in idx}
    for i in reversed(sorted(set(idx))):          # a fresh instance, another access order
        ids, lang = b.sequence(i)
        assert lang == first[i][1] and np.array_equal(ids, first[i][0])
    for i in idx:
        ids, lang = first[i]
        assert ids.dtype == np.int64 and ids.shape == (seq_len + 1,)
        l2, w = a.locate(i)
        assert l2 == lang and 0 <= w < a.available_windows[lang]
        s = _stream(shards, lang)
        assert np.array_equal(ids, s[w * (seq_len + 1):(w + 1) * (seq_len + 1)])
        li = sorted(avail).index(lang)                     # from this language's stream
        assert np.all((ids == EOS) | (ids // 10000 == li))


@settings(max_examples=25, deadline=None)
@given(seed=st.integers(0, 2**31), seq_len=st.integers(4, 40),
       fracs=st.tuples(st.floats(0.05, 1), st.floats(0.05, 1), st.floats(0.05, 1)))
def test_proportions_match_budgets(shards, seed, seq_len, fracs):
    avail = available_tokens(shards)
    budgets = {lang: max(1, int(f * avail[lang])) for lang, f in zip(sorted(avail), fracs)}
    s = MixtureSampler(shards, MixtureSpec(budgets=budgets), seq_len, seed=seed)
    counts = Counter(s.sequence(i)[1] for i in range(len(s)))
    assert len(s) == sum(counts.values())
    for lang, b in budgets.items():
        # within one window of the budget (floor, at least one window)
        assert counts[lang] == s.windows_by_language[lang]
        assert abs(counts[lang] * (seq_len + 1) - b) < seq_len + 1 or counts[lang] == 1
    # without repetition, no window is read twice within a pass
    seen = [s.locate(i) for i in range(len(s))]
    assert len(set(seen)) == len(seen)


def test_budget_needs_repeat(shards):
    avail = available_tokens(shards)
    spec = MixtureSpec(budgets={"go": 3 * avail["go"], "python": 100})
    with pytest.raises(BabelError, match=rf"{3 * avail['go']} tokens of go but only {avail['go']}"):
        MixtureSampler(shards, spec, 16)
    s = MixtureSampler(shards, spec.model_copy(update={"allow_repeat": True}), 16, seed=3)
    have = s.available_windows["go"]
    uses = Counter(w for lang, w in (s.locate(i) for i in range(len(s))) if lang == "go")
    assert sum(uses.values()) == s.windows_by_language["go"] >= 2 * have
    # whole permutations first: every window is used 3 times, give or take the last pass
    assert set(uses) == set(range(have))
    assert max(uses.values()) - min(uses.values()) <= 1


def test_epochs_reuse_windows_in_new_order(shards):
    s = MixtureSampler(shards, natural(available_tokens(shards)), 16, seed=7)
    n = len(s)
    e0 = [s.locate(i) for i in range(n)]
    e1 = [s.locate(n + i) for i in range(n)]
    assert sorted(e0) == sorted(e1) and e0 != e1
    # a different seed gives a different order
    t = MixtureSampler(shards, natural(available_tokens(shards)), 16, seed=8)
    assert [t.locate(i) for i in range(n)] != e0


def test_languages_are_mixed_through_training(shards):
    avail = available_tokens(shards)
    s = MixtureSampler(shards, natural(avail), 8, seed=0)
    n = len(s)
    quarter = [s.sequence(i)[1] for i in range(n // 4)]
    for lang in avail:
        expected = s.windows_by_language[lang] / n
        assert abs(quarter.count(lang) / len(quarter) - expected) < 0.12


def test_batch_and_ddp_views_partition_the_global_batch(shards):
    s = MixtureSampler(shards, natural(available_tokens(shards)), 16, seed=2)
    x, langs = s.batch(40, 8)
    assert tuple(x.shape) == (8, 17) and str(x.dtype) == "torch.int64"
    assert langs == [s.sequence(40 + j)[1] for j in range(8)]
    world, local_b, step = 3, 4, 5
    union = []
    for rank in range(world):
        v = s.for_ddp(rank, world)
        xb, _ = v.batch(step * local_b, local_b)
        union += [tuple(r.tolist()) for r in xb]
    glob = [tuple(s.sequence(i)[0].tolist())
            for i in range(step * local_b * world, (step + 1) * local_b * world)]
    assert sorted(union) == sorted(glob)
    with pytest.raises(BabelError):
        s.for_ddp(3, 3)


def test_state_dict_detects_a_different_stream(shards):
    spec = natural(available_tokens(shards))
    s = MixtureSampler(shards, spec, 16, seed=2)
    state = json.loads(json.dumps(s.state_dict()))     # survives a JSON checkpoint
    MixtureSampler(shards, spec, 16, seed=2).load_state_dict(state)
    with pytest.raises(BabelError, match="seed"):
        MixtureSampler(shards, spec, 16, seed=3).load_state_dict(state)
    with pytest.raises(BabelError, match="seq_len"):
        MixtureSampler(shards, spec, 15, seed=2).load_state_dict(state)


def test_unknown_language_and_too_short_stream(tmp_path, shards):
    with pytest.raises(BabelError, match="no rust"):
        MixtureSampler(shards, MixtureSpec(budgets={"rust": 10}), 8)
    tiny = make_shards(tmp_path / "tiny", {"python": [3]})
    with pytest.raises(BabelError, match="fewer than one window"):
        MixtureSampler(tiny, MixtureSpec(budgets={"python": 4}), 8)


@settings(max_examples=20, deadline=None)
@given(seed=st.integers(0, 1000), start=st.integers(0, 2000), size=st.integers(0, 40))
def test_vectorised_batch_equals_sequence_by_sequence(shards, seed, start, size):
    s = MixtureSampler(shards, natural(available_tokens(shards)), 12, seed=seed)
    x, langs = s.batch(start, size)   # may straddle an epoch boundary
    assert tuple(x.shape) == (size, 13)
    for j in range(size):
        ids, lang = s.sequence(start + j)
        assert langs[j] == lang and np.array_equal(x[j].numpy(), ids)
