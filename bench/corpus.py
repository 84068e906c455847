"""Corpus build throughput (MB/s) on >= 50 MB of real code, against a named peer.

    .venv/bin/python bench/corpus.py [--mb-per-language 10] [--workers 2] [--out DIR]
    .venv/bin/python bench/corpus.py --engines [--sources DIR ...] [--repeats 3]

``--engines``: the datatrove build (local executor, the one pipeline since the in-process
builder was retired) against that builder's serial form (``tests/corpus_reference.py``:
the same per-file steps and whole-corpus step, one input after another, no ranks; what
the retired builder did at 1 worker) on the same sources (the fetched ones, or
``--sources``): datatrove at 1 task (MB/s per task, one core) and at 2 tasks / 2 workers
(the machine), ``--repeats`` interleaved runs each, mean +- standard deviation, the
ratios datatrove/serial, and a check that every build gave the same corpus.

1. ``fetch_corpus`` (cached after the first run) gathers real code for 7 languages.
2. ``build_corpus`` over it (language detection, filters, sha256, MinHash, LSH, split,
   writing) - timed: input MB / s.
3. A tokenizer is trained (not timed) and ``pack_corpus`` (datatrove local, ``--workers``
   tasks) tokenizes the built corpus - timed: MB / s.
4. Peer, in the same run: the SAME input text (every fetched file, decoded) tokenized
   with ``datasets.Dataset.map(batched=True, num_proc=2)`` and the same tokenizer
   (``AutoTokenizer``) - MB / s.

Printed: the three rates and the ratios build/peer and pack/peer. The peer does only
tokenization; the build does far more per byte, so a ratio near or above 1 says the
whole cleaning pipeline costs about what tokenizing once costs.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--mb-per-language", type=float, default=10.0)
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--out", type=Path, default=None, help="work dir (default: a temp dir)")
    ap.add_argument("--fetch-dir", type=Path,
                    default=Path.home() / ".cache" / "babeltower" / "bench-fetch")
    ap.add_argument("--engines", action="store_true",
                    help="datatrove local vs the serial reference builder (see the module doc)")
    ap.add_argument("--sources", type=Path, nargs="*", default=None,
                    help="--engines: these sources instead of a fetch")
    ap.add_argument("--repeats", type=int, default=3)
    args = ap.parse_args()
    if args.engines:
        return compare_engines(args)

    from babeltower.corpus.build import build_corpus
    from babeltower.corpus.config import BuildConfig, EngineConfig, PackConfig, TokenizerConfig
    from babeltower.corpus.fetch import fetch_corpus
    from babeltower.corpus.pack import pack_corpus
    from babeltower.corpus.tokenizer import train_tokenizer

    work = args.out or Path(tempfile.mkdtemp(prefix="bt-bench-corpus-"))
    work.mkdir(parents=True, exist_ok=True)
    fetched = fetch_corpus(args.fetch_dir, None, args.mb_per_language, overwrite=True)
    files = [p for p in fetched.rglob("*") if p.is_file() and p.name != "sources.json"]
    total = sum(p.stat().st_size for p in files)
    print(f"fetched: {len(files)} files, {total / 1e6:.1f} MB "
          f"({', '.join(json.loads((fetched / 'sources.json').read_text())['languages'])})")
    if total < 50e6:
        print("warning: less than 50 MB fetched; raise --mb-per-language", file=sys.stderr)

    corpus = work / "corpus"
    shutil.rmtree(corpus, ignore_errors=True)
    t0 = time.perf_counter()
    build_corpus([fetched], corpus, BuildConfig(),
                 EngineConfig(tasks=args.workers, workers=args.workers), progress=False)
    t_build = time.perf_counter() - t0
    build_rate = total / 1e6 / t_build

    tok = train_tokenizer(corpus, work / "tok", TokenizerConfig(sample_mb_per_language=1.0),
                          overwrite=True, progress=False)
    kept = sum(p.stat().st_size for p in corpus.rglob("*.jsonl"))
    t0 = time.perf_counter()
    pack_corpus(corpus, tok, work / "data", PackConfig(), overwrite=True, progress=False,
                engine=EngineConfig(tasks=args.workers, workers=args.workers))
    t_pack = time.perf_counter() - t0
    corpus_text = 0
    for p in corpus.rglob("*.jsonl"):
        for line in open(p, encoding="utf-8"):
            corpus_text += len(json.loads(line)["text"].encode("utf-8"))
    pack_rate = corpus_text / 1e6 / t_pack

    import datasets
    from transformers import AutoTokenizer

    datasets.disable_progress_bars()
    texts = [p.read_bytes().decode("utf-8", "replace") for p in files]
    text_bytes = sum(len(t.encode("utf-8")) for t in texts)
    ds = datasets.Dataset.from_dict({"text": texts})
    hf_tok = AutoTokenizer.from_pretrained(str(tok))

    def tokenize(batch):
        return {"input_ids": hf_tok(batch["text"], add_special_tokens=False)["input_ids"]}

    t0 = time.perf_counter()
    ds.map(tokenize, batched=True, num_proc=2, remove_columns=["text"],
           load_from_cache_file=False, cache_file_name=str(work / "peer.arrow"))
    t_peer = time.perf_counter() - t0
    peer_rate = text_bytes / 1e6 / t_peer

    print(f"build  (babeltower build_corpus, datatrove local, {args.workers} tasks): {total / 1e6:.1f} MB in "
          f"{t_build:.1f} s = {build_rate:.2f} MB/s")
    print(f"pack   (babeltower pack_corpus, datatrove local, {args.workers} tasks): {corpus_text / 1e6:.1f} MB in "
          f"{t_pack:.1f} s = {pack_rate:.2f} MB/s")
    print(f"peer   (datasets.map(batched=True, num_proc=2) + same tokenizer): "
          f"{text_bytes / 1e6:.1f} MB in {t_peer:.1f} s = {peer_rate:.2f} MB/s")
    print(f"ratio build/peer = {build_rate / peer_rate:.2f}x   "
          f"ratio pack/peer = {pack_rate / peer_rate:.2f}x   (kept jsonl {kept / 1e6:.1f} MB)")
    if args.out is None:
        shutil.rmtree(work, ignore_errors=True)
    return 0


def _source_bytes(sources) -> tuple[int, int]:
    files = [p for s in sources for p in Path(s).rglob("*")
             if p.is_file() and p.name != "sources.json"]
    return len(files), sum(p.stat().st_size for p in files)


def _digest(corpus: Path) -> str:
    import hashlib

    h = hashlib.sha256()
    for p in sorted(corpus.rglob("*.jsonl")) + [corpus / "ledger.parquet"]:
        h.update(p.relative_to(corpus).as_posix().encode())
        h.update(p.read_bytes())
    return h.hexdigest()


def compare_engines(args) -> int:
    """datatrove local vs the serial reference: MB/s per task (1 task, 1 core) and on 2 tasks."""
    import statistics

    from babeltower.corpus.build import build_corpus
    from babeltower.corpus.config import BuildConfig, EngineConfig

    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
    from corpus_reference import reference_build

    work = args.out or Path(tempfile.mkdtemp(prefix="bt-bench-engines-"))
    work.mkdir(parents=True, exist_ok=True)
    sources = args.sources or [fetch_sources(args)]
    n_files, total = _source_bytes(sources)
    mb = total / 1e6
    print(f"sources: {', '.join(map(str, sources))}: {n_files} files, {mb:.1f} MB; "
          f"{os.cpu_count()} cores, load average {os.getloadavg()[0]:.1f}")

    def serial(n):
        return lambda out: reference_build(sources, out, BuildConfig())

    stage_s: dict = {}

    def datatrove(n):
        def run(out):
            t = {}
            build_corpus(sources, out, BuildConfig(),
                         EngineConfig(executor="local", tasks=n, workers=n),
                         progress=False, timings=t)
            for stage, sec in t.items():
                stage_s.setdefault((n, stage), []).append(sec)
        return run

    runs = {("serial", 1): serial(1), ("datatrove", 1): datatrove(1),
            ("datatrove", 2): datatrove(2)}
    rates: dict = {k: [] for k in runs}
    digests = set()
    for rep in range(args.repeats):
        for key, build in runs.items():   # interleaved: drifting load hits both alike
            out = work / f"{key[0]}-{key[1]}"
            shutil.rmtree(out, ignore_errors=True)
            t0 = time.perf_counter()
            build(out)
            dt = time.perf_counter() - t0
            rates[key].append(mb / dt)
            digests.add(_digest(out))
            print(f"  run {rep + 1}: {key[0]:9s} {key[1]} task(s)/worker(s): {dt:6.1f} s "
                  f"= {mb / dt:.2f} MB/s", flush=True)
    print()
    print("| build | tasks x workers | MB/s (mean +- sd, n runs) | MB/s per task |")
    print("| --- | --- | --- | --- |")
    for (name, n), r in rates.items():
        m, sd = statistics.mean(r), (statistics.stdev(r) if len(r) > 1 else float("nan"))
        print(f"| {name} | {n} x {n} | {m:.2f} +- {sd:.2f} ({len(r)}) | {m / n:.2f} |")
    for n in (1, 2):
        ratios = [d / b for d, b in zip(rates[("datatrove", n)], rates[("serial", 1)])]
        sd = statistics.stdev(ratios) if len(ratios) > 1 else float("nan")
        print(f"ratio datatrove at {n} task(s) / serial reference (1 core): "
              f"{statistics.mean(ratios):.2f} +- {sd:.2f} (per-run pairs)")
    print("datatrove stage wall times (mean s over runs):", ", ".join(
        f"{n} task(s) {stage} {statistics.mean(v):.1f}" for (n, stage), v in stage_s.items()))
    print(f"same corpus from every build: {len(digests) == 1}")
    if args.out is None:
        shutil.rmtree(work, ignore_errors=True)
    return 0 if len(digests) == 1 else 1


def fetch_sources(args) -> Path:
    from babeltower.corpus.fetch import fetch_corpus

    return fetch_corpus(args.fetch_dir, None, args.mb_per_language, overwrite=True)


if __name__ == "__main__":
    sys.exit(main())
