"""Validation during training: fixed held-out windows per language and their mean loss."""

from __future__ import annotations

import contextlib

import numpy as np
import torch
import torch.nn.functional as F

from babeltower.corpus.shards import TokenShards


def validation_windows(shards: TokenShards, languages: list[str], seq_len: int,
                       tokens_per_language: int, split: str = "validation",
                       ) -> dict[str, torch.Tensor]:
    """Fixed evaluation windows per language, spread evenly over the split.

    ``tokens_per_language // seq_len`` non-overlapping windows of ``seq_len + 1`` tokens
    (fewer if the split is short). The same windows at every evaluation, so the
    per-checkpoint curve measures the model, not the sample.
    """
    out = {}
    for lang in languages:
        if not shards.has(lang, split):
            continue
        tokens = shards.split(lang, split).tokens
        win = seq_len + 1
        have = len(tokens) // win
        n = min(have, max(1, tokens_per_language // seq_len))
        if have == 0 or n == 0:
            continue
        idx = np.unique(np.linspace(0, have - 1, n).round().astype(np.int64))
        out[lang] = torch.from_numpy(np.stack([
            np.asarray(tokens[i * win:(i + 1) * win], dtype=np.int64) for i in idx]))
    return out


@torch.no_grad()
def validation_loss(model, windows: dict[str, torch.Tensor], device, batch_size: int = 16,
                    autocast=contextlib.nullcontext) -> dict[str, float]:
    """Mean next-token cross-entropy (nats/token) per language over fixed windows.

    The in-loop validation (cheap, fixed windows); ``babeltower.evaluate.loss`` is the
    full per-document evaluation of a checkpoint series.
    """
    was_training = model.training
    model.eval()
    out = {}
    for lang, w in windows.items():
        total = torch.zeros((), dtype=torch.float64, device=device)
        count = 0
        for i in range(0, w.shape[0], batch_size):
            b = w[i:i + batch_size].to(device)
            with autocast():
                logits = model(input_ids=b[:, :-1]).logits
            total += F.cross_entropy(logits.float().reshape(-1, logits.shape[-1]),
                                     b[:, 1:].reshape(-1), reduction="sum").double()
            count += b[:, 1:].numel()
        out[lang] = float(total.item() / max(1, count))
    model.train(was_training)
    return out
