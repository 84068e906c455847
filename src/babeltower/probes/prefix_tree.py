"""Token rows packed as a prefix tree, so a shared prefix is computed once per forward.

A probe suite's prompts share beginnings (``if ``, ``$x = ``, ``for (``): of the
python-php suite's 1,531 distinct prompt tokens (SmolLM2 tokenizer) only 879 are distinct
prefixes. A causal decoder's state at a token depends on that token's prefix alone, so
one forward over the tree's nodes - each node attending to itself and its ancestors, at
the position of its depth - gives every row's states at every position, the same numbers
as running each row on its own (the attention sees the same keys; only the order of
summation differs, tested to 1e-5 for every architecture that takes the mask).

This is the tree attention of speculative decoding (SpecInfer, Medusa) used for scoring:
one 4D additive attention mask and explicit ``position_ids``, which a Hugging Face
decoder takes as they are (``masking_utils`` returns a 4D mask unchanged). It does not
fit models whose position signal is not ``position_ids`` (ALiBi computes distances from
the 2D mask) or attention backends without arbitrary masks (flash-attention, flex), so
``supports_tree(model)`` allows only eager/SDPA attention on architectures tested here.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

from babeltower.architectures import ARCHITECTURES

#: architectures whose decoder reads positions from ``position_ids`` and applies a 4D
#: mask as given: every entry of the one table, each tested node for node against
#: separate runs (tests/test_prefix_tree.py runs over the whole table, so an entry added
#: there that cannot take the mask fails it until it is excluded here and there)
TREE_MODEL_TYPES = frozenset(ARCHITECTURES)
#: attention implementations that add an arbitrary 4D mask to the scores
TREE_ATTENTION = frozenset({"sdpa", "eager"})


@dataclass
class PrefixTree:
    """Nodes in insertion order, so a parent comes before its children: ``tokens[i]`` at depth
    ``depth[i]`` under ``parent[i]`` (-1 for a root); ``node[r][k]`` is the node of row
    r's k-th token."""

    tokens: list[int]
    depth: list[int]
    parent: list[int]
    node: list[list[int]]

    def __len__(self) -> int:
        return len(self.tokens)

    def inputs(self, dtype=None, device=None) -> dict:
        """``input_ids`` and ``position_ids`` (1, N) and the additive ``attention_mask``
        (1, 1, N, N): 0 where a node may attend (itself, its ancestors), the dtype's
        minimum elsewhere - the form eager attention adds and SDPA takes as a float mask."""
        import torch

        n = len(self.tokens)
        allowed = torch.zeros((n, n), dtype=torch.bool)
        for i, p in enumerate(self.parent):        # a parent's row is done before its child's
            if p >= 0:
                allowed[i] = allowed[p]
            allowed[i, i] = True
        dtype = dtype or torch.float32
        mask = torch.zeros((n, n), dtype=dtype)
        mask.masked_fill_(~allowed, torch.finfo(dtype).min)
        return {"input_ids": torch.tensor([self.tokens], device=device),
                "position_ids": torch.tensor([self.depth], device=device),
                "attention_mask": mask[None, None].to(device)}


def build_tree(rows: Sequence[Sequence[int]]) -> PrefixTree:
    """The prefix tree of ``rows`` (token id lists; identical rows and shared prefixes
    become one path)."""
    children: dict[tuple[int, int], int] = {}     # (parent node, token) -> node
    tokens: list[int] = []
    depth: list[int] = []
    parent: list[int] = []
    node = []
    for row in rows:
        at, path = -1, []
        for k, t in enumerate(row):
            key = (at, int(t))
            if key not in children:
                children[key] = len(tokens)
                tokens.append(int(t))
                depth.append(k)
                parent.append(at)
            at = children[key]
            path.append(at)
        node.append(path)
    return PrefixTree(tokens, depth, parent, node)


def tree_batches(item_rows: Sequence[Sequence[Sequence[int]]], max_nodes: int) -> list[list[int]]:
    """Item indices per forward: items sorted by their rows (shared prefixes next to each
    other) and cut greedily where the next item's new nodes would take the tree past
    ``max_nodes`` (an item larger than that gets a forward of its own). All rows of an
    item stay in one forward."""
    order = sorted(range(len(item_rows)), key=lambda i: [tuple(r) for r in item_rows[i]])
    batches: list[list[int]] = []
    seen: set[tuple[int, ...]] = set()      # the current forward's nodes, as prefixes
    for i in order:
        nodes = {tuple(r[:k]) for r in item_rows[i] for k in range(1, len(r) + 1)}
        if batches and len(seen | nodes) <= max_nodes:
            batches[-1].append(i)
            seen |= nodes
        else:
            batches.append([i])
            seen = nodes
    return batches


def supports_tree(model, max_depth: int = 0) -> bool:
    """Whether one tree-masked forward of ``model`` equals separate runs of its rows, for
    rows of at most ``max_depth`` tokens (a sliding window the mask does not apply must
    then be longer than every row)."""
    cfg = getattr(model, "config", None)
    window = getattr(cfg, "sliding_window", None) if getattr(cfg, "use_sliding_window",
                                                              True) else None
    return (getattr(cfg, "model_type", None) in TREE_MODEL_TYPES
            and getattr(cfg, "_attn_implementation", None) in TREE_ATTENTION
            and (not window or max_depth <= window))
