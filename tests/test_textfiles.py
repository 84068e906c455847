"""The shared raw-text walker: what it keeps, what it drops, and why (issue 13)."""

import json

import pytest

from babeltower.errors import BabelError
from babeltower.textfiles import parse_text_args, walk_text


@pytest.fixture
def cxx_tree(tmp_path):
    """A C++ include tree: extension-less standard headers, .h, .hpp, a binary, an empty
    file, a README and a Python file."""
    d = tmp_path / "include"
    (d / "bits").mkdir(parents=True)
    (d / "vector").write_text("#pragma once\nnamespace std { template <class T> class vector; }\n")
    (d / "iostream").write_text("#pragma once\n#include <ostream>\n")
    (d / "bits" / "c++config.h").write_text("#define _GLIBCXX_RELEASE 12\n")
    (d / "bits" / "ranges.hpp").write_text("namespace std::ranges {}\n")
    (d / "blob.o").write_bytes(b"\x7fELF\0\0\x01\x02")
    (d / "empty.h").write_text("")
    (d / "README.md").write_text("# headers\n")
    (d / "gen.py").write_text("print(1)\n")
    return d


def test_named_cpp_takes_headers_and_counts_the_rest(cxx_tree):
    w = walk_text(parse_text_args([f"cpp={cxx_tree}"]))
    names = sorted(f.name for f in w.kept["cpp"])
    # by hand: vector, iostream (no extension), c++config.h (.h), ranges.hpp
    assert names == ["c++config.h", "iostream", "ranges.hpp", "vector"]
    assert set(w.kept) == {"cpp"}
    assert w.n_seen == 8
    assert dict(w.dropped) == {"binary": 1, "empty": 1, "other language": 1, "unknown type": 1}
    line = w.summary()
    assert line.startswith("kept 4 of 8 text files (cpp: 4); dropped: ")
    assert "binary=1" in line and "\n" not in line
    assert json.loads(json.dumps(w.record()))["dropped"]["empty"] == 1


def test_unnamed_directory_detects_and_says_what_it_skipped(cxx_tree):
    w = walk_text(parse_text_args([str(cxx_tree)]))
    assert sorted(f.name for f in w.kept["cpp"]) == ["ranges.hpp"]
    assert sorted(f.name for f in w.kept["c"]) == ["c++config.h"]     # .h is C by default
    assert sorted(f.name for f in w.kept["python"]) == ["gen.py"]
    # vector, iostream and README.md are of no known type
    assert w.dropped["unknown type"] == 3
    w = walk_text(parse_text_args([str(cxx_tree)]), languages=["python"])
    assert w.dropped["not requested"] == 2 and w.n_kept == 1


def test_widening_is_only_for_c_family(tmp_path):
    d = tmp_path / "py"
    d.mkdir()
    (d / "LICENSE").write_text("MIT\n")
    (d / "a.py").write_text("x = 1\n")
    (d / "b.h").write_text("int x;\n")
    w = walk_text(parse_text_args([f"python={d}"]))
    assert [f.name for f in w.kept["python"]] == ["a.py"]
    assert w.dropped == {"unknown type": 1, "other language": 1}


def test_explicit_file_takes_the_named_language_and_missing_path_is_one_line(tmp_path):
    f = tmp_path / "snippet.txt"
    f.write_text("fn main() {}\n")
    assert walk_text(parse_text_args([f"rust={f}"])).kept["rust"] == [f]
    with pytest.raises(BabelError, match="text path not found"):
        walk_text(parse_text_args([f"cpp={tmp_path / 'nope'}"]))
    with pytest.raises(BabelError, match="unknown language"):
        parse_text_args([f"klingon={tmp_path}"])


def test_non_utf8_files_are_dropped_and_counted_even_when_named(tmp_path):
    """A Latin-1 file (valid bytes, not UTF-8) - named explicitly or inside a directory,
    the bad byte early or past the 4 KiB head - is dropped as "not UTF-8", never decoded
    with replacement characters into the text a model is scored on."""
    latin = tmp_path / "latin1.py"
    latin.write_bytes("x = 'café'\n".encode("latin-1"))
    late = tmp_path / "late.py"
    late.write_bytes(b"# ok\n" * 2000 + "s = 'crème'\n".encode("latin-1"))
    good = tmp_path / "good.py"
    good.write_text("s = 'crème'\n", encoding="utf-8")
    w = walk_text(parse_text_args([f"python={latin}", f"python={late}", f"python={good}"]))
    assert [f.name for f in w.kept["python"]] == ["good.py"]
    assert dict(w.dropped) == {"not UTF-8": 2}
    w = walk_text(parse_text_args([str(tmp_path)]))
    assert [f.name for f in w.kept["python"]] == ["good.py"] and w.dropped["not UTF-8"] == 2
