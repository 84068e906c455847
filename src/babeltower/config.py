"""The one config base: strict typed fields, YAML in, the same object out, ``--set``.

Every babeltower config (``TrainConfig``, ``ExperimentConfig``, the corpus configs,
``MixtureSpec``, ``LossConfig``) derives from ``Config``:

* unknown keys are refused, and a bad value is one ``BabelError`` line naming the field
  (``invalid train config: optimizer.lr: Input should be greater than 0``);
* ``from_yaml(path, overrides)`` / ``to_yaml(path)`` (written atomically) round-trip;
* ``--set key.sub=value`` strings are applied by ``apply_overrides`` (one parser for
  every CLI), the value parsed as a YAML scalar/flow value (``3``, ``1e-3``, ``[1, 2]``,
  ``null``), and ``config.with_overrides([...])`` returns a new, validated object.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, ClassVar

import yaml
from pydantic import BaseModel, ConfigDict, ValidationError

from babeltower.errors import BabelError, validation_error
from babeltower.io import atomic_write_text, read_yaml_mapping


def parse_override(item: str) -> tuple[list[str], Any]:
    """``"a.b=1"`` -> (``["a", "b"]``, ``1``): the value parsed as YAML (text if it is not)."""
    if "=" not in item:
        raise BabelError(f"--set expects key=value, got {item!r}")
    key, raw = item.split("=", 1)
    parts = [p for p in key.strip().split(".")]
    if not all(parts):
        raise BabelError(f"--set {item!r}: empty key")
    try:
        value = yaml.safe_load(raw) if raw != "" else None
    except yaml.YAMLError:
        value = raw
    return parts, value


def apply_overrides(data: dict, overrides: list[str]) -> dict:
    """Apply ``key.sub=value`` strings to a config dict in place (and return it)."""
    for item in overrides:
        parts, value = parse_override(item)
        node = data
        for part in parts[:-1]:
            nxt = node.get(part)
            if nxt is None:
                nxt = node[part] = {}
            if not isinstance(nxt, dict):
                raise BabelError(f"--set {'.'.join(parts)}: {part} is not a section")
            node = nxt
        node[parts[-1]] = value
    return data


class Config(BaseModel):
    """Strict base of every config; ``config_name`` names it in error messages."""

    model_config = ConfigDict(extra="forbid")
    config_name: ClassVar[str] = "config"

    @classmethod
    def from_dict(cls, data: Any, where: str | None = None):
        """Validate a mapping; failure is one BabelError line naming the bad field."""
        try:
            return cls.model_validate(data)
        except ValidationError as e:
            raise validation_error(e, where or f"invalid {cls.config_name}") from None

    @classmethod
    def read_yaml(cls, path: str | os.PathLike, overrides: list[str] | None = None) -> dict:
        """The YAML file's mapping with ``overrides`` applied (not yet validated)."""
        return apply_overrides(read_yaml_mapping(path, cls.config_name), list(overrides or []))

    @classmethod
    def from_yaml(cls, path: str | os.PathLike, overrides: list[str] | None = None):
        return cls.from_dict(cls.read_yaml(path, overrides))

    def to_dict(self) -> dict:
        return self.model_dump(mode="json")

    def to_yaml(self, path: str | os.PathLike) -> Path:
        return atomic_write_text(path, yaml.safe_dump(self.to_dict(), sort_keys=False))

    def with_overrides(self, overrides: list[str]):
        """A new, validated config with ``key.sub=value`` strings applied."""
        return type(self).from_dict(apply_overrides(self.to_dict(), list(overrides)))
