"""Build the per-language problem files (``<lang>.jsonl``) from ``spec.yaml``.

``spec.yaml`` is the one source of truth: each problem is described once (name, typed
signature, description, test cases as plain values) together with a hand-written
reference body and a deliberate one-edit bug ("mutation") per language. This module
renders, per language and following MultiPL-E's conventions, the prompt (signature plus
a comment/docstring with examples in that language's syntax), the test harness (the
same test cases rendered as that language's literals), the stop tokens, the reference
solution and the mutant (the reference with the mutation applied).

Regenerate after editing the spec::

    python -m babeltower.evaluate.problems._build

``tests/test_problems_*.py`` checks that the committed JSONL files match this output.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import yaml

from babeltower.evaluate.problems import STOP_TOKENS

HERE = Path(__file__).resolve().parent
SPEC = HERE / "spec.yaml"
LANGS = ("python", "javascript", "cpp", "java", "go", "php", "rust")
TYPES = ("int", "bool", "str", "list[int]", "list[str]", "dict[str,int]")



def camel(name: str) -> str:
    head, *rest = name.split("_")
    return head + "".join(w[:1].upper() + w[1:] for w in rest)


def entry_point(slug: str, lang: str) -> str:
    # Java methods are camelCase in MultiPL-E; every other language keeps the snake name.
    return camel(slug) if lang == "java" else slug


# ---------------------------------------------------------------------------- literals
def _str_c(s: str) -> str:
    # JSON string syntax is valid in C++, Java, Go, Rust and JS for the ASCII we use.
    return json.dumps(s)


def literal(value, typ: str, lang: str) -> str:
    """``value`` (a plain Python value of spec type ``typ``) as a literal in ``lang``."""
    if lang == "python":
        return repr(value)
    if lang == "javascript":
        return json.dumps(value, separators=(", ", ": "))
    if typ == "int":
        return {"java": f"{value}L"}.get(lang, str(value))
    if typ == "bool":
        return "true" if value else "false"
    if typ == "str":
        if lang == "php":
            return "'" + value.replace("\\", "\\\\").replace("'", "\\'") + "'"
        if lang == "cpp":
            return f"std::string({_str_c(value)})"
        if lang == "rust":
            return f"String::from({_str_c(value)})"
        return _str_c(value)
    if typ.startswith("list["):
        inner = typ[5:-1]
        items = ", ".join(literal(v, inner, lang) for v in value)
        if lang == "php":
            return f"[{items}]"
        if lang == "cpp":
            t = type_name(typ, lang)
            return f"{t}({{{items}}})" if value else f"{t}()"
        if lang == "java":
            t = "Long" if inner == "int" else "String"
            return (f"new ArrayList<{t}>(Arrays.asList({items}))" if value
                    else f"new ArrayList<{t}>()")
        if lang == "go":
            return f"{type_name(typ, lang)}{{{items}}}"
        if lang == "rust":
            return f"vec![{items}]" if value else f"Vec::<{type_name(inner, lang)}>::new()"
    if typ == "dict[str,int]":
        pairs = sorted(value.items())
        if lang == "php":
            return "[" + ", ".join(f"{literal(k, 'str', lang)} => {v}" for k, v in pairs) + "]"
        if lang == "cpp":
            items = ", ".join(f"{{{_str_c(k)}, {v}}}" for k, v in pairs)
            return f"std::map<std::string, long>({{{items}}})" if pairs else "std::map<std::string, long>()"
        if lang == "java":
            items = ", ".join(f"{_str_c(k)}, {v}L" for k, v in pairs)
            return (f"new HashMap<String, Long>(Map.of({items}))" if pairs
                    else "new HashMap<String, Long>()")
        if lang == "go":
            return "map[string]int{" + ", ".join(f"{_str_c(k)}: {v}" for k, v in pairs) + "}"
        if lang == "rust":
            items = ", ".join(f"(String::from({_str_c(k)}), {v})" for k, v in pairs)
            return f"HashMap::from([{items}])" if pairs else "HashMap::<String, i64>::new()"
    raise ValueError(f"no literal for type {typ!r} in {lang}")


def type_name(typ: str, lang: str) -> str:
    table = {
        "python": {"int": "int", "bool": "bool", "str": "str", "list[int]": "list[int]",
                   "list[str]": "list[str]", "dict[str,int]": "dict[str, int]"},
        "cpp": {"int": "long", "bool": "bool", "str": "std::string",
                "list[int]": "std::vector<long>", "list[str]": "std::vector<std::string>",
                "dict[str,int]": "std::map<std::string, long>"},
        "java": {"int": "long", "bool": "boolean", "str": "String",
                 "list[int]": "ArrayList<Long>", "list[str]": "ArrayList<String>",
                 "dict[str,int]": "HashMap<String, Long>"},
        "go": {"int": "int", "bool": "bool", "str": "string", "list[int]": "[]int",
               "list[str]": "[]string", "dict[str,int]": "map[string]int"},
        "rust": {"int": "i64", "bool": "bool", "str": "String", "list[int]": "Vec<i64>",
                 "list[str]": "Vec<String>", "dict[str,int]": "HashMap<String, i64>"},
    }
    return table[lang][typ]


def call(p: dict, args: list, lang: str) -> str:
    rendered = ", ".join(literal(a, t, lang) for a, (_, t) in zip(args, p["params"]))
    return f"{entry_point(p['slug'], lang)}({rendered})"


# ---------------------------------------------------------------------------- prompts
# Descriptions are written with neutral words; like MultiPL-E, each language's prompt uses
# its own terms for them (a Python "list" is a PHP "array", Python's true is True).
TERMS = {
    "python": {"true": "True", "false": "False"},
    "javascript": {"list": "array", "lists": "arrays"},
    "php": {"list": "array", "lists": "arrays"},
    "cpp": {"list": "vector", "lists": "vectors"},
    "java": {"list": "array list", "lists": "array lists"},
    "go": {"list": "slice", "lists": "slices"},
    "rust": {"list": "vector", "lists": "vectors"},
}


def _terms(text: str, lang: str) -> str:
    table = TERMS.get(lang, {})
    return re.sub(r"\b[a-z]+\b", lambda m: table.get(m.group(0), m.group(0)), text)


def _doc_lines(p: dict, lang: str) -> list[str]:
    lines = _terms(p["doc"].strip(), lang).splitlines()
    lines += ["", "For example:"]
    for args, expected in p["tests"][: p.get("examples", 2)]:
        lines.append(f">>> {call(p, args, lang)}")
        lines.append(literal(expected, p["returns"], lang))
    return lines


def _comment(lines: list[str], prefix: str) -> str:
    return "".join(f"{prefix} {ln}".rstrip() + "\n" for ln in lines)


CPP_HEADER = "".join(f"#include <{h}>\n" for h in (
    "algorithm", "cctype", "climits", "cmath", "cstdio", "cstdlib", "map", "numeric", "set",
    "sstream", "string", "unordered_map", "unordered_set", "vector"))
JAVA_HEADER = "import java.util.*;\nimport java.util.stream.*;\nimport java.math.*;\n\n"
# Go refuses unused imports: the prompt imports a fixed set and the test harness
# references each package once, so a completion that uses none of them still compiles.
GO_IMPORTS = ("fmt", "math", "os", "reflect", "sort", "strconv", "strings", "unicode")
GO_USES = ("var _ = math.Abs\nvar _ = sort.Ints\nvar _ = strconv.Itoa\n"
           "var _ = strings.Split\nvar _ = unicode.IsLetter\n")


def prompt(p: dict, lang: str) -> str:
    name = entry_point(p["slug"], lang)
    params, ret = p["params"], p["returns"]
    doc = _doc_lines(p, lang)
    if lang == "python":
        sig = ", ".join(f"{n}: {type_name(t, lang)}" for n, t in params)
        body = "\n".join(f"    {ln}".rstrip() for ln in doc)
        return f'def {name}({sig}) -> {type_name(ret, lang)}:\n    """{body.lstrip()}\n    """\n'
    if lang == "javascript":
        sig = ", ".join(n for n, _ in params)
        return _comment(doc, "//") + f"function {name}({sig}) {{\n"
    if lang == "php":
        sig = ", ".join(f"${n}" for n, _ in params)
        return "<?php\n" + _comment(doc, "//") + f"function {name}({sig}) {{\n"
    if lang == "cpp":
        sig = ", ".join(f"{type_name(t, lang)} {n}" for n, t in params)
        return CPP_HEADER + _comment(doc, "//") + f"{type_name(ret, lang)} {name}({sig}) {{\n"
    if lang == "java":
        sig = ", ".join(f"{type_name(t, lang)} {n}" for n, t in params)
        return (JAVA_HEADER + "class Problem {\n" + _comment(doc, "    //")
                + f"    public static {type_name(ret, lang)} {name}({sig}) {{\n")
    if lang == "go":
        sig = ", ".join(f"{n} {type_name(t, lang)}" for n, t in params)
        imports = "".join(f'\t"{m}"\n' for m in GO_IMPORTS)
        return (f"package main\n\nimport (\n{imports})\n\n" + _comment(doc, "//")
                + f"func {name}({sig}) {type_name(ret, lang)} {{\n")
    if lang == "rust":
        sig = ", ".join(f"{n}: {type_name(t, lang)}" for n, t in params)
        uses = "use std::collections::HashMap;\nuse std::collections::HashSet;\n\n"
        return uses + _comment(doc, "///") + f"fn {name}({sig}) -> {type_name(ret, lang)} {{\n"
    raise ValueError(lang)


# ---------------------------------------------------------------------------- tests
def tests(p: dict, lang: str) -> str:
    name = entry_point(p["slug"], lang)
    ret = p["returns"]
    cases = [(call(p, args, lang).replace(name + "(", "candidate(", 1), literal(exp, ret, lang))
             for args, exp in p["tests"]]
    tag = p["name"]
    if lang == "python":
        checks = "".join(f"    assert {c} == {e}\n" for c, e in cases)
        return f"\n\ndef check(candidate):\n{checks}\n\ncheck({name})\n"
    if lang == "javascript":
        checks = "".join(f"  assert.deepStrictEqual({c}, {e});\n" for c, e in cases)
        return (f"\nconst assert = require('node:assert');\n\nfunction test() {{\n"
                f"  let candidate = {name};\n{checks}}}\n\ntest();\n")
    if lang == "php":
        # Maps compare with == (same key/value pairs in any order); everything else strictly.
        op = "!=" if ret.startswith("dict") else "!=="
        checks = "".join(
            f"    if ({c} {op} {e}) {{ fwrite(STDERR, \"{tag}: test {i} failed\\n\"); exit(1); }}\n"
            for i, (c, e) in enumerate(cases, 1))
        return (f"\nfunction candidate(...$args) {{\n    return {name}(...$args);\n}}\n\n"
                f"function test(): void {{\n{checks}}}\n\ntest();\n")
    if lang == "cpp":
        checks = "".join(
            f"    if (!({c} == {e})) {{ std::fprintf(stderr, \"{tag}: test {i} failed\\n\"); return 1; }}\n"
            for i, (c, e) in enumerate(cases, 1))
        return f"}}\n\nint main() {{\n    auto candidate = {name};\n{checks}    return 0;\n}}\n"
    if lang == "java":
        checks = "".join(
            f"        if (!Objects.equals({c}, {e})) throw new AssertionError(\"{tag}: test {i} failed\");\n"
            for i, (c, e) in enumerate(cases, 1))
        checks = checks.replace("candidate(", name + "(")
        return f"    }}\n\n    public static void main(String[] args) {{\n{checks}    }}\n}}\n"
    if lang == "go":
        checks = "".join(
            f"\tif !btSame({c}, {e}) {{\n\t\tfmt.Fprintln(os.Stderr, \"{tag}: test {i} failed\")\n"
            f"\t\tos.Exit(1)\n\t}}\n" for i, (c, e) in enumerate(cases, 1))
        return (f"\n{GO_USES}\n"
                "// btSame is reflect.DeepEqual, except that a nil and an empty slice or map are equal.\n"
                "func btSame(got, want interface{}) bool {\n"
                "\tif reflect.DeepEqual(got, want) {\n\t\treturn true\n\t}\n"
                "\tg, w := reflect.ValueOf(got), reflect.ValueOf(want)\n"
                "\tempty := func(v reflect.Value) bool {\n"
                "\t\treturn (v.Kind() == reflect.Slice || v.Kind() == reflect.Map) && v.Len() == 0\n\t}\n"
                "\treturn g.Type() == w.Type() && empty(g) && empty(w)\n}\n\n"
                f"func main() {{\n\tcandidate := {name}\n{checks}}}\n")
    if lang == "rust":
        checks = "".join(
            f"    if {c} != {e} {{\n        eprintln!(\"{tag}: test {i} failed\");\n"
            f"        std::process::exit(1);\n    }}\n" for i, (c, e) in enumerate(cases, 1))
        return f"}}\n\nfn main() {{\n    let candidate = {name};\n{checks}}}\n"
    raise ValueError(lang)


# ---------------------------------------------------------------------------- rows
def mutate(body: str, mutation: list[str], where: str) -> str:
    old, new = mutation
    if body.count(old) != 1:
        raise ValueError(f"{where}: mutation target {old!r} occurs {body.count(old)} times (need 1)")
    return body.replace(old, new)


def load_spec(path: Path = SPEC) -> list[dict]:
    problems = yaml.safe_load(path.read_text())["problems"]
    for i, p in enumerate(problems, 1):
        p["name"] = f"bt_{i:03d}_{p['slug']}"
        for _, t in p["params"]:
            assert t in TYPES, (p["name"], t)
        assert p["returns"] in TYPES, p["name"]
        assert len(p["tests"]) >= 4, p["name"]
        assert p["category"] in ("string", "list", "arithmetic", "map"), p["name"]
    return problems


def rows(lang: str, problems: list[dict]) -> list[dict]:
    out = []
    for p in problems:
        sol = p["solutions"].get(lang)
        if sol is None:
            continue
        body = sol["body"]
        out.append({
            "name": p["name"],
            "language": lang,
            "prompt": prompt(p, lang),
            "tests": tests(p, lang),
            "stop_tokens": list(STOP_TOKENS[lang]),
            "entry_point": entry_point(p["slug"], lang),
            "category": p["category"],
            "canonical_solution": body,
            "mutant": mutate(body, sol["mutation"], f"{p['name']}/{lang}"),
        })
    return out


def render_all(spec: Path = SPEC) -> dict[str, str]:
    """``{language: jsonl text}`` for every language in the spec."""
    problems = load_spec(spec)
    return {lang: "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows(lang, problems))
            for lang in LANGS}


def main() -> None:
    for lang, text in render_all().items():
        (HERE / f"{lang}.jsonl").write_text(text)
        print(f"{lang}: {text.count(chr(10))} problems")


if __name__ == "__main__":
    main()
