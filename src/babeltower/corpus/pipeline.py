"""``corpus build`` as datatrove pipelines: local (embedded), Slurm job arrays or Ray.

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
   (``babeltower.corpus.build.finalize``, shared with the builtin builder).

Why our MinHash and not datatrove's ``MinhashDedup*`` stages: theirs cannot give the
corpus our builder gives (docs/corpus.md lists the differences: word shingles of
normalised text vs our code-token 5-grams, their own hash family, fixed bucket
geometry, and no Jaccard confirmation of a bucket collision). The LSH here reproduces
``datasketch.MinHashLSH``'s bands (the same ``b`` x ``r`` for the threshold) and its
confirmation rule, so the clusters are the builtin builder's, for any number of tasks.
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

from babeltower.corpus.build import finalize
from babeltower.corpus.config import BuildConfig, EngineConfig
from babeltower.corpus.dedup import UnionFind
from babeltower.corpus.filters import content_filter_reason
from babeltower.corpus.knowledge import is_knowledge_source, iter_knowledge_inputs
from babeltower.corpus.scan import (TextSpill, item_language, item_text, language_reason,
                                    measure_item, minhash_signature)
from babeltower.corpus.sources import iter_inputs, probe_source, shard_of
from babeltower.errors import BabelError
from babeltower.io import atomic_write_json, refuse_existing, sha256_json

from datatrove.data import Document, DocumentsPipeline
from datatrove.pipeline.base import PipelineStep
from datatrove.pipeline.filters.base_filter import BaseFilter
from datatrove.pipeline.writers import JsonlWriter

STAGES = ("scan", "lsh", "final")
RECORD_FIELDS = ("source_index", "source", "path", "row", "package", "license", "version",
                 "group", "language", "bytes")
WORK_FORMAT = "babeltower-datatrove-work/1"


# ---------------------------------------------------------------- stage 1: scan

def ignore_sigint_in_pool_worker() -> None:
    """In a local executor's pool worker: Ctrl-C reaches the whole process group, and the
    driver answers it (one line, exit 130, the pool ended); a worker printing its own
    KeyboardInterrupt traceback would bury that line. Slurm/Ray tasks are main processes
    and keep their signals."""
    import signal

    import multiprocess

    if multiprocess.current_process().name != "MainProcess":
        signal.signal(signal.SIGINT, signal.SIG_IGN)


class SourceReader(PipelineStep):
    """Every input file or row of every source whose stable shard is this rank."""

    name = "babeltower sources"
    type = "📖 - READER"

    def __init__(self, sources: Sequence[str]):
        super().__init__()
        self.sources = [str(s) for s in sources]

    def run(self, data: DocumentsPipeline = None, rank: int = 0,
            world_size: int = 1) -> DocumentsPipeline:
        ignore_sigint_in_pool_worker()
        for si, s in enumerate(self.sources):
            knowledge = is_knowledge_source(s)
            for item in (iter_knowledge_inputs(s) if knowledge else iter_inputs(s)):
                if shard_of(item, world_size) != rank:
                    continue
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


def _atomic_npz(path: Path, **arrays) -> None:
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
            _atomic_npz(Path(self.folder) / f"{rank:05d}.npz",
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
        _atomic_npz(Path(self.folder) / f"{rank:05d}.npz",
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
                    overwrite: bool, extra_manifest: dict) -> dict[str, list[PipelineStep]]:
    def excluded(name: str) -> JsonlWriter:
        return JsonlWriter(str(work / "dropped" / name), output_filename="${rank}.jsonl",
                           compression=None, adapter=dropped_row)

    scan = [SourceReader(sources),
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


def work_dir_of(out: Path, engine: EngineConfig) -> Path:
    return Path(engine.work_dir) if engine.work_dir else out.parent / f".{out.name}.datatrove"


def _prepare_work(work: Path, fingerprint: dict) -> None:
    """Reuse the work dir of the same build (resume); start afresh for any other one or
    after a finished build."""
    meta = work / "build.json"
    if work.exists():
        same = False
        with contextlib.suppress(OSError, json.JSONDecodeError):
            same = json.loads(meta.read_text()) == fingerprint
        finished = (work / "logs" / "final" / "completions" / "00000").exists()
        if not same or finished:
            shutil.rmtree(work)
    if not work.exists():
        work.mkdir(parents=True)
        atomic_write_json(meta, fingerprint)


def build_corpus_datatrove(sources: Sequence[str | os.PathLike], out: str | os.PathLike,
                           config: BuildConfig | None = None,
                           engine: EngineConfig | None = None, overwrite: bool = False,
                           progress: bool = True, timings: dict | None = None) -> Path:
    """The corpus of ``build_corpus``, built by datatrove on ``engine.executor``.

    Local and Ray return when the corpus is written; Slurm returns once the three job
    arrays are submitted (the corpus appears at ``out`` when the last one finishes).
    Run it again after an interruption: finished tasks are skipped. ``timings``, if
    given, receives each stage's wall time in seconds (local and Ray).
    """
    import datatrove

    cfg = config or BuildConfig()
    engine = engine or EngineConfig(executor="local")
    if engine.executor == "builtin":
        raise BabelError("executor 'builtin' is build_corpus, not a datatrove executor")
    sources = [str(s) for s in sources]
    if not sources:
        raise BabelError("no --source given")
    out = Path(out).absolute()
    refuse_existing(out, overwrite)
    for s in sources:
        probe_source(s)  # a missing, unreadable or malformed source fails before any work
    work = work_dir_of(out, engine).absolute()
    fingerprint = {"format": WORK_FORMAT, "sources": sources, "out": str(out),
                   "tasks": engine.tasks,
                   "config": cfg.model_dump(mode="json", exclude={"workers"}),
                   "datatrove": datatrove.__version__ if hasattr(datatrove, "__version__")
                   else _dist_version("datatrove")}
    _prepare_work(work, fingerprint)
    extra = {"engine": {"name": "datatrove", "version": fingerprint["datatrove"],
                        "executor": engine.executor, "tasks": engine.tasks,
                        "work_sha256": sha256_json(fingerprint)}}
    pipelines = stage_pipelines(sources, cfg, out, work, overwrite, extra)
    if not cfg.dedup.near:
        del pipelines["lsh"]
    if engine.executor == "slurm":
        _submit_slurm(pipelines, engine, work)
        return out
    with _datatrove_logs(progress):
        if engine.executor == "local":
            _run_local(pipelines, engine, work, progress, timings)
        else:
            _run_ray(pipelines, engine, work, progress, timings)
    if not out.exists():
        raise BabelError(f"the datatrove build finished without writing {out} "
                         f"(task logs: {work / 'logs'})")
    shutil.rmtree(work, ignore_errors=True)
    return out


def _dist_version(name: str) -> str:
    from importlib.metadata import version

    return version(name)


def _tasks_of(stage: str, engine: EngineConfig) -> int:
    return 1 if stage == "final" else engine.tasks


def _say(progress: bool, msg: str) -> None:
    if progress:
        print(f"corpus build: {msg}", file=sys.stderr, flush=True)


def _run_local(pipelines: dict, engine: EngineConfig, work: Path, progress: bool,
               timings: dict | None) -> None:
    import time

    from datatrove.executor import LocalPipelineExecutor

    for stage, pipeline in pipelines.items():
        tasks = _tasks_of(stage, engine)
        workers = min(tasks, engine.workers or os.cpu_count() or 1)
        start = "fork" if sys.platform == "linux" else "spawn"
        executor = LocalPipelineExecutor(pipeline, tasks=tasks, workers=workers,
                                         start_method=start,
                                         logging_dir=str(work / "logs" / stage))
        done = tasks - len(executor.get_incomplete_ranks())
        _say(progress, f"stage {stage}: {tasks} task(s), {done} already done (resumed), "
                       f"on {workers} worker(s)" if done else
                       f"stage {stage}: {tasks} task(s) on {workers} worker(s)")
        t0 = time.perf_counter()
        executor.run()
        if timings is not None:
            timings[stage] = time.perf_counter() - t0


def _run_ray(pipelines: dict, engine: EngineConfig, work: Path, progress: bool,
             timings: dict | None) -> None:
    import time

    try:
        import ray
        from datatrove.executor.ray import RayPipelineExecutor
    except ImportError as e:
        raise BabelError("executor 'ray' needs Ray: pip install 'babeltower[ray]'") from e
    started = False
    if not ray.is_initialized():
        if engine.ray.address:
            ray.init(address=engine.ray.address, log_to_driver=False)
        else:  # a private local cluster, loopback only, for this build
            ray.init(num_cpus=min(engine.tasks, os.cpu_count() or 1), include_dashboard=False,
                     _node_ip_address="127.0.0.1", log_to_driver=False)
        started = True
    try:
        for stage, pipeline in pipelines.items():
            tasks = _tasks_of(stage, engine)
            _say(progress, f"stage {stage}: {tasks} Ray task(s)")
            t0 = time.perf_counter()
            RayPipelineExecutor(pipeline, tasks=tasks, cpus_per_task=engine.ray.cpus_per_task,
                                mem_per_cpu_gb=engine.ray.mem_per_cpu_gb,
                                logging_dir=str(work / "logs" / stage)).run()
            if timings is not None:
                timings[stage] = time.perf_counter() - t0
    finally:
        if started:
            ray.shutdown()


def _submit_slurm(pipelines: dict, engine: EngineConfig, work: Path) -> None:
    from datatrove.executor import SlurmPipelineExecutor

    s = engine.slurm
    activate = Path(sys.prefix) / "bin" / "activate"
    env = s.env_command or (f'source "{activate}"' if activate.is_file() else None)
    previous = None
    for stage, pipeline in pipelines.items():
        previous = SlurmPipelineExecutor(
            pipeline, tasks=_tasks_of(stage, engine), time=s.time, partition=s.partition,
            cpus_per_task=s.cpus_per_task, mem_per_cpu_gb=s.mem_per_cpu_gb,
            job_name=f"{s.job_name}-{stage}", env_command=env, sbatch_args=dict(s.sbatch_args),
            depends=previous, logging_dir=str(work / "logs" / stage),
            slurm_logs_folder=str(work / "logs" / stage / "slurm_logs"), qos=None,
            mail_type="NONE")
    previous.run()   # submits the chain: scan -> lsh -> final, each afterok the previous


@contextlib.contextmanager
def _datatrove_logs(progress: bool):
    """datatrove's task logs go to their files in the work dir only; the console gets our
    own one-line progress, never a task's traceback (the error itself reaches the caller
    as an exception, and the CLI prints it as one line)."""
    import datatrove.executor.base as base
    from datatrove.utils.logging import setup_default_logger
    from loguru import logger

    sinks: dict[int, int] = {}
    fmt = "{time:YYYY-MM-DD HH:mm:ss.SSS} | {level: <8} | {name}:{function}:{line} - {message}"

    def add_task_logger(logging_dir, rank, local_rank=0, node_rank=-1):
        logfile = logging_dir.open(f"logs/task_{rank:05d}.log", "w")
        sinks[id(logfile)] = logger.add(logfile, level="DEBUG", format=fmt, colorize=False)
        logger.info(f"Launching pipeline for {rank=}")
        return logfile

    def close_task_logger(logfile):
        logger.complete()
        with contextlib.suppress(ValueError, KeyError):
            logger.remove(sinks.pop(id(logfile)))
        logfile.close()

    saved = base.add_task_logger, base.close_task_logger
    logger.remove()
    base.add_task_logger, base.close_task_logger = add_task_logger, close_task_logger
    try:
        yield
    finally:
        base.add_task_logger, base.close_task_logger = saved
        setup_default_logger()
