"""Functional-correctness problems in the HumanEval / MultiPL-E JSONL shape.

babeltower ships one original problem set written for this project: the SAME problems
(``bt_001_sum_of_evens`` ... ) in python, javascript, cpp, java, go, php and rust, so
per-problem results line up across languages (the knowledge-transfer share compares, per
problem, what a model solves in the primary language with what it solves in the new one).
Each row::

    {"name": "bt_003_count_vowels", "language": "php",
     "prompt": "<?php\\n// ...\\nfunction count_vowels($s) {\\n",
     "tests": "...harness appended after the completion...",
     "stop_tokens": ["\\nfunction ", ...],
     "entry_point": "count_vowels",
     "canonical_solution": "...reference body...",
     "mutant": "...the reference with one planted bug..."}

The program executed is ``prompt + completion + tests``; exit code 0 means pass.
``load_problems`` also reads a user's own JSONL: MultiPL-E's files as published
(``name, language, prompt, tests, stop_tokens`` plus extra fields, kept as they are) and
OpenAI HumanEval's (``task_id, prompt, canonical_solution, test, entry_point``), plain or
gzipped. See docs/problems.md.
"""

from __future__ import annotations

import gzip
import json
import os
import re
from pathlib import Path

from babeltower.errors import BabelError
from babeltower.languages import get_language

PROBLEM_DIR = Path(__file__).resolve().parent
BUILTIN_PREFIX = "builtin:"

# Stop tokens per language (MultiPL-E's choices, adjusted so that a correct completion in
# our prompt style is never cut: cpp/java/rust completions stop before the function's
# closing brace, which the test harness supplies; the other languages complete the whole
# function and stop at the next top-level definition or comment).
STOP_TOKENS: dict[str, list[str]] = {
    "python": ["\ndef ", "\n#", "\nif __name__", "\nclass ", "\nprint("],
    "javascript": ["\nfunction ", "\n/*", "\n//", "\nconsole.log"],
    "cpp": ["\n}"],
    "java": ["\n    }\n"],
    "go": ["\nfunc ", "\n// ", "\ntype "],
    "php": ["\nfunction ", "\n?>", "\n//", "\n#"],
    "rust": ["\n}"],
}

# MultiPL-E names some languages by file suffix; "go_test.go" rows are `go test` files.
_MULTIPLE_LANGUAGE_NAMES = {"go_test.go": "go", "cs": "csharp", "rb": "ruby"}
_REQUIRED_STR = ("name", "language", "prompt", "tests")
_OPTIONAL_STR = ("canonical_solution", "mutant", "entry_point")


def available_languages() -> list[str]:
    """Languages that have a builtin problem file, sorted."""
    return sorted(p.name[: -len(".jsonl")] for p in PROBLEM_DIR.glob("*.jsonl"))


def builtin_path(language: str) -> Path:
    """Path of the builtin problem file for ``language`` (name or alias)."""
    lang = get_language(language).name
    path = PROBLEM_DIR / f"{lang}.jsonl"
    if not path.is_file():
        raise BabelError(
            f"no builtin problems for language {lang!r} "
            f"(available: {', '.join(available_languages())}); pass a JSONL path instead")
    return path


def _resolve(language_or_path: str | os.PathLike) -> Path:
    if isinstance(language_or_path, os.PathLike):
        path = Path(language_or_path)
    else:
        spec = str(language_or_path).strip()
        if spec.startswith(BUILTIN_PREFIX):
            return builtin_path(spec[len(BUILTIN_PREFIX):])
        looks_like_path = (os.sep in spec or "/" in spec or spec.endswith((".jsonl", ".json", ".gz"))
                           or Path(spec).exists())
        if not looks_like_path:
            return builtin_path(spec)
        path = Path(spec)
    if not path.is_file():
        raise BabelError(f"problem file not found: {path}")
    return path


def _read_lines(path: Path) -> list[str]:
    try:
        if path.suffix == ".gz":
            with gzip.open(path, "rt", encoding="utf-8") as fh:
                return fh.read().splitlines()
        return path.read_text(encoding="utf-8").splitlines()
    except (OSError, UnicodeDecodeError, EOFError) as exc:  # gzip errors are OSError
        raise BabelError(f"cannot read problem file {path}: {exc}") from None


def _from_humaneval(row: dict) -> dict:
    """OpenAI HumanEval's row shape -> ours (python; tests call check(entry_point))."""
    entry = row["entry_point"]
    out = {
        "name": str(row["task_id"]).replace("/", "_"),
        "language": "python",
        "prompt": row["prompt"],
        "tests": f"\n\n{row['test']}\n\ncheck({entry})\n",
        "stop_tokens": list(STOP_TOKENS["python"]),
        "entry_point": entry,
    }
    if "canonical_solution" in row:
        out["canonical_solution"] = row["canonical_solution"]
    return out


# MultiPL-E's Java prompts import org.javatuples, a jar that is not on our classpath. A
# problem that never names a tuple type compiles without it, so the import is dropped
# (and the change recorded in the row's "normalised" field); one that uses tuples keeps
# it and needs the jar.
_JAVATUPLES_IMPORT = "import org.javatuples.*;\n"
_JAVATUPLES_TYPES = re.compile(
    r"\b(Unit|Pair|Triplet|Quartet|Quintet|Sextet|Septet|Octet|Ennead|Decade|KeyValue|LabelValue)\s*[<.(]")


def _drop_unused_javatuples(row: dict) -> dict:
    if _JAVATUPLES_IMPORT not in row["prompt"]:
        return row
    if _JAVATUPLES_TYPES.search(row["prompt"] + row["tests"] + row.get("canonical_solution", "")):
        return row
    out = dict(row, prompt=row["prompt"].replace(_JAVATUPLES_IMPORT, "", 1))
    out["normalised"] = [*row.get("normalised", []), "dropped unused import org.javatuples.*"]
    return out


def _validate(row, where: str) -> dict:
    if not isinstance(row, dict):
        raise BabelError(f"{where}: expected a JSON object, got {type(row).__name__}")
    if {"task_id", "test", "entry_point", "prompt"} <= row.keys() and "tests" not in row:
        row = _from_humaneval(row)
    for key in _REQUIRED_STR:
        if key not in row:
            raise BabelError(f"{where}: missing field {key!r} (a problem needs "
                             f"{', '.join(_REQUIRED_STR)}, stop_tokens)")
        if not isinstance(row[key], str) or (key != "tests" and not row[key]):
            raise BabelError(f"{where}: field {key!r} must be a non-empty string")
    for key in _OPTIONAL_STR:
        if key in row and not isinstance(row[key], str):
            raise BabelError(f"{where}: field {key!r} must be a string")
    stops = row.get("stop_tokens")
    if not isinstance(stops, list) or not all(isinstance(s, str) and s for s in stops):
        raise BabelError(f"{where}: field 'stop_tokens' must be a list of non-empty strings")
    out = dict(row)
    source_language = row["language"]
    try:
        out["language"] = get_language(
            _MULTIPLE_LANGUAGE_NAMES.get(source_language, source_language)).name
    except BabelError as exc:
        raise BabelError(f"{where}: {exc}") from None
    if out["language"] != source_language:
        out["source_language"] = source_language  # e.g. MultiPL-E's "go_test.go", "py"
    if out["language"] == "java":
        out = _drop_unused_javatuples(out)
    return out


def load_problems(language_or_path: str | os.PathLike) -> list[dict]:
    """Problems as a list of dicts, in file order.

    ``language_or_path``: ``"builtin:<language>"`` or a bare language name/alias
    (``"php"``, ``"js"``) for babeltower's own set, or a path to a JSONL file (optionally
    ``.gz``) in MultiPL-E's or HumanEval's shape. Every row is validated; a malformed row
    is a BabelError naming the file and line. ``language`` is normalised to the registry's
    canonical name (the file's own value is kept as ``source_language`` when it differs).
    """
    path = _resolve(language_or_path)
    problems, seen = [], {}
    for lineno, line in enumerate(_read_lines(path), 1):
        if not line.strip():
            continue
        where = f"{path}:{lineno}"
        try:
            row = json.loads(line)
        except json.JSONDecodeError as exc:
            raise BabelError(f"{where}: not valid JSON ({exc.msg} at column {exc.colno})") from None
        problem = _validate(row, where)
        if problem["name"] in seen:
            raise BabelError(f"{where}: duplicate problem name {problem['name']!r} "
                             f"(first on line {seen[problem['name']]})")
        seen[problem["name"]] = lineno
        problems.append(problem)
    if not problems:
        raise BabelError(f"no problems in {path}")
    return problems


def program(problem: dict, completion: str | None = None) -> str:
    """The source to execute: prompt + completion (default: the reference) + tests."""
    if completion is None:
        if "canonical_solution" not in problem:
            raise BabelError(f"problem {problem.get('name')!r} has no canonical_solution")
        completion = problem["canonical_solution"]
    return problem["prompt"] + completion + problem["tests"]


def truncate_at_stop(completion: str, stop_tokens: list[str]) -> str:
    """Cut ``completion`` at the earliest stop token (the token itself is dropped)."""
    cut = min((i for i in (completion.find(s) for s in stop_tokens) if i >= 0), default=-1)
    return completion if cut < 0 else completion[:cut]


__all__ = ["PROBLEM_DIR", "STOP_TOKENS", "available_languages", "builtin_path",
           "load_problems", "program", "truncate_at_stop"]
