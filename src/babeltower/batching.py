"""Token batches for forward passes: the one padding helper every measure uses (loss,
cloze, knowledge, the lens), so left/right padding and its mask are defined once."""

from __future__ import annotations

from typing import Sequence

from babeltower.errors import BabelError


def pad_batch(seqs: Sequence[Sequence[int]], pad_id: int, side: str = "left"):
    """(input_ids, attention_mask) long tensors for token id sequences (lists or numpy
    arrays). ``right`` keeps every real token at its own position (what scoring by
    position needs); ``left`` aligns the last tokens (what next-token prediction at the
    end needs)."""
    import torch

    if side not in ("left", "right"):
        raise BabelError(f"padding side must be 'left' or 'right', not {side!r}")
    width = max(len(s) for s in seqs)
    ids = torch.full((len(seqs), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(seqs), width), dtype=torch.long)
    for i, s in enumerate(seqs):
        t = torch.as_tensor(s, dtype=torch.long)
        if side == "left":
            ids[i, width - len(s):] = t
            mask[i, width - len(s):] = 1
        else:
            ids[i, :len(s)] = t
            mask[i, :len(s)] = 1
    return ids, mask
