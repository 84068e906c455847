"""Internal-state probes over checkpoint series.

* ``suite``: probe suites as data (identifier pairs + cloze prompts per language pair)
  and their tokenizer check (first-token attribution).
* ``lens``: logit lens / working language (``LogitLens``, ``run_lens``, ``summarize_lens``);
  ``lens_controls``: share and margin effects against controls (``lens_controls``).
* ``neurons``: LAPE language-specific and transferring neurons (``run_neurons``,
  ``lape_select``, ``summarize_neurons``); ``lape_applicability``: whether a selection
  can mean "language-specific" (too few languages, kept neurons' entropy).
* ``ablate``: zero a neuron set, per-language loss change (``run_ablate``).
* ``code_concepts``: the few-shot code-translation lens of Kargaran et al. 2025 (token
  classes: English, keywords of any/source/target language); ``lape_layers``: LAPE's
  specific and exclusive neurons per layer with a bootstrap over text chunks.
* ``plots``: figures (kept apart from computing).
"""

from babeltower.probes.suite import (ATTRIBUTION, CheckedItem, CheckedSuite, ProbeSuite,
                                     available_suites, load_suite)

__all__ = ["ATTRIBUTION", "CheckedItem", "CheckedSuite", "ProbeSuite", "available_suites",
           "load_suite", "run_lens", "summarize_lens", "LogitLens", "run_neurons",
           "summarize_neurons", "lape_select", "run_ablate", "checkpoint_summary"]


_LAZY = {
    "run_lens": "lens", "summarize_lens": "lens", "LogitLens": "lens", "layer_table": "lens",
    "run_neurons": "neurons", "summarize_neurons": "neurons", "lape_select": "neurons",
    "NeuronStats": "neurons", "run_ablate": "ablate", "zero_neurons": "ablate",
    "checkpoint_summary": "summary",
    "lens_controls": "lens_controls", "lens_controls_summary": "lens_controls",
    "lape_applicability": "lape_applicability",
}


def __getattr__(name):  # heavy modules (torch) load on first use
    import importlib

    if name in _LAZY:
        return getattr(importlib.import_module(f"babeltower.probes.{_LAZY[name]}"), name)
    raise AttributeError(f"module 'babeltower.probes' has no attribute {name!r}")
