"""The builtin problem set's shape and the loader (fast: nothing is executed here)."""

import gzip
import json

import pytest

from babeltower.errors import BabelError
from babeltower.sandbox.execute import run_program
from babeltower.evaluate.problems import (
    STOP_TOKENS,
    _build,
    available_languages,
    load_problems,
    program,
    truncate_at_stop,
)

REQUIRED_LANGUAGES = ("python", "javascript", "cpp", "java", "go", "php")


def test_every_required_language_has_at_least_20_problems():
    langs = available_languages()
    for lang in REQUIRED_LANGUAGES:
        assert lang in langs
        assert len(load_problems(lang)) >= 20, lang


def test_problems_line_up_across_languages():
    # the knowledge-transfer share compares per problem across languages: same names, same order
    reference = [p["name"] for p in load_problems("python")]
    assert len(set(reference)) == len(reference)
    for lang in available_languages():
        assert [p["name"] for p in load_problems(lang)] == reference, lang


def test_committed_files_match_the_spec():
    # the JSONL files are generated from spec.yaml; a hand edit or a stale build shows here
    rendered = _build.render_all()
    for lang, text in rendered.items():
        assert (_build.HERE / f"{lang}.jsonl").read_text() == text, f"rebuild {lang}.jsonl"


@pytest.mark.parametrize("lang", sorted(STOP_TOKENS))
def test_rows_are_well_formed(lang):
    for p in load_problems(f"builtin:{lang}"):
        assert p["language"] == lang
        assert p["stop_tokens"] == STOP_TOKENS[lang]
        assert p["entry_point"] in p["prompt"]
        assert p["mutant"] != p["canonical_solution"]
        src = program(p)
        assert src.startswith(p["prompt"]) and src.endswith(p["tests"])
        # the tests call the function and are not empty
        assert p["entry_point"] in p["tests"] and len(p["tests"].splitlines()) >= 4


@pytest.mark.parametrize("lang", sorted(STOP_TOKENS))
def test_stop_tokens_keep_a_correct_completion_and_cut_what_follows(lang):
    # What a model writes after a correct body: the rest of the file (our harness shows
    # what typically follows: closing brace, main, another definition).
    following = {
        "python": "\n\ndef helper(x):\n    return x\n",
        "javascript": "\nfunction helper(x) {\n  return x;\n}\n",
        "go": "\nfunc helper(x int) int {\n\treturn x\n}\n",
        "php": "\nfunction helper($x) {\n    return $x;\n}\n",
        "cpp": "}\n\nint main() {\n    return 0;\n}\n",
        "rust": "}\n\nfn main() {\n}\n",
        "java": "    }\n\n    public static void main(String[] args) {\n    }\n}\n",
    }[lang]
    for p in load_problems(lang):
        body, stops = p["canonical_solution"], p["stop_tokens"]
        assert truncate_at_stop(body, stops) == body, (p["name"], "reference cut by a stop token")
        cut = truncate_at_stop(body + following, stops)
        # only trailing newlines may differ (a stop token starts with "\n")
        assert cut.rstrip("\n") == body.rstrip("\n"), p["name"]


def test_truncate_at_stop_takes_the_earliest_stop():
    assert truncate_at_stop("a\nb\nc", ["\nc", "\nb"]) == "a"
    assert truncate_at_stop("abc", ["\nx"]) == "abc"


def test_builtin_name_forms():
    assert load_problems("js") == load_problems("builtin:javascript")
    assert load_problems("builtin:C++")[0]["language"] == "cpp"


def test_loads_a_path_and_a_gzipped_copy(tmp_path):
    src = _build.HERE / "php.jsonl"
    gz = tmp_path / "php.jsonl.gz"
    gz.write_bytes(gzip.compress(src.read_bytes()))
    assert load_problems(src) == load_problems("php")
    assert load_problems(str(gz)) == load_problems("php")


def _write(tmp_path, rows, name="p.jsonl"):
    path = tmp_path / name
    path.write_text("".join((r if isinstance(r, str) else json.dumps(r)) + "\n" for r in rows))
    return path


GOOD = {"name": "x_1", "language": "py", "prompt": "def f():\n", "tests": "\nassert f()\n",
        "stop_tokens": ["\ndef"], "doctests": "transform", "original": "x.py"}


def test_multiple_rows_are_normalised_and_keep_their_extra_fields(tmp_path):
    go = dict(GOOD, name="x_2", language="go_test.go", stop_tokens=["\nfunc"])
    rows = load_problems(_write(tmp_path, [GOOD, go]))
    assert [r["language"] for r in rows] == ["python", "go"]
    assert [r["source_language"] for r in rows] == ["py", "go_test.go"]
    assert rows[0]["doctests"] == "transform" and rows[0]["original"] == "x.py"


def test_humaneval_rows_are_converted(tmp_path):
    row = {"task_id": "HumanEval/0", "prompt": "def add(a, b):\n", "entry_point": "add",
           "canonical_solution": "    return a + b\n",
           "test": "def check(candidate):\n    assert candidate(1, 2) == 3\n"}
    (p,) = load_problems(_write(tmp_path, [row]))
    assert p["name"] == "HumanEval_0" and p["language"] == "python"
    src = program(p)
    assert src.rstrip().endswith("check(add)")
    assert run_program("python", src).status == "pass"
    assert run_program("python", program(p, "    return a - b\n")).status == "fail"


@pytest.mark.parametrize("rows, message", [
    ([GOOD, "{not json"], ":2: not valid JSON"),
    ([dict(GOOD, prompt=None)], ":1: field 'prompt' must be a non-empty string"),
    ([{k: v for k, v in GOOD.items() if k != "tests"}], ":1: missing field 'tests'"),
    ([dict(GOOD, stop_tokens="\ndef")], ":1: field 'stop_tokens' must be a list"),
    ([dict(GOOD, language="klingon")], ":1: unknown language 'klingon'"),
    ([GOOD, GOOD], ":2: duplicate problem name 'x_1' (first on line 1)"),
    ([[1, 2]], ":1: expected a JSON object"),
    ([], "no problems in"),
])
def test_malformed_files_name_file_and_line(tmp_path, rows, message):
    path = _write(tmp_path, rows)
    with pytest.raises(BabelError) as info:
        load_problems(path)
    text = str(info.value)
    assert message in text and "\n" not in text
    if message.startswith(":"):
        assert text.startswith(f"{path}:")


@pytest.mark.parametrize("spec, message", [
    ("klingon", "unknown language 'klingon'"),
    ("builtin:csharp", "no builtin problems for language 'csharp'"),
    ("missing/problems.jsonl", "problem file not found"),
])
def test_bad_specs_are_one_line_errors(spec, message):
    with pytest.raises(BabelError, match=message):
        load_problems(spec)


def test_cli_reports_an_unknown_builtin_set_in_one_line(capsys, tmp_path):
    from babeltower.cli import main

    rc = main(["eval", "pass-at-k", "--problems", "builtin:csharp", "--references",
               "--out", str(tmp_path / "out")])
    err = capsys.readouterr().err.strip()
    assert rc != 0
    assert len(err.splitlines()) == 1 and "no builtin problems for language 'csharp'" in err
    assert not (tmp_path / "out").exists()


def test_test_cases_are_discriminating():
    # no constant function can pass: every problem expects at least two different
    # results, has at least five cases, and no case is repeated
    for p in _build.load_spec():
        expected = [json.dumps(exp, sort_keys=True) for _, exp in p["tests"]]
        cases = [json.dumps(case, sort_keys=True) for case in p["tests"]]
        assert len(set(expected)) >= 2, p["name"]
        assert len(cases) >= 5 and len(set(cases)) == len(cases), p["name"]


def test_a_mutation_must_match_the_reference_exactly_once():
    assert _build.mutate("a < b", ["<", "<="], "x") == "a <= b"
    with pytest.raises(ValueError, match="occurs 0 times"):
        _build.mutate("a < b", [">", ">="], "x")
    with pytest.raises(ValueError, match="occurs 2 times"):
        _build.mutate("a < b < c", ["<", "<="], "x")


def test_examples_in_prompts_are_the_first_test_cases():
    # the docstring examples and the harness are rendered from the same values
    spec = {p["name"]: p for p in _build.load_spec()}
    for lang in available_languages():
        for row in load_problems(lang):
            p = spec[row["name"]]
            for i, (args, expected) in enumerate(p["tests"]):
                call = _build.call(p, args, lang)
                assert (f">>> {call}" in row["prompt"]) == (i < 2), (lang, p["name"], i)
                harness_call = call if lang == "java" else call.replace(
                    row["entry_point"] + "(", "candidate(", 1)
                assert harness_call in row["tests"], (lang, p["name"], i)


def test_unused_javatuples_import_is_dropped_from_multiple_java_rows(tmp_path):
    header = "import java.util.*;\nimport org.javatuples.*;\nclass Problem {\n"
    plain = dict(GOOD, name="j_1", language="java", prompt=header + "    public static long f() {\n",
                 tests="    }\n    public static void main(String[] a) { assert f() == 1; }\n}\n")
    tuples = dict(plain, name="j_2", prompt=header + "    public static Pair<Long, Long> f() {\n")
    a, b = load_problems(_write(tmp_path, [plain, tuples]))
    assert "javatuples" not in a["prompt"] and a["normalised"] == ["dropped unused import org.javatuples.*"]
    assert a["prompt"] == plain["prompt"].replace("import org.javatuples.*;\n", "")
    assert b["prompt"] == tuples["prompt"] and "normalised" not in b
    # our own Java rows are untouched
    assert all("normalised" not in p for p in load_problems("java"))
