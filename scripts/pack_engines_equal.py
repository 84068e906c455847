"""Is the datatrove pack byte-identical for any number of tasks, and to a reference pack?

    .venv/bin/python scripts/pack_engines_equal.py runs/default/data/corpus \\
        runs/default/data/tokenizer [--reference runs/default/data/data] [--tasks 1 3]

Packs the corpus with the tokenizer on datatrove's local executor at each ``--tasks``
and compares every file of the data dirs by sha256 - with each other and with
``--reference`` (e.g. a data dir packed earlier, by make run or by the retired
in-process packer) - except ``manifest.json``, which is compared as JSON without the
entries that say how and when it was made (``provenance``, ``engine``, ``config``: the
retired packer's config had a ``workers`` field) and without the dir names it records.
Prints one table; exit status 1 on any difference.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

HOW_MADE = ("provenance", "engine", "config", "corpus")


def digests(data: Path) -> dict[str, str]:
    from babeltower.io import sha256_file

    return {p.relative_to(data).as_posix(): sha256_file(p) for p in sorted(data.rglob("*"))
            if p.is_file() and p.name != "manifest.json"}


def manifest_content(data: Path) -> dict:
    m = json.loads((data / "manifest.json").read_text())
    m["tokenizer"] = {k: v for k, v in m["tokenizer"].items() if k != "source"}
    return {k: v for k, v in m.items() if k not in HOW_MADE}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("corpus", type=Path)
    ap.add_argument("tokenizer", type=Path)
    ap.add_argument("--reference", type=Path, default=None, help="a packed data dir to equal")
    ap.add_argument("--tasks", type=int, nargs="+", default=[1, 3])
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--out", type=Path, default=None, help="where the packs go (default: a temp dir)")
    args = ap.parse_args()

    from babeltower.corpus.config import EngineConfig
    from babeltower.corpus.pack import pack_corpus

    work = args.out or Path(tempfile.mkdtemp(prefix="bt-pack-equal-"))
    packs, times = {}, {}
    if args.reference:
        packs["reference"] = args.reference
    for n in args.tasks:
        t0 = time.perf_counter()
        packs[f"datatrove-{n}"] = pack_corpus(
            args.corpus, args.tokenizer, work / f"datatrove-{n}",
            engine=EngineConfig(executor="local", tasks=n, workers=args.workers),
            overwrite=True, progress=False)
        times[f"datatrove-{n}"] = time.perf_counter() - t0
    first = next(iter(packs))
    ref_files, ref_manifest = digests(packs[first]), manifest_content(packs[first])
    ok = True
    print(f"corpus: {args.corpus}  tokenizer: {args.tokenizer}  compared with: {first}")
    print()
    print("| pack | time s | files | documents | tokens | same files (sha256) | same manifest |")
    print("| --- | --- | --- | --- | --- | --- | --- |")
    for name, path in packs.items():
        files, man = digests(path), manifest_content(path)
        same_files, same_manifest = files == ref_files, man == ref_manifest
        ok &= same_files and same_manifest
        docs = sum(s["documents"] for lang in man["languages"].values() for s in lang.values())
        toks = sum(s["tokens"] for lang in man["languages"].values() for s in lang.values())
        t = f"{times[name]:.1f}" if name in times else "-"
        print(f"| {name} | {t} | {len(files)} | {docs} | {toks} | {same_files} | {same_manifest} |")
        if not same_files:
            diff = sorted(k for k in set(files) | set(ref_files) if files.get(k) != ref_files.get(k))
            print(f"  differing files: {diff[:10]}")
    print(f"\npacks in {work}")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
