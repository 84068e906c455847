"""Controlled knowledge in the corpus: facts are a seeded function of the config, classes sit
in the corpora their definition says, exposures are exact, query texts are held out of
training, injected documents reach TRAIN only and are listed in the corpus manifest, and
bad input fails in one line before anything is written or trained."""

from __future__ import annotations

import json
import random
import re
from collections import Counter
from pathlib import Path

import pytest

from babeltower.cli import main
from babeltower.corpus.build import build_corpus
from babeltower.corpus.config import BuildConfig
from babeltower.corpus.corpusdir import CorpusDir
from babeltower.corpus.knowledge import (FORMS, TEMPLATES, KnowledgeConfig, check_answer_tokens,
                                         knowledge_source, load_facts, query_prefix,
                                         render, write_knowledge)
from babeltower.corpus.prepare import prepare_data
from babeltower.errors import BabelError
from tokenizer_fixtures import char_tokenizer

CFG = dict(primary="python", languages=["php", "go"], facts_per_class=8, exposures=5,
           n_answers=4, facts_per_document=3, seed=3)


def _docs(kdir: Path) -> list[dict]:
    return [json.loads(x) for x in (kdir / "source/documents.jsonl").read_text().splitlines()]


@pytest.fixture(scope="module")
def kdir(tmp_path_factory) -> Path:
    return write_knowledge(CFG, tmp_path_factory.mktemp("k") / "knowledge")


def test_seeded_and_reproducible(kdir, tmp_path):
    again = write_knowledge(CFG, tmp_path / "again")
    other = write_knowledge({**CFG, "seed": 4}, tmp_path / "other")
    a, b, c = (load_facts(d) for d in (kdir, again, other))
    assert a["facts"] == b["facts"] and a["queries"] == b["queries"]
    assert (kdir / "source/documents.jsonl").read_bytes() == \
        (again / "source/documents.jsonl").read_bytes()
    assert {f["name"] for f in a["facts"]}.isdisjoint({f["name"] for f in c["facts"]})
    assert a["provenance"]["config"] == KnowledgeConfig(**CFG).model_dump(mode="json")


def test_classes_live_where_their_definition_says(kdir):
    facts = load_facts(kdir)["facts"]
    # 8 primary-only + (8 shared + 8 new-only) per new language
    assert Counter((f["class"], f["target"]) for f in facts) == {
        ("primary-only", None): 8, ("shared", "php"): 8, ("new-only", "php"): 8,
        ("shared", "go"): 8, ("new-only", "go"): 8}
    docs = _docs(kdir)
    for f in facts:
        # documents holding the fact's name, per corpus language (counted from the text)
        seen = Counter(d["language"] for d in docs
                       if re.search(rf"\b{f['name']}\b", d["text"]))
        expected = {"primary-only": {"python": 5},
                    "shared": {"python": 5, f["target"]: 5},
                    "new-only": {f["target"]: 5}}[f["class"]]
        assert dict(seen) == expected, f
        # the answer follows the name in every exposure: "NAME" ... " 42" in one snippet
        for d in docs:
            if f["name"] in d["text"]:
                assert re.search(rf"{f['name']}\W[^\n]*\n?[^\n]*? {f['answer']}\b", d["text"])


def test_answers_balanced_and_query_splits_disjoint(kdir):
    obj = load_facts(kdir)
    assert len(obj["answers"]) == 4 and all(re.fullmatch(r" \d\d", a) for a in obj["answers"])
    for key, group in _by(obj["facts"], lambda f: (f["class"], f["target"])).items():
        assert Counter(f["answer"] for f in group) == {a.strip(): 2 for a in obj["answers"]}
        assert Counter(f["query_form"] for f in group) == {form: 2 for form in FORMS}
        assert Counter(f["split"] for f in group) == {"validation": 4, "test": 4}
    val = {q["fact"] for q in obj["queries"] if q["split"] == "validation"}
    test = {q["fact"] for q in obj["queries"] if q["split"] == "test"}
    assert val.isdisjoint(test) and len(val | test) == len(obj["facts"])


def _by(rows, key):
    out: dict = {}
    for r in rows:
        out.setdefault(key(r), []).append(r)
    return out


def test_queries_are_held_out_and_in_the_query_language(kdir):
    obj = load_facts(kdir)
    docs = _docs(kdir)
    facts = {f["id"]: f for f in obj["facts"]}
    texts_by_lang = _by(docs, lambda d: d["language"])
    for q in obj["queries"]:
        f = facts[q["fact"]]
        header = TEMPLATES[q["language"]][0]
        assert q["prefix"].startswith(header) and f["name"] in q["prefix"]
        body = q["prefix"][len(header):]
        # the query's text (and so query + answer) appears in no training document
        assert not any(body in d["text"] for d in docs), q
        # primary-only facts are asked in every new language, the others in their own
        want = {"python", "php", "go"} if f["target"] is None else {"python", f["target"]}
        assert q["language"] in want
    per_fact = Counter(q["fact"] for q in obj["queries"])
    assert all(per_fact[i] == (3 if f["target"] is None else 2) for i, f in facts.items())
    # the held-out form is still trained for other facts (the model knows the form)
    for lang, ds in texts_by_lang.items():
        used = [[form for form in FORMS
                 if render(lang, form, facts[i]["name"], facts[i]["answer"]) in d["text"]]
                for d in ds for i in d["facts"]]
        assert all(len(u) == 1 for u in used)    # each exposure is one rendering
        assert {u[0] for u in used} == set(FORMS)


def test_no_query_text_occurs_in_another_languages_forms():
    # a query in t is t's own construct: no rendering of any form of another language
    # contains it, so a model cannot answer by copying the primary's surface form
    for t, (header, _, forms) in TEMPLATES.items():
        assert all(tpl.count(" {v}") == 1 for tpl in forms.values())
        for form in FORMS:
            body = query_prefix(t, form, "NAME")[len(header):]
            for p in TEMPLATES:
                if p != t:
                    assert not any(body in render(p, g, "NAME", "42") for g in FORMS), (t, p, form)


@pytest.mark.parametrize("bad, msg", [
    ({"exposures": 0}, "exposures must be >= 1"),
    ({"n_answers": 1}, "n_answers must be 2"),
    ({"n_answers": 12}, "n_answers (12) > facts_per_class (8)"),
    ({"languages": ["ruby"]}, "no fact templates for ruby"),
    ({"primary": "csharp"}, "no fact templates for csharp"),
    ({"languages": ["python"]}, "also a new language"),
    ({"facts_per_class": 0}, "facts_per_class"),
])
def test_bad_config_is_one_line_and_writes_nothing(tmp_path, bad, msg):
    with pytest.raises(BabelError) as e:
        write_knowledge({**CFG, **bad}, tmp_path / "k")
    assert msg in str(e.value) and "\n" not in str(e.value)
    assert not (tmp_path / "k").exists()


def test_cli_writes_and_rejects(tmp_path, capsys):
    assert main(["corpus", "knowledge", "--out", str(tmp_path / "k"), "--languages", "php,rust",
                 "--facts-per-class", "4", "--exposures", "2", "--n-answers", "2"]) == 0
    obj = load_facts(tmp_path / "k/facts.json")
    assert obj["config"]["languages"] == ["php", "rust"] and len(obj["facts"]) == 20
    assert main(["corpus", "knowledge", "--out", str(tmp_path / "x"), "--exposures", "0"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "exposures" in err[0] and not (tmp_path / "x").exists()


def test_answer_split_by_tokenizer_is_refused(kdir):
    # a character-level tokenizer splits " 42" into three tokens
    with pytest.raises(BabelError, match="splits answer"):
        check_answer_tokens(char_tokenizer(), load_facts(kdir))


def _organic(root: Path, n: int = 30) -> Path:
    rng = random.Random(0)
    words = "alpha beta gamma delta parse render token buffer stream value".split()
    for i in range(n):
        a, b = rng.sample(words, 2)
        (root / "pkg").mkdir(parents=True, exist_ok=True)
        (root / f"pkg/m{i}.py").write_text(
            f"def {a}_{i}({b}):\n    return {b} * {rng.randrange(1000)}\n\n"
            f"class {b.title()}{i}:\n    {a} = '{rng.choice(words)}'\n")
        (root / f"pkg/m{i}.php").write_text(
            f"<?php\nfunction {a}_{i}(${b}) {{\n    return ${b} . '{rng.choice(words)}{i}';\n}}\n")
    return root


def test_build_keeps_every_injected_document_in_train_and_lists_it(tmp_path):
    # one fact per document: many injected documents are exact duplicates by design
    kd = write_knowledge({**CFG, "languages": ["php"], "facts_per_document": 1}, tmp_path / "k")
    docs = _docs(kd)
    assert len({d["text"] for d in docs}) < len(docs)
    out = build_corpus([str(_organic(tmp_path / "src")), str(knowledge_source(kd))],
                       tmp_path / "corpus", BuildConfig(workers=1), progress=False)
    corpus = CorpusDir(out)
    corpus.verify()
    listed = [json.loads(x) for x in (out / "knowledge.jsonl").read_text().splitlines()]
    assert len(listed) == len(docs)
    assert {(x["path"], x["class"], tuple(x["facts"])) for x in listed} == \
        {(d["path"], d["class"], tuple(d["facts"])) for d in docs}
    assert all(x["split"] == "train" for x in listed)
    for lang in ("python", "php"):
        train_texts = Counter(r["text"] for r in corpus.read(lang, "train"))
        for d in docs:
            if d["language"] == lang:
                assert train_texts[d["text"]] >= 1
        injected = Counter(d["text"] for d in docs if d["language"] == lang)
        for split in ("validation", "test"):
            assert not set(injected) & {r["text"] for r in corpus.read(lang, split)}
        # duplicates kept: train holds each injected text as often as it was injected
        assert all(train_texts[t] == c for t, c in injected.items())
    k = corpus.manifest["knowledge"]
    assert k["documents"] == len(docs) and "knowledge.jsonl" in corpus.manifest["files_sha256"]
    assert sum(k["documents_by_language_class"].values()) == len(docs)


@pytest.mark.slow
def test_prepare_injects_checks_tokens_and_rebuilds_on_change(tmp_path):
    src = _organic(tmp_path / "src")
    kcfg = {**CFG, "languages": ["php"], "exposures": 20}
    data = prepare_data([src], tmp_path / "out", languages=["python", "php"], vocab_size=400,
                        progress=False, knowledge=kcfg)
    man = json.loads((tmp_path / "out/corpus/manifest.json").read_text())
    assert man["knowledge"]["documents"] == len(_docs(tmp_path / "out/knowledge"))
    assert (data / "manifest.json").is_file()
    sha = man["knowledge"]["sources"][0]["documents_sha256"]
    prepare_data([src], tmp_path / "out", languages=["python", "php"], vocab_size=400,
                 progress=False, knowledge={**kcfg, "seed": 9})
    man2 = json.loads((tmp_path / "out/corpus/manifest.json").read_text())
    assert man2["knowledge"]["sources"][0]["documents_sha256"] != sha
    assert load_facts(tmp_path / "out/knowledge")["config"]["seed"] == 9
