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
from typing import Iterator, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, \
    model_validator

from babeltower.corpus.sources import InputItem
from babeltower.errors import BabelError, validation_error
from babeltower.io import atomic_dir, atomic_write_json, provenance, sha256_file, sha256_json
from babeltower.languages import canonical

FACTS_FORMAT = "babeltower-knowledge-facts/2"
SOURCE_FORMAT = "babeltower-knowledge-source/1"
SOURCE_META = "knowledge.json"
DOCUMENTS_FILE = "documents.jsonl"
KNOWLEDGE_PACKAGE = "babeltower-knowledge"  # package of every injected document in a build
CORPUS_KNOWLEDGE_FILE = "knowledge.jsonl"   # in a built corpus: one line per injected doc
CLASSES = ("primary-only", "shared", "new-only", "never-taught")
TAUGHT_CLASSES = CLASSES[:3]
FORMS = ("definition", "function", "assertion", "config")
KEYS = ("same", "mapped")   # fact keys; queries add "decoy" (see ``make_queries``)
# a query form is a default one when its text (name and answer masked) shares fewer than
# this many consecutive characters with every training form of every other language of
# the benchmark (``mirror_score``); Python's and PHP's `function` forms share
# "\n    return" (11 characters) and are excluded
MIRROR_THRESHOLD = 8
COMMENT = {"python": "#", "php": "//", "go": "//", "cpp": "//", "java": "//",
           "javascript": "//", "rust": "//"}
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
    keys: list[str] = Field(default_factory=lambda: list(KEYS),
                            description="key variants, facts split evenly: same (one identifier "
                                        "in every language) and/or mapped (one per language, "
                                        "bound by a declared map)")
    never_taught: bool = Field(True, description="a class of facts with no exposure, asked in "
                                                 "every language (the measured chance)")
    decoys: bool = Field(True, description="per mapped fact and non-primary query language, a "
                                           "decoy query: the primary key string in the key "
                                           "position, the declaration naming an untaught name")
    bridge_keys: Literal["fresh", "fixed"] = Field(
        "fresh", description="how a shared mapped fact's training renderings teach the map. "
        "fresh: in the new language, the primary's key declared and a fresh key per "
        "rendering (following the map is the only route from key to answer; the primary "
        "renders it under its own key); fixed: each language declares the other's key and "
        "uses its own fixed key (the key alone suffices, so nothing teaches the map's use)")
    query_forms: list[str] | None = Field(None, description="forms facts are asked in (None: "
                                          "the forms below mirror_threshold)")
    mirror_threshold: int = Field(MIRROR_THRESHOLD, ge=1,
                                  description="default query forms share fewer characters "
                                              "with another language's forms")
    seed: int = 0

    @field_validator("keys", mode="before")
    @classmethod
    def _keys(cls, v):
        return _distinct_choices(v, KEYS, "keys")

    @field_validator("query_forms", mode="before")
    @classmethod
    def _forms(cls, v):
        return None if v is None else _distinct_choices(v, FORMS, "query_forms")

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
        if self.facts_per_class < 2 * len(self.keys):
            raise BabelError(f"knowledge: facts_per_class ({self.facts_per_class}) < 2 x "
                             f"{len(self.keys)} keys: every key x query split needs a fact")
        if not self.forms_to_query():
            raise BabelError(
                f"knowledge: no query form is below mirror_threshold {self.mirror_threshold} "
                f"for {', '.join(self.all_languages)} (see mirror_table); raise it or give "
                "query_forms")
        return self

    @property
    def all_languages(self) -> list[str]:
        return [self.primary] + list(self.languages)

    def forms_to_query(self) -> list[str]:
        """The query forms: ``query_forms``, or the forms below ``mirror_threshold``."""
        if self.query_forms is not None:
            return list(self.query_forms)
        return default_query_forms(self.all_languages, self.mirror_threshold)


def _distinct_choices(v, allowed, what: str) -> list[str]:
    """A non-empty list (or comma-separated string) of distinct values of ``allowed``."""
    items = v.split(",") if isinstance(v, str) else list(v)
    out = [str(x).strip() for x in items if str(x).strip()]
    if not out or len(set(out)) != len(out) or any(x not in allowed for x in out):
        raise BabelError(f"knowledge: {what} must be distinct values of {', '.join(allowed)} "
                         f"(got {v})")
    return out


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


def _masked(template: str, name: str, answer: str) -> str:
    return template.replace("{{", "{").replace("}}", "}").replace("{n}", name).replace("{v}", answer)


def longest_common_substring(a: str, b: str) -> int:
    """Length of the longest string that occurs in both ``a`` and ``b``."""
    best, prev = 0, [0] * (len(b) + 1)
    for i in range(1, len(a) + 1):
        cur = [0] * (len(b) + 1)
        for j in range(1, len(b) + 1):
            if a[i - 1] == b[j - 1]:
                cur[j] = prev[j - 1] + 1
                best = max(best, cur[j])
        prev = cur
    return best


def mirror_score(lang: str, form: str, others) -> dict:
    """How much of a query's text another language's training text mirrors: the longest
    run of characters the query (without header; name and answer masked, so the shared
    identifier does not count) has in common with any form of any language in ``others``
    (rendered with a different mask). Returns {"chars", "language", "form"} of the worst."""
    body = TEMPLATES[lang][2][form].split(" {v}")[0]
    q = _masked(body, "\x00", "")
    worst = {"chars": 0, "language": None, "form": None}
    for p in others:
        if p == lang:
            continue
        for g, tpl in TEMPLATES[p][2].items():
            c = longest_common_substring(q, _masked(tpl, "\x01", "\x02"))
            if c > worst["chars"]:
                worst = {"chars": c, "language": p, "form": g}
    return worst


def mirror_table(languages) -> list[dict]:
    """``mirror_score`` of every form of every language among ``languages``."""
    languages = list(languages)
    return [{"language": lang, "form": form, **{f"worst_{k}" if k != "chars" else k: v
             for k, v in mirror_score(lang, form, languages).items()}}
            for lang in languages for form in FORMS]


def default_query_forms(languages, threshold: int = MIRROR_THRESHOLD) -> list[str]:
    """Forms whose query text stays below ``threshold`` mirrored characters in every one
    of ``languages`` (a fact is asked in one form in each of its query languages)."""
    languages = list(languages)
    return [form for form in FORMS
            if all(mirror_score(lang, form, languages)["chars"] < threshold for lang in languages)]


def declaration(lang: str, other: str, name: str) -> str:
    """The declared name map, one comment line in ``lang``: ``// python: TAVOKI_REMU``."""
    return f"{COMMENT[lang]} {other}: {name}\n"


def bridge_name(rng: random.Random, banned: set[str]) -> str:
    """A fresh key for one rendering of a shared mapped fact (``bridge_keys: fresh``), in
    the same style as the facts' keys (a different style would tell the model which key
    slots to ignore) and never equal to one of them."""
    while True:
        name = fresh_names(1, rng)[0]
        if name not in banned:
            return name


def _class_groups(cfg: KnowledgeConfig, taught_only: bool = False) -> list[tuple[str, str | None]]:
    groups = [("primary-only", None)] + [(c, t) for t in cfg.languages
                                          for c in ("shared", "new-only")]
    if cfg.never_taught and not taught_only:
        groups.append(("never-taught", None))
    return groups


def _fact_languages(cls: str, target: str | None, cfg: KnowledgeConfig) -> list[str]:
    return [cfg.primary] + (list(cfg.languages) if target is None else [target])


def _other(fact: dict, lang: str, cfg: KnowledgeConfig) -> str:
    """The language whose key a declaration in ``lang`` names: the primary's from a new
    language; from the primary, the fact's new language (the first one for a pool)."""
    if lang != cfg.primary:
        return cfg.primary
    return fact["target"] or cfg.languages[0]


def make_facts(cfg: KnowledgeConfig) -> list[dict]:
    """The facts: id, key variant, name (the primary's key) and names (key per language),
    decoy name (mapped only), answer, class, target (new language; None = every), query
    form and query split.

    Within each class, facts are split evenly over key x split cells; answers and query
    forms are assigned along the class in cell order (so each is balanced over the class
    when it divides the class size, and within a cell to +-1) and shuffled within a cell.
    """
    rng = random.Random(f"knowledge-facts-{cfg.seed}")
    answers = sorted(rng.sample(ANSWER_POOL, cfg.n_answers), key=int)
    forms = cfg.forms_to_query()
    groups = _class_groups(cfg)
    n = cfg.facts_per_class
    need = 0
    for cls, target in groups:
        per_mapped = len(_fact_languages(cls, target, cfg)) + 1
        n_mapped = sum(cfg.keys[i % len(cfg.keys)] == "mapped" for i in range(n))
        need += (n - n_mapped) + n_mapped * per_mapped
    pool = iter(fresh_names(need, rng))
    facts = []
    for cls, target in groups:
        langs = _fact_languages(cls, target, cfg)
        cells = sorted(((cfg.keys[i % len(cfg.keys)], ("validation", "test")[(i // len(cfg.keys)) % 2])
                        for i in range(n)), key=lambda c: (cfg.keys.index(c[0]), c[1] != "validation"))
        perm = rng.sample(answers, len(answers))
        form_perm = rng.sample(forms, len(forms))
        answer_of = [perm[j % len(perm)] for j in range(n)]
        form_of = [form_perm[j % len(form_perm)] for j in range(n)]
        for cell in dict.fromkeys(cells):
            idx = [j for j, c in enumerate(cells) if c == cell]
            a, f = [answer_of[j] for j in idx], [form_of[j] for j in idx]
            rng.shuffle(a)
            rng.shuffle(f)
            for j, x, y in zip(idx, a, f):
                answer_of[j], form_of[j] = x, y
        for j, (key, split) in enumerate(cells):
            if key == "same":
                name = next(pool)
                names, decoy = {lang: name for lang in langs}, None
            else:
                names = {lang: next(pool) for lang in langs}
                decoy = next(pool)
            facts.append({"id": f"f{len(facts):05d}", "key": key, "name": names[cfg.primary],
                          "names": names, "decoy_name": decoy, "answer": answer_of[j],
                          "class": cls, "target": target, "query_form": form_of[j],
                          "split": split})
    return facts


def fact_corpora(fact: dict, cfg: KnowledgeConfig) -> list[str]:
    """Languages whose training corpus holds the fact (its class's definition)."""
    return {"primary-only": [cfg.primary], "shared": [cfg.primary, fact["target"]],
            "new-only": [fact["target"]], "never-taught": []}[fact["class"]]


def query_languages(fact: dict, cfg: KnowledgeConfig) -> list[str]:
    """The primary, and the new language(s) the fact's class is defined for."""
    return _fact_languages(fact["class"], fact["target"], cfg)


def render(lang: str, form: str, name: str, answer: str, declared: str = "") -> str:
    return declared + TEMPLATES[lang][2][form].format(n=name, v=answer)


def query_prefix(lang: str, form: str, name: str, declared: str = "") -> str:
    """The text a query gives the model: header + the declaration (mapped keys) + the form
    up to (not including) " answer"."""
    header, _, forms = TEMPLATES[lang]
    return header + declared + forms[form].split(" {v}")[0].format(n=name)


def _query(fact, lang, key, name, declared, cfg, n):
    return {"id": f"q{n:06d}", "fact": fact["id"], "class": fact["class"],
            "target": fact["target"], "key": key, "language": lang,
            "side": "primary" if lang == cfg.primary else "new", "form": fact["query_form"],
            "split": fact["split"], "prefix": query_prefix(lang, fact["query_form"], name, declared),
            "answer": " " + fact["answer"]}


def make_queries(facts: list[dict], cfg: KnowledgeConfig) -> list[dict]:
    """One query per fact and query language, under the fact's key in that language; a
    mapped key's query first declares the key in the other language (``declaration``).
    With ``decoys``, each mapped fact also gets, per new query language, a query of key
    ``decoy`` (for classes the primary teaches): the primary's key string in the key
    position and a declaration naming a name taught nowhere - a model that follows the map is at chance there, one that
    answers by string association is not."""
    out: list[dict] = []
    for f in facts:
        for lang in query_languages(f, cfg):
            declared = ""
            if f["key"] == "mapped":
                other = _other(f, lang, cfg)
                declared = declaration(lang, other, f["names"][other])
            out.append(_query(f, lang, f["key"], f["names"][lang], declared, cfg, len(out)))
        if f["key"] == "mapped" and cfg.decoys and cfg.primary in fact_corpora(f, cfg):
            for lang in query_languages(f, cfg):
                if lang != cfg.primary:
                    out.append(_query(f, lang, "decoy", f["names"][cfg.primary],
                                      declaration(lang, cfg.primary, f["decoy_name"]), cfg, len(out)))
    return out


def make_documents(facts: list[dict], cfg: KnowledgeConfig) -> list[dict]:
    """Training documents: per corpus language and class, ``exposures`` rounds; in each
    round the class's facts are shuffled into documents of ``facts_per_document``
    distinct facts, each fact in a random form other than its query form, under its key
    in that language. A mapped fact of the shared class teaches the map: with
    ``bridge_keys: fresh`` its new-language renderings declare the primary's key and use
    a fresh key each time (the primary renders it plainly); with ``fixed`` every rendering
    declares the other language's key and uses its own. Other classes never show another
    language's key, so it never meets the answer in training."""
    rng = random.Random(f"knowledge-docs-{cfg.seed}")
    banned = {n for f in facts for n in list(f["names"].values()) + [f["decoy_name"]] if n}
    docs = []
    for lang in [cfg.primary] + list(cfg.languages):
        header, ext, _ = TEMPLATES[lang]
        for cls, target in _class_groups(cfg, taught_only=True):
            group = [f for f in facts if f["class"] == cls and f["target"] == target
                     and lang in fact_corpora(f, cfg)]
            tag = cls if target is None else f"{cls}-{target}"
            n_docs = 0
            for _ in range(cfg.exposures if group else 0):
                order = rng.sample(group, len(group))
                for i in range(0, len(order), cfg.facts_per_document):
                    chunk = order[i:i + cfg.facts_per_document]
                    parts = []
                    for f in chunk:
                        declared, name = "", f["names"][lang]
                        if f["key"] == "mapped" and cls == "shared":
                            if cfg.bridge_keys == "fixed":
                                other = _other(f, lang, cfg)
                                declared = declaration(lang, other, f["names"][other])
                            elif lang != cfg.primary:
                                declared = declaration(lang, cfg.primary, f["names"][cfg.primary])
                                name = bridge_name(rng, banned)
                        form = rng.choice([x for x in FORMS if x != f["query_form"]])
                        parts.append(render(lang, form, name, f["answer"], declared))
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
            "query_forms": cfg.forms_to_query(),
            "mirror": {"threshold": cfg.mirror_threshold,
                       "table": mirror_table(cfg.all_languages)},
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
    if isinstance(obj, dict) and str(obj.get("format", "")).startswith("babeltower-knowledge-facts/") \
            and obj.get("format") != FACTS_FORMAT:
        raise BabelError(f"{p} is a knowledge facts file of format {obj.get('format')}, this "
                         f"version reads {FACTS_FORMAT}: regenerate it (babeltower corpus knowledge)")
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


def encode_queries(tokenizer, facts: dict, eos: bool = True
                   ) -> tuple[list[int], list[list[int]], list[int]]:
    """(answer ids, prompt ids per query, answer id per query).

    Each query is tokenized WITH its answer and the last token split off, so the prompt
    is tokenized exactly as the same text would be in a document; BabelError if the answer
    is not exactly the last token there (split, or merged with the text before it). With
    ``eos`` (the default) each prompt starts with the tokenizer's EOS token, as every
    document does in the packed training stream (``corpus.shards``: documents are
    concatenated, each followed by EOS).
    """
    answer_ids = answer_token_ids(tokenizer, facts["answers"])
    id_of = dict(zip(facts["answers"], answer_ids))
    lead: list[int] = []
    if eos:
        if tokenizer.eos_token_id is None:
            raise BabelError("knowledge: the tokenizer has no EOS token to put before each "
                             "query (pass eos=False to score without it)")
        lead = [int(tokenizer.eos_token_id)]
    prompts, targets = [], []
    for q in facts["queries"]:
        full = tokenizer.encode(q["prefix"] + q["answer"], add_special_tokens=False)
        if len(full) < 2 or full[-1] != id_of[q["answer"]]:
            raise BabelError(f"knowledge: in query {q['id']} ({q['language']} {q['form']}) the "
                             f"answer {q['answer']!r} is not one token after the prefix")
        prompts.append(lead + full[:-1])
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
