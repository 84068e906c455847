"""One runner for a checkpoint series: load each checkpoint once, apply every measure.

A *measure* is anything with

* ``name`` - a short identifier (``"lens"``, ``"lape"``, ``"loss"``...): it names the rows
  and the resume file;
* ``config() -> dict`` - the JSON settings its rows depend on (the resume key: rows made
  with other settings are never reused);
* ``measure(model, tokenizer, ref) -> list[dict]`` - JSON-able rows for one checkpoint;
* optionally ``data_hashes() -> dict`` - sha256 of the data it reads (recorded).

``run_series(source, measures, ...)`` walks the checkpoints in training order, loads each
one once (straight to the target device and dtype), applies every measure and returns a
``SeriesResult``: per measure, the rows of every checkpoint, each row carrying
``checkpoint``, ``step``, the sha256 of the weights it read (``weights_sha256``), and the
hashes of its measure's config and data (``config_sha256``, ``data_sha256``).

**Resume.** With ``state=DIR`` every finished (checkpoint, measure) is appended to
``DIR/<measure>.rank<r>.jsonl`` (``babeltower.io.PartialRows``); a rerun with the same
settings skips what is there (from any rank and any world size), unless the checkpoint's
weights changed since. ``SeriesResult.close()`` removes the state once the caller has
written its outputs (``write_outputs``: a temporary directory renamed into place, so an
output directory is either complete or absent).

**Across devices.** Under ``torchrun`` (``WORLD_SIZE`` > 1) every rank takes every
``world_size``-th checkpoint, runs on ``cuda:LOCAL_RANK`` when there is a GPU, and the rows
are gathered so every rank returns the whole series (rank 0 writes the outputs). The
process group is gloo on CPU, NCCL on GPUs; ``all_gather_object`` moves only the rows.
"""

from __future__ import annotations

import os
import shutil
import time
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterator, Protocol, Sequence, runtime_checkable

from babeltower.checkpoints import CheckpointRef, list_checkpoints, weights_sha256
from babeltower.errors import BabelError
from babeltower.interrupts import raise_if_interrupted
from babeltower.io import PartialRows, atomic_dir, atomic_write_json, read_json, sha256_json

META = ("checkpoint", "step", "weights_sha256", "config_sha256", "data_sha256")


@runtime_checkable
class Measure(Protocol):
    name: str

    def config(self) -> dict: ...

    def measure(self, model, tokenizer, ref: CheckpointRef) -> list[dict]: ...


@dataclass
class SeriesOptions:
    """How the series is walked (not what is measured: that is each measure's config)."""

    progress: bool = True
    dtype: str = "float32"          # torch dtype name the weights are loaded in
    device: str | None = None       # None: cuda:LOCAL_RANK when a GPU is there, else cpu
    verify: bool = True             # check weights against our manifest's sha256
    distributed: bool | None = None  # None: when WORLD_SIZE > 1 (torchrun)
    overwrite: bool = False         # drop any resume state first


@dataclass
class SeriesResult:
    refs: list[CheckpointRef]
    rows: dict[str, list[dict]]                     # measure name -> rows, series order
    configs: dict[str, dict]                        # measure name -> config
    weights: dict[str, str]                         # checkpoint name -> weights sha256
    computed: list[str] = field(default_factory=list)  # checkpoints loaded by this call
    seconds: dict[str, float] = field(default_factory=dict)  # checkpoint -> load + measure s
    rank: int = 0
    world_size: int = 1
    state: Path | None = None

    def frame(self, name: str):
        import pandas as pd

        return pd.DataFrame(self.rows[name])

    @property
    def is_writer(self) -> bool:
        """Only rank 0 writes outputs."""
        return self.rank == 0

    def close(self) -> None:
        """Drop the resume state (call after the outputs are written)."""
        if self.state is not None and self.is_writer:
            shutil.rmtree(self.state, ignore_errors=True)


def checkpoints_of(source, revisions: list[str] | None = None,
                   steps: list[int] | None = None) -> list[CheckpointRef]:
    """A source (``list_checkpoints``) or an already listed ``[CheckpointRef, ...]``."""
    if isinstance(source, (list, tuple)) and source and isinstance(source[0], CheckpointRef):
        return list(source)
    return list_checkpoints(source, revisions=revisions, steps=steps)


def _measure_hashes(m) -> tuple[str, str | None]:
    dh = m.data_hashes() if hasattr(m, "data_hashes") else None
    return sha256_json(m.config()), (sha256_json(dh) if dh else None)


def _check_state(state: Path, measures: Sequence, rank: int) -> None:
    """Resume state is only reused with the settings that made it."""
    want = {m.name: sha256_json(m.config()) for m in measures}
    f = state / "state_config.json"
    if f.exists():
        old = read_json(f, "series state").get("sha256", {})
        clash = [n for n, h in want.items() if n in old and old[n] != h]
        if clash:
            raise BabelError(f"unfinished results in {state} were made with other settings "
                             f"({', '.join(clash)}): pass --overwrite or use another --out")
        want = {**old, **want}
    if rank == 0:
        atomic_write_json(f, {"sha256": want})


def _done_rows(state: Path | None, name: str) -> dict[str, list[dict]]:
    """Finished rows of a measure from every rank's resume file."""
    done: dict[str, list[dict]] = {}
    if state is None:
        return done
    for f in sorted(state.glob(f"{name}.rank*.jsonl")):
        for ck, rows in PartialRows(f, "checkpoint").done.items():
            done.setdefault(ck, rows)
    return done


@contextmanager
def _process_group(enabled: bool | None) -> Iterator[tuple[int, int]]:
    """(rank, world size); starts torch.distributed under torchrun if nobody has."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if enabled is False or (enabled is None and world <= 1):
        yield 0, 1
        return
    import torch
    import torch.distributed as dist

    started = False
    if not dist.is_initialized():
        dist.init_process_group("nccl" if torch.cuda.is_available() else "gloo")
        started = True
    try:
        yield dist.get_rank(), dist.get_world_size()
    finally:
        if started:
            dist.destroy_process_group()


def _device(name: str | None):
    import torch

    if name is not None:
        return torch.device(name)
    if torch.cuda.is_available():
        return torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0")))
    return torch.device("cpu")


def run_series(source, measures: Sequence[Measure], *, state: str | os.PathLike | None = None,
               options: SeriesOptions | None = None, revisions: list[str] | None = None,
               steps: list[int] | None = None,
               on_checkpoint: Callable[[str], None] | None = None) -> SeriesResult:
    """Apply ``measures`` to every checkpoint of ``source`` (module docstring)."""
    opts = options or SeriesOptions()
    names = [m.name for m in measures]
    if not measures or len(set(names)) != len(names):
        raise BabelError(f"give one or more measures with distinct names (got {names})")
    refs = checkpoints_of(source, revisions, steps)
    with _process_group(opts.distributed) as (rank, world):
        state_dir = Path(state) if state is not None else None
        if state_dir is not None:
            if opts.overwrite and rank == 0:
                shutil.rmtree(state_dir, ignore_errors=True)
            _barrier(world)
            state_dir.mkdir(parents=True, exist_ok=True)
            _check_state(state_dir, measures, rank)
        res = SeriesResult(refs, {}, {m.name: m.config() for m in measures}, {},
                           rank=rank, world_size=world, state=state_dir)
        mine = _walk(refs[rank::world], measures, state_dir, opts, res, on_checkpoint)
        gathered = _all_gather(mine, world)
        by_ck: dict[str, dict] = {}
        for part in gathered:
            by_ck.update(part["rows"])
            res.weights.update(part["weights"])
            res.seconds.update(part["seconds"])
        res.rows = {n: [r for ref in refs for r in by_ck[ref.name][n]] for n in names}
        _barrier(world)   # nobody removes resume state while another rank still reads it
    return res


def _barrier(world: int) -> None:
    if world > 1:
        import torch.distributed as dist

        dist.barrier()


def _all_gather(obj, world: int) -> list:
    if world == 1:
        return [obj]
    import torch.distributed as dist

    gathered: list = [None] * world
    dist.all_gather_object(gathered, obj)
    return gathered


def _walk(refs: list[CheckpointRef], measures: Sequence[Measure], state: Path | None,
          opts: SeriesOptions, res: SeriesResult, on_checkpoint) -> dict:
    """This rank's share: {"rows": {ckpt: {measure: rows}}, "weights": ..., "seconds": ...}."""
    import torch
    from tqdm.auto import tqdm

    hashes = {m.name: _measure_hashes(m) for m in measures}
    done = {m.name: _done_rows(state, m.name) for m in measures}
    partial = {m.name: PartialRows(state / f"{m.name}.rank{res.rank}.jsonl"
                                   if state is not None else None, "checkpoint")
               for m in measures}
    dtype = getattr(torch, opts.dtype, None)
    if not isinstance(dtype, torch.dtype):
        raise BabelError(f"unknown dtype {opts.dtype!r} (float32, bfloat16, float16)")
    device = _device(opts.device)
    out: dict = {"rows": {}, "weights": {}, "seconds": {}}
    bar = tqdm(refs, desc="+".join(m.name for m in measures), unit="ckpt",
               disable=None if opts.progress else True)
    for ref in bar:
        raise_if_interrupted()   # a Ctrl-C a library swallowed still stops the series
        t0 = time.perf_counter()
        wsha = weights_sha256(ref)
        out["weights"][ref.name] = wsha
        got: dict[str, list[dict]] = {}
        todo = []
        for m in measures:
            old = done[m.name].get(ref.name)
            if old is not None and all(r.get("weights_sha256") == wsha for r in old):
                got[m.name] = old
            else:
                todo.append(m)
        if todo:
            model, tok = ref.load(dtype=dtype, verify=opts.verify, device=device)
            if ref.revision is not None:   # a hub revision: hash the snapshot the load read
                wsha = out["weights"][ref.name] = weights_sha256(ref)
            with torch.inference_mode():
                for m in todo:
                    cfg_sha, data_sha = hashes[m.name]
                    meta = {"checkpoint": ref.name, "step": ref.step}
                    rows = [{**meta, **r, "weights_sha256": wsha, "config_sha256": cfg_sha,
                             "data_sha256": data_sha} for r in m.measure(model, tok, ref)]
                    partial[m.name].append(rows)
                    got[m.name] = rows
            del model
            res.computed.append(ref.name)
            out["seconds"][ref.name] = time.perf_counter() - t0
            if on_checkpoint is not None:
                on_checkpoint(ref.name)
        out["rows"][ref.name] = got
    return out


def write_outputs(out: str | os.PathLike, writer: Callable[[Path], None],
                  result: SeriesResult | None = None, overwrite: bool = True) -> None:
    """Write an output directory as one unit: ``writer(tmp_dir)`` fills a temporary
    directory that replaces ``out`` only when it returns. Only rank 0 writes; the resume
    state is dropped afterwards."""
    if result is not None and not result.is_writer:
        return
    with atomic_dir(out, overwrite=overwrite) as tmp:
        writer(tmp)
    if result is not None:
        result.close()




def state_dir_for(out: str | os.PathLike | None) -> Path | None:
    """Where a series writing ``out`` keeps its resume state: ``<out>.partial``."""
    return None if out is None else Path(str(out) + ".partial")


def safe_name(name: str) -> str:
    """A checkpoint name usable as a file name."""
    return "".join(c if c.isalnum() or c in "-_." else "_" for c in name)


def parquet_bytes(df) -> bytes:
    import io

    buf = io.BytesIO()
    df.to_parquet(buf, index=False)
    return buf.getvalue()
