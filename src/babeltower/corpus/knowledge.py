"""Controlled knowledge: synthetic facts injected into the corpus, and held-out queries.

A *fact* binds a fresh identifier (``TAVOKI_REMU``, a pronounceable name that occurs
nowhere else) to one answer from a fixed answer set (two-digit numbers; the answer is
always preceded by a space, ``" 42"``, a token a byte-level BPE merges). Each fact is
rendered in four surface forms per language (Allen-Zhu & Li's *knowledge augmentation*:
the same fact in several forms is what makes it extractable from a new one). No
language's query text occurs in another language's templates (tested), so a query in
one language cannot be answered by copying another language's form:

* ``definition``  ``NAME: int = 42`` / ``define('NAME', 42);`` / ``export const NAME = 42;``
* ``function``    a function named NAME returning the value
* ``assertion``   ``assert NAME == 42`` / ``assert(NAME === 42);`` / ``assert_eq!(NAME, 42);``
* ``config``      a config/map entry ``"NAME": 42`` / ``'NAME' => 42`` / ``NAME: 42``

Classes, per new language t (the primary-only pool serves every new language):

* ``primary-only``: in the primary language's corpus only;
* ``shared``: in the primary's and t's corpora;
* ``new-only``: in t's corpus only.

Every fact has one *query form* (balanced over the four forms within a class) that is
never used in its training documents: the query text ``assert NAME ==`` of a fact
never appears in training, so a correct answer is extracted knowledge, not a copied
string. Each fact is queried in the primary language and in its new language(s); a
query in t uses t's own construct, so a model that does not know t's syntax has no
surface overlap with the primary's forms to copy from. Facts are split into query
splits ``validation``/``test`` (disjoint by fact, balanced within a class).

``write_knowledge(config, out_dir)`` writes::

    out_dir/facts.json            facts, answer set, queries (never part of the corpus)
    out_dir/source/knowledge.json the corpus source: config + one entry per document
    out_dir/source/documents.jsonl  document texts (path, language, class, facts, text)

``out_dir/source`` is passed to ``build_corpus`` like any source; the build recognises
it (``is_knowledge_source``), keeps every document (no dedup: repetition is the point),
puts them all in TRAIN, and lists each in the corpus manifest with class and fact ids.
"""

from __future__ import annotations

import json
import os
import random
from pathlib import Path
from typing import Iterator

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, \
    model_validator

from babeltower.corpus.sources import InputItem
from babeltower.errors import BabelError, validation_error
from babeltower.io import atomic_dir, atomic_write_json, provenance, sha256_file, sha256_json
from babeltower.languages import canonical

FACTS_FORMAT = "babeltower-knowledge-facts/1"
SOURCE_FORMAT = "babeltower-knowledge-source/1"
SOURCE_META = "knowledge.json"
DOCUMENTS_FILE = "documents.jsonl"
KNOWLEDGE_PACKAGE = "babeltower-knowledge"  # package of every injected document in a build
CORPUS_KNOWLEDGE_FILE = "knowledge.jsonl"   # in a built corpus: one line per injected doc
CLASSES = ("primary-only", "shared", "new-only")
FORMS = ("definition", "function", "assertion", "config")
ANSWER_POOL = tuple(str(v) for v in range(10, 100))  # two-digit numbers: " 42" is one BPE token

# language -> (file header, extension, {form: template}). Every template has exactly one
# " {v}" (the answer, after a space) and names the fact by {n}; the query is the text
# before " {v}".
TEMPLATES: dict[str, tuple[str, str, dict[str, str]]] = {
    "python": ("", ".py", {
        "definition": "{n}: int = {v}\n",
        "function": "def {n}():\n    return {v}\n",
        "assertion": "assert {n} == {v}\n",
        "config": "SETTINGS = {{\n    \"{n}\": {v},\n}}\n"}),
    "php": ("<?php\n\n", ".php", {
        "definition": "define('{n}', {v});\n",
        "function": "function {n}() {{\n    return {v};\n}}\n",
        "assertion": "assert({n} === {v});\n",
        "config": "return [\n    '{n}' => {v},\n];\n"}),
    "go": ("package settings\n\n", ".go", {
        "definition": "const (\n\t{n} = {v}\n)\n",
        "function": "func {n}() int {{\n\treturn {v}\n}}\n",
        "assertion": "if {n} != {v} {{\n\tt.Fatal(\"{n}\")\n}}\n",
        "config": "var settings = map[string]int{{\n\t\"{n}\": {v},\n}}\n"}),
    "cpp": ("#include <cassert>\n\n", ".cpp", {
        "definition": "constexpr int {n} = {v};\n",
        "function": "inline int {n}() {{\n    return {v};\n}}\n",
        "assertion": "static_assert({n} == {v});\n",
        "config": "settings[\"{n}\"] = {v};\n"}),
    "java": ("import java.util.*;\n\n", ".java", {
        "definition": "static final int {n} = {v};\n",
        "function": "static int {n}() {{\n    return {v};\n}}\n",
        "assertion": "if ({n} != {v}) throw new AssertionError(\"{n}\");\n",
        "config": "settings.put(\"{n}\", {v});\n"}),
    "javascript": ("'use strict';\n\n", ".js", {
        "definition": "export const {n} = {v};\n",
        "function": "function {n}() {{\n  return {v};\n}}\n",
        "assertion": "assert.strictEqual({n}, {v});\n",
        "config": "module.exports = {{\n  {n}: {v},\n}};\n"}),
    "rust": ("use std::collections::HashMap;\n\n", ".rs", {
        "definition": "const {n}: u32 = {v};\n",
        "function": "fn {n}() -> u32 {{ {v} }}\n",
        "assertion": "assert_eq!({n}, {v});\n",
        "config": "settings.insert(\"{n}\", {v});\n"}),
}
_CONSONANTS = "bdfgklmnprstvz"
_VOWELS = "aeiou"


class KnowledgeConfig(BaseModel):
    """What to inject. Defaults: the size the nano model learns (see docs/knowledge.md)."""

    model_config = ConfigDict(extra="forbid")

    primary: str = "python"
    languages: list[str] = Field(default_factory=lambda: ["php"],
                                 description="new languages (one shared/new-only set each)")
    facts_per_class: int = Field(60, ge=1, description="facts per class and new language "
                                                       "(the primary-only pool is one set)")
    exposures: int = Field(500, description="training occurrences of a fact in each corpus "
                                            "it belongs to")
    facts_per_document: int = Field(4, ge=1, description="facts per injected document")
    n_answers: int = Field(20, description="size of the answer set (chance = 1/n_answers)")
    seed: int = 0

    @field_validator("primary", mode="before")
    @classmethod
    def _primary(cls, v):
        return _templated(canonical(str(v)))

    @field_validator("languages", mode="before")
    @classmethod
    def _new(cls, v):
        v = v.split(",") if isinstance(v, str) else list(v)
        out = []
        for x in v:
            if not str(x).strip():
                continue
            c = _templated(canonical(str(x).strip()))
            if c not in out:
                out.append(c)
        if not out:
            raise BabelError("knowledge: languages (the new languages) is empty")
        return out

    @model_validator(mode="after")
    def _check(self):
        if self.exposures < 1:
            raise BabelError(f"knowledge: exposures must be >= 1 (got {self.exposures}): "
                             "a fact never seen cannot be known")
        if not 2 <= self.n_answers <= len(ANSWER_POOL):
            raise BabelError(f"knowledge: n_answers must be 2..{len(ANSWER_POOL)} (got "
                             f"{self.n_answers}; the answers are two-digit numbers)")
        if self.n_answers > self.facts_per_class:
            raise BabelError(
                f"knowledge: n_answers ({self.n_answers}) > facts_per_class "
                f"({self.facts_per_class}): some answers would never be right in a class, "
                "so chance would not be 1/n_answers")
        if self.primary in self.languages:
            raise BabelError(f"knowledge: the primary {self.primary} is also a new language")
        return self


def _templated(lang: str) -> str:
    if lang not in TEMPLATES:
        raise BabelError(f"knowledge: no fact templates for {lang} "
                         f"(templated: {', '.join(sorted(TEMPLATES))})")
    return lang


def load_knowledge_config(obj) -> KnowledgeConfig:
    """A KnowledgeConfig from a dict (YAML section) with one-line errors."""
    if isinstance(obj, KnowledgeConfig):
        return obj
    try:
        return KnowledgeConfig.model_validate(obj or {})
    except ValidationError as e:
        raise validation_error(e, "knowledge config") from None


def fresh_names(n: int, rng: random.Random) -> list[str]:
    """``n`` distinct pronounceable CONSTANT_NAMEs (3 + 2 consonant-vowel syllables)."""
    def word(k: int) -> str:
        return "".join(rng.choice(_CONSONANTS) + rng.choice(_VOWELS) for _ in range(k)).upper()

    names: list[str] = []
    seen: set[str] = set()
    while len(names) < n:  # 14^5 * 5^5 > 10^9 combinations: collisions are rare
        name = f"{word(3)}_{word(2)}"
        if name not in seen:
            seen.add(name)
            names.append(name)
    return names


def _class_groups(cfg: KnowledgeConfig) -> list[tuple[str, str | None]]:
    return [("primary-only", None)] + [(c, t) for t in cfg.languages for c in ("shared", "new-only")]


def make_facts(cfg: KnowledgeConfig) -> list[dict]:
    """The facts: id, name, answer, class, target (new language; None = every), query form
    and query split. Answers and query forms are balanced within each class."""
    rng = random.Random(f"knowledge-facts-{cfg.seed}")
    answers = sorted(rng.sample(ANSWER_POOL, cfg.n_answers), key=int)
    groups = _class_groups(cfg)
    names = fresh_names(len(groups) * cfg.facts_per_class, rng)
    facts = []
    for g, (cls, target) in enumerate(groups):
        n = cfg.facts_per_class
        answer_of = [answers[i % len(answers)] for i in range(n)]
        rng.shuffle(answer_of)
        split_of = ["validation" if i % 2 == 0 else "test" for i in range(n)]
        rng.shuffle(split_of)
        for i in range(n):
            facts.append({"id": f"f{len(facts):05d}", "name": names[g * n + i],
                          "answer": answer_of[i], "class": cls, "target": target,
                          "query_form": FORMS[i % len(FORMS)], "split": split_of[i]})
    return facts


def fact_corpora(fact: dict, cfg: KnowledgeConfig) -> list[str]:
    """Languages whose training corpus holds the fact (its class's definition)."""
    return {"primary-only": [cfg.primary], "shared": [cfg.primary, fact["target"]],
            "new-only": [fact["target"]]}[fact["class"]]


def query_languages(fact: dict, cfg: KnowledgeConfig) -> list[str]:
    """The primary, and the new language(s) the fact's class is defined for."""
    return [cfg.primary] + (list(cfg.languages) if fact["target"] is None else [fact["target"]])


def render(lang: str, form: str, name: str, answer: str) -> str:
    return TEMPLATES[lang][2][form].format(n=name, v=answer)


def query_prefix(lang: str, form: str, name: str) -> str:
    """The text a query gives the model: header + the form up to (not including) " answer"."""
    header, _, forms = TEMPLATES[lang]
    return header + forms[form].split(" {v}")[0].format(n=name)


def make_queries(facts: list[dict], cfg: KnowledgeConfig) -> list[dict]:
    out = []
    for f in facts:
        for lang in query_languages(f, cfg):
            out.append({"id": f"q{len(out):06d}", "fact": f["id"], "class": f["class"],
                        "target": f["target"], "language": lang,
                        "side": "primary" if lang == cfg.primary else "new", "form": f["query_form"],
                        "split": f["split"], "prefix": query_prefix(lang, f["query_form"], f["name"]),
                        "answer": " " + f["answer"]})
    return out


def make_documents(facts: list[dict], cfg: KnowledgeConfig) -> list[dict]:
    """Training documents: per corpus language and class, ``exposures`` rounds; in each
    round the class's facts are shuffled into documents of ``facts_per_document``
    distinct facts, each fact in a random form other than its query form."""
    rng = random.Random(f"knowledge-docs-{cfg.seed}")
    docs = []
    for lang in [cfg.primary] + list(cfg.languages):
        header, ext, _ = TEMPLATES[lang]
        for cls, target in _class_groups(cfg):
            group = [f for f in facts if f["class"] == cls and f["target"] == target
                     and lang in fact_corpora(f, cfg)]
            tag = cls if target is None else f"{cls}-{target}"
            n_docs = 0
            for _ in range(cfg.exposures if group else 0):
                order = rng.sample(group, len(group))
                for i in range(0, len(order), cfg.facts_per_document):
                    chunk = order[i:i + cfg.facts_per_document]
                    parts = [render(lang, rng.choice([x for x in FORMS if x != f["query_form"]]),
                                    f["name"], f["answer"]) for f in chunk]
                    docs.append({"path": f"knowledge/{lang}/{tag}/{n_docs:06d}{ext}",
                                 "language": lang, "class": cls, "target": target,
                                 "facts": [f["id"] for f in chunk],
                                 "text": header + "\n".join(parts)})
                    n_docs += 1
    return docs


def write_knowledge(config: KnowledgeConfig | dict | None, out_dir: str | os.PathLike,
                    overwrite: bool = False) -> Path:
    """Write facts.json (facts + queries) and source/ (the injected documents); see the
    module docstring. Returns ``out_dir``."""
    cfg = load_knowledge_config(config)
    facts = make_facts(cfg)
    queries = make_queries(facts, cfg)
    docs = make_documents(facts, cfg)
    cfg_json = cfg.model_dump(mode="json")
    prov = provenance(config=cfg_json, seed=cfg.seed)
    with atomic_dir(out_dir, overwrite=overwrite) as tmp:
        (tmp / "source").mkdir()
        with open(tmp / "source" / DOCUMENTS_FILE, "w", encoding="utf-8") as fh:
            for d in docs:
                fh.write(json.dumps(d, ensure_ascii=False) + "\n")
        atomic_write_json(tmp / "source" / SOURCE_META, {
            "format": SOURCE_FORMAT, "config": cfg_json, "config_sha256": sha256_json(cfg_json),
            "documents_file": DOCUMENTS_FILE,
            "documents_sha256": sha256_file(tmp / "source" / DOCUMENTS_FILE),
            "documents": [{k: d[k] for k in ("path", "language", "class", "target", "facts")}
                          for d in docs],
            "provenance": prov})
        atomic_write_json(tmp / "facts.json", {
            "format": FACTS_FORMAT, "config": cfg_json, "config_sha256": sha256_json(cfg_json),
            "answers": sorted({" " + f["answer"] for f in facts}, key=lambda a: int(a)),
            "facts": facts, "queries": queries, "provenance": prov})
    return Path(out_dir)


def knowledge_source(out_dir: str | os.PathLike) -> Path:
    """The corpus source inside a ``write_knowledge`` output."""
    return Path(out_dir) / "source"


def is_knowledge_source(source: str | os.PathLike) -> bool:
    return (Path(str(source)) / SOURCE_META).is_file()


def read_source_meta(source: str | os.PathLike) -> dict:
    p = Path(str(source)) / SOURCE_META
    try:
        meta = json.loads(p.read_text())
    except (OSError, json.JSONDecodeError) as e:
        raise BabelError(f"cannot read knowledge source {p}: {e}") from e
    if meta.get("format") != SOURCE_FORMAT:
        raise BabelError(f"{p} is not a knowledge source (format {meta.get('format')!r})")
    docs = Path(str(source)) / meta["documents_file"]
    if not docs.is_file() or sha256_file(docs) != meta.get("documents_sha256"):
        raise BabelError(f"knowledge source {source}: {docs.name} is missing or does not "
                         "match its sha256")
    return meta


def iter_knowledge_inputs(source: str | os.PathLike) -> Iterator[InputItem]:
    """The injected documents of a knowledge source as build inputs (language given)."""
    meta = read_source_meta(source)
    with open(Path(str(source)) / meta["documents_file"], encoding="utf-8") as fh:
        for line in fh:
            d = json.loads(line)
            yield InputItem(source=str(source), path=d["path"], package=KNOWLEDGE_PACKAGE,
                            group=f"knowledge:{d['path']}", language=d["language"],
                            text=d["text"])


def knowledge_fingerprint(sources) -> list[dict]:
    """What a build records of its knowledge sources (a changed source = a stale corpus)."""
    out = []
    for s in sources:
        if is_knowledge_source(s):
            meta = read_source_meta(s)
            out.append({"source": str(s), "config_sha256": meta["config_sha256"],
                        "documents_sha256": meta["documents_sha256"]})
    return out


def knowledge_manifest(sources, injected: list[dict], corpus_tmp: Path) -> dict | None:
    """The corpus manifest's ``knowledge`` entry; writes ``corpus_tmp/knowledge.jsonl`` with
    every injected document (language, split, class, target, fact ids, sha256)."""
    if not injected:
        return None
    meta_of = {}
    for s in sources:
        if is_knowledge_source(s):
            for d in read_source_meta(s)["documents"]:
                meta_of[(str(s), d["path"])] = d
    counts: dict[str, int] = {}
    with open(Path(corpus_tmp) / CORPUS_KNOWLEDGE_FILE, "w", encoding="utf-8") as fh:
        for r in injected:
            d = meta_of.get((str(r["source"]), r["path"]))
            if d is None:
                raise BabelError(f"injected document {r['path']} is not listed by its source")
            key = f"{d['language']}/{d['class']}" + (f"-{d['target']}" if d["target"] else "")
            counts[key] = counts.get(key, 0) + 1
            fh.write(json.dumps({**d, "split": r["split"], "sha256": r["sha256"],
                                 "source": str(r["source"])}) + "\n")
    return {"documents_file": CORPUS_KNOWLEDGE_FILE, "documents": len(injected),
            "documents_by_language_class": dict(sorted(counts.items())),
            "sources": knowledge_fingerprint(sources)}


def load_facts(path: str | os.PathLike) -> dict:
    """facts.json of ``write_knowledge`` (a file, or the directory holding it)."""
    p = Path(path)
    if p.is_dir():
        p = p / "facts.json"
    try:
        obj = json.loads(p.read_text())
    except OSError as e:
        raise BabelError(f"cannot read facts file {p}: {e.strerror or e}") from e
    except json.JSONDecodeError as e:
        raise BabelError(f"corrupt facts file {p}: {e.msg}") from e
    if not isinstance(obj, dict) or obj.get("format") != FACTS_FORMAT:
        raise BabelError(f"{p} is not a knowledge facts file (babeltower corpus knowledge)")
    return obj


def answer_token_ids(tokenizer, answers: list[str]) -> list[int]:
    """The one token id of each answer (``" 42"``); BabelError if the tokenizer splits one."""
    ids = []
    for a in answers:
        enc = tokenizer.encode(a, add_special_tokens=False)
        if len(enc) != 1:
            raise BabelError(f"knowledge: the tokenizer splits answer {a!r} into {len(enc)} "
                             "tokens; answers must be single tokens (more exposures, a larger "
                             "vocabulary, or fewer answers)")
        ids.append(enc[0])
    return ids


def encode_queries(tokenizer, facts: dict) -> tuple[list[int], list[list[int]], list[int]]:
    """(answer ids, prompt ids per query, answer id per query).

    Each query is tokenized WITH its answer and the last token split off, so the prompt
    is tokenized exactly as the same text would be in a document; BabelError if the answer
    is not exactly the last token there (split, or merged with the text before it).
    """
    answer_ids = answer_token_ids(tokenizer, facts["answers"])
    id_of = dict(zip(facts["answers"], answer_ids))
    prompts, targets = [], []
    for q in facts["queries"]:
        full = tokenizer.encode(q["prefix"] + q["answer"], add_special_tokens=False)
        if len(full) < 2 or full[-1] != id_of[q["answer"]]:
            raise BabelError(f"knowledge: in query {q['id']} ({q['language']} {q['form']}) the "
                             f"answer {q['answer']!r} is not one token after the prefix")
        prompts.append(full[:-1])
        targets.append(full[-1])
    return answer_ids, prompts, targets


def check_answer_tokens(tokenizer_or_dir, facts: dict | str | os.PathLike) -> list[int]:
    """Before any training: every answer is one token, in every query's context.
    Returns the answer ids; BabelError (one line) otherwise."""
    tok = tokenizer_or_dir
    if isinstance(tok, (str, os.PathLike)):
        from transformers import PreTrainedTokenizerFast  # lazy: keeps corpus imports light

        tok = PreTrainedTokenizerFast.from_pretrained(str(tok))
    facts = facts if isinstance(facts, dict) else load_facts(facts)
    return encode_queries(tok, facts)[0]
