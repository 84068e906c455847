"""The whole-corpus step of ``corpus build``: exact dedup, near-duplicate clusters, the
group-aware split, and the corpus directory with its ledger and manifest, written
atomically. The datatrove pipeline (``corpus.build``) runs it as its last stage, over
the records its scan stage left and the clusters its LSH stage found.
"""

from __future__ import annotations

import json
from collections import Counter, defaultdict
from pathlib import Path
from typing import Callable, Sequence

from babeltower.corpus.config import BuildConfig
from babeltower.corpus.corpusdir import CORPUS_FORMAT
from babeltower.corpus.dedup import near_duplicate_clusters
from babeltower.corpus.filters import DROP_REASONS
from babeltower.corpus.knowledge import KNOWLEDGE_PACKAGE, knowledge_manifest
from babeltower.corpus.scan import TextSpill, record_id, record_key, record_text
from babeltower.corpus.shards import SPLITS
from babeltower.corpus.split import assign_splits
from babeltower.errors import BabelError
from babeltower.io import atomic_dir, atomic_write_json, provenance, sha256_file


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
    """The whole-corpus step; writes ``out`` atomically.

    ``near_clusters(kept)``: the cluster root (smallest member index) of every kept record
    after exact dedup (the build passes the clusters its LSH stage found); without it,
    MinHash LSH over the records' ``minhash`` signatures here.
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
            "config": cfg.model_dump(mode="json"),
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
