"""exclude_knowledge: a language's windows overlapping injected knowledge documents are never
read; without the option the sampler is the code path it was (a reference implementation of
the old selection, written out here, gives the same sequences).

The shards' token ids say where they came from (language li, stream position p -> id
li*10000 + 1 + p, streams < 9999 tokens here), so a window's ids name the positions it
read and every check below is made on the data delivered, not on the sampler's arithmetic.
"""

import json
import zlib

import numpy as np
import pytest
from hypothesis import given, settings, strategies as st

from babeltower.corpus.shards import TokenShards, write_manifest
from babeltower.errors import BabelError
from babeltower.io import sha256_file, sha256_json
from babeltower.mixture import MixtureSampler, MixtureSpec, available_tokens, natural
from test_mixture_sampler import EOS, make_shards


def add_knowledge_index(root, rows: list[dict]) -> TokenShards:
    """Write ``knowledge.jsonl`` (the pack's format) and its manifest entry into ``root``."""
    p = root / "knowledge.jsonl"
    p.write_text("".join(json.dumps(r) + "\n" for r in rows))
    man = json.loads((root / "manifest.json").read_text())
    man["knowledge"] = {"documents_file": "knowledge.jsonl", "documents": len(rows),
                        "sha256": sha256_file(p)}
    write_manifest(root, man)
    return TokenShards(root)


def knowledge_rows(lang: str, docs: list[int], facts_per_doc: int = 1) -> list[dict]:
    return [{"path": f"knowledge/{lang}/{d}", "language": lang, "split": "train",
             "class": "primary-only", "target": None, "doc": int(d),
             "facts": [f"{lang}{d}_{k}" for k in range(facts_per_doc)], "fact_spans": None}
            for d in docs]


def positions(ids: np.ndarray) -> set[int]:
    """Stream positions a window read (EOS separators carry no position)."""
    return {int(i) % 10000 - 1 for i in ids if i != EOS}


DOCS = {"python": [int(x) for x in np.random.default_rng(1).integers(5, 80, 60)],
        "php": [int(x) for x in np.random.default_rng(2).integers(5, 80, 120)]}


@pytest.fixture(scope="module")
def kshards(tmp_path_factory):
    """python: documents 40..59 are knowledge (the tail, as in a built corpus) plus 5 and
    17 in the middle; php: documents 100..119 are knowledge too (never excluded here)."""
    root = tmp_path_factory.mktemp("kdata")
    make_shards(root, DOCS)
    return add_knowledge_index(root, knowledge_rows("python", [5, 17] + list(range(40, 60)))
                               + knowledge_rows("php", list(range(100, 120))))


def doc_positions(shards, lang, docs) -> set[int]:
    sp = shards.split(lang, "train")
    out = set()
    for d in docs:
        start, n, _ = sp.docs[d]
        out |= set(range(int(start), int(start + n)))
    return out


# ---- the old code path, written out ------------------------------------------------
def _rng(*words):
    return np.random.Generator(np.random.PCG64(np.random.SeedSequence(list(words))))


def old_sequences(shards, spec, seq_len, seed, indices):
    """The sampler before exclude_knowledge existed (e638b92), as a plain loop."""
    w = seq_len + 1
    avail = available_tokens(shards)
    budgets = spec.resolve(avail)
    langs = sorted(budgets)
    table = []
    for lang in langs:
        have = avail[lang] // w
        need = max(1, budgets[lang] // w)
        passes = -(-need // have)
        chosen = np.concatenate([_rng(seed, zlib.crc32(lang.encode()), p).permutation(have)
                                 for p in range(passes)])[:need]
        table += [(lang, int(c)) for c in chosen]
    n = len(table)
    out = []
    for i in indices:
        order = _rng(seed, 0x5EED_E90C, i // n).permutation(n)
        lang, win = table[order[i % n]]
        stream = np.asarray(shards.split(lang, "train").tokens, dtype=np.int64)
        out.append((stream[win * w:(win + 1) * w], lang))
    return n, out


@settings(max_examples=15, deadline=None)
@given(seed=st.integers(0, 2**31), seq_len=st.integers(4, 48), frac=st.floats(0.05, 1.0),
       data=st.data())
def test_without_the_option_the_stream_is_the_old_one(tmp_path_factory, kshards, seed, seq_len,
                                                      frac, data):
    avail = available_tokens(kshards)
    spec = natural(avail, max(2, int(frac * sum(avail.values()))))
    s = MixtureSampler(kshards, spec, seq_len, seed=seed)
    n = len(s)
    idx = data.draw(st.lists(st.integers(0, 2 * n), min_size=1, max_size=20))
    n_old, expected = old_sequences(kshards, spec, seq_len, seed, idx)
    assert n == n_old
    x, langs = s.gather(idx)
    for j, (ids, lang) in enumerate(expected):
        assert langs[j] == lang and np.array_equal(x[j].numpy(), ids)
    # the spec's and the stream's fingerprints are those of before
    assert spec.fingerprint() == sha256_json({"budgets": spec.budgets, "total_tokens":
                                              spec.total_tokens, "allow_repeat": False})
    mf = kshards.manifest["languages"]
    assert s.data_fingerprint() == sha256_json({lang: mf[lang]["train"]["sha256"]
                                                for lang in s.languages})


@settings(max_examples=20, deadline=None)
@given(seed=st.integers(0, 2**31), seq_len=st.integers(4, 48), frac=st.floats(0.02, 1.0),
       marked=st.sets(st.integers(0, 59), min_size=1, max_size=30))
def test_no_delivered_window_touches_an_excluded_document(tmp_path_factory, seed, seq_len,
                                                          frac, marked):
    root = tmp_path_factory.mktemp("k")
    make_shards(root, DOCS)
    shards = add_knowledge_index(root, knowledge_rows("python", sorted(marked))
                                 + knowledge_rows("php", list(range(100, 120))))
    w = seq_len + 1
    forbidden = doc_positions(shards, "python", marked)
    have = available_tokens(shards)["python"] // w
    # brute force: the windows that avoid every marked document's tokens
    eligible = [k for k in range(have) if not set(range(k * w, (k + 1) * w)) & forbidden]
    if not eligible:
        with pytest.raises(BabelError, match="exclude_knowledge"):
            MixtureSampler(shards, {"budgets": {"python": w, "php": 100},
                                    "exclude_knowledge": ["python"]}, seq_len, seed=seed)
        return
    budget = max(1, int(frac * len(eligible))) * w
    php_have = available_tokens(shards)["php"] // w
    spec = MixtureSpec(budgets={"python": budget, "php": php_have * w},
                       exclude_knowledge=["py"])
    s = MixtureSampler(shards, spec, seq_len, seed=seed)
    assert s.eligible_windows == {"python": len(eligible)}
    assert s.excluded_windows == {"python": have - len(eligible)}
    x, langs = s.batch(0, 2 * len(s))                     # two epochs
    read_python = set()
    for ids, lang in zip(x.numpy(), langs):
        if lang == "python":
            assert not positions(ids) & forbidden
            read_python |= positions(ids)
    # the budget counts eligible windows: exactly budget / (seq_len + 1) per pass
    assert langs.count("python") == 2 * (budget // w)
    # php keeps its knowledge documents (only python was excluded): every php window is
    # in the budget, so every knowledge token before the unused tail is read
    php_k = {p for p in doc_positions(shards, "php", range(100, 120)) if p < php_have * w}
    php_read = set().union(*[positions(i) for i, l in zip(x.numpy(), langs) if l == "php"])
    assert php_k and php_k <= php_read


def test_budget_of_eligible_windows_exactly_and_one_more(kshards):
    w = 17
    forbidden = doc_positions(kshards, "python", [5, 17] + list(range(40, 60)))
    have = available_tokens(kshards)["python"] // w
    eligible = [k for k in range(have) if not set(range(k * w, (k + 1) * w)) & forbidden]
    spec = MixtureSpec(budgets={"python": len(eligible) * w}, exclude_knowledge=["python"])
    s = MixtureSampler(kshards, spec, 16, seed=4)
    assert sorted(s.locate(i)[1] for i in range(len(s))) == eligible   # each once
    more = spec.model_copy(update={"budgets": {"python": (len(eligible) + 1) * w}})
    with pytest.raises(BabelError) as e:
        MixtureSampler(kshards, more, 16, seed=4)
    msg = str(e.value)
    assert "\n" not in msg and f"only {len(eligible)} of its {have}" in msg \
        and "exclude_knowledge" in msg
    # allow_repeat: whole permutations of the eligible windows, never an excluded one
    rep = more.model_copy(update={"allow_repeat": True,
                                  "budgets": {"python": 3 * len(eligible) * w}})
    r = MixtureSampler(kshards, rep, 16, seed=4)
    uses = [r.locate(i)[1] for i in range(len(r))]
    assert sorted(set(uses)) == eligible and len(uses) == 3 * len(eligible)
    assert all(uses.count(k) == 3 for k in eligible)


def test_exclusion_is_seekable_deterministic_and_splits_over_ranks(kshards):
    spec = MixtureSpec(budgets={"python": 1200, "php": 3000}, exclude_knowledge=["python"])
    a = MixtureSampler(kshards, spec, 12, seed=9)
    b = MixtureSampler(kshards, spec, 12, seed=9)
    n = len(a)
    idx = [3 * n - 1, 0, n + 5, 7, n, 2]
    for i in idx:                                   # a fresh instance, another order
        ia, la = a.sequence(i)
        ib, lb = b.sequence(i)
        assert la == lb and np.array_equal(ia, ib)
    xa, _ = a.gather(idx)
    assert all(np.array_equal(xa[j].numpy(), a.sequence(i)[0]) for j, i in enumerate(idx))
    world, local_b, step = 3, 4, 2
    union = []
    for rank in range(world):
        xb, _ = a.for_ddp(rank, world).batch(step * local_b, local_b)
        union += [tuple(r.tolist()) for r in xb]
    glob = [tuple(a.sequence(i)[0].tolist())
            for i in range(step * local_b * world, (step + 1) * local_b * world)]
    assert sorted(union) == sorted(glob)
    # a different seed reads other windows, still none excluded
    c = MixtureSampler(kshards, spec, 12, seed=10)
    assert [c.locate(i) for i in range(n)] != [a.locate(i) for i in range(n)]


def test_resume_refuses_a_stream_with_or_without_the_exclusion(kshards, tmp_path):
    plain = MixtureSpec(budgets={"python": 1200, "php": 3000})
    excl = plain.model_copy(update={"exclude_knowledge": ["python"]})
    s = MixtureSampler(kshards, excl, 12, seed=1)
    state = json.loads(json.dumps(s.state_dict()))
    MixtureSampler(kshards, excl, 12, seed=1).load_state_dict(state)
    with pytest.raises(BabelError, match="spec_sha256"):
        MixtureSampler(kshards, plain, 12, seed=1).load_state_dict(state)
    # another knowledge index decides other windows: the data fingerprint changes
    import shutil
    other = tmp_path / "other"
    shutil.copytree(kshards.root, other)
    moved = add_knowledge_index(other, knowledge_rows("python", [6, 17] + list(range(40, 60))))
    with pytest.raises(BabelError, match="data_sha256"):
        MixtureSampler(moved, excl, 12, seed=1).load_state_dict(state)
    # ... which does not matter without the exclusion
    p = MixtureSampler(kshards, plain, 12, seed=1)
    MixtureSampler(moved, plain, 12, seed=1).load_state_dict(p.state_dict())


def test_exclusion_needs_known_knowledge_documents(tmp_path, kshards):
    old = make_shards(tmp_path / "old", {"python": [40] * 20})   # no index: a /1 pack
    spec = MixtureSpec(budgets={"python": 100}, exclude_knowledge=["python"])
    with pytest.raises(BabelError, match="repack") as e:
        MixtureSampler(old, spec, 8)
    assert "\n" not in str(e.value)
    MixtureSampler(old, spec.model_copy(update={"exclude_knowledge": []}), 8)  # still readable
    with pytest.raises(BabelError, match="records no document paths.*repack"):
        old.document_identities("python")
    none = add_knowledge_index(tmp_path / "old", knowledge_rows("php", [1]))
    with pytest.raises(BabelError, match="python has no injected knowledge documents"):
        MixtureSampler(none, spec, 8)


def test_spec_option_yaml_fingerprint_and_errors(tmp_path):
    spec = MixtureSpec.from_dict({"budgets": {"php": 300, "py": 100},
                                  "exclude_knowledge": ["py", "python"]})
    assert spec.exclude_knowledge == ["python"]
    spec.to_yaml(tmp_path / "m.yaml")
    assert "exclude_knowledge:\n- python" in (tmp_path / "m.yaml").read_text()
    back = MixtureSpec.from_yaml(tmp_path / "m.yaml")
    assert back == spec and back.fingerprint() == spec.fingerprint()
    plain = MixtureSpec(budgets={"php": 300, "python": 100})
    assert plain.fingerprint() != spec.fingerprint()
    plain.to_yaml(tmp_path / "p.yaml")                 # files without it read as before
    assert "exclude_knowledge" not in (tmp_path / "p.yaml").read_text()
    for bad, needle in [({"exclude_knowledge": ["go"]}, "go, which has no budget"),
                        ({"exclude_knowledge": ["klingon"]}, "klingon"),
                        ({"exclude_knowledge": 3}, "list of languages")]:
        with pytest.raises(BabelError, match=needle) as e:
            MixtureSpec.from_dict({"budgets": {"php": 300, "python": 100}, **bad})
        assert "\n" not in str(e.value)
