"""The corpus CLI end to end, bad input (one line, non-zero exit, no half-written
output) and fetch (stdlib catalog, a real Debian package, skipped languages)."""

from __future__ import annotations

import json
import os
import random
import sysconfig
from pathlib import Path

import pytest

from babeltower.cli import main
from babeltower.corpus.fetch import PackageSpec, fetch_corpus, parse_caps
from babeltower.corpus.shards import TokenShards
from babeltower.errors import BabelError

from test_corpus_build import make_tree, python_source


def _one_line_error(capsys, rc):
    # a build's progress lines (its stages, before the error) are not part of the error
    err = "\n".join(x for x in capsys.readouterr().err.strip().splitlines()
                    if not x.startswith("corpus build: "))
    assert rc != 0
    assert len(err.splitlines()) == 1 and err.startswith("babeltower: error:"), err
    assert "Traceback" not in err
    return err


def test_cli_build_tokenize_pack_stats(tmp_path, capsys):
    make_tree(tmp_path / "src")
    assert main(["corpus", "build", "--source", str(tmp_path / "src"), "--out",
                 str(tmp_path / "c"), "--languages", "python,go", "--workers", "1"]) == 0
    assert main(["tokenizer", "train", "--corpus", str(tmp_path / "c"), "--out",
                 str(tmp_path / "t"), "--vocab-size", "350"]) == 0
    assert main(["corpus", "pack", "--corpus", str(tmp_path / "c"), "--tokenizer",
                 str(tmp_path / "t"), "--out", str(tmp_path / "d"), "--workers", "1"]) == 0
    assert TokenShards(tmp_path / "d").languages == ["go", "python"]
    capsys.readouterr()
    assert main(["corpus", "stats", str(tmp_path / "d")]) == 0
    out = capsys.readouterr().out
    assert "python" in out and "near_duplicate=2" in out and "binary=1" in out
    # the same build as datatrove tasks (the cluster path: --executor slurm|ray)
    assert main(["corpus", "build", "--source", str(tmp_path / "src"), "--out",
                 str(tmp_path / "m"), "--languages", "python,go", "--workers", "1",
                 "--executor", "local", "--tasks", "2"]) == 0
    a = json.loads((tmp_path / "m" / "manifest.json").read_text())
    b = json.loads((tmp_path / "c" / "manifest.json").read_text())
    assert a["dropped"] == b["dropped"] and a["files_sha256"] == b["files_sha256"]


def test_bad_inputs_are_one_line_errors_without_output(tmp_path, capsys):
    out = tmp_path / "out"
    good = tmp_path / "good"
    (good / "p").mkdir(parents=True)
    (good / "p" / "a.py").write_text(python_source(random.Random(1)))
    cases = {}
    # missing path
    cases["missing"] = ["corpus", "build", "--source", str(tmp_path / "nope"), "--out", str(out)]
    # corrupt archive
    (tmp_path / "bad.zip").write_bytes(b"PK\x03\x04 this is not really a zip")
    cases["archive"] = ["corpus", "build", "--source", str(tmp_path / "bad.zip"), "--out", str(out)]
    # nothing left after filtering
    junk = tmp_path / "junk"
    junk.mkdir()
    (junk / "a.py").write_bytes(b"\x00\x01\x02")
    (junk / "b.py").write_text("   \n")
    cases["empty"] = ["corpus", "build", "--source", str(junk), "--out", str(out)]
    # unknown language
    cases["language"] = ["corpus", "build", "--source", str(good), "--out", str(out),
                         "--languages", "python,klingon"]
    # malformed JSONL row
    (tmp_path / "rows.jsonl").write_text('{"content": "x = 1\\n", "lang": "python"}\n'
                                         '{"content": "y = 2\\n", "lang": \n')
    cases["jsonl"] = ["corpus", "build", "--source", str(tmp_path / "rows.jsonl"), "--out", str(out)]
    # rows without a content column
    (tmp_path / "nocontent.jsonl").write_text('{"text": "x = 1\\n"}\n')
    cases["nocontent"] = ["corpus", "build", "--source", str(tmp_path / "nocontent.jsonl"),
                          "--out", str(out)]
    cases["executor"] = ["corpus", "build", "--source", str(good), "--out", str(out),
                         "--executor", "spark"]
    cases["stats"] = ["corpus", "stats", str(tmp_path / "nowhere")]
    cases["tokenizer"] = ["tokenizer", "train", "--corpus", str(good), "--out", str(out)]
    cases["pack"] = ["corpus", "pack", "--corpus", str(good), "--tokenizer", str(good),
                     "--out", str(out)]
    cases["fetch-lang"] = ["corpus", "fetch", "--out", str(out), "--languages", "cobol"]
    cases["fetch-cap"] = ["corpus", "fetch", "--out", str(out), "--max-mb-per-language", "x=1"]
    messages = {}
    for name, argv in cases.items():
        messages[name] = _one_line_error(capsys, main(argv))
        assert not out.exists(), name
        assert not [p for p in tmp_path.iterdir() if p.name.startswith(".out")], name
    assert "not found" in messages["missing"]
    assert "cannot read archive" in messages["archive"]
    assert "no files left after filtering" in messages["empty"]
    assert "binary=1" in messages["empty"] and "empty=1" in messages["empty"]
    assert "klingon" in messages["language"]
    assert "rows.jsonl" in messages["jsonl"]
    assert "content" in messages["nocontent"]
    # an existing output is not overwritten by accident
    assert main(["corpus", "build", "--source", str(good), "--out", str(out)]) == 0
    before = (out / "manifest.json").read_bytes()
    assert "already exists" in _one_line_error(
        capsys, main(["corpus", "build", "--source", str(good), "--out", str(out)]))
    assert (out / "manifest.json").read_bytes() == before


def test_parse_caps():
    assert parse_caps("4,python=40") == {"*": 4.0, "python": 40.0}
    assert parse_caps({"py": 2}) == {"*": None, "python": 2.0}
    assert parse_caps(None) == {"*": None}
    with pytest.raises(BabelError):
        parse_caps("python=-1")


def test_fetch_stdlib_cap_cache_and_skipped_language(tmp_path):
    catalog = {"python": [PackageSpec("python", "cpython-stdlib", "stdlib")]}
    out = fetch_corpus(tmp_path / "f", ["python", "ruby"], 0.3, cache_dir=tmp_path / "cache",
                       packages=catalog, progress=False)
    index = json.loads((out / "sources.json").read_text())
    (src,) = index["sources"]
    assert src["package"] == "cpython-stdlib" and src["license"] == "PSF-2.0"
    assert src["version"] == sysconfig.get_python_version() + "." + src["version"].split(".")[2]
    assert 0.2e6 < src["bytes"] <= 0.3e6
    files = [p for p in (out / "python").rglob("*") if p.is_file()]
    assert len(files) == src["files"]
    assert all(p.suffix in (".py", ".pyi") for p in files)
    assert not any(part in ("test", "tests", "site-packages") for p in files for part in p.parts)
    assert index["skipped"] == [{"language": "ruby", "package": None,
                                 "reason": "no default packages for this language"}]
    mtime = (out / "sources.json").stat().st_mtime_ns
    fetch_corpus(tmp_path / "f", ["python", "ruby"], 0.3, cache_dir=tmp_path / "cache",
                 packages=catalog, progress=False)  # cached: untouched
    assert (out / "sources.json").stat().st_mtime_ns == mtime
    with pytest.raises(BabelError, match="other settings"):
        fetch_corpus(tmp_path / "f", ["python"], 0.5, packages=catalog, progress=False)


@pytest.mark.slow
def _local_deb(debs: Path, name: str, version: str = "1.2-3") -> Path:
    """A tiny real Debian package built here with dpkg-deb --build: PHP sources under
    usr/share/php and a machine-readable copyright file (the license fetch records)."""
    from procs import run

    root = debs.parent / f"build-{name}"
    (root / "DEBIAN").mkdir(parents=True)
    (root / "DEBIAN" / "control").write_text(
        f"Package: {name}\nVersion: {version}\nArchitecture: all\n"
        "Maintainer: babeltower tests <tests@localhost>\nDescription: fixture\n")
    php = root / "usr" / "share" / "php" / "Fixture"
    php.mkdir(parents=True)
    rng = random.Random(0)
    for i in range(4):
        fns = "\n".join(f"    public function f{j}_{rng.randrange(10**6)}($x) {{ return $x * {j}; }}"
                        for j in range(8))
        (php / f"Thing{i}.php").write_text(f"<?php\nnamespace Fixture;\n\nclass Thing{i}\n{{\n"
                                           f"{fns}\n}}\n")
    doc = root / "usr" / "share" / "doc" / name
    doc.mkdir(parents=True)
    (doc / "copyright").write_text("Format: https://www.debian.org/doc/packaging-manuals/"
                                   "copyright-format/1.0/\n\nFiles: *\nLicense: MIT\n")
    debs.mkdir(parents=True, exist_ok=True)
    deb = debs / f"{name}_{version}_all.deb"
    done = run(["dpkg-deb", "--build", "--root-owner-group", str(root), str(deb)], timeout=60)
    assert done.returncode == 0, done.stderr
    return deb


def test_fetch_extracts_a_local_debian_package_then_build(tmp_path, monkeypatch):
    """The apt path of fetch without a network: a .deb built here sits in the cache, is
    extracted with dpkg-deb -x (version and license recorded) and built into a corpus;
    apt is a local stub, so a package that would need a download is reported as skipped,
    not fetched and not a crash. (`make run` downloads real packages.)"""
    import shutil

    if shutil.which("dpkg-deb") is None:
        pytest.fail("dpkg-deb is part of Debian-based CI images; install dpkg")
    cache = tmp_path / "cache"
    _local_deb(cache / "apt" / "debs", "php-babeltower-fixture")
    # apt-get and apt-cache are stubs that log their calls and know no package: nothing
    # can reach a mirror (dpkg-deb and tar stay the machine's own)
    bin_dir, calls = tmp_path / "bin", tmp_path / "apt-calls.log"
    bin_dir.mkdir()
    for tool in ("apt-get", "apt-cache"):
        (bin_dir / tool).write_text(f'#!/bin/sh\necho "{tool} $*" >> {calls}\nexit 100\n')
        (bin_dir / tool).chmod(0o755)
    monkeypatch.setenv("PATH", f"{bin_dir}:{os.environ['PATH']}")
    catalog = {"php": [PackageSpec("php", "php-babeltower-fixture", "apt", ("usr/share/php",)),
                       PackageSpec("php", "php-no-such-package-xyz", "apt", ("usr/share/php",))]}
    out = fetch_corpus(tmp_path / "f", ["php"], None, cache_dir=cache, packages=catalog,
                       progress=False)
    index = json.loads((out / "sources.json").read_text())
    (src,) = index["sources"]
    assert src["package"] == "php-babeltower-fixture"
    assert src["version"] == "1.2-3" and src["license"] == "MIT"
    (skipped,) = index["skipped"]
    assert skipped["package"] == "php-no-such-package-xyz"
    assert main(["corpus", "build", "--source", str(out), "--out", str(tmp_path / "c"),
                 "--workers", "1"]) == 0
    # apt was asked only about the package that is not in the cache, and never downloaded
    asked = calls.read_text().splitlines()
    assert "apt-cache policy php-no-such-package-xyz" in asked
    assert not [c for c in asked if "download" in c or "php-babeltower-fixture" in c], asked
    rows = [json.loads(x) for split in ("train", "validation", "test")
            if (tmp_path / "c" / "php" / f"{split}.jsonl").exists()
            for x in (tmp_path / "c" / "php" / f"{split}.jsonl").read_text().splitlines()]
    assert len(rows) == 4
    assert {r["package"] for r in rows} == {"php-babeltower-fixture"}
    assert {r["license"] for r in rows} == {"MIT"} and all("<?php" in r["text"] for r in rows)


def test_build_config_yaml(tmp_path, capsys):
    make_tree(tmp_path / "src")
    good = tmp_path / "good.yaml"
    good.write_text("build:\n  dedup: {threshold: 0.8, near_duplicates: group}\n"
                    "  split: {validation: 0.1, group_by: file}\n  filters: {max_bytes: 20000}\n")
    assert main(["corpus", "build", "--source", str(tmp_path / "src"), "--out",
                 str(tmp_path / "c"), "--config", str(good), "--workers", "1"]) == 0
    m = json.loads((tmp_path / "c" / "manifest.json").read_text())
    assert m["config"]["dedup"]["threshold"] == 0.8 and m["config"]["split"]["group_by"] == "file"
    assert "near_duplicate" not in m["dropped"] and m["dropped"]["too_large"] == 1
    for text in ("dedup: {threshold: 2}\n", "dedup: {thresh: 0.5}\n", "dedup: [\n"):
        bad = tmp_path / "bad.yaml"
        bad.write_text(text)
        err = _one_line_error(capsys, main(["corpus", "build", "--source", str(tmp_path / "src"),
                                            "--out", str(tmp_path / "c2"), "--config", str(bad)]))
        assert "bad.yaml" in err
        assert not (tmp_path / "c2").exists()
