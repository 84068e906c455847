"""A mixture: how many tokens of each language a run trains on.

A ``MixtureSpec`` is the one object that flows from the generators (natural, uniform,
temperature, UniMax), from Algorithm 1 and from RegMix into training. YAML in, the same
object out::

    name: optimized
    budgets: {python: 11000000, php: 5000000}   # absolute tokens
    allow_repeat: false
    exclude_knowledge: [python]   # optional: never read python's injected fact documents
    meta: {generator: algorithm1, ...}

or, with fractions (all <= 1, summing to 1) and a total::

    budgets: {python: 0.5, php: 0.5}
    total_tokens: 4000000

Tokens here are tokens of a language's packed stream (documents plus their EOS
separators, see ``corpus/shards.py``), the same unit ``available_tokens`` reports.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import pydantic
import yaml

from babeltower.config import Config
from babeltower.errors import BabelError
from babeltower.io import sha256_json
from babeltower.languages import canonical

FRACTION_TOLERANCE = 1e-6


def largest_remainder(targets: dict[str, float], total: int,
                      caps: dict[str, int] | None = None) -> dict[str, int]:
    """Round non-negative ``targets`` (summing to ``total``) to integers summing exactly to it.

    Hamilton's method: floor every target, then give the missing units to the largest
    fractional parts (ties broken by name, so the result is deterministic). A target that
    equals its integer cap has no fractional part and so never receives an extra unit.
    """
    floors = {k: int(math.floor(v + 1e-9)) for k, v in targets.items()}
    missing = total - sum(floors.values())
    order = sorted(targets, key=lambda k: (-(targets[k] - floors[k]), k))
    for k in order:
        if missing <= 0:
            break
        if caps is not None and floors[k] + 1 > caps[k]:
            continue
        floors[k] += 1
        missing -= 1
    if missing > 0:
        raise BabelError(f"cannot distribute {total} tokens within the per-language caps")
    return floors


class MixtureSpec(Config):
    """Per-language token budgets for one training run (from_dict/from_yaml keep their own
    messages, which name the mixture file; YAML out and ``with_overrides`` from ``Config``)."""

    config_name = "mixture"

    name: str = "custom"
    # per language: absolute tokens (>= 1) or fractions (all <= 1 summing to 1, then
    # total_tokens is required). A budget of 0 leaves the language out. See ``kind``.
    budgets: dict[str, int | float]
    total_tokens: int | None = None
    # may a language be repeated (epochs > 1) to meet its budget?
    allow_repeat: bool = False
    # languages whose windows overlapping an injected knowledge document are never read
    # (the sampler draws their budget from the other windows; see mixture/sampler.py)
    exclude_knowledge: list[str] = pydantic.Field(default_factory=list)
    # free-form provenance of how it was generated (generator name, tau, Algorithm-1 numbers)
    meta: dict[str, Any] = pydantic.Field(default_factory=dict)

    @pydantic.field_validator("budgets", mode="before")
    @classmethod
    def _canonical_budgets(cls, v: Any) -> Any:
        if not isinstance(v, dict) or not v:
            raise BabelError("mixture budgets must be a non-empty mapping language -> tokens")
        out: dict[str, int | float] = {}
        for lang, b in v.items():
            name = canonical(lang)   # BabelError for an unknown language
            if name in out:
                raise BabelError(f"language {name!r} appears twice in the mixture budgets")
            try:
                val = float(b)
            except (TypeError, ValueError):
                raise BabelError(f"budget for {name} is not a number: {b!r}") from None
            if not math.isfinite(val) or val < 0:
                raise BabelError(f"budget for {name} must be a finite number >= 0, got {b!r}")
            # integral budgets stay ints so YAML reads 5000000, not 5000000.0
            out[name] = int(val) if val >= 1 and val.is_integer() else val
        if not any(val > 0 for val in out.values()):
            raise BabelError("every budget in the mixture is 0")
        return out

    @pydantic.field_validator("exclude_knowledge", mode="before")
    @classmethod
    def _canonical_excluded(cls, v: Any) -> Any:
        if v is None:
            return []
        if isinstance(v, str):
            v = [x for x in v.split(",") if x.strip()]
        if not isinstance(v, (list, tuple)):
            raise BabelError(f"exclude_knowledge must be a list of languages, got {v!r}")
        return sorted({canonical(str(x).strip()) for x in v})

    @pydantic.model_validator(mode="after")
    def _consistent(self) -> "MixtureSpec":
        self.kind  # raises for mixed absolute/fractional budgets or a bad fraction sum
        unread = [lang for lang in self.exclude_knowledge if not self.budgets.get(lang)]
        if unread:
            raise BabelError(f"exclude_knowledge names {unread[0]}, which has no budget in "
                             "this mixture (nothing of it is read)")
        if self.total_tokens is not None and self.total_tokens < 1:
            raise BabelError(f"total_tokens must be >= 1, got {self.total_tokens}")
        return self

    # ---- interpretation -------------------------------------------------------------
    @property
    def kind(self) -> str:
        """``"fractions"`` or ``"absolute"`` (BabelError if neither)."""
        positive = {k: v for k, v in self.budgets.items() if v > 0}
        # all <= 1 means fractions, unless they are whole tokens (1 each) that add up to
        # total_tokens (or there is no total): {python: 1.0} with total 1000 is a fraction
        fractional = all(v <= 1.0 for v in positive.values()) and (
            any(v < 1 for v in positive.values())
            or (self.total_tokens is not None and self.total_tokens != sum(positive.values())))
        if fractional:
            s = sum(positive.values())
            if abs(s - 1.0) > FRACTION_TOLERANCE:
                raise BabelError(f"budget fractions sum to {s:.9g}, not 1 (tolerance "
                                 f"{FRACTION_TOLERANCE}); give absolute token counts or fix "
                                 "the fractions")
            if self.total_tokens is None:
                raise BabelError("budgets are fractions, so total_tokens is required")
            return "fractions"
        small = sorted(k for k, v in positive.items() if v < 1)
        if small:
            raise BabelError(f"budgets mix absolute token counts and fractions ({small[0]}: "
                             f"{positive[small[0]]}); use one or the other")
        return "absolute"

    def absolute_budgets(self) -> dict[str, int]:
        """Integer token budget per language (languages with budget 0 left out)."""
        positive = {k: v for k, v in self.budgets.items() if v > 0}
        if self.kind == "fractions":
            total = int(self.total_tokens)
            s = sum(positive.values())
            return {k: v for k, v in largest_remainder(
                {k: total * v / s for k, v in positive.items()}, total).items() if v > 0}
        out = {k: int(round(v)) for k, v in positive.items()}
        if self.total_tokens is not None and self.total_tokens != sum(out.values()):
            raise BabelError(f"absolute budgets sum to {sum(out.values())} tokens but "
                             f"total_tokens is {self.total_tokens}")
        return out

    def resolve(self, available: dict[str, int]) -> dict[str, int]:
        """Absolute tokens per language, checked against what is ``available``.

        BabelError (one line, naming the language and both numbers) if a language is not
        in ``available`` or a budget exceeds its available tokens while ``allow_repeat``
        is False.
        """
        avail = {canonical(k): int(v) for k, v in available.items()}
        out = self.absolute_budgets()
        for lang, b in out.items():
            if lang not in avail:
                have = ", ".join(sorted(avail)) or "nothing"
                raise BabelError(f"mixture asks for {b} tokens of {lang}, but the data has no "
                                 f"{lang} (has: {have})")
            if avail[lang] <= 0:
                raise BabelError(f"mixture asks for {b} tokens of {lang}, but 0 are available")
            if b > avail[lang] and not self.allow_repeat:
                raise BabelError(f"mixture asks for {b} tokens of {lang} but only {avail[lang]} "
                                 f"are available; set allow_repeat: true to repeat it "
                                 f"({b / avail[lang]:.2f} epochs) or lower the budget")
        return out

    def fingerprint(self) -> str:
        """sha256 of what determines the data stream (budgets, total, repeat, excluded
        knowledge; not name/meta). Without exclusions it is the fingerprint of old specs."""
        d: dict[str, Any] = {"budgets": self.budgets, "total_tokens": self.total_tokens,
                             "allow_repeat": self.allow_repeat}
        if self.exclude_knowledge:
            d["exclude_knowledge"] = list(self.exclude_knowledge)
        return sha256_json(d)

    def to_dict(self) -> dict:
        """JSON/YAML form; ``exclude_knowledge`` only when set (older files read the same)."""
        d = super().to_dict()
        if not d.get("exclude_knowledge"):
            d.pop("exclude_knowledge", None)
        return d

    # ---- io -------------------------------------------------------------------------
    @classmethod
    def from_dict(cls, d: Any, source: str = "mixture") -> "MixtureSpec":
        if not isinstance(d, dict):
            raise BabelError(f"{source}: expected a mapping with 'budgets', got {type(d).__name__}")
        try:
            return cls.model_validate(d)
        except pydantic.ValidationError as e:
            err = e.errors()[0]
            loc = ".".join(str(p) for p in err.get("loc", ())) or "mixture"
            raise BabelError(f"{source}: invalid {loc}: {err.get('msg')}") from None

    @classmethod
    def from_yaml(cls, path: str | Path) -> "MixtureSpec":
        p = Path(path)
        if not p.is_file():
            raise BabelError(f"mixture file not found: {p}")
        try:
            data = yaml.safe_load(p.read_text())
        except yaml.YAMLError as e:
            raise BabelError(f"mixture file {p} is not valid YAML: "
                             f"{str(e).splitlines()[0]}") from None
        return cls.from_dict(data, source=str(p))

    @classmethod
    def from_any(cls, x: "MixtureSpec | dict | str | Path") -> "MixtureSpec":
        if isinstance(x, MixtureSpec):
            return x
        if isinstance(x, dict):
            return cls.from_dict(x)
        if isinstance(x, (str, Path)):
            return cls.from_yaml(x)
        raise BabelError(f"cannot make a mixture from {type(x).__name__}")
