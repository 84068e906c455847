"""Shared contracts: atomic io, provenance, language registry, CLI error handling."""

import json

import pytest

from babeltower.cli import main
from babeltower.errors import BabelError
from babeltower.io import atomic_dir, atomic_write_json, provenance, sha256_file
from babeltower.languages import LANGUAGES, canonical, detect_language, get_language


def test_atomic_dir_leaves_nothing_on_failure(tmp_path):
    out = tmp_path / "out"
    with pytest.raises(RuntimeError):
        with atomic_dir(out) as tmp:
            (tmp / "half.txt").write_text("half")
            raise RuntimeError("boom")
    assert not out.exists()
    assert list(tmp_path.iterdir()) == []


def test_atomic_dir_success_and_overwrite(tmp_path):
    out = tmp_path / "out"
    with atomic_dir(out) as tmp:
        (tmp / "a").write_text("1")
    assert (out / "a").read_text() == "1"
    with pytest.raises(BabelError, match="already exists"):
        with atomic_dir(out):
            pass
    with atomic_dir(out, overwrite=True) as tmp:
        (tmp / "b").write_text("2")
    assert sorted(p.name for p in out.iterdir()) == ["b"]
    assert [p.name for p in tmp_path.iterdir()] == ["out"]


def test_atomic_write_json_and_hash(tmp_path):
    p = atomic_write_json(tmp_path / "x" / "r.json", {"a": 1})
    assert json.loads(p.read_text()) == {"a": 1}
    assert len(sha256_file(p)) == 64


def test_provenance_records_config_seed_versions():
    rec = provenance(config={"lr": 1e-3}, seed=7, data_hashes={"d": "abc"})
    assert rec["seed"] == 7 and rec["config"] == {"lr": 1e-3}
    assert rec["versions"]["torch"] is not None
    assert rec["config_sha256"] == provenance(config={"lr": 1e-3})["config_sha256"]
    assert rec["config_sha256"] != provenance(config={"lr": 2e-3})["config_sha256"]


@pytest.mark.parametrize("path,head,lang", [
    ("a/b.py", None, "python"), ("x.PHP", None, "php"), ("m.rs", None, "rust"),
    ("k.hpp", None, "cpp"), ("Rakefile", None, "ruby"), ("index.mjs", None, "javascript"),
    ("bin/tool", b"#!/usr/bin/env python3\nprint(1)\n", "python"),
    ("bin/run", b"#!/usr/bin/node\n", "javascript"),
    ("README", b"hello", None), ("x.txt", None, None),
])
def test_detect_language(path, head, lang):
    assert detect_language(path, head) == lang


def test_registry_covers_required_languages_and_aliases():
    for name in ["python", "go", "java", "php", "cpp", "c", "csharp", "rust", "javascript",
                 "typescript", "ruby"]:
        lang = LANGUAGES[name]
        assert lang.extensions and lang.toolchain
    assert canonical("JS") == "javascript" and canonical("c++") == "cpp"
    with pytest.raises(BabelError, match="unknown language 'cobol'"):
        get_language("cobol")


def test_cli_unknown_command_is_clean(capsys):
    rc = main(["no-such-command"])
    assert rc != 0
    assert "Traceback" not in capsys.readouterr().err
