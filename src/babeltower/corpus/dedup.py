"""Step 3a, over the whole corpus: exact and near-duplicate clusters (MinHash LSH with
datasketch, confirmed by Jaccard), union-find over the confirmed pairs."""

from __future__ import annotations

import numpy as np

from babeltower.corpus.scan import MINHASH_SCHEME, MINHASH_SEED


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
