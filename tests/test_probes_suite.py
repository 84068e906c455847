"""Probe suites: the data files, the loader and the tokenizer check."""

from __future__ import annotations

import pytest

from babeltower.cli import main
from babeltower.errors import BabelError
from babeltower.probes.suite import ATTRIBUTION, available_suites, load_suite
from test_probes_helpers import tiny_tokenizer

REQUIRED = ["python-php", "python-go", "python-cpp", "python-java", "python-javascript",
            "python-rust"]


def test_builtin_suites_are_big_enough():
    names = available_suites()
    for name in REQUIRED:
        if name not in names:
            pytest.fail(f"missing built-in suite {name}")
    for name in names:
        primary, new = name.split("-", 1)
        s = load_suite(primary, new)
        assert (s.primary, s.new) == (primary, new)
        assert len(s.pairs) >= 20, name
        assert {p.kind for p in s.pairs} == {"builtin", "keyword"}, name
        for p in s.pairs:
            assert len(p.primary.prompts) >= 3 and len(p.new.prompts) >= 3, (name, p.id)
            assert all(pr.strip() for pr in p.primary.prompts + p.new.prompts), (name, p.id)


def test_check_splits_prompt_and_identifier_exactly():
    tok = tiny_tokenizer()
    checked = load_suite("python", "php").check(tok, add_bos=False)
    assert checked.attribution == ATTRIBUTION == "first-token"
    assert len(checked.items) > 100
    for it in checked.items + checked.shared:
        full = tok(it.prompt + it.target, add_special_tokens=False)["input_ids"]
        # context + continuation is exactly the tokenization of prompt + identifier
        assert it.prompt_ids + it.target_ids == full
        assert it.target_first_id == it.target_ids[0]
        cont = tok.decode(it.target_ids)
        assert cont.strip() == it.target and it.context + cont == it.prompt + it.target
        assert it.target_first_id not in it.control_ids
        assert it.counterpart_first_id not in it.control_ids
        assert it.shared_first_token == (it.target_first_id == it.counterpart_first_id)
    assert all(not it.shared_first_token for it in checked.items)


def test_trailing_space_moves_into_continuation():
    tok = tiny_tokenizer()
    it = next(i for i in load_suite("python", "php").check(tok, add_bos=False).items
              if i.pair_id == "strlen-len" and i.prompt == "n = ")
    assert it.context == "n ="
    assert tok.decode([it.target_first_id]).startswith(" ")


def test_merge_across_boundary_is_dropped_with_reason(tmp_path):
    # "strlen" is one token of the tiny tokenizer: prompt "x = str" + "len" cannot be split
    tok = tiny_tokenizer()
    assert len(tok("strlen", add_special_tokens=False)["input_ids"]) == 1
    f = tmp_path / "python-php.yaml"
    pairs = "\n".join(
        f"  - id: p{i}\n    kind: builtin\n"
        f"    primary: {{identifier: \"len\", prompts: [\"n{i} = \"]}}\n"
        f"    new: {{identifier: \"len\", prompts: [\"<?php\\n$n{i} = str\"]}}" for i in range(2))
    f.write_text(f"primary: python\nnew: php\npairs:\n{pairs}\n")
    checked = load_suite("python", "php", path=f).check(tok, add_bos=False)
    assert {d.side for d in checked.dropped} == {"new"}
    assert all("merges" in d.reason for d in checked.dropped)
    # identical identifiers share their first token: flagged, kept out of items
    assert checked.items == [] and checked.shared_pairs == ["p0", "p1"]


def test_bos_is_prepended_when_asked():
    tok = tiny_tokenizer()
    checked = load_suite("python", "php").check(tok, add_bos=True)
    assert all(it.prompt_ids[0] == tok.bos_token_id for it in checked.items)
    assert checked.bos_id == tok.bos_token_id


def test_unknown_pair_lists_available(tmp_path):
    with pytest.raises(BabelError, match="available: .*python-php"):
        load_suite("python", "ruby")
    with pytest.raises(BabelError, match="unknown language"):
        load_suite("python", "klingon")


def test_user_suite_directory_and_broken_files(tmp_path):
    d = tmp_path / "suites"
    d.mkdir()
    (d / "python-ruby.yaml").write_text(
        "primary: python\nnew: ruby\npairs:\n  - id: nil-None\n    kind: keyword\n"
        "    primary: {identifier: None, prompts: ['x = ']}\n"
        "    new: {identifier: nil, prompts: ['x = ']}\n")
    s = load_suite("py", "rb", path=d)
    assert s.name == "python-ruby" and available_suites(d) == ["python-ruby"]
    (d / "python-go.yaml").write_text("primary: python\nnew: go\npairs: [\n")
    with pytest.raises(BabelError, match="not valid YAML"):
        load_suite("python", "go", path=d)
    (d / "python-go.yaml").write_text("primary: python\nnew: go\npairs:\n  - id: a\n    kind: x\n")
    with pytest.raises(BabelError, match="pairs.0"):
        load_suite("python", "go", path=d)


def test_cli_unknown_suite_is_one_line(capsys, tmp_path):
    rc = main(["probe", "suites", "--primary", "python", "--new", "ruby"])
    err = capsys.readouterr().err.strip()
    assert rc != 0 and len(err.splitlines()) == 1 and "available" in err


def test_sentencepiece_style_tokenizer_is_aligned():
    # Metaspace ("▁" for spaces, prepended at the start) as in LLaMA-2 / Mistral tokenizers
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    import string

    from test_probes_helpers import CODE_SAMPLE

    tok = Tokenizer(models.BPE(unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.Metaspace(prepend_scheme="always")
    tok.decoder = decoders.Metaspace(prepend_scheme="always")
    tok.train_from_iterator([CODE_SAMPLE] * 20, trainer=trainers.BpeTrainer(
        vocab_size=400, special_tokens=["<unk>", "<s>"], show_progress=False,
        initial_alphabet=list(string.printable)))
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, unk_token="<unk>", bos_token="<s>")
    checked = load_suite("python", "php").check(fast)
    # the leading-space convention is handled; what is dropped are real merges across the
    # boundary (this pre-tokenizer does not split "json.dumps" at the dot)
    assert not [d for d in checked.dropped if "decode back" in d.reason]
    assert len(checked.items) >= 140, checked.summary()
    for it in checked.items[:50]:
        assert fast.decode(it.target_ids).strip() == it.target


KOTLIN_SUITE = """
languages:
  - {name: kotlin, extensions: [".kt", ".kts"]}
primary: python
new: kotlin
pairs:
  - id: println-print
    kind: builtin
    primary: {identifier: print}
    new: {identifier: println, prompts: ["fun main() {\\n    ", "if (verbose) {\\n    "]}
  - id: null-None
    kind: keyword
    primary: {identifier: None}
    new: {identifier: "null", prompts: ["val x = ", "return "]}
"""


def test_user_suite_declares_a_language_and_needs_no_primary_prompts(tmp_path):
    f = tmp_path / "python-kotlin.yaml"
    f.write_text(KOTLIN_SUITE)
    s = load_suite("python", "kotlin", path=f)
    assert (s.primary, s.new) == ("python", "kotlin")
    assert s.declared()["kotlin"].extensions == (".kt", ".kts")
    assert load_suite("Python", "Kotlin", path=tmp_path).name == "python-kotlin"
    checked = s.check(tiny_tokenizer(), add_bos=False)
    # only new-side prompts, and each is checked against its primary counterpart
    assert {it.side for it in checked.items + checked.shared} == {"new"}
    assert len(checked.items) + len(checked.shared) + len(checked.dropped) == 4
    # the built-in registry is untouched: the declaration is local to the file
    with pytest.raises(BabelError, match="unknown language 'kotlin'"):
        load_suite("python", "kotlin")


@pytest.mark.parametrize("edit, message", [
    (lambda t: t.replace('languages:\n  - {name: kotlin, extensions: [".kt", ".kts"]}\n', ""),
     "unknown language 'kotlin'"),
    (lambda t: t.replace('[".kt", ".kts"]', "[kt]"), "extensions must be"),
    (lambda t: t.replace("{name: kotlin", "{name: go"), "built in"),
    (lambda t: t.replace('"return "]', '"val x = "]'), "duplicate prompt 'val x = '"),
    (lambda t: t.replace('prompts: ["val x = ", "return "]', "prompts: []"), "no prompts"),
])
def test_bad_user_suite_is_one_line(tmp_path, capsys, edit, message):
    f = tmp_path / "python-kotlin.yaml"
    f.write_text(edit(KOTLIN_SUITE))
    with pytest.raises(BabelError, match=message) as e:
        load_suite("python", "kotlin", path=f)
    assert len(str(e.value).splitlines()) == 1
    rc = main(["probe", "suites", "--primary", "python", "--new", "kotlin", "--suite", str(f)])
    err = capsys.readouterr().err.strip()
    assert rc == 2 and len(err.splitlines()) == 1 and message.split("'")[0] in err


def test_builtin_suites_have_no_duplicate_items():
    # loading validates: the same (side, prompt, target, counterpart) twice is refused
    for name in available_suites():
        load_suite(*name.split("-", 1))


def test_control_ids_are_other_pairs_first_tokens():
    tok = tiny_tokenizer()
    checked = load_suite("python", "php").check(tok, add_bos=False)
    suite = checked.suite
    it = next(i for i in checked.items if i.side == "new" and len(i.control_new_ids) > 2)
    firsts = set()
    for p in suite.pairs:
        if p.id == it.pair_id:
            continue
        ids = tok(it.context + it.prompt[len(it.context):] + p.new.identifier,
                  add_special_tokens=False)["input_ids"]
        if ids[:len(it.prompt_ids)] == it.prompt_ids and len(ids) > len(it.prompt_ids):
            firsts.add(ids[len(it.prompt_ids)])
    firsts -= {it.target_first_id, it.counterpart_first_id}
    # (the aligner also drops identifiers whose continuation would not decode back)
    assert set(it.control_new_ids) <= firsts and len(firsts) > 2
    assert not set(it.control_new_ids) & {it.target_first_id, it.counterpart_first_id}


@pytest.mark.parametrize("content,needle", [
    ("missing", "probe suite path not found"), ("dir", "no probe suites"),
    (b"\x80\x00\x01", "binary file"), (b"caf\xe9: 1\n", "not UTF-8"),
    (b"", "must be a mapping"), (b"a: [1\n", "not valid YAML")])
def test_available_suites_refuses_bad_user_paths(tmp_path, content, needle):
    from babeltower.probes.suite import available_suites

    p = tmp_path / "s.yaml"
    if content == "dir":
        p.mkdir()
    elif content != "missing":
        p.write_bytes(content)
    with pytest.raises(BabelError, match=needle):
        available_suites(p)
