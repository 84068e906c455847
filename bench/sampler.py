"""Benchmark: MixtureSampler.batch against nanoGPT's get_batch, measured in the same run.

Peer: nanoGPT's ``get_batch`` (random offsets into one np.memmap, torch.stack of
slices) - the simplest loader there is, with no mixture, no seekability and no epochs.
We report batches/s for both and the ratio, plus the sampler's construction time.

    .venv/bin/python bench/sampler.py [--tokens 30000000] [--seq-len 1024] [--batch 32]
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time
from pathlib import Path

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import numpy as np  # noqa: E402
import torch  # noqa: E402

from babeltower.corpus.shards import ShardWriter, TokenShards, write_manifest  # noqa: E402
from babeltower.mixture import MixtureSampler, available_tokens, temperature  # noqa: E402


def build(root: Path, tokens: int, langs=("python", "php", "go")) -> TokenShards:
    rng = np.random.default_rng(0)
    manifest = {"dtype": "uint16", "eos_id": 0, "vocab_size": 4096, "languages": {}}
    shares = np.array([0.5, 0.3, 0.2])
    for lang, share in zip(langs, shares):
        w = ShardWriter(root / lang / "train", np.uint16, 0)
        left = int(tokens * share)
        while left > 0:
            n = int(min(left, rng.integers(200, 4000)))
            w.add(rng.integers(1, 4096, n), n * 3)
            left -= n + 1
        manifest["languages"][lang] = {"train": w.close()}
    write_manifest(root, manifest)
    return TokenShards(root)


def nanogpt_get_batch(data: np.ndarray, block_size: int, batch_size: int):
    ix = torch.randint(len(data) - block_size - 1, (batch_size,))
    x = torch.stack([torch.from_numpy(data[i:i + block_size].astype(np.int64)) for i in ix])
    y = torch.stack([torch.from_numpy(data[i + 1:i + 1 + block_size].astype(np.int64)) for i in ix])
    return x, y


def rate(fn, seconds: float) -> float:
    n, t0 = 0, time.perf_counter()
    while time.perf_counter() - t0 < seconds:
        fn(n)
        n += 1
    return n / (time.perf_counter() - t0)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--tokens", type=int, default=30_000_000)
    ap.add_argument("--seq-len", type=int, default=1024)
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--seconds", type=float, default=3.0)
    args = ap.parse_args()
    torch.set_num_threads(1)
    with tempfile.TemporaryDirectory() as tmp:
        t0 = time.perf_counter()
        shards = build(Path(tmp), args.tokens)
        print(f"built {args.tokens:,} tokens of shards in {time.perf_counter() - t0:.1f} s")
        avail = available_tokens(shards)
        spec = temperature(avail, int(0.9 * min(avail.values())) * 3, 0.3)
        t0 = time.perf_counter()
        sampler = MixtureSampler(shards, spec, args.seq_len, seed=0)
        build_s = time.perf_counter() - t0
        print(f"MixtureSampler: {len(sampler):,} windows, constructed in {build_s * 1000:.1f} ms")
        data = np.memmap(shards.root / "python" / "train.bin", dtype=np.uint16, mode="r")
        for _ in range(2):   # interleave the two measurements to share machine noise
            ours = rate(lambda n: sampler.batch(n * args.batch, args.batch), args.seconds)
            peer = rate(lambda n: nanogpt_get_batch(data, args.seq_len, args.batch), args.seconds)
        tok = args.batch * args.seq_len
        print(f"MixtureSampler.batch : {ours:8.1f} batches/s ({ours * tok / 1e6:.1f} M tokens/s)")
        print(f"nanoGPT get_batch    : {peer:8.1f} batches/s ({peer * tok / 1e6:.1f} M tokens/s)")
        print(f"ratio ours/nanoGPT   : {ours / peer:.2f}x  (batch {args.batch} x seq {args.seq_len})")


if __name__ == "__main__":
    main()
