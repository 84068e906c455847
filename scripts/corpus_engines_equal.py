"""Does the datatrove build give the serial reference builder's corpus, on real sources?

    .venv/bin/python scripts/corpus_engines_equal.py runs/default/data/corpus [--tasks 1 4]

Reads the sources and the build config from an existing corpus's manifest (e.g. the
default experiment's, built by ``make run``), rebuilds it with the serial reference
builder (``tests/corpus_reference.py``: the retired in-process builder, one input after
another) and with datatrove's local executor at each ``--tasks``, and compares: the kept files (path,
text), every input's status and drop reason, every kept file's split, the jsonl bytes
and the manifest's counts. Prints one table; exit status 1 on any difference.
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import tempfile
import time
from pathlib import Path


def _digests(corpus: Path) -> dict[str, str]:
    from babeltower.io import sha256_file

    return {p.relative_to(corpus).as_posix(): sha256_file(p) for p in sorted(corpus.rglob("*.jsonl"))}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("corpus", type=Path, help="a built corpus dir (its manifest names sources + config)")
    ap.add_argument("--tasks", type=int, nargs="+", default=[1, 4])
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--out", type=Path, default=None)
    args = ap.parse_args()

    import pandas as pd

    from babeltower.corpus.build import build_corpus
    from babeltower.corpus.config import BuildConfig, EngineConfig

    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
    from corpus_reference import reference_build

    m = json.loads((args.corpus / "manifest.json").read_text())
    sources = m["sources"]
    cfg = BuildConfig.model_validate({k: v for k, v in m["config"].items() if k != "workers"})
    work = args.out or Path(tempfile.mkdtemp(prefix="bt-engines-equal-"))
    work.mkdir(parents=True, exist_ok=True)
    builds = {}
    t0 = time.perf_counter()
    builds["serial"] = reference_build(sources, work / "serial", cfg)
    times = {"serial": time.perf_counter() - t0}
    for n in args.tasks:
        t0 = time.perf_counter()
        builds[f"datatrove-{n}"] = build_corpus(
            sources, work / f"datatrove-{n}", cfg,
            EngineConfig(executor="local", tasks=n, workers=args.workers), overwrite=True,
            progress=False)
        times[f"datatrove-{n}"] = time.perf_counter() - t0

    def summary(path: Path) -> dict:
        led = pd.read_parquet(path / "ledger.parquet")
        man = json.loads((path / "manifest.json").read_text())
        return {"ledger": led, "jsonl": _digests(path), "inputs": man["inputs"],
                "kept": man["kept"], "dropped": man["dropped"],
                "clusters": man["near_duplicate_clusters"]}

    ref = summary(builds["serial"])
    ok = True
    print(f"sources: {sources}")
    print(f"config (from {args.corpus / 'manifest.json'}): languages={cfg.languages} "
          f"seed={cfg.seed} split={cfg.split.model_dump()} dedup={cfg.dedup.model_dump()}")
    print()
    print("| build | time s | inputs | kept | near-dup clusters | dropped by reason | "
          "same status+reason | same split | same jsonl bytes |")
    print("| --- | --- | --- | --- | --- | --- | --- | --- | --- |")
    for name, path in builds.items():
        s = summary(path)
        cols = ["source", "path", "row", "status", "reason", "duplicate_of"]
        same_status = s["ledger"][cols].equals(ref["ledger"][cols])
        same_split = s["ledger"]["split"].equals(ref["ledger"]["split"])
        same_bytes = s["jsonl"] == ref["jsonl"]
        ok &= same_status and same_split and same_bytes and s["dropped"] == ref["dropped"]
        drops = ", ".join(f"{k}={v}" for k, v in s["dropped"].items())
        print(f"| {name} | {times[name]:.1f} | {s['inputs']} | {s['kept']} | {s['clusters']} | "
              f"{drops} | {same_status} | {same_split} | {same_bytes} |")
    existing = _digests(args.corpus)
    print(f"\nthe existing corpus at {args.corpus} has the same jsonl bytes as the serial "
          f"rebuild: {existing == ref['jsonl']}")
    if args.out is None:
        shutil.rmtree(work, ignore_errors=True)
    print("EQUAL" if ok else "DIFFERENT")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
