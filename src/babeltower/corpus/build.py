"""``corpus build``: sources -> language -> filters -> exact + near dedup -> split -> files.

A pipeline of small steps:

1. ``iter_inputs`` enumerates every input file or row of every source (deterministic).
2. ``scan_item`` (in worker processes) detects the language, applies the filters and
   computes the sha256 and the MinHash signature of a kept file.
3. ``finalize`` runs over the WHOLE corpus: exact dedup, MinHash-LSH near dedup,
   the group-aware train/validation/test split, and writes the output directory.

Past one machine, the same steps run as datatrove pipelines on Slurm or Ray
(``babeltower.corpus.pipeline``: per-rank scan and LSH, then ``finalize``); the corpus is
identical to this builder's.
"""

from __future__ import annotations

import hashlib
import json
import multiprocessing as mp
import os
import re
import signal
import tempfile
import zlib
from collections import Counter, defaultdict
from pathlib import Path
from typing import Callable, Iterable, Sequence

import numpy as np

from babeltower.corpus.config import BuildConfig
from babeltower.corpus.filters import DROP_REASONS, content_filter_reason, decode_utf8, is_binary
from babeltower.corpus.knowledge import (KNOWLEDGE_PACKAGE, is_knowledge_source,
                                         iter_knowledge_inputs, knowledge_manifest)
from babeltower.corpus.sources import InputItem, iter_inputs, probe_source
from babeltower.errors import BabelError
from babeltower.io import (atomic_dir, atomic_write_json, provenance, refuse_existing,
                           sha256_file)
from babeltower.languages import canonical, detect_language
from babeltower.corpus.shards import SPLITS

from babeltower.corpus.corpusdir import CORPUS_FORMAT  # noqa: E402
MINHASH_SCHEME = "affine32"
MINHASH_SEED = 1  # fixed: signatures from different tasks/machines must be comparable
_TOKEN_RE = re.compile(r"\w+|[^\w\s]")


# ---------------------------------------------------------------- per-file work (step 2)

def shingle_hashes(text: str, k: int) -> np.ndarray:
    """32-bit hashes of the distinct k-grams of code tokens (identifiers, numbers,
    single punctuation characters).

    Tokens are hashed once (crc32) and each k-gram's hash is a polynomial of its tokens'
    hashes, computed with numpy: 2x faster than hashing joined k-gram strings with sha1
    (datasketch's default), and the same for every process and machine.
    """
    toks = _TOKEN_RE.findall(text)
    token_hash = {t: zlib.crc32(t.encode("utf-8")) for t in set(toks)}  # tokens repeat
    th = np.fromiter(map(token_hash.__getitem__, toks), dtype=np.uint64, count=len(toks))
    n = max(len(th) - k + 1, 1)
    acc = np.zeros(n, dtype=np.uint64)
    for j in range(min(k, len(th))):
        acc = acc * np.uint64(1_000_003) + th[j:j + n]  # wraps mod 2**64 by design
    return np.unique((acc ^ (acc >> np.uint64(32))) & np.uint64(0xFFFFFFFF))


def minhash_signature(text: str, num_perm: int, shingle_size: int) -> np.ndarray:
    from datasketch import MinHash

    # the shingles are already hashed to 32 bits: datasketch's hash function is identity
    m = MinHash(num_perm=num_perm, seed=MINHASH_SEED, scheme=MINHASH_SCHEME, hashfunc=int)
    m.update_batch(shingle_hashes(text, shingle_size).tolist())
    return m.hashvalues.astype(np.uint64)


def item_language(item: InputItem, head: bytes | None) -> str | None:
    """Language of an input: a row's own field, else its name/shebang (``head``)."""
    if item.language is not None:
        try:
            return canonical(item.language)
        except BabelError:
            return None
    lang = detect_language(item.path, head)
    # .h is C by default; inside a C++ package it is C++
    if lang == "c" and item.lang_hint == "cpp":
        lang = "cpp"
    return lang


def measure_item(item: InputItem) -> tuple[int, bytes | None]:
    """Size in bytes and, where the name alone does not tell the language, the first
    256 bytes (for a shebang). Reads no more of an on-disk file than that."""
    size = item.size
    head = None
    if item.file is not None:
        try:
            size = os.path.getsize(item.file)
            if item.language is None and detect_language(item.path) is None:
                with open(item.file, "rb") as f:
                    head = f.read(256)
        except OSError as e:
            raise BabelError(f"cannot read {item.file}: {e.strerror or e}") from e
    elif item.data is not None:
        head = item.data[:256]
        size = len(item.data)
    elif item.text is not None:
        head = item.text[:256].encode("utf-8", "replace")
        size = len(item.text.encode("utf-8", "replace"))
    return int(size or 0), head


def item_text(item: InputItem) -> tuple[str | None, str | None]:
    """(text, None), or (None, drop reason) for binary or non-UTF-8 content."""
    text = item.text
    if text is None:
        data = item.data
        if data is None:
            try:
                with open(item.file, "rb") as f:
                    data = f.read()
            except OSError as e:
                raise BabelError(f"cannot read {item.file}: {e.strerror or e}") from e
        if is_binary(data):
            return None, "binary"
        text = decode_utf8(data)
        if text is None:
            return None, "undecodable"
    elif "\x00" in text[:8192]:
        return None, "binary"
    return text, None


def language_reason(lang: str | None, cfg: BuildConfig) -> str | None:
    if lang is None:
        return "unknown_language"
    if cfg.languages is not None and lang not in cfg.languages:
        return "excluded_language"
    return None


def scan_item(item: InputItem, cfg: BuildConfig, source_index: int = 0) -> dict:
    """Language, filters, hash and MinHash of one input. Never raises for bad content."""
    rec = {"source_index": source_index, "source": item.source, "path": item.path,
           "row": item.row, "package": item.package, "license": item.license,
           "version": item.version, "group": item.group, "language": None, "bytes": 0,
           "status": "dropped", "reason": None, "sha256": None}
    rec["bytes"], head = measure_item(item)
    lang = rec["language"] = item_language(item, head)
    reason = language_reason(lang, cfg)
    if reason is None and rec["bytes"] > cfg.filters.max_bytes:
        reason = "too_large"
    text = None
    if reason is None:
        text, reason = item_text(item)
    if reason is None:
        reason = content_filter_reason(text, cfg.filters)
    if reason is not None:
        rec["reason"] = reason
        return rec
    rec.update(status="kept", text=text,
               sha256=hashlib.sha256(text.encode("utf-8")).hexdigest())
    if cfg.dedup.near:
        rec["minhash"] = minhash_signature(text, cfg.dedup.num_perm, cfg.dedup.shingle_size)
    return rec


_WORKER_CFG: BuildConfig | None = None


def _init_worker(cfg_json: str) -> None:
    global _WORKER_CFG
    # Ctrl-C reaches the whole process group: the parent stops the pool and reports it
    # once; workers printing their own KeyboardInterrupt tracebacks would bury that line.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    _WORKER_CFG = BuildConfig.model_validate_json(cfg_json)


def _scan_task(task: tuple[int, InputItem]) -> dict:
    return scan_item(task[1], _WORKER_CFG, task[0])


def _workers(n: int) -> int:
    return n if n > 0 else (os.cpu_count() or 1)


class TextSpill:
    """Kept texts on disk while the whole-corpus steps run, so memory holds only the
    per-file metadata and MinHash signatures (~1 kB per file), not the corpus."""

    def __init__(self, directory: str | os.PathLike):
        self.path = Path(directory) / "texts.bin"
        self._f = open(self.path, "w+b")
        self._end = 0

    def put(self, text: str) -> tuple[int, int]:
        data = text.encode("utf-8")
        self._f.seek(self._end)
        self._f.write(data)
        ref = (self._end, len(data))
        self._end += len(data)
        return ref

    def get(self, ref) -> str:
        offset, n = ref
        self._f.seek(int(offset))
        return self._f.read(int(n)).decode("utf-8")

    def close(self) -> None:
        self._f.close()


def record_text(rec: dict, spill: TextSpill | None) -> str:
    if rec.get("text") is not None:
        return rec["text"]
    if spill is None or rec.get("text_ref") is None:
        raise RuntimeError(f"text of {record_id(rec)} was not kept")
    return spill.get(rec["text_ref"])


def _spill(rec: dict, spill: TextSpill | None) -> dict:
    if spill is not None and rec.get("text") is not None:
        rec["text_ref"] = spill.put(rec.pop("text"))
    return rec


def scan_sources(sources: Sequence[str], cfg: BuildConfig, progress: bool = True,
                 spill: TextSpill | None = None) -> list[dict]:
    """Steps 1-2 for all inputs, on ``cfg.workers`` processes, in input order.
    With ``spill``, kept texts go to disk as they arrive (``record_text`` reads them)."""
    for s in sources:
        probe_source(str(s))  # a missing, unreadable or malformed source fails before any work

    def tasks() -> Iterable[tuple[int, InputItem]]:
        for si, s in enumerate(sources):
            if is_knowledge_source(s):
                continue  # scanned below, in this process
            for item in iter_inputs(str(s)):
                yield si, item

    from tqdm.auto import tqdm

    # disable=None: a bar on a terminal, silence in logs and pipes
    bar = tqdm(desc="scan files", unit=" files", disable=None if progress else True,
               mininterval=1.0)
    out: list[dict] = []
    n = _workers(cfg.workers)
    try:
        if n == 1:
            for si, item in tasks():
                out.append(_spill(scan_item(item, cfg, si), spill))
                bar.update()
        else:
            ctx = mp.get_context("fork") if "fork" in mp.get_all_start_methods() else mp.get_context()
            with ctx.Pool(n, initializer=_init_worker,
                          initargs=(cfg.model_dump_json(),)) as pool:
                for rec in pool.imap(_scan_task, tasks(), chunksize=16):
                    out.append(_spill(rec, spill))
                    bar.update()
    finally:
        bar.close()
    # injected knowledge documents: filters and sha only (no MinHash: they are exempt
    # from near dedup, their repetition is the point)
    no_near = cfg.model_copy(update={"dedup": cfg.dedup.model_copy(update={"near": False})})
    for si, s in enumerate(sources):
        if is_knowledge_source(s):
            out.extend(_spill(scan_item(item, no_near, si), spill)
                       for item in iter_knowledge_inputs(s))
    return out


# ---------------------------------------------------------------- whole-corpus work (step 3)

class UnionFind:
    """Union-find whose root is always the smallest index (a deterministic representative)."""

    def __init__(self, n: int):
        self.parent = list(range(n))

    def find(self, i: int) -> int:
        while self.parent[i] != i:
            self.parent[i] = self.parent[self.parent[i]]
            i = self.parent[i]
        return i

    def union(self, a: int, b: int) -> None:
        ra, rb = self.find(a), self.find(b)
        if ra != rb:
            lo, hi = min(ra, rb), max(ra, rb)
            self.parent[hi] = lo


def record_key(rec: dict) -> tuple:
    return (rec["source_index"], rec["path"], -1 if rec.get("row") is None else rec["row"])


def record_id(rec: dict) -> str:
    row = "" if rec.get("row") is None else f"#{rec['row']}"
    return f"{rec['source']}:{rec['path']}{row}"


def near_duplicate_clusters(signatures: list[np.ndarray], threshold: float,
                            num_perm: int) -> list[int]:
    """Cluster root (smallest member index) of every signature, via MinHash LSH.

    LSH proposes candidate pairs; a pair is joined only if its estimated Jaccard
    similarity (share of equal signature slots) is >= threshold.
    """
    from datasketch import LeanMinHash, MinHashLSH

    uf = UnionFind(len(signatures))
    if len(signatures) < 2:
        return [uf.find(i) for i in range(len(signatures))]
    lsh = MinHashLSH(threshold=threshold, num_perm=num_perm)
    hashes = [LeanMinHash(seed=MINHASH_SEED, hashvalues=s, scheme=MINHASH_SCHEME) for s in signatures]
    for i, h in enumerate(hashes):
        for j in lsh.query(h):
            if float(np.mean(signatures[i] == signatures[j])) >= threshold:
                uf.union(i, j)
        lsh.insert(i, h)
    return [uf.find(i) for i in range(len(signatures))]


def _group_key(rec: dict, group_by: str) -> str:
    pkg = rec.get("package") or Path(rec["source"]).name
    directory = f"{pkg}/{os.path.dirname(rec['path'])}"
    if group_by == "file":
        key = portable_id(rec)
    elif group_by == "package":
        key = rec.get("group") or pkg
    elif group_by == "directory":
        key = directory
    else:  # auto
        key = rec.get("group") or directory
    # a repository stays whole across languages; a directory/package is per language
    return key if rec.get("group") and group_by in ("auto", "package") \
        else f"{rec['language']}\0{key}"


def portable_id(rec: dict) -> str:
    """``record_id`` without the directory the source lives in: split assignment must not
    change when the same sources are read from another place (another workdir or clone)."""
    row = "" if rec.get("row") is None else f"#{rec['row']}"
    return f"{Path(str(rec['source'])).name}:{rec['path']}{row}"


def _stable_rank(seed: int, key: str) -> bytes:
    return hashlib.blake2b(f"{seed}\0{key}".encode(), digest_size=8).digest()


def assign_splits(kept: list[dict], cfg: BuildConfig, links: Iterable[tuple[int, int]] = ()) -> list[str]:
    """Split of every kept record: whole groups (and linked records) go to one split.

    Components (groups joined by ``links``, e.g. near-duplicate clusters) are ranked by a
    seeded hash and handed out greedily per language until validation and test reach
    their share of the language's bytes.
    """
    uf = UnionFind(len(kept))
    first_of_group: dict[str, int] = {}
    for i, rec in enumerate(kept):
        g = _group_key(rec, cfg.split.group_by)
        if g in first_of_group:
            uf.union(first_of_group[g], i)
        else:
            first_of_group[g] = i
    for a, b in links:
        uf.union(a, b)
    comp_members: dict[int, list[int]] = defaultdict(list)
    for i in range(len(kept)):
        comp_members[uf.find(i)].append(i)
    lang_bytes: Counter = Counter()
    for rec in kept:
        lang_bytes[rec["language"]] += rec["bytes"]
    targets = {"validation": cfg.split.validation, "test": cfg.split.test}
    filled: dict[str, Counter] = {s: Counter() for s in targets}
    comps = sorted(comp_members.items(),
                   key=lambda kv: _stable_rank(cfg.seed, portable_id(kept[kv[0]])))
    splits = ["train"] * len(kept)
    for root, members in comps:
        # a component can span languages (a repository): decide by its first file's
        # language, count its bytes for every language it has
        lang = kept[root]["language"]
        sizes: Counter = Counter()
        for i in members:
            sizes[kept[i]["language"]] += kept[i]["bytes"]
        choice = "train"
        for split, share in targets.items():
            target = share * lang_bytes[lang]
            if filled[split][lang] < target and filled[split][lang] + sizes[lang] <= 1.5 * target:
                choice = split
                break
        if choice != "train":
            filled[choice].update(sizes)
        for i in members:
            splits[i] = choice
    return splits


def _ledger_row(rec: dict) -> dict:
    return {k: rec.get(k) for k in ("source", "path", "row", "language", "package", "license",
                                    "bytes", "status", "split", "reason", "sha256",
                                    "duplicate_of")}


# long: dedup -> split -> write -> manifest of one atomic output; the steps share the
# record table, the clusters and the split map, which a split would pass around whole
def finalize(records: list[dict], cfg: BuildConfig, sources: Sequence[str], out: Path,
             overwrite: bool = False, extra_manifest: dict | None = None,
             spill: TextSpill | None = None,
             near_clusters: Callable[[list[dict]], list[int]] | None = None) -> Path:
    """Step 3 over the whole corpus; writes ``out`` atomically.

    ``near_clusters(kept)``: the cluster root (smallest member index) of every kept record
    after exact dedup; by default MinHash LSH over the records' ``minhash`` signatures here
    (the datatrove build passes the clusters its distributed LSH stage found).
    """
    import pandas as pd

    records = sorted(records, key=record_key)
    if not records:
        raise BabelError("no input files found in the sources")
    # injected knowledge documents skip dedup and the split: all of them go to train
    injected = [r for r in records if r.get("package") == KNOWLEDGE_PACKAGE]
    for r in injected:
        if r["status"] != "kept":
            raise BabelError(f"injected knowledge document {r['path']} was dropped "
                             f"({r['reason']}); relax the filters or change the templates")
        r["split"] = "train"
    kept = [r for r in records if r["status"] == "kept" and r.get("package") != KNOWLEDGE_PACKAGE]

    # exact dedup: first occurrence (in source/path order) wins
    if cfg.dedup.exact:
        first: dict[str, dict] = {}
        for r in kept:
            if r["sha256"] in first:
                r.update(status="dropped", reason="exact_duplicate",
                         duplicate_of=record_id(first[r["sha256"]]))
            else:
                first[r["sha256"]] = r
        kept = [r for r in kept if r["status"] == "kept"]

    links: list[tuple[int, int]] = []
    n_clusters = 0
    if cfg.dedup.near and kept:
        roots = near_clusters(kept) if near_clusters is not None else \
            near_duplicate_clusters([r["minhash"] for r in kept], cfg.dedup.threshold,
                                    cfg.dedup.num_perm)
        for i, root in enumerate(roots):
            kept[i]["near_cluster"] = record_id(kept[root])
            if root != i:
                if cfg.dedup.near_duplicates == "drop":
                    kept[i].update(status="dropped", reason="near_duplicate",
                                   duplicate_of=record_id(kept[root]))
                else:
                    links.append((root, i))
        n_clusters = sum(1 for size in Counter(roots).values() if size > 1)
        if cfg.dedup.near_duplicates == "drop":
            kept = [r for r in kept if r["status"] == "kept"]
        # (in group mode ``kept`` is unchanged, so ``links`` index into it)

    if not kept and not injected:
        reasons = Counter(r["reason"] for r in records)
        detail = ", ".join(f"{k}={v}" for k, v in reasons.most_common())
        raise BabelError(f"no files left after filtering ({len(records)} inputs: {detail})")

    for r, split in zip(kept, assign_splits(kept, cfg, links)):
        r["split"] = split
    kept = kept + injected

    languages: dict[str, dict] = {}
    for r in records:
        lang = r["language"] or "(unknown)"
        info = languages.setdefault(lang, {"inputs": 0, "input_bytes": 0, "dropped": {},
                                           "splits": {}})
        info["inputs"] += 1
        info["input_bytes"] += r["bytes"]
        if r["status"] == "kept":
            s = info["splits"].setdefault(r["split"], {"files": 0, "bytes": 0})
            s["files"] += 1
            s["bytes"] += r["bytes"]
        else:
            info["dropped"][r["reason"]] = info["dropped"].get(r["reason"], 0) + 1

    with atomic_dir(out, overwrite=overwrite) as tmp:
        files_sha: dict[str, str] = {}
        by_lang_split: dict[tuple[str, str], list[dict]] = defaultdict(list)
        for r in kept:
            by_lang_split[(r["language"], r["split"])].append(r)
        for lang in sorted({r["language"] for r in kept}):
            (tmp / lang).mkdir()
            for split in SPLITS:
                rows = by_lang_split.get((lang, split), [])
                p = tmp / lang / f"{split}.jsonl"
                with open(p, "w", encoding="utf-8") as f:
                    for r in rows:
                        f.write(json.dumps({
                            "text": record_text(r, spill),
                            "path": r["path"] if r.get("row") is None
                            else (r["path"] or f"row-{r['row']}"),
                            "source": r["source"], "package": r["package"],
                            "license": r["license"], "sha256": r["sha256"],
                        }, ensure_ascii=False) + "\n")
                files_sha[f"{lang}/{split}.jsonl"] = sha256_file(p)
        ledger = pd.DataFrame([_ledger_row(r) for r in records])
        ledger["row"] = ledger["row"].astype("Int64")
        ledger.to_parquet(tmp / "ledger.parquet", index=False)
        files_sha["ledger.parquet"] = sha256_file(tmp / "ledger.parquet")
        knowledge = knowledge_manifest(sources, injected, tmp)  # None without injected docs
        if knowledge:
            files_sha[knowledge["documents_file"]] = sha256_file(tmp / knowledge["documents_file"])
        dropped = Counter(r["reason"] for r in records if r["status"] != "kept")
        manifest = {
            "format": CORPUS_FORMAT,
            "inputs": len(records),
            "kept": len(kept),
            "dropped": {k: dropped[k] for k in DROP_REASONS if dropped.get(k)},
            "near_duplicate_clusters": n_clusters,
            "languages": {k: languages[k] for k in sorted(languages)},
            "splits": list(SPLITS),
            "sources": [str(s) for s in sources],
            "packages": _fetch_packages(sources),
            "ledger": "ledger.parquet",
            "files_sha256": files_sha,
            "config": cfg.model_dump(mode="json", exclude={"workers"}),
            "provenance": provenance(config=cfg.model_dump(mode="json"), seed=cfg.seed),
            **({"knowledge": knowledge} if knowledge else {}),
            **(extra_manifest or {}),
        }
        atomic_write_json(tmp / "manifest.json", manifest)
    return Path(out)


def _fetch_packages(sources: Sequence[str]) -> list[dict]:
    out = []
    for s in sources:
        p = Path(str(s)) / "sources.json"
        if p.is_file():
            try:
                out.extend(json.loads(p.read_text()).get("sources", []))
            except (json.JSONDecodeError, AttributeError):
                pass
    return out


# ---------------------------------------------------------------- entry points

def build_corpus(sources: Sequence[str | os.PathLike], out: str | os.PathLike,
                 config: BuildConfig | None = None, overwrite: bool = False,
                 progress: bool = True) -> Path:
    """Build a corpus directory on this machine (``cfg.workers`` processes).

    Returns ``out``. Output layout: ``out/<lang>/{train,validation,test}.jsonl``,
    ``out/ledger.parquet`` (one row per input file: kept -> split, dropped -> reason),
    ``out/manifest.json`` (counts per language and reason, sha256 of every file,
    config, provenance).
    """
    cfg = config or BuildConfig()
    sources = [str(s) for s in sources]
    if not sources:
        raise BabelError("no --source given")
    out = Path(out)
    refuse_existing(out, overwrite)
    out.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix=f".{out.name}.spill-", dir=out.parent) as d:
        spill = TextSpill(d)
        try:
            records = scan_sources(sources, cfg, progress=progress, spill=spill)
            return finalize(records, cfg, sources, out, overwrite=overwrite, spill=spill)
        finally:
            spill.close()
