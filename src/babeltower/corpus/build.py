"""``corpus build``: sources -> language -> filters -> exact + near dedup -> split -> files,
as datatrove pipelines on its local executor (the default, embedded), Slurm or Ray.

Three datatrove stages, each a pipeline of small steps; every stage's tasks (ranks) leave
datatrove completion markers in the work dir, so a killed build resumes where it stopped:

1. **scan** (``tasks`` ranks, a stable 1/tasks of the inputs each, by a hash of source and
   path): ``SourceReader`` -> ``LanguageFilter`` -> ``SizeFilter`` -> ``DecodeFilter`` ->
   ``ContentFilter`` -> ``SignatureStep`` -> ``JsonlWriter`` (kept). Every filter has an
   exclusion writer that keeps the drop reason (``dropped/<filter>/``), so the ledger
   still accounts for every input. ``SignatureStep`` writes the sha256 and MinHash
   signature of each kept file (``signatures/``).
2. **lsh** (``tasks`` ranks, the LSH bands dealt round-robin): ``MinHashLSHEdges`` reads all
   signatures, buckets the files by its bands and writes the candidate pairs whose
   estimated Jaccard is >= threshold (``edges/``).
3. **final** (one rank): ``FinalizeCorpus`` - exact dedup, near-duplicate clusters from
   the edges, the group-aware split and the corpus directory with its manifest
   (``babeltower.corpus.finalize``).

Why our MinHash and not datatrove's ``MinhashDedup*`` stages: theirs cannot give the
corpus our builder gives (docs/corpus.md lists the differences: word shingles of
normalised text vs our code-token 5-grams, their own hash family, fixed bucket
geometry, and no Jaccard confirmation of a bucket collision). The LSH here reproduces
``datasketch.MinHashLSH``'s bands (the same ``b`` x ``r`` for the threshold) and its
confirmation rule, so the clusters are the same for any number of tasks (and the same
as the in-process builder's that this pipeline replaced: measured equal on the default
experiment's 32,289 inputs).
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import sys
import tempfile
from pathlib import Path
from typing import Iterator, Sequence

import numpy as np

from babeltower.corpus.config import BuildConfig, EngineConfig
from babeltower.corpus.dedup import UnionFind
from babeltower.corpus.engine import (datatrove_version, ignore_sigint_in_pool_worker,
                                      prepare_work, resolve_engine, run_job, work_dir_of,
                                      written_before)
from babeltower.corpus.filters import content_filter_reason
from babeltower.corpus.finalize import finalize
from babeltower.corpus.knowledge import is_knowledge_source, iter_knowledge_inputs
from babeltower.corpus.scan import (TextSpill, item_language, item_text, language_reason,
                                    measure_item, minhash_signature)
from babeltower.corpus.sources import iter_inputs, probe_source, shard_of
from babeltower.errors import BabelError
from babeltower.interrupts import raise_if_interrupted
from babeltower.io import refuse_existing, sha256_json

from datatrove.data import Document, DocumentsPipeline
from datatrove.pipeline.base import PipelineStep
from datatrove.pipeline.filters.base_filter import BaseFilter
from datatrove.pipeline.writers import JsonlWriter

STAGES = ("scan", "lsh", "final")
RECORD_FIELDS = ("source_index", "source", "path", "row", "package", "license", "version",
                 "group", "language", "bytes")
WORK_FORMAT = "babeltower-datatrove-work/1"
PROGRESS_EVERY_S = 10.0


# ---------------------------------------------------------------- stage 1: scan

def _inputs_of(source: str):
    return iter_knowledge_inputs(source) if is_knowledge_source(source) else iter_inputs(source)


class SourceReader(PipelineStep):
    """Every input file or row of every source whose stable shard is this rank. With
    ``progress``, a line every ``PROGRESS_EVERY_S`` seconds: the inputs this task read."""

    name = "babeltower sources"
    type = "📖 - READER"

    def __init__(self, sources: Sequence[str], progress: bool = False):
        super().__init__()
        self.sources = [str(s) for s in sources]
        self.progress = progress

    def run(self, data: DocumentsPipeline = None, rank: int = 0,
            world_size: int = 1) -> DocumentsPipeline:
        import time

        ignore_sigint_in_pool_worker()
        n, last = 0, time.monotonic()
        for si, s in enumerate(self.sources):
            knowledge = is_knowledge_source(s)
            for item in _inputs_of(s):
                if shard_of(item, world_size) != rank:
                    continue
                raise_if_interrupted()   # in-process (one worker): a swallowed Ctrl-C stops it
                n += 1
                if self.progress and time.monotonic() - last >= PROGRESS_EVERY_S:
                    last = time.monotonic()
                    print(f"corpus build: scan task {rank + 1}/{world_size}: {n} inputs read",
                          file=sys.stderr, flush=True)
                self.stat_update("documents")
                yield Document(text="", id=f"{si}:{item.path}#{item.row}", metadata={
                    "source_index": si, "source": item.source, "path": item.path,
                    "row": item.row, "package": item.package, "license": item.license,
                    "version": item.version, "group": item.group, "language": None,
                    "bytes": 0, "knowledge": knowledge, "_item": item})


class LanguageFilter(BaseFilter):
    """unknown_language / excluded_language (also measures the size)."""

    name = "language"

    def __init__(self, cfg: BuildConfig, exclusion_writer=None):
        super().__init__(exclusion_writer)
        self.cfg = cfg

    def filter(self, doc: Document):
        item = doc.metadata["_item"]
        doc.metadata["bytes"], head = measure_item(item)
        lang = doc.metadata["language"] = item_language(item, head)
        reason = language_reason(lang, self.cfg)
        return (False, reason) if reason else True


class SizeFilter(BaseFilter):
    name = "too_large"

    def __init__(self, max_bytes: int, exclusion_writer=None):
        super().__init__(exclusion_writer)
        self.max_bytes = max_bytes

    def filter(self, doc: Document):
        return (False, "too_large") if doc.metadata["bytes"] > self.max_bytes else True


class DecodeFilter(BaseFilter):
    """binary / undecodable; a kept document gets its text here."""

    name = "decode"

    def filter(self, doc: Document):
        text, reason = item_text(doc.metadata["_item"])
        if reason:
            return False, reason
        doc.text = text
        return True


class ContentFilter(BaseFilter):
    """empty / generated / minified / low_alphanumeric (``filters.content_filter_reason``)."""

    name = "content"

    def __init__(self, cfg: BuildConfig, exclusion_writer=None):
        super().__init__(exclusion_writer)
        self.cfg = cfg

    def filter(self, doc: Document):
        reason = content_filter_reason(doc.text, self.cfg.filters)
        return (False, reason) if reason else True


def atomic_npz(path: Path, **arrays) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            np.savez(f, **arrays)
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise


class SignatureStep(PipelineStep):
    """sha256 of every kept text; MinHash signature of every kept file that near dedup
    considers (injected knowledge documents are exempt), saved per rank."""

    name = "minhash signature"
    type = "🫂 - DEDUP"

    def __init__(self, cfg: BuildConfig, folder: str):
        super().__init__()
        self.cfg = cfg
        self.folder = folder

    def run(self, data: DocumentsPipeline, rank: int = 0, world_size: int = 1) -> DocumentsPipeline:
        import hashlib

        shas: list[str] = []
        sigs: list[np.ndarray] = []
        d = self.cfg.dedup
        for doc in data:
            sha = hashlib.sha256(doc.text.encode("utf-8")).hexdigest()
            doc.metadata.update(sha256=sha, status="kept", reason=None)
            if d.near and not doc.metadata["knowledge"]:
                with self.track_time():
                    sigs.append(minhash_signature(doc.text, d.num_perm, d.shingle_size))
                shas.append(sha)
            yield doc
        if d.near:
            atomic_npz(Path(self.folder) / f"{rank:05d}.npz",
                        sha=np.array(shas, dtype="S64"),
                        sig=np.array(sigs, dtype=np.uint64).reshape(len(sigs), d.num_perm))


def _record(metadata: dict) -> dict:
    return {k: metadata.get(k) for k in RECORD_FIELDS}


def kept_row(self, doc: Document) -> dict:   # a JsonlWriter adapter (bound to the writer)
    return {**_record(doc.metadata), "status": "kept", "reason": None,
            "sha256": doc.metadata["sha256"], "text": doc.text}


def dropped_row(self, doc: Document) -> dict:
    return {**_record(doc.metadata), "status": "dropped",
            "reason": doc.metadata["filter_reason"], "sha256": None}


# ---------------------------------------------------------------- stage 2: LSH

def lsh_bands(threshold: float, num_perm: int) -> list[tuple[int, int]]:
    """The band ranges ``datasketch.MinHashLSH`` uses for this threshold (its optimal
    b x r for equal false-positive/negative weights)."""
    from datasketch import MinHashLSH

    return [tuple(map(int, r)) for r in MinHashLSH(threshold=threshold, num_perm=num_perm).hashranges]


class MinHashLSHEdges(PipelineStep):
    """This rank's share of the LSH bands: files whose signatures agree on a whole band
    are candidates; a candidate pair whose estimated Jaccard (share of equal signature
    slots) is >= threshold is an edge of the near-duplicate graph."""

    name = "minhash lsh"
    type = "🫂 - DEDUP"

    def __init__(self, cfg: BuildConfig, signatures: str, folder: str):
        super().__init__()
        self.cfg = cfg
        self.signatures = signatures
        self.folder = folder

    def run(self, data: DocumentsPipeline = None, rank: int = 0,
            world_size: int = 1) -> DocumentsPipeline:
        ignore_sigint_in_pool_worker()
        shas, sigs = load_signatures(self.signatures)
        threshold = self.cfg.dedup.threshold
        edges: set[tuple[int, int]] = set()
        for k, (a, b) in enumerate(lsh_bands(threshold, self.cfg.dedup.num_perm)):
            if k % world_size != rank or len(shas) < 2:
                continue
            band = np.ascontiguousarray(sigs[:, a:b])
            keys = band.view(np.dtype((np.void, band.itemsize * (b - a)))).ravel()
            _, inverse, counts = np.unique(keys, return_inverse=True, return_counts=True)
            order = np.argsort(inverse, kind="stable")
            bounds = np.cumsum(counts)[:-1]
            for members in np.split(order, bounds):
                if len(members) < 2:
                    continue
                members = np.sort(members)
                for x in range(len(members) - 1):
                    rest = members[x + 1:]
                    agree = np.mean(sigs[rest] == sigs[members[x]], axis=1)
                    i = int(members[x])
                    edges.update((i, int(j)) for j in rest[agree >= threshold])
                self.stat_update("buckets")
        pairs = np.array(sorted(edges), dtype=np.int64).reshape(-1, 2)
        self.stat_update("edges", value=len(pairs))
        atomic_npz(Path(self.folder) / f"{rank:05d}.npz",
                    a=shas[pairs[:, 0]] if len(pairs) else np.array([], dtype="S64"),
                    b=shas[pairs[:, 1]] if len(pairs) else np.array([], dtype="S64"))
        if data:
            yield from data


def load_signatures(folder: str | os.PathLike) -> tuple[np.ndarray, np.ndarray]:
    """Distinct shas (sorted) and their signatures over all ranks' signature files
    (exact copies have equal signatures: one stands for all)."""
    shas, sigs = [], []
    for p in sorted(Path(folder).glob("*.npz")):
        with np.load(p) as z:
            shas.append(z["sha"])
            sigs.append(z["sig"])
    if not shas:
        return np.array([], dtype="S64"), np.zeros((0, 0), dtype=np.uint64)
    sha = np.concatenate(shas)
    sig = np.concatenate(sigs)
    uniq, first = np.unique(sha, return_index=True)
    return uniq, sig[first]


# ---------------------------------------------------------------- stage 3: final

def _read_jsonl(path: Path) -> Iterator[dict]:
    with open(path, encoding="utf-8") as f:
        for line in f:
            yield json.loads(line)


class FinalizeCorpus(PipelineStep):
    """Exact dedup, near-duplicate clusters from the LSH edges, split, corpus directory."""

    name = "babeltower corpus"
    type = "💽 - WRITER"

    def __init__(self, sources: Sequence[str], cfg: BuildConfig, out: str, work: str,
                 overwrite: bool, extra_manifest: dict):
        super().__init__()
        self.sources = list(sources)
        self.cfg = cfg
        self.out = out
        self.work = work
        self.overwrite = overwrite
        self.extra_manifest = extra_manifest

    def run(self, data: DocumentsPipeline = None, rank: int = 0,
            world_size: int = 1) -> DocumentsPipeline:
        ignore_sigint_in_pool_worker()
        work = Path(self.work)
        with tempfile.TemporaryDirectory(prefix=".spill-", dir=work) as d:
            spill = TextSpill(d)
            try:
                records = []
                for p in sorted((work / "kept").glob("*.jsonl")):
                    for rec in _read_jsonl(p):
                        rec["text_ref"] = spill.put(rec.pop("text"))
                        records.append(rec)
                for p in sorted((work / "dropped").rglob("*.jsonl")):
                    records.extend(_read_jsonl(p))
                edges = []
                for p in sorted((work / "edges").glob("*.npz")):
                    with np.load(p) as z:
                        edges.extend(zip(z["a"].tolist(), z["b"].tolist()))
                self.stat_update("inputs", value=len(records))
                finalize(records, self.cfg, self.sources, Path(self.out),
                         overwrite=self.overwrite, extra_manifest=self.extra_manifest,
                         spill=spill, near_clusters=lambda kept: clusters_from_edges(kept, edges))
            finally:
                spill.close()
        for sub in ("kept", "dropped", "signatures", "edges"):  # the corpus holds it all now
            shutil.rmtree(work / sub, ignore_errors=True)
        if data:
            yield from data


def clusters_from_edges(kept: list[dict], edges: list[tuple[bytes, bytes]]) -> list[int]:
    """Cluster root (smallest member index) of every kept record, given the LSH edges
    between distinct texts (keyed by sha256); ``kept`` holds one record per text."""
    index = {r["sha256"].encode(): i for i, r in enumerate(kept)}
    uf = UnionFind(len(kept))
    for a, b in edges:
        if a in index and b in index:
            uf.union(index[a], index[b])
    return [uf.find(i) for i in range(len(kept))]


# ---------------------------------------------------------------- the build

def stage_pipelines(sources: Sequence[str], cfg: BuildConfig, out: Path, work: Path,
                    overwrite: bool, extra_manifest: dict,
                    progress: bool = False) -> dict[str, list[PipelineStep]]:
    def excluded(name: str) -> JsonlWriter:
        return JsonlWriter(str(work / "dropped" / name), output_filename="${rank}.jsonl",
                           compression=None, adapter=dropped_row)

    scan = [SourceReader(sources, progress),
            LanguageFilter(cfg, exclusion_writer=excluded("language")),
            SizeFilter(cfg.filters.max_bytes, exclusion_writer=excluded("too_large")),
            DecodeFilter(exclusion_writer=excluded("decode")),
            ContentFilter(cfg, exclusion_writer=excluded("content")),
            SignatureStep(cfg, str(work / "signatures")),
            # uncompressed: an intermediate the final stage reads once; gzip would cost CPU
            JsonlWriter(str(work / "kept"), output_filename="${rank}.jsonl", compression=None,
                        adapter=kept_row)]
    lsh = [MinHashLSHEdges(cfg, str(work / "signatures"), str(work / "edges"))]
    final = [FinalizeCorpus(sources, cfg, str(out), str(work), overwrite, extra_manifest)]
    return {"scan": scan, "lsh": lsh, "final": final}


def build_corpus(sources: Sequence[str | os.PathLike], out: str | os.PathLike,
                 config: BuildConfig | None = None, engine: EngineConfig | None = None,
                 overwrite: bool = False, progress: bool = True,
                 timings: dict | None = None) -> Path:
    """Build a corpus directory from ``sources`` on ``engine.executor`` (default: datatrove's
    local executor, one task per core).

    Output layout: ``out/<lang>/{train,validation,test}.jsonl``, ``out/ledger.parquet`` (one
    row per input file: kept -> split, dropped -> reason), ``out/manifest.json`` (counts
    per language and reason, sha256 of every file, config, provenance). The corpus is
    the same for any executor and number of tasks.

    Local and Ray return when the corpus is written; Slurm returns once the three job
    arrays are submitted (the corpus appears at ``out`` when the last one finishes). An
    interrupted build leaves no ``out``, only its work dir: run it again and the finished
    tasks are skipped. ``timings``, if given, receives each stage's wall time in seconds.
    """
    cfg = config or BuildConfig()
    engine = resolve_engine(engine)
    sources = [str(s) for s in sources]
    if not sources:
        raise BabelError("no --source given")
    out = Path(out).absolute()
    work = work_dir_of(out, engine).absolute()
    fingerprint = {"format": WORK_FORMAT, "sources": sources, "out": str(out),
                   "tasks": engine.tasks, "config": cfg.model_dump(mode="json"),
                   "datatrove": datatrove_version()}
    if written_before(out, work, fingerprint):
        return out    # killed between the final stage's rename and its completion marker
    refuse_existing(out, overwrite)
    for s in sources:
        probe_source(s)  # a missing, unreadable or malformed source fails before any work
    if not any(next(_inputs_of(s), None) is not None for s in sources):
        raise BabelError("no input files found in the sources")   # before any stage starts
    prepare_work(work, fingerprint, last_stage="final")
    extra = {"engine": {"name": "datatrove", "version": fingerprint["datatrove"],
                        "executor": engine.executor, "tasks": engine.tasks,
                        "work_sha256": sha256_json(fingerprint)}}
    pipelines = stage_pipelines(sources, cfg, out, work, overwrite, extra, progress)
    if not cfg.dedup.near:
        del pipelines["lsh"]
    return run_job(pipelines, engine, work, out, "corpus build", single=("final",),
                   progress=progress, timings=timings)
