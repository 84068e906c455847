"""Probe suites as data: identifier pairs (primary <-> new language) with cloze prompts.

One YAML file per language pair, ``suites/<primary>-<new>.yaml``::

    primary: python
    new: php
    pairs:
      - id: strlen-len
        kind: builtin            # builtin | keyword
        primary: {identifier: "len", prompts: ["n = ", ...]}     # prompts in the primary language
        new:     {identifier: "strlen", prompts: ["<?php\\n$n = ", ...]}

Every prompt is text whose natural continuation is the identifier of its side. The
``primary`` prompts are the *mirrored* set: the same pair seen from the primary
language, so a report can show both directions.

``ProbeSuite.check(tokenizer)`` turns the text into token ids for one tokenizer. The
unit of attribution is the identifier's FIRST token after the prompt ("first-token"):
a lens reads one next-token distribution, and a multi-token identifier is credited
through its first token only. Because BPE merges a leading space into the next word,
the boundary is found on the tokenized ``prompt + identifier``: whitespace at the end
of the prompt moves into the continuation when the tokenizer merges it there
(``"n = " + "len"`` -> context ``"n ="``, continuation ``" len"``); any other merge across
the boundary drops the item, with the reason recorded.
"""

from __future__ import annotations

import os
from dataclasses import asdict, dataclass, field
from functools import lru_cache
from pathlib import Path
from typing import Literal

import yaml
from pydantic import BaseModel, Field, ValidationError, field_validator, model_validator

from babeltower.errors import BabelError
from babeltower.io import read_text_file
from babeltower.languages import Language, declared_language, resolve_language

#: Stated in every output table: how an identifier is credited from one next-token distribution.
ATTRIBUTION = "first-token"

SUITES_DIR = Path(__file__).parent / "suites"


class SideSpec(BaseModel):
    identifier: str = Field(min_length=1)
    # may be empty on one side: a user pair with prompts only in the new language needs no
    # (dummy) primary-language prompt; the pair check asks for at least one prompt in all
    prompts: list[str] = Field(default_factory=list)

    @field_validator("identifier")
    @classmethod
    def _no_outer_space(cls, v: str) -> str:
        if v != v.strip():
            raise ValueError("identifier must not start or end with whitespace "
                             "(put spacing at the end of the prompt)")
        return v


class PairSpec(BaseModel):
    id: str = Field(min_length=1)
    kind: Literal["builtin", "keyword"]
    primary: SideSpec
    new: SideSpec

    @model_validator(mode="after")
    def _some_prompt(self) -> "PairSpec":
        if not self.primary.prompts and not self.new.prompts:
            raise ValueError(f"pair {self.id!r} has no prompts on either side")
        return self


class LanguageSpec(BaseModel):
    """A language a suite file declares for itself (one not built into babeltower)."""

    name: str
    extensions: list[str]
    display: str | None = None

    def language(self) -> Language:
        return declared_language(self.name, self.extensions, self.display)


class ProbeSuite(BaseModel):
    """One language pair's probe suite (the YAML file, validated)."""

    primary: str
    new: str
    pairs: list[PairSpec] = Field(min_length=1)
    languages: list[LanguageSpec] = Field(default_factory=list)  # user-declared languages
    source: str | None = None  # file it was loaded from (set by load_suite)

    @model_validator(mode="after")
    def _known_languages(self) -> "ProbeSuite":
        self.primary = resolve_language(self.primary, self.declared())
        self.new = resolve_language(self.new, self.declared())
        if self.primary == self.new:
            raise ValueError(f"primary and new language are both {self.primary!r}")
        return self

    @field_validator("pairs")
    @classmethod
    def _unique_pairs_and_prompts(cls, v: list[PairSpec]) -> list[PairSpec]:
        seen: set[str] = set()
        items: dict[tuple, str] = {}
        for p in v:
            if p.id in seen:
                raise ValueError(f"duplicate pair id {p.id!r}")
            seen.add(p.id)
            for side, other in (("primary", "new"), ("new", "primary")):
                spec = getattr(p, side)
                # the same prompt for the same target and counterpart twice would count one
                # measurement twice; the same TEXT for another target is allowed (the
                # analysis groups prompts by text, see lens.lens_controls)
                for prompt in spec.prompts:
                    key = (side, prompt, spec.identifier, getattr(p, other).identifier)
                    if key in items:
                        raise ValueError(f"duplicate prompt {prompt!r} ({side} side of pair "
                                         f"{p.id!r}, already in pair {items[key]!r})")
                    items[key] = p.id
        return v

    def declared(self) -> dict[str, Language]:
        """The languages this suite declares, by id (BabelError for a bad declaration)."""
        return {lang.name: lang for lang in (spec.language() for spec in self.languages)}

    @property
    def name(self) -> str:
        return f"{self.primary}-{self.new}"

    def n_prompts(self) -> int:
        return sum(len(p.primary.prompts) + len(p.new.prompts) for p in self.pairs)

    def check(self, tokenizer, add_bos: bool | None = None) -> "CheckedSuite":
        """Tokenize every prompt for ``tokenizer`` and locate each identifier's first token.

        ``add_bos``: prepend the tokenizer's BOS token to every prompt. ``None`` (default)
        does what the tokenizer does itself with ``add_special_tokens=True``.
        """
        return check_suite(self, tokenizer, add_bos=add_bos)


@dataclass
class CheckedItem:
    """One prompt of one side of one pair, ready for a model."""

    pair_id: str
    kind: str                     # builtin | keyword
    side: str                     # "primary" | "new": which language the prompt is in
    language: str                 # that language's name
    prompt: str                   # the prompt text as written in the suite
    context: str                  # the text the model sees (prompt minus whitespace moved on)
    prompt_ids: list[int]         # token ids of ``context`` (BOS included if used)
    target: str                   # this side's identifier
    target_first_id: int          # first token of the identifier after the prompt
    target_ids: list[int]         # all tokens of the continuation (identifier incl. moved space)
    counterpart: str              # the other side's identifier
    counterpart_first_id: int     # its first token after the same prompt
    control_ids: list[int] = field(default_factory=list)  # other pairs' primary first tokens
    shared_first_token: bool = False  # target and counterpart start with the same token
    counterpart_ids: list[int] = field(default_factory=list)  # all tokens of the counterpart
    # other pairs' NEW-language first tokens after the same context (the second control:
    # do unrelated new tokens beat this primary token as often as the true pair's does?)
    control_new_ids: list[int] = field(default_factory=list)
    # the control_ids of the other pairs of the SAME kind (keyword | builtin) as this pair:
    # the kind-matched control A (lens.lens_controls(control="kind")), so a preference for
    # keywords (or builtins) in general is not read as a counterpart effect
    control_kind_ids: list[int] = field(default_factory=list)

    @property
    def primary_first_id(self) -> int:
        return self.target_first_id if self.side == "primary" else self.counterpart_first_id

    @property
    def new_first_id(self) -> int:
        return self.target_first_id if self.side == "new" else self.counterpart_first_id

    @property
    def primary_ids(self) -> list[int]:
        return self.target_ids if self.side == "primary" else self.counterpart_ids

    @property
    def new_ids(self) -> list[int]:
        return self.target_ids if self.side == "new" else self.counterpart_ids


@dataclass
class DroppedItem:
    pair_id: str
    side: str
    prompt: str
    reason: str


@dataclass
class CheckedSuite:
    """A suite tokenized for one tokenizer.

    ``items`` are the usable prompts; ``shared`` are prompts whose pair's two identifiers
    start with the same token (they cannot be told apart by first-token attribution, so
    they are left out of primary/new shares but still usable for cloze accuracy);
    ``dropped`` lists prompts that could not be aligned, with the reason.
    """

    suite: ProbeSuite
    items: list[CheckedItem]
    shared: list[CheckedItem]
    dropped: list[DroppedItem]
    bos_id: int | None
    attribution: str = ATTRIBUTION

    @property
    def primary(self) -> str:
        return self.suite.primary

    @property
    def new(self) -> str:
        return self.suite.new

    @property
    def shared_pairs(self) -> list[str]:
        return sorted({it.pair_id for it in self.shared})

    def select(self, side: str | None = None, kind: str | None = None,
               include_shared: bool = False) -> list[CheckedItem]:
        pool = self.items + (self.shared if include_shared else [])
        return [it for it in pool if (side is None or it.side == side)
                and (kind is None or it.kind == kind)]

    def to_frame(self):
        """All items (usable, shared, dropped) as one pandas DataFrame with a ``status`` column."""
        import pandas as pd

        rows = []
        for status, group in (("ok", self.items), ("shared_first_token", self.shared)):
            for it in group:
                d = asdict(it)
                d["status"] = status
                d["reason"] = ""
                rows.append(d)
        for dr in self.dropped:
            rows.append({"pair_id": dr.pair_id, "side": dr.side, "prompt": dr.prompt,
                         "status": "dropped", "reason": dr.reason})
        df = pd.DataFrame(rows)
        df["attribution"] = self.attribution
        return df

    def summary(self) -> dict:
        return {
            "suite": self.suite.name,
            "attribution": self.attribution,
            "pairs": len(self.suite.pairs),
            "prompts": self.suite.n_prompts(),
            "usable": len(self.items),
            "usable_by_side": {s: len(self.select(side=s)) for s in ("primary", "new")},
            "shared_first_token_pairs": self.shared_pairs,
            "dropped": len(self.dropped),
            "dropped_reasons": sorted({d.reason for d in self.dropped}),
        }


# --------------------------------------------------------------------------- loading

def available_suites(path: str | os.PathLike | None = None) -> list[str]:
    """Names ("python-php", ...) of the built-in suites, or of the suites in ``path``."""
    if path is None:
        return sorted(p.stem for p in SUITES_DIR.glob("*.yaml"))
    root = Path(path)
    if not root.exists():
        raise BabelError(f"probe suite path not found: {root}")
    files = [root] if not root.is_dir() else sorted(root.glob("*.yaml"))
    if not files:
        raise BabelError(f"no probe suites (*.yaml) in {root}")
    for f in files:       # a user's suite is listed only if it would load
        _read_suite_file(f)
    return [f.stem for f in files]


def _read_suite_file(path: Path) -> ProbeSuite:
    text = read_text_file(path, "probe suite")   # binary / non-UTF-8: one line
    try:
        raw = yaml.safe_load(text)
    except yaml.YAMLError as e:
        raise BabelError(f"probe suite {path} is not valid YAML: {str(e).splitlines()[0]}") from e
    if not isinstance(raw, dict):
        raise BabelError(f"probe suite {path} must be a mapping with primary, new, pairs")
    try:
        suite = ProbeSuite.model_validate({**raw, "source": str(path)})
    except ValidationError as e:
        err = e.errors()[0]
        loc = ".".join(str(x) for x in err["loc"])
        msg = err["msg"].removeprefix("Value error, ")
        raise BabelError(f"probe suite {path}: {loc + ': ' if loc else ''}{msg}") from e
    return suite


def _language_key(name: str) -> str:
    """File-name form of a language name: the built-in id, or the name as written
    (lower case) for a language a user suite declares itself."""
    key = str(name).strip().lower()
    try:
        return resolve_language(key)
    except BabelError:
        return key


def load_suite(primary: str, new: str, path: str | os.PathLike | None = None) -> ProbeSuite:
    """Load the probe suite for (primary, new).

    ``path`` may be a suite file or a directory of user suites (``<primary>-<new>.yaml``);
    without it the built-in suites are used. An unknown pair is a BabelError that lists
    the available suites.
    """
    primary_c, new_c = _language_key(primary), _language_key(new)
    if path is not None:
        p = Path(path)
        if not p.exists():
            raise BabelError(f"probe suite path not found: {p}")
        if p.is_file():
            suite = _read_suite_file(p)
            if (suite.primary, suite.new) != (primary_c, new_c):
                raise BabelError(f"probe suite {p} is {suite.primary}-{suite.new}, "
                                 f"not {primary_c}-{new_c}")
            return suite
        root = p
        f = root / f"{primary_c}-{new_c}.yaml"
        if f.exists():
            suite = _read_suite_file(f)
            if (suite.primary, suite.new) != (primary_c, new_c):
                raise BabelError(f"probe suite {f} is {suite.primary}-{suite.new}, "
                                 f"not {primary_c}-{new_c}")
            return suite
    else:
        root = SUITES_DIR
        # only user suites may declare languages: a name unknown here is a typo
        resolve_language(primary), resolve_language(new)
    f = root / f"{primary_c}-{new_c}.yaml"
    if not f.exists():
        avail = ", ".join(available_suites(root)) or "none"
        raise BabelError(f"no probe suite for {primary_c}-{new_c} in {root} (available: {avail})")
    return _read_suite_file(f)


# --------------------------------------------------------------------------- tokenizer check

class _Aligner:
    """Split ``prompt + identifier`` into (context ids, continuation ids) for one tokenizer."""

    def __init__(self, tokenizer, bos_id: int | None):
        self.tok = tokenizer
        self.bos = [bos_id] if bos_id is not None else []
        self.align = lru_cache(maxsize=None)(self._align)

    def _decode(self, ids: list[int]) -> str:
        return self.tok.decode(ids, skip_special_tokens=False, clean_up_tokenization_spaces=False)

    def _align(self, prompt: str, identifier: str):
        """-> (context_text, context_ids, continuation_ids) or a str reason."""
        ids = self.tok(prompt + identifier, add_special_tokens=False)["input_ids"]
        ids = list(ids)
        # the largest cut whose decoded prefix is the prompt, or the prompt without some of
        # its trailing whitespace (BPE merges " len" into one token)
        for k in range(len(ids), -1, -1):
            head = self._decode(ids[:k])
            if len(head) > len(prompt) or not prompt.startswith(head):
                continue
            rest = prompt[len(head):]
            if rest.strip():
                return ("identifier merges with the end of the prompt "
                        f"({rest!r} + {identifier!r} is one token)")
            if k == len(ids):
                return "identifier has no tokens"
            # SentencePiece-style decoders drop the leading space of a sequence
            if self._decode(ids[k:]).lstrip() != (rest + identifier).lstrip():
                return "continuation does not decode back to the identifier"
            return head, self.bos + ids[:k], ids[k:]
        return "prompt cannot be aligned with its tokens"


def _bos_for(tokenizer, add_bos: bool | None) -> int | None:
    bos = getattr(tokenizer, "bos_token_id", None)
    if add_bos is False or bos is None:
        return None
    if add_bos is True:
        return int(bos)
    with_special = tokenizer("a", add_special_tokens=True)["input_ids"]
    without = tokenizer("a", add_special_tokens=False)["input_ids"]
    if len(with_special) > len(without) and with_special[0] == bos:
        return int(bos)
    return None


def _control_ids(al: _Aligner, suite: ProbeSuite, pair_id: str, prompt: str,
                 ctx_ids: list[int], side: str, exclude: tuple[int, int],
                 kind: str | None = None) -> list[int]:
    """First tokens of the OTHER pairs' ``side`` identifiers after the same context: the
    controls (only pairs of ``kind`` when given). A token equal to this item's target or
    counterpart first token would be no control, and one that aligns at another boundary
    is not the same next-token question."""
    out: list[int] = []
    for op in suite.pairs:
        if op.id == pair_id or (kind is not None and op.kind != kind):
            continue
        g = al.align(prompt, getattr(op, side).identifier)
        if isinstance(g, str) or g[1] != ctx_ids:
            continue
        cid = g[2][0]
        if cid not in exclude and cid not in out:
            out.append(cid)
    return out


def check_suite(suite: ProbeSuite, tokenizer, add_bos: bool | None = None) -> CheckedSuite:
    """See ``ProbeSuite.check``."""
    bos_id = _bos_for(tokenizer, add_bos)
    al = _Aligner(tokenizer, bos_id)
    items: list[CheckedItem] = []
    shared: list[CheckedItem] = []
    dropped: list[DroppedItem] = []
    lang = {"primary": suite.primary, "new": suite.new}
    for pair in suite.pairs:
        for side, other in (("primary", "new"), ("new", "primary")):
            spec, ospec = getattr(pair, side), getattr(pair, other)
            for prompt in spec.prompts:
                got = al.align(prompt, spec.identifier)
                if isinstance(got, str):
                    dropped.append(DroppedItem(pair.id, side, prompt, got))
                    continue
                context, ctx_ids, tgt_ids = got
                cgot = al.align(prompt, ospec.identifier)
                if isinstance(cgot, str) or cgot[1] != ctx_ids:
                    why = cgot if isinstance(cgot, str) else "aligns at a different boundary"
                    dropped.append(DroppedItem(pair.id, side, prompt,
                                               f"counterpart {ospec.identifier!r}: {why}"))
                    continue
                cp_first = cgot[2][0]
                controls = _control_ids(al, suite, pair.id, prompt, ctx_ids, "primary",
                                        (tgt_ids[0], cp_first))
                controls_new = _control_ids(al, suite, pair.id, prompt, ctx_ids, "new",
                                            (tgt_ids[0], cp_first))
                controls_kind = _control_ids(al, suite, pair.id, prompt, ctx_ids, "primary",
                                             (tgt_ids[0], cp_first), kind=pair.kind)
                item = CheckedItem(
                    pair_id=pair.id, kind=pair.kind, side=side, language=lang[side],
                    prompt=prompt, context=context, prompt_ids=ctx_ids,
                    target=spec.identifier, target_first_id=tgt_ids[0], target_ids=tgt_ids,
                    counterpart=ospec.identifier, counterpart_first_id=cp_first,
                    control_ids=controls, shared_first_token=tgt_ids[0] == cp_first,
                    counterpart_ids=list(cgot[2]), control_new_ids=controls_new,
                    control_kind_ids=controls_kind)
                (shared if item.shared_first_token else items).append(item)
    return CheckedSuite(suite=suite, items=items, shared=shared, dropped=dropped, bos_id=bos_id)
