"""Logit lens over checkpoint series: which language does each layer "think" in?

For every checkpoint and every layer (embeddings + each block) the hidden state at the
prediction position is decoded through the model's OWN final norm and unembedding.
The norm is recomputed for that layer's state (not the final layer's cached scale -
the TransformerLens issue 1076 pitfall), and HF's last hidden state, which already
has the final norm applied, is unembedded as it is. So the last lens layer reproduces
the model's own logits exactly (tested to 1e-4).

One forward with ``output_hidden_states=True`` per batch; only the prediction positions
are gathered and unembedded, which is what makes this cheap next to a run-with-cache.
Left or right padding both work: explicit ``position_ids`` make the padded result
identical to the unpadded one.

Measures per prompt and layer (first-token attribution, see ``suite.ATTRIBUTION``):

=====================  ====================================================================
``top1_primary``       1 if the top-1 token is the primary identifier's first token
``top1_new``           1 if the top-1 token is the new identifier's first token
``top1_target``        1 if the top-1 token is this prompt's own identifier (cloze accuracy)
``p_primary``/``p_new``  probability mass on each first token
``logp_diff``          log p(new) - log p(primary)
``prefers_new``        1 if log p(new) > log p(primary)
``primary_vs_control`` log p(primary) - mean log p(other pairs' primary first tokens): the
                       control - is the TRUE counterpart favoured, or Python tokens in general?
``prefers_new_vs_unrelated``  control A of ``prefers_new``: the share of UNRELATED primary
                       tokens (other pairs' primary first tokens) that the new token beats
``other_new_prefers``  control B: the share of OTHER pairs' new first tokens that beat this
                       prompt's primary token
``logp_new_vs_unrelated``, ``logp_other_new_vs_primary``  the same two controls as log-prob
                       margins (mean over the control tokens)
``primary_vs_control_kind``, ``prefers_new_vs_unrelated_kind``, ``logp_new_vs_unrelated_kind``
                       the same with the unrelated primary tokens of pairs of the SAME kind
                       (keyword | builtin) only: the kind-matched control A
``new_vs_other_new``   log p(new) - mean log p(other pairs' new first tokens)
=====================  ====================================================================

``prefers_new`` and the controls are differences of logits at one position, so the
normaliser cancels: ``vocab="gathered"`` computes them from the needed unembedding rows
only (norm each layer's state, matmul with W_U[rows]); the top-1 and probability measures
need the full vocabulary. ``lens_controls`` (module ``lens_controls``, re-exported here)
turns the per-prompt rows into the specific effects (true pair minus control), as shares
and as margins in nats, with a bootstrap interval over clusters of prompt texts.
"""

from __future__ import annotations

# The package's rooms (README layout): ``decode`` (the lens: norm + unembedding of a layer,
# the measure names), ``items`` (batching, prefix trees, per-item scores), ``series``
# (checkpoint series, outputs, summaries). Their public names are the package's.
from babeltower.probes.lens.decode import (FULL_VOCAB_MEASURES, MEASURES, PAIRWISE_MEASURES,
                                          SEQUENCE_MEASURES, VOCAB_MODES, LogitLens,
                                          last_positions, position_ids_for)
from babeltower.probes.lens.items import (FORWARD_COST_TOKENS, MAX_TREE_NODES, PACKINGS,
                                         aggregate_items, check_packing, lens_items,
                                         sequence_logprobs)
from babeltower.probes.lens.series import (LENS_COLUMNS, LensMeasure, layer_table,
                                          load_tokenizer, run_lens, summarize_lens)
from babeltower.probes.lens_controls import (CONTROL_MEASURES, CONTROLS, lens_controls,
                                             lens_controls_summary)

__all__ = ["FULL_VOCAB_MEASURES", "MEASURES", "PAIRWISE_MEASURES", "SEQUENCE_MEASURES",
           "VOCAB_MODES", "LogitLens", "last_positions", "position_ids_for",
           "FORWARD_COST_TOKENS", "MAX_TREE_NODES", "PACKINGS", "aggregate_items",
           "check_packing", "lens_items", "sequence_logprobs", "LENS_COLUMNS", "LensMeasure",
           "layer_table", "load_tokenizer", "run_lens", "summarize_lens", "CONTROL_MEASURES",
           "CONTROLS", "lens_controls", "lens_controls_summary"]
