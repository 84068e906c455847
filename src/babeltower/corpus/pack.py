"""``corpus pack``: tokenize every language/split of a built corpus into token shards,
as datatrove stages on its local executor (the default, embedded), Slurm or Ray.

Writes the layout documented in ``babeltower.corpus.shards`` (``TokenShards`` reads it),
copies the tokenizer into ``DATA/tokenizer`` and records in ``DATA/manifest.json`` the
counts and sha256 of every shard, the tokenizer, the corpus manifest's sha256, a
summary of the corpus (inputs and drops by reason per language) and the engine, so
``corpus stats`` shows the whole story from a packed directory alone.

Two datatrove stages; every task leaves a completion marker in the work dir
(``.<out>.datatrove-pack``), so a killed pack resumes where it stopped:

1. **tokenize** (``tasks`` ranks): ``CorpusSliceReader`` (this rank's contiguous slice of
   every language/split file: document i of n goes to rank floor(i * tasks / n)) ->
   ``TokenizeStep`` (HF ``tokenizers``, ``encode_batch`` of ``batch_docs`` documents, no
   special tokens) -> ``RankShardWriter`` (this rank's shards, ``ShardWriter``, and the
   knowledge documents it saw with their rank-local row).
2. **merge** (one rank): ``MergeShards`` concatenates the ranks' shards in rank order
   (renumbering token starts and knowledge rows) into ``out`` atomically, copies the
   tokenizer and writes the manifest.

Slices are contiguous and merged in rank order, so documents keep the corpus's order
and a pack is byte-identical for any number of tasks (tests/test_corpus_pack_pipeline.py).

Format ``babeltower-data/2`` adds document identity: ``<lang>/<split>.paths.jsonl`` and
``knowledge.jsonl``, the injected knowledge documents with their row in the shards and
the token span of each fact's rendering (``fact_char_spans``), so a sampler can leave
them out and exposures can be counted from what a run actually reads.
"""

from __future__ import annotations

import json
import os
import shutil
import sys
import time
from pathlib import Path
from typing import Iterator, Sequence

import numpy as np

from babeltower.corpus.config import EngineConfig, PackConfig
from babeltower.corpus.corpusdir import CorpusDir
from babeltower.corpus.engine import (datatrove_version, ignore_sigint_in_pool_worker,
                                      prepare_work, resolve_engine, run_job, work_dir_of,
                                      written_before)
from babeltower.corpus.shards import (KNOWLEDGE_INDEX, PATH_KEYS, SPLITS, ShardWriter,
                                      dtype_for_vocab, write_manifest)
from babeltower.corpus.tokenizer import load_tokenizer_meta
from babeltower.errors import BabelError
from babeltower.interrupts import raise_if_interrupted
from babeltower.io import atomic_dir, provenance, refuse_existing, sha256_file, sha256_json

from datatrove.data import Document, DocumentsPipeline
from datatrove.pipeline.base import PipelineStep

DATA_FORMAT = "babeltower-data/2"   # /1 had no paths.jsonl / knowledge.jsonl (still readable)
# how a fact's rendering is found in an injected document (recorded in the manifest)
FACT_SPAN_RULE = ("an injected document is its header (optional) and one rendering per fact, "
                  "in the order of its facts, separated by blank lines; a fact's span is its "
                  "rendering without surrounding whitespace, in tokens: every token whose "
                  "characters overlap it")
STAGES = ("tokenize", "merge")
WORK_FORMAT = "babeltower-datatrove-pack-work/1"
PROGRESS_EVERY_S = 10.0

def fact_char_spans(text: str, n_facts: int) -> list[tuple[int, int]] | None:
    """Character ``[start, end)`` of each fact's rendering in an injected document, or None.

    ``make_documents`` writes a document as ``header + "\\n".join(renderings)`` where the
    header (empty or ending in a blank line) and every rendering hold no blank line and
    every rendering ends with a newline, so the non-blank pieces between blank lines are
    the header (if any) and then one rendering per fact, in the order of ``facts``. Each
    span is stripped of surrounding whitespace. None when the pieces are not ``n_facts``
    (or ``n_facts`` + a header): the document is not of that shape.
    """
    spans: list[tuple[int, int]] = []
    pos = 0
    for piece in text.split("\n\n"):
        body = piece.strip()
        if body:
            start = pos + len(piece) - len(piece.lstrip())
            spans.append((start, start + len(body)))
        pos += len(piece) + 2
    if len(spans) == n_facts + 1:
        spans = spans[1:]
    return spans if len(spans) == n_facts and n_facts > 0 else None


def token_spans(offsets: list[tuple[int, int]], char_spans) -> list[list[int]]:
    """``[first, end)`` token indices of each character span: every token whose characters
    ``[a, b)`` overlap it."""
    starts = np.asarray([a for a, _ in offsets], dtype=np.int64)
    ends = np.asarray([b for _, b in offsets], dtype=np.int64)
    out = []
    for cs, ce in char_spans:
        hit = np.flatnonzero((starts < ce) & (ends > cs))
        if hit.size == 0:
            raise BabelError(f"no token covers characters [{cs}, {ce})")
        out.append([int(hit[0]), int(hit[-1]) + 1])
    return out



def encode_documents(texts: list[str], tokenizer_dir: str | os.PathLike) -> list[np.ndarray]:
    """Token ids of each text, exactly as ``pack`` computes them (no special tokens)."""
    from tokenizers import Tokenizer

    tok = Tokenizer.from_file(str(Path(tokenizer_dir) / "tokenizer.json"))
    return [np.asarray(e.ids, dtype=np.int64)
            for e in tok.encode_batch(texts, add_special_tokens=False)]


def count_documents(path: Path) -> int:
    """Documents (lines) of a corpus jsonl file; a last line without a newline counts."""
    n, last = 0, b"\n"
    with open(path, "rb") as f:
        while chunk := f.read(1 << 20):
            n += chunk.count(b"\n")
            last = chunk[-1:]
    return n + (last != b"\n")


def rank_slice(n: int, rank: int, world_size: int) -> tuple[int, int]:
    """``[lo, hi)``: the documents of ``rank`` when document i of n goes to rank
    floor(i * world_size / n) - contiguous, in rank order, sizes differing by at most 1."""
    return -(-rank * n // world_size), -(-(rank + 1) * n // world_size)


def knowledge_documents(corpus: CorpusDir) -> dict[tuple[str, str], dict]:
    """The corpus's injected knowledge documents by (source, path)."""
    k = corpus.manifest.get("knowledge")
    if not k:
        return {}
    p = corpus.root / k["documents_file"]
    try:
        with open(p, encoding="utf-8") as f:
            docs = [json.loads(line) for line in f]
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise BabelError(f"cannot read the corpus's knowledge documents {p}: {e}") from None
    return {(str(d.get("source")), d["path"]): d for d in docs}


def _parse_row(path: Path, line_no: int, line: bytes) -> dict:
    try:
        row = json.loads(line.decode("utf-8"))
    except UnicodeDecodeError:
        raise BabelError(f"{path}:{line_no}: not UTF-8") from None
    except json.JSONDecodeError as e:
        raise BabelError(f"{path}:{line_no}: malformed JSON ({e.msg})") from None
    if not isinstance(row, dict) or not isinstance(row.get("text"), str):
        raise BabelError(f"{path}:{line_no}: row has no 'text' string")
    return row


# ---------------------------------------------------------------- stage 1: tokenize

class CorpusSliceReader(PipelineStep):
    """This rank's contiguous slice of every (language, split) file of the corpus, in the
    order of ``plan`` ((lang, split, documents) triples). With ``progress``, a line every
    ``PROGRESS_EVERY_S`` seconds: the documents this task read."""

    name = "babeltower corpus slice"
    type = "📖 - READER"

    def __init__(self, corpus: str, plan: Sequence[tuple[str, str, int]], progress: bool = False):
        super().__init__()
        self.corpus = corpus
        self.plan = [tuple(x) for x in plan]
        self.progress = progress

    def run(self, data: DocumentsPipeline = None, rank: int = 0,
            world_size: int = 1) -> DocumentsPipeline:
        ignore_sigint_in_pool_worker()
        corpus = CorpusDir(self.corpus)
        knowledge = knowledge_documents(corpus)
        n_read, last = 0, time.monotonic()
        for lang, split, n in self.plan:
            lo, hi = rank_slice(n, rank, world_size)
            if lo >= hi:
                continue
            path = corpus.path(lang, split)
            with open(path, "rb") as f:
                for i, line in enumerate(f):
                    if i < lo:
                        continue
                    if i >= hi:
                        break
                    raise_if_interrupted()   # in-process (one worker): a swallowed Ctrl-C stops it
                    row = _parse_row(path, i + 1, line)
                    k = knowledge.get((str(row.get("source")), row.get("path")))
                    if k is not None and (k["language"] != lang or k["split"] != split
                                          or k["sha256"] != row.get("sha256")):
                        raise BabelError(f"knowledge document {k['path']} is listed as "
                                         f"{k['language']}/{k['split']} but packed in "
                                         f"{lang}/{split} (or its text changed)")
                    n_read += 1
                    if self.progress and time.monotonic() - last >= PROGRESS_EVERY_S:
                        last = time.monotonic()
                        print(f"corpus pack: tokenize task {rank + 1}/{world_size}: "
                              f"{n_read} documents read", file=sys.stderr, flush=True)
                    self.stat_update("documents")
                    yield Document(text=row["text"], id=f"{lang}/{split}#{i}", metadata={
                        "language": lang, "split": split,
                        "identity": {key: row.get(key) for key in PATH_KEYS},
                        "bytes": len(row["text"].encode("utf-8")), "knowledge": k})


class TokenizeStep(PipelineStep):
    """Token ids of every document (``encode_batch`` of ``batch_docs``, no special
    tokens) and, for an injected knowledge document, the token span of each fact."""

    name = "tokenize"
    type = "🔢 - TOKENIZER"

    def __init__(self, tokenizer_json: str, batch_docs: int):
        super().__init__()
        self.tokenizer_json = tokenizer_json
        self.batch_docs = batch_docs

    def run(self, data: DocumentsPipeline, rank: int = 0, world_size: int = 1) -> DocumentsPipeline:
        import multiprocess

        if multiprocess.current_process().name != "MainProcess":
            os.environ["TOKENIZERS_PARALLELISM"] = "false"   # a pool worker is one core
        from tokenizers import Tokenizer

        tok = Tokenizer.from_file(self.tokenizer_json)
        batch: list[Document] = []
        for doc in data:
            batch.append(doc)
            if len(batch) == self.batch_docs:
                yield from self._encode(tok, batch)
                batch = []
        if batch:
            yield from self._encode(tok, batch)

    def _encode(self, tok, docs: list[Document]) -> Iterator[Document]:
        with self.track_time(unit="batch"):
            encodings = tok.encode_batch([d.text for d in docs], add_special_tokens=False)
        for doc, enc in zip(docs, encodings):
            doc.metadata["ids"] = np.asarray(enc.ids, dtype=np.int64)
            k = doc.metadata["knowledge"]
            if k is not None:
                chars = fact_char_spans(doc.text, len(k["facts"]))
                doc.metadata["fact_spans"] = (None if chars is None
                                              else token_spans(enc.offsets, chars))
            self.stat_update("tokens", value=len(enc.ids))
            yield doc


class RankShardWriter(PipelineStep):
    """This rank's shards, ``FOLDER/<rank>/<lang>/<split>.*`` (``ShardWriter``), and its
    knowledge documents with their rank-local row (``FOLDER/<rank>/knowledge.jsonl``);
    written under a temporary name, renamed when complete."""

    name = "babeltower rank shards"
    type = "💽 - WRITER"

    def __init__(self, folder: str, dtype: str, eos_id: int):
        super().__init__()
        self.folder = folder
        self.dtype = dtype
        self.eos_id = eos_id

    def run(self, data: DocumentsPipeline, rank: int = 0, world_size: int = 1) -> DocumentsPipeline:
        final = Path(self.folder) / f"{rank:05d}"
        tmp = Path(self.folder) / f"{rank:05d}.partial"
        for stale in (tmp, final):   # an earlier, killed try of this task
            shutil.rmtree(stale, ignore_errors=True)
        tmp.mkdir(parents=True)
        writers: dict[tuple[str, str], ShardWriter] = {}
        try:
            self._write(data, tmp, writers)
        except BaseException:
            for w in writers.values():   # no file left open on a failing disk
                w.discard()
            raise
        for w in writers.values():
            w.close()
        os.replace(tmp, final)
        yield from ()

    def _write(self, data: DocumentsPipeline, tmp: Path,
               writers: dict[tuple[str, str], ShardWriter]) -> None:
        with open(tmp / KNOWLEDGE_INDEX, "w", encoding="utf-8") as kf:
            for doc in data:
                m = doc.metadata
                key = (m["language"], m["split"])
                if key not in writers:
                    writers[key] = ShardWriter(tmp / key[0] / key[1], np.dtype(self.dtype),
                                               self.eos_id, record_paths=True)
                with self.track_time():
                    row = writers[key].add(m["ids"], m["bytes"], identity=m["identity"])
                if m["knowledge"] is not None:
                    kf.write(json.dumps({**m["knowledge"], "doc": row,
                                         "fact_spans": m["fact_spans"]},
                                        ensure_ascii=False) + "\n")
                self.stat_update("documents")


# ---------------------------------------------------------------- stage 2: merge

def concat_shards(parts: Sequence[Path], prefix: Path) -> tuple[dict, list[int]]:
    """Concatenate the shards at ``parts`` (prefixes; a missing one is empty) into
    ``prefix``, as one ``ShardWriter`` given all their documents in order would have
    written them. Returns the summary ``ShardWriter.close`` gives and each part's first
    document row."""
    prefix.parent.mkdir(parents=True, exist_ok=True)
    files = [prefix.with_suffix(s) for s in (".bin", ".docs.npy", ".paths.jsonl")]
    tables, firsts, n_docs, pos = [], [], 0, 0
    with open(files[0], "wb") as bin_out, open(files[2], "wb") as paths_out:
        for part in parts:
            firsts.append(n_docs)
            if not part.with_suffix(".docs.npy").is_file():
                continue
            docs = np.load(part.with_suffix(".docs.npy"))
            docs[:, 0] += pos
            tables.append(docs)
            for suffix, dst in ((".bin", bin_out), (".paths.jsonl", paths_out)):
                with open(part.with_suffix(suffix), "rb") as src:
                    shutil.copyfileobj(src, dst, 1 << 20)
            n_docs += len(docs)
            pos += int(docs[:, 1].sum()) + len(docs)   # each document is followed by EOS
    docs = np.concatenate(tables) if tables else np.zeros((0, 3), dtype=np.int64)
    np.save(files[1], docs.astype(np.int64, copy=False))
    return {
        "documents": int(docs.shape[0]),
        "tokens": int(docs[:, 1].sum()) if docs.size else 0,
        "tokens_with_eos": pos,
        "bytes": int(docs[:, 2].sum()) if docs.size else 0,
        "sha256": {p.name: sha256_file(p) for p in files},
    }, firsts


def _read_jsonl(path: Path) -> Iterator[dict]:
    with open(path, encoding="utf-8") as f:
        for line in f:
            yield json.loads(line)


def write_knowledge_index(root: Path, rows: list[dict]) -> dict:
    """``knowledge.jsonl`` of the data dir; returns the manifest's ``knowledge`` entry."""
    p = root / KNOWLEDGE_INDEX
    with open(p, "w", encoding="utf-8") as f:
        for r in rows:
            f.write(json.dumps(r, ensure_ascii=False) + "\n")
    missing = sum(1 for r in rows if r["fact_spans"] is None)
    by: dict[str, int] = {}
    for r in rows:
        by[f"{r['language']}/{r['split']}"] = by.get(f"{r['language']}/{r['split']}", 0) + 1
    return {"documents_file": KNOWLEDGE_INDEX, "documents": len(rows),
            "documents_by_language_split": dict(sorted(by.items())),
            "without_fact_spans": missing, "fact_span_rule": FACT_SPAN_RULE,
            "sha256": sha256_file(p)}


class MergeShards(PipelineStep):
    """The ranks' shards, in rank order, into the packed data directory ``out``
    (atomically), with the knowledge index, a tokenizer copy and the manifest."""

    name = "babeltower merge shards"
    type = "💽 - WRITER"

    def __init__(self, corpus: str, tokenizer_dir: str, out: str, cfg: PackConfig,
                 plan: Sequence[tuple[str, str, int]], languages: list[str], tasks: int,
                 folder: str, overwrite: bool, extra_manifest: dict,
                 names: tuple[str, str] | None = None):
        super().__init__()
        # read at absolute paths (a Slurm/Ray task's cwd is not ours); the manifest
        # records ``names``, the corpus and tokenizer dirs as the caller gave them
        self.names = tuple(names or (corpus, tokenizer_dir))
        self.corpus = corpus
        self.tokenizer_dir = tokenizer_dir
        self.out = out
        self.cfg = cfg
        self.plan = [tuple(x) for x in plan]
        self.languages = list(languages)
        self.tasks = tasks
        self.folder = folder
        self.overwrite = overwrite
        self.extra_manifest = extra_manifest

    def run(self, data: DocumentsPipeline = None, rank: int = 0,
            world_size: int = 1) -> DocumentsPipeline:
        ignore_sigint_in_pool_worker()
        corpus = CorpusDir(self.corpus)
        ranks = [Path(self.folder) / f"{r:05d}" for r in range(self.tasks)]
        absent = [str(r) for r in ranks if not r.is_dir()]
        if absent:
            raise BabelError(f"the tokenize stage left no shards at {', '.join(absent)}")
        with atomic_dir(self.out, overwrite=self.overwrite) as tmp:
            languages_info: dict[str, dict] = {lang: {} for lang in self.languages}
            firsts: dict[tuple[str, str], list[int]] = {}
            for lang, split, n in self.plan:
                info, firsts[(lang, split)] = concat_shards([r / lang / split for r in ranks],
                                                            tmp / lang / split)
                if info["documents"] != n:
                    raise BabelError(f"{corpus.path(lang, split)} had {n} documents when the "
                                     f"pack started, {info['documents']} were packed "
                                     "(did the corpus change?)")
                languages_info[lang][split] = info
            knowledge = write_knowledge_index(tmp, self._knowledge_rows(corpus, ranks, firsts))
            tok_copy = tmp / "tokenizer"
            shutil.copytree(self.tokenizer_dir, tok_copy)
            write_manifest(tmp, self._manifest(corpus, tok_copy, languages_info, knowledge))
        shutil.rmtree(self.folder, ignore_errors=True)   # the data dir holds it all now
        if data:
            yield from data

    def _knowledge_rows(self, corpus: CorpusDir, ranks: list[Path],
                        firsts: dict[tuple[str, str], list[int]]) -> list[dict]:
        """Every knowledge row with its row in the merged shards, in pack order; each of
        the corpus's knowledge documents of the packed languages exactly once."""
        rows = []
        for r, folder in enumerate(ranks):
            for d in _read_jsonl(folder / KNOWLEDGE_INDEX):
                d["doc"] += firsts[(d["language"], d["split"])][r]
                rows.append(d)
        place = {(lang, split): i for i, (lang, split, _) in enumerate(self.plan)}
        rows.sort(key=lambda d: (place[(d["language"], d["split"])], d["doc"]))
        packed = [(str(d.get("source")), d["path"]) for d in rows]
        expected = {key for key, d in knowledge_documents(corpus).items()
                    if d["language"] in self.languages}
        if len(set(packed)) != len(packed) or set(packed) != expected:
            lost = sorted(expected - set(packed))
            raise BabelError(f"{len(lost)} knowledge document(s) of the corpus are not in its "
                             f"split files (first: {lost[0][1] if lost else '-'}), or one is "
                             "in them twice")
        return rows

    def _manifest(self, corpus: CorpusDir, tok_copy: Path, languages_info: dict,
                  knowledge: dict) -> dict:
        from tokenizers import Tokenizer

        tok_dir = Path(self.tokenizer_dir)
        corpus_name, tok_name = self.names
        meta = load_tokenizer_meta(tok_dir)
        tok = Tokenizer.from_file(str(tok_dir / "tokenizer.json"))
        vocab_size = tok.get_vocab_size()
        return {
            "format": DATA_FORMAT,
            "languages": languages_info,
            "knowledge": knowledge,
            "dtype": dtype_for_vocab(vocab_size).name,
            "eos_id": int(tok.token_to_id(meta.get("eos_token", "<|endoftext|>"))),
            "vocab_size": int(vocab_size),
            "tokenizer": {"dir": "tokenizer", "source": tok_name,
                          "sha256": {p.name: sha256_file(p) for p in sorted(tok_copy.iterdir())
                                     if p.is_file()},
                          "config": meta.get("config")},
            "corpus": corpus_name,
            "corpus_manifest_sha256": corpus.manifest_sha256,
            "corpus_summary": {lang: corpus.manifest["languages"].get(lang, {})
                               for lang in self.languages},
            "corpus_dropped": corpus.manifest.get("dropped", {}),
            "config": self.cfg.model_dump(mode="json"),
            **self.extra_manifest,
            "provenance": provenance(config=self.cfg, data_hashes={
                "corpus_manifest": corpus.manifest_sha256,
                "tokenizer.json": sha256_file(tok_dir / "tokenizer.json")}),
        }


# ---------------------------------------------------------------- the pack

def pack_corpus(corpus_dir: str | os.PathLike, tokenizer_dir: str | os.PathLike,
                out: str | os.PathLike, config: PackConfig | None = None,
                languages: list[str] | None = None, overwrite: bool = False,
                progress: bool = True, engine: EngineConfig | None = None,
                timings: dict | None = None) -> Path:
    """Tokenize ``corpus_dir`` with ``tokenizer_dir`` into a packed data directory ``out``
    on ``engine.executor`` (default: datatrove's local executor, one task per core).

    The data directory is byte-identical for any executor and number of tasks (only the
    manifest's provenance and engine entries differ). Local and Ray return when ``out``
    is written; Slurm returns once the two job arrays are submitted. An interrupted pack
    leaves no ``out``, only its work dir (``.<out>.datatrove-pack``): run it again and
    the finished tasks are skipped. ``timings`` receives each stage's wall time in s.
    """
    cfg = config or PackConfig()
    engine = resolve_engine(engine)
    corpus = CorpusDir(corpus_dir)
    tok_dir = Path(tokenizer_dir)
    meta = load_tokenizer_meta(tok_dir)
    from tokenizers import Tokenizer

    tok = Tokenizer.from_file(str(tok_dir / "tokenizer.json"))
    eos_token = meta.get("eos_token", "<|endoftext|>")
    eos_id = tok.token_to_id(eos_token)
    if eos_id is None:
        raise BabelError(f"tokenizer {tok_dir} has no EOS token {eos_token!r}")
    dtype = dtype_for_vocab(tok.get_vocab_size())
    langs = languages or corpus.languages
    for lang in langs:
        if lang not in corpus.languages:
            raise BabelError(f"corpus {corpus.root} has no language {lang!r}")
    out = Path(out).absolute()
    work = work_dir_of(out, engine, "datatrove-pack").absolute()
    if not overwrite and out.exists() and not work.is_dir():
        refuse_existing(out, overwrite)   # before counting documents: nothing to resume
    plan = [(lang, split, count_documents(corpus.path(lang, split)))
            for lang in langs for split in SPLITS if corpus.path(lang, split).is_file()]
    fingerprint = {"format": WORK_FORMAT, "corpus": str(corpus.root.absolute()),
                   "corpus_manifest_sha256": corpus.manifest_sha256,
                   "tokenizer": str(tok_dir.absolute()),
                   "tokenizer_sha256": sha256_file(tok_dir / "tokenizer.json"),
                   "out": str(out), "plan": [list(p) for p in plan], "tasks": engine.tasks,
                   "config": cfg.model_dump(mode="json"), "datatrove": datatrove_version()}
    if written_before(out, work, fingerprint):
        return out    # killed between the merge's rename and its completion marker
    refuse_existing(out, overwrite)
    prepare_work(work, fingerprint, last_stage="merge")
    extra = {"engine": {"name": "datatrove", "version": fingerprint["datatrove"],
                        "executor": engine.executor, "tasks": engine.tasks,
                        "work_sha256": sha256_json(fingerprint)}}
    shards = str(work / "shards")
    pipelines = {
        "tokenize": [CorpusSliceReader(str(corpus.root.absolute()), plan, progress),
                     TokenizeStep(str((tok_dir / "tokenizer.json").absolute()), cfg.batch_docs),
                     RankShardWriter(shards, dtype.name, int(eos_id))],
        "merge": [MergeShards(str(corpus.root.absolute()), str(tok_dir.absolute()), str(out),
                              cfg, plan, langs, engine.tasks, shards, overwrite, extra,
                              names=(str(corpus.root), str(tok_dir)))],
    }
    return run_job(pipelines, engine, work, out, "corpus pack", single=("merge",),
                   progress=progress, timings=timings)
