"""Controlled knowledge in the corpus: facts are a seeded function of the config, classes sit
in the corpora their definition says, exposures are exact, query texts are held out of
training, injected documents reach TRAIN only and are listed in the corpus manifest, and
bad input fails in one line before anything is written or trained."""

from __future__ import annotations

import json
import re
from collections import Counter
from pathlib import Path

import pytest

from babeltower.cli import main
from babeltower.corpus.build import build_corpus
from babeltower.corpus.config import BuildConfig
from babeltower.corpus.corpusdir import CorpusDir
from babeltower.corpus.knowledge import (COMMENT, FORMS, MIRROR_THRESHOLD, TEMPLATES,
                                         KnowledgeConfig, check_answer_tokens, declaration,
                                         default_query_forms, knowledge_source, load_facts,
                                         mirror_score, query_prefix, render, write_knowledge)
from babeltower.corpus.prepare import prepare_data
from babeltower.errors import BabelError
from tokenizer_fixtures import char_tokenizer, organic_python_php

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
    # 8 primary-only + 8 never-taught + (8 shared + 8 new-only) per new language
    assert Counter((f["class"], f["target"]) for f in facts) == {
        ("primary-only", None): 8, ("shared", "php"): 8, ("new-only", "php"): 8,
        ("shared", "go"): 8, ("new-only", "go"): 8, ("never-taught", None): 8}
    assert Counter(f["key"] for f in facts) == {"same": 24, "mapped": 24}
    docs = _docs(kdir)
    every_name = Counter()
    for f in facts:
        langs = ["python", "php", "go"] if f["target"] is None else ["python", f["target"]]
        assert set(f["names"]) == set(langs) and f["name"] == f["names"]["python"]
        if f["key"] == "same":
            assert len(set(f["names"].values())) == 1 and f["decoy_name"] is None
        else:   # one key per language, and a decoy name, all distinct
            assert len(set(f["names"].values()) | {f["decoy_name"]}) == len(langs) + 1
        for n in set(f["names"].values()) | {f["decoy_name"]} - {None}:
            every_name[n] += 1
        taught = {"primary-only": ["python"], "shared": ["python", f["target"]],
                  "new-only": [f["target"]], "never-taught": []}[f["class"]]
        # documents holding each of the fact's keys, per corpus language (counted from text)
        for lang, name in f["names"].items():
            seen = Counter(d["language"] for d in docs if re.search(rf"\b{name}\b", d["text"]))
            if f["key"] == "same":
                want = {x: 5 for x in taught}
            elif f["class"] == "shared":
                # bridge_keys fresh: the primary's key in the primary's renderings and in
                # the new language's declarations; the new language's own key nowhere
                want = {x: 5 for x in taught} if lang == "python" else {}
            else:
                want = {lang: 5} if lang in taught else {}
            assert dict(seen) == want, (f, lang)
        if f["decoy_name"]:
            assert not any(f["decoy_name"] in d["text"] for d in docs)
        # the answer follows the key in every exposure: "NAME" ... " 42" in one snippet
        for d in docs:
            name = f["names"].get(d["language"])
            if f["key"] == "mapped" and f["class"] == "shared":
                name = f["name"]
            if name and name in d["text"]:
                assert re.search(rf"{name}\W[^\n]*\n?[^\n]*? {f['answer']}\b", d["text"])
    assert set(every_name.values()) == {1}      # no key is reused between facts


def test_shared_mapped_facts_teach_the_declared_map(kdir):
    obj = load_facts(kdir)
    docs = _docs(kdir)
    n = 0
    keys = {n for f in obj["facts"] for n in list(f["names"].values()) + [f["decoy_name"]]}
    fresh: set[str] = set()
    for f in obj["facts"]:
        if f["key"] != "mapped" or f["class"] != "shared":
            continue
        for d in docs:
            if f["id"] not in d["facts"]:
                continue
            if d["language"] == "python":   # the primary renders it under its own key
                assert f["name"] in d["text"] and "# php:" not in d["text"]
                continue
            # the primary's key declared, then a fresh key (no fact's), then the answer
            decl = declaration(d["language"], "python", f["name"])
            part = d["text"].split(decl, 1)[1].split("\n\n")[0]
            key = re.search(r"\b[A-Z]+_[A-Z]+\b", part).group(0)
            assert key not in keys and key not in fresh and f" {f['answer']}" in part, part
            fresh.add(key)
            n += 1
    assert n == 4 * 2 * 5         # 4 shared mapped facts x 2 new languages x 5 exposures


def test_query_forms_do_not_mirror_another_languages_text(tmp_path):
    # the audit: longest common run of characters between a query (name masked) and any
    # form of another benchmark language, checked here with difflib (an independent
    # implementation of the longest common substring)
    from difflib import SequenceMatcher

    def lcs(a, b):
        m = SequenceMatcher(None, a, b, autojunk=False)
        return m.find_longest_match(0, len(a), 0, len(b)).size

    def masked(tpl, n, v):
        return tpl.replace("{{", "{").replace("}}", "}").replace("{n}", n).replace("{v}", v)

    langs = ["python", "php"]
    score = {(t, form): max(lcs(masked(TEMPLATES[t][2][form].split(" {v}")[0], "\x00", ""),
                                masked(TEMPLATES[p][2][g], "\x01", "\x02"))
                            for p in langs if p != t for g in FORMS)
             for t in langs for form in FORMS}
    for (t, form), c in score.items():
        assert mirror_score(t, form, langs)["chars"] == c
    # the audit's finding: Python's and PHP's function forms share "\n    return"
    assert score[("python", "function")] == score[("php", "function")] == len("\n    return")
    forms = KnowledgeConfig(languages=["php"]).forms_to_query()
    assert forms == ["definition", "assertion", "config"] == default_query_forms(langs)
    assert all(score[(t, form)] < MIRROR_THRESHOLD for t in langs for form in forms)
    obj = load_facts(write_knowledge({**CFG, "languages": ["php"]}, tmp_path / "k"))
    assert {q["form"] for q in obj["queries"]} == set(forms)
    assert obj["mirror"]["threshold"] == MIRROR_THRESHOLD
    assert {(r["language"], r["form"]): r["chars"] for r in obj["mirror"]["table"]} == score


def test_answers_balanced_and_query_splits_disjoint(kdir):
    obj = load_facts(kdir)
    assert len(obj["answers"]) == 4 and all(re.fullmatch(r" \d\d", a) for a in obj["answers"])
    forms = obj["query_forms"]
    for key, group in _by(obj["facts"], lambda f: (f["class"], f["target"])).items():
        assert Counter(f["answer"] for f in group) == {a.strip(): 2 for a in obj["answers"]}
        # 8 facts over the 3 default query forms: 3, 3, 2
        assert sorted(Counter(f["query_form"] for f in group).values()) == [2, 3, 3]
        assert {f["query_form"] for f in group} == set(forms)
        assert Counter((f["key"], f["split"]) for f in group) == {
            (k, s): 2 for k in ("same", "mapped") for s in ("validation", "test")}
    val = {q["fact"] for q in obj["queries"] if q["split"] == "validation"}
    test = {q["fact"] for q in obj["queries"] if q["split"] == "test"}
    assert val.isdisjoint(test) and len(val | test) == len(obj["facts"])


def test_answers_balance_within_cells_when_they_divide(tmp_path):
    # 40 facts per class, 2 keys x 2 splits = cells of 10, 5 answers: 2 of each per cell
    obj = load_facts(write_knowledge({**CFG, "languages": ["php"], "facts_per_class": 40,
                                      "n_answers": 5, "exposures": 1}, tmp_path / "k"))
    for cell, group in _by(obj["facts"], lambda f: (f["class"], f["key"], f["split"])).items():
        assert len(group) == 10 and set(Counter(f["answer"] for f in group).values()) == {2}
        assert sorted(Counter(f["query_form"] for f in group).values()) == [3, 3, 4]


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
        assert q["prefix"].startswith(header)
        body = q["prefix"][len(header):]
        # the query's text (and so query + answer) appears in no training document
        assert not any(body in d["text"] for d in docs), q
        assert q["key"] in (f["key"], "decoy") and q["form"] == f["query_form"]
        if q["key"] == "same":
            assert body == query_prefix(q["language"], q["form"], f["name"])[len(header):]
        elif q["key"] == "mapped":  # declared map: the other language's key, then our own
            other = "python" if q["language"] != "python" else (f["target"] or "php")
            assert body == query_prefix(q["language"], q["form"], f["names"][q["language"]],
                                        declaration(q["language"], other, f["names"][other])
                                        )[len(header):]
            assert body.startswith(COMMENT[q["language"]] + f" {other}: ")
        else:                        # decoy: the primary's key string, an untaught declaration
            assert q["language"] != "python" and f["class"] in ("primary-only", "shared")
            assert body == query_prefix(q["language"], q["form"], f["name"],
                                        declaration(q["language"], "python", f["decoy_name"])
                                        )[len(header):]
        # primary-only and never-taught facts are asked in every new language
        want = {"python", "php", "go"} if f["target"] is None else {"python", f["target"]}
        assert q["language"] in want
    per_fact = Counter(q["fact"] for q in obj["queries"] if q["key"] != "decoy")
    assert all(per_fact[i] == (3 if f["target"] is None else 2) for i, f in facts.items())
    decoys = Counter(facts[q["fact"]]["class"] for q in obj["queries"] if q["key"] == "decoy")
    # 4 mapped primary-only facts x 2 new languages; 4 mapped shared facts per new language
    assert decoys == {"primary-only": 8, "shared": 8}
    # the held-out form is still trained for other facts (the model knows the form)
    for lang, ds in texts_by_lang.items():
        used = [[form for form in FORMS
                 if render(lang, form, facts[i]["names"][lang], facts[i]["answer"]) in d["text"]]
                for d in ds for i in d["facts"]
                if not (facts[i]["key"] == "mapped" and facts[i]["class"] == "shared"
                        and lang != "python")]
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
    ({"facts_per_class": 3, "n_answers": 2}, "facts_per_class (3) < 2 x 2 keys"),
    ({"keys": ["same", "other"]}, "keys must be distinct values of same, mapped"),
    ({"query_forms": ["haiku"]}, "query_forms must be distinct values"),
    ({"mirror_threshold": 2}, "no query form is below mirror_threshold 2"),
    ({"bridge_keys": "random"}, "bridge_keys"),
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
    # 4 primary-only + 4 never-taught + (4 shared + 4 new-only) x 2
    assert obj["config"]["languages"] == ["php", "rust"] and len(obj["facts"]) == 24
    assert main(["corpus", "knowledge", "--out", str(tmp_path / "x"), "--exposures", "0"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "exposures" in err[0] and not (tmp_path / "x").exists()
    assert main(["corpus", "knowledge", "--out", str(tmp_path / "m"), "--keys", "mapped",
                 "--query-forms", "definition,function", "--bridge-keys", "fixed",
                 "--facts-per-class", "4", "--exposures", "1", "--n-answers", "2"]) == 0
    obj = load_facts(tmp_path / "m")
    assert {f["key"] for f in obj["facts"]} == {"mapped"}
    assert {q["form"] for q in obj["queries"]} == {"definition", "function"}
    assert obj["config"]["bridge_keys"] == "fixed"
    capsys.readouterr()
    assert main(["corpus", "knowledge", "--out", str(tmp_path / "y"), "--keys", "mirror"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "keys must be" in err[0] and not (tmp_path / "y").exists()


def test_v1_facts_file_is_refused_in_one_line(tmp_path):
    (tmp_path / "facts.json").write_text(json.dumps({"format": "babeltower-knowledge-facts/1"}))
    with pytest.raises(BabelError, match="regenerate it"):
        load_facts(tmp_path)


def test_answer_split_by_tokenizer_is_refused(kdir):
    # a character-level tokenizer splits " 42" into three tokens
    with pytest.raises(BabelError, match="splits answer"):
        check_answer_tokens(char_tokenizer(), load_facts(kdir))


def _organic(root: Path, n: int = 30) -> Path:
    return organic_python_php(root, n, seed=0)


def test_build_keeps_every_injected_document_in_train_and_lists_it(tmp_path):
    # one fact per document: many injected documents are exact duplicates by design
    kd = write_knowledge({**CFG, "languages": ["php"], "facts_per_document": 1}, tmp_path / "k")
    docs = _docs(kd)
    assert len({d["text"] for d in docs}) < len(docs)
    out = build_corpus([str(_organic(tmp_path / "src")), str(knowledge_source(kd))],
                       tmp_path / "corpus", BuildConfig(), progress=False)
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
    # the layout object finds every step's output from the returned data dir alone
    from babeltower.corpus.prepare import PreparedData
    layout = PreparedData.of_data_dir(data)
    assert layout.facts_path == tmp_path / "out/knowledge/facts.json" and layout.data == data
    assert layout.facts_path.is_file() and (layout.tokenizer / "tokenizer.json").is_file()
    sha = man["knowledge"]["sources"][0]["documents_sha256"]
    prepare_data([src], tmp_path / "out", languages=["python", "php"], vocab_size=400,
                 progress=False, knowledge={**kcfg, "seed": 9})
    man2 = json.loads((tmp_path / "out/corpus/manifest.json").read_text())
    assert man2["knowledge"]["sources"][0]["documents_sha256"] != sha
    assert load_facts(tmp_path / "out/knowledge")["config"]["seed"] == 9
