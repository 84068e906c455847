"""Step 3b: the group-aware train/validation/test split, decided by a seeded hash of each
group (package, or near-duplicate cluster) so no group straddles splits."""

from __future__ import annotations

import hashlib
import os
from collections import Counter, defaultdict
from pathlib import Path
from typing import Iterable

from babeltower.corpus.config import BuildConfig

from babeltower.corpus.dedup import UnionFind


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
