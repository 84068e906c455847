"""Document identity in packed shards and fact exposures counted from a run's own sampler,
on a small corpus built, tokenized (byte-level BPE) and packed for real.

The independent count decodes every delivered window with the tokenizer (and the stream
around it), finds each fact's renderings as text (``knowledge.render`` of its name and
answer in each training form, from facts.json) and classifies each occurrence by
character position: inside the window's text = read, overlapping it = cut. It shares
nothing with ``fact_exposures`` but the sampler's choice of windows.
"""

from __future__ import annotations

import json
from collections import Counter, defaultdict
from pathlib import Path

import numpy as np
import pytest

from babeltower.corpus.build import build_corpus
from babeltower.corpus.config import BuildConfig, PackConfig, TokenizerConfig
from babeltower.corpus.corpusdir import CorpusDir
from babeltower.corpus.knowledge import FORMS, knowledge_source, load_facts, render, \
    write_knowledge
from babeltower.corpus.pack import fact_char_spans, pack_corpus
from babeltower.corpus.shards import TokenShards
from babeltower.corpus.tokenizer import train_tokenizer
from babeltower.errors import BabelError
from tokenizer_fixtures import organic_python_php
from babeltower.mixture import MixtureSampler
from babeltower.mixture.exposures import exposure_curve, fact_exposures

# one key per fact (benchmark v2's "same" variant): the independent renderer below names a
# fact by one identifier; mapped facts' per-rendering bridge names are the knowledge tests'
KCFG = dict(primary="python", languages=["php"], facts_per_class=8, exposures=6, n_answers=4,
            facts_per_document=3, seed=5, keys=["same"])


def _organic(root: Path, n: int = 40) -> Path:
    return organic_python_php(root, n, seed=1)


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    root = tmp_path_factory.mktemp("expo")
    kd = write_knowledge(KCFG, root / "knowledge")
    corpus = build_corpus([str(_organic(root / "src")), str(knowledge_source(kd))],
                          root / "corpus", BuildConfig(), progress=False)
    tok = train_tokenizer(corpus, root / "tok", TokenizerConfig(vocab_size=320,
                          languages=["python", "php"]), progress=False)
    data = pack_corpus(corpus, tok, root / "data", PackConfig(), progress=False)
    from tokenizers import Tokenizer
    return {"corpus": CorpusDir(corpus), "data": data, "facts": load_facts(kd),
            "tok": Tokenizer.from_file(str(data / "tokenizer" / "tokenizer.json"))}


def renderings(facts: dict, lang: str) -> dict[str, str]:
    """rendering text (stripped) -> fact id, every training form of every fact."""
    out = {}
    for f in facts["facts"]:
        for form in FORMS:
            if form != f["query_form"]:
                out[render(lang, form, f["name"], f["answer"]).strip()] = f["id"]
    return out


def test_pack_records_every_documents_identity_and_each_facts_tokens(built):
    shards, corpus, tok = TokenShards(built["data"]), built["corpus"], built["tok"]
    shards.verify()
    assert shards.manifest["format"] == "babeltower-data/2"
    text_of = {}
    for lang in ("python", "php"):
        for split in ("train", "validation", "test"):
            if not shards.has(lang, split):
                continue
            rows = corpus.read(lang, split)
            ids = shards.document_identities(lang, split)
            assert [(r["path"], r["sha256"]) for r in rows] == \
                [(d["path"], d["sha256"]) for d in ids]
            assert len(ids) == shards.split(lang, split).docs.shape[0]
            text_of.update({(lang, split, r["path"]): r["text"] for r in rows})
    listed = [json.loads(x) for x in (corpus.root / "knowledge.jsonl").read_text().splitlines()]
    index = shards.knowledge_documents()
    assert len(index) == len(listed) == shards.manifest["knowledge"]["documents"] > 0
    assert shards.manifest["knowledge"]["without_fact_spans"] == 0
    forms = {lang: renderings(built["facts"], lang) for lang in ("python", "php")}
    seen = Counter()
    for d in index:
        sp = shards.split(d["language"], d["split"])
        doc_ids = [int(t) for t in sp.document(d["doc"])]
        assert tok.decode(doc_ids) == text_of[(d["language"], d["split"], d["path"])]
        for fact, (a, b) in zip(d["facts"], d["fact_spans"]):
            piece = tok.decode(doc_ids[a:b]).strip()
            assert forms[d["language"]].get(piece) == fact, piece   # that fact's rendering
            seen[(d["language"], fact)] += 1
    # every fact occurs `exposures` times in each corpus it belongs to
    assert set(seen.values()) == {KCFG["exposures"]}


def independent_count(built, sampler, n: int, margin: int = 200):
    """(read, cut) per (language, fact) from the decoded text of delivered windows."""
    tok, facts = built["tok"], built["facts"]
    w = sampler.window
    read, cut = Counter(), Counter()
    for i in range(n):
        lang, win = sampler.locate(i)
        stream = [int(t) for t in sampler.shards.split(lang, "train").tokens]
        lo, s, e = max(0, win * w - margin), win * w, (win + 1) * w
        hi = min(len(stream), e + margin)
        pre, mid, post = (tok.decode(stream[lo:s], skip_special_tokens=False),
                          tok.decode(stream[s:e], skip_special_tokens=False),
                          tok.decode(stream[e:hi], skip_special_tokens=False))
        text = pre + mid + post
        assert text == tok.decode(stream[lo:hi], skip_special_tokens=False)
        a, b = len(pre), len(pre) + len(mid)
        for r, fact in renderings(facts, lang).items():
            p = text.find(r)
            while p >= 0:
                if a <= p and p + len(r) <= b:
                    read[(lang, fact)] += 1
                elif p < b and p + len(r) > a:
                    cut[(lang, fact)] += 1
                p = text.find(r, p + 1)
    return read, cut


@pytest.mark.parametrize("budgets,exclude,seq_len,tokens", [
    ({"php": 3000}, [], 24, 3000),
    ({"php": 2000, "python": 1500}, [], 40, 3600),
    ({"php": 2000, "python": 1500}, ["python"], 40, 3600),
    ({"php": 1500}, [], 32, 4000),                    # past one pass: epochs 1 and 2
])
def test_exposures_equal_an_independent_count_from_decoded_windows(built, budgets, exclude,
                                                                   seq_len, tokens):
    spec = {"budgets": budgets, "exclude_knowledge": exclude}
    res = fact_exposures(built["data"], spec, seq_len, seed=3, tokens=tokens)
    n = -(-tokens // seq_len)
    assert res["sequences"] == n and res["tokens"] == n * seq_len
    sampler = MixtureSampler(TokenShards(built["data"]), spec, seq_len, seed=3)
    read, cut = independent_count(built, sampler, n)
    # every fact with documents (never-taught facts have none) is listed, unread ones with 0
    all_facts = {f["id"] for f in built["facts"]["facts"] if f["class"] != "never-taught"}
    assert set(res["facts"]) == all_facts
    for f in all_facts:
        assert res["facts"][f] == read[("python", f)] + read[("php", f)], f
        assert res["cut"][f] == cut[("python", f)] + cut[("php", f)], f
    for lang, per in res["by_language"].items():
        assert per == {f: read[(lang, f)] for f in per}
    assert sum(res["facts"].values()) > 0 and sum(res["cut"].values()) > 0  # both happen
    if exclude:
        assert sampler.windows_by_language["python"] > 0
        assert not any(read[("python", f)] or cut[("python", f)] for f in all_facts)
    # summaries: per class over all languages, from the independent counts
    cls = {f["id"]: f["class"] + (f"-{f['target']}" if f["target"] else "")
           for f in built["facts"]["facts"]}
    groups = defaultdict(list)
    for f in all_facts:
        groups[cls[f]].append(read[("python", f)] + read[("php", f)])
    for c, vals in groups.items():
        got = res["summary"]["by_class"][c]
        assert (got["facts"], got["min"], got["max"], got["median"]) == \
            (len(vals), min(vals), max(vals), float(np.median(vals)))
    # per language and class: the occurrences are the configured exposures
    for key, st in res["summary"]["by_language_class"].items():
        assert st["occurrences_per_fact"]["min"] == st["occurrences_per_fact"]["max"] \
            == KCFG["exposures"], key


def test_exposures_arguments_and_old_data(built, tmp_path):
    spec = {"budgets": {"php": 3000}}
    a = fact_exposures(built["data"], spec, 24, seed=1, tokens=24 * 50)
    b = fact_exposures(built["data"], spec, 24, seed=1, sequences=50)
    c = fact_exposures(built["data"], spec, 24, seed=1, tokens=24 * 49 + 1)   # ceil
    assert a == b == c and a["sequences"] == 50
    for kw in ({}, {"tokens": 10, "sequences": 1}):
        with pytest.raises(BabelError, match="tokens or sequences"):
            fact_exposures(built["data"], spec, 24, **kw)
    # a /1 data dir (no knowledge index): one line naming the fix
    import shutil
    old = tmp_path / "old"
    shutil.copytree(built["data"], old)
    man = json.loads((old / "manifest.json").read_text())
    del man["knowledge"]
    man["format"] = "babeltower-data/1"
    (old / "manifest.json").write_text(json.dumps(man))
    with pytest.raises(BabelError, match="repack") as e:
        fact_exposures(old, spec, 24, sequences=5)
    assert "\n" not in str(e.value)


def test_fact_char_spans_follow_the_documents_shape():
    php = "<?php\n\ndefine('A', 1);\n\nfunction B() {\n    return 2;\n}\n"
    assert [php[a:b] for a, b in fact_char_spans(php, 2)] == \
        ["define('A', 1);", "function B() {\n    return 2;\n}"]
    py = "A: int = 1\n\nSETTINGS = {\n    \"B\": 2,\n}\n"              # no header
    assert [py[a:b] for a, b in fact_char_spans(py, 2)] == \
        ["A: int = 1", "SETTINGS = {\n    \"B\": 2,\n}"]
    for text, n in [(php, 4), (php, 1), (py, 3), (py, 0), ("", 0), ("x\n", 0)]:
        assert fact_char_spans(text, n) is None
    # (the shape alone cannot tell a header from a rendering when the pieces are exactly
    # one per fact or one more: (php, 3) and (py, 1) would be misread; make_documents
    # never writes those, and the pack test above checks every span against the fact's
    # own rendering)


def test_documents_without_fact_spans_are_refused_by_name(built, tmp_path):
    import shutil
    data = tmp_path / "data"
    shutil.copytree(built["data"], data)
    rows = [json.loads(x) for x in (data / "knowledge.jsonl").read_text().splitlines()]
    rows[3]["fact_spans"] = None
    (data / "knowledge.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    with pytest.raises(BabelError, match=f"{rows[3]['path']} .*has no fact spans") as e:
        fact_exposures(data, {"budgets": {"php": 3000}}, 24, sequences=5)
    assert "\n" not in str(e.value)


def test_exposure_curve_equals_one_count_per_point(built):
    spec = {"budgets": {"php": 2000, "python": 1500}}
    sampler = MixtureSampler(TokenShards(built["data"]), spec, 40, seed=2)
    points = [90, 0, 30, 30, 200]                       # any order, repeats, past one pass
    curve = exposure_curve(sampler, points)
    for n, res in zip(points, curve):
        assert res == fact_exposures(built["data"], spec, 40, seed=2, sequences=n)
    assert all(v == 0 for v in curve[1]["facts"].values())
    assert all(curve[0]["facts"][f] <= curve[4]["facts"][f] for f in curve[0]["facts"])
