"""Logit lens over checkpoint series (filled in below)."""

from __future__ import annotations

from babeltower.errors import BabelError


def load_tokenizer(path: str):
    """A tokenizer from a tokenizer/model directory, a packed DATA dir, or a .gguf file."""
    from pathlib import Path

    from transformers import AutoTokenizer

    p = Path(path)
    if p.is_file() and p.suffix.lower() == ".gguf":
        from babeltower.checkpoints import convert_gguf

        p = convert_gguf(p)
    elif (p / "tokenizer").is_dir() and (p / "manifest.json").exists():
        p = p / "tokenizer"
    if not p.exists():
        raise BabelError(f"tokenizer not found: {p}")
    try:
        return AutoTokenizer.from_pretrained(p)
    except (OSError, ValueError) as e:
        raise BabelError(f"cannot load tokenizer from {p}: {e}".splitlines()[0]) from e
