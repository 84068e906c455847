"""The experiment's one typed config (YAML in, the same object out).

Every knob of the Babel Tower study: which languages, how much of each phase, which
mixtures to compare, how many seeds. Validation happens before any work starts, so a
bad config fails in a second, not an hour in.
"""

from __future__ import annotations

from pathlib import Path
from typing import ClassVar, Literal

from pydantic import Field, field_validator, model_validator

from babeltower.config import Config
from babeltower.errors import BabelError
from babeltower.languages import canonical

BASELINES = ("natural", "uniform", "temperature-0.3", "temperature-0.5", "unimax")


_Strict = Config   # the one strict base (babeltower.config)


class KnowledgeSettings(_Strict):
    """The controlled-knowledge benchmark injected into the corpus (docs/knowledge.md);
    its primary and new languages are the experiment's."""
    facts_per_class: int = Field(60, ge=1)
    exposures: int = Field(500, ge=1)
    facts_per_document: int = Field(4, ge=1)
    n_answers: int = Field(20, ge=2)
    # benchmark v2 (docs/knowledge.md): key variants (same identifier in every language,
    # or one per language bound by a declared map), a never-taught class (the measured
    # chance), decoy queries, how the map is taught, the query forms
    keys: list[str] = ["same", "mapped"]
    never_taught: bool = True
    decoys: bool = True
    bridge_keys: Literal["fresh", "fixed"] = "fresh"
    query_forms: list[str] | None = None
    mirror_threshold: int | None = None
    seed: int = 0


class CorpusSettings(_Strict):
    fetch: bool = True                        # gather the offline default corpus from packages
    sources: list[str] = []                   # extra sources for `corpus build` (dirs, archives, JSONL/Parquet, dataset ids)
    # cap of raw source per language (keeps `make run` short): one number for all, or
    # per language, e.g. {python: 12, default: 4}
    max_mb_per_language: float | dict[str, float] = 6.0
    vocab_size: int = 4096
    seed: int = 0
    # held-out shares of each language's bytes (split by package/group, never inside one)
    validation: float = Field(0.03, ge=0, lt=0.5)
    test: float = Field(0.02, ge=0, lt=0.5)
    # the controlled-knowledge benchmark (None: off)
    knowledge: KnowledgeSettings | None = None


class ModelSettings(_Strict):
    preset: str = "nano"                      # a train preset name or an HF config.json path
    seq_len: int = 256


class PhaseSettings(_Strict):
    tokens: int = Field(gt=0)                 # training tokens of this phase
    lr: float = Field(gt=0)
    min_lr_ratio: float = 0.1
    warmup_tokens: int = 0
    batch_size: int = 16                      # sequences per optimiser step
    # steps; "log": log-spaced (0,1,2,4,...) then evenly spaced (Pythia-like); "even":
    # n_checkpoints evenly spaced over the phase (what a stage test needs to see a peak
    # in the middle: `babeltower stages power` says how many)
    checkpoints: list[int] | Literal["log", "even"] = "log"
    n_checkpoints: int = Field(16, ge=2)


class ContinualSettings(PhaseSettings):
    # > 0: a second continual pre-training arm per new language in which this share of
    # every batch is primary-language replay, so a drop can be told apart from forgetting
    replay_share: float = Field(0.0, ge=0.0, lt=1.0)
    # data-order seeds of every continual arm (the model starts from the same primary
    # checkpoint; the seed draws which windows of the new language are read and in what
    # order). One run is one draw: stage calls pool over these (docs/stages.md). The
    # first seed is measured with every probe; the others with the knowledge benchmark
    # at every checkpoint and loss at the ends.
    seeds: list[int] = Field(default_factory=lambda: [0], min_length=1)
    # a third arm: the same replay share, but the replayed primary text excludes the
    # injected fact documents, so retention (no re-exposure) and re-exposure separate
    replay_without_facts: bool = False

    @field_validator("seeds")
    @classmethod
    def _distinct_seeds(cls, v: list[int]) -> list[int]:
        if len(set(v)) != len(v):
            raise ValueError(f"continual.seeds has duplicates: {v}")
        return v


class EvaluationSettings(_Strict):
    val_tokens_per_language: int = 16384      # held-out tokens scored per language per checkpoint
    # The per-checkpoint performance signal for stages and Algorithm 1. At CPU scale pass@k
    # is zero, so the default is cloze accuracy on the probe suite; "neg_bpb" uses held-out
    # bits-per-byte (higher is better after negation).
    performance: Literal["cloze", "neg_bpb", "knowledge"] = "cloze"
    # the primary language's loss / bpb on every k-th CPT checkpoint (and the last): its
    # forgetting curve is smooth, and loss is most of a checkpoint's measurement time;
    # the new language's loss (Algorithm 1's curve) is read at every checkpoint
    primary_loss_every: int = Field(1, ge=1)
    # item-level simulations behind the report's power at the run's own fitted churn
    # (0: not simulated); each costs ~0.1-0.3 s on 2 cores
    power_sims: int = Field(100, ge=0)


class ProbeSettings(_Strict):
    lens: bool = True
    neurons: bool = True
    neuron_tokens_per_language: int = 8192
    every: int = Field(1, ge=1)              # LAPE on every k-th CPT checkpoint (and the last)
    # LAPE: share of lowest-entropy neurons kept. Tang et al. use 1-5%; tiny models have
    # ~2k MLP neurons, so 1% would be ~20 neurons split over all languages.
    top_rate: float = 0.05
    # languages LAPE also reads as held-out text only (never trained on): LAPE's entropy
    # over two languages is degenerate, Tang et al. use seven (docs/probes.md)
    lape_languages: list[str] = []

    @field_validator("lape_languages")
    @classmethod
    def _lape_langs(cls, v: list[str]) -> list[str]:
        return [canonical(x) for x in v]


class ScratchSettings(_Strict):
    tokens: int = Field(gt=0)                 # equal-compute budget for every mixture
    lr: float = 3e-3
    batch_size: int = 16
    mixtures: list[str] = ["natural", "optimized", "uniform", "temperature-0.3",
                           "temperature-0.5", "unimax", "regmix"]
    seeds: list[int] = [0, 1]
    equal_epochs: bool = True                 # also train natural vs optimized at equal epochs
    checkpoints: list[int] | Literal["log"] = "log"   # internal states are tracked here too
    # the "original corpus" Algorithm 1 down-samples: shares per language (the paper's
    # shape: the primary a minority, new languages larger), or None = the train split's
    # natural distribution
    original: dict[str, float] | None = None
    # "always", or "cut": only when Algorithm 1 cuts a language - otherwise the optimised
    # corpus IS the original one and the runs would compare a corpus with itself
    run_when: Literal["always", "cut"] = "always"

    @field_validator("mixtures")
    @classmethod
    def _known(cls, v: list[str]) -> list[str]:
        for m in v:
            if m not in (*BASELINES, "optimized", "regmix"):
                raise ValueError(f"unknown mixture {m!r} (known: {', '.join((*BASELINES, 'optimized', 'regmix'))})")
        return v


class Algorithm1Settings(_Strict):
    """Algorithm 1's guard rails (docs/mixtures.md)."""
    beta: Literal["fit_exp", "tail", "last_k", "min"] = "fit_exp"   # the converged loss
    p_threshold: float = Field(0.05, gt=0, le=1)   # a stage call above it keeps all data
    floor_fraction: float = Field(0.05, ge=0, le=1)   # no language below this share


class RegMixSettings(_Strict):
    proxies: int = 6                          # proxy runs on Dirichlet-sampled mixtures
    proxy_tokens: int = 60_000
    dirichlet_alpha: float = 1.0


class ExperimentConfig(_Strict):
    config_name: ClassVar[str] = "experiment config"

    name: str = "default"
    workdir: Path = Path("runs/default")
    primary: str = "python"
    new_languages: list[str] = ["go", "php", "cpp", "java"]
    corpus: CorpusSettings = CorpusSettings()
    model: ModelSettings = ModelSettings()
    primary_phase: PhaseSettings
    continual: ContinualSettings
    evaluation: EvaluationSettings = EvaluationSettings()
    probes: ProbeSettings = ProbeSettings()
    scratch: ScratchSettings
    regmix: RegMixSettings = RegMixSettings()
    algorithm1: Algorithm1Settings = Algorithm1Settings()
    device: str = "cpu"
    seed: int = 0

    @field_validator("primary")
    @classmethod
    def _primary(cls, v: str) -> str:
        return canonical(v)

    @field_validator("new_languages")
    @classmethod
    def _new(cls, v: list[str]) -> list[str]:
        if not v:
            raise ValueError("at least one new language is needed")
        return [canonical(x) for x in v]

    @model_validator(mode="after")
    def _distinct(self) -> "ExperimentConfig":
        if self.primary in self.new_languages:
            raise ValueError(f"primary language {self.primary!r} is also listed as a new language")
        if len(set(self.new_languages)) != len(self.new_languages):
            raise ValueError("new_languages has duplicates")
        return self

    @model_validator(mode="after")
    def _original_shares(self) -> "ExperimentConfig":
        orig = self.scratch.original
        if orig is not None:
            unknown = sorted(set(orig) - set(self.languages))
            if unknown or sorted(orig) != sorted(self.languages):
                raise ValueError(f"scratch.original must give a share for each of "
                                 f"{', '.join(self.languages)} (got {', '.join(sorted(orig))})")
            if any(v <= 0 for v in orig.values()):
                raise ValueError("scratch.original shares must be positive")
        return self

    @model_validator(mode="after")
    def _knowledge_signal(self) -> "ExperimentConfig":
        if self.evaluation.performance == "knowledge" and self.corpus.knowledge is None:
            raise ValueError("evaluation.performance: knowledge needs corpus.knowledge "
                             "(the benchmark injected into the corpus)")
        return self

    @property
    def languages(self) -> list[str]:
        return [self.primary, *self.new_languages]

    @property
    def corpus_languages(self) -> list[str]:
        """Languages in the corpus: the trained ones and LAPE's held-out-only ones."""
        return self.languages + [x for x in self.probes.lape_languages if x not in self.languages]

    @classmethod
    def from_yaml(cls, path: str | Path, overrides: list[str] | dict | None = None,
                  ) -> "ExperimentConfig":
        """The base ``Config.from_yaml`` with two additions: overrides may be a mapping,
        and a missing ``primary`` is named (it has no sensible default)."""
        if isinstance(overrides, dict):
            overrides = [f"{k}={v}" for k, v in overrides.items()]
        raw = cls.read_yaml(path, overrides)
        if "primary" not in raw:
            raise BabelError(f"{path}: missing 'primary' (the primary language, e.g. python)")
        return cls.from_dict(raw, where=str(path))
