"""Writing a training run's checkpoints: schedule, atomic writes, where to resume.

(The reading side - listing and opening any checkpoint series, ours, an HF repo's
revisions or GGUF files, for the probes - is ``babeltower.checkpoints``.)

A checkpoint ``RUN/checkpoints/step-XXXXXXXX/`` (8 digits) holds

* ``config.json`` + ``model.safetensors`` (``save_pretrained``; opens with
  ``AutoModelForCausalLM.from_pretrained``) and the tokenizer files;
* ``training_state.pt``: optimizer, LR scheduler, RNG states (torch, numpy, python),
  sampler state and position, step and token counters - everything needed to continue
  bit-identically;
* ``manifest.json`` (written last): step, tokens_seen, tokens_by_language, mixture,
  config_sha256, weights_sha256 {filename: sha256} (read by
  ``babeltower.checkpoints.verify_checkpoint``), val_loss {lang: nats/token},
  provenance.

The directory is assembled under a temporary dot-name and renamed when complete
(``io.atomic_dir``), so a crash (even SIGKILL) never leaves a checkpoint that looks
complete; dot-directories are ignored by ``list_checkpoints`` and removed on resume.
"""

from __future__ import annotations

import errno
import json
import os
import random
import shutil
from pathlib import Path

import numpy as np
import torch

from babeltower.checkpoints import quiet_hf, verify_checkpoint
from babeltower.errors import BabelError
from babeltower.io import atomic_dir, atomic_write_json, sha256_file

STATE_FILE = "training_state.pt"
MANIFEST = "manifest.json"


def checkpoint_steps(schedule, max_steps: int) -> list[int]:
    """All steps in ``[0, max_steps]`` that get a checkpoint, sorted (final always included)."""
    steps: set[int] = {max_steps}
    if schedule.initial:
        steps.add(0)
    if schedule.log_spaced:
        s = 1
        while s <= min(schedule.log_until, max_steps):
            steps.add(s)
            s *= 2
    if schedule.every:
        steps.update(range(schedule.every, max_steps + 1, schedule.every))
    steps.update(s for s in schedule.steps if 0 <= s <= max_steps)
    return sorted(steps)


def step_name(step: int) -> str:
    return f"step-{step:08d}"


def checkpoint_dir(run_dir: str | os.PathLike, step: int) -> Path:
    return Path(run_dir) / "checkpoints" / step_name(step)


# ---- RNG state (stored as plain lists so training_state.pt loads with weights_only) ----

def rng_state() -> dict:
    np_state = np.random.get_state()
    py_state = random.getstate()
    st = {
        "torch": torch.get_rng_state(),
        "numpy": [np_state[0], np_state[1].tolist(), int(np_state[2]), int(np_state[3]),
                  float(np_state[4])],
        "python": [py_state[0], list(py_state[1]), py_state[2]],
    }
    if torch.cuda.is_available():
        st["cuda"] = torch.cuda.get_rng_state_all()
    return st


def set_rng_state(st: dict) -> None:
    torch.set_rng_state(st["torch"])
    n = st["numpy"]
    np.random.set_state((n[0], np.asarray(n[1], dtype=np.uint32), n[2], n[3], n[4]))
    p = st["python"]
    random.setstate((p[0], tuple(p[1]), p[2]))
    if "cuda" in st and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(st["cuda"])


# ---- writing ----

# transformers 5 saves a fast tokenizer as "TokenizersBackend", a class transformers 4.x
# does not have (AutoTokenizer then fails); PreTrainedTokenizerFast is the same tokenizer
# (tokenizer.json) under a name both majors know
PORTABLE_TOKENIZER_CLASS = "PreTrainedTokenizerFast"


def portable_tokenizer_config(directory: Path) -> None:
    """Rewrite ``tokenizer_config.json`` so transformers 4.x and 5.x both load it."""
    path = Path(directory) / "tokenizer_config.json"
    if not (path.exists() and (Path(directory) / "tokenizer.json").exists()):
        return
    cfg = json.loads(path.read_text())
    if cfg.get("tokenizer_class") in (None, "TokenizersBackend"):
        cfg["tokenizer_class"] = PORTABLE_TOKENIZER_CLASS
    cfg.pop("backend", None)   # a 5.x-only key
    atomic_write_json(path, cfg)


def _copy_tokenizer(tokenizer_dir: Path | None, dest: Path) -> None:
    if tokenizer_dir is None or not Path(tokenizer_dir).is_dir():
        return
    for f in Path(tokenizer_dir).iterdir():
        if f.is_file() and f.name not in ("config.json", MANIFEST):
            shutil.copy2(f, dest / f.name)
    portable_tokenizer_config(dest)


def save_checkpoint(run_dir: str | os.PathLike, step: int, model, training_state: dict,
                    manifest: dict, tokenizer_dir: str | os.PathLike | None = None,
                    state_dict: dict | None = None) -> Path:
    """Write one checkpoint atomically; an OSError (e.g. disk full) becomes a BabelError.

    ``model`` is the plain (unwrapped) HF model; ``state_dict`` overrides its weights
    (FSDP gathers a full state dict on rank 0 and passes it here).
    """
    final = checkpoint_dir(run_dir, step)
    try:
        with atomic_dir(final, overwrite=True) as tmp:
            kw = {"state_dict": state_dict} if state_dict is not None else {}
            with quiet_hf():
                model.save_pretrained(tmp, safe_serialization=True, **kw)
            _copy_tokenizer(Path(tokenizer_dir) if tokenizer_dir else None, tmp)
            torch.save(training_state, tmp / STATE_FILE)
            weights = sorted(f.name for f in tmp.iterdir()
                             if f.suffix == ".safetensors" or f.name.endswith(".index.json"))
            manifest = {**manifest, "weights_sha256": {w: sha256_file(tmp / w) for w in weights}}
            atomic_write_json(tmp / MANIFEST, manifest)
    except OSError as e:
        why = "disk full" if e.errno == errno.ENOSPC else (e.strerror or str(e))
        raise BabelError(f"cannot write checkpoint {final}: {why} "
                         "(earlier checkpoints are untouched)") from None
    except BabelError as e:
        raise BabelError(f"cannot write checkpoint {final}: {e}") from None
    return final


# ---- resuming ----

def clean_partial(run_dir: str | os.PathLike) -> list[Path]:
    """Remove temporary checkpoint dirs left by a crash (never complete by construction)."""
    base = Path(run_dir) / "checkpoints"
    removed = []
    if base.is_dir():
        for d in base.iterdir():
            if d.is_dir() and d.name.startswith(".step-"):
                shutil.rmtree(d, ignore_errors=True)
                removed.append(d)
    return removed


def complete_checkpoints(run_dir: str | os.PathLike) -> list[Path]:
    """Checkpoint dirs that have a manifest and a training state, in step order."""
    base = Path(run_dir) / "checkpoints"
    if not base.is_dir():
        return []
    out = [d for d in base.iterdir()
           if d.is_dir() and d.name.startswith("step-") and (d / MANIFEST).exists()
           and (d / STATE_FILE).exists()]
    return sorted(out, key=lambda d: d.name)


def latest_checkpoint(run_dir: str | os.PathLike) -> Path | None:
    """The last complete checkpoint of a run, its weights verified against their sha256."""
    found = complete_checkpoints(run_dir)
    if not found:
        return None
    last = found[-1]
    verify_checkpoint(last)
    return last


def prune(run_dir: str | os.PathLike, keep_last: int | None) -> list[Path]:
    """Delete all but the last ``keep_last`` complete checkpoints (None: keep all)."""
    if not keep_last:
        return []
    old = complete_checkpoints(run_dir)[:-keep_last]
    for d in old:
        shutil.rmtree(d, ignore_errors=True)
    return old


def load_training_state(ckpt: str | os.PathLike) -> dict:
    p = Path(ckpt) / STATE_FILE
    try:
        return torch.load(p, map_location="cpu", weights_only=True)
    except Exception as e:  # torch raises several types for a truncated/corrupt pickle
        raise BabelError(f"corrupt training state {p}: {type(e).__name__}") from None
