"""The shape of an experiment's ``results.json``: typed rows shared by the experiment's
measurement, analysis and pipeline and by the report that reads them.

``results.json`` is plain JSON so a notebook reads it with ``json.load``; these
TypedDicts say what each part holds (``total=False`` where a part is only present for
some runs, e.g. LAPE fields when probes are off). ``RESULTS_VERSION`` changes whenever a
field changes meaning; ``read_results`` refuses files of another version in one line
instead of drawing a report from fields that mean something else.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, TypedDict

from babeltower.errors import BabelError
from babeltower.io import read_json

# 2: stage calls carry a test (p-value, statistic, power); lens rows carry controls;
#    knowledge curves; the replay arm; the original corpus.
# 3: every continual arm over seeds (``cpt[lang].seeds``), per-item knowledge outcomes
#    and per-document bits in the rows, the item-level call pooled over seeds
#    (``stages[lang].item_test``), replay differences paired by seed, seed curves,
#    knowledge controls (agreement, nulls), exposures; benchmark v2's classes and keys.
RESULTS_VERSION = 3

PerLanguage = dict[str, float | None]


class CheckpointRow(TypedDict, total=False):
    """One checkpoint of one run, every measure taken on it (``experiment.measure``).
    tests/test_experiment_e2e.py checks that every key a real run writes is declared here."""
    checkpoint: str
    step: int
    tokens: int                                   # training tokens seen (this run)
    tokens_by_language: dict[str, int] | None
    weights_sha256: str
    loss: PerLanguage                             # nats / token, held-out split
    bpb: PerLanguage                              # bits / byte
    bpb_se: PerLanguage                           # document-bootstrap standard error
    eval_documents: dict[str, int]
    eval_tokens: dict[str, int]
    cloze_new: PerLanguage
    cloze_primary: PerLanguage
    cloze_new_n: dict[str, int]                   # prompts behind the cloze accuracy
    cloze_items: dict[str, list[int]]             # per prompt: 1 right, 0 wrong (item test)
    doc_bits: dict[str, list[float]]              # bits of every held-out document
    doc_bytes: dict[str, list[int]]
    lens_new_share_last: PerLanguage
    lens_new_share_mean: PerLanguage
    lens_layers: dict[str, dict[str, Any]]        # per language: per-layer lists
    lens_specific: dict[str, dict[str, Any]]      # per language: controlled effect per layer
    knowledge: dict[str, Any]                     # per class x query language: k, n, accuracy
    specific_count: dict[str, int]
    transfer_count: dict[str, int]
    transfer_ratio: PerLanguage
    transfer_by_layer: dict[str, list[int]]
    lape_point: str                               # activation point LAPE read (act_fn, ...)
    lape_assign: str                              # how neurons are assigned to languages
    lape_languages: list[str]                     # the languages LAPE's probabilities span
    lape_applicable: bool                         # whether LAPE's selection means anything
    lape_reason: str                              # why (not): the applicability check
    lape_entropy: dict[str, Any]                  # entropy summary of activation probs
    lape_tokens: dict[str, int]                   # what LAPE read, per language
    lape_documents: dict[str, int]
    lape_splits: dict[str, str]                   # which split each language was read from


class CptRun(TypedDict, total=False):
    run: str
    budgets: dict[str, int]
    checkpoints: list[CheckpointRow]


class ScratchRun(TypedDict, total=False):
    name: str
    mixture: str
    seed: int
    protocol: str                                 # equal_tokens | equal_epochs
    tokens: int
    budgets: dict[str, float]
    run: str
    same_run_as: str
    checkpoints: list[CheckpointRow]


class MixtureRecord(TypedDict):
    name: str
    shares: dict[str, float]
    tokens_at_equal_tokens: dict[str, int]
    corpus_tokens: dict[str, int]
    meta: dict[str, Any]


class ComparisonRow(TypedDict):
    mixture: str
    language: str
    measure: str
    mean: float
    ci_low: float | None
    ci_high: float | None
    n_seeds: int
    tokens: int
    diff_vs_natural: float | None
    diff_ci_low: float | None
    diff_ci_high: float | None


class Results(TypedDict, total=False):
    version: int
    name: str
    config: dict[str, Any]
    corpus: dict[str, dict[str, Any]]
    original_corpus: dict[str, int]
    primary_run: str
    cpt: dict[str, CptRun]
    cpt_replay: dict[str, CptRun]
    stages: dict[str, dict[str, Any]]
    performance_measure: dict[str, str]
    algorithm1: dict[str, Any]
    calibration: dict[str, dict[str, Any]]
    mixtures: dict[str, MixtureRecord]
    scratch_runs: list[ScratchRun]
    comparison: dict[str, Any]
    timings_seconds: dict[str, float]
    provenance: dict[str, Any]


def read_results(path: str | Path) -> Results:
    """``results.json`` of this version, or one line saying what is wrong with it."""
    data = read_json(path, "experiment results (run `babeltower experiment` first)")
    if not isinstance(data, dict) or "config" not in data:
        raise BabelError(f"{path}: not an experiment's results.json (no 'config')")
    version = data.get("version", 1)
    if version != RESULTS_VERSION:
        raise BabelError(f"{path}: results.json version {version}, this babeltower reads "
                         f"version {RESULTS_VERSION}: run the experiment again to re-measure")
    return data  # type: ignore[return-value]
