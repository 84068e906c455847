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

**Sliding windows.** A 4D mask reaches every layer as it is, so a sliding-window layer
(Mistral's, Gemma 3's local layers) would see ancestors further back than its window.
Where the decoder takes its masks per layer type (``attention_mask`` as a dict
``{"full_attention": ..., "sliding_attention": ...}``, ``MASK_PER_LAYER_TYPE``: Gemma 3),
``tree_inputs`` gives the sliding layers their own mask with the window cut in - node i
sees ancestor j only if ``depth[i] - depth[j] < window``, the rule transformers' own
sliding mask applies to a row's positions - so trees take rows of any length. Elsewhere a
tree is used only for rows no longer than the window (``supports_tree(model,
max_depth)``), where the window cuts nothing; longer rows run padded (``packing="auto"``)
or are refused (``packing="tree"``).
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
#: decoders that take ``attention_mask`` as a dict of 4D masks per layer type (used as
#: given): their sliding-window layers get a tree mask with the window cut in (tested
#: against separate runs with rows longer than the window, tests/test_prefix_tree.py)
MASK_PER_LAYER_TYPE = frozenset({"gemma3_text"})
SLIDING = "sliding_attention"


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

    def allowed(self, window: int | None = None):
        """(N, N) bool: node i may attend to node j (itself and its ancestors; with
        ``window``, only those fewer than ``window`` tokens back)."""
        import torch

        n = len(self.tokens)
        allowed = torch.zeros((n, n), dtype=torch.bool)
        for i, p in enumerate(self.parent):        # a parent's row is done before its child's
            if p >= 0:
                allowed[i] = allowed[p]
            allowed[i, i] = True
        if window is not None:
            depth = torch.tensor(self.depth)
            allowed &= (depth[:, None] - depth[None, :]) < window
        return allowed

    def inputs(self, dtype=None, device=None, sliding_window: int | None = None,
               layer_types: Sequence[str] = ()) -> dict:
        """``input_ids`` and ``position_ids`` (1, N) and the additive ``attention_mask``
        (1, 1, N, N): 0 where a node may attend (itself, its ancestors), the dtype's
        minimum elsewhere - the form eager attention adds and SDPA takes as a float mask.
        With ``layer_types`` the mask is a dict with one such mask per layer type, the
        ``"sliding_attention"`` one cut to ``sliding_window`` (see the module docstring)."""
        import torch

        dtype = dtype or torch.float32

        def additive(allowed):
            mask = torch.zeros(allowed.shape, dtype=dtype)
            mask.masked_fill_(~allowed, torch.finfo(dtype).min)
            return mask[None, None].to(device)

        full = self.allowed()
        if layer_types:
            windowed = self.allowed(sliding_window) if sliding_window else full
            mask = {t: additive(windowed if t == SLIDING else full) for t in set(layer_types)}
        else:
            mask = additive(full)
        return {"input_ids": torch.tensor([self.tokens], device=device),
                "position_ids": torch.tensor([self.depth], device=device),
                "attention_mask": mask}


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


def _window(cfg) -> int | None:
    """The sliding window a config's attention applies (None: none)."""
    if not getattr(cfg, "use_sliding_window", True):      # qwen2/3: off by default
        return None
    types = getattr(cfg, "layer_types", None)
    if types is not None and SLIDING not in types:
        return None
    return getattr(cfg, "sliding_window", None) or None


def tree_refusal(model, max_depth: int = 0) -> str | None:
    """Why one tree-masked forward of ``model`` (``tree_inputs``) would NOT equal separate
    runs of its rows of at most ``max_depth`` tokens, in a phrase; None when it would:
    eager/SDPA attention on a table architecture, and either no sliding window, a window
    the tree mask carries (``MASK_PER_LAYER_TYPE``), or rows no longer than the window."""
    cfg = getattr(model, "config", None)
    model_type = getattr(cfg, "model_type", None)
    attn = getattr(cfg, "_attn_implementation", None)
    if model_type not in TREE_MODEL_TYPES:
        return f"architecture {model_type!r} is not tested with tree masks"
    if attn not in TREE_ATTENTION:
        return f"{attn} attention takes no arbitrary mask (needs eager or SDPA)"
    if getattr(cfg, "use_bidirectional_attention", False):       # EmbeddingGemma
        return "bidirectional attention is not causal"
    window = _window(cfg)
    if window and model_type not in MASK_PER_LAYER_TYPE and max_depth > window:
        return (f"rows of up to {max_depth} tokens are longer than the sliding window "
                f"({window}), which one {model_type} mask cannot carry")
    return None


def supports_tree(model, max_depth: int = 0) -> bool:
    """Whether one tree-masked forward of ``model`` equals separate runs of its rows of at
    most ``max_depth`` tokens (``tree_refusal`` says why not)."""
    return tree_refusal(model, max_depth) is None


def tree_inputs(model, tree: PrefixTree) -> dict:
    """The forward inputs of ``tree`` for ``model``: in its dtype and on its device, with
    one mask per layer type (the sliding layers' cut to the window) where the decoder
    takes them (``MASK_PER_LAYER_TYPE``)."""
    cfg = model.config
    param = next(model.parameters())
    if cfg.model_type in MASK_PER_LAYER_TYPE and getattr(cfg, "layer_types", None):
        return tree.inputs(param.dtype, param.device, sliding_window=_window(cfg),
                           layer_types=cfg.layer_types)
    return tree.inputs(param.dtype, param.device)
