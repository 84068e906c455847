"""Typed configuration of the corpus pipeline: one pydantic model per step.

YAML in, the same object out (``CorpusConfig.model_validate(yaml.safe_load(...))``);
every output records the config it was made with (see ``babeltower.io.provenance``),
and ``prepare_data`` re-runs a step only when its config changed.
"""

from __future__ import annotations

from typing import Literal

from pydantic import Field, field_validator

from babeltower.config import Config
from babeltower.errors import BabelError
from babeltower.languages import canonical

DEFAULT_LANGUAGES = ("python", "go", "java", "php", "cpp", "rust", "javascript")


def canonical_languages(languages) -> list[str] | None:
    """Canonical, de-duplicated language ids (BabelError for an unknown one); None = all."""
    if languages is None:
        return None
    if isinstance(languages, str):
        languages = [x for x in languages.split(",")]
    out: list[str] = []
    for name in languages:
        name = str(name).strip()
        if not name:
            continue
        c = canonical(name)
        if c not in out:
            out.append(c)
    if not out:
        raise BabelError("empty language list")
    return out


_Strict = Config   # the one strict base (babeltower.config)


class FilterConfig(_Strict):
    """Which files are dropped before deduplication, and why (each drop counted by reason).

    Thresholds follow The Stack / StarCoderData practice: files over 1 MB, with a line
    over 1000 characters or a mean line over 100 (minified or data), or under 25 %
    alphanumeric characters are not code a model should learn from.
    """

    max_bytes: int = Field(1_000_000, gt=0, description="drop files larger than this (too_large)")
    min_chars: int = Field(1, ge=0, description="drop files with fewer non-space chars (empty)")
    max_line_length: int = Field(1000, gt=0, description="minified: any line longer than this")
    max_mean_line_length: float = Field(100.0, gt=0, description="minified: mean line length")
    min_alphanumeric_fraction: float = Field(0.25, ge=0, le=1, description="low_alphanumeric")
    generated_patterns: list[str] = Field(
        default_factory=lambda: [
            r"\bdo not edit\b",
            r"\bauto-?generated\b",
            r"@generated\b",
            r"\b(code|file|automatically)\s+generated\s+(by|from|with)\b",
            r"\bthis file (is|was|has been) (automatically |mechanically )?generated\b",
            r"\bgenerated\s+by\s+\S+\.(py|pl|sh|go|rb|js|php)\b",
            r"\bgenerated\s+from\s+\S+\s+with\s+\S+",
        ],
        description="case-insensitive regexes searched on comment lines at the top (generated)")
    generated_head_chars: int = Field(
        1000, ge=0, description="how much of the file's start is searched for the markers")


class DedupConfig(_Strict):
    """Exact (sha256 of the text) and near (MinHash LSH) deduplication over the whole corpus.

    Near duplicates: Jaccard similarity of the sets of ``shingle_size``-grams of code
    tokens (identifiers, numbers, single punctuation characters), estimated with
    ``num_perm`` MinHash permutations and found with LSH at ``threshold``; a candidate
    pair from LSH is confirmed only if its estimated Jaccard is >= threshold.
    BigCode's defaults for The Stack were 5-grams, 256 permutations and 0.7/0.85;
    we use 5-grams, 128 permutations and 0.7.
    """

    exact: bool = True
    near: bool = True
    threshold: float = Field(0.7, gt=0, lt=1)
    num_perm: int = Field(128, ge=16, le=1024)
    shingle_size: int = Field(5, ge=1)
    near_duplicates: Literal["drop", "group"] = Field(
        "drop", description="drop: keep one file per near-duplicate cluster; group: keep all, "
                            "but put the whole cluster in one split")


class SplitConfig(_Strict):
    """Train/validation/test by group, never splitting a group or a near-duplicate cluster.

    ``group_by``: ``auto`` = the repository where known (The Stack rows), else the
    package plus the file's directory (a Go package, a Python sub-package, a PHP
    namespace directory); ``package``; ``directory``; ``file``. Groups are shuffled with
    the seed and handed out greedily until each held-out split reaches its share of the
    language's bytes (a group that would push a held-out split past 1.5x its share goes to
    train instead).
    """

    validation: float = Field(0.03, ge=0, lt=0.5)
    test: float = Field(0.02, ge=0, lt=0.5)
    group_by: Literal["auto", "package", "directory", "file"] = "auto"


class BuildConfig(_Strict):
    languages: list[str] | None = Field(None, description="keep only these; None = all known")
    seed: int = 0
    filters: FilterConfig = Field(default_factory=FilterConfig)
    dedup: DedupConfig = Field(default_factory=DedupConfig)
    split: SplitConfig = Field(default_factory=SplitConfig)

    @field_validator("languages", mode="before")
    @classmethod
    def _langs(cls, v):
        return canonical_languages(v)


class TokenizerConfig(_Strict):
    """Byte-level BPE (HF tokenizers) on a language-balanced sample of the train split."""

    vocab_size: int = Field(4096, ge=300, le=1_000_000)
    min_frequency: int = Field(2, ge=1)
    sample_mb_per_language: float = Field(8.0, gt=0)
    languages: list[str] | None = None
    seed: int = 0
    eos_token: str = "<|endoftext|>"
    pad_token: str = "<|pad|>"

    @field_validator("languages", mode="before")
    @classmethod
    def _langs(cls, v):
        return canonical_languages(v)


class PackConfig(_Strict):
    """What a pack computes (how it is spread over processes is the ``EngineConfig``'s:
    the packed data is the same for any number of tasks and workers)."""

    batch_docs: int = Field(256, ge=1, description="documents per encode batch")


class SlurmConfig(_Strict):
    """Slurm job arrays for ``executor: slurm`` (the sbatch script is datatrove's)."""

    partition: str = "cpu"
    time: str = Field("04:00:00", description="per-task wall time limit, HH:MM:SS")
    cpus_per_task: int = Field(1, ge=1)
    mem_per_cpu_gb: int = Field(2, ge=1)
    job_name: str = "babeltower-corpus"
    env_command: str | None = Field(
        None, description="shell line that activates the environment on a node "
                          "(e.g. 'source /path/.venv/bin/activate')")
    sbatch_args: dict[str, str] = Field(default_factory=dict,
                                        description="extra #SBATCH directives (account, qos)")


class RayConfig(_Strict):
    """``executor: ray``: an existing cluster (``address``) or, with none, a local one."""

    address: str | None = Field(None, description="ray://... or host:port; None = start a local Ray")
    cpus_per_task: int = Field(1, ge=1)
    mem_per_cpu_gb: float = Field(2.0, gt=0, description="memory Ray reserves per CPU of a task")


class EngineConfig(_Strict):
    """Where the datatrove stages of ``corpus build`` and ``corpus pack`` run: datatrove's
    local executor (the default, embedded, no server), Slurm job arrays or a Ray cluster.
    The corpus (and the packed data) is the same for all of them and for any number of
    tasks."""

    executor: Literal["local", "slurm", "ray"] = "local"
    tasks: int = Field(0, ge=0, description="tasks (ranks) of the scan, LSH and tokenize "
                                            "stages; "
                                            "0 = one per core (local only)")
    workers: int = Field(0, ge=0, description="local: tasks run at once; 0 = min(tasks, cores)")
    work_dir: str | None = Field(
        None, description="stage outputs and completion markers (resume); default: "
                          "'.<out name>.datatrove' (build) or "
                          "'.<out name>.datatrove-pack' (pack) next to the output")
    slurm: SlurmConfig = Field(default_factory=SlurmConfig)
    ray: RayConfig = Field(default_factory=RayConfig)
